package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
)

// This file is what the backup package needs of the store beyond the
// journal (Changes, Wait, OldestPosition, Body): the whole state at one
// position for a first run, and the few writes a restore makes. Its
// methods use only the root vocabulary, so that package backup does not
// import replicate.

// HistoryName returns the store's history id ([Store.History]) as text,
// for a backup to tell this store from another one it followed before
// (backup's Historian).
func (s *Store) HistoryName() string { return s.History().String() }

// FullState calls fn with the store's whole state, as the changes that
// build it, at one position of the journal, and returns that position. The
// state is read under the store's lock in one piece (about a millisecond
// per 10 000 messages) and passed to fn afterwards, outside the lock, so
// fn may be slow. For every user: a ChangeUserCreate, its subscriptions
// (ChangeSubscribe), then for every mailbox a ChangeMailboxCreate (with the
// mailbox's id, UIDVALIDITY and, in ModSeq, its HIGHESTMODSEQ), a
// ChangeAppend per message (UID, body digest and size, internal date,
// flags, MODSEQ), and, when the mailbox's UIDNEXT is above its last
// message's UID plus one, a ChangeReserve of UIDNEXT-1 and HIGHESTMODSEQ
// saying that every UID below UIDNEXT was given. The
// changes carry Seq zero, the store's epoch and the time of the read. The
// position returned is durable: every change up to it is on stable
// storage, and the state is the result of exactly those changes.
func (s *Store) FullState(ctx context.Context, fn func(resilmail.Change) error) (uint64, error) {
	if err := s.begin(ctx); err != nil {
		return 0, err
	}
	defer s.ops.Done()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, ErrClosed
	}
	now := s.opts.Now().UTC().Round(0)
	pos, epoch := s.applied, s.epoch
	var out []resilmail.Change
	change := func(kind resilmail.ChangeKind, user string) resilmail.Change {
		return resilmail.Change{Epoch: epoch, Kind: kind, Time: now, User: user}
	}
	users := make([]string, 0, len(s.users))
	for n := range s.users {
		users = append(users, n)
	}
	slices.Sort(users)
	for _, name := range users {
		u := s.users[name]
		out = append(out, change(resilmail.ChangeUserCreate, name))
		subs := make([]string, 0, len(u.subs))
		for sub := range u.subs {
			subs = append(subs, sub)
		}
		slices.Sort(subs)
		for _, sub := range subs {
			c := change(resilmail.ChangeSubscribe, name)
			c.Mailbox = sub
			out = append(out, c)
		}
		mbs := make([]*mailbox, 0, len(u.mailboxes))
		for _, mb := range u.mailboxes {
			mbs = append(mbs, mb)
		}
		slices.SortFunc(mbs, func(a, b *mailbox) int { return strings.Compare(a.name, b.name) })
		for _, mb := range mbs {
			c := change(resilmail.ChangeMailboxCreate, name)
			c.Mailbox, c.MailboxID, c.UIDValidity, c.ModSeq = mb.name, mb.id, mb.uidValidity, mb.highest
			out = append(out, c)
			var last uint32
			for i := range mb.msgs {
				m := &mb.msgs[i]
				a := change(resilmail.ChangeAppend, name)
				a.Mailbox, a.MailboxID, a.UIDValidity = mb.name, mb.id, mb.uidValidity
				a.UID, a.Digest, a.Size, a.ModSeq, a.Flags = m.uid, m.digest, m.size, m.modseq, m.flags.list()
				if m.dateSec != 0 || m.dateNsec != 0 {
					a.InternalDate = time.Unix(m.dateSec, int64(m.dateNsec)).UTC()
				}
				out = append(out, a)
				last = m.uid
			}
			if mb.uidNext > last+1 {
				x := change(resilmail.ChangeReserve, name)
				x.Mailbox, x.MailboxID, x.UIDValidity = mb.name, mb.id, mb.uidValidity
				x.UID, x.ModSeq = mb.uidNext-1, mb.highest
				out = append(out, x)
			}
		}
	}
	if err := s.readBarrierUnlock(); err != nil {
		return 0, err
	}
	for _, c := range out {
		if err := fn(c); err != nil {
			return pos, err
		}
	}
	return pos, nil
}

// RestoreChanges applies changes that rebuild a state (as [Store.FullState]
// gives them, from a backup) with [Store.Apply], keeping their UIDs,
// UIDVALIDITY and mailbox ids. body returns the body named by a digest;
// an error wrapping [fs.ErrNotExist] means that the backup holds no such
// body, and Apply then records the message's UID as used and the message
// as expunged. A mailbox name that the store holds with another mailbox id
// is refused with [ErrConflict].
func (s *Store) RestoreChanges(ctx context.Context, changes []resilmail.Change, body func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error)) error {
	return s.Apply(ctx, changes, func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error) {
		rc, err := body(ctx, d)
		if errors.Is(err, fs.ErrNotExist) && !errors.Is(err, ErrNotFound) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return rc, err
	})
}

// EnsureMailbox creates the user and the mailbox when they do not exist,
// durably, and does nothing when they do.
func (s *Store) EnsureMailbox(ctx context.Context, userName, name string) error {
	if err := s.CreateUser(ctx, userName); err != nil && !errors.Is(err, ErrExists) {
		return err
	}
	if _, err := s.CreateMailbox(ctx, userName, name); err != nil && !errors.Is(err, ErrExists) {
		return err
	}
	return nil
}

// ContainsBody reports whether a message of the user's mailbox has the body
// named d, so that a restore can skip a message the mailbox still holds.
func (s *Store) ContainsBody(ctx context.Context, userName, name string, d resilmail.Digest) (bool, error) {
	name, err := checkNames(userName, name)
	if err != nil {
		return false, err
	}
	if err := s.begin(ctx); err != nil {
		return false, err
	}
	defer s.ops.Done()
	s.mu.Lock()
	mb, err := s.mailboxLocked(userName, name)
	if err != nil {
		s.mu.Unlock()
		if errors.Is(err, ErrNotFound) {
			return false, nil
		}
		return false, err
	}
	found := false
	if s.refs[d] > 0 {
		for i := range mb.msgs {
			if mb.msgs[i].digest == d {
				found = true
				break
			}
		}
	}
	return found, s.readBarrierUnlock()
}
