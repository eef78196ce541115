package wal

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/resilmail/resilmail/internal/durable"
)

// Version is the log format version this package writes. It reads version
// 1 too (segments without a salt).
const Version = 2

const (
	magic           = "RMWAL\n"
	segHeaderSizeV1 = 32
	segHeaderSize   = 40 // version 2
	recHeaderSize   = 12
	maxKindLen      = 16
	// MaxRecord is the largest payload a record may carry.
	MaxRecord = 1 << 30
	segSuffix = ".wal"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Errors returned by the log.
var (
	// ErrClosed is returned by operations on a closed Log.
	ErrClosed = errors.New("wal: log closed")
	// ErrFailed wraps the write or fsync error that made the log unusable.
	ErrFailed = errors.New("wal: log failed")
	// ErrFormat is returned by Open for a segment of an unknown format.
	ErrFormat = errors.New("wal: unknown format")
	// ErrTooLarge is returned by Append for a record over MaxRecord bytes.
	ErrTooLarge = errors.New("wal: record too large")
	// ErrCorrupt is returned by ReadAt for a record that fails its CRC.
	ErrCorrupt = errors.New("wal: corrupt record")
)

// Pos is the position of a record: its segment and the offset of its header.
type Pos struct {
	Seg uint64
	Off int64
}

func (p Pos) String() string { return fmt.Sprintf("%016x%s@%d", p.Seg, segSuffix, p.Off) }

// A File is the part of *os.File the log uses; tests inject failures by
// wrapping it.
type File interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Truncate(size int64) error
	Close() error
}

// Options configure a Log. The zero value gives working defaults except
// Kind, which is required.
type Options struct {
	// Kind names what the log holds, e.g. "queue"; at most 16 bytes. Open
	// refuses segments of another kind.
	Kind string
	// Version is the caller's format version written in new segments. Open
	// refuses segments with a higher version. Zero means 1.
	Version uint16
	// SegmentSize is the size after which a new segment is started. Zero
	// means 64 MiB.
	SegmentSize int64
	// BufferSize is how many appended bytes are kept in memory before they
	// are written to the file without waiting for a Sync. Zero means 1 MiB.
	BufferSize int
	// OpenFile opens segment files; nil means os.OpenFile. Tests use it to
	// inject failures.
	OpenFile func(name string, flag int, perm os.FileMode) (File, error)
	// Logger receives reports of torn tails and corruption; nil means
	// slog.Default().
	Logger *slog.Logger
	// Damaged, if set, is called during Open with every region it skips:
	// a torn tail (torn true; truncated after the call) or a corrupt region
	// followed by valid records. data is valid only during the call. Callers
	// use it to move the bytes aside instead of losing them.
	Damaged func(pos Pos, data []byte, torn bool)
}

// Stats are counters of a Log.
type Stats struct {
	Appends        uint64 // records appended since Open
	Syncs          uint64 // fsyncs of segment files since Open
	Segments       int    // segment files now
	Bytes          int64  // bytes in all segments
	TornBytes      int64  // bytes truncated from a torn tail at Open
	CorruptRegions int    // damaged regions skipped at Open
	CorruptBytes   int64  // bytes in them
}

type segment struct {
	seq  uint64
	size int64
	f    File   // nil until opened for reading (sealed) or writing (last)
	hdr  int64  // header size: where records start
	seed uint32 // CRC-32C of the segment's salt: the state record CRCs start from
}

// Log is an append-only record log. It is safe for concurrent use.
type Log struct {
	dir  string
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	cond      *sync.Cond
	segs      []*segment // ascending; the last one is being written
	cur       *segment
	written   int64  // bytes of cur on file (excluding buf)
	buf       []byte // appended, not yet written, belongs to cur after written
	spare     []byte
	appendSeq uint64 // records appended
	reserving int    // records reserved (Reserve) and not yet filled
	syncedSeq uint64 // records durable
	syncing   bool
	syncFrom  int64 // while syncing: where the leader writes its buffer in cur
	err       error // sticky failure
	closed    bool
	stats     Stats
	lastSync  atomic.Int64 // how long the leader's last fsync took, in ns
}

