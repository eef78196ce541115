package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/failover"
	"github.com/resilmail/resilmail/failover/storenode"
	"github.com/resilmail/resilmail/internal/cli"
	"github.com/resilmail/resilmail/internal/secret"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// nodeConfig is what makes the mail server a promotable node: its name,
// its peers, how it learns who is primary (a manual lease or etcd), the
// operator's credential and the client proxies that follow the roles.
type nodeConfig struct {
	name        string
	peers       map[string]string // -peer: name -> base URL of the peer's -http
	peerOrder   []string
	primaryURL  string // -primary: follow this primary, whatever the peers say
	standby     bool   // -standby: a new store starts as a standby
	lease       string // manual or etcd
	etcd        []string
	ttl         time.Duration
	maxLag      uint64
	ca          string
	operatorSrc secret.Source
	operator    []byte // the operator's bearer token; nil: no operator endpoints
	forwards    []forward
	fwdProxy    bool
	fwdFrom     string
	guardShare  float64
	guardMin    int
}

type peerFlag struct{ c *nodeConfig }

func (p peerFlag) String() string { return "" }

func (p peerFlag) Set(s string) error {
	name, u, ok := strings.Cut(s, "=")
	if !ok || name == "" || !(strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://")) {
		return fmt.Errorf("want name=http(s)://host:port (the peer's -http), got %q", s)
	}
	if p.c.peers == nil {
		p.c.peers = map[string]string{}
	}
	if _, dup := p.c.peers[name]; dup {
		return fmt.Errorf("peer %q given twice", name)
	}
	p.c.peers[name] = strings.TrimSuffix(u, "/")
	p.c.peerOrder = append(p.c.peerOrder, name)
	return nil
}

// nodeFlags defines the node's flags on fs.
func nodeFlags(fs *flag.FlagSet, c *nodeConfig) {
	fs.StringVar(&c.name, "name", "", "this node's name, as its peers' -peer and -forward and the replicas' names know it (default: the host name)")
	fs.Var(peerFlag{c}, "peer", "another mail-server node, as name=https://host:port (its -http); repeat for each. A standby follows whichever peer is primary with the highest epoch, and a switchover moves the role to a peer")
	fs.StringVar(&c.primaryURL, "primary", "", "follow the primary at this http(s):// address (its -http) while this node is a standby, as examples/secondary does")
	fs.BoolVar(&c.standby, "standby", false, "a new store (never written) starts as a standby; a store that exists starts in the role and epoch it keeps")
	fs.StringVar(&c.lease, "lease", "manual", "who decides which node is primary: manual (the operator: /operator/promote, /operator/switchover, /operator/grant) or etcd (an election on -etcd: automatic failover)")
	fs.Func("etcd", "comma-separated etcd client URLs, for -lease etcd", func(s string) error { c.etcd = splitList(s); return nil })
	fs.DurationVar(&c.ttl, "lease-ttl", 2*time.Second, "the etcd lease's time to live: how long after the primary stops renewing a standby takes over (whole seconds)")
	fs.Uint64Var(&c.maxLag, "max-lag", 1000, "a standby lagging its primary by more changes than this is not promoted (election, switchover)")
	fs.StringVar(&c.ca, "ca", "", "PEM certificates that sign the peers' https:// certificates (default: the system's)")
	fs.StringVar(&c.operatorSrc.File, "operator-secret-file", "", "file (mode 600) holding the operators' bearer token for /operator/ (default: $RESILMAIL_OPERATOR_SECRET; without either, the operator endpoints answer 403); never the replication secret")
	fs.Var(forwardFlag{&c.forwards}, "forward", "relay the clients of a protocol that reach this node to the active node: proto,listen-host:port,node=host:port,node=host:port... (each node's port for it; the proxy follows role changes) or proto,listen-host:port,target-host:port (fixed); proto is imap, pop3, lmtp or submission; repeat for each")
	fs.BoolVar(&c.fwdProxy, "forward-proxy", false, "with -forward: send the client's address in a PROXY protocol v2 header (the active node must trust this node: -proxy-trust)")
	fs.StringVar(&c.fwdFrom, "forward-from", "", "with -forward: the local IP address to connect to the active node from (the address it trusts for PROXY headers)")
	fs.Float64Var(&c.guardShare, "guard-share", replicate.DefaultGuardShare, "as standby: delay an expunge of more than this share of a mailbox until an operator confirms it (GET /operator/held, POST /operator/confirm)")
	fs.IntVar(&c.guardMin, "guard-min", replicate.DefaultGuardMinMessages, "as standby: smallest mailbox the guard watches, and smallest delete it delays")
}

