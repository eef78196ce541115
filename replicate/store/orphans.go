package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
)

// Orphans returns the messages this store holds that were appended after
// position agreed of history h, oldest first: h is the store's own
// history (an old primary rejoining: its own changes after agreed) or the
// history it follows (a replica whose primary was replaced: the changes
// it applied from positions after agreed). Messages expunged since are
// not orphans. It returns an error wrapping [ErrTooFarBehind] when the
// journal no longer holds every change it would have to read, and one
// wrapping [ErrNotFound] for a history the store neither is nor follows.
func (s *Store) Orphans(ctx context.Context, h replicate.HistoryID, agreed uint64, reason string) ([]replicate.Orphan, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.ops.Done()
	s.compactMu.RLock()
	defer s.compactMu.RUnlock()
	s.mu.Lock()
	own := h == s.meta.History
	if !own && h != s.meta.Upstream.History {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: history %s is neither this store's nor the one it follows", ErrNotFound, h)
	}
	// The first change to read: after agreed in the store's own journal,
	// or, for the upstream history, every change since the positions
	// were last reset (the primary's positions are not in order across
	// users).
	from := agreed + 1
	if !own {
		from = s.meta.Upstream.ResetSeq + 1
	}
	if from > s.durable {
		s.mu.Unlock()
		return nil, nil
	}
	if oldest := s.oldestLocked(); from < oldest {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: orphans after %d need change %d, the oldest kept is %d", ErrTooFarBehind, agreed, from, oldest)
	}
	var refs []recRef
	for _, r := range s.recs {
		if r.last >= from && r.first <= s.durable {
			refs = append(refs, r)
		}
	}
	epochs := s.meta.Epochs
	s.mu.Unlock()

	type cand struct {
		c      resilmail.Change
		origin uint64
	}
	var cands []cand
	for _, r := range refs {
		rec, err := s.wal.ReadAt(r.pos)
		if err != nil {
			return nil, fmt.Errorf("%w: journal: %w", ErrCorrupt, err)
		}
		changes, ups, err := decodeBatch(rec)
		if err != nil {
			return nil, fmt.Errorf("%w: journal record at %s: %w", ErrCorrupt, r.pos, err)
		}
		for i, c := range changes {
			if c.Kind != resilmail.ChangeAppend || c.Seq < from {
				continue
			}
			origin := c.Seq
			if !own {
				origin = ups[i]
				if origin <= agreed {
					continue
				}
			}
			cands = append(cands, cand{c, origin})
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []replicate.Orphan
	for _, k := range cands {
		c := &k.c
		mb := s.byID[c.MailboxID]
		if mb == nil || mb.uidValidity != c.UIDValidity || mb.user.name != c.User {
			continue
		}
		m := mb.get(c.UID)
		if m == nil || m.digest != c.Digest {
			continue // expunged since
		}
		e := c.Epoch
		if own {
			e = replicate.EpochAt(epochs, c.Seq)
		}
		out = append(out, replicate.Orphan{
			Origin: replicate.Position{History: h, Epoch: e, Seq: k.origin},
			User:   c.User, Mailbox: mb.name, UIDValidity: mb.uidValidity, UID: m.uid,
			Digest: m.digest, Size: m.size, Flags: m.flags.list(),
			InternalDate: time.Unix(m.dateSec, int64(m.dateNsec)).UTC(), Reason: reason,
		})
	}
	return out, nil
}

// KeepOrphan stores an orphan of another node as a new message of
// o.User (created if need be) in mailbox (created if need be): the bytes
// of replicate.OrphanMessage(o, body), with o's flags and internal date,
// durably before it returns. It needs a writable store (a primary). When
// mailbox holds that message already (a second delivery of the same
// orphan), it stores nothing and returns it with Again set.
func (s *Store) KeepOrphan(ctx context.Context, o *replicate.Orphan, body []byte, mailbox string) (replicate.KeptOrphan, error) {
	if resilmail.DigestOf(body) != o.Digest {
		return replicate.KeptOrphan{}, fmt.Errorf("%w: orphan %s", ErrCorrupt, o.String())
	}
	msg := replicate.OrphanMessage(o, body)
	d := resilmail.DigestOf(msg)
	name, err := checkNames(o.User, mailbox)
	if err != nil {
		return replicate.KeptOrphan{}, err
	}
	if err := s.CreateUser(ctx, o.User); err != nil && !errors.Is(err, ErrExists) {
		return replicate.KeptOrphan{}, err
	}
	if _, err := s.CreateMailbox(ctx, o.User, name); err != nil && !errors.Is(err, ErrExists) {
		return replicate.KeptOrphan{}, err
	}
	s.mu.Lock()
	if mb, err := s.mailboxLocked(o.User, name); err == nil {
		for i := range mb.msgs {
			if mb.msgs[i].digest == d {
				uid := mb.msgs[i].uid
				s.mu.Unlock()
				return replicate.KeptOrphan{Mailbox: name, UID: uid, Digest: d, At: s.opts.Now().UTC(), Again: true}, nil
			}
		}
	}
	s.mu.Unlock()
	// \Recent cannot be stored; the other flags stay as the user left them.
	var flags []string
	for _, f := range o.Flags {
		if f != `\Recent` {
			flags = append(flags, f)
		}
	}
	uid, err := s.Append(ctx, o.User, name, flags, o.InternalDate, bytes.NewReader(msg))
	if err != nil {
		return replicate.KeptOrphan{}, err
	}
	s.mu.Lock()
	s.c.orphansKept++
	s.mu.Unlock()
	return replicate.KeptOrphan{Mailbox: name, UID: uid, Digest: d, At: s.opts.Now().UTC()}, nil
}

// The store keeps orphans and lists its own.
var (
	_ replicate.OrphanSource  = (*Store)(nil)
	_ replicate.OrphanSink    = (*Store)(nil)
	_ replicate.HistorySource = (*Store)(nil)
	_ replicate.HistoryTarget = (*Store)(nil)
	_ replicate.Demoter       = (*Store)(nil)
	_ replicate.Reserver      = (*Store)(nil)
)

// Reserve raises the mailbox hw names (if the store has it, for that user
// and with that UIDVALIDITY) to UIDNEXT hw.UIDNext and HIGHESTMODSEQ
// hw.HighestModSeq at least, with a local ChangeReserve, durably, and
// reports whether it changed anything: a primary gives a rejoining node's
// UIDs no other message. It needs a writable store.
func (s *Store) Reserve(ctx context.Context, hw replicate.HighWater) (bool, error) {
	if err := s.begin(ctx); err != nil {
		return false, err
	}
	defer s.ops.Done()
	if err := s.lockLocal(); err != nil {
		return false, err
	}
	mb := s.byID[hw.MailboxID]
	if mb == nil || mb.uidValidity != hw.UIDValidity || mb.user.name != hw.User ||
		(hw.UIDNext <= mb.uidNext && hw.HighestModSeq <= mb.highest) || hw.UIDNext == 0 || hw.UIDNext == math.MaxUint32 {
		s.mu.Unlock()
		return false, nil
	}
	c := s.changeLocked(resilmail.ChangeReserve, hw.User)
	c.Mailbox, c.MailboxID, c.UIDValidity = mb.name, mb.id, mb.uidValidity
	c.UID = max(hw.UIDNext, mb.uidNext) - 1
	c.ModSeq = max(hw.HighestModSeq, mb.highest)
	if err := s.commitAndUnlock([]resilmail.Change{c}, nil); err != nil {
		return false, err
	}
	return true, nil
}