// Open opens or creates the log in dir, calls replay for every valid record
// in order, and returns the Log ready for appending after the last record.
// rec is valid only during the call. If replay returns an error, Open stops
// and returns it. Open truncates a torn tail and skips corrupt regions as the
// package documentation describes.
func Open(dir string, opts Options, replay func(pos Pos, rec []byte) error) (*Log, error) {
	if opts.Kind == "" || len(opts.Kind) > maxKindLen {
		return nil, fmt.Errorf("wal: kind %q must have 1 to %d bytes", opts.Kind, maxKindLen)
	}
	if opts.Version == 0 {
		opts.Version = 1
	}
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = 64 << 20
	}
	if opts.BufferSize <= 0 {
		opts.BufferSize = 1 << 20
	}
	if opts.OpenFile == nil {
		opts.OpenFile = func(name string, flag int, perm os.FileMode) (File, error) {
			return os.OpenFile(name, flag, perm)
		}
	}
	l := &Log{dir: dir, opts: opts, log: opts.Logger}
	if l.log == nil {
		l.log = slog.Default()
	}
	l.cond = sync.NewCond(&l.mu)
	if err := durable.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	seqs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			l.closeFiles()
		}
	}()
	for i, seq := range seqs {
		last := i == len(seqs)-1
		seg, err := l.replaySegment(seq, last, replay)
		if err != nil {
			return nil, err
		}
		if seg == nil { // an empty last segment with a torn header: removed
			continue
		}
		l.segs = append(l.segs, seg)
		l.stats.Bytes += seg.size
	}
	if len(l.segs) == 0 {
		next := uint64(1)
		if len(seqs) > 0 {
			next = seqs[len(seqs)-1] + 1
		}
		if err := l.createSegment(next); err != nil {
			return nil, err
		}
	} else {
		l.cur = l.segs[len(l.segs)-1]
		l.written = l.cur.size
		if l.cur.f == nil {
			// The segment after it had a torn header and was removed.
			f, err := l.opts.OpenFile(l.segPath(l.cur.seq), os.O_RDWR, 0)
			if err != nil {
				return nil, fmt.Errorf("wal: %w", err)
			}
			l.cur.f = f
		}
	}
	l.stats.Segments = len(l.segs)
	ok = true
	return l, nil
}

func listSegments(dir string) ([]uint64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	var seqs []uint64
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, segSuffix) || len(name) != 16+len(segSuffix) {
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 16, 64)
		if err != nil || seq == 0 {
			continue
		}
		seqs = append(seqs, seq)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	return seqs, nil
}

func (l *Log) segPath(seq uint64) string {
	return filepath.Join(l.dir, fmt.Sprintf("%016x%s", seq, segSuffix))
}

// header returns a new segment header with a random salt, and the seed
// its records' CRCs start from.
func (l *Log) header() ([]byte, uint32) {
	h := make([]byte, segHeaderSize)
	copy(h, magic)
	binary.BigEndian.PutUint16(h[6:], Version)
	copy(h[8:8+maxKindLen], l.opts.Kind)
	binary.BigEndian.PutUint16(h[24:], l.opts.Version)
	rand.Read(h[28:36])
	binary.BigEndian.PutUint32(h[36:], crc32.Checksum(h[:36], crcTable))
	return h, crc32.Checksum(h[28:36], crcTable)
}

// checkHeader validates a segment header and returns its size and the seed
// of its record CRCs. It returns errTornHeader for a header that is
// incomplete or fails its CRC.
func (l *Log) checkHeader(h []byte, name string) (int64, uint32, error) {
	if len(h) < 8 {
		return 0, 0, errTornHeader
	}
	var size int64
	var seed uint32
	switch v := binary.BigEndian.Uint16(h[6:]); {
	case v == 1 && len(h) >= segHeaderSizeV1 && binary.BigEndian.Uint32(h[28:]) == crc32.Checksum(h[:28], crcTable):
		size = segHeaderSizeV1 // no salt: seed 0, a plain CRC-32C
	case v == 2 && len(h) >= segHeaderSize && binary.BigEndian.Uint32(h[36:]) == crc32.Checksum(h[:36], crcTable):
		size, seed = segHeaderSize, crc32.Checksum(h[28:36], crcTable)
	case v > Version && string(h[:6]) == magic:
		return 0, 0, fmt.Errorf("%w: %s has log format version %d; this build reads up to version %d", ErrFormat, name, v, Version)
	default:
		return 0, 0, errTornHeader
	}
	if string(h[:6]) != magic {
		return 0, 0, fmt.Errorf("%w: %s is not a resilmail log segment", ErrFormat, name)
	}
	kind := strings.TrimRight(string(h[8:8+maxKindLen]), "\x00")
	if kind != l.opts.Kind {
		return 0, 0, fmt.Errorf("%w: %s holds %q records, not %q", ErrFormat, name, kind, l.opts.Kind)
	}
	if v := binary.BigEndian.Uint16(h[24:]); v > l.opts.Version || v == 0 {
		return 0, 0, fmt.Errorf("%w: %s has %s format version %d; this build reads up to version %d", ErrFormat, name, kind, v, l.opts.Version)
	}
	return size, seed, nil
}

