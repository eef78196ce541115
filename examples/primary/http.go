package main

import (
	"net/http"
	"time"

	"github.com/resilmail/resilmail/imapstore"
	"github.com/resilmail/resilmail/internal/metrics"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// handler serves the node's HTTP endpoints: the replication stream and
// inventory at /replicate/ (for the replicas, with the secret's token;
// 503 while the node is not the primary), /status (JSON, no user names),
// /metrics (Prometheus) and the operator's /operator/.
func handler(n *server, ms *mailServers) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/replicate/", http.StripPrefix("/replicate", n.n.Handler()))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, n.status())
	})
	mux.Handle("GET /metrics", metrics.Handler(func(m *metrics.Writer) {
		var ps replicate.PrimaryStats
		if p := n.n.Primary(); p != nil {
			ps = p.Stats()
		}
		writeMetrics(m, n.st.Stats(), ps)
		if ms.imap != nil {
			writeIMAPMetrics(m, ms.imap.Stats())
		}
	}))
	mux.Handle("/operator/", n.operatorHandler())
	return mux
}

// statusReport is what /status answers.
type statusReport struct {
	// Name, Role (primary, standby, fenced; "starting" before a primary
	// serves its stream), Epoch and History are the node's, as its store
	// keeps them; Follows names the peer a standby replicates.
	Name       string          `json:"name"`
	Role       string          `json:"role"`
	History    string          `json:"history"`
	Follows    string          `json:"follows,omitempty"`
	Lease      string          `json:"lease"`
	LeaseHeld  bool            `json:"lease_held"`
	Active     string          `json:"active,omitempty"`
	Ack        string          `json:"ack"`
	AckTimeout string          `json:"ack_timeout"`
	Position   uint64          `json:"position"`
	Epoch      uint64          `json:"epoch"`
	Users      int             `json:"users"`
	Messages   int             `json:"messages"`
	Corrupt    int             `json:"corrupt_bodies"`
	Restored   uint64          `json:"bodies_restored"`
	Superseded bool            `json:"superseded"`
	Accepted   uint64          `json:"accepted_unreplicated"`
	Refused    uint64          `json:"refused_unreplicated"`
	Replicas   []replicaReport `json:"replicas"`
	// Standby: the stream from the primary followed.
	Standby *standbyReport `json:"standby,omitempty"`
}

// standbyReport is a standby's side of /status.
type standbyReport struct {
	Connected       bool   `json:"connected"`
	Received        uint64 `json:"received"`
	Applied         uint64 `json:"applied"`
	PrimaryPosition uint64 `json:"primary_position"`
	LagChanges      uint64 `json:"lag_changes"`
	Held            int    `json:"held"`
	Parked          int    `json:"parked"`
	Orphans         int    `json:"orphans"`
	LastError       string `json:"last_error,omitempty"`
}

type replicaReport struct {
	Name       string    `json:"name"`
	Connected  bool      `json:"connected"`
	Acked      uint64    `json:"acked"`
	AckedAt    time.Time `json:"acked_at,omitzero"`
	LagChanges uint64    `json:"lag_changes"`
	LagSeconds float64   `json:"lag_seconds"`
	// TooFarBehind: the journal no longer reaches back to what the
	// replica acknowledged (it compares in full); lag_seconds is then at
	// least the age of the oldest change kept.
	TooFarBehind bool   `json:"too_far_behind,omitempty"`
	LastError    string `json:"last_error,omitempty"`
	BytesSent    uint64 `json:"bytes_sent"`
	ChangesSent  uint64 `json:"changes_sent"`
}

func (n *server) status() statusReport {
	c, st := n.c, n.st
	ss := st.Stats()
	var ps replicate.PrimaryStats
	if p := n.n.Primary(); p != nil {
		ps = p.Stats()
	}
	s := statusReport{
		Name: c.node.name, Role: n.roleName(), History: st.History().String(), Follows: n.n.Follows(),
		Lease: c.node.lease, LeaseHeld: n.el.Status().Primary,
		Ack: c.mode.String(), AckTimeout: c.ackTimeout.String(),
		Position: st.Position(), Epoch: uint64(st.Epoch()), Users: ss.Users, Messages: ss.Messages, Corrupt: ss.CorruptBodies, Restored: ps.BodiesRestored,
		Superseded: ps.FencedBy != 0, Accepted: ps.AcceptedUnreplicated, Refused: ps.RefusedUnreplicated,
		Replicas: []replicaReport{},
	}
	if n.watcher != nil {
		s.Active, _, _ = n.watcher.Active()
	}
	if r := n.n.Replica(); r != nil {
		rs := r.Stats()
		s.Standby = &standbyReport{Connected: rs.Connected, Received: rs.Received, Applied: rs.Applied, PrimaryPosition: rs.PrimaryPosition,
			Held: rs.Held, Parked: rs.Parked, Orphans: rs.Orphans, LastError: rs.LastError}
		if rs.PrimaryPosition > rs.Applied {
			s.Standby.LagChanges = rs.PrimaryPosition - rs.Applied
		}
	}
	for _, r := range ps.Replicas {
		s.Replicas = append(s.Replicas, replicaReport{
			Name: r.Name, Connected: r.Connected, Acked: r.Acked, AckedAt: r.AckedAt,
			LagChanges: r.LagChanges, LagSeconds: r.LagAge.Seconds(), TooFarBehind: r.TooFarBehind, LastError: r.LastError,
			BytesSent: r.BytesSent, ChangesSent: r.ChangesSent,
		})
	}
	return s
}

