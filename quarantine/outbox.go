package quarantine

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
	"github.com/resilmail/resilmail/internal/wal"
)

// An edge node's outbox: the rejected messages it has promised to keep
// until the central store has them.
//
// On-disk format (version 1). The outbox folder holds:
//
//	LOCK       held while the outbox is open (one process at a time)
//	log/       an internal/wal record log of kind "qoutbox", caller
//	           version outboxVersion (Open refuses a newer one)
//	rejected/  entries the centre refused for good: <id>.json (the
//	           entry), <id>.eml (its body) and <id>.reason
//	corrupt/   log regions found damaged at Open, and entries whose body no
//	           longer matched its digest, as raw bytes
//
// Each log record is a type byte, a 4-byte big-endian length, that much
// JSON, and for an entry record the body:
//
//	'E' entry:  {"entry": Entry, "added": unix nanoseconds} + body
//	'A' acked:  {"ids": [...], "at": unix nanoseconds}
//
// An entry is pending from its 'E' record until an 'A' record names it. The
// compactor removes the oldest log segment once every entry in it that is
// still pending has been restated at the end of the log; only the oldest
// segment is ever removed, so an 'A' record never outlives the 'E' record it
// cancels.
const (
	outboxVersion  = 1
	outboxKind     = "qoutbox"
	outboxRecEntry = 'E'
	outboxRecAcked = 'A'
)

// ErrOutboxFull is returned by [Outbox.Add] when admission control refuses
// an entry (OutboxOptions.MaxPending, MaxPendingBytes, MinFreeBytes). It is
// temporary: the caller answers 4xx and the sender tries again later.
var ErrOutboxFull = errors.New("quarantine: outbox full")