var errTornHeader = errors.New("torn segment header")

func (l *Log) replaySegment(seq uint64, last bool, replay func(Pos, []byte) error) (*segment, error) {
	path := l.segPath(seq)
	flag := os.O_RDONLY
	if last {
		flag = os.O_RDWR
	}
	f, err := l.opts.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	data, err := readAll(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("wal: read %s: %w", path, err)
	}
	hdr, seed, err := l.checkHeader(data, path)
	if err != nil {
		// A crash while the segment was created leaves at most its header
		// (written and fsynced before any record): nothing of it was
		// acknowledged. A damaged header with more behind it is refused.
		if errors.Is(err, errTornHeader) && last && len(data) <= segHeaderSize {
			// Crash while creating the segment: nothing in it was synced.
			f.Close()
			l.log.Warn("wal: removing segment with torn header", "segment", path, "bytes", len(data))
			l.stats.TornBytes += int64(len(data))
			if err := os.Remove(path); err != nil {
				return nil, fmt.Errorf("wal: %w", err)
			}
			return nil, durable.SyncDir(l.dir)
		}
		f.Close()
		if errors.Is(err, errTornHeader) {
			return nil, fmt.Errorf("%w: %s has a damaged header", ErrFormat, path)
		}
		return nil, err
	}
	off := hdr
	end := int64(len(data))
	for off < end {
		n, ok := parseRecord(data[off:], seed)
		if ok {
			if err := replay(Pos{Seg: seq, Off: off}, data[off+recHeaderSize:off+recHeaderSize+n]); err != nil {
				f.Close()
				return nil, err
			}
			off += recHeaderSize + n
			continue
		}
		next := resync(data, off+1, seed)
		if next < 0 {
			// Nothing valid follows: a torn tail.
			torn := end - off
			if l.opts.Damaged != nil {
				l.opts.Damaged(Pos{Seg: seq, Off: off}, data[off:end], last)
			}
			if !last {
				l.stats.CorruptRegions++
				l.stats.CorruptBytes += torn
				l.log.Error("wal: damaged end of sealed segment", "segment", path, "offset", off, "bytes", torn)
				break
			}
			l.log.Warn("wal: truncating torn tail", "segment", path, "offset", off, "bytes", torn)
			l.stats.TornBytes += torn
			if err := f.Truncate(off); err != nil {
				f.Close()
				return nil, fmt.Errorf("wal: truncate %s: %w", path, err)
			}
			if err := f.Sync(); err != nil {
				f.Close()
				return nil, fmt.Errorf("wal: sync %s: %w", path, err)
			}
			end = off
			break
		}
		l.stats.CorruptRegions++
		l.stats.CorruptBytes += next - off
		l.log.Error("wal: skipping corrupt region", "segment", path, "offset", off, "bytes", next-off)
		if l.opts.Damaged != nil {
			l.opts.Damaged(Pos{Seg: seq, Off: off}, data[off:next], false)
		}
		off = next
	}
	seg := &segment{seq: seq, size: end, hdr: hdr, seed: seed}
	if last {
		seg.f = f
	} else {
		f.Close()
	}
	return seg, nil
}

