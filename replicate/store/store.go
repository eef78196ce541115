package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
	"github.com/resilmail/resilmail/internal/wal"
	"github.com/resilmail/resilmail/replicate"
)

// formatVersion is the store's on-disk format version: the VERSION file,
// the journal's records and the checkpoint. Version 2 writes bodies into
// the journal ('D' records); version 1 (bodies fsynced on their own) is
// refused.
const formatVersion = 2

const (
	versionFile = "VERSION"
	versionText = "resilmail-store 2\n"
	journalDir  = "journal"
	bodiesDir   = "bodies"
	tmpDir      = "tmp"
	corruptDir  = "corrupt"
	walKind     = "rstore"
)

// Store is a durable mailbox store. Create it with [Open]; all methods are
// safe for concurrent use.
type Store struct {
	dir    string
	opts   Options
	log    *slog.Logger
	wal    *wal.Log
	unlock func() error

	// compactMu keeps journal segments from being removed while Changes
	// reads them: readers hold it shared, compaction exclusively.
	compactMu sync.RWMutex
	// ckptMu serialises checkpoints.
	ckptMu sync.Mutex
	// bodyMu keeps a checkpoint from choosing the journal segments to
	// remove while a body is between its journal record and its file
	// (and the unsynced set): writers of bodies hold it shared.
	bodyMu sync.RWMutex
	// ops counts calls in progress, for Close to wait for.
	ops sync.WaitGroup
	// metaMu serialises writes of HISTORY.
	metaMu sync.Mutex
	// loadMu serialises loads (load.go).
	loadMu sync.Mutex
	// packs are the bodies a load wrote into packs (packs.go); their own
	// lock.
	packs packsState

	mu              sync.Mutex
	closed          bool
	failed          error
	meta            historyMeta // what HISTORY holds (history.go)
	metaDirty       bool        // meta changed since HISTORY was written
	users           map[string]*user
	byID            map[resilmail.MailboxID]*mailbox
	refs            map[resilmail.Digest]int32      // messages per body
	inflight        map[resilmail.Digest]*bodyWrite // bodies being stored
	corrupt         map[resilmail.Digest]struct{}
	pendingUnlink   map[resilmail.Digest]uint64   // unreferenced since change seq
	unsynced        map[resilmail.Digest]struct{} // body files not fsynced yet (their bytes are in the journal)
	journalSince    int64                         // journal bytes written since the last checkpoint
	walBodies       map[resilmail.Digest]wal.Pos  // at Open: the last 'D' record of each body written after the checkpoint
	replayBodies    []resilmail.Digest            // at Open: the 'D' records since the last batch record
	upstream        map[string]uint64             // primary's position applied, per user
	epoch           resilmail.Epoch
	lastUIDValidity uint32
	applied         uint64 // last change in the journal and in memory
	durable         uint64 // last change known to be on stable storage
	ckptSeq         uint64 // last change in the checkpoint
	recs            []recRef
	durableCh       chan struct{} // closed when durable advances
	messages        int
	bodyBytes       int64
	replayErr       error
	ret             retention    // retention holds and tombstones (retention.go)
	watch           watchState   // per-mailbox notifications and expunged UIDs (watch.go)
	derived         derivedCache // values derived from bodies (bodyread.go); its own lock
	c               counters
}

// recRef locates a batch record of the journal.
type recRef struct {
	first, last uint64 // seqs of its first and last change
	pos         wal.Pos
}

// bodyWrite is a body being stored, shared by concurrent writers of the
// same content: ready is closed once the file is durable (err nil) or
// failed.
type bodyWrite struct {
	n     int // reservations
	ready chan struct{}
	err   error
}