// OutboxOptions configure an [Outbox]. The zero value, or nil, gives the
// defaults documented on each field.
type OutboxOptions struct {
	// Logger receives a line per storage problem and per damaged record;
	// nil means slog.Default().
	Logger *slog.Logger
	// Node is written into Entry.Node when the caller leaves it empty.
	Node string
	// MaxSize is the largest body accepted; zero means 64 MiB (the central
	// store's default Options.MaxSize).
	MaxSize int64
	// MaxPending and MaxPendingBytes refuse new entries (ErrOutboxFull)
	// while that many entries, or bytes of bodies, are pending; zero means
	// no limit.
	MaxPending      int
	MaxPendingBytes int64
	// MinFreeBytes refuses new entries while the outbox's file system has
	// less free space than this, so that a full disk does not make the log
	// fail; zero means 64 MiB, negative means no check.
	MinFreeBytes int64
	// SegmentSize is the size of the log's segments; zero means 16 MiB.
	SegmentSize int64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o *OutboxOptions) withDefaults() (OutboxOptions, error) {
	var out OutboxOptions
	if o != nil {
		out = *o
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.MaxSize == 0 {
		out.MaxSize = 64 << 20
	}
	if out.MaxSize < 0 || out.MaxPending < 0 || out.MaxPendingBytes < 0 || out.SegmentSize < 0 {
		return out, errors.New("quarantine: negative OutboxOptions limit")
	}
	if out.MinFreeBytes == 0 {
		out.MinFreeBytes = 64 << 20
	}
	if out.SegmentSize == 0 {
		out.SegmentSize = 16 << 20
	}
	if out.Now == nil {
		out.Now = time.Now
	}
	return out, nil
}

// OutboxStats is a snapshot of an [Outbox]. Counters count since Open.
type OutboxStats struct {
	// Pending and PendingBytes count the entries (and bytes of bodies) on
	// stable storage that the centre has not acknowledged.
	Pending      int
	PendingBytes int64
	// Oldest is when the oldest pending entry was added; zero if none.
	Oldest time.Time

	Added      uint64 // entries added
	Duplicates uint64 // Adds of an entry already pending, ignored
	Refused    uint64 // Adds refused by admission control
	Acked      uint64 // entries acknowledged (and forgotten)
	Rejected   uint64 // of those, entries the centre refused, kept in rejected/
	Corrupt    uint64 // entries whose body failed its digest, kept in corrupt/

	Fsyncs       uint64 // fsyncs of the log
	Segments     int    // log segments on disk
	DiskBytes    int64  // bytes in them
	Compactions  uint64 // segments removed by compaction
	Rewritten    uint64 // pending entries copied forward by compaction
	DamagedBytes uint64 // bytes of torn or damaged log moved aside at Open
	BadRecords   uint64 // unreadable records skipped at Open

	// Err is the storage failure that makes Add fail until the outbox is
	// reopened; nil when healthy.
	Err error
}

// Outbox is an edge node's durable outbox of quarantined entries on their
// way to the central [Store]. An edge that rejects a message calls
// [Outbox.Add] before it answers: a nil error means the entry is on stable
// storage (answer 5xx, the copy is safe), an error means it is not (answer
// 4xx, the sender tries again). A [Shipper] sends pending entries to the
// centre and forgets each one only once the centre has acknowledged it.
//
// Create it with [OpenOutbox]. All methods are safe for concurrent use.
type Outbox struct {
	dir    string
	opts   OutboxOptions
	log    *slog.Logger
	wal    *wal.Log
	unlock func() error

	// compactMu keeps a log segment from being removed while a body is read
	// from it: readers hold it shared, removal exclusively.
	compactMu sync.RWMutex

	mu       sync.Mutex
	pending  map[string]*outboxItem // by entry id, synced or being synced
	fifo     []*outboxItem          // synced pending entries in order added; acked ones are holes
	head     int                    // fifo[:head] are all acked
	holes    int                    // acked entries in fifo[head:]
	count    int                    // synced pending entries
	bytes    int64                  // their body bytes
	closed   bool
	shipping bool // a Shipper is running
	curSeg   uint64
	freeAt   time.Time
	freeLow  bool
	st       OutboxStats // counters only

	wake      chan struct{} // poked on every Add
	compactCh chan struct{} // poked when a segment was sealed or entries acked
	done      chan struct{} // closed by Close
}

// outboxItem is one pending entry in memory; its body stays on disk.
type outboxItem struct {
	e      Entry // never changed after Add
	added  time.Time
	pos    wal.Pos       // the record holding the body; guarded by Outbox.mu
	size   int64         // body bytes
	synced chan struct{} // closed once the record is durable (nil: durable)
	acked  bool
}

type outboxEntryRec struct {
	Entry Entry `json:"entry"`
	Added int64 `json:"added"`
}

type outboxAckRec struct {
	IDs []string `json:"ids"`
	At  int64    `json:"at"`
}

// OpenOutbox opens the outbox in dir, creating it if needed, and restores
// every entry that was pending before the last stop or crash. It takes an
// exclusive lock on dir, and refuses a log written in an unknown format
// version.
func OpenOutbox(dir string, opts *OutboxOptions) (*Outbox, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("quarantine: outbox: %w", err)
	}
	unlock, err := durable.Lock(dir)
	if err != nil {
		return nil, fmt.Errorf("quarantine: outbox: %w", err)
	}
	ob := &Outbox{
		dir: dir, opts: o, log: o.Logger, unlock: unlock,
		pending:   make(map[string]*outboxItem),
		wake:      make(chan struct{}, 1),
		compactCh: make(chan struct{}, 1),
		done:      make(chan struct{}),
	}
	l, err := wal.Open(filepath.Join(dir, "log"), wal.Options{
		Kind: outboxKind, Version: outboxVersion, SegmentSize: o.SegmentSize, Logger: o.Logger,
		Damaged: ob.damaged,
	}, ob.replay)
	if err != nil {
		_ = unlock()
		return nil, fmt.Errorf("quarantine: open outbox %s: %w", dir, err)
	}
	ob.wal = l
	for _, it := range ob.pending {
		ob.fifo = append(ob.fifo, it)
		ob.count++
		ob.bytes += it.size
	}
	slices.SortFunc(ob.fifo, func(a, b *outboxItem) int {
		return cmp.Or(a.added.Compare(b.added), cmp.Compare(a.e.ID, b.e.ID))
	})
	if segs := l.Segments(); len(segs) > 0 {
		ob.curSeg = segs[len(segs)-1]
	}
	ob.log.Info("quarantine: outbox opened", "dir", dir, "pending", ob.count, "pending_bytes", ob.bytes,
		"segments", l.Stats().Segments, "bad_records", ob.st.BadRecords, "damaged_bytes", ob.st.DamagedBytes)
	return ob, nil
}