func readAll(f File) ([]byte, error) {
	var data []byte
	buf := make([]byte, 1<<20)
	var off int64
	for {
		n, err := f.ReadAt(buf, off)
		data = append(data, buf[:n]...)
		off += int64(n)
		if err == io.EOF {
			return data, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// parseRecord reports whether b starts with a complete, valid record, and
// its payload length.
func parseRecord(b []byte, seed uint32) (int64, bool) {
	if len(b) < recHeaderSize {
		return 0, false
	}
	if crc32.Update(seed, crcTable, b[0:4]) != binary.BigEndian.Uint32(b[4:8]) {
		return 0, false
	}
	n := int64(binary.BigEndian.Uint32(b[0:4]))
	if n > MaxRecord || int64(len(b)) < recHeaderSize+n {
		return 0, false
	}
	if crc32.Update(seed, crcTable, b[recHeaderSize:recHeaderSize+n]) != binary.BigEndian.Uint32(b[8:12]) {
		return 0, false
	}
	return n, true
}

// resync returns the offset of the first valid record at or after from, or
// -1.
func resync(data []byte, from int64, seed uint32) int64 {
	for off := from; off+recHeaderSize <= int64(len(data)); off++ {
		if crc32.Update(seed, crcTable, data[off:off+4]) != binary.BigEndian.Uint32(data[off+4:off+8]) {
			continue
		}
		if _, ok := parseRecord(data[off:], seed); ok {
			return off
		}
	}
	return -1
}

func (l *Log) createSegment(seq uint64) error {
	path := l.segPath(seq)
	f, err := l.opts.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("wal: create segment: %w", err)
	}
	h, seed := l.header()
	if _, err := f.WriteAt(h, 0); err != nil {
		f.Close()
		return fmt.Errorf("wal: create segment: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("wal: create segment: %w", err)
	}
	if err := durable.SyncDir(l.dir); err != nil {
		f.Close()
		return err
	}
	seg := &segment{seq: seq, size: int64(len(h)), f: f, hdr: int64(len(h)), seed: seed}
	l.segs = append(l.segs, seg)
	l.cur = seg
	l.written = seg.size
	l.stats.Bytes += seg.size
	l.stats.Segments = len(l.segs)
	return nil
}

// Append adds rec to the log and returns its position. The record is durable
// only once a Sync that started after Append returned has returned nil.
func (l *Log) Append(rec []byte) (Pos, error) {
	if len(rec) > MaxRecord {
		return Pos{}, ErrTooLarge
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usableLocked(); err != nil {
		return Pos{}, err
	}
	size := int64(recHeaderSize + len(rec))
	if l.cur.size > l.cur.hdr && l.cur.size+size > l.opts.SegmentSize {
		if err := l.rollLocked(); err != nil {
			return Pos{}, err
		}
	}
	pos := Pos{Seg: l.cur.seq, Off: l.cur.size}
	var h [recHeaderSize]byte
	binary.BigEndian.PutUint32(h[0:4], uint32(len(rec)))
	binary.BigEndian.PutUint32(h[4:8], crc32.Update(l.cur.seed, crcTable, h[0:4]))
	binary.BigEndian.PutUint32(h[8:12], crc32.Update(l.cur.seed, crcTable, rec))
	l.buf = append(l.buf, h[:]...)
	l.buf = append(l.buf, rec...)
	l.cur.size += size
	l.stats.Bytes += size
	l.appendSeq++
	l.stats.Appends++
	if len(l.buf) >= l.opts.BufferSize && !l.syncing {
		if err := l.flushLocked(); err != nil {
			return Pos{}, err
		}
	}
	return pos, nil
}

// AppendFrom adds a record whose payload is prefix followed by the n bytes
// read from r, without holding the payload in memory: [Log.Reserve]
// then [Pending.Fill]. The record is durable like one from Append. If r
// fails or ends early, nothing is appended and the log stays usable.
func (l *Log) AppendFrom(prefix []byte, r io.Reader, n int64) (Pos, error) {
	p, err := l.Reserve(prefix, n)
	if err != nil {
		return Pos{}, err
	}
	return p.Fill(r)
}

// Pending is a record reserved by [Log.Reserve] and not yet written.
type Pending struct {
	l      *Log
	seg    *segment
	pos    Pos
	prefix []byte
	n      int64
}

// Reserve takes the place of a record whose payload is prefix followed by
// n bytes that [Pending.Fill] copies later, without the log's lock: other
// records are appended after it meanwhile, and a caller that reserves
// under its own lock orders the record among its others without holding
// that lock during the copy. The record counts as appended (for Sync) only
// once Fill returns; the segment is not sealed before. A crash during the
// copy leaves a region that Open reports as damaged and skips (it was never
// acknowledged); so does a Fill whose reader fails after other records
// were appended.
func (l *Log) Reserve(prefix []byte, n int64) (*Pending, error) {
	total := int64(len(prefix)) + n
	if n < 0 || total > MaxRecord {
		return nil, ErrTooLarge
	}
	size := recHeaderSize + total
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if err := l.usableLocked(); err != nil {
			return nil, err
		}
		if l.syncing {
			l.cond.Wait() // the leader writes buf at written
			continue
		}
		if l.cur.size > l.cur.hdr && l.cur.size+size > l.opts.SegmentSize {
			if err := l.rollLocked(); err != nil {
				return nil, err
			}
			continue
		}
		break
	}
	if err := l.flushLocked(); err != nil {
		return nil, err
	}
	p := &Pending{l: l, seg: l.cur, pos: Pos{Seg: l.cur.seq, Off: l.cur.size}, prefix: prefix, n: n}
	l.cur.size += size
	l.written += size
	l.stats.Bytes += size
	l.reserving++
	return p, nil
}

// Pos returns where the record will be.
func (p *Pending) Pos() Pos { return p.pos }

// Fill copies the n bytes of the payload from r into the reserved place,
// in 256 KiB pieces, and completes the record. It is called once.
func (p *Pending) Fill(r io.Reader) (Pos, error) {
	l, f := p.l, p.seg.f
	total := int64(len(p.prefix)) + p.n
	size := recHeaderSize + total
	crc := crc32.Update(p.seg.seed, crcTable, p.prefix)
	off := p.pos.Off + recHeaderSize
	_, werr := f.WriteAt(p.prefix, off)
	off += int64(len(p.prefix))
	var rerr error
	if werr == nil && p.n > 0 {
		buf := make([]byte, min(p.n, 256<<10))
		for left := p.n; left > 0; {
			k, err := io.ReadFull(r, buf[:min(left, int64(len(buf)))])
			if err != nil {
				rerr = fmt.Errorf("wal: reading the record: %w", err)
				break
			}
			if _, werr = f.WriteAt(buf[:k], off); werr != nil {
				break
			}
			crc = crc32.Update(crc, crcTable, buf[:k])
			off += int64(k)
			left -= int64(k)
		}
	}
	if werr == nil && rerr == nil {
		var h [recHeaderSize]byte
		binary.BigEndian.PutUint32(h[0:4], uint32(total))
		binary.BigEndian.PutUint32(h[4:8], crc32.Update(p.seg.seed, crcTable, h[0:4]))
		binary.BigEndian.PutUint32(h[8:12], crc)
		_, werr = f.WriteAt(h[:], p.pos.Off)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reserving--
	l.cond.Broadcast()
	switch {
	case werr != nil:
		return Pos{}, l.failLocked(werr)
	case rerr != nil:
		if p.seg == l.cur && l.cur.size == p.pos.Off+size && l.written == l.cur.size && len(l.buf) == 0 {
			// Nothing came after it: give the place back.
			l.cur.size, l.written = p.pos.Off, p.pos.Off
			l.stats.Bytes -= size
		} else {
			l.log.Warn("wal: a reserved record was not filled; Open will skip its place as damaged", "dir", l.dir, "pos", p.pos.String(), "err", rerr)
		}
		return Pos{}, rerr
	}
	l.appendSeq++
	l.stats.Appends++
	return p.pos, nil
}

func (l *Log) usableLocked() error {
	if l.closed {
		return ErrClosed
	}
	return l.err
}

func (l *Log) failLocked(err error) error {
	if l.err == nil {
		l.err = fmt.Errorf("%w: %w", ErrFailed, err)
		l.log.Error("wal: log failed; reopen to recover", "dir", l.dir, "err", err)
	}
	return l.err
}

// flushLocked writes buf to the current segment. Callers ensure no Sync
// leader is writing concurrently.
func (l *Log) flushLocked() error {
	if len(l.buf) == 0 {
		return nil
	}
	if _, err := l.cur.f.WriteAt(l.buf, l.written); err != nil {
		return l.failLocked(err)
	}
	l.written += int64(len(l.buf))
	l.buf = l.buf[:0]
	return nil
}

// rollLocked seals the current segment (written and fsynced) and starts the
// next one.
func (l *Log) rollLocked() error {
	for l.syncing || l.reserving > 0 {
		l.cond.Wait() // a reserved record is written before its segment is sealed
	}
	if err := l.usableLocked(); err != nil {
		return err
	}
	if err := l.flushLocked(); err != nil {
		return err
	}
	if err := l.cur.f.Sync(); err != nil {
		return l.failLocked(err)
	}
	l.stats.Syncs++
	l.syncedSeq = l.appendSeq
	l.cond.Broadcast()
	if err := l.createSegment(l.cur.seq + 1); err != nil {
		return l.failLocked(err)
	}
	return nil
}

// Sync makes every record appended before the call durable. Concurrent
// callers share fsyncs.
func (l *Log) Sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.syncLocked(l.appendSeq)
}

// SyncWithin makes every record appended before the call durable, as Sync
// does, but leads an fsync of its own only if no other caller's has made
// them durable within d. A record that need not be durable at once (a
// delivery's result, which a crash would only send again) rides the group
// commits of busier callers this way, instead of adding fsyncs of its own;
// when nobody else commits, it waits d longer than Sync would.
func (l *Log) SyncWithin(d time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	target := l.appendSeq
	if l.syncedSeq >= target {
		return nil
	}
	expired := false
	t := time.AfterFunc(d, func() {
		l.mu.Lock()
		expired = true
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer t.Stop()
	for l.syncedSeq < target && !expired && l.err == nil && !l.closed {
		l.cond.Wait()
	}
	return l.syncLocked(target)
}

// syncLocked makes the records up to target durable, leading fsyncs or
// waiting for others' as needed. l.mu is held; it is released during I/O.
func (l *Log) syncLocked(target uint64) error {
	for l.syncedSeq < target {
		if l.err != nil {
			return l.err
		}
		if l.syncing {
			l.cond.Wait()
			continue
		}
		if l.closed {
			return ErrClosed
		}
		// Lead a commit of everything appended so far.
		l.syncing = true
		buf, f, off, upto := l.buf, l.cur.f, l.written, l.appendSeq
		l.syncFrom = off
		l.buf = l.spare[:0]
		l.written += int64(len(buf))
		l.mu.Unlock()
		var err error
		if len(buf) > 0 {
			_, err = f.WriteAt(buf, off)
		}
		if err == nil {
			err = l.fsync(f)
		}
		l.mu.Lock()
		l.syncing = false
		l.spare = buf[:0]
		l.stats.Syncs++
		if err != nil {
			l.failLocked(err)
		} else if upto > l.syncedSeq {
			l.syncedSeq = upto
		}
		l.cond.Broadcast()
	}
	return nil
}

// fastSync is how quick a group commit's last fsync must have been for the
// next one to keep its scheduler slot (see fsync).
const fastSync = 2 * time.Millisecond

// fsync is a group commit's fsync of f. Go's system call hands the
// goroutine's scheduler slot (its P) to another thread when the call lasts,
// and takes one back after it: under smtp-source that hand-off cost the
// relay 5-7% of its CPU per message, in futex calls, sleeps and context
// switches. So on a plain file, while fsyncs are quick (the last one under
// fastSync) and the program has more than one P, the call keeps its P:
// other goroutines run on the others meanwhile, and a garbage collection
// that must stop them all waits for this fsync at most. A slow disk gets
// the ordinary call, which frees the P for as long as the disk takes.
func (l *Log) fsync(f File) error {
	start := time.Now()
	var err error
	if of, ok := f.(*os.File); ok && keepP(time.Duration(l.lastSync.Load()), runtime.GOMAXPROCS(0)) {
		err = rawFsync(of)
	} else {
		err = f.Sync()
	}
	l.lastSync.Store(int64(time.Since(start)))
	return err
}

// keepP reports whether an fsync may keep its P, given how long the last
// one took and how many Ps there are.
func keepP(last time.Duration, procs int) bool {
	return procs > 1 && last < fastSync
}

// rawFsync is f.Sync without the scheduler's hand-off (see fsync).
func rawFsync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return f.Sync() // its own error for a closed file
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		for {
			_, _, errno = syscall.RawSyscall(syscall.SYS_FSYNC, fd, 0, 0)
			if errno != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return f.Sync()
	}
	if errno != 0 {
		return &os.PathError{Op: "sync", Path: f.Name(), Err: errno}
	}
	return nil
}

// AppendSync appends rec and waits until it is durable.
func (l *Log) AppendSync(rec []byte) (Pos, error) {
	pos, err := l.Append(rec)
	if err != nil {
		return pos, err
	}
	return pos, l.Sync()
}

// ReadAt reads the record at pos, written by this Log or found by Open, and
// verifies its CRC. A record not yet synced is flushed first. When the
// payload fails its CRC, ReadAt returns it anyway with an error wrapping
// ErrCorrupt, so that the caller can move the damaged bytes aside.
func (l *Log) ReadAt(pos Pos) ([]byte, error) {
	l.mu.Lock()
	f, seg, err := l.readerLocked(pos)
	var seed uint32
	if seg != nil {
		seed = seg.seed
	}
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	var h [recHeaderSize]byte
	if _, err := f.ReadAt(h[:], pos.Off); err != nil {
		return nil, readErr(pos, err)
	}
	if crc32.Update(seed, crcTable, h[0:4]) != binary.BigEndian.Uint32(h[4:8]) {
		return nil, fmt.Errorf("%w at %s: bad header", ErrCorrupt, pos)
	}
	n := binary.BigEndian.Uint32(h[0:4])
	if n > MaxRecord {
		return nil, fmt.Errorf("%w at %s: bad length", ErrCorrupt, pos)
	}
	rec := make([]byte, n)
	if _, err := f.ReadAt(rec, pos.Off+recHeaderSize); err != nil {
		return nil, readErr(pos, err)
	}
	if crc32.Update(seed, crcTable, rec) != binary.BigEndian.Uint32(h[8:12]) {
		return rec, fmt.Errorf("%w at %s: checksum mismatch", ErrCorrupt, pos)
	}
	return rec, nil
}

// Record is one record opened in place by [Log.OpenRecord]. Its payload is
// read from a file handle of its own, never held in memory, and stays
// readable after the log removes its segment (POSIX keeps an open file's
// data). It is an io.ReaderAt over the payload; Close releases it.
type Record struct {
	f    File
	pos  Pos
	off  int64 // of the payload in the file
	n    int64
	seed uint32
	crc  uint32
}

// OpenRecord opens the record at pos for reading in place, after checking
// its header (ErrCorrupt if it fails). The payload's CRC is checked only by
// [Record.Verify]: a caller that streams the payload checks its own digest
// instead. A record not yet written to its file is written first.
func (l *Log) OpenRecord(pos Pos) (*Record, error) {
	l.mu.Lock()
	_, seg, err := l.readerLocked(pos)
	var seed uint32
	if seg != nil {
		seed = seg.seed
	}
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	f, err := l.opts.OpenFile(l.segPath(pos.Seg), os.O_RDONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	var h [recHeaderSize]byte
	if _, err := f.ReadAt(h[:], pos.Off); err != nil {
		f.Close()
		return nil, readErr(pos, err)
	}
	if crc32.Update(seed, crcTable, h[0:4]) != binary.BigEndian.Uint32(h[4:8]) {
		f.Close()
		return nil, fmt.Errorf("%w at %s: bad header", ErrCorrupt, pos)
	}
	n := int64(binary.BigEndian.Uint32(h[0:4]))
	if n > MaxRecord {
		f.Close()
		return nil, fmt.Errorf("%w at %s: bad length", ErrCorrupt, pos)
	}
	return &Record{f: f, pos: pos, off: pos.Off + recHeaderSize, n: n, seed: seed, crc: binary.BigEndian.Uint32(h[8:12])}, nil
}

// Size returns the payload's length.
func (r *Record) Size() int64 { return r.n }

// ReadAt reads the payload from offset off, as io.ReaderAt says. A payload
// cut short by the end of its file is ErrCorrupt.
func (r *Record) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("wal: negative offset")
	}
	if off >= r.n {
		return 0, io.EOF
	}
	want := min(int64(len(p)), r.n-off)
	k, err := r.f.ReadAt(p[:want], r.off+off)
	if int64(k) == want {
		err = nil
		if want < int64(len(p)) {
			err = io.EOF
		}
	} else if err != nil {
		err = readErr(r.pos, err)
	}
	return k, err
}

// Verify reads the whole payload through its CRC and returns ErrCorrupt
// if it fails.
func (r *Record) Verify() error {
	buf := make([]byte, min(r.n, 256<<10))
	crc := r.seed
	for off := int64(0); off < r.n; {
		k, err := r.ReadAt(buf[:min(int64(len(buf)), r.n-off)], off)
		crc = crc32.Update(crc, crcTable, buf[:k])
		off += int64(k)
		if err != nil && !(err == io.EOF && off == r.n) {
			return err
		}
	}
	if crc != r.crc {
		return fmt.Errorf("%w at %s: checksum mismatch", ErrCorrupt, r.pos)
	}
	return nil
}

// Close releases the record's file handle.
func (r *Record) Close() error { return r.f.Close() }

// readErr classifies a failed read: a record cut short by the end of its
// file is corrupt; any other error (too many open files, an I/O error) is
// returned as it is, for the caller to try again later.
func readErr(pos Pos, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w at %s: %w", ErrCorrupt, pos, err)
	}
	return fmt.Errorf("wal: read at %s: %w", pos, err)
}

func (l *Log) readerLocked(pos Pos) (File, *segment, error) {
	if l.closed {
		return nil, nil, ErrClosed
	}
	for _, s := range l.segs {
		if s.seq != pos.Seg {
			continue
		}
		if pos.Off < s.hdr || pos.Off >= s.size {
			return nil, nil, fmt.Errorf("wal: no record at %s", pos)
		}
		if s == l.cur {
			// A Sync leader may be writing the bytes at pos right now;
			// those before where it writes were written before it began
			// (a record is never split between two writes), so a read of
			// them does not wait for its fsync.
			for l.syncing && pos.Off >= l.syncFrom {
				l.cond.Wait()
			}
			if pos.Off >= l.written {
				if err := l.usableLocked(); err != nil {
					return nil, nil, err
				}
				if err := l.flushLocked(); err != nil {
					return nil, nil, err
				}
			}
		}
		if s.f == nil {
			f, err := l.opts.OpenFile(l.segPath(s.seq), os.O_RDONLY, 0)
			if err != nil {
				return nil, nil, fmt.Errorf("wal: %w", err)
			}
			s.f = f
		}
		return s.f, s, nil
	}
	return nil, nil, fmt.Errorf("wal: no segment for %s", pos)
}

// Segments returns the sequence numbers of the segments, oldest first; the
// last one is being written.
func (l *Log) Segments() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	seqs := make([]uint64, len(l.segs))
	for i, s := range l.segs {
		seqs[i] = s.seq
	}
	return seqs
}

// SegmentSize returns the current size in bytes of segment seq, or 0.
func (l *Log) SegmentSize(seq uint64) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.segs {
		if s.seq == seq {
			return s.size
		}
	}
	return 0
}

