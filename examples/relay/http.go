package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"

	"github.com/resilmail/resilmail/internal/metrics"
	"github.com/resilmail/resilmail/quarantine"
	"github.com/resilmail/resilmail/queue"
)

// httpHandler serves the relay's endpoints for other machines: /metrics
// (the queue's counters and gauges for Prometheus, with the policy's
// version and age and the quarantine outbox's backlog) and, on the node that
// publishes the pool's policy, /policy, and on the node that keeps the
// pool's quarantine, /quarantine/. Debug handlers are never served here:
// see debugHandler.
func httpHandler(q *queue.Queue, sc *scanning, pstate func() policyState, outbox func() quarantine.OutboxStats, policy, quarantineUI http.Handler) http.Handler {
	mux := http.NewServeMux()
	if policy != nil {
		mux.Handle("/policy", policy)
	}
	if quarantineUI != nil {
		mux.Handle("/quarantine/", quarantineUI)
	}
	mux.Handle("GET /metrics", metrics.Handler(func(m *metrics.Writer) {
		writeQueueMetrics(m, q.Stats())
		writeStatusMetrics(m, pstate, outbox)
		sc.writeMetrics(m)
	}))
	return mux
}

// debugHandler serves Go's profiler at /debug/pprof/ and status at
// /status, on the -debug-addr listener only, which listenDebug keeps on
// loopback: profiles show memory contents and the command line.
func debugHandler(status http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /status", status)
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// listenDebug listens on addr for the debug handlers: an address without
// a host means 127.0.0.1, and a host that is not a loopback address is
// refused.
func listenDebug(addr string) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("-debug-addr %q: %w", addr, err)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	if !isLoopback(host) {
		return nil, fmt.Errorf("-debug-addr %q: debug handlers are served on loopback only (127.0.0.1, ::1 or localhost); reach them through ssh -L", addr)
	}
	return net.Listen("tcp", net.JoinHostPort(host, port))
}

func writeQueueMetrics(m *metrics.Writer, st queue.Stats) {
	byState := map[string]float64{}
	for _, s := range []queue.State{queue.StateQueued, queue.StateDeferred, queue.StateDelivering, queue.StateHeld, queue.StateMaybeDelivered, queue.StateCorrupt} {
		byState[string(s)] = float64(st.Messages[s])
	}
	m.GaugeVec("resilmail_queue_messages", "Queued messages by state.", "state", byState)
	m.Gauge("resilmail_queue_recipients", "Recipients still to deliver.", float64(st.Recipients))
	m.Gauge("resilmail_queue_bytes", "Size of queued bodies in bytes.", float64(st.Bytes))
	m.Gauge("resilmail_queue_oldest_age_seconds", "Age of the oldest queued message.", st.OldestAge.Seconds())
	m.Gauge("resilmail_queue_in_flight", "Delivery attempts running.", float64(st.InFlight))
	m.Gauge("resilmail_queue_held_messages", "Messages an operator held.", float64(st.HeldMessages))
	m.Gauge("resilmail_queue_deferred_messages", "Messages waiting to be tried again.", float64(st.DeferredMessages))
	m.Gauge("resilmail_queue_maybe_delivered_recipients", "Recipients held as maybe delivered, waiting for an operator or their expiry.", float64(st.MaybeDeliveredRecipients))
	m.Counter("resilmail_queue_enqueued_total", "Messages accepted.", st.Enqueued)
	m.Counter("resilmail_queue_duplicates_total", "Enqueues ignored as duplicates.", st.Duplicates)
	m.Counter("resilmail_queue_refused_total", "Enqueues refused by admission control.", st.Refused)
	m.Counter("resilmail_queue_delivered_total", "Recipients delivered.", st.Delivered)
	m.Counter("resilmail_queue_deferred_total", "Recipient attempts that failed temporarily.", st.Deferred)
	m.Counter("resilmail_queue_failed_total", "Recipients that failed permanently or were bounced.", st.Failed)
	m.Counter("resilmail_queue_expired_total", "Recipients that expired.", st.Expired)
	m.Counter("resilmail_queue_maybe_delivered_total", "Recipients whose outcome was lost.", st.MaybeDelivered)
	m.Counter("resilmail_queue_notifications_total", "Delivery status notifications sent.", st.Notifications)
	m.Counter("resilmail_queue_corrupt_total", "Bodies found corrupt.", st.Corrupt)
	m.Counter("resilmail_queue_throttled_total", "Deliveries put off by a slowed-down destination.", st.Throttled)
	m.Counter("resilmail_queue_resent_452_total", "Recipients refused with 452 after others of their transaction were taken, sent again at once.", st.Resent452)
	m.Counter("resilmail_queue_fsyncs_total", "Fsyncs of the queue log.", st.Fsyncs)
	m.Counter("resilmail_queue_appends_total", "Records appended to the queue log.", st.Appends)
	m.Gauge("resilmail_queue_disk_bytes", "Bytes in the queue log's segments.", float64(st.DiskBytes))
	m.Counter("resilmail_queue_compactions_total", "Log segments compacted.", st.Compactions)
}
