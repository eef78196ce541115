package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
)

// The store shows itself for comparison and repair; Users and
// Subscriptions are in mailbox.go.
var _ replicate.Inventory = (*Store)(nil)

// Mailboxes returns the state of every mailbox of the user for comparison
// ([replicate.Inventory]), sorted by name. It returns [ErrNotFound] for an
// unknown user.
func (s *Store) Mailboxes(ctx context.Context, userName string) ([]replicate.MailboxState, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.ops.Done()
	s.mu.Lock()
	u := s.users[userName]
	if u == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: user %q", ErrNotFound, userName)
	}
	out := make([]replicate.MailboxState, 0, len(u.mailboxes))
	for _, mb := range u.mailboxes {
		st := replicate.MailboxState{
			ID: mb.id, Name: mb.name, UIDValidity: mb.uidValidity, UIDNext: mb.uidNext,
			HighestModSeq: mb.highest, Messages: len(mb.msgs), Size: mb.size, Digest: replicate.SetDigest(mb.sum),
		}
		if len(s.corrupt) > 0 {
			for i := range mb.msgs {
				if _, bad := s.corrupt[mb.msgs[i].digest]; bad {
					st.Corrupt++
				}
			}
		}
		out = append(out, st)
	}
	if err := s.readBarrierUnlock(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b replicate.MailboxState) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// mailboxByIDLocked finds a user's mailbox by id.
func (s *Store) mailboxByIDLocked(userName string, id resilmail.MailboxID) (*mailbox, error) {
	mb := s.byID[id]
	if mb == nil || mb.user.name != userName {
		return nil, fmt.Errorf("%w: mailbox id %s of %q", ErrNotFound, id, userName)
	}
	return mb, nil
}

// DigestRange returns the combined digest and the number of the messages
// of the mailbox id of the user whose UIDs are between lo and hi, both
// included ([replicate.Inventory]); it is [Store.RangeDigest] by mailbox id.
func (s *Store) DigestRange(ctx context.Context, userName string, id resilmail.MailboxID, lo, hi uint32) (replicate.SetDigest, int, error) {
	if err := s.begin(ctx); err != nil {
		return replicate.SetDigest{}, 0, err
	}
	defer s.ops.Done()
	s.mu.Lock()
	mb, err := s.mailboxByIDLocked(userName, id)
	if err != nil {
		s.mu.Unlock()
		return replicate.SetDigest{}, 0, err
	}
	var sum SetDigest
	n := 0
	if lo <= hi {
		for i := mb.find(lo); i < len(mb.msgs) && mb.msgs[i].uid <= hi; i++ {
			sum.xor(mb.msgs[i].hash)
			n++
		}
	}
	if err := s.readBarrierUnlock(); err != nil {
		return replicate.SetDigest{}, 0, err
	}
	return replicate.SetDigest(sum), n, nil
}

// MessageRange returns the metadata of at most limit messages of the
// mailbox id of the user whose UIDs are between lo and hi, both included,
// in UID order ([replicate.Inventory]). A limit below one is refused.
func (s *Store) MessageRange(ctx context.Context, userName string, id resilmail.MailboxID, lo, hi uint32, limit int) ([]replicate.MessageState, error) {
	if limit < 1 {
		return nil, fmt.Errorf("store: message range limit %d is below 1", limit)
	}
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.ops.Done()
	s.mu.Lock()
	mb, err := s.mailboxByIDLocked(userName, id)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	var out []replicate.MessageState
	if lo <= hi {
		for i := mb.find(lo); i < len(mb.msgs) && mb.msgs[i].uid <= hi && len(out) < limit; i++ {
			m := &mb.msgs[i]
			_, bad := s.corrupt[m.digest]
			ms := replicate.MessageState{UID: m.uid, ModSeq: m.modseq, Digest: m.digest, Size: m.size, Flags: m.flags.list(), Corrupt: bad}
			if m.dateSec != 0 || m.dateNsec != 0 {
				ms.InternalDate = time.Unix(m.dateSec, int64(m.dateNsec)).UTC()
			}
			out = append(out, ms)
		}
	}
	if err := s.readBarrierUnlock(); err != nil {
		return nil, err
	}
	return out, nil
}
