package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
)

// The bulk load: a whole state written into an empty store at once (a new
// server rebuilt from a backup), without the journal. The live path writes
// every body twice (journal and file) and fsyncs per batch; a load writes
// each body once, into a body pack (packs.go: a few large files rather than
// one file per body, whose creation cost most of a restore's time), makes
// them all durable with one syncfs(2), and then commits by writing the
// checkpoint (the index at position N, the number of changes loaded).
// Until that checkpoint is written, the store on disk is the empty store it
// was, plus packs no checkpoint refers to: a load killed at any instant
// leaves the old state, and the next Load (which removes them first) or a
// scrub starts from there.

// ErrNotEmpty is returned (wrapped, with [fs.ErrExist]) by [Store.Load]
// for a store whose journal holds a change: a load only fills an empty
// store.
var ErrNotEmpty = errors.New("store: not empty")

// Load fills an empty store with a whole state: changes build it (users,
// subscriptions, mailboxes with their ids, UIDVALIDITY and, in ModSeq,
// HIGHESTMODSEQ, messages as appends in ascending UID order per mailbox,
// and ChangeReserve for UIDNEXT and HIGHESTMODSEQ, as [Store.FullState]
// and a backup give them), keeping every id, UID and mod-sequence; feed
// gives the bodies: it calls put once per body the loaded messages refer
// to, from as many goroutines as it likes, and returns once every put has
// returned. Each body put is checked against its digest (a
// mismatch is refused with [ErrCorrupt]) and written once, into a pack;
// put may be called concurrently, and a body put twice is written once;
// put does not keep body after it returns (it copies what it writes).
// Every body the changes refer to must be put: Load fails otherwise.
//
// Nothing is visible, and nothing survives a crash, before Load returns
// nil: it makes every file durable with one sync of the file system, then
// writes the checkpoint, which is the commit; a load that fails, is
// cancelled or is killed leaves the store empty, with unreferenced packs
// that the next Load (or a scrub) removes. The store's
// journal then starts after the load: readers before it get
// [ErrTooFarBehind] (a replica compares in full; a backup reads the whole
// state), and the store keeps its own history id.
//
// A store whose journal holds any change is refused with an error
// wrapping [ErrNotEmpty] and [fs.ErrExist], before or (if a write came in
// meanwhile) at the end of the load.
func (s *Store) Load(ctx context.Context, changes []resilmail.Change, feed func(ctx context.Context, put func(d resilmail.Digest, body []byte) error) error) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	start := time.Now()
	s.mu.Lock()
	err := s.emptyLocked()
	epoch, lastUV := s.epoch, s.lastUIDValidity
	s.mu.Unlock()
	if err != nil {
		return err
	}
	sh, err := s.buildLoad(changes, epoch, lastUV)
	if err != nil || sh.applied == 0 {
		return err // an error, or nothing to load
	}
	s.loadMu.Lock() // one load at a time: they would share the packs
	defer s.loadMu.Unlock()
	if err := s.startPacks(); err != nil {
		return err
	}
	defer func() {
		s.packs.mu.Lock()
		s.packs.loading = false
		s.packs.mu.Unlock()
	}()
	syncer, err := durable.StartFileSystemSync(s.dir)
	if err != nil {
		return storageErr(err)
	}
	defer syncer.Close()
	pw := &packWriter{s: s, next: 1}
	packsDone := false
	defer func() {
		if !packsDone {
			pw.abort()
		}
	}()
	var (
		mu      sync.Mutex
		claimed = make(map[resilmail.Digest]bool, len(sh.refs))
		bytes   int64
		// Write-back of what is written so far starts every loadKickBytes
		// (one sync of the file system in the background), so that the
		// disk works while bodies are still being written and the final
		// sync has only the tail left.
		kicked   int64
		kicking  bool
		kickWG   sync.WaitGroup
		kickErr  error
		kickSync = func() {
			defer kickWG.Done()
			err := syncer.Sync()
			mu.Lock()
			kicking = false
			if err != nil && kickErr == nil {
				kickErr = err // reported once by the kernel: keep it
			}
			mu.Unlock()
		}
	)
	defer kickWG.Wait()
	put := func(d resilmail.Digest, body []byte) error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		if sh.refs[d] == 0 { // read-only after buildLoad
			return fmt.Errorf("store: load: body %s is not one the loaded messages refer to", d)
		}
		if got := resilmail.Digest(sha256.Sum256(body)); got != d {
			return fmt.Errorf("%w: %w", ErrCorrupt, &resilmail.CorruptError{Want: d, Got: got, Where: "loaded body"})
		}
		mu.Lock()
		done := claimed[d]
		claimed[d] = true
		mu.Unlock()
		if done {
			return nil
		}
		if err := pw.put(d, body); err != nil {
			mu.Lock()
			delete(claimed, d)
			mu.Unlock()
			return err
		}
		mu.Lock()
		bytes += int64(len(body))
		kick := !kicking && bytes-kicked >= loadKickBytes
		if kick {
			kicking, kicked = true, bytes
			kickWG.Add(1)
		}
		mu.Unlock()
		if kick {
			go kickSync()
		}
		return nil
	}
	if err := feed(ctx, put); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	mu.Lock()
	missing := 0
	var first resilmail.Digest
	for d := range sh.refs {
		if !claimed[d] {
			if missing == 0 {
				first = d
			}
			missing++
		}
	}
	mu.Unlock()
	if missing > 0 {
		return fmt.Errorf("store: load: %d bodies the messages refer to were not given (%s among them); nothing loaded", missing, first)
	}
	packsDone = true
	locs, live, err := pw.finish()
	if err != nil {
		return err
	}
	written := time.Now()
	kickWG.Wait()
	if err := syncer.Sync(); err != nil {
		return storageErr(err)
	}
	if kickErr != nil {
		return storageErr(kickErr)
	}
	synced := time.Now()
	if err := s.commitLoad(sh, locs, live); err != nil {
		return err
	}
	s.log.Info("store: loaded", "users", len(sh.users), "mailboxes", len(sh.byID), "messages", sh.messages,
		"bodies", len(sh.refs), "bytes", bytes, "packs", len(live), "seq", sh.applied, "took", time.Since(start),
		"writing", written.Sub(start), "syncing", synced.Sub(written), "committing", time.Since(synced))
	return nil
}

