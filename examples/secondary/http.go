package main

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/resilmail/resilmail/internal/metrics"
	"github.com/resilmail/resilmail/replicate"
)

// handler serves the secondary's endpoints (see the command's doc).
func (n *node) handler() (http.Handler, error) {
	inv, err := replicate.InventoryHandler(n.st, &replicate.InventoryHandlerOptions{Secret: n.c.secret, Logger: n.log})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/inventory/", http.StripPrefix("/inventory", inv))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, n.status()) })
	mux.Handle("GET /metrics", metrics.Handler(n.writeMetrics))
	mux.HandleFunc("GET /held", n.operator(n.held))
	mux.HandleFunc("POST /confirm", n.operator(n.confirm))
	mux.HandleFunc("POST /compare", n.operator(n.compareNow))
	return mux, nil
}

// operator lets only the operators of -admin-passwd through (HTTP basic
// auth); without -admin-passwd nobody.
func (n *node) operator(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if n.admins == nil {
			writeJSON(w, http.StatusForbidden, errorReply{"no operator accounts: start the secondary with -admin-passwd"})
			return
		}
		user, pass, ok := r.BasicAuth()
		if !ok || n.admins.Authenticate(user, pass) != nil {
			n.log.Warn("secondary: refused an operator request", "path", r.URL.Path, "remote", r.RemoteAddr, "user", user)
			w.Header().Set("WWW-Authenticate", `Basic realm="resilmail secondary"`)
			writeJSON(w, http.StatusUnauthorized, errorReply{"operator credentials needed"})
			return
		}
		h(w, r)
	}
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

// statusReport is what /status answers: no user names.
type statusReport struct {
	Role            string    `json:"role"`
	Name            string    `json:"name"`
	Primary         string    `json:"primary"`
	Connected       bool      `json:"connected"`
	Received        uint64    `json:"received"`
	Applied         uint64    `json:"applied"`
	PrimaryPosition uint64    `json:"primary_position"`
	PrimaryTime     time.Time `json:"primary_time,omitzero"`
	ApplyDelay      string    `json:"apply_delay"`
	Held            int       `json:"held"`
	// Parked counts the changes waiting for a body the primary cannot
	// serve (damaged there); the other users go on.
	Parked         int       `json:"parked"`
	LastError      string    `json:"last_error,omitempty"`
	Reconnects     uint64    `json:"reconnects"`
	CorruptRefused uint64    `json:"corrupt_bodies_refused"`
	Repairs        uint64    `json:"repairs"`
	Epoch          uint64    `json:"epoch"`
	Users          int       `json:"users"`
	Messages       int       `json:"messages"`
	CorruptBodies  int       `json:"corrupt_bodies"`
	Comparisons    int       `json:"comparisons"`
	LastComparison time.Time `json:"last_comparison,omitzero"`
	CompareError   string    `json:"compare_error,omitempty"`
	Differences    int       `json:"differences"`
	HeldRemovals   int       `json:"held_removals"`
	// PrimaryRestored counts the bodies the primary held damaged that
	// comparisons restored there from this replica's copies.
	PrimaryRestored int `json:"primary_bodies_restored"`
}

func (n *node) status() statusReport {
	rs, ss, cs := n.replica.Stats(), n.st.Stats(), n.comparer.Stats()
	return statusReport{
		Role: "secondary", Name: n.c.name, Primary: n.c.primary,
		Connected: rs.Connected, Received: rs.Received, Applied: rs.Applied,
		PrimaryPosition: rs.PrimaryPosition, PrimaryTime: rs.PrimaryTime, ApplyDelay: n.c.applyDelay.String(),
		Held: rs.Held, Parked: rs.Parked, LastError: rs.LastError, Reconnects: rs.Reconnects, CorruptRefused: rs.CorruptBodies, Repairs: rs.Repairs,
		Epoch: ss.Epoch, Users: ss.Users, Messages: ss.Messages, CorruptBodies: ss.CorruptBodies,
		Comparisons: cs.Runs, LastComparison: cs.LastRun, CompareError: cs.LastError, Differences: cs.Differences, HeldRemovals: len(cs.LastHeld),
		PrimaryRestored: cs.TotalPrimaryRestored,
	}
}

// heldReply is what /held answers.
type heldReply struct {
	// Changes are the stream's changes the guard holds, each waiting
	// for POST /confirm?user=U&seq=N.
	Changes []heldChange `json:"changes"`
	// Removals are what the last comparison's repair left alone; POST
	// them to /compare as {"confirm": [...]} to carry them out.
	Removals []replicate.HeldRemoval `json:"removals"`
}

