package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
	"github.com/resilmail/resilmail/internal/wal"
)

func (s *Store) bodyPath(d resilmail.Digest) string {
	h := d.String()
	return filepath.Join(s.dir, bodiesDir, h[:2], h)
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

// Read reads from r.r, failing once r.ctx is done.
func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// storeBody reads a body to EOF and hashes it; unless a good file of that
// digest is stored already, it appends the body to the journal (a 'D'
// record, durable with the next group commit, which is also the one that
// makes the change referencing it durable) and writes its file without
// fsync (see syncBodies). It returns the digest and size with a reservation
// that keeps the file from being removed until release. When want is set, a
// body with another digest is refused as corrupt and not stored.
func (s *Store) storeBody(ctx context.Context, r io.Reader, want *resilmail.Digest) (resilmail.Digest, int64, error) {
	var d resilmail.Digest
	rec, err := readBodyRecord(ctx, r, s.opts.MaxMessageSize)
	if err != nil {
		return d, 0, err
	}
	body := rec[bodyRecHeader:]
	n := int64(len(body))
	d = sha256.Sum256(body)
	if want != nil && d != *want {
		s.mu.Lock()
		s.c.corruptReceived++
		s.mu.Unlock()
		return d, 0, fmt.Errorf("%w: %w", ErrCorrupt, &resilmail.CorruptError{Want: *want, Got: d, Where: "received body"})
	}
	copy(rec[1:bodyRecHeader], d[:])

	s.mu.Lock()
	if err := s.usableLocked(); err != nil {
		s.mu.Unlock()
		return d, 0, err
	}
	if bw := s.inflight[d]; bw != nil {
		// Another writer is storing the same body: share its record and file.
		bw.n++
		s.mu.Unlock()
		select {
		case <-bw.ready:
		case <-ctx.Done():
			s.release(d)
			return d, 0, fmt.Errorf("store: %w", ctx.Err())
		}
		if bw.err != nil {
			s.release(d)
			return d, 0, bw.err
		}
		return d, n, nil
	}
	bw := &bodyWrite{n: 1, ready: make(chan struct{})}
	s.inflight[d] = bw
	_, wasCorrupt := s.corrupt[d]
	exists := s.refs[d] > 0 && !wasCorrupt
	s.mu.Unlock()

	path := s.bodyPath(d)
	if exists {
		// A referenced body is durable, in the journal or (once a
		// checkpoint caught up) as its fsynced file; check the file is
		// still there.
		if size, ok := s.storedSize(d); !ok || size != n {
			exists = false
		}
	}
	var werr error
	if !exists {
		werr = s.logBody(d, rec, path)
	}
	s.mu.Lock()
	if !exists {
		s.c.bodyWrites++
	} else {
		s.c.bodyShared++
	}
	bw.err = werr
	close(bw.ready)
	if werr == nil && wasCorrupt {
		s.clearCorruptLocked(d, "repaired by a good copy")
	}
	s.mu.Unlock()
	if werr != nil {
		s.release(d)
		return d, 0, werr
	}
	return d, n, nil
}

// readBodyRecord reads a body to EOF into a 'D' record whose digest is
// left to fill in.
func readBodyRecord(ctx context.Context, r io.Reader, maxSize int64) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(bodyRecHeader + 16<<10)
	buf.WriteByte(recBody)
	buf.Write(make([]byte, bodyRecHeader-1))
	n, err := buf.ReadFrom(io.LimitReader(ctxReader{ctx, r}, maxSize+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("store: %w", ctx.Err())
		}
		if errors.Is(err, ErrCorrupt) {
			return nil, err
		}
		return nil, fmt.Errorf("store: reading body: %w", err)
	}
	if n > maxSize || n > wal.MaxRecord-int64(bodyRecHeader) {
		return nil, fmt.Errorf("%w: over %d bytes", ErrTooLarge, min(maxSize, wal.MaxRecord-int64(bodyRecHeader)))
	}
	return buf.Bytes(), nil
}

// logBody appends the 'D' record rec of body d to the journal and writes
// the body's file at path, without fsync: the journal's next group commit
// makes the body durable, and syncBodies makes the file durable before a
// checkpoint removes the record. bodyMu keeps a checkpoint from choosing
// the segments to remove between the two.
func (s *Store) logBody(d resilmail.Digest, rec []byte, path string) error {
	s.bodyMu.RLock()
	defer s.bodyMu.RUnlock()
	if _, err := s.wal.Append(rec); err != nil {
		if errors.Is(err, wal.ErrClosed) {
			return ErrClosed
		}
		if errors.Is(err, wal.ErrTooLarge) {
			return fmt.Errorf("%w: %w", ErrTooLarge, err)
		}
		s.mu.Lock()
		s.failLocked(err)
		s.mu.Unlock()
		return storageErr(err)
	}
	if err := s.writeBodyFile(path, rec[bodyRecHeader:]); err != nil {
		return err
	}
	s.mu.Lock()
	s.unsynced[d] = struct{}{}
	s.journalSince += int64(len(rec))
	s.mu.Unlock()
	return nil
}

