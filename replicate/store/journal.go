package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/wal"
	"github.com/resilmail/resilmail/replicate"
)

// Epoch returns the highest epoch the store has seen; its local changes
// carry it.
func (s *Store) Epoch() resilmail.Epoch {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch
}

// SetEpoch raises the store's epoch to e, durably (a ChangeEpoch in the
// journal) before it returns. Every later change is stamped with e. A
// promotion calls it before the new primary writes. An epoch lower than
// the highest the store has seen is refused with [ErrFenced]; the same
// epoch is a no-op.
func (s *Store) SetEpoch(ctx context.Context, e resilmail.Epoch) error {
	if err := s.beginLocked(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	switch {
	case e < s.epoch:
		s.c.fenced++
		cur := s.epoch
		s.mu.Unlock()
		return fmt.Errorf("%w: epoch %d is lower than %d", ErrFenced, e, cur)
	case e == s.epoch:
		s.mu.Unlock()
		return nil
	}
	c := s.changeLocked(resilmail.ChangeEpoch, "")
	c.Epoch = e
	return s.commitAndUnlock([]resilmail.Change{c}, nil)
}

// Position returns the position of the last change on stable storage: the
// journal holds changes 1 to Position (those still kept).
func (s *Store) Position() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.durable
}

// OldestPosition returns the oldest position a reader can resume from:
// Changes(ctx, after, n) works for after >= OldestPosition()-1.
func (s *Store) OldestPosition() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.oldestLocked()
}

func (s *Store) oldestLocked() uint64 {
	if len(s.recs) > 0 {
		return s.recs[0].first
	}
	return s.applied + 1
}