// damaged moves a log region that Open skipped into corrupt/.
func (o *Outbox) damaged(pos wal.Pos, data []byte, torn bool) {
	kind := "damaged"
	if torn {
		kind = "torn"
	}
	name := filepath.Join(o.dir, "corrupt", fmt.Sprintf("%016x-%d.%s", pos.Seg, pos.Off, kind))
	err := o.keep(name, data)
	o.st.DamagedBytes += uint64(len(data))
	level := slog.LevelError
	if torn {
		level = slog.LevelWarn // never acknowledged: a crash cut the write
	}
	o.log.Log(context.Background(), level, "quarantine: outbox log region skipped at open and moved aside",
		"pos", pos.String(), "bytes", len(data), "torn", torn, "copy", name, "err", err)
}

// keep writes data durably to name, creating its folder.
func (o *Outbox) keep(name string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(name), 0o750); err != nil {
		return err
	}
	return durable.WriteFile(durable.OS, name, data, 0o640)
}

// replay applies one record found at Open.
func (o *Outbox) replay(pos wal.Pos, rec []byte) error {
	typ, meta, body, err := outboxDecode(rec)
	if err == nil {
		switch typ {
		case outboxRecEntry:
			var r outboxEntryRec
			if err = json.Unmarshal(meta, &r); err == nil {
				err = checkItem(&r.Entry, body)
			}
			if err == nil {
				o.pending[r.Entry.ID] = &outboxItem{e: r.Entry, added: time.Unix(0, r.Added), pos: pos, size: int64(len(body))}
				return nil
			}
		case outboxRecAcked:
			var r outboxAckRec
			if err = json.Unmarshal(meta, &r); err == nil {
				for _, id := range r.IDs {
					delete(o.pending, id)
				}
				return nil
			}
		default:
			err = fmt.Errorf("unknown record type %q", typ)
		}
	}
	o.st.BadRecords++
	name := filepath.Join(o.dir, "corrupt", fmt.Sprintf("%016x-%d.record", pos.Seg, pos.Off))
	kerr := o.keep(name, rec)
	o.log.Error("quarantine: unreadable outbox record moved aside", "pos", pos.String(), "err", err, "copy", name, "copy_err", kerr)
	return nil
}

// checkHeld reports an entry that is not freshly caught: every recipient
// of a shipped entry is held, with no release. Only the central store
// changes statuses, so an edge cannot ship a "released" entry.
func checkHeld(e *Entry) error {
	for _, r := range e.Recipients {
		if r.Status != Held || r.ReleaseID != "" {
			return fmt.Errorf("%w: entry %s: recipient %s is %s; an edge ships held entries only", ErrInvalid, e.ID, r.Addr, r.Status)
		}
	}
	return nil
}

// outboxEncode builds a log record: type, length of the JSON, JSON, body.
func outboxEncode(typ byte, v any, body []byte) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, 5+len(j)+len(body))
	b = append(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(j)))
	b = append(b, j...)
	return append(b, body...), nil
}

// outboxDecode splits a log record; it never panics.
func outboxDecode(rec []byte) (typ byte, meta, body []byte, err error) {
	if len(rec) < 5 {
		return 0, nil, nil, errors.New("short record")
	}
	n := binary.BigEndian.Uint32(rec[1:5])
	if uint64(n) > uint64(len(rec)-5) {
		return 0, nil, nil, errors.New("bad record length")
	}
	return rec[0], rec[5 : 5+n], rec[5+n:], nil
}

