package queue

import (
	"container/heap"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
	"github.com/resilmail/resilmail/internal/wal"
)

// maxHistory bounds the attempts kept per message for Inspect.
const maxHistory = 10

// Queue is a durable store-and-forward mail queue. Create it with [Open],
// deliver with [Queue.Run], stop with [Queue.Close]. All methods are safe for
// concurrent use.
type Queue struct {
	dir    string
	d      resilmail.Deliverer
	opts   Options
	log    *slog.Logger
	wal    *wal.Log
	unlock func() error

	// compactMu keeps a log segment from being removed while a body is read
	// from it: readers hold it shared, removal exclusively.
	compactMu sync.RWMutex

	mu        sync.Mutex
	msgs      map[string]*message
	dedup     map[string]tomb
	dedupFIFO []string
	sched     msgHeap
	dests     map[string]*dest
	rated     map[*dest]struct{} // destinations with attempts waiting for their rate
	bytes     int64
	active    int // jobs in flight
	counters  counters
	running   bool
	closed    bool
	draining  bool          // Shutdown: start no delivery
	idle      chan struct{} // closed when the last delivery in flight ends
	rnd       *mrand.Rand
	freeAt    time.Time // when free space was last checked
	freeLow   bool
	wake      chan struct{}
	stop      context.CancelFunc
	runDone   chan struct{}
	wg        sync.WaitGroup // jobs and notifications
	compactCh chan struct{}
	curSeg    uint64   // the log segment last appended to
	salvaged  []msgRec // envelopes of damaged message records, from Open
}

type tomb struct {
	at  int64 // unix nanoseconds
	seg uint64
	sum sum128 // the body's digest, cut to 128 bits; zero: not known
}

// sum128 is the first half of a body's digest: enough to tell a reused id
// with other content from a repeat (a chance collision needs 2^64 tries),
// at half the memory of the whole digest for each remembered id.
type sum128 [16]byte

func cut(d resilmail.Digest) sum128 { return sum128(d[:16]) }

// hex is the sum in hex, as records carry it; "" for the zero sum128 (not
// known).
func (s sum128) hex() string {
	if s == (sum128{}) {
		return ""
	}
	return hex.EncodeToString(s[:])
}

// parseSum reads a sum128 in hex (sum128.hex); anything else is the zero
// sum128.
func parseSum(s string) sum128 {
	var sum sum128
	if b, err := hex.DecodeString(s); err == nil && len(b) == len(sum) {
		sum = sum128(b)
	}
	return sum
}

// message is the in-memory index entry of a queued message. Its body stays
// on disk.
type message struct {
	rec      msgRec
	pos      wal.Pos // the record holding the body
	size     int64
	synced   chan struct{} // closed once the message record is durable (nil: durable)
	syncErr  error
	heapIdx  int // -1 when not scheduled
	inRound  bool
	next     time.Time
	doom     string // an admin asked to remove ("deleted") or bounce ("bounced") it
	removed  bool
	notifing bool // a notification is being sent
}

func (m *message) id() string { return m.rec.Env.ID }

// Open opens the queue stored in dir, creating it if needed, and restores
// every message that was acknowledged before the last stop or crash with its
// state. Attempts that a crash interrupted are resolved by
// Options.MaybeDelivered. Open takes an exclusive lock on dir: a second Open
// of the same folder, in this process or another, fails until Close.
//
// Messages are delivered through d once [Queue.Run] is called.
func Open(dir string, d resilmail.Deliverer, opts *Options) (*Queue, error) {
	if d == nil {
		return nil, errors.New("queue: nil Deliverer")
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := durable.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	unlock, err := durable.Lock(dir)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	// Messages a crash cut short while they arrived: never acknowledged.
	spoolDir := filepath.Join(dir, "spool")
	err = os.RemoveAll(spoolDir)
	if err == nil {
		err = os.Mkdir(spoolDir, 0o700)
	}
	if err != nil {
		unlock()
		return nil, fmt.Errorf("queue: %w", err)
	}
	q := &Queue{
		dir: dir, d: d, opts: o, log: o.Logger, unlock: unlock,
		msgs:      make(map[string]*message),
		dedup:     make(map[string]tomb),
		dests:     make(map[string]*dest),
		rated:     make(map[*dest]struct{}),
		rnd:       mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64())),
		wake:      make(chan struct{}, 1),
		compactCh: make(chan struct{}, 1),
	}
	start := time.Now()
	l, err := wal.Open(filepath.Join(dir, "log"), wal.Options{
		Kind: "queue", Version: formatVersion, SegmentSize: o.SegmentSize, Logger: o.Logger,
		Damaged: q.damaged, OpenFile: o.openFile,
	}, q.replay)
	if err != nil {
		unlock()
		return nil, fmt.Errorf("queue: open %s: %w", dir, err)
	}
	q.wal = l
	if err := q.recover(); err != nil {
		l.Close()
		unlock()
		return nil, err
	}
	st := l.Stats()
	q.log.Info("queue opened", "dir", dir, "messages", len(q.msgs), "segments", st.Segments,
		"corrupt_regions", st.CorruptRegions, "bad_records", q.counters.badRecords, "took", time.Since(start))
	return q, nil
}