// emptyLocked refuses a store that holds a change, is closed or failed.
func (s *Store) emptyLocked() error {
	if err := s.usableLocked(); err != nil {
		return err
	}
	if s.applied != 0 || len(s.users) != 0 {
		return fmt.Errorf("%w (%w): its journal is at %d with %d users; a load fills only an empty store", ErrNotEmpty, fs.ErrExist, s.applied, len(s.users))
	}
	return nil
}

// loadKickBytes is how many bytes of bodies a load writes between two
// starts of write-back (a variable for tests).
var loadKickBytes int64 = 64 << 20

// loadKinds are the kinds of change a load takes.
var loadKinds = map[resilmail.ChangeKind]bool{
	resilmail.ChangeUserCreate: true, resilmail.ChangeSubscribe: true, resilmail.ChangeMailboxCreate: true,
	resilmail.ChangeAppend: true, resilmail.ChangeReserve: true, resilmail.ChangeEpoch: true,
}

// buildLoad builds the loaded state in memory, apart from the store: the
// same checks as Apply, and the same applyLocked, on a store of its own.
func (s *Store) buildLoad(changes []resilmail.Change, epoch resilmail.Epoch, lastUV uint32) (*Store, error) {
	sh := &Store{
		opts: s.opts, log: s.log,
		users:         make(map[string]*user),
		byID:          make(map[resilmail.MailboxID]*mailbox),
		refs:          make(map[resilmail.Digest]int32),
		corrupt:       make(map[resilmail.Digest]struct{}),
		pendingUnlink: make(map[resilmail.Digest]uint64),
		upstream:      make(map[string]uint64),
		epoch:         epoch, lastUIDValidity: lastUV,
	}
	sh.ret.init()
	have := make(map[resilmail.Digest]bool)
	for i := range changes {
		if k := changes[i].Kind; k == resilmail.ChangeAppend {
			have[changes[i].Digest] = true
		}
	}
	for i := range changes {
		c := changes[i]
		if !loadKinds[c.Kind] {
			return nil, fmt.Errorf("store: load: change %d (%s): a load takes only users, subscriptions, mailboxes, appends and reserves", i, c.String())
		}
		if err := checkRemote(&c); err != nil {
			return nil, fmt.Errorf("store: load: change %d (%s): %w", i, c.String(), err)
		}
		if c.Epoch < sh.epoch {
			return nil, fmt.Errorf("%w: load: change %s has epoch %d, this store has seen %d", ErrFenced, c.String(), c.Epoch, sh.epoch)
		}
		skip, err := sh.checkApplyLocked(&c, have, nil)
		if err == nil && c.Kind == resilmail.ChangeAppend && skip {
			err = fmt.Errorf("%w: UID %d of %s is not above the mailbox's last", ErrConflict, c.UID, c.Mailbox)
		}
		if err != nil {
			return nil, fmt.Errorf("store: load: change %d (%s): %w", i, c.String(), err)
		}
		if skip {
			continue
		}
		c.Seq = sh.applied + 1
		sh.applyLocked(&c, 0)
	}
	return sh, nil
}

