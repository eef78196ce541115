package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
)

// Body packs: a bulk load ([Store.Load]) writes its bodies into a few
// large files (packs/NNNNNNNN.pack, bodies one after the other, with no
// framing) instead of one file each, with an index next to each pack
// (packs/NNNNNNNN.idx) naming every body's digest, offset and size. A
// rebuilt server then creates a hundred files, not a hundred thousand
// (file creation was most of a full restore's time). Everything else
// writes bodies as before, one file each under bodies/; a body is read
// from its own file when there is one, and otherwise from its pack.
//
// Packs are immutable. Open reads every index and keeps, in memory, the
// location of each packed body that the store still needs (referenced,
// kept for a retention hold, or with its removal not yet durable). A body
// that stops being needed is dropped from that map where a loose body's
// file would be removed, and a pack is removed with its index once none
// of its bodies is left; a Scrub moves the bodies of a pack that holds
// them in less than half its size into files of their own, and so removes
// it (a pack never keeps more than twice what it holds past a scrub).
// A packed body found damaged is dropped from the map (and marked corrupt,
// as a loose one is); a good copy stored again is written as a loose file,
// which is then served. A load killed before its checkpoint leaves packs
// no message refers to: the next Load removes them, and so does a Scrub.
//
// The index file is:
//
//	magic    "rstore-pack-index 1\n"
//	size     uvarint (the pack's size in bytes)
//	count    uvarint
//	count x  digest [32]byte, offset uvarint, size uvarint
//	sum      [32]byte SHA-256 of everything before
//
// A store that may hold packs says "resilmail-store 3" in its VERSION file
// (Load writes it before the first pack), so that a build that knows
// nothing of packs refuses it instead of finding its bodies missing.
const (
	packsDir         = "packs"
	packIndexMagic   = "rstore-pack-index 1\n"
	packedVersion    = "resilmail-store 3\n"
	packIndexEntry   = 32 + 1 + 1 // digest, and at least a byte per number
	packSuffix       = ".pack"
	packIndexSuffix  = ".idx"
	packWriteChunk   = 1 << 20  // bytes gathered before one write to a pack
	maxPackBodies    = 1 << 20  // bodies a load puts in one pack at most
	maxPackIndexSize = 64 << 20 // larger is not an index a load wrote (maxPackBodies entries take under 50 MiB)
)

// packTarget is the size a load fills a pack to before it starts the next
// (a variable for tests).
var packTarget int64 = 16 << 20

// unpackHook, if set (by tests), is called after each body a scrub moves
// out of a sparse pack.
var unpackHook func()

// packLive is what a pack still holds that the store needs.
type packLive struct {
	bodies      int
	bytes, size int64 // of those bodies; of the pack
}

// packLoc is where a packed body lies.
type packLoc struct {
	pack      uint32
	off, size int64
}

// packsState is the store's packed bodies; its own lock (packMu), taken
// after Store.mu when both are held.
type packsState struct {
	mu   sync.RWMutex
	locs map[resilmail.Digest]packLoc
	live map[uint32]*packLive // what each pack still holds in locs
	// loading is set while a Load writes packs, so that a Scrub leaves
	// them alone.
	loading bool
}

func (s *Store) packPath(id uint32, suffix string) string {
	return filepath.Join(s.dir, packsDir, fmt.Sprintf("%08d%s", id, suffix))
}

// packIndexEntryOf is one body of a pack's index.
type packIndexEntryOf struct {
	d         resilmail.Digest
	off, size int64
}

func encodePackIndex(packSize int64, entries []packIndexEntryOf) []byte {
	var e encoder
	e.b = make([]byte, 0, len(packIndexMagic)+20+len(entries)*40+sha256.Size)
	e.raw([]byte(packIndexMagic))
	e.uvarint(uint64(packSize))
	e.uvarint(uint64(len(entries)))
	for _, x := range entries {
		e.raw(x.d[:])
		e.uvarint(uint64(x.off))
		e.uvarint(uint64(x.size))
	}
	sum := sha256.Sum256(e.b)
	return append(e.b, sum[:]...)
}

