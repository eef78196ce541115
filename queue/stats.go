package queue

import (
	"time"
)

type counters struct {
	enqueued, duplicates, refused        uint64
	delivered, deferred, failed          uint64
	expired, maybeDelivered, dsns        uint64
	corrupt, throttled, badRecords       uint64
	compactions, rewritten, damagedBytes uint64
	interrupted, notStarted, split       uint64
}

// Stats is a snapshot of a queue's state and counters, like sql.DBStats.
// Counters count since Open.
type Stats struct {
	// Messages is the number of queued messages, by state.
	Messages map[State]int
	// Recipients is the number of recipients still to deliver.
	Recipients int
	// Bytes is the size of queued bodies.
	Bytes int64
	// OldestAge is the age of the oldest queued message.
	OldestAge time.Duration
	// InFlight is the number of delivery attempts running.
	InFlight int
	// Draining is true once Shutdown has begun: no new delivery starts.
	Draining bool
	// HeldMessages counts messages an operator held (Hold).
	HeldMessages int
	// DeferredMessages counts messages tried at least once and waiting to
	// be tried again.
	DeferredMessages int
	// MaybeDeliveredRecipients counts recipients now held as maybe
	// delivered (MaybeHold), waiting for an operator or their expiry.
	MaybeDeliveredRecipients int

	Enqueued       uint64 // messages accepted
	Duplicates     uint64 // enqueues ignored as duplicates
	Refused        uint64 // enqueues refused by admission control
	Delivered      uint64 // recipients delivered
	Deferred       uint64 // recipient attempts that failed temporarily
	Failed         uint64 // recipients that failed permanently or were bounced
	Expired        uint64 // recipients that expired
	MaybeDelivered uint64 // recipients whose outcome was lost
	Notifications  uint64 // DSNs enqueued (bounces and delay warnings)
	Corrupt        uint64 // bodies found corrupt
	Throttled      uint64 // deliveries put off because their destination was slowed down
	Interrupted    uint64 // recipients whose attempt a crash cut short, found at Open and retried
	NotStarted     uint64 // deliveries dropped before they started because the queue was stopping
	Resent452      uint64 // recipients refused with 452 after others of their transaction were taken, sent again at once

	// Storage.
	Fsyncs         uint64 // fsyncs of the log
	Appends        uint64 // records appended to the log
	Segments       int    // log segments on disk
	DiskBytes      int64  // bytes in them
	CorruptRegions int    // damaged log regions skipped at Open
	BadRecords     uint64 // unreadable records skipped at Open
	DamagedBytes   uint64 // bytes of torn or damaged log regions moved aside at Open
	Compactions    uint64 // segments compacted
	Rewritten      uint64 // messages copied forward by compaction
	Dedup          int    // ids remembered for deduplication
}

// Stats returns the queue's state and counters.
func (q *Queue) Stats() Stats {
	ws := q.wal.Stats()
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.opts.Now()
	st := Stats{
		Messages: map[State]int{}, Bytes: q.bytes, InFlight: q.active, Draining: q.draining,
		Enqueued: q.counters.enqueued, Duplicates: q.counters.duplicates, Refused: q.counters.refused,
		Delivered: q.counters.delivered, Deferred: q.counters.deferred, Failed: q.counters.failed,
		Expired: q.counters.expired, MaybeDelivered: q.counters.maybeDelivered, Notifications: q.counters.dsns,
		Corrupt: q.counters.corrupt, Throttled: q.counters.throttled,
		Interrupted: q.counters.interrupted, NotStarted: q.counters.notStarted, Resent452: q.counters.split,
		Fsyncs: ws.Syncs, Appends: ws.Appends, Segments: ws.Segments, DiskBytes: ws.Bytes,
		CorruptRegions: ws.CorruptRegions, BadRecords: q.counters.badRecords, DamagedBytes: q.counters.damagedBytes,
		Compactions: q.counters.compactions, Rewritten: q.counters.rewritten, Dedup: len(q.dedup),
	}
	for _, m := range q.msgs {
		if m.synced != nil {
			continue
		}
		state := q.stateLocked(m)
		st.Messages[state]++
		switch {
		case m.rec.Held:
			st.HeldMessages++
		case state == StateDeferred:
			st.DeferredMessages++
		}
		for _, rc := range m.rec.Rcpts {
			switch rc.State {
			case Pending:
				st.Recipients++
			case MaybeDelivered:
				st.MaybeDeliveredRecipients++
			}
		}
		if age := now.Sub(time.Unix(0, m.rec.Created)); age > st.OldestAge {
			st.OldestAge = age
		}
	}
	return st
}
