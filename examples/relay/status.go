package main

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/resilmail/resilmail/internal/metrics"
	"github.com/resilmail/resilmail/quarantine"
	"github.com/resilmail/resilmail/queue"
)

// policyState is what this relay knows of the pool's policy.
type policyState struct {
	role      string    // "publisher" or "follower"
	version   uint64    // in use; 0: none yet
	appliedAt time.Time // when this node took that version
	heard     time.Time // the newest seal vouching for it (its issue time)
	stale     bool      // a follower not vouched for within StaleAfter
}

// relayStatus is the document /status serves: what an operator (or the
// status page) needs to see that this relay is well, as JSON. The field
// names are those failover/statuspage reads.
type relayStatus struct {
	Role string `json:"role"` // always "relay"

	QueueMessages            int     `json:"queue_messages"`
	QueueOldestAgeSeconds    float64 `json:"queue_oldest_age_seconds"`
	QueueBytes               int64   `json:"queue_bytes"`
	InFlight                 int     `json:"in_flight"`
	Held                     int     `json:"held_messages"`
	Deferred                 int     `json:"deferred_messages"`
	MaybeDeliveredRecipients int     `json:"maybe_delivered_recipients"`
	Corrupt                  int     `json:"corrupt_messages"`
	Draining                 bool    `json:"draining,omitempty"`

	PolicyRole       string     `json:"policy_role,omitempty"`
	PolicyVersion    *uint64    `json:"policy_version,omitempty"`
	PolicyAppliedAt  *time.Time `json:"policy_applied_at,omitempty"`
	PolicyAgeSeconds *float64   `json:"policy_age_seconds,omitempty"` // since the newest seal vouching for it
	PolicyStale      *bool      `json:"policy_stale,omitempty"`

	QuarantineOutbox          *int     `json:"quarantine_outbox,omitempty"` // entries not yet acknowledged by the centre
	QuarantineOutboxBytes     *int64   `json:"quarantine_outbox_bytes,omitempty"`
	QuarantineOutboxOldestAge *float64 `json:"quarantine_outbox_oldest_age_seconds,omitempty"`
}

// statusOf gathers the relay's status now.
func statusOf(q *queue.Queue, policy func() policyState, outbox func() quarantine.OutboxStats, now time.Time) relayStatus {
	st := q.Stats()
	rs := relayStatus{
		Role:                     "relay",
		QueueOldestAgeSeconds:    st.OldestAge.Seconds(),
		QueueBytes:               st.Bytes,
		InFlight:                 st.InFlight,
		Held:                     st.HeldMessages,
		Deferred:                 st.DeferredMessages,
		MaybeDeliveredRecipients: st.MaybeDeliveredRecipients,
		Corrupt:                  st.Messages[queue.StateCorrupt],
		Draining:                 st.Draining,
	}
	for _, n := range st.Messages {
		rs.QueueMessages += n
	}
	if policy != nil {
		ps := policy()
		rs.PolicyRole, rs.PolicyStale = ps.role, &ps.stale
		if ps.version > 0 {
			rs.PolicyVersion = &ps.version
			rs.PolicyAppliedAt = &ps.appliedAt
		}
		if !ps.heard.IsZero() {
			age := max(now.Sub(ps.heard), 0).Seconds()
			rs.PolicyAgeSeconds = &age
		}
	}
	if outbox != nil {
		ob := outbox()
		rs.QuarantineOutbox, rs.QuarantineOutboxBytes = &ob.Pending, &ob.PendingBytes
		if !ob.Oldest.IsZero() {
			age := max(now.Sub(ob.Oldest), 0).Seconds()
			rs.QuarantineOutboxOldestAge = &age
		}
	}
	return rs
}

// statusHandler serves the relay's status as JSON. It is mounted on the
// loopback -debug-addr listener only: it tells the queue's size and state
// and the policy's age, which is no business of the Internet's.
func statusHandler(q *queue.Queue, policy func() policyState, outbox func() quarantine.OutboxStats) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(statusOf(q, policy, outbox, time.Now()))
	})
}

// writeStatusMetrics adds to /metrics the policy's version and age and the
// quarantine outbox's backlog, as failover/statuspage reads them.
func writeStatusMetrics(m *metrics.Writer, policy func() policyState, outbox func() quarantine.OutboxStats) {
	now := time.Now()
	if policy != nil {
		ps := policy()
		m.Gauge("resilmail_policy_version", "Version of the pool's policy in use (0: none yet).", float64(ps.version))
		if !ps.heard.IsZero() {
			m.Gauge("resilmail_policy_age_seconds", "Seconds since the newest seal vouching for the policy in use.", max(now.Sub(ps.heard), 0).Seconds())
		}
	}
	if outbox != nil {
		ob := outbox()
		m.Gauge("resilmail_quarantine_outbox_entries", "Rejects recorded here and not yet acknowledged by the quarantine centre.", float64(ob.Pending))
		m.Gauge("resilmail_quarantine_outbox_bytes", "Bytes of those entries' bodies.", float64(ob.PendingBytes))
	}
}