func writeMetrics(m *metrics.Writer, ss store.Stats, ps replicate.PrimaryStats) {
	m.Gauge("resilmail_store_position", "The last change in the store's journal.", float64(ss.Seq))
	m.Gauge("resilmail_store_epoch", "The store's epoch.", float64(ss.Epoch))
	m.Gauge("resilmail_store_users", "Users.", float64(ss.Users))
	m.Gauge("resilmail_store_messages", "Messages.", float64(ss.Messages))
	m.Gauge("resilmail_store_body_bytes", "Bytes of distinct bodies.", float64(ss.BodyBytes))
	m.Gauge("resilmail_store_corrupt_bodies", "Bodies marked corrupt, never served.", float64(ss.CorruptBodies))
	m.Gauge("resilmail_store_pack_bytes", "Bytes of the body packs a restore wrote.", float64(ss.PackBytes))
	m.Gauge("resilmail_store_pack_live_bytes", "Bytes of the bodies in those packs still needed.", float64(ss.PackLiveBytes))
	m.Counter("resilmail_store_journal_fsyncs_total", "Fsyncs of the journal.", ss.JournalFsyncs)
	m.Gauge("resilmail_store_retention_holds", "Retention holds of readers (replicas, backups).", float64(ss.Holds))
	m.Counter("resilmail_store_retention_holds_expired_total", "Retention holds dropped for not being renewed within HoldMaxAge.", ss.HoldsExpired)
	m.Counter("resilmail_replicate_accepted_unreplicated_total", "Deliveries accepted after the replicas did not answer in time.", ps.AcceptedUnreplicated)
	m.Counter("resilmail_replicate_refused_unreplicated_total", "Deliveries refused because the replicas did not answer in time.", ps.RefusedUnreplicated)
	connected, lag, age, sent := map[string]float64{}, map[string]float64{}, map[string]float64{}, map[string]float64{}
	for _, r := range ps.Replicas {
		connected[r.Name] = 0
		if r.Connected {
			connected[r.Name] = 1
		}
		lag[r.Name] = float64(r.LagChanges)
		age[r.Name] = r.LagAge.Seconds()
		sent[r.Name] = float64(r.BytesSent)
	}
	m.GaugeVec("resilmail_replicate_connected", "Whether a replica's stream is open.", "replica", connected)
	m.GaugeVec("resilmail_replicate_lag_changes", "Changes a replica has not acknowledged.", "replica", lag)
	m.GaugeVec("resilmail_replicate_lag_seconds", "Age of the oldest change a replica has not acknowledged.", "replica", age)
	m.GaugeVec("resilmail_replicate_sent_bytes", "Stream and body bytes sent to a replica.", "replica", sent)
}

func writeIMAPMetrics(m *metrics.Writer, s imapstore.Stats) {
	m.Gauge("resilmail_imap_sessions", "IMAP sessions logged in.", float64(s.Sessions))
	m.Gauge("resilmail_imap_open_mailboxes", "Mailboxes selected by at least one IMAP session.", float64(s.OpenMailboxes))
	m.Counter("resilmail_imap_failed_logins_total", "Failed IMAP logins.", s.FailedLogins)
	m.Counter("resilmail_imap_refused_readonly_total", "IMAP writes refused because the node is a standby.", s.RefusedReadOnly)
	m.Counter("resilmail_store_derived_hits_total", "Envelopes and structures served from the per-body cache.", s.DerivedHits)
	m.Counter("resilmail_store_derived_misses_total", "Envelopes and structures parsed from a body.", s.DerivedMisses)
	m.Gauge("resilmail_store_derived_bytes", "Bytes held by the per-body cache.", float64(s.DerivedBytes))
}
