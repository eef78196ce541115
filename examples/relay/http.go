package main

import (
	"net/http"
	"net/http/pprof"

	"github.com/resilmail/resilmail/internal/metrics"
	"github.com/resilmail/resilmail/queue"
)

// httpHandler serves the relay's endpoints: /metrics (the queue's counters
// and gauges for Prometheus), /debug/pprof/ (Go's profiler) and, on the
// node that publishes the pool's policy, /policy, and on the node that
// keeps the pool's quarantine, /quarantine/.
func httpHandler(q *queue.Queue, policy, quarantine http.Handler) http.Handler {
	mux := http.NewServeMux()
	if policy != nil {
		mux.Handle("/policy", policy)
	}
	if quarantine != nil {
		mux.Handle("/quarantine/", quarantine)
	}
	mux.Handle("GET /metrics", metrics.Handler(func(m *metrics.Writer) { writeQueueMetrics(m, q.Stats()) }))
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
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
	m.Counter("resilmail_queue_fsyncs_total", "Fsyncs of the queue log.", st.Fsyncs)
	m.Counter("resilmail_queue_appends_total", "Records appended to the queue log.", st.Appends)
	m.Gauge("resilmail_queue_disk_bytes", "Bytes in the queue log's segments.", float64(st.DiskBytes))
	m.Counter("resilmail_queue_compactions_total", "Log segments compacted.", st.Compactions)
}