// decodePackIndex decodes a pack's index, checking its sum and that every
// body lies inside the pack, after the previous one.
func decodePackIndex(b []byte) (int64, []packIndexEntryOf, error) {
	if len(b) < len(packIndexMagic)+sha256.Size || !bytes.HasPrefix(b, []byte(packIndexMagic)) {
		return 0, nil, fmt.Errorf("%w: not a pack index", errBadRecord)
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return 0, nil, fmt.Errorf("%w: pack index sum does not match", errBadRecord)
	}
	d := decoder{b: body[len(packIndexMagic):]}
	size := d.uvarint()
	n := d.count(packIndexEntry)
	if d.err != nil {
		return 0, nil, d.err
	}
	if size > 1<<62 {
		return 0, nil, fmt.Errorf("%w: pack size %d", errBadRecord, size)
	}
	entries := make([]packIndexEntryOf, 0, n)
	var end uint64
	for i := 0; i < n && d.err == nil; i++ {
		x := packIndexEntryOf{d: d.digest()}
		off, sz := d.uvarint(), d.uvarint()
		if d.err == nil && (off < end || sz > size || off > size-sz) {
			return 0, nil, fmt.Errorf("%w: pack index entry %d (%d bytes at %d) outside a pack of %d bytes or overlapping", errBadRecord, i, sz, off, size)
		}
		end = off + sz
		x.off, x.size = int64(off), int64(sz)
		entries = append(entries, x)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("pack index length")
	}
	if d.err != nil {
		return 0, nil, d.err
	}
	return int64(size), entries, nil
}

// packIDs lists the packs and indexes in the packs folder by id, with
// whether each has its pack and its index.
func (s *Store) packIDs() (map[uint32][2]bool, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, packsDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, storageErr(err)
	}
	ids := make(map[uint32][2]bool)
	for _, e := range entries {
		name := e.Name()
		k := 0
		switch {
		case strings.HasSuffix(name, packSuffix):
		case strings.HasSuffix(name, packIndexSuffix):
			k = 1
		default:
			continue
		}
		v, err := strconv.ParseUint(name[:strings.LastIndexByte(name, '.')], 10, 32)
		if err != nil || v == 0 {
			continue
		}
		x := ids[uint32(v)]
		x[k] = true
		ids[uint32(v)] = x
	}
	return ids, nil
}

// loadPacks reads every pack index at Open, after the journal's replay,
// and keeps the bodies the store needs. A pack whose index is missing or
// damaged holds no body the store counts on (a load writes every index
// before its checkpoint); such a pack, and one with no body needed, is
// left to Scrub, and logged.
func (s *Store) loadPacks() error {
	ids, err := s.packIDs()
	if err != nil || len(ids) == 0 {
		return err
	}
	p := &s.packs
	p.mu.Lock()
	defer p.mu.Unlock()
	p.locs = make(map[resilmail.Digest]packLoc)
	p.live = make(map[uint32]*packLive)
	for id, has := range ids {
		if !has[0] || !has[1] {
			s.log.Warn("store: a pack without its index, or an index without its pack (a load that did not finish); a scrub removes it", "pack", id)
			continue
		}
		path := s.packPath(id, packIndexSuffix)
		if fi, err := os.Stat(path); err == nil && fi.Size() > maxPackIndexSize {
			s.log.Error("store: a pack's index is too large to be one; its bodies are not served", "pack", id, "bytes", fi.Size())
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return storageErr(err)
		}
		size, entries, err := decodePackIndex(b)
		if err != nil {
			s.log.Error("store: a pack's index is damaged; its bodies are not served (a scrub marks the ones still referenced corrupt)", "pack", id, "err", err)
			continue
		}
		for _, x := range entries {
			if _, dup := p.locs[x.d]; dup || !s.neededLocked(x.d) {
				continue
			}
			p.locs[x.d] = packLoc{pack: id, off: x.off, size: x.size}
			pl := p.live[id]
			if pl == nil {
				pl = &packLive{size: size}
				p.live[id] = pl
			}
			pl.bodies++
			pl.bytes += x.size
		}
	}
	s.log.Info("store: packs loaded", "packs", len(p.live), "bodies", len(p.locs))
	return nil
}

// neededLocked reports whether the store still needs body d's bytes.
func (s *Store) neededLocked(d resilmail.Digest) bool {
	_, pending := s.pendingUnlink[d]
	return s.refs[d] > 0 || pending || s.retainedLocked(d) || s.inflight[d] != nil
}

// packedLoc returns where body d lies in a pack, if it does.
func (s *Store) packedLoc(d resilmail.Digest) (packLoc, bool) {
	s.packs.mu.RLock()
	defer s.packs.mu.RUnlock()
	l, ok := s.packs.locs[d]
	return l, ok
}

