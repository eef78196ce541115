package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/failover"
	"github.com/resilmail/resilmail/replicate/store"
)

// operatorHandler serves /operator/ (see the command's doc) to requests
// that carry the operator's bearer token; without -operator-secret-file
// (or $RESILMAIL_OPERATOR_SECRET) it answers 403 to everyone.
func (m *server) operatorHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /operator/promote", m.promote)
	mux.HandleFunc("POST /operator/demote", m.demote)
	mux.HandleFunc("POST /operator/follow", m.follow)
	mux.HandleFunc("POST /operator/switchover", m.switchover)
	mux.HandleFunc("POST /operator/grant", m.grant)
	mux.HandleFunc("POST /operator/revoke", m.revoke)
	mux.HandleFunc("GET /operator/held", m.held)
	mux.HandleFunc("POST /operator/confirm", m.confirm)
	mux.Handle("/operator/member/", http.StripPrefix("/operator/member", failover.MemberHandler(m.n, m.log)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m.c.node.operator == nil {
			writeJSON(w, http.StatusForbidden, errorReply{"no operator credential: start the node with -operator-secret-file or $RESILMAIL_OPERATOR_SECRET"})
			return
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(tok), m.c.node.operator) != 1 {
			m.log.Warn("node: refused an operator request", "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="resilmail operator"`)
			writeJSON(w, http.StatusUnauthorized, errorReply{"the operator's bearer token is needed"})
			return
		}
		m.log.Warn("node: operator request", "method", r.Method, "path", r.URL.Path, "query", r.URL.RawQuery, "remote", r.RemoteAddr)
		mux.ServeHTTP(w, r)
	})
}

type errorReply struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// roleReply is what the role-changing endpoints answer.
type roleReply struct {
	Node  string `json:"node"`
	Role  string `json:"role"`
	Epoch uint64 `json:"epoch"`
	// LagChanges is how far behind its primary a promoted standby was
	// (the primary's last announced position minus what it applied).
	LagChanges uint64 `json:"lag_changes,omitempty"`
	// Drained, Held and TookMS describe a standby's promotion: the
	// received changes it applied first, the delayed destructive changes
	// left for the operator, and how long it took.
	Drained int     `json:"drained,omitempty"`
	Held    int     `json:"held,omitempty"`
	TookMS  float64 `json:"took_ms,omitempty"`
}

func (m *server) reply(w http.ResponseWriter) roleReply {
	return roleReply{Node: m.c.node.name, Role: m.roleName(), Epoch: uint64(m.st.Epoch())}
}

// manualOnly answers 409 under an etcd lease, where the election decides.
func (m *server) manualOnly(w http.ResponseWriter) bool {
	if m.manual == nil {
		writeJSON(w, http.StatusConflict, errorReply{"the lease is etcd's: the election decides who is primary; use /operator/switchover to move the role"})
		return false
	}
	return true
}

// promote makes this standby (or fenced node) the primary at an epoch above
// its own (?epoch=N raises it further): the manual failover, when the
// primary is gone. The answer says how far behind it was.
func (m *server) promote(w http.ResponseWriter, r *http.Request) {
	if !m.manualOnly(w) {
		return
	}
	e := m.st.Epoch() + 1
	if s := r.URL.Query().Get("epoch"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || resilmail.Epoch(n) < e {
			writeJSON(w, http.StatusBadRequest, errorReply{fmt.Sprintf("?epoch=%s: want a number of at least %d", s, e)})
			return
		}
		e = resilmail.Epoch(n)
	}
	m.busy.Store(true)
	defer m.busy.Store(false)
	var lag uint64
	if rep := m.n.Replica(); rep != nil {
		s := rep.Stats()
		if s.PrimaryPosition > s.Applied {
			lag = s.PrimaryPosition - s.Applied
		}
	}
	if err := m.n.Promote(r.Context(), e); err != nil {
		writeJSON(w, http.StatusConflict, errorReply{err.Error()})
		return
	}
	res := m.n.LastPromotion()
	rep := m.reply(w)
	rep.LagChanges = lag
	if res.Epoch == e {
		rep.Drained, rep.Held, rep.TookMS = res.Drained, len(res.Held), float64(res.Took.Microseconds())/1000
	}
	m.log.Warn("node: promoted by the operator", "epoch", uint64(e), "lag_changes", lag)
	writeJSON(w, http.StatusOK, rep)
}

