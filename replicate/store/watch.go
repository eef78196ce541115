package store

import (
	"context"
	"fmt"
	"time"

	"github.com/resilmail/resilmail"
)

// Per-mailbox change notification and expunged-UID tracking, for IMAP IDLE
// and RFC 7162 QRESYNC (VANISHED).
//
// applyLocked calls touchLocked before it applies a change; advanceLocked
// calls notifyLocked once changes are durable: a watcher is woken only for
// what a crash cannot undo.

// maxVanishedRanges bounds the UID ranges remembered per mailbox; beyond
// it the oldest are forgotten and [Store.MailboxDelta] answers older
// questions with every UID missing below UIDNEXT.
const maxVanishedRanges = 4096

// watchState is the store's notification and expunge-tracking state,
// guarded by Store.mu.
type watchState struct {
	chans    map[resilmail.MailboxID]chan struct{} // closed at the next durable change
	pending  map[resilmail.MailboxID]uint64        // changed, not yet durable: the last seq
	vanished map[resilmail.MailboxID]*expungeLog
}

// expungeLog remembers the UIDs a mailbox's expunges removed, by
// mod-sequence: every expunge with a mod-sequence above floor is in entries.
type expungeLog struct {
	floor   uint64
	entries []expunged // ascending by modseq
	ranges  int
}

type expunged struct {
	modseq uint64
	uids   resilmail.UIDSet
}

func (w *watchState) init() {
	if w.chans == nil {
		w.chans = make(map[resilmail.MailboxID]chan struct{})
		w.pending = make(map[resilmail.MailboxID]uint64)
		w.vanished = make(map[resilmail.MailboxID]*expungeLog)
	}
}

// touchLocked records, before c is applied, that its mailbox changes (for
// notifyLocked) and, for an expunge, which UIDs go at which mod-sequence.
func (s *Store) touchLocked(c *resilmail.Change) {
	w := &s.watch
	w.init()
	switch c.Kind {
	case resilmail.ChangeAppend, resilmail.ChangeExpunge, resilmail.ChangeFlags, resilmail.ChangeReserve:
		mb := s.mailboxForLocked(c)
		if mb == nil {
			return
		}
		w.pending[mb.id] = c.Seq
		l := w.vanished[mb.id]
		if l == nil {
			// Expunges up to the mailbox's current mod-sequence were
			// before this store started tracking (a restart): unknown.
			l = &expungeLog{floor: mb.highest}
			w.vanished[mb.id] = l
		}
		if c.Kind != resilmail.ChangeExpunge {
			return
		}
		var gone resilmail.UIDSet
		for _, r := range c.UIDs {
			if r.Start >= mb.uidNext {
				break
			}
			gone = gone.AddRange(r.Start, min(r.Stop, mb.uidNext-1))
		}
		if gone.IsEmpty() {
			return
		}
		l.entries = append(l.entries, expunged{modseq: c.ModSeq, uids: gone})
		l.ranges += len(gone)
		for l.ranges > maxVanishedRanges && len(l.entries) > 1 {
			l.floor = max(l.floor, l.entries[0].modseq)
			l.ranges -= len(l.entries[0].uids)
			l.entries[0] = expunged{}
			l.entries = l.entries[1:]
		}
	case resilmail.ChangeMailboxCreate, resilmail.ChangeMailboxRename, resilmail.ChangeMailboxDelete:
		w.pending[c.MailboxID] = c.Seq
		if u := s.users[c.User]; u != nil {
			// A create over an existing name or a rename over one replaces
			// that mailbox.
			for _, name := range []string{c.Mailbox, c.NewName} {
				if old := u.mailboxes[name]; old != nil && name != "" {
					w.pending[old.id] = c.Seq
				}
			}
		}
	case resilmail.ChangeUserDelete:
		if u := s.users[c.User]; u != nil {
			for _, mb := range u.mailboxes {
				w.pending[mb.id] = c.Seq
			}
		}
	}
}

// notifyLocked wakes the watchers of mailboxes whose changes are now
// durable, and forgets the expunges of mailboxes that are gone.
func (s *Store) notifyLocked() {
	w := &s.watch
	for id, seq := range w.pending {
		if seq > s.durable {
			continue
		}
		delete(w.pending, id)
		if ch := w.chans[id]; ch != nil {
			close(ch)
			delete(w.chans, id)
		}
		if s.byID[id] == nil {
			delete(w.vanished, id)
		}
	}
}

// wakeAllLocked wakes every watcher (the store is closing).
func (s *Store) wakeAllLocked() {
	for id, ch := range s.watch.chans {
		close(ch)
		delete(s.watch.chans, id)
	}
}