// check validates the node's flags once parsed; replication is the
// replication secret, which the operator's must differ from.
func (c *nodeConfig) check(getenv func(string) string, replication []byte, insecure bool) error {
	if c.name == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			return errors.New("no -name, and no host name to use instead")
		}
		c.name = h
	}
	if _, self := c.peers[c.name]; self {
		return fmt.Errorf("-peer %s names this node itself (-name)", c.name)
	}
	for _, name := range c.peerOrder {
		if err := cli.CheckURL("peer", c.peers[name], insecure); err != nil {
			return err
		}
	}
	if c.primaryURL != "" {
		if len(c.peers) > 0 {
			return errors.New("-primary and -peer do not go together: with peers, a standby follows whichever is primary")
		}
		if !strings.HasPrefix(c.primaryURL, "http://") && !strings.HasPrefix(c.primaryURL, "https://") {
			return fmt.Errorf("-primary %q: want the primary's http:// or https:// address", c.primaryURL)
		}
		if err := cli.CheckURL("primary", c.primaryURL, insecure); err != nil {
			return err
		}
		c.primaryURL = strings.TrimSuffix(c.primaryURL, "/")
	}
	if c.guardShare <= 0 || c.guardShare > 1 {
		return fmt.Errorf("-guard-share %v: want a share above 0 and at most 1", c.guardShare)
	}
	if c.guardMin < 1 {
		return errors.New("-guard-min must be at least 1")
	}
	switch c.lease {
	case "manual":
		if len(c.etcd) > 0 {
			return errors.New("-etcd needs -lease etcd")
		}
	case "etcd":
		if len(c.etcd) == 0 {
			return errors.New("-lease etcd needs -etcd, the etcd cluster's client URLs")
		}
		if len(c.peers) == 0 {
			return errors.New("-lease etcd needs -peer: the nodes the lease may go to")
		}
		if _, err := c.timers().Check(); err != nil {
			return fmt.Errorf("-lease-ttl: %w", err)
		}
	default:
		return fmt.Errorf("-lease %q: want manual or etcd", c.lease)
	}
	for _, fw := range c.forwards {
		if _, fixed := fw.targets[""]; fixed {
			continue
		}
		for name := range fw.targets {
			if _, ok := c.peers[name]; !ok && name != c.name {
				return fmt.Errorf("-forward %s: node %q is neither -name nor a -peer", fw.proto, name)
			}
		}
	}
	c.operatorSrc.Env, c.operatorSrc.Flag = "RESILMAIL_OPERATOR_SECRET", "operator-secret-file"
	op, err := c.operatorSrc.Read(getenv)
	switch {
	case errors.Is(err, secret.ErrMissing):
	case err != nil:
		return fmt.Errorf("operator secret: %w", err)
	case string(op) == string(replication):
		return errors.New("the operator secret is the replication secret: give operators a credential of their own (-operator-secret-file)")
	default:
		c.operator = op
	}
	return nil
}

// timers are the etcd lease's: renewals every TTL/5, requests bounded by
// Renew/2, the term given up a tenth of the TTL before it can expire.
func (c *nodeConfig) timers() failover.Timers {
	return failover.Timers{TTL: c.ttl}
}

// peerClient is the client of the peers' HTTP ports: HTTP/2 over TLS,
// verified with -ca if set.
func peerClient(ca string, timeout time.Duration) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = true
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-ca %s: no PEM certificate in it", ca)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: timeout}, nil
}

// server is the mail server as a promotable node: a store whose role
// (primary, standby, fenced) and epoch are its own durable ones, with the
// replication that goes with the role (failover/storenode), and what
// moves the role.
type server struct {
	c      config
	st     *store.Store
	n      *storenode.Node
	log    *slog.Logger
	client *http.Client // to the peers

	manual  *failover.Manual  // -lease manual
	etcd    *failover.Etcd    // -lease etcd
	etcdCli *clientv3.Client  // closed by close
	el      *failover.Elector // runs with either lease
	watcher *failover.Watcher // nil without peers
	fwd     *forwarder        // -forward
	busy    atomic.Bool       // a switchover or an operator's role change runs
}