// writeLoadFile writes a file of a load (a pack's index) in one go,
// without fsync (Load syncs the file system once). A file left by a load
// that was killed is overwritten. It uses the system calls directly.
func writeLoadFile(path string, body []byte) error {
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_TRUNC|syscall.O_CLOEXEC, 0o640)
	if err != nil {
		return storageErr(&os.PathError{Op: "open", Path: path, Err: err})
	}
	for b := body; len(b) > 0; {
		n, werr := syscall.Write(fd, b)
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
		b = b[n:]
	}
	if cerr := syscall.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return storageErr(&os.PathError{Op: "write", Path: path, Err: err})
	}
	return nil
}

// commitLoad writes the loaded state's checkpoint, which makes it the
// store's, and puts it in place of the empty one in memory.
func (s *Store) commitLoad(sh *Store, locs map[resilmail.Digest]packLoc, live map[uint32]*packLive) error {
	s.ckptMu.Lock()
	defer s.ckptMu.Unlock()
	s.mu.Lock()
	if err := s.emptyLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	buf := sh.encodeCheckpointLocked()
	rbuf := s.encodeRetentionLocked(sh.applied)
	// Under s.mu: no change can be journalled at a position the
	// checkpoint claims meanwhile.
	err := s.writeRetention(rbuf)
	if err == nil {
		err = durable.WriteFile(durable.OS, filepath.Join(s.dir, checkpointFile), buf, 0o640)
		if err != nil {
			err = storageErr(err)
		}
	}
	if err != nil {
		s.failLocked(err)
		s.mu.Unlock()
		return err
	}
	s.users, s.byID, s.refs = sh.users, sh.byID, sh.refs
	s.packs.mu.Lock()
	s.packs.locs, s.packs.live = locs, live
	s.packs.mu.Unlock()
	s.messages, s.bodyBytes = sh.messages, sh.bodyBytes
	s.lastUIDValidity = sh.lastUIDValidity
	for _, e := range sh.meta.Epochs {
		s.noteEpochLocked(e.Epoch, e.Seq)
	}
	s.epoch = max(s.epoch, sh.epoch)
	s.applied, s.ckptSeq = sh.applied, sh.applied
	s.recs = nil
	s.journalSince = 0
	s.advanceLocked(sh.applied)
	s.mu.Unlock()
	return s.saveHistory()
}