// Watch returns a channel that is closed once a change to the mailbox id
// (an append, expunge, flag change, rename or deletion, local or applied
// from a primary) is durable, or when the store closes. Each channel fires
// once: call Watch again, then read the mailbox's state, then wait, so that
// no change between the read and the wait is missed. Watching costs
// nothing when nothing changes; the channel of a mailbox that does not
// exist fires at its next change, or never.
func (s *Store) Watch(id resilmail.MailboxID) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.watch.init()
	if s.closed {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	ch := s.watch.chans[id]
	if ch == nil {
		ch = make(chan struct{})
		s.watch.chans[id] = ch
	}
	return ch
}

// A Delta is what changed in a mailbox after a mod-sequence, read
// atomically: the mailbox's status, the messages whose mod-sequence is
// higher (new ones and those whose flags changed, RFC 7162 CHANGEDSINCE),
// and the UIDs expunged since (RFC 7162 VANISHED).
type Delta struct {
	Status  Status
	Changed []Message // in UID order
	// Vanished holds every UID expunged after the mod-sequence asked for.
	// When the store no longer knows exactly (the question goes back
	// before the last start, or beyond the expunges it remembers), it is
	// every UID below UIDNEXT that no message has: a superset, which RFC
	// 7162 allows (a client ignores UIDs it does not know).
	Vanished resilmail.UIDSet
	// Exact is false when Vanished is such a superset.
	Exact bool
}

// MailboxDelta returns what changed in a mailbox after mod-sequence since,
// as one consistent view (see [Delta]). since zero gives every message and
// no vanished UID. Its cost grows with the mailbox's messages (one pass)
// and the expunges remembered.
func (s *Store) MailboxDelta(ctx context.Context, userName, mailboxName string, since uint64) (Delta, error) {
	name, err := checkNames(userName, mailboxName)
	if err != nil {
		return Delta{}, err
	}
	if err := s.begin(ctx); err != nil {
		return Delta{}, err
	}
	defer s.ops.Done()
	s.mu.Lock()
	mb, err := s.mailboxLocked(userName, name)
	if err != nil {
		s.mu.Unlock()
		return Delta{}, err
	}
	d := Delta{Status: mb.status(), Exact: true}
	for i := range mb.msgs {
		m := &mb.msgs[i]
		if m.modseq <= since {
			continue
		}
		_, bad := s.corrupt[m.digest]
		msg := Message{UID: m.uid, ModSeq: m.modseq, Flags: m.flags.list(), Size: m.size, Digest: m.digest, Corrupt: bad}
		if m.dateSec != 0 || m.dateNsec != 0 {
			msg.InternalDate = time.Unix(m.dateSec, int64(m.dateNsec)).UTC()
		}
		d.Changed = append(d.Changed, msg)
	}
	if since > 0 && since < mb.highest {
		d.Vanished, d.Exact = s.vanishedLocked(mb, since)
	}
	if err := s.readBarrierUnlock(); err != nil {
		return Delta{}, err
	}
	return d, nil
}

// vanishedLocked returns the UIDs expunged from mb after since, exactly
// when the log covers it and as every missing UID otherwise.
func (s *Store) vanishedLocked(mb *mailbox, since uint64) (resilmail.UIDSet, bool) {
	l := s.watch.vanished[mb.id]
	if l == nil {
		l = &expungeLog{floor: mb.highest}
	}
	if since >= l.floor {
		var out resilmail.UIDSet
		for _, e := range l.entries {
			if e.modseq <= since {
				continue
			}
			for _, r := range e.uids {
				out = out.AddRange(r.Start, r.Stop)
			}
		}
		return out, true
	}
	// Every UID below UIDNEXT that no message holds.
	var out resilmail.UIDSet
	next := uint32(1)
	for i := range mb.msgs {
		if u := mb.msgs[i].uid; u > next {
			out = out.AddRange(next, u-1)
		}
		next = mb.msgs[i].uid + 1
	}
	if mb.uidNext > next {
		out = out.AddRange(next, mb.uidNext-1)
	}
	return out, false
}

// MailboxByID returns the user and status of the mailbox id, so that a
// session can follow a mailbox across renames.
func (s *Store) MailboxByID(ctx context.Context, id resilmail.MailboxID) (string, Status, error) {
	if err := s.begin(ctx); err != nil {
		return "", Status{}, err
	}
	defer s.ops.Done()
	s.mu.Lock()
	mb := s.byID[id]
	if mb == nil {
		s.mu.Unlock()
		return "", Status{}, fmt.Errorf("%w: mailbox id %s", ErrNotFound, id)
	}
	user, st := mb.user.name, mb.status()
	if err := s.readBarrierUnlock(); err != nil {
		return "", Status{}, err
	}
	return user, st, nil
}
