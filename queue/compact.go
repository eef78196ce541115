package queue

import (
	"bytes"
	"context"
	"errors"
	"io"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/wal"
)

// Compaction frees disk: the oldest sealed log segment is removed once every
// message whose record lives in it has been restated at the end of the log
// (its whole state and its body, verified) and every remembered id in it
// carried forward. Only the oldest segment is ever removed, so an update
// record never outlives the message record it refers to. A segment that is
// still mostly live waits until the log is more than twice the live data.

// noteAppendLocked wakes the compactor when the log has started a new
// segment.
func (q *Queue) noteAppendLocked(pos wal.Pos) {
	if pos.Seg > q.curSeg {
		q.curSeg = pos.Seg
		select {
		case q.compactCh <- struct{}{}:
		default:
		}
	}
}

// compactor runs compactions until ctx is done.
func (q *Queue) compactor(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.compactCh:
			for q.compactOnce() && ctx.Err() == nil {
			}
		}
	}
}

// compactOnce compacts the oldest segment if it is worth it and reports
// whether it did.
func (q *Queue) compactOnce() bool {
	segs := q.wal.Segments()
	if len(segs) < 2 {
		return false
	}
	oldest := segs[0]
	q.mu.Lock()
	var live int64
	var inSeg []*message
	for _, m := range q.msgs {
		if m.pos.Seg == oldest {
			live += m.size
			inSeg = append(inSeg, m)
		}
	}
	liveAll := q.bytes
	q.mu.Unlock()
	disk := q.wal.Stats().Bytes
	if live*2 > q.wal.SegmentSize(oldest) && disk < 2*liveAll+q.segmentSize() {
		return false
	}
	for _, m := range inSeg {
		if m.size > spoolThreshold {
			if !q.restateInPlace(m, oldest) {
				return false
			}
			continue
		}
		body, err := q.body(m)
		var ce *resilmail.CorruptError
		switch {
		case errors.As(err, &ce):
			q.quarantineCorrupt(m, err)
			body = nil // the damaged bytes are in the corrupt folder
		case err != nil:
			// Not damage (too many open files, an I/O error): keep the
			// segment and try again later; never restate a good message
			// without its body.
			q.log.Error("queue: compaction stopped: cannot read a message", "segment", oldest, "msg_id", m.id(), "err", err)
			return false
		}
		q.mu.Lock()
		if m.removed || m.pos.Seg != oldest {
			q.mu.Unlock()
			continue
		}
		if body == nil && !m.rec.Corrupt {
			m.rec.Corrupt = true
		}
		rec, err := encode(recMessage, &m.rec, body)
		if err == nil {
			var pos wal.Pos
			pos, err = q.wal.Append(rec)
			if err == nil {
				m.pos = pos
				m.size = int64(len(body))
				q.counters.rewritten++
			}
		}
		q.mu.Unlock()
		if err != nil {
			q.log.Error("queue: compaction failed", "segment", oldest, "err", err)
			return false
		}
	}
	q.mu.Lock()
	for id, t := range q.dedup {
		if t.seg != oldest {
			continue
		}
		tr := &tombRec{ID: id, At: t.at, Sum: t.sum.hex()}
		rec, err := encode(recTombstone, tr, nil)
		if err == nil {
			var pos wal.Pos
			if pos, err = q.wal.Append(rec); err == nil {
				t.seg = pos.Seg
				q.dedup[id] = t
			}
		}
		if err != nil {
			q.mu.Unlock()
			q.log.Error("queue: compaction failed", "segment", oldest, "err", err)
			return false
		}
	}
	q.mu.Unlock()
	if err := q.wal.Sync(); err != nil {
		q.log.Error("queue: compaction failed", "segment", oldest, "err", err)
		return false
	}
	q.compactMu.Lock()
	err := q.wal.RemoveBefore(oldest + 1)
	q.compactMu.Unlock()
	if err != nil {
		q.log.Error("queue: removing compacted segment", "segment", oldest, "err", err)
		return false
	}
	q.mu.Lock()
	q.counters.compactions++
	q.mu.Unlock()
	q.log.Debug("queue: compacted segment", "segment", oldest, "live_messages", len(inSeg), "live_bytes", live)
	return true
}

// restateInPlace copies a large message forward for compaction without
// holding its body in memory (nor the queue's lock during the copy): its
// place at the end of the log is reserved under the lock, so that any
// update written meanwhile comes after it, and filled from the old record.
// It reports false when compaction must stop.
func (q *Queue) restateInPlace(m *message, oldest uint64) bool {
	body, rec, err := q.openBody(m)
	var ce *resilmail.CorruptError
	switch {
	case errors.As(err, &ce):
		q.quarantineCorrupt(m, err)
		body = io.NewSectionReader(bytes.NewReader(nil), 0, 0) // the damaged bytes are in the corrupt folder
	case err != nil:
		q.log.Error("queue: compaction stopped: cannot read a message", "segment", oldest, "msg_id", m.id(), "err", err)
		return false
	default:
		defer rec.Close()
	}
	q.mu.Lock()
	if m.removed || m.pos.Seg != oldest {
		q.mu.Unlock()
		return true
	}
	if body.Size() == 0 && !m.rec.Corrupt {
		m.rec.Corrupt = true
	}
	prefix, err := encode(recMessage, &m.rec, nil)
	var fill *wal.Pending
	if err == nil {
		fill, err = q.wal.Reserve(prefix, body.Size())
	}
	q.mu.Unlock()
	if err == nil {
		_, err = fill.Fill(body)
	}
	if err != nil {
		q.log.Error("queue: compaction failed", "segment", oldest, "msg_id", m.id(), "err", err)
		return false
	}
	q.mu.Lock()
	if !m.removed && m.pos.Seg == oldest {
		m.pos = fill.Pos()
		m.size = body.Size()
		q.counters.rewritten++
	}
	q.mu.Unlock()
	return true
}

func (q *Queue) segmentSize() int64 {
	if q.opts.SegmentSize > 0 {
		return q.opts.SegmentSize
	}
	return 64 << 20
}