// dropPacked forgets a packed body (no longer needed, or damaged), and
// removes its pack once no body of it is left.
func (s *Store) dropPacked(d resilmail.Digest) {
	p := &s.packs
	p.mu.Lock()
	l, ok := p.locs[d]
	if !ok {
		p.mu.Unlock()
		return
	}
	delete(p.locs, d)
	pl := p.live[l.pack]
	pl.bodies--
	pl.bytes -= l.size
	last := pl.bodies == 0
	if last {
		delete(p.live, l.pack)
	}
	p.mu.Unlock()
	if last {
		s.removePack(l.pack)
	}
}

// removePack removes a pack and its index (index first: a pack without
// its index is never read).
func (s *Store) removePack(id uint32) {
	for _, suffix := range []string{packIndexSuffix, packSuffix} {
		if err := os.Remove(s.packPath(id, suffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("store: removing a pack no body is left in", "pack", id, "err", err)
			return
		}
	}
	s.log.Info("store: pack removed: none of its bodies is needed", "pack", id)
}

// removeBody removes the stored copy of a body no longer needed: its file,
// and its place in a pack.
func (s *Store) removeBody(d resilmail.Digest) error {
	s.dropPacked(d)
	if err := os.Remove(s.bodyPath(d)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// openStored opens the stored copy of body d: its own file if there is
// one, else its pack. It returns the file with the body's offset in it
// and its size.
func (s *Store) openStored(d resilmail.Digest) (*os.File, int64, int64, error) {
	f, err := os.Open(s.bodyPath(d))
	if err == nil {
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, 0, 0, err
		}
		return f, 0, fi.Size(), nil
	}
	l, ok := s.packedLoc(d)
	if !errors.Is(err, os.ErrNotExist) || !ok {
		return nil, 0, 0, err
	}
	pf, perr := os.Open(s.packPath(l.pack, packSuffix))
	if perr != nil {
		return nil, 0, 0, perr
	}
	return pf, l.off, l.size, nil
}

// readStored reads the stored copy of body d whole (not checked against
// d: the callers do).
func (s *Store) readStored(d resilmail.Digest) ([]byte, error) {
	b, err := os.ReadFile(s.bodyPath(d))
	if !errors.Is(err, os.ErrNotExist) {
		return b, err
	}
	f, off, size, err2 := s.openStored(d)
	if err2 != nil {
		return nil, err // the body's own file is missing, and it is in no pack
	}
	defer f.Close()
	b = make([]byte, size)
	if _, err := f.ReadAt(b, off); err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("pack %s is shorter than its index says: %w", f.Name(), io.ErrUnexpectedEOF)
		}
		return nil, err
	}
	return b, nil
}

// storedSize returns the size of the stored copy of body d, or false if
// there is none.
func (s *Store) storedSize(d resilmail.Digest) (int64, bool) {
	if fi, err := os.Stat(s.bodyPath(d)); err == nil {
		return fi.Size(), true
	}
	l, ok := s.packedLoc(d)
	return l.size, ok
}

// removeOrphanPacks removes the packs that hold no body the store needs
// (left by a load that did not finish), unless a load is writing packs.
func (s *Store) removeOrphanPacks() (int, error) {
	ids, err := s.packIDs()
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	n := 0
	for id := range ids {
		s.mu.Lock()
		// Checked and removed under the lock a Load takes to start
		// writing packs.
		s.packs.mu.RLock()
		if !s.packs.loading && s.packs.live[id] == nil && !s.closed {
			s.removePack(id)
			n++
		}
		s.packs.mu.RUnlock()
		s.mu.Unlock()
	}
	return n, nil
}

// A packWriter writes the bodies of a load into packs, from concurrent
// callers: each put copies the body into the current pack's buffer, and
// the buffer is written (at its place in the pack) once it holds
// packWriteChunk bytes, outside the lock.
type packWriter struct {
	s    *Store
	mu   sync.Mutex
	next uint32 // id of the next pack
	cur  *packFile
	all  []*packFile
	wg   sync.WaitGroup // writes in progress
	err  error          // the first write error
}

type packFile struct {
	id      uint32
	fd      int
	size    int64 // bytes given to the pack so far
	buf     []byte
	bufOff  int64 // where buf goes in the pack
	entries []packIndexEntryOf
}