type heldChange struct {
	User    string    `json:"user"`
	Seq     uint64    `json:"seq"`
	Kind    string    `json:"kind"`
	Mailbox string    `json:"mailbox,omitempty"`
	UIDs    string    `json:"uids,omitempty"`
	Reason  string    `json:"reason"`
	Since   time.Time `json:"since"`
}

func (n *node) held(w http.ResponseWriter, r *http.Request) {
	reply := heldReply{Changes: []heldChange{}, Removals: n.comparer.Stats().LastHeld}
	if reply.Removals == nil {
		reply.Removals = []replicate.HeldRemoval{}
	}
	for _, h := range n.replica.Held() {
		c := h.Change
		hc := heldChange{User: c.User, Seq: c.Seq, Kind: c.Kind.String(), Mailbox: c.Mailbox, Reason: h.Reason, Since: h.Since}
		if len(c.UIDs) > 0 {
			hc.UIDs = c.UIDs.String()
		}
		reply.Changes = append(reply.Changes, hc)
	}
	writeJSON(w, http.StatusOK, reply)
}

func (n *node) confirm(w http.ResponseWriter, r *http.Request) {
	user := r.URL.Query().Get("user")
	seq, err := strconv.ParseUint(r.URL.Query().Get("seq"), 10, 64)
	if user == "" || err != nil {
		writeJSON(w, http.StatusBadRequest, errorReply{"want ?user=U&seq=N of a held change (GET /held)"})
		return
	}
	if err := n.replica.Confirm(user, seq); err != nil {
		writeJSON(w, http.StatusNotFound, errorReply{err.Error()})
		return
	}
	n.log.Warn("secondary: operator confirmed a held change", "user", user, "seq", seq, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, struct {
		Confirmed bool `json:"confirmed"`
	}{true})
}

// compareReply is what POST /compare answers.
type compareReply struct {
	Differences int                    `json:"differences"`
	Failed      []string               `json:"failed_users,omitempty"`
	Repair      replicate.RepairResult `json:"repair"`
	Error       string                 `json:"error,omitempty"`
}

func (n *node) compareNow(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Confirm []replicate.HeldRemoval `json:"confirm"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		writeJSON(w, http.StatusBadRequest, errorReply{"bad request body: " + err.Error()})
		return
	}
	n.log.Warn("secondary: comparison asked for by the operator", "confirmed", len(req.Confirm), "remote", r.RemoteAddr)
	rep, res, err := n.comparer.RunOnce(r.Context(), req.Confirm...)
	reply := compareReply{Repair: res}
	if rep != nil {
		reply.Differences, reply.Failed = rep.Differences(), rep.Failed
	}
	code := http.StatusOK
	if err != nil {
		reply.Error, code = err.Error(), http.StatusBadGateway
	}
	writeJSON(w, code, reply)
}

func (n *node) writeMetrics(m *metrics.Writer) {
	rs, ss, cs := n.replica.Stats(), n.st.Stats(), n.comparer.Stats()
	connected := 0.0
	if rs.Connected {
		connected = 1
	}
	m.Gauge("resilmail_replica_connected", "Whether the stream from the primary is open.", connected)
	m.Gauge("resilmail_replica_received_position", "Highest position of the primary durably received.", float64(rs.Received))
	m.Gauge("resilmail_replica_applied_position", "Highest position of the primary applied, with everything before it.", float64(rs.Applied))
	m.Gauge("resilmail_replica_primary_position", "The primary's position in its last heartbeat.", float64(rs.PrimaryPosition))
	m.Gauge("resilmail_replica_held_changes", "Changes held for an operator's confirmation.", float64(rs.Held))
	m.Gauge("resilmail_replica_parked_changes", "Changes waiting for a body the primary cannot serve.", float64(rs.Parked))
	m.Counter("resilmail_replica_received_bytes_total", "Stream and body bytes received.", rs.Bytes)
	m.Counter("resilmail_replica_changes_total", "Changes received.", rs.Changes)
	m.Counter("resilmail_replica_reconnects_total", "Streams that ended in an error.", rs.Reconnects)
	m.Counter("resilmail_replica_corrupt_bodies_total", "Bodies refused for not matching their digest.", rs.CorruptBodies)
	m.Counter("resilmail_replica_repairs_total", "Comparisons and repairs run by the stream.", rs.Repairs)
	m.Gauge("resilmail_store_messages", "Messages.", float64(ss.Messages))
	m.Gauge("resilmail_store_corrupt_bodies", "Bodies marked corrupt, never served.", float64(ss.CorruptBodies))
	m.Counter("resilmail_compare_runs_total", "Comparisons with the primary.", uint64(cs.Runs))
	m.Gauge("resilmail_compare_differences", "Differences the last comparison found.", float64(cs.Differences))
	m.Gauge("resilmail_compare_held_removals", "Removals the last comparison held for an operator.", float64(len(cs.LastHeld)))
}