// Changes returns the durable changes after position after, in order, at
// most limit of them (zero means 1000) except that the changes a single
// operation made atomically (a MOVE, a rename with children) are never
// split: the first such batch is returned whole. It returns no change when
// there is none yet (see [Store.Wait]), [ErrTooFarBehind] when changes
// after after have been compacted away, and [ErrPosition] when after is
// beyond the end of the journal. Changes carry this journal's positions.
func (s *Store) Changes(ctx context.Context, after uint64, limit int) ([]resilmail.Change, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.ops.Done()
	if limit <= 0 {
		limit = 1000
	}
	s.compactMu.RLock()
	defer s.compactMu.RUnlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	durable := s.durable
	if after > s.applied {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: %d, the journal ends at %d", ErrPosition, after, s.applied)
	}
	if after >= durable {
		s.mu.Unlock()
		return nil, nil
	}
	if oldest := s.oldestLocked(); after+1 < oldest {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: position %d; the oldest change kept is %d", ErrTooFarBehind, after, oldest)
	}
	i := sort.Search(len(s.recs), func(i int) bool { return s.recs[i].last > after })
	var refs []recRef
	n := 0
	for ; i < len(s.recs) && s.recs[i].first <= durable && n < limit; i++ {
		refs = append(refs, s.recs[i])
		n += int(s.recs[i].last - max(s.recs[i].first, after+1) + 1)
	}
	s.mu.Unlock()

	out := make([]resilmail.Change, 0, n)
	for _, r := range refs {
		rec, err := s.wal.ReadAt(r.pos)
		if err != nil {
			if errors.Is(err, wal.ErrCorrupt) {
				return out, fmt.Errorf("%w: journal: %w", ErrCorrupt, err)
			}
			if errors.Is(err, wal.ErrClosed) {
				return out, ErrClosed
			}
			return out, storageErr(err)
		}
		changes, _, err := decodeBatch(rec)
		if err != nil {
			return out, fmt.Errorf("%w: journal record at %s: %w", ErrCorrupt, r.pos, err)
		}
		for _, c := range changes {
			if c.Seq > after && c.Seq <= durable {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// Wait blocks until the journal holds a durable change after position
// after, and returns the position of the last durable change. It returns
// ctx's error when ctx is done and [ErrClosed] when the store is closed.
func (s *Store) Wait(ctx context.Context, after uint64) (uint64, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return 0, ErrClosed
		}
		if s.durable > after {
			d := s.durable
			s.mu.Unlock()
			return d, nil
		}
		ch := s.durableCh
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, fmt.Errorf("store: %w", ctx.Err())
		}
	}
}

// A BodyFunc returns the body named d, for [Store.Apply] to store. The store
// reads it to EOF, closes it, and refuses it if it does not hash to d. It
// returns an error wrapping [ErrNotFound] when the source no longer has the
// body because every message with it was expunged since (as [Store.Body]
// does): Apply then uses the message's UID and records the message as
// expunged at once, as the source's later expunge will. Any other error
// stops Apply. Apply calls it from up to Options.FetchParallelism
// goroutines at once.
type BodyFunc = replicate.BodyFunc

// UpstreamPosition returns the position, in the journal of the primary it
// follows, of the last change Apply applied for user ("" for changes with
// no user, such as epochs). Changes at or before it are skipped by Apply.
func (s *Store) UpstreamPosition(user string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.upstreamLocked(user)
}

// Apply applies changes made by a primary, in order, keeping its UIDs,
// UIDVALIDITY, mailbox ids, mod-sequences and epochs, and returns once they
// are durable. It is what a replica calls for every change it receives.
//
// Apply is idempotent: a change whose Seq is at or before the position
// already applied for its user ([Store.UpstreamPosition]) is skipped
// (whatever its epoch: it is history), and
// so is one whose effect is already there (a known UID with the same body,
// an existing mailbox id). A change with Seq zero (a repair, not from the
// journal) is applied by content alone. An append of a UID below the
// mailbox's UIDNEXT is skipped (expunged since), a
// [resilmail.ChangeRestore] of such a UID puts the message back if the
// mailbox lacks it, and a [resilmail.ChangeReserve] raises a mailbox's
// UIDNEXT and HIGHESTMODSEQ without touching its messages. Bodies the store lacks are fetched
// with body, verified against their digest (a mismatch is refused with
// [ErrCorrupt] and nothing is stored) and written into the journal before
// the change that references them, as Append does, so that the journal's
// group commit makes both durable.
//
// The changes of one user must be applied in the order of the primary's
// journal (different users may be applied in parallel): a change older
// than one already applied for its user is taken for history and skipped.
//
// A change stamped with an epoch lower than the highest the store has seen
// is refused with [ErrFenced]; a higher epoch raises the store's. A change
// that contradicts the store's state is refused with [ErrConflict]: the
// caller must compare the mailbox in full. On any error, the changes before
// the failing one are applied and durable, the rest are not.
func (s *Store) Apply(ctx context.Context, changes []resilmail.Change, body BodyFunc) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	for i := range changes {
		if err := checkRemote(&changes[i]); err != nil {
			return fmt.Errorf("store: change %d (%s): %w", i, changes[i].String(), err)
		}
	}
	// Fetch the bodies this store lacks, in parallel and before taking the
	// lock for long.
	type missing struct {
		d    resilmail.Digest
		size int64
	}
	var (
		needs    []missing
		fetched  sync.Mutex
		reserved []resilmail.Digest // pinned or stored: kept until Apply returns
		have     = make(map[resilmail.Digest]bool)
		gone     = make(map[resilmail.Digest]bool)
	)
	defer func() {
		for _, d := range reserved {
			s.release(d)
		}
	}()
	seen := make(map[resilmail.Digest]bool)
	s.mu.Lock()
	for i := range changes {
		c := &changes[i]
		if (c.Kind != resilmail.ChangeAppend && c.Kind != resilmail.ChangeRestore) || seen[c.Digest] {
			continue
		}
		seen[c.Digest] = true
		if _, bad := s.corrupt[c.Digest]; s.refs[c.Digest] > 0 && !bad {
			// Stored already: pin it, so that an expunge applied before
			// this append cannot remove it meanwhile.
			s.pinLocked(c.Digest)
			reserved = append(reserved, c.Digest)
			have[c.Digest] = true
		} else if c.Seq == 0 || c.Seq > s.upstreamLocked(c.User) {
			needs = append(needs, missing{c.Digest, c.Size})
		}
	}
	s.mu.Unlock()
	if len(needs) > 0 && body == nil {
		return fmt.Errorf("store: changes need %d bodies and Apply has no BodyFunc", len(needs))
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.FetchParallelism)
	for _, n := range needs {
		g.Go(func() error {
			rc, err := body(gctx, n.d)
			if errors.Is(err, ErrNotFound) {
				fetched.Lock()
				gone[n.d] = true
				fetched.Unlock()
				return nil
			}
			if err != nil {
				return fmt.Errorf("store: fetching body %s: %w", n.d, err)
			}
			want := n.d
			d, size, err := s.storeBody(gctx, rc, &want)
			rc.Close()
			if err != nil {
				return err
			}
			fetched.Lock()
			reserved = append(reserved, d)
			have[d] = true
			fetched.Unlock()
			if size != n.size {
				return fmt.Errorf("%w: body %s has %d bytes, the change says %d", ErrConflict, d, size, n.size)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}

	var last uint64
	// fail returns err once the changes applied before it are durable.
	fail := func(err error) error {
		if serr := s.waitDurable(last); serr != nil {
			return serr
		}
		return err
	}
	for i := range changes {
		c := changes[i]
		up := c.Seq
		s.mu.Lock()
		if err := s.usableLocked(); err != nil {
			s.mu.Unlock()
			return fail(err)
		}
		if c.Seq != 0 && c.Seq <= s.upstreamLocked(c.User) {
			s.c.skipped++ // applied before: history, whatever its epoch
			s.mu.Unlock()
			continue
		}
		if c.Epoch < s.epoch {
			s.c.fenced++
			cur := s.epoch
			s.mu.Unlock()
			return fail(fmt.Errorf("%w: change %s has epoch %d, this store has seen %d", ErrFenced, c.String(), c.Epoch, cur))
		}
		skip, err := s.checkApplyLocked(&c, have, gone)
		if err != nil {
			s.c.conflicts++
			s.mu.Unlock()
			s.log.Warn("store: change from primary conflicts; a full comparison is needed", "change", c.String(), "err", err)
			return fail(fmt.Errorf("store: change %s: %w", c.String(), err))
		}
		if skip {
			s.c.skipped++
			if c.Epoch <= s.epoch {
				s.mu.Unlock()
				continue
			}
			// Nothing to do but learn the epoch: journal it.
			c = resilmail.Change{Epoch: c.Epoch, Kind: resilmail.ChangeEpoch, Time: c.Time}
		}
		c.Seq = 0
		batch, ups := []resilmail.Change{c}, []uint64{up}
		if (c.Kind == resilmail.ChangeAppend || c.Kind == resilmail.ChangeRestore) && gone[c.Digest] && !have[c.Digest] && s.refs[c.Digest] == 0 {
			// The primary expunged every message with this body since:
			// the UID is used but the message is gone, as on the primary
			// once the expunge that follows is applied.
			x := c
			x.Kind, x.UID, x.UIDs = resilmail.ChangeExpunge, 0, resilmail.NewUIDSet(c.UID)
			x.Digest, x.Size, x.InternalDate, x.Flags = resilmail.Digest{}, 0, time.Time{}, nil
			batch, ups = append(batch, x), append(ups, up)
			s.c.gone++
		}
		seq, err := s.commitLocked(batch, ups)
		if err == nil {
			s.c.applied++
			last = seq
		}
		s.mu.Unlock()
		if err != nil {
			return fail(err)
		}
	}
	return s.waitDurable(last)
}

// checkRemote checks a change from a primary against the naming and flag
// rules, as the primary's own writes are.
func checkRemote(c *resilmail.Change) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if c.Kind != resilmail.ChangeEpoch {
		if err := ValidateUser(c.User); err != nil {
			return err
		}
	}
	for _, name := range []string{c.Mailbox, c.NewName} {
		if name == "" {
			continue
		}
		if canon, err := ValidateMailbox(name); err != nil {
			return err
		} else if canon != name {
			return fmt.Errorf("%w: %q is not in canonical form", ErrInvalidName, name)
		}
	}
	if _, err := parseFlags(c.Flags); err != nil {
		return err
	}
	return nil
}

// checkApplyLocked decides whether a change from a primary is already
// applied (skip) or contradicts the store (an error wrapping ErrConflict).
func (s *Store) checkApplyLocked(c *resilmail.Change, have, gone map[resilmail.Digest]bool) (skip bool, err error) {
	conflict := func(format string, args ...any) (bool, error) {
		return false, fmt.Errorf("%w: %s", ErrConflict, fmt.Sprintf(format, args...))
	}
	u := s.users[c.User]
	switch c.Kind {
	case resilmail.ChangeUserCreate:
		return u != nil, nil
	case resilmail.ChangeUserDelete:
		return u == nil, nil
	case resilmail.ChangeSubscribe:
		if u != nil {
			_, ok := u.subs[c.Mailbox]
			return ok, nil
		}
		return false, nil
	case resilmail.ChangeUnsubscribe:
		if u != nil {
			_, ok := u.subs[c.Mailbox]
			return !ok, nil
		}
		return true, nil
	case resilmail.ChangeEpoch:
		return c.Epoch <= s.epoch, nil
	case resilmail.ChangeMailboxCreate:
		if mb := s.byID[c.MailboxID]; mb != nil {
			if mb.user.name != c.User || mb.uidValidity != c.UIDValidity {
				return conflict("mailbox id %s exists as %s/%s with UIDVALIDITY %d", c.MailboxID, mb.user.name, mb.name, mb.uidValidity)
			}
			return true, nil
		}
		if u != nil && u.mailboxes[c.Mailbox] != nil {
			return conflict("mailbox name %q is held by mailbox id %s", c.Mailbox, u.mailboxes[c.Mailbox].id)
		}
		return false, nil
	}
	mb := s.byID[c.MailboxID]
	if mb == nil {
		if c.Kind == resilmail.ChangeMailboxDelete {
			return true, nil
		}
		return conflict("no mailbox with id %s", c.MailboxID)
	}
	if mb.user.name != c.User {
		return conflict("mailbox id %s belongs to user %q", c.MailboxID, mb.user.name)
	}
	switch c.Kind {
	case resilmail.ChangeMailboxDelete:
		return false, nil
	case resilmail.ChangeMailboxRename:
		if mb.name == c.NewName {
			return true, nil
		}
		if other := u.mailboxes[c.NewName]; other != nil {
			return conflict("mailbox name %q is held by mailbox id %s", c.NewName, other.id)
		}
		return false, nil
	}
	if mb.uidValidity != c.UIDValidity {
		return conflict("mailbox %s has UIDVALIDITY %d, the change %d", mb.name, mb.uidValidity, c.UIDValidity)
	}
	if c.Kind == resilmail.ChangeReserve {
		if c.UID == math.MaxUint32 {
			return conflict("UID %d", c.UID)
		}
		return c.UID < mb.uidNext && c.ModSeq <= mb.highest, nil
	}
	if c.Kind == resilmail.ChangeAppend || c.Kind == resilmail.ChangeRestore {
		if c.UID == math.MaxUint32 {
			return conflict("UID %d", c.UID)
		}
		if c.UID < mb.uidNext {
			m := mb.get(c.UID)
			if m != nil && m.digest != c.Digest {
				return conflict("UID %d of %s holds body %s, the change %s", c.UID, mb.name, m.digest, c.Digest)
			}
			if m != nil || c.Kind == resilmail.ChangeAppend {
				return true, nil // there, or (an append) expunged since
			}
			// A restore puts the message back in its place.
		}
		if _, bad := s.corrupt[c.Digest]; (s.refs[c.Digest] == 0 || bad) && !have[c.Digest] && !gone[c.Digest] {
			return false, fmt.Errorf("store: body %s of UID %d is not stored", c.Digest, c.UID)
		}
	}
	return false, nil
}