var packBufPool = sync.Pool{New: func() any { b := make([]byte, 0, packWriteChunk+64<<10); return &b }}

// put adds a body to the current pack, starting a new one when it is
// full.
func (w *packWriter) put(d resilmail.Digest, body []byte) error {
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return err
	}
	if w.cur == nil || w.cur.size > 0 && w.cur.size+int64(len(body)) > packTarget || len(w.cur.entries) >= maxPackBodies {
		if err := w.startLocked(); err != nil {
			w.mu.Unlock()
			return err
		}
	}
	p := w.cur
	p.entries = append(p.entries, packIndexEntryOf{d: d, off: p.size, size: int64(len(body))})
	p.size += int64(len(body))
	if p.buf == nil {
		p.buf = (*packBufPool.Get().(*[]byte))[:0]
		p.bufOff = p.size - int64(len(body))
	}
	p.buf = append(p.buf, body...)
	var out []byte
	var off int64
	if len(p.buf) >= packWriteChunk {
		out, off, p.buf = p.buf, p.bufOff, nil
		w.wg.Add(1)
	}
	w.mu.Unlock()
	if out != nil {
		w.write(p, out, off)
	}
	return nil
}

// startLocked flushes the current pack's buffer and opens the next pack.
func (w *packWriter) startLocked() error {
	if p := w.cur; p != nil && len(p.buf) > 0 {
		out, off := p.buf, p.bufOff
		p.buf = nil
		w.wg.Add(1)
		go w.write(p, out, off)
	}
	id := w.next
	w.next++
	path := w.s.packPath(id, packSuffix)
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_TRUNC|syscall.O_CLOEXEC, 0o640)
	if err != nil {
		w.err = storageErr(&os.PathError{Op: "open", Path: path, Err: err})
		return w.err
	}
	w.cur = &packFile{id: id, fd: fd}
	w.all = append(w.all, w.cur)
	return nil
}

// write writes b at off in pack p, and gives the buffer back.
func (w *packWriter) write(p *packFile, b []byte, off int64) {
	defer w.wg.Done()
	var err error
	for rest, at := b, off; len(rest) > 0; {
		n, werr := syscall.Pwrite(p.fd, rest, at)
		if werr == syscall.EINTR {
			continue
		}
		if werr == nil && n <= 0 {
			werr = syscall.EIO
		}
		if werr != nil {
			err = werr
			break
		}
		rest, at = rest[n:], at+int64(n)
	}
	b = b[:0]
	packBufPool.Put(&b)
	if err != nil {
		w.mu.Lock()
		if w.err == nil {
			w.err = storageErr(&os.PathError{Op: "write", Path: w.s.packPath(p.id, packSuffix), Err: err})
		}
		w.mu.Unlock()
	}
}

// finish writes what is buffered and every pack's index, and closes the
// packs; it returns the bodies' locations. Nothing is synced: Load syncs
// the file system once.
func (w *packWriter) finish() (map[resilmail.Digest]packLoc, map[uint32]*packLive, error) {
	w.mu.Lock()
	if p := w.cur; p != nil && len(p.buf) > 0 {
		out, off := p.buf, p.bufOff
		p.buf = nil
		w.wg.Add(1)
		go w.write(p, out, off)
	}
	w.mu.Unlock()
	w.wg.Wait()
	err := w.err
	locs := make(map[resilmail.Digest]packLoc)
	live := make(map[uint32]*packLive)
	for _, p := range w.all {
		if cerr := syscall.Close(p.fd); err == nil && cerr != nil {
			err = storageErr(&os.PathError{Op: "close", Path: w.s.packPath(p.id, packSuffix), Err: cerr})
		}
		if err != nil {
			continue
		}
		slices.SortFunc(p.entries, func(a, b packIndexEntryOf) int { return int(a.off - b.off) })
		if werr := writeLoadFile(w.s.packPath(p.id, packIndexSuffix), encodePackIndex(p.size, p.entries)); werr != nil {
			err = werr
			continue
		}
		for _, x := range p.entries {
			locs[x.d] = packLoc{pack: p.id, off: x.off, size: x.size}
		}
		live[p.id] = &packLive{bodies: len(p.entries), bytes: p.size, size: p.size}
	}
	w.all = nil
	return locs, live, err
}