// Add stores e with its body (nil: a reject recorded before the body
// arrived, metadata only) and returns nil only once both are on stable
// storage; concurrent Adds share fsyncs. The caller answers the sender 5xx
// after nil, and 4xx after an error: nothing is then promised.
//
// Add computes Digest and Size when they are zero and checks them
// otherwise. It fills Node (OutboxOptions.Node), Time (now) and Recipients
// (one per Envelope.To) when they are empty, and an empty recipient Status
// with Held, then validates the entry: e.ID must be set (see [NewID]) and
// every recipient held. Adding an id that is pending with the same digest
// does nothing and returns nil; with another digest it returns ErrConflict.
// An id is forgotten once acknowledged: adding it again ships it again,
// which the centre ignores.
//
// Add reads body to EOF and holds it in memory. It returns an error
// wrapping ErrInvalid or ErrTooLarge (permanent), ErrConflict,
// ErrOutboxFull (temporary), a storage error (temporary: see
// OutboxStats.Err), ErrClosed or ctx's error.
func (o *Outbox) Add(ctx context.Context, e Entry, body io.Reader) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var data []byte
	if body != nil {
		var err error
		data, err = io.ReadAll(io.LimitReader(body, o.opts.MaxSize+1))
		if err != nil {
			return fmt.Errorf("quarantine: outbox: reading body of %s: %w", e.ID, err)
		}
		if int64(len(data)) > o.opts.MaxSize {
			return fmt.Errorf("%w: entry %s: body over %d bytes", ErrTooLarge, e.ID, o.opts.MaxSize)
		}
		d := resilmail.DigestOf(data)
		if !e.Digest.IsZero() && e.Digest != d {
			return fmt.Errorf("%w: entry %s: body does not match digest %s", ErrInvalid, e.ID, e.Digest)
		}
		if e.Size != 0 && e.Size != int64(len(data)) {
			return fmt.Errorf("%w: entry %s: body is %d bytes, entry says %d", ErrInvalid, e.ID, len(data), e.Size)
		}
		e.Digest, e.Size = d, int64(len(data))
	} else if !e.Digest.IsZero() {
		return fmt.Errorf("%w: entry %s has a digest but no body", ErrInvalid, e.ID)
	}
	now := o.opts.Now()
	e.Envelope = e.Envelope.Clone()
	if e.Node == "" {
		e.Node = o.opts.Node
	}
	if e.Time.IsZero() {
		e.Time = now
	}
	if e.Recipients == nil {
		for _, r := range e.Envelope.To {
			e.Recipients = append(e.Recipients, RecipientState{Addr: r.Addr, Status: Held, Changed: e.Time})
		}
	} else {
		e.Recipients = slices.Clone(e.Recipients)
		for i := range e.Recipients {
			r := &e.Recipients[i]
			if r.Status == "" {
				r.Status = Held
			}
			if r.Changed.IsZero() {
				r.Changed = e.Time
			}
		}
	}
	if err := e.Validate(); err != nil {
		return err
	}
	if err := checkHeld(&e); err != nil {
		return err
	}
	rec, err := outboxEncode(outboxRecEntry, &outboxEntryRec{Entry: e, Added: now.UnixNano()}, data)
	if err != nil {
		return fmt.Errorf("%w: entry %s: %v", ErrInvalid, e.ID, err)
	}
	it := &outboxItem{e: e, added: now, size: int64(len(data)), synced: make(chan struct{})}

	o.mu.Lock()
	for {
		if o.closed {
			o.mu.Unlock()
			return ErrClosed
		}
		old := o.pending[e.ID]
		if old == nil {
			break
		}
		if old.e.Digest != e.Digest {
			o.mu.Unlock()
			return fmt.Errorf("%w: %s is pending in the outbox with digest %s", ErrConflict, e.ID, old.e.Digest)
		}
		wait := old.synced
		if wait == nil {
			o.st.Duplicates++
			o.mu.Unlock()
			return nil
		}
		o.mu.Unlock()
		select {
		case <-wait: // look again: that Add may have failed
		case <-ctx.Done():
			return ctx.Err()
		}
		o.mu.Lock()
	}
	if err := o.admitLocked(it.size, now); err != nil {
		o.mu.Unlock()
		return err
	}
	pos, err := o.wal.Append(rec)
	if err != nil {
		o.mu.Unlock()
		return o.storageErr(err)
	}
	it.pos = pos
	o.pending[e.ID] = it
	o.noteAppendLocked(pos)
	o.mu.Unlock()

	err = o.wal.Sync()

	o.mu.Lock()
	wait := it.synced
	it.synced = nil
	if err != nil {
		if o.pending[e.ID] == it {
			delete(o.pending, e.ID)
		}
		o.mu.Unlock()
		close(wait)
		return o.storageErr(err)
	}
	if o.pending[e.ID] == it {
		o.fifo = append(o.fifo, it)
		o.count++
		o.bytes += it.size
	}
	o.st.Added++
	o.mu.Unlock()
	close(wait)
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return nil
}