// damaged moves a region of the log that Open skipped into the folder
// "corrupt", and salvages what it can: a message record whose envelope is
// still readable is kept in the queue as corrupt, so the operator sees whose
// mail was damaged. A torn tail (never acknowledged) is only moved aside.
func (q *Queue) damaged(pos wal.Pos, data []byte, torn bool) {
	kind := "damaged"
	if torn {
		kind = "torn"
	}
	dir := filepath.Join(q.dir, "corrupt")
	name := filepath.Join(dir, fmt.Sprintf("%016x-%d.%s", pos.Seg, pos.Off, kind))
	err := os.MkdirAll(dir, 0o700)
	if err == nil {
		err = durable.WriteFile(durable.OS, name, data, 0o600)
	}
	q.counters.damagedBytes += uint64(len(data))
	q.log.Warn("queue: log region skipped at open and moved aside", "pos", pos.String(), "bytes", len(data), "torn", torn, "copy", name, "err", err)
	if torn || len(data) < 12 {
		return
	}
	typ, meta, _, derr := decode(data[12:])
	if derr != nil || typ != recMessage {
		return
	}
	var m msgRec
	if json.Unmarshal(meta, &m) != nil || resilmail.CheckID(m.Env.ID) != nil || len(m.Rcpts) != len(m.Env.To) {
		return
	}
	m.Corrupt = true
	m.Jobs = nil
	q.salvaged = append(q.salvaged, m)
}

// replay applies one record found by the log at Open.
func (q *Queue) replay(pos wal.Pos, rec []byte) error {
	v, body, err := decodeRecord(rec)
	if err != nil {
		q.counters.badRecords++
		q.log.Error("queue: skipping unreadable record", "pos", pos.String(), "err", err)
		return nil
	}
	switch r := v.(type) {
	case *msgRec:
		m := q.msgs[r.Env.ID]
		if m == nil {
			m = &message{heapIdx: -1}
			q.msgs[r.Env.ID] = m
		} else {
			q.bytes -= m.size
		}
		m.rec = *r
		m.pos = pos
		m.size = int64(len(body))
		q.bytes += m.size
		delete(q.dedup, r.Env.ID)
	case *updRec:
		if m := q.msgs[r.ID]; m != nil {
			q.applyLocked(m, r, pos.Seg)
		} else if r.Removed != "" {
			// The message's record went with a compacted segment.
			q.rememberLocked(r.ID, r.At, pos.Seg, parseSum(r.Sum))
		}
	case *tombRec:
		if q.msgs[r.ID] == nil {
			q.rememberLocked(r.ID, r.At, pos.Seg, parseSum(r.Sum))
		}
	}
	return nil
}