// openNode prepares the node over st: its start role (a new store given
// -standby or -primary starts as a standby), the replication options of
// either role, the lease. It starts nothing.
func openNode(c config, st *store.Store, log *slog.Logger) (*server, error) {
	m := &server{c: c, st: st, log: log}
	var err error
	if m.client, err = peerClient(c.node.ca, 0); err != nil {
		return nil, err
	}
	if fresh(st) && st.Role() == store.RolePrimary && (c.node.standby || c.node.primaryURL != "") {
		if err := st.SetRole(context.Background(), store.RoleStandby); err != nil {
			return nil, err
		}
		log.Warn("node: a new store starts as a standby")
	}
	// Each replica has its own secret, derived from the cluster's; the
	// peers are replicas when this node is primary.
	perReplica := map[string][]byte{}
	for _, name := range append(slices.Clone(c.replicas), c.node.peerOrder...) {
		perReplica[name] = replicaSecret(c.secret, name)
	}
	if len(perReplica) == 0 {
		perReplica = nil
	}
	peers := map[string]string{}
	for name, u := range c.node.peers {
		peers[name] = u + "/replicate"
	}
	replicaSec := replicaSecret(c.secret, c.node.name)
	if c.node.primaryURL != "" {
		// A fixed primary, as examples/secondary follows one: the
		// secret is the one given (the replica's own, or the primary's).
		peers["primary"] = c.node.primaryURL + "/replicate"
		replicaSec = c.secret
	}
	peerHTTP, err := peerClient(c.node.ca, 0)
	if err != nil {
		return nil, err
	}
	m.n = storenode.New(st, storenode.Options{
		Name:   c.node.name,
		Secret: c.secret,
		Dir:    c.dir,
		Peers:  peers,
		Primary: &replicate.PrimaryOptions{
			ReplicaSecrets: perReplica, Mode: c.mode, Replicas: c.replicas, AckTimeout: c.ackTimeout, OnTimeout: c.onTimeout,
		},
		Replica: &replicate.ReplicaOptions{
			Secret: replicaSec, HTTPClient: peerHTTP,
			Hold: replicate.NewExpungeGuard(st, &replicate.ExpungeGuardOptions{MaxShare: c.node.guardShare, MinMessages: c.node.guardMin, Logger: log}),
		},
		Logger: log,
	})
	// A primary that stops (a restart, an upgrade, the whole pair shut
	// down) is not fenced: under etcd its lease is released, so the
	// standby takes over at a higher epoch and this node, started again,
	// finds it primary and follows it; if both were stopped, it comes back
	// primary and campaigns. Only a lost or revoked term demotes it.
	nodeCand := m.n.Candidate(c.node.maxLag)
	cand := failover.CandidateFuncs{
		EligibleFunc: nodeCand.Eligible,
		PromoteFunc:  nodeCand.Promote,
		DemoteFunc: func(ctx context.Context, reason error) error {
			if errors.Is(reason, context.Canceled) {
				return nil
			}
			return nodeCand.Demote(ctx, reason)
		},
	}
	switch c.node.lease {
	case "etcd":
		m.etcdCli, err = clientv3.New(clientv3.Config{Endpoints: c.node.etcd, DialTimeout: 2 * time.Second, Logger: nil})
		if err != nil {
			return nil, fmt.Errorf("-etcd: %w", err)
		}
		if m.etcd, err = failover.NewEtcd(m.etcdCli, c.node.name, &failover.EtcdOptions{Timers: c.node.timers(), Logger: log}); err != nil {
			m.etcdCli.Close()
			return nil, err
		}
		if m.el, err = failover.NewElector(m.etcd, cand, &failover.ElectorOptions{Timers: m.etcd.Timers(), Logger: log}); err != nil {
			m.etcdCli.Close()
			return nil, err
		}
	default:
		m.manual = failover.NewManual(uint64(st.Epoch()))
		if m.el, err = failover.NewElector(m.manual, cand, &failover.ElectorOptions{Logger: log}); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// fresh reports whether st was never written: a new store.
func fresh(st *store.Store) bool {
	return st.Position() == 0 && st.Epoch() == 0
}

// peerStatus is what the node reads of a peer's /status.
type peerStatus struct {
	Role    string `json:"role"`
	Epoch   uint64 `json:"epoch"`
	History string `json:"history"`
	Name    string `json:"name"`
}

func (m *server) peerStatus(ctx context.Context, name string) (peerStatus, error) {
	var ps peerStatus
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.c.node.peers[name]+"/status", nil)
	if err != nil {
		return ps, err
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return ps, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ps, fmt.Errorf("%s: %s", name, resp.Status)
	}
	return ps, json.NewDecoder(resp.Body).Decode(&ps)
}

// ErrSecondPrimary is returned at start when a peer is already the
// writable primary of this store's history (a copied data folder) or of
// the same epoch: the node would be a second writable primary.
var ErrSecondPrimary = errors.New("a second writable primary is refused")

// start brings the node into its role before it takes a write: a primary
// whose peer is primary at a higher epoch (it was superseded while it was
// down) is fenced and follows that peer, handing its unreplicated tail
// over as orphans; one whose peer is primary of the same history or at the
// same epoch refuses to start (ErrSecondPrimary); a standby follows the
// -primary, the leader (etcd) or the peer that is primary.
func (m *server) start(ctx context.Context) error {
	if m.st.Role() == store.RolePrimary {
		for _, name := range m.c.node.peerOrder {
			ps, err := m.peerStatus(ctx, name)
			if err != nil || ps.Role != "primary" {
				continue
			}
			mine := m.st.History().String()
			switch {
			case ps.History == mine:
				return fmt.Errorf("%w: peer %s is the primary of this store's history %s (epoch %d; this store: epoch %d): the data folder was copied; start this one as a standby of it (a new -dir with -standby)",
					ErrSecondPrimary, name, mine, ps.Epoch, m.st.Epoch())
			case ps.Epoch == uint64(m.st.Epoch()):
				return fmt.Errorf("%w: peer %s is primary at epoch %d, this store's epoch too: demote one of them (POST /operator/demote) before starting the other",
					ErrSecondPrimary, name, ps.Epoch)
			case ps.Epoch > uint64(m.st.Epoch()):
				m.log.Warn("node: a peer was promoted while this primary was down: fencing this store and following it; what it never replicated is kept as orphans",
					"peer", name, "peer_epoch", ps.Epoch, "epoch", uint64(m.st.Epoch()))
				if err := m.st.Demote(ctx, resilmail.Epoch(ps.Epoch)); err != nil {
					return err
				}
				return m.n.Follow(ctx, name)
			}
		}
	}
	if m.etcd != nil {
		if err := m.n.CheckLeader(ctx, m.etcd); err != nil {
			m.log.Warn("node: cannot ask etcd who holds the lease yet", "err", err)
		}
	}
	switch {
	case m.st.Role() == store.RolePrimary:
		return m.n.Serve()
	case m.c.node.primaryURL != "":
		return m.n.Follow(ctx, "primary")
	}
	return nil // the watcher (manual) or FollowLeader (etcd) finds whom to follow
}

// reconcile, with a manual lease and peers, makes the node follow the
// active node the watcher names: a standby or fenced node that follows
// another (or none) follows it; a primary that sees a primary of a higher
// epoch is fenced and follows it. It does nothing during a switchover or
// an operator's role change, which move the roles themselves.
func (m *server) reconcile(ctx context.Context) {
	active, epoch, ok := m.watcher.Active()
	if !ok || active == m.c.node.name || m.busy.Load() {
		return
	}
	switch m.st.Role() {
	case store.RolePrimary:
		if epoch <= m.st.Epoch() || m.n.Primary() == nil {
			return
		}
		m.log.Warn("node: a peer is primary at a higher epoch: fencing this node and following it", "peer", active, "peer_epoch", uint64(epoch), "epoch", uint64(m.st.Epoch()))
		if err := m.n.Demote(ctx, epoch); err != nil {
			m.log.Error("node: cannot fence this node", "err", err)
			return
		}
	}
	if m.n.Follows() != active && m.n.Primary() == nil {
		if err := m.n.Follow(ctx, active); err != nil {
			m.log.Warn("node: cannot follow the active node", "peer", active, "err", err)
		}
	}
}

// roleName is the node's role as /status says it: the store's, but
// "primary" only while it serves the stream ("starting" before), and
// "standby" for a fenced store that follows a primary again (its
// unreplicated tail handed over as orphans when it rejoined).
func (m *server) roleName() string {
	r := m.st.Role()
	switch {
	case r == store.RolePrimary && m.n.Primary() == nil:
		return "starting"
	case r != store.RolePrimary && m.n.Replica() != nil:
		return "standby"
	}
	return r.String()
}

func (m *server) close() {
	m.n.Close()
	if m.etcdCli != nil {
		m.etcdCli.Close()
	}
}