// writeBodyFile writes a body's file through a temporary file and a rename,
// so that the name never shows part of a body; it does not fsync.
func (s *Store) writeBodyFile(path string, body []byte) error {
	f, err := os.CreateTemp(filepath.Join(s.dir, tmpDir), "body-*")
	if err != nil {
		return storageErr(err)
	}
	tmp := f.Name()
	_, err = f.Write(body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return storageErr(err)
	}
	return nil
}

// syncBodies makes the body files written without fsync since the last
// call durable, with one fsync per file and one per folder, so that a
// checkpoint may then remove the journal segments that hold their bytes.
// Files removed meanwhile (no longer referenced) are skipped. On failure
// the digests stay to be synced by the next call.
func (s *Store) syncBodies(ds map[resilmail.Digest]struct{}) error {
	dirs := make(map[string]struct{})
	var n uint64
	fail := func(err error) error {
		s.mu.Lock()
		for d := range ds {
			s.unsynced[d] = struct{}{}
		}
		s.c.bodyFsyncs += n
		s.mu.Unlock()
		return storageErr(err)
	}
	for d := range ds {
		path := s.bodyPath(d)
		f, err := os.Open(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fail(err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fail(err)
		}
		n++
		dirs[filepath.Dir(path)] = struct{}{}
	}
	for dir := range dirs {
		if err := durable.SyncDir(dir); err != nil {
			return fail(err)
		}
		n++
	}
	s.mu.Lock()
	s.c.bodyFsyncs += n
	s.c.bodySyncs += uint64(len(ds))
	s.mu.Unlock()
	return nil
}

// pinLocked takes a reservation on a body that is stored and referenced,
// so that it stays while a change that references it is being applied.
func (s *Store) pinLocked(d resilmail.Digest) {
	bw := s.inflight[d]
	if bw == nil {
		bw = &bodyWrite{ready: make(chan struct{})}
		close(bw.ready)
		s.inflight[d] = bw
	}
	bw.n++
}

// release drops a reservation taken by storeBody or pinLocked; the file goes when
// nothing references it.
func (s *Store) release(d resilmail.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	bw := s.inflight[d]
	if bw == nil {
		return
	}
	bw.n--
	if bw.n > 0 {
		return
	}
	delete(s.inflight, d)
	if _, pending := s.pendingUnlink[d]; s.refs[d] == 0 && !pending && !s.retainedLocked(d) {
		s.removeBody(d)
	}
}

// Body returns the body named d, which a message of the store references,
// after checking that it hashes to d. It never returns bytes that do not:
// a body that is missing, unreadable or different is moved aside into the
// folder "corrupt", marked so that it is not served again until a good copy
// is stored (by Append or Apply of the same content), reported in the log
// and [Stats], and returned as an error wrapping both [ErrCorrupt] and a
// *resilmail.CorruptError. A digest no message references gives
// [ErrNotFound].
func (s *Store) Body(ctx context.Context, d resilmail.Digest) ([]byte, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.ops.Done()
	if err := s.checkServable(d); err != nil {
		return nil, err
	}
	b, err := s.readStored(d)
	if err == nil {
		if got := resilmail.DigestOf(b); got == d {
			s.mu.Lock()
			s.c.bodyReads++
			s.mu.Unlock()
			return b, nil
		}
	}
	return s.markCorrupt(d, fmt.Sprintf("read: %v", err))
}

// checkServable refuses a digest that is not referenced or is marked
// corrupt.
func (s *Store) checkServable(d resilmail.Digest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.refs[d] == 0 && !s.retainedLocked(d) {
		return fmt.Errorf("%w: body %s", ErrNotFound, d)
	}
	if _, bad := s.corrupt[d]; bad {
		return corruptErr(d, resilmail.Digest{}, "body "+d.String()+" is marked corrupt")
	}
	return nil
}

func corruptErr(want, got resilmail.Digest, where string) error {
	return fmt.Errorf("%w: %w", ErrCorrupt, &resilmail.CorruptError{Want: want, Got: got, Where: where})
}

// markCorrupt handles a body that failed its check: under the lock it reads
// the file again (a good copy may have replaced it meanwhile, and then
// those bytes are returned), and otherwise moves it aside and marks the
// digest corrupt.
func (s *Store) markCorrupt(d resilmail.Digest, why string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refs[d] == 0 {
		return nil, fmt.Errorf("%w: body %s", ErrNotFound, d) // expunged meanwhile
	}
	if _, bad := s.corrupt[d]; bad {
		return nil, corruptErr(d, resilmail.Digest{}, "body "+d.String()+" is marked corrupt")
	}
	path := s.bodyPath(d)
	if s.inflight[d] != nil {
		// A good copy is being stored right now: refuse this read, but
		// leave the file to the writer.
		return nil, corruptErr(d, resilmail.Digest{}, path+": "+why)
	}
	var got resilmail.Digest
	b, err := s.readStored(d)
	if err == nil {
		if got = resilmail.DigestOf(b); got == d {
			return b, nil
		}
		why = "content does not match its digest"
	}
	aside := filepath.Join(s.dir, corruptDir, fmt.Sprintf("body-%s-%d", d, time.Now().UnixNano()))
	var merr error
	if _, statErr := os.Lstat(path); errors.Is(statErr, os.ErrNotExist) {
		aside = ""
		if l, ok := s.packedLoc(d); ok {
			// A packed body: its bytes stay in the pack, which is no
			// longer read for it (a good copy stored again is written as
			// its own file).
			s.dropPacked(d)
			path = fmt.Sprintf("%s (%d bytes at %d)", s.packPath(l.pack, packSuffix), l.size, l.off)
		}
	} else if merr = os.MkdirAll(filepath.Dir(aside), 0o750); merr == nil {
		if merr = os.Rename(path, aside); merr == nil {
			merr = durable.SyncDir(filepath.Dir(path))
		} else if errors.Is(merr, os.ErrNotExist) {
			merr, aside = nil, ""
		}
	}
	s.corrupt[d] = struct{}{}
	s.c.corruptFound++
	if _, err := s.wal.Append(encodeCorrupt(d, true)); err != nil {
		s.log.Error("store: recording a corrupt body", "digest", d.String(), "err", err)
	}
	s.log.Error("store: body is corrupt; it will not be served or shipped until a good copy is stored",
		"digest", d.String(), "got", got.String(), "why", why, "moved_to", aside, "move_err", merr)
	return nil, corruptErr(d, got, path+": "+why)
}

// clearCorruptLocked forgets that d was corrupt, once a good copy is in
// place.
func (s *Store) clearCorruptLocked(d resilmail.Digest, why string) {
	if _, bad := s.corrupt[d]; !bad {
		return
	}
	delete(s.corrupt, d)
	s.c.repaired++
	if _, err := s.wal.Append(encodeCorrupt(d, false)); err != nil {
		s.log.Error("store: recording a repaired body", "digest", d.String(), "err", err)
	}
	s.log.Info("store: corrupt body repaired", "digest", d.String(), "why", why)
}

// RestoreBody stores again, from a good copy (a replica's), a body that
// messages of the store reference and that the store holds damaged or not
// at all: body must hash to d, or nothing is stored and the error wraps
// ErrCorrupt. It returns once the copy is durable; from then on the body
// is served and shipped again. A body the store holds intact is left as it
// is (its file is read and checked first), and a digest no message
// references is ErrNotFound.
func (s *Store) RestoreBody(ctx context.Context, d resilmail.Digest, body io.Reader) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	s.mu.Lock()
	refs := s.refs[d]
	_, bad := s.corrupt[d]
	s.mu.Unlock()
	if refs == 0 {
		return fmt.Errorf("%w: body %s", ErrNotFound, d)
	}
	if !bad {
		b, err := s.readStored(d)
		if err == nil && resilmail.DigestOf(b) == d {
			return nil
		}
		if _, err := s.markCorrupt(d, fmt.Sprintf("checked before a restore: %v", err)); err == nil || errors.Is(err, ErrNotFound) {
			return err // good after all, or expunged meanwhile
		}
	}
	got, _, err := s.storeBody(ctx, body, &d)
	if err != nil {
		return err
	}
	defer s.release(got)
	if err := s.wal.Sync(); err != nil {
		if errors.Is(err, wal.ErrClosed) {
			return ErrClosed
		}
		s.mu.Lock()
		s.failLocked(err)
		s.mu.Unlock()
		return storageErr(err)
	}
	s.log.Warn("store: body restored from a good copy", "digest", d.String())
	return nil
}