// applyLocked applies an update to a message in memory. The live path and
// replay share it, so that memory after a restart equals memory before.
func (q *Queue) applyLocked(m *message, u *updRec, seg uint64) {
	r := &m.rec
	if u.Start != nil && !validIndexes(u.Start.Rcpts, len(r.Rcpts)) {
		// A recipient index that does not exist (damage that kept its
		// CRC): the attempt is ignored rather than trusted.
		q.counters.badRecords++
		q.log.Error("queue: ignoring an attempt record with a bad recipient index", "msg_id", r.Env.ID, "rcpts", u.Start.Rcpts)
		u.Start = nil
	}
	if u.Start != nil {
		r.Jobs = append(r.Jobs, *u.Start)
		r.JobSeq = max(r.JobSeq, u.Start.Job)
		r.Attempts = u.Attempts
	}
	if u.Next != 0 {
		r.Next = u.Next
	}
	if u.End != nil {
		for i, j := range r.Jobs {
			if j.Job == *u.End {
				r.Jobs = append(r.Jobs[:i:i], r.Jobs[i+1:]...)
				break
			}
		}
	}
	for _, c := range u.Rcpts {
		if c.I >= 0 && c.I < len(r.Rcpts) {
			r.Rcpts[c.I] = c.rcptRec
		}
	}
	if u.History != nil {
		r.History = append(r.History, *u.History)
		if len(r.History) > maxHistory {
			r.History = append(r.History[:0:0], r.History[len(r.History)-maxHistory:]...)
		}
	}
	if u.Held != nil {
		r.Held = *u.Held
	}
	if u.Warned > r.Warned {
		r.Warned = u.Warned
	}
	if u.Corrupt {
		r.Corrupt = true
	}
	if u.Removed != "" {
		delete(q.msgs, r.Env.ID)
		q.bytes -= m.size
		m.removed = true
		if m.heapIdx >= 0 {
			heap.Remove(&q.sched, m.heapIdx)
		}
		q.rememberLocked(r.Env.ID, u.At, seg, cut(r.Digest))
	}
}

// rememberLocked records a finished id, with the digest of its body when
// known, for deduplication.
func (q *Queue) rememberLocked(id string, at int64, seg uint64, sum sum128) {
	if q.opts.DedupWindow < 0 {
		return
	}
	if _, ok := q.dedup[id]; !ok {
		q.dedupFIFO = append(q.dedupFIFO, id)
	}
	q.dedup[id] = tomb{at: at, seg: seg, sum: sum}
	q.expireDedupLocked(q.opts.Now())
}

func (q *Queue) expireDedupLocked(now time.Time) {
	cutoff := now.Add(-q.opts.DedupWindow).UnixNano()
	n := 0
	for n < len(q.dedupFIFO) {
		id := q.dedupFIFO[n]
		t, ok := q.dedup[id]
		if ok && t.at >= cutoff && len(q.dedup) <= q.opts.DedupMax {
			break
		}
		if ok {
			delete(q.dedup, id)
		}
		n++
	}
	if n > 0 {
		q.dedupFIFO = q.dedupFIFO[n:]
		if cap(q.dedupFIFO) > 2*len(q.dedupFIFO)+1024 {
			q.dedupFIFO = append([]string(nil), q.dedupFIFO...)
		}
	}
}

// recover resolves attempts a crash interrupted, finishes what a crash left
// half done and schedules every message.
func (q *Queue) recover() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.opts.Now()
	for _, r := range q.salvaged {
		if q.msgs[r.Env.ID] != nil {
			continue // a later record restated it: the damage hit an old copy
		}
		if _, gone := q.dedup[r.Env.ID]; gone {
			continue
		}
		rec, err := encode(recMessage, &r, nil)
		if err != nil {
			return err
		}
		pos, err := q.wal.Append(rec)
		if err != nil {
			return storageErr(err)
		}
		q.msgs[r.Env.ID] = &message{rec: r, pos: pos, heapIdx: -1}
		q.counters.corrupt++
		q.log.Error("queue: message damaged on disk; kept as corrupt for the operator", "msg_id", r.Env.ID, "from", r.Env.From, "rcpts", len(r.Env.To))
	}
	q.salvaged = nil
	for _, m := range q.msgs {
		if len(m.rec.Jobs) == 0 {
			continue
		}
		// An attempt our own crash cut short: nothing says its final dot
		// left, so its recipients are simply tried again (at least once, as
		// Postfix does), after the backoff the attempt committed.
		for _, j := range append([]jobRec(nil), m.rec.Jobs...) {
			u := &updRec{ID: m.id(), End: &j.Job}
			for _, i := range j.Rcpts {
				rc := m.rec.Rcpts[i]
				if rc.State != Pending {
					continue
				}
				rc.Reply = "attempt interrupted by a restart of the queue; retried"
				rc.Host = j.Dest
				u.Rcpts = append(u.Rcpts, rcptChange{I: i, rcptRec: rc})
				q.counters.interrupted++
				q.log.Warn("queue: attempt interrupted by a crash; retrying",
					"msg_id", m.id(), "rcpt", m.rec.Env.To[i].Addr, "host", j.Dest)
			}
			if err := q.appendLocked(m, u); err != nil {
				return err
			}
		}
	}
	for _, m := range q.msgs {
		m.next = time.Unix(0, m.rec.Next)
		if m.next.Before(now) {
			m.next = now
		}
		q.scheduleLocked(m)
	}
	if err := q.wal.Sync(); err != nil {
		return storageErr(err)
	}
	// Notifications and removals a crash may have cut short.
	for _, m := range q.msgs {
		if q.needsNotifyLocked(m, now) || q.doneLocked(m) {
			q.afterRoundLocked(m)
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

func (p MaybeDeliveredPolicy) String() string {
	switch p {
	case MaybeHold:
		return "hold"
	case MaybeRetry:
		return "retry"
	case MaybeAssumeDelivered:
		return "assume-delivered"
	}
	return fmt.Sprintf("MaybeDeliveredPolicy(%d)", int(p))
}

// appendLocked writes an update to the log and applies it in memory. The
// update is durable after the next wal Sync.
func (q *Queue) appendLocked(m *message, u *updRec) error {
	rec, err := encode(recUpdate, u, nil)
	if err != nil {
		return err
	}
	pos, err := q.wal.Append(rec)
	if err != nil {
		return storageErr(err)
	}
	q.applyLocked(m, u, pos.Seg)
	q.noteAppendLocked(pos)
	return nil
}

// NewID returns a new random envelope id: 26 characters of base32.
func NewID() string {
	var b [16]byte
	rand.Read(b[:])
	return base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])
}