// abort closes the packs after a failed load (their files stay, for the
// next Load or a Scrub to remove).
func (w *packWriter) abort() {
	w.mu.Lock()
	if w.cur != nil {
		w.cur.buf = nil
	}
	w.mu.Unlock()
	w.wg.Wait()
	for _, p := range w.all {
		syscall.Close(p.fd)
	}
	w.all = nil
}

// startPacks readies the store for a load's packs: it records in VERSION
// (durably, before any pack exists) that the store may hold packs,
// creates the packs folder and removes what a load that did not finish
// left there (the store is empty: no pack is in use).
func (s *Store) startPacks() error {
	path := filepath.Join(s.dir, versionFile)
	if b, err := os.ReadFile(path); err != nil || string(b) != packedVersion {
		if err := durable.WriteFile(durable.OS, path, []byte(packedVersion), 0o640); err != nil {
			return storageErr(err)
		}
	}
	dir := filepath.Join(s.dir, packsDir)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(dir, 0o750); err != nil {
			return storageErr(err)
		}
		if err := durableSyncDir(s.dir); err != nil {
			return err
		}
	}
	// From here a Scrub leaves the packs folder alone (it checks and
	// removes under the same lock).
	s.packs.mu.Lock()
	inUse := len(s.packs.live) > 0
	s.packs.loading = !inUse
	s.packs.mu.Unlock()
	if inUse {
		return fmt.Errorf("%w (%w): it holds packed bodies", ErrNotEmpty, fs.ErrExist)
	}
	ids, err := s.packIDs()
	for id := range ids {
		for _, suffix := range []string{packIndexSuffix, packSuffix} {
			if rerr := os.Remove(s.packPath(id, suffix)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
				err = storageErr(rerr)
			}
		}
	}
	if err != nil {
		s.packs.mu.Lock()
		s.packs.loading = false
		s.packs.mu.Unlock()
	}
	return err
}

// rewriteSparsePacks moves the bodies still needed out of every pack that
// holds them in less than half its size, into files of their own (made
// durable before the pack is dropped), so that the pack goes: a restored
// store whose mail is deleted over time gives the space back, and a pack
// never takes more than twice what it holds for long. Each body is checked
// against its digest on the way (a damaged one is marked corrupt, as a
// read would). It returns the number of packs emptied.
func (s *Store) rewriteSparsePacks(ctx context.Context) (int, error) {
	p := &s.packs
	p.mu.RLock()
	sparse := make(map[uint32]bool)
	for id, pl := range p.live {
		if pl.bytes*2 < pl.size {
			sparse[id] = true
		}
	}
	var moves []resilmail.Digest
	if len(sparse) > 0 {
		for d, l := range p.locs {
			if sparse[l.pack] {
				moves = append(moves, d)
			}
		}
	}
	p.mu.RUnlock()
	if len(sparse) == 0 {
		return 0, nil
	}
	written := make(map[resilmail.Digest]struct{}, len(moves))
	for _, d := range moves {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("store: %w", err)
		}
		s.mu.Lock()
		if s.closed || !s.neededLocked(d) {
			s.mu.Unlock()
			continue
		}
		s.pinLocked(d) // a removal meanwhile waits for the release below
		s.mu.Unlock()
		err := s.unpackBody(d)
		if err == nil {
			written[d] = struct{}{}
		}
		s.release(d)
		if unpackHook != nil {
			unpackHook()
		}
		if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotFound) {
			return 0, err
		}
	}
	if err := s.syncBodies(written); err != nil {
		return 0, err
	}
	n := 0
	for d := range written {
		if l, ok := s.packedLoc(d); ok && sparse[l.pack] {
			s.dropPacked(d)
		}
	}
	p.mu.RLock()
	for id := range sparse {
		if p.live[id] == nil {
			n++
		}
	}
	p.mu.RUnlock()
	if n > 0 {
		s.log.Info("store: sparse packs rewritten as files of their own", "packs", n, "bodies", len(written))
	}
	return n, nil
}

// unpackBody writes packed body d, checked, into a file of its own
// (without fsync), unless it has one.
func (s *Store) unpackBody(d resilmail.Digest) error {
	path := s.bodyPath(d)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	b, err := s.readStored(d)
	if err == nil && resilmail.DigestOf(b) == d {
		return s.writeBodyFile(path, b)
	}
	if err == nil {
		err = errors.New("content does not match its digest")
	}
	_, err = s.markCorrupt(d, fmt.Sprintf("moving it out of its pack: %v", err))
	return err
}