func (o *Outbox) storageErr(err error) error {
	if errors.Is(err, wal.ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("quarantine: outbox storage: %w", err)
}

// admitLocked applies admission control to a new entry of size bytes.
func (o *Outbox) admitLocked(size int64, now time.Time) error {
	if err := o.wal.Err(); err != nil {
		return o.storageErr(err)
	}
	if o.opts.MaxPending > 0 && len(o.pending) >= o.opts.MaxPending {
		o.st.Refused++
		return fmt.Errorf("%w: %d entries pending", ErrOutboxFull, len(o.pending))
	}
	if o.opts.MaxPendingBytes > 0 && o.bytes+size > o.opts.MaxPendingBytes {
		o.st.Refused++
		return fmt.Errorf("%w: %d bytes pending", ErrOutboxFull, o.bytes)
	}
	if o.opts.MinFreeBytes > 0 {
		if now.Sub(o.freeAt) > time.Second || now.Before(o.freeAt) {
			free, err := durable.FreeSpace(o.dir)
			o.freeAt = now
			o.freeLow = err == nil && free < uint64(o.opts.MinFreeBytes)+uint64(size)
		}
		if o.freeLow {
			o.st.Refused++
			return fmt.Errorf("%w: less than %d bytes free on disk", ErrOutboxFull, o.opts.MinFreeBytes)
		}
	}
	return nil
}

// noteAppendLocked wakes the compactor when the log has started a new
// segment.
func (o *Outbox) noteAppendLocked(pos wal.Pos) {
	if pos.Seg > o.curSeg {
		o.curSeg = pos.Seg
		o.pokeCompactor()
	}
}

func (o *Outbox) pokeCompactor() {
	select {
	case o.compactCh <- struct{}{}:
	default:
	}
}

// Pending returns the pending entries (metadata only), oldest first.
func (o *Outbox) Pending() []Entry {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]Entry, 0, o.count)
	for _, it := range o.fifo[o.head:] {
		if !it.acked {
			out = append(out, it.e)
		}
	}
	return out
}

// Stats returns the outbox's state and counters.
func (o *Outbox) Stats() OutboxStats {
	ws := o.wal.Stats()
	o.mu.Lock()
	defer o.mu.Unlock()
	st := o.st
	st.Pending, st.PendingBytes = o.count, o.bytes
	if it := o.oldestLocked(); it != nil {
		st.Oldest = it.added
	}
	st.Fsyncs, st.Segments, st.DiskBytes = ws.Syncs, ws.Segments, ws.Bytes
	if !o.closed {
		st.Err = o.wal.Err()
	}
	return st
}

func (o *Outbox) oldestLocked() *outboxItem {
	for _, it := range o.fifo[o.head:] {
		if !it.acked {
			return it
		}
	}
	return nil
}

// Close syncs and closes the log and releases the folder lock. Stop the
// [Shipper] first: a Shipper running on a closed outbox returns ErrClosed.
// Close is idempotent.
func (o *Outbox) Close() error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil
	}
	o.closed = true
	close(o.done)
	o.mu.Unlock()
	o.compactMu.Lock() // no compaction or body read in flight
	err := o.wal.Close()
	o.compactMu.Unlock()
	if uerr := o.unlock(); err == nil {
		err = uerr
	}
	return err
}

// --- The Shipper's side. ---

// claim makes the caller the outbox's only shipper until release.
func (o *Outbox) claim() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return ErrClosed
	}
	if o.shipping {
		return errors.New("quarantine: another Shipper is running on this outbox")
	}
	o.shipping = true
	return nil
}

func (o *Outbox) release() {
	o.mu.Lock()
	o.shipping = false
	o.mu.Unlock()
}

// nextBatch returns the oldest pending entries, at most maxItems of them
// and maxBytes of bodies (but at least one).
func (o *Outbox) nextBatch(maxItems int, maxBytes int64) ([]*outboxItem, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil, ErrClosed
	}
	var out []*outboxItem
	var size int64
	for _, it := range o.fifo[o.head:] {
		if it.acked {
			continue
		}
		if len(out) > 0 && (len(out) >= maxItems || size+it.size > maxBytes) {
			break
		}
		out = append(out, it)
		size += it.size
	}
	return out, nil
}