// Enqueue stores a message for delivery and returns its id. When Enqueue
// returns nil, the message and its envelope are on stable storage: a crash
// or kill -9 from then on loses neither. Concurrent calls share fsyncs.
//
// When env.ID is empty a new id is assigned ([NewID]). Enqueueing an id that
// is queued with the same content, or was delivered, bounced or deleted
// within DedupWindow, is a no-op that returns nil: a caller that retries
// after losing the reply never causes a second delivery. An id queued with
// other content is refused with [ErrConflict].
//
// Enqueue reads body to EOF. It returns [ErrInvalid] or [ErrTooLarge]
// (permanent), [ErrFull] (temporary: admission control), [ErrStorage]
// (temporary) or [ErrClosed].
func (q *Queue) Enqueue(ctx context.Context, env resilmail.Envelope, body io.Reader) (string, error) {
	return q.enqueue(ctx, env, body, false)
}

// Deliver makes the queue a [resilmail.Deliverer]: it enqueues the message
// under env.ID (so a repeated hand-off is a no-op) and returns nil once it
// is on stable storage. A message the queue can never take (ErrInvalid,
// ErrTooLarge) is a permanent *resilmail.DeliveryError; anything else is
// temporary.
func (q *Queue) Deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	_, err := q.Enqueue(ctx, env, body)
	if errors.Is(err, ErrInvalid) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrConflict) {
		return &resilmail.DeliveryError{Command: "enqueue", Code: 554, EnhancedCode: "5.3.4", Message: err.Error(), Permanent: true, Err: err}
	}
	return err
}