// Open opens the store in dir, creating it if needed, and recovers its
// state: it loads the checkpoint, replays the journal after it (truncating
// a torn tail), and makes what it replayed durable. Open refuses data of an
// unknown format version ([ErrFormat]) and a journal with changes missing in
// the middle ([ErrCorrupt]) unless Options.Salvage is set. It takes an
// exclusive lock on dir until Close. Open starts no goroutine.
func Open(dir string, opts *Options) (*Store, error) {
	o := opts.withDefaults()
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		if err := durable.SyncDir(filepath.Dir(filepath.Clean(dir))); err != nil {
			return nil, storageErr(err)
		}
	}
	unlock, err := durable.Lock(dir)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	s := &Store{
		dir: dir, opts: o, log: o.Logger, unlock: unlock,
		users:         make(map[string]*user),
		byID:          make(map[resilmail.MailboxID]*mailbox),
		refs:          make(map[resilmail.Digest]int32),
		inflight:      make(map[resilmail.Digest]*bodyWrite),
		corrupt:       make(map[resilmail.Digest]struct{}),
		pendingUnlink: make(map[resilmail.Digest]uint64),
		unsynced:      make(map[resilmail.Digest]struct{}),
		walBodies:     make(map[resilmail.Digest]wal.Pos),
		upstream:      make(map[string]uint64),
		durableCh:     make(chan struct{}),
	}
	start := time.Now()
	if err := s.open(); err != nil {
		if s.wal != nil {
			s.wal.Close()
		}
		unlock()
		return nil, err
	}
	st := s.wal.Stats()
	s.log.Info("store opened", "dir", dir, "users", len(s.users), "mailboxes", len(s.byID), "messages", s.messages,
		"seq", s.applied, "checkpoint_seq", s.ckptSeq, "epoch", uint64(s.epoch), "segments", st.Segments,
		"torn_bytes", st.TornBytes, "corrupt_regions", st.CorruptRegions, "took", time.Since(start))
	return s, nil
}

func (s *Store) open() error {
	if err := s.checkVersion(); err != nil {
		return err
	}
	if err := s.makeDirs(); err != nil {
		return err
	}
	if err := s.loadHistory(); err != nil {
		return err
	}
	if err := s.loadCheckpoint(); err != nil {
		return err
	}
	if err := s.loadRetention(); err != nil {
		return err
	}
	if s.ckptSeq <= s.meta.Upstream.ResetSeq && s.meta.Upstream.ResetSeq > 0 {
		clear(s.upstream) // positions of the history followed before the reset
	}
	s.applied = s.ckptSeq
	l, err := wal.Open(filepath.Join(s.dir, journalDir), wal.Options{
		Kind: walKind, Version: formatVersion, SegmentSize: s.opts.SegmentSize, Logger: s.log,
		Damaged: s.damaged,
	}, s.replay)
	if err != nil {
		if errors.Is(err, wal.ErrFormat) {
			return fmt.Errorf("%w: %w", ErrFormat, err)
		}
		if s.replayErr != nil {
			return s.replayErr
		}
		return fmt.Errorf("store: open journal: %w", err)
	}
	s.wal = l
	if err := durableSyncDir(s.dir); err != nil { // a new journal folder
		return err
	}
	// What was replayed may sit in the page cache only (a kill -9 between
	// a write and its fsync): make it durable before anyone sees it.
	var e encoder
	e.raw([]byte{recOpen})
	e.varint(s.opts.Now().UnixNano())
	if _, err := l.AppendSync(e.b); err != nil {
		return storageErr(err)
	}
	s.mu.Lock()
	s.advanceLocked(s.applied)
	s.mu.Unlock()
	if err := s.saveHistory(); err != nil {
		return err
	}
	if err := s.loadPacks(); err != nil {
		return err
	}
	return s.restoreBodies()
}