// Header returns the start of the body named d up to and including the
// blank line that ends the header section, reading at most max bytes (zero
// means 64 KiB). It is a partial read for IMAP and does not verify the
// digest (the background [Store.Scrub] covers partial reads); a body marked
// corrupt is refused with [ErrCorrupt].
func (s *Store) Header(ctx context.Context, d resilmail.Digest, max int) ([]byte, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.ops.Done()
	if max <= 0 {
		max = 64 << 10
	}
	if err := s.checkServable(d); err != nil {
		return nil, err
	}
	f, off, size, err := s.openStored(d)
	if err != nil {
		_, err = s.markCorrupt(d, fmt.Sprintf("open: %v", err))
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, max)
	n, err := io.ReadFull(io.NewSectionReader(f, off, size), buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("store: reading header: %w", err)
	}
	buf = buf[:n]
	if i := bytes.Index(buf, []byte("\r\n\r\n")); i >= 0 {
		return buf[:i+4], nil
	}
	if i := bytes.Index(buf, []byte("\n\n")); i >= 0 {
		return buf[:i+2], nil
	}
	return buf, nil
}

// A ScrubReport says what one [Store.Scrub] found.
type ScrubReport struct {
	Checked int                // bodies re-hashed
	Bytes   int64              // bytes read
	Corrupt []resilmail.Digest // bodies found missing or different (now marked)
	Healed  int                // bodies marked corrupt that are good again
	Orphans int                // unreferenced body files (and packs) removed
	// PacksRewritten counts the packs that held their needed bodies in
	// less than half their size: those bodies now have files of their
	// own, and the packs are gone.
	PacksRewritten int
}