// enqueue is Enqueue; internal notifications skip the size limits of
// admission control (the message they report on is leaving the queue).
func (q *Queue) enqueue(ctx context.Context, env resilmail.Envelope, body io.Reader, internal bool) (string, error) {
	env = env.Clone()
	if env.ID == "" {
		env.ID = NewID()
	}
	if err := env.Validate(); err != nil {
		return env.ID, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	// A small message is held in memory; a larger one is spooled to a
	// file while it arrives and copied into the log from there, so that
	// intake memory stays near spoolThreshold per message.
	limit := q.opts.MaxMessageSize
	buf := readBufs.Get().(*[]byte)
	data, err := readAll((*buf)[:0], io.LimitReader(body, min(limit, spoolThreshold)+1))
	if err != nil {
		return env.ID, fmt.Errorf("queue: reading message: %w", err)
	}
	read := data
	var sp *spool
	if int64(len(data)) > spoolThreshold && int64(len(data)) <= limit {
		sp, err = q.spool(data, body, limit)
		if err != nil {
			return env.ID, err
		}
		defer sp.remove()
		data = nil
	}
	size := int64(len(data))
	digest := resilmail.DigestOf(data)
	if sp != nil {
		size, digest = sp.size, sp.digest
	}
	if size > limit {
		return env.ID, fmt.Errorf("%w: over %d bytes", ErrTooLarge, limit)
	}
	env.Size = size // what arrived, not what the client announced
	now := q.opts.Now()
	m := &message{heapIdx: -1, size: size, synced: make(chan struct{})}
	m.rec = msgRec{Env: env, Created: now.UnixNano(), Digest: digest, Rcpts: make([]rcptRec, len(env.To)), Next: now.UnixNano()}
	rec, err := encode(recMessage, &m.rec, data)
	if cap(read) <= maxPooledRead {
		*buf = read[:0] // copied into rec (or the spool file)
		readBufs.Put(buf)
	}
	if err != nil {
		return env.ID, err
	}
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return env.ID, ErrClosed
		}
		if old := q.msgs[env.ID]; old != nil {
			wait := old.synced
			same := old.rec.Digest == digest
			q.mu.Unlock()
			if wait == nil {
				if !same && !internal { // a notification rebuilt after a crash differs in its Date
					q.log.Warn("queue: id reused with other content; refused", "msg_id", env.ID)
					return env.ID, fmt.Errorf("%w: %s", ErrConflict, env.ID)
				}
				return q.duplicate(env.ID)
			}
			select {
			case <-wait:
				continue // look again: the first enqueue may have failed
			case <-ctx.Done():
				return env.ID, ctx.Err()
			}
		}
		if t, ok := q.dedup[env.ID]; ok {
			q.mu.Unlock()
			if t.sum != (sum128{}) && t.sum != cut(digest) && !internal {
				q.log.Warn("queue: id of a finished message reused with other content; refused", "msg_id", env.ID)
				return env.ID, fmt.Errorf("%w: %s", ErrConflict, env.ID)
			}
			return q.duplicate(env.ID)
		}
		break
	}
	if err := q.admitLocked(size, now, internal); err != nil {
		q.mu.Unlock()
		return env.ID, err
	}
	// A spooled body is copied into the log without the queue's lock (nor
	// the log's): its place is reserved now, in order, and filled after.
	var pos wal.Pos
	var fill *wal.Pending
	if sp != nil {
		fill, err = q.wal.Reserve(rec, sp.size)
		if err == nil {
			pos = fill.Pos()
		}
	} else {
		pos, err = q.wal.Append(rec)
	}
	if err != nil {
		q.mu.Unlock()
		return env.ID, storageErr(err)
	}
	m.pos = pos
	q.msgs[env.ID] = m
	q.bytes += m.size
	q.mu.Unlock()

	if fill != nil {
		_, err = fill.Fill(sp.f)
		if err != nil && q.wal.Err() == nil {
			err = fmt.Errorf("queue: reading the spooled message: %w", err) // not the log's fault
		}
	}
	if err == nil {
		err = q.wal.Sync()
	}

	q.mu.Lock()
	wait := m.synced
	m.synced = nil
	if err != nil {
		m.syncErr = err
		if q.msgs[env.ID] == m {
			delete(q.msgs, env.ID)
			q.bytes -= m.size
		}
		q.mu.Unlock()
		close(wait)
		return env.ID, storageErr(err)
	}
	q.counters.enqueued++
	m.next = now
	q.scheduleLocked(m)
	q.noteAppendLocked(pos)
	q.mu.Unlock()
	close(wait)
	q.poke()
	q.log.Debug("queue: enqueued", "msg_id", env.ID, "from", env.From, "rcpts", len(env.To), "size", size)
	q.event(Event{Kind: EventEnqueued, ID: env.ID, Time: now})
	return env.ID, nil
}

func (q *Queue) duplicate(id string) (string, error) {
	q.mu.Lock()
	q.counters.duplicates++
	q.mu.Unlock()
	q.log.Info("queue: duplicate enqueue ignored", "msg_id", id)
	return id, nil
}