// restoreBodies checks the file of every referenced body that the journal
// holds after the checkpoint (a crash may have come after the journal's
// commit and before the file reached the disk; the files of earlier bodies
// were made durable before the checkpoint was written) and rewrites it from the journal when it is
// missing or does not hash to its digest; a damaged file is moved aside
// first. A body marked corrupt stays marked (a good copy stored by Append
// or Apply, or a scrub that finds the file good, clears the mark). The
// files are left to the next checkpoint to fsync, as on the hot path.
func (s *Store) restoreBodies() error {
	bodies := s.walBodies
	s.walBodies, s.replayBodies = nil, nil
	for d, pos := range bodies {
		_, bad := s.corrupt[d]
		if s.refs[d] == 0 && !s.retainedLocked(d) || bad {
			continue
		}
		path := s.bodyPath(d)
		s.unsynced[d] = struct{}{}
		b, err := s.readStored(d)
		if err == nil && resilmail.DigestOf(b) == d {
			continue
		}
		why := "content does not match its digest"
		if err != nil {
			why = err.Error()
		}
		rec, rerr := s.wal.ReadAt(pos)
		var body []byte
		var got resilmail.Digest
		if rerr == nil {
			got, body, rerr = decodeBody(rec)
		}
		if rerr == nil && (got != d || resilmail.DigestOf(body) != d) {
			rerr = fmt.Errorf("%w: body record at %s does not hash to %s", errBadRecord, pos, d)
		}
		if rerr != nil {
			s.log.Error("store: body file damaged and its journal record unreadable", "digest", d.String(), "why", why, "err", rerr)
			continue
		}
		if err == nil {
			aside := filepath.Join(s.dir, corruptDir, fmt.Sprintf("body-%s-%d", d, time.Now().UnixNano()))
			if merr := os.MkdirAll(filepath.Dir(aside), 0o750); merr == nil {
				os.Rename(path, aside)
			}
		}
		if err := s.writeBodyFile(path, body); err != nil {
			return err
		}
		s.c.bodiesRestored++
		s.log.Warn("store: body file rewritten from the journal", "digest", d.String(), "why", why)
	}
	return nil
}