// Scrub re-hashes every stored body, as partial reads (Header) do not, and
// reports and marks the ones that are missing or do not match their
// digest: they are never served or shipped afterwards. It also removes body
// files and packs that no message references (left by a crash or a failed
// load), and moves the bodies of a pack that holds them in less than half
// its size into files of their own, removing the pack. It returns early,
// with what it found so far, when ctx is done.
func (s *Store) Scrub(ctx context.Context) (ScrubReport, error) {
	var rep ScrubReport
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return rep, ErrClosed
	}
	digests := make([]resilmail.Digest, 0, len(s.refs))
	for d := range s.refs {
		digests = append(digests, d)
	}
	s.mu.Unlock()
	slices.SortFunc(digests, func(a, b resilmail.Digest) int { return bytes.Compare(a[:], b[:]) })
	for _, d := range digests {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("store: %w", err)
		}
		s.mu.Lock()
		_, marked := s.corrupt[d]
		referenced := s.refs[d] > 0
		s.mu.Unlock()
		if !referenced {
			continue
		}
		rep.Checked++
		b, err := s.readStored(d)
		rep.Bytes += int64(len(b))
		if err == nil && resilmail.DigestOf(b) == d {
			if marked {
				s.mu.Lock()
				s.clearCorruptLocked(d, "scrub found a good copy")
				s.mu.Unlock()
				rep.Healed++
			}
			continue
		}
		if marked {
			rep.Corrupt = append(rep.Corrupt, d)
			continue
		}
		if _, err := s.markCorrupt(d, fmt.Sprintf("scrub: %v", err)); err != nil && errors.Is(err, ErrCorrupt) {
			rep.Corrupt = append(rep.Corrupt, d)
		}
	}
	orphans, err := s.removeOrphans(ctx)
	if err == nil {
		var packs int
		packs, err = s.removeOrphanPacks()
		orphans += packs
	}
	if err == nil {
		rep.PacksRewritten, err = s.rewriteSparsePacks(ctx)
	}
	rep.Orphans = orphans
	s.mu.Lock()
	s.c.scrubs++
	s.c.scrubbed += uint64(rep.Checked)
	s.c.lastScrub = time.Now()
	s.mu.Unlock()
	s.log.Info("store: scrub done", "checked", rep.Checked, "bytes", rep.Bytes, "corrupt", len(rep.Corrupt), "healed", rep.Healed, "orphans", rep.Orphans, "packs_rewritten", rep.PacksRewritten)
	return rep, err
}

// removeOrphans removes body files that nothing references, is storing, or
// may still need (a removal not yet durable).
func (s *Store) removeOrphans(ctx context.Context) (int, error) {
	n := 0
	for i := 0; i < 256; i++ {
		if err := ctx.Err(); err != nil {
			return n, fmt.Errorf("store: %w", err)
		}
		dir := filepath.Join(s.dir, bodiesDir, fmt.Sprintf("%02x", i))
		entries, err := os.ReadDir(dir)
		if err != nil {
			return n, storageErr(err)
		}
		for _, e := range entries {
			d, err := resilmail.ParseDigest(e.Name())
			if err != nil {
				continue
			}
			s.mu.Lock()
			_, pending := s.pendingUnlink[d]
			if s.refs[d] == 0 && s.inflight[d] == nil && !pending && !s.retainedLocked(d) && !s.closed {
				if os.Remove(filepath.Join(dir, e.Name())) == nil {
					n++
					s.c.bodiesRemoved++
				}
			}
			s.mu.Unlock()
		}
	}
	return n, nil
}