// Admit reports whether a message of size bytes (zero: not yet known)
// would be admitted now: nil, [ErrTooLarge], [ErrFull] (the queue or its
// disk is full) or [ErrClosed]. An SMTP intake asks at MAIL FROM (with the
// SIZE parameter) and at RCPT, so that a client is refused with 452 before
// it sends any data. Enqueue decides again.
func (q *Queue) Admit(size int64) error {
	if size > q.opts.MaxMessageSize {
		return fmt.Errorf("%w: over %d bytes", ErrTooLarge, q.opts.MaxMessageSize)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	return q.admitLocked(max(size, 0), q.opts.Now(), false)
}

// admitLocked applies admission control.
func (q *Queue) admitLocked(size int64, now time.Time, internal bool) error {
	if err := q.wal.Err(); err != nil {
		return storageErr(err)
	}
	if internal {
		size = 0
	}
	if q.opts.MaxMessages > 0 && len(q.msgs) >= q.opts.MaxMessages && !internal {
		q.counters.refused++
		return fmt.Errorf("%w: %d messages queued", ErrFull, len(q.msgs))
	}
	if q.opts.MaxBytes > 0 && q.bytes+size > q.opts.MaxBytes && !internal {
		q.counters.refused++
		return fmt.Errorf("%w: %d bytes queued", ErrFull, q.bytes)
	}
	if q.opts.MinFreeBytes > 0 {
		if now.Sub(q.freeAt) > time.Second || now.Before(q.freeAt) {
			free, err := durable.FreeSpace(q.dir)
			q.freeAt = now
			q.freeLow = err == nil && free < uint64(q.opts.MinFreeBytes)+uint64(size)
		}
		if q.freeLow {
			q.counters.refused++
			return fmt.Errorf("%w: less than %d bytes free on disk", ErrFull, q.opts.MinFreeBytes)
		}
	}
	return nil
}

// body reads a message's body and verifies its digest.
func (q *Queue) body(m *message) ([]byte, error) {
	q.compactMu.RLock()
	defer q.compactMu.RUnlock()
	q.mu.Lock()
	pos, want := m.pos, m.rec.Digest
	q.mu.Unlock()
	rec, err := q.wal.ReadAt(pos)
	if err != nil {
		if errors.Is(err, wal.ErrCorrupt) {
			return nil, &resilmail.CorruptError{Want: want, Where: err.Error()}
		}
		return nil, storageErr(err)
	}
	_, _, body, err := decode(rec)
	if err != nil {
		return nil, &resilmail.CorruptError{Want: want, Where: pos.String()}
	}
	if got := resilmail.DigestOf(body); got != want {
		return nil, &resilmail.CorruptError{Want: want, Got: got, Where: pos.String()}
	}
	return body, nil
}

// openBody opens a message's body for reading in place, from a file handle
// of its own: a body over spoolThreshold is never held in memory for a
// delivery. Its digest is checked first, in one streamed pass, so that a
// corrupt body is never sent. Close the returned record when done.
func (q *Queue) openBody(m *message) (*io.SectionReader, io.Closer, error) {
	q.compactMu.RLock() // the segment is not removed while it is opened
	q.mu.Lock()
	pos, want := m.pos, m.rec.Digest
	q.mu.Unlock()
	rec, err := q.wal.OpenRecord(pos)
	q.compactMu.RUnlock()
	if err != nil {
		if errors.Is(err, wal.ErrCorrupt) {
			return nil, nil, &resilmail.CorruptError{Want: want, Where: err.Error()}
		}
		return nil, nil, storageErr(err)
	}
	var h [5]byte // the record's type and the length of its JSON part
	if _, err := rec.ReadAt(h[:], 0); err != nil {
		rec.Close()
		return nil, nil, &resilmail.CorruptError{Want: want, Where: pos.String()}
	}
	start := 5 + int64(binary.BigEndian.Uint32(h[1:]))
	if h[0] != recMessage || start > rec.Size() {
		rec.Close()
		return nil, nil, &resilmail.CorruptError{Want: want, Where: pos.String()}
	}
	body := io.NewSectionReader(rec, start, rec.Size()-start)
	sum := sha256.New()
	if _, err := io.Copy(sum, body); err != nil {
		rec.Close()
		if errors.Is(err, wal.ErrCorrupt) {
			return nil, nil, &resilmail.CorruptError{Want: want, Where: err.Error()}
		}
		return nil, nil, storageErr(err)
	}
	var got resilmail.Digest
	sum.Sum(got[:0])
	if got != want {
		rec.Close()
		return nil, nil, &resilmail.CorruptError{Want: want, Got: got, Where: pos.String()}
	}
	body.Seek(0, io.SeekStart)
	return body, rec, nil
}

// quarantineCorrupt moves the damaged bytes of a message aside, marks the
// message corrupt (kept and listed, never delivered) and reports it.
func (q *Queue) quarantineCorrupt(m *message, cause error) {
	q.compactMu.RLock()
	q.mu.Lock()
	pos := m.pos
	q.mu.Unlock()
	raw, _ := q.wal.ReadAt(pos) // may fail: then what the log holds is lost
	q.compactMu.RUnlock()
	dir := filepath.Join(q.dir, "corrupt")
	name := filepath.Join(dir, m.id())
	werr := os.MkdirAll(dir, 0o700)
	if werr == nil && raw != nil {
		werr = durable.WriteFile(durable.OS, name, raw, 0o600)
	}
	q.log.Error("queue: message body is corrupt; moved aside, not delivered",
		"msg_id", m.id(), "pos", pos.String(), "err", cause, "copy", name, "copy_err", werr)
	q.mu.Lock()
	q.counters.corrupt++
	if !m.removed {
		if err := q.appendLocked(m, &updRec{ID: m.id(), Corrupt: true}); err != nil {
			q.log.Error("queue: recording corruption", "msg_id", m.id(), "err", err)
		}
	}
	q.mu.Unlock()
	q.event(Event{Kind: EventCorrupt, ID: m.id(), Err: cause, Time: q.opts.Now()})
}

func (q *Queue) event(e Event) {
	if q.opts.Hooks.Event != nil {
		q.opts.Hooks.Event(e)
	}
}

func (q *Queue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Close stops delivery (as if Run's context were cancelled), waits for
// deliveries in flight to return, syncs and closes the log, and releases the
// folder lock. It is idempotent.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	stop, done := q.stop, q.runDone
	q.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	q.wg.Wait()
	err := q.wal.Close()
	if uerr := q.unlock(); err == nil {
		err = uerr
	}
	return err
}

// Shutdown stops the queue gracefully: no new delivery starts, the
// deliveries in flight run to their end, then it closes as [Queue.Close]
// does. If ctx ends first, the deliveries still in flight see their context
// cancelled (their recipients are retried after the next Open) and Shutdown
// returns ctx's error once they have returned. Run returns nil.
func (q *Queue) Shutdown(ctx context.Context) error {
	q.mu.Lock()
	q.draining = true
	var idle chan struct{}
	if q.active > 0 {
		if q.idle == nil {
			q.idle = make(chan struct{})
		}
		idle = q.idle
	}
	q.mu.Unlock()
	var err error
	if idle != nil {
		select {
		case <-idle:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if cerr := q.Close(); err == nil {
		err = cerr
	}
	return err
}

// readBufs holds the buffers Enqueue reads messages into, up to
// maxPooledRead bytes each: a message is copied out of it into its record
// at once, and a new buffer grown for every message cost the relay a
// dozen allocations and copies per message.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

const maxPooledRead = 64 << 10

// readAll is io.ReadAll into b.
func readAll(b []byte, r io.Reader) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return b, err
		}
	}
}

// spoolThreshold is the size above which Enqueue spools a message to a
// file instead of holding it in memory.
const spoolThreshold = 256 << 10

// spool is a message being received into a file of the folder "spool".
// It was never acknowledged: Open removes what a crash left there.
type spool struct {
	f      *os.File
	size   int64
	digest resilmail.Digest
}

// spool writes head and the rest of body (up to limit+1 bytes in all) to a
// new spool file and rewinds it.
func (q *Queue) spool(head []byte, body io.Reader, limit int64) (*spool, error) {
	f, err := os.CreateTemp(filepath.Join(q.dir, "spool"), "msg-*")
	if err != nil {
		return nil, storageErr(err)
	}
	sp := &spool{f: f}
	h := sha256.New()
	w := io.MultiWriter(f, h)
	if _, err := w.Write(head); err != nil {
		sp.remove()
		return nil, storageErr(err)
	}
	n, err := io.Copy(w, io.LimitReader(body, limit+1-int64(len(head))))
	if err != nil {
		sp.remove()
		var werr *os.PathError
		if errors.As(err, &werr) {
			return nil, storageErr(err)
		}
		return nil, fmt.Errorf("queue: reading message: %w", err)
	}
	sp.size = int64(len(head)) + n
	copy(sp.digest[:], h.Sum(nil))
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		sp.remove()
		return nil, storageErr(err)
	}
	return sp, nil
}

func (sp *spool) remove() {
	sp.f.Close()
	os.Remove(sp.f.Name())
}