// checkVersion reads the VERSION file, writing it in a new store.
func (s *Store) checkVersion() error {
	path := filepath.Join(s.dir, versionFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		for _, old := range []string{journalDir, checkpointFile} {
			if _, err := os.Stat(filepath.Join(s.dir, old)); err == nil {
				return fmt.Errorf("%w: %s has store data but no %s file", ErrFormat, s.dir, versionFile)
			}
		}
		if err := durable.WriteFile(durable.OS, path, []byte(versionText), 0o640); err != nil {
			return storageErr(err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if string(b) == "resilmail-store 1\n" {
		return fmt.Errorf("%w: %s is format version 1 (bodies outside the journal); this build reads only version 2 and does not convert: recreate the store (for example from a replica)", ErrFormat, s.dir)
	}
	if string(b) != versionText && string(b) != packedVersion {
		return fmt.Errorf("%w: %s says %q; this build reads %q and %q", ErrFormat, path, b, versionText, packedVersion)
	}
	return nil
}

// makeDirs creates the body folders (256 fan-out folders by the first byte
// of the digest) and empties the folder of temporary files.
func (s *Store) makeDirs() error {
	bodies := filepath.Join(s.dir, bodiesDir)
	created := false
	for i := 0; i < 256; i++ {
		p := filepath.Join(bodies, fmt.Sprintf("%02x", i))
		if _, err := os.Stat(p); err == nil {
			continue
		}
		if err := os.MkdirAll(p, 0o750); err != nil {
			return storageErr(err)
		}
		created = true
	}
	tmp := filepath.Join(s.dir, tmpDir)
	if err := os.RemoveAll(tmp); err != nil {
		return storageErr(err)
	}
	if err := os.MkdirAll(tmp, 0o750); err != nil {
		return storageErr(err)
	}
	if created {
		if err := durable.SyncDir(bodies); err != nil {
			return storageErr(err)
		}
	}
	return durableSyncDir(s.dir)
}

func durableSyncDir(dir string) error {
	if err := durable.SyncDir(dir); err != nil {
		return storageErr(err)
	}
	return nil
}

// damaged moves a journal region that the log skipped at Open into the
// folder "corrupt", so that nothing is deleted.
func (s *Store) damaged(pos wal.Pos, data []byte, torn bool) {
	kind := "damaged"
	if torn {
		kind = "torn"
	}
	dir := filepath.Join(s.dir, corruptDir)
	name := filepath.Join(dir, fmt.Sprintf("journal-%016x-%d.%s", pos.Seg, pos.Off, kind))
	err := os.MkdirAll(dir, 0o750)
	if err == nil {
		err = durable.WriteFile(durable.OS, name, data, 0o640)
	}
	s.log.Warn("store: journal region skipped at open and moved aside", "pos", pos.String(), "bytes", len(data), "torn", torn, "copy", name, "err", err)
}

// replay applies one journal record at Open.
func (s *Store) replay(pos wal.Pos, rec []byte) error {
	bad := func(err error) error {
		err = fmt.Errorf("%w: journal record at %s: %w", ErrCorrupt, pos, err)
		if !s.opts.Salvage {
			s.replayErr = err
			return err
		}
		s.c.badRecords++
		s.log.Error("store: skipping unreadable journal record", "pos", pos.String(), "err", err)
		return nil
	}
	if len(rec) == 0 {
		return bad(errBadRecord)
	}
	switch rec[0] {
	case recBatch:
		changes, upstream, err := decodeBatch(rec)
		if err != nil {
			return bad(err)
		}
		first, last := changes[0].Seq, changes[len(changes)-1].Seq
		if last <= s.ckptSeq {
			// The checkpoint holds this batch, and Compact made the files
			// of its bodies durable before writing it.
			for _, d := range s.replayBodies {
				delete(s.walBodies, d)
			}
		}
		s.replayBodies = s.replayBodies[:0]
		if n := len(s.recs); n > 0 && first != s.recs[n-1].last+1 {
			s.recs = s.recs[:0] // readers cannot resume across a hole
		}
		if first > s.applied+1 {
			gap := fmt.Errorf("%w: journal damaged: changes %d to %d are missing (record at %s)", ErrCorrupt, s.applied+1, first-1, pos)
			if !s.opts.Salvage {
				s.replayErr = gap
				return gap
			}
			s.log.Error("store: salvaging past missing changes; compare with a replica", "err", gap)
			s.c.missingChanges += first - s.applied - 1
			s.recs = s.recs[:0]
		}
		s.recs = append(s.recs, recRef{first: first, last: last, pos: pos})
		for i := range changes {
			if changes[i].Seq <= s.applied {
				continue // in the checkpoint
			}
			s.applyLocked(&changes[i], upstream[i])
		}
	case recBody:
		d, _, err := decodeBody(rec)
		if err != nil {
			return bad(err)
		}
		s.walBodies[d] = pos
		s.replayBodies = append(s.replayBodies, d)
		s.journalSince += int64(len(rec))
	case recCorrupt:
		if len(rec) != 2+len(resilmail.Digest{}) {
			return bad(errBadRecord)
		}
		d := resilmail.Digest(rec[2:])
		if rec[1] == 1 {
			s.corrupt[d] = struct{}{}
		} else {
			delete(s.corrupt, d)
		}
	case recOpen:
	default:
		return bad(fmt.Errorf("%w: unknown record type %q", errBadRecord, rec[0]))
	}
	return nil
}

// Close refuses new calls with [ErrClosed] (and wakes [Store.Wait]), waits
// for the calls in progress to return, syncs and closes the journal and
// releases the folder lock. It is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.wakeAllLocked()
	close(s.durableCh)
	s.durableCh = make(chan struct{})
	s.mu.Unlock()
	s.ops.Wait()
	s.compactMu.Lock()
	err := s.wal.Close()
	s.compactMu.Unlock()
	if uerr := s.unlock(); err == nil {
		err = uerr
	}
	return err
}

// usableLocked reports whether the store can take a write.
func (s *Store) usableLocked() error {
	if s.closed {
		return ErrClosed
	}
	if s.failed != nil {
		return storageErr(s.failed)
	}
	return nil
}

// localWritableLocked reports whether the store can take a local write.
func (s *Store) localWritableLocked() error {
	if err := s.usableLocked(); err != nil {
		return err
	}
	if s.meta.Role != RolePrimary {
		return fmt.Errorf("%w: the store is %s", ErrReadOnly, s.meta.Role)
	}
	return nil
}

// lockLocal takes s.mu for a local write; it returns with s.mu held only
// when the store takes local writes.
func (s *Store) lockLocal() error {
	s.mu.Lock()
	if err := s.localWritableLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	return nil
}

// lockLocalMailbox is lockLocal and the mailbox it writes to; it returns
// with s.mu held only when both are there.
func (s *Store) lockLocalMailbox(userName, name string) (*mailbox, error) {
	if err := s.lockLocal(); err != nil {
		return nil, err
	}
	mb, err := s.mailboxLocked(userName, name)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	return mb, nil
}

func (s *Store) failLocked(err error) {
	if s.failed == nil {
		s.failed = err
		s.log.Error("store: storage failed; writes refused until reopened", "dir", s.dir, "err", err)
	}
}

// change returns a local change of kind for user, stamped with the store's
// epoch and clock.
func (s *Store) changeLocked(kind resilmail.ChangeKind, user string) resilmail.Change {
	return resilmail.Change{Epoch: s.epoch, Kind: kind, Time: s.opts.Now().UTC().Round(0), User: user}
}

// commitLocked numbers changes, appends them to the journal as one record
// and applies them in memory. They are durable once waitDurable(last)
// returns nil. upstream, if not nil, holds the primary's position of each.
func (s *Store) commitLocked(changes []resilmail.Change, upstream []uint64) (last uint64, err error) {
	if err := s.usableLocked(); err != nil {
		return 0, err
	}
	for i := range changes {
		changes[i].Seq = s.applied + 1 + uint64(i)
	}
	rec, err := encodeBatch(changes, upstream)
	if err != nil {
		return 0, fmt.Errorf("store: encoding change: %w", err)
	}
	s.journalSince += int64(len(rec))
	pos, err := s.wal.Append(rec)
	if err != nil {
		if errors.Is(err, wal.ErrClosed) {
			return 0, ErrClosed
		}
		s.failLocked(err)
		return 0, storageErr(err)
	}
	s.recs = append(s.recs, recRef{first: changes[0].Seq, last: changes[len(changes)-1].Seq, pos: pos})
	for i := range changes {
		var up uint64
		if upstream != nil {
			up = upstream[i]
		}
		s.applyLocked(&changes[i], up)
	}
	s.c.changes += uint64(len(changes))
	return s.applied, nil
}

// waitDurable returns once every change up to seq is on stable storage.
// Concurrent callers share fsyncs.
func (s *Store) waitDurable(seq uint64) error {
	s.mu.Lock()
	done := s.durable >= seq
	s.mu.Unlock()
	if done {
		return nil
	}
	if err := s.wal.Sync(); err != nil {
		if errors.Is(err, wal.ErrClosed) {
			return ErrClosed
		}
		s.mu.Lock()
		s.failLocked(err)
		s.mu.Unlock()
		return storageErr(err)
	}
	s.mu.Lock()
	s.advanceLocked(seq)
	s.mu.Unlock()
	return nil
}

// commit is commitLocked then waitDurable; it unlocks s.mu.
func (s *Store) commitAndUnlock(changes []resilmail.Change, upstream []uint64) error {
	last, err := s.commitLocked(changes, upstream)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.waitDurable(last)
}

func (s *Store) advanceLocked(seq uint64) {
	if seq <= s.durable {
		return
	}
	s.durable = seq
	close(s.durableCh)
	s.durableCh = make(chan struct{})
	if len(s.pendingUnlink) > 0 {
		s.unlinkLocked()
	}
	s.notifyLocked()
}

// unlinkLocked removes the files of bodies that the last durable changes
// left unreferenced. A crash before it leaves an orphan file that the next
// Open (if the change is replayed) or Scrub removes.
func (s *Store) unlinkLocked() {
	for d, seq := range s.pendingUnlink {
		if seq > s.durable {
			continue
		}
		delete(s.pendingUnlink, d)
		if s.refs[d] > 0 || s.inflight[d] != nil || s.retainedLocked(d) {
			continue // still used, or kept for a retention hold
		}
		delete(s.corrupt, d)
		if err := s.removeBody(d); err != nil {
			s.log.Warn("store: removing unreferenced body", "digest", d.String(), "err", err)
			continue
		}
		s.c.bodiesRemoved++
	}
}

// readBarrier returns once everything a reader may have seen (up to the
// last applied change) is durable: no reader ever sees a change that a
// crash could undo.
func (s *Store) readBarrierUnlock() error {
	seq := s.applied
	s.mu.Unlock()
	return s.waitDurable(seq)
}

func newMailboxID() resilmail.MailboxID {
	var id resilmail.MailboxID
	rand.Read(id[:])
	return id
}

// nextUIDValidityLocked returns a UIDVALIDITY larger than any this store
// has given: the current Unix time, or the last one plus one.
func (s *Store) nextUIDValidityLocked() uint32 {
	v := uint32(min(max(s.opts.Now().Unix(), 1), math.MaxUint32-1))
	if v <= s.lastUIDValidity {
		v = s.lastUIDValidity + 1
	}
	return v
}

// applyLocked applies a change to the in-memory index. The live path,
// replay at Open and Apply share it, so that memory after a restart equals
// memory before. It trusts that the change was checked against the state
// when it was made, and skips what no longer applies.
func (s *Store) applyLocked(c *resilmail.Change, upstream uint64) {
	s.ret.cur = c
	s.touchLocked(c)
	if c.Seq > s.applied {
		s.applied = c.Seq
	}
	if c.Epoch > s.epoch {
		s.noteEpochLocked(c.Epoch, c.Seq)
		s.epoch = c.Epoch
	}
	if upstream > s.upstream[c.User] && c.Seq > s.meta.Upstream.ResetSeq {
		s.upstream[c.User] = upstream
	}
	switch c.Kind {
	case resilmail.ChangeUserCreate:
		s.userLocked(c.User)
	case resilmail.ChangeUserDelete:
		if u := s.users[c.User]; u != nil {
			for _, mb := range u.mailboxes {
				s.dropMailboxLocked(mb, c.Seq)
			}
			delete(s.users, c.User)
		}
	case resilmail.ChangeMailboxCreate:
		if s.byID[c.MailboxID] != nil {
			return
		}
		u := s.userLocked(c.User)
		if old := u.mailboxes[c.Mailbox]; old != nil {
			s.dropMailboxLocked(old, c.Seq)
		}
		mb := &mailbox{id: c.MailboxID, user: u, name: c.Mailbox, uidValidity: c.UIDValidity, uidNext: 1, highest: c.ModSeq}
		u.mailboxes[c.Mailbox] = mb
		s.byID[c.MailboxID] = mb
		s.lastUIDValidity = max(s.lastUIDValidity, c.UIDValidity)
	case resilmail.ChangeMailboxRename:
		mb := s.byID[c.MailboxID]
		if mb == nil || mb.user.name != c.User {
			return
		}
		if other := mb.user.mailboxes[c.NewName]; other != nil && other != mb {
			s.dropMailboxLocked(other, c.Seq)
		}
		delete(mb.user.mailboxes, mb.name)
		mb.name = c.NewName
		mb.user.mailboxes[mb.name] = mb
	case resilmail.ChangeMailboxDelete:
		if mb := s.byID[c.MailboxID]; mb != nil && mb.user.name == c.User {
			s.dropMailboxLocked(mb, c.Seq)
		}
	case resilmail.ChangeSubscribe:
		s.userLocked(c.User).subs[c.Mailbox] = struct{}{}
	case resilmail.ChangeUnsubscribe:
		if u := s.users[c.User]; u != nil {
			delete(u.subs, c.Mailbox)
		}
	case resilmail.ChangeAppend, resilmail.ChangeRestore:
		mb := s.mailboxForLocked(c)
		if mb == nil || c.UID == math.MaxUint32 || (c.UID < mb.uidNext && c.Kind == resilmail.ChangeAppend) {
			return
		}
		flags, _ := parseFlags(c.Flags)
		m := message{uid: c.UID, modseq: c.ModSeq, size: c.Size, digest: c.Digest, flags: flags}
		if !c.InternalDate.IsZero() {
			m.dateSec, m.dateNsec = c.InternalDate.Unix(), uint32(c.InternalDate.Nanosecond())
		}
		m.hash = m.computeHash()
		if c.UID < mb.uidNext {
			// A restore: the message goes back in its place.
			i := mb.find(c.UID)
			if i < len(mb.msgs) && mb.msgs[i].uid == c.UID {
				return
			}
			mb.msgs = slices.Insert(mb.msgs, i, m)
		} else {
			mb.msgs = append(mb.msgs, m)
			mb.uidNext = c.UID + 1
		}
		mb.highest = max(mb.highest, c.ModSeq)
		mb.sum.xor(m.hash)
		mb.size += m.size
		if !m.seen() {
			mb.unseen++
		}
		s.messages++
		s.refLocked(m.digest, m.size)
	case resilmail.ChangeExpunge:
		mb := s.mailboxForLocked(c)
		if mb == nil {
			return
		}
		keep := mb.msgs[:0]
		for i := range mb.msgs {
			m := &mb.msgs[i]
			if !c.UIDs.Contains(m.uid) {
				keep = append(keep, *m)
				continue
			}
			mb.sum.xor(m.hash)
			mb.size -= m.size
			if !m.seen() {
				mb.unseen--
			}
			s.messages--
			s.tombLocked(mb, m, c.Seq)
			s.unrefLocked(m.digest, m.size, c.Seq)
		}
		clear(mb.msgs[len(keep):])
		mb.msgs = keep
		mb.highest = max(mb.highest, c.ModSeq)
	case resilmail.ChangeFlags:
		mb := s.mailboxForLocked(c)
		if mb == nil {
			return
		}
		g, _ := parseFlags(c.Flags)
		mb.each(c.UIDs, func(m *message) {
			if m.modseq >= c.ModSeq {
				return // a newer change already set this message
			}
			nf, _ := m.flags.apply(c.FlagOp, g)
			mb.sum.xor(m.hash)
			if !m.seen() {
				mb.unseen--
			}
			m.flags, m.modseq = nf, c.ModSeq
			m.hash = m.computeHash()
			mb.sum.xor(m.hash)
			if !m.seen() {
				mb.unseen++
			}
		})
		mb.highest = max(mb.highest, c.ModSeq)
	case resilmail.ChangeReserve:
		if mb := s.mailboxForLocked(c); mb != nil && c.UID < math.MaxUint32 {
			mb.uidNext = max(mb.uidNext, c.UID+1)
			mb.highest = max(mb.highest, c.ModSeq)
		}
	case resilmail.ChangeEpoch:
	}
}

// mailboxForLocked returns the mailbox a message change applies to, or nil
// when it is gone or is another incarnation.
func (s *Store) mailboxForLocked(c *resilmail.Change) *mailbox {
	mb := s.byID[c.MailboxID]
	if mb == nil || mb.uidValidity != c.UIDValidity || mb.user.name != c.User {
		return nil
	}
	return mb
}

func (s *Store) userLocked(name string) *user {
	u := s.users[name]
	if u == nil {
		u = newUser(name)
		s.users[name] = u
	}
	return u
}

func (s *Store) dropMailboxLocked(mb *mailbox, seq uint64) {
	for i := range mb.msgs {
		s.tombLocked(mb, &mb.msgs[i], seq)
		s.unrefLocked(mb.msgs[i].digest, mb.msgs[i].size, seq)
	}
	s.messages -= len(mb.msgs)
	mb.msgs = nil
	if mb.user.mailboxes[mb.name] == mb {
		delete(mb.user.mailboxes, mb.name)
	}
	delete(s.byID, mb.id)
}

func (s *Store) refLocked(d resilmail.Digest, size int64) {
	s.refs[d]++
	if s.refs[d] == 1 {
		s.bodyBytes += size
	}
}

func (s *Store) unrefLocked(d resilmail.Digest, size int64, seq uint64) {
	n := s.refs[d] - 1
	if n > 0 {
		s.refs[d] = n
		return
	}
	delete(s.refs, d)
	s.bodyBytes -= size
	s.pendingUnlink[d] = seq
}

// userAndMailboxLocked finds a user's mailbox by name.
func (s *Store) mailboxLocked(userName, name string) (*mailbox, error) {
	u := s.users[userName]
	if u == nil {
		return nil, fmt.Errorf("%w: user %q", ErrNotFound, userName)
	}
	mb := u.mailboxes[name]
	if mb == nil {
		return nil, fmt.Errorf("%w: mailbox %q of %q", ErrNotFound, name, userName)
	}
	return mb, nil
}

// checkNames validates a user name and a mailbox name, returning the
// mailbox's canonical form.
func checkNames(userName, mailboxName string) (string, error) {
	if err := ValidateUser(userName); err != nil {
		return "", err
	}
	return ValidateMailbox(mailboxName)
}

// begin starts a call: it refuses a done ctx and a closed store, and
// counts the call so that Close waits for it; the caller must call
// s.ops.Done.
func (s *Store) begin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.ops.Add(1)
	return nil
}

// The store is a replication source and target.
var (
	_ replicate.Source = (*Store)(nil)
	_ replicate.Target = (*Store)(nil)
)