// Roll seals the segment being written and starts a new one, so that the
// sealed one can later be removed.
func (l *Log) Roll() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usableLocked(); err != nil {
		return err
	}
	if l.cur.size == l.cur.hdr {
		return nil
	}
	return l.rollLocked()
}

// RemoveBefore deletes the sealed segments whose sequence number is below
// seq. The caller must have made durable elsewhere (rewritten) every record
// in them that it still needs.
func (l *Log) RemoveBefore(seq uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usableLocked(); err != nil {
		return err
	}
	removed := false
	for len(l.segs) > 1 && l.segs[0].seq < seq {
		s := l.segs[0]
		if s.f != nil {
			s.f.Close()
		}
		if err := os.Remove(l.segPath(s.seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("wal: %w", err)
		}
		l.stats.Bytes -= s.size
		l.segs = l.segs[1:]
		removed = true
	}
	l.stats.Segments = len(l.segs)
	if removed {
		return durable.SyncDir(l.dir)
	}
	return nil
}

// Stats returns the log's counters.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// Err returns the error that made the log fail, or nil.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Close syncs what was appended and closes the files. It is idempotent.
func (l *Log) Close() error {
	err := l.Sync()
	if errors.Is(err, ErrClosed) {
		err = nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.syncing || l.reserving > 0 {
		l.cond.Wait()
	}
	if l.closed {
		return nil
	}
	l.closed = true
	l.cond.Broadcast()
	l.closeFiles()
	return err
}

func (l *Log) closeFiles() {
	for _, s := range l.segs {
		if s.f != nil {
			s.f.Close()
			s.f = nil
		}
	}
}