// readBody reads the body of a pending entry from the log and checks it
// against the entry's digest. The error wraps ErrCorrupt when the bytes on
// disk are damaged; raw is then what could be read, for the corrupt folder.
func (o *Outbox) readBody(it *outboxItem) (body, raw []byte, err error) {
	if !it.e.HasBody() {
		return nil, nil, nil
	}
	o.compactMu.RLock()
	defer o.compactMu.RUnlock()
	o.mu.Lock()
	pos, closed := it.pos, o.closed
	o.mu.Unlock()
	if closed {
		return nil, nil, ErrClosed
	}
	rec, err := o.wal.ReadAt(pos)
	if err != nil {
		if errors.Is(err, wal.ErrCorrupt) {
			return nil, rec, fmt.Errorf("%w: entry %s at %s: %w", ErrCorrupt, it.e.ID, pos, err)
		}
		return nil, nil, o.storageErr(err)
	}
	_, _, body, err = outboxDecode(rec)
	if err != nil {
		return nil, rec, fmt.Errorf("%w: entry %s at %s: %v", ErrCorrupt, it.e.ID, pos, err)
	}
	if got := resilmail.DigestOf(body); got != it.e.Digest {
		return nil, rec, fmt.Errorf("%w: entry %s: %w", ErrCorrupt, it.e.ID,
			&resilmail.CorruptError{Want: it.e.Digest, Got: got, Where: filepath.Join(o.dir, "log") + " " + pos.String()})
	}
	return body, rec, nil
}

// ack forgets entries the centre has acknowledged: it appends one durable
// record naming them. rejected and corrupt count those that were moved
// aside first.
func (o *Outbox) ack(items []*outboxItem, rejected, corrupt int) error {
	if len(items) == 0 {
		return nil
	}
	o.mu.Lock()
	var ids []string
	for _, it := range items {
		if o.pending[it.e.ID] == it {
			ids = append(ids, it.e.ID)
		}
	}
	if len(ids) == 0 {
		o.mu.Unlock()
		return nil
	}
	rec, err := outboxEncode(outboxRecAcked, &outboxAckRec{IDs: ids, At: o.opts.Now().UnixNano()}, nil)
	if err != nil {
		o.mu.Unlock()
		return err
	}
	if o.closed {
		o.mu.Unlock()
		return ErrClosed
	}
	pos, err := o.wal.Append(rec)
	if err != nil {
		o.mu.Unlock()
		return o.storageErr(err)
	}
	for _, it := range items {
		if o.pending[it.e.ID] != it {
			continue
		}
		delete(o.pending, it.e.ID)
		it.acked = true
		o.holes++
		o.count--
		o.bytes -= it.size
	}
	o.st.Acked += uint64(len(ids))
	o.st.Rejected += uint64(rejected)
	o.st.Corrupt += uint64(corrupt)
	o.trimLocked()
	o.noteAppendLocked(pos)
	o.mu.Unlock()
	o.pokeCompactor()
	if err := o.wal.Sync(); err != nil {
		// The entries stay forgotten in memory; after a reopen they may be
		// shipped again, which the centre ignores.
		return o.storageErr(err)
	}
	return nil
}

// trimLocked drops acknowledged entries from the front of fifo, and
// rebuilds it when it is mostly holes.
func (o *Outbox) trimLocked() {
	for o.head < len(o.fifo) && o.fifo[o.head].acked {
		o.fifo[o.head] = nil
		o.head++
		o.holes--
	}
	live := len(o.fifo) - o.head
	if o.head > 1024 && o.head > live || o.holes > 1024 && o.holes > live/2 {
		next := make([]*outboxItem, 0, live-o.holes+64)
		for _, it := range o.fifo[o.head:] {
			if !it.acked {
				next = append(next, it)
			}
		}
		o.fifo, o.head, o.holes = next, 0, 0
	}
}

// keepRejected writes an entry the centre refused into rejected/, before it
// is acknowledged, so that nothing is lost silently: <id>.json (the entry),
// <id>.eml (the body, if any) and <id>.reason.
func (o *Outbox) keepRejected(it *outboxItem, body []byte, reason string) error {
	dir := filepath.Join(o.dir, "rejected")
	meta, err := json.MarshalIndent(&it.e, "", "  ")
	if err != nil {
		return err
	}
	if it.e.HasBody() {
		if err := o.keep(filepath.Join(dir, it.e.ID+".eml"), body); err != nil {
			return err
		}
	}
	if err := o.keep(filepath.Join(dir, it.e.ID+".json"), append(meta, '\n')); err != nil {
		return err
	}
	txt := fmt.Sprintf("entry %s\nadded %s\nrejected %s\nreason %s\n", it.e.ID,
		it.added.UTC().Format(time.RFC3339Nano), o.opts.Now().UTC().Format(time.RFC3339Nano), reason)
	return o.keep(filepath.Join(dir, it.e.ID+".reason"), []byte(txt))
}