// demote fences this primary: it refuses writes until it follows another
// (POST /operator/follow, or the peer that becomes primary).
func (m *server) demote(w http.ResponseWriter, r *http.Request) {
	if !m.manualOnly(w) {
		return
	}
	if err := m.n.Demote(r.Context(), m.st.Epoch()); err != nil {
		writeJSON(w, http.StatusConflict, errorReply{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, m.reply(w))
}

// follow makes this node a standby of the peer ?primary=NAME: a fenced old
// primary rejoins, its unreplicated tail kept as orphans on the new one.
func (m *server) follow(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("primary")
	if _, ok := m.c.node.peers[p]; !ok {
		writeJSON(w, http.StatusBadRequest, errorReply{fmt.Sprintf("?primary=%q: want one of the -peer names", p)})
		return
	}
	if m.st.Role() == store.RolePrimary && m.n.Primary() != nil {
		writeJSON(w, http.StatusConflict, errorReply{"this node is the primary: demote it first (POST /operator/demote) or move the role (POST /operator/switchover)"})
		return
	}
	if err := m.n.Follow(r.Context(), p); err != nil {
		writeJSON(w, http.StatusConflict, errorReply{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, m.reply(w))
}

// switchover moves the primary role from this node to the peer ?to=NAME
// (failover.Switchover): drain, wait until it has everything, raise the
// epoch, promote it, follow it. Under an etcd lease the epoch step hands
// the lease over: this node's elector is paused (it demotes and releases
// the term), and the target's elector wins and promotes it at the term's
// token. The answer is the switchover's report, each step timed.
func (m *server) switchover(w http.ResponseWriter, r *http.Request) {
	to := r.URL.Query().Get("to")
	base, ok := m.c.node.peers[to]
	if !ok {
		writeJSON(w, http.StatusBadRequest, errorReply{fmt.Sprintf("?to=%q: want one of the -peer names", to)})
		return
	}
	if m.st.Role() != store.RolePrimary || m.n.Primary() == nil {
		writeJSON(w, http.StatusConflict, errorReply{"this node is not the primary: ask the primary"})
		return
	}
	if !m.busy.CompareAndSwap(false, true) {
		writeJSON(w, http.StatusConflict, errorReply{"a switchover or role change is running"})
		return
	}
	defer m.busy.Store(false)
	remote := failover.NewRemoteMember(to, base+"/operator/member", &failover.RemoteMemberOptions{
		Client: m.client, Header: http.Header{"Authorization": {"Bearer " + string(m.c.node.operator)}}})
	opts := &failover.SwitchoverOptions{MaxLag: m.c.node.maxLag, Logger: m.log}
	if m.etcd != nil {
		defer m.el.Resume()
		opts.Epoch = func(ctx context.Context, minEpoch resilmail.Epoch) (resilmail.Epoch, error) {
			if err := m.el.Pause(ctx, "switchover to "+to); err != nil {
				return 0, err
			}
			for {
				ps, err := m.peerStatus(ctx, to)
				if err == nil && ps.Role == "primary" && ps.Epoch >= uint64(minEpoch) {
					return resilmail.Epoch(ps.Epoch), nil
				}
				select {
				case <-ctx.Done():
					return 0, fmt.Errorf("%s did not take the lease: %w", to, ctx.Err())
				case <-time.After(5 * time.Millisecond): // polls the peer
				}
			}
		}
	}
	rep, err := failover.Switchover(r.Context(), m.n, remote, opts)
	out := struct {
		failover.Report
		WriteWindowMS float64 `json:"write_window_ms"`
		Error         string  `json:"error,omitempty"`
	}{Report: rep, WriteWindowMS: float64(rep.WriteWindow.Microseconds()) / 1000}
	code := http.StatusOK
	if err != nil {
		out.Error, code = err.Error(), http.StatusConflict
	}
	writeJSON(w, code, out)
}

// grant hands the manual lease to this node with ?token=N (above every
// token granted before): its elector promotes it at an epoch of at least N.
func (m *server) grant(w http.ResponseWriter, r *http.Request) {
	if !m.manualOnly(w) {
		return
	}
	tok, err := strconv.ParseUint(r.URL.Query().Get("token"), 10, 64)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorReply{"want ?token=N, above the node's epoch"})
		return
	}
	if err := m.manual.Grant(tok); err != nil {
		writeJSON(w, http.StatusConflict, errorReply{err.Error()})
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for !m.el.Status().Primary && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polls the elector
	}
	if !m.el.Status().Primary {
		writeJSON(w, http.StatusConflict, errorReply{"granted, but the node was not promoted: " + m.el.Status().LastError})
		return
	}
	writeJSON(w, http.StatusOK, m.reply(w))
}

// revoke ends the manual lease's term: the elector demotes the node.
func (m *server) revoke(w http.ResponseWriter, r *http.Request) {
	if !m.manualOnly(w) {
		return
	}
	was := m.el.Status().Primary
	m.manual.Revoke()
	deadline := time.Now().Add(10 * time.Second)
	for was && m.el.Status().Primary && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polls the elector
	}
	writeJSON(w, http.StatusOK, m.reply(w))
}

// heldChange is one change the guard delays, as /operator/held lists it.
type heldChange struct {
	User    string    `json:"user"`
	Seq     uint64    `json:"seq"`
	Kind    string    `json:"kind"`
	Mailbox string    `json:"mailbox,omitempty"`
	UIDs    string    `json:"uids,omitempty"`
	Reason  string    `json:"reason"`
	Since   time.Time `json:"since"`
}

// held lists the destructive changes the standby's guard delays (a mass
// expunge, a mailbox or user deleted, a flag wipe), each waiting for POST
// /operator/confirm?user=U&seq=N; after a promotion, those it left.
func (m *server) held(w http.ResponseWriter, r *http.Request) {
	out := []heldChange{}
	for _, h := range m.n.Held() {
		c := h.Change
		hc := heldChange{User: c.User, Seq: c.Seq, Kind: c.Kind.String(), Mailbox: c.Mailbox, Reason: h.Reason, Since: h.Since}
		if len(c.UIDs) > 0 {
			hc.UIDs = c.UIDs.String()
		}
		out = append(out, hc)
	}
	writeJSON(w, http.StatusOK, out)
}

// confirm applies one delayed change.
func (m *server) confirm(w http.ResponseWriter, r *http.Request) {
	user := r.URL.Query().Get("user")
	seq, err := strconv.ParseUint(r.URL.Query().Get("seq"), 10, 64)
	if user == "" || err != nil {
		writeJSON(w, http.StatusBadRequest, errorReply{"want ?user=U&seq=N of a held change (GET /operator/held)"})
		return
	}
	if err := m.n.Confirm(user, seq); err != nil {
		writeJSON(w, http.StatusNotFound, errorReply{err.Error()})
		return
	}
	m.log.Warn("node: operator confirmed a held change", "user", user, "seq", seq, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, struct {
		Confirmed bool `json:"confirmed"`
	}{true})
}