// keepCorrupt writes the raw record of an entry whose body is damaged on
// disk into corrupt/.
func (o *Outbox) keepCorrupt(it *outboxItem, raw []byte, cause error) error {
	dir := filepath.Join(o.dir, "corrupt")
	if err := o.keep(filepath.Join(dir, it.e.ID+".record"), raw); err != nil {
		return err
	}
	txt := fmt.Sprintf("entry %s\nadded %s\nerror %v\n", it.e.ID, it.added.UTC().Format(time.RFC3339Nano), cause)
	return o.keep(filepath.Join(dir, it.e.ID+".reason"), []byte(txt))
}

// compactLoop compacts the log until ctx is done.
func (o *Outbox) compactLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.done:
			return
		case <-o.compactCh:
			for ctx.Err() == nil && o.compactOnce() {
			}
		}
	}
}

// compactOnce removes the oldest log segment if it is worth it, after
// restating the pending entries it holds, and reports whether it did.
func (o *Outbox) compactOnce() bool {
	segs := o.wal.Segments()
	if len(segs) < 2 {
		return false
	}
	oldest := segs[0]
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return false
	}
	var live int64
	var inSeg []*outboxItem
	for _, it := range o.pending {
		if it.pos.Seg == oldest {
			live += it.size
			inSeg = append(inSeg, it)
		}
	}
	liveAll := o.bytes
	o.mu.Unlock()
	if live*2 > o.wal.SegmentSize(oldest) && o.wal.Stats().Bytes < 2*liveAll+o.opts.SegmentSize {
		return false
	}
	var lost []*outboxItem
	for _, it := range inSeg {
		body, raw, err := o.readBody(it)
		if errors.Is(err, ErrCorrupt) {
			o.log.Error("quarantine: outbox entry corrupt on disk; moved aside, not shipped", "entry", it.e.ID, "err", err)
			if kerr := o.keepCorrupt(it, raw, err); kerr != nil {
				o.log.Error("quarantine: outbox compaction failed", "segment", oldest, "err", kerr)
				return false
			}
			lost = append(lost, it)
			continue
		}
		if err != nil {
			o.log.Error("quarantine: outbox compaction failed", "segment", oldest, "err", err)
			return false
		}
		rec, err := outboxEncode(outboxRecEntry, &outboxEntryRec{Entry: it.e, Added: it.added.UnixNano()}, body)
		if err != nil {
			o.log.Error("quarantine: outbox compaction failed", "segment", oldest, "err", err)
			return false
		}
		o.mu.Lock()
		if o.pending[it.e.ID] != it || it.pos.Seg != oldest || o.closed {
			o.mu.Unlock()
			continue
		}
		pos, err := o.wal.Append(rec)
		if err == nil {
			it.pos = pos
			o.st.Rewritten++
		}
		o.mu.Unlock()
		if err != nil {
			o.log.Error("quarantine: outbox compaction failed", "segment", oldest, "err", err)
			return false
		}
	}
	if err := o.ack(lost, 0, len(lost)); err != nil {
		o.log.Error("quarantine: outbox compaction failed", "segment", oldest, "err", err)
		return false
	}
	if err := o.wal.Sync(); err != nil {
		o.log.Error("quarantine: outbox compaction failed", "segment", oldest, "err", err)
		return false
	}
	o.compactMu.Lock()
	o.mu.Lock()
	closed := o.closed
	o.mu.Unlock()
	var err error
	if !closed {
		err = o.wal.RemoveBefore(oldest + 1)
	}
	o.compactMu.Unlock()
	if closed {
		return false
	}
	if err != nil {
		o.log.Error("quarantine: removing compacted outbox segment", "segment", oldest, "err", err)
		return false
	}
	o.mu.Lock()
	o.st.Compactions++
	o.mu.Unlock()
	o.log.Debug("quarantine: outbox segment compacted", "segment", oldest, "live_entries", len(inSeg), "live_bytes", live)
	return true
}
