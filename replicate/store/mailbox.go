package store

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/resilmail/resilmail"
)

// Status describes a mailbox, as IMAP STATUS and SELECT report it, plus its
// digest for comparing replicas.
type Status struct {
	ID            resilmail.MailboxID // stable across renames
	Name          string              // canonical name
	UIDValidity   uint32              // IMAP UIDVALIDITY
	UIDNext       uint32              // IMAP UIDNEXT: every UID given is below it
	HighestModSeq uint64              // RFC 7162 HIGHESTMODSEQ
	Messages      int                 // messages in the mailbox
	Unseen        int                 // messages without \Seen
	Size          int64               // bytes of all messages
	// Digest combines every message's UID, mod-sequence, body digest,
	// size, internal date and flags (see [SetDigest]). Two mailboxes with
	// equal ID, UIDValidity, UIDNext, HighestModSeq and Digest are equal.
	Digest     SetDigest
	Subscribed bool // the name is among the user's subscriptions
}

func (mb *mailbox) status() Status {
	_, sub := mb.user.subs[mb.name]
	return Status{
		ID: mb.id, Name: mb.name, UIDValidity: mb.uidValidity, UIDNext: mb.uidNext, HighestModSeq: mb.highest,
		Messages: len(mb.msgs), Unseen: mb.unseen, Size: mb.size, Digest: mb.sum, Subscribed: sub,
	}
}

// CreateUser creates a user with an empty INBOX, durably. It returns
// [ErrExists] if the user exists.
func (s *Store) CreateUser(ctx context.Context, name string) error {
	if err := ValidateUser(name); err != nil {
		return err
	}
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	if err := s.lockLocal(); err != nil {
		return err
	}
	if s.users[name] != nil {
		s.mu.Unlock()
		return fmt.Errorf("%w: user %q", ErrExists, name)
	}
	u := s.changeLocked(resilmail.ChangeUserCreate, name)
	mb := s.newMailboxChangeLocked(name, Inbox)
	return s.commitAndUnlock([]resilmail.Change{u, mb}, nil)
}

func (s *Store) newMailboxChangeLocked(userName, name string) resilmail.Change {
	c := s.changeLocked(resilmail.ChangeMailboxCreate, userName)
	c.Mailbox = name
	for c.MailboxID.IsZero() || s.byID[c.MailboxID] != nil {
		c.MailboxID = newMailboxID()
	}
	c.UIDValidity = s.nextUIDValidityLocked()
	c.ModSeq = 1
	return c
}

// DeleteUser deletes a user with every mailbox, message and subscription,
// durably. It returns [ErrNotFound] if there is no such user.
func (s *Store) DeleteUser(ctx context.Context, name string) error {
	if err := ValidateUser(name); err != nil {
		return err
	}
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	if err := s.lockLocal(); err != nil {
		return err
	}
	if s.users[name] == nil {
		s.mu.Unlock()
		return fmt.Errorf("%w: user %q", ErrNotFound, name)
	}
	return s.commitAndUnlock([]resilmail.Change{s.changeLocked(resilmail.ChangeUserDelete, name)}, nil)
}

// Users returns the names of the users, sorted.
func (s *Store) Users(ctx context.Context) ([]string, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.ops.Done()
	s.mu.Lock()
	names := make([]string, 0, len(s.users))
	for n := range s.users {
		names = append(names, n)
	}
	if err := s.readBarrierUnlock(); err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

// CreateMailbox creates a mailbox, durably, with a new mailbox id and a
// UIDVALIDITY larger than any the store gave before (so that a mailbox
// deleted and created again never reuses one). It does not create missing
// parents. It returns [ErrInvalidName], [ErrNotFound] for an unknown user or
// [ErrExists].
func (s *Store) CreateMailbox(ctx context.Context, userName, name string) (resilmail.MailboxID, error) {
	name, err := checkNames(userName, name)
	if err != nil {
		return resilmail.MailboxID{}, err
	}
	if err := s.begin(ctx); err != nil {
		return resilmail.MailboxID{}, err
	}
	defer s.ops.Done()
	if err := s.lockLocal(); err != nil {
		return resilmail.MailboxID{}, err
	}
	u := s.users[userName]
	if u == nil {
		s.mu.Unlock()
		return resilmail.MailboxID{}, fmt.Errorf("%w: user %q", ErrNotFound, userName)
	}
	if u.mailboxes[name] != nil {
		s.mu.Unlock()
		return resilmail.MailboxID{}, fmt.Errorf("%w: mailbox %q", ErrExists, name)
	}
	c := s.newMailboxChangeLocked(userName, name)
	return c.MailboxID, s.commitAndUnlock([]resilmail.Change{c}, nil)
}

// RenameMailbox renames a mailbox and, as IMAP RENAME does, every mailbox
// below it in the hierarchy, atomically and durably. Mailbox ids, UIDs and
// UIDVALIDITY stay. INBOX cannot be renamed here (IMAP's RENAME INBOX moves
// its messages; that is the IMAP layer's business). It returns
// [ErrNotFound], [ErrExists] if a new name is taken, or [ErrInvalidName]
// (also for a rename below itself).
func (s *Store) RenameMailbox(ctx context.Context, userName, oldName, newName string) error {
	oldName, err := checkNames(userName, oldName)
	if err != nil {
		return err
	}
	if newName, err = ValidateMailbox(newName); err != nil {
		return err
	}
	if oldName == Inbox || newName == Inbox {
		return fmt.Errorf("%w: INBOX cannot be renamed, nor another mailbox renamed to it", ErrInvalidName)
	}
	if isUnder(newName, oldName) {
		return fmt.Errorf("%w: cannot rename %q below itself", ErrInvalidName, oldName)
	}
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	mb, err := s.lockLocalMailbox(userName, oldName)
	if err != nil {
		return err
	}
	moved := []*mailbox{mb}
	for name, child := range mb.user.mailboxes {
		if name != oldName && isUnder(name, oldName) {
			moved = append(moved, child)
		}
	}
	slices.SortFunc(moved, func(a, b *mailbox) int { return strings.Compare(a.name, b.name) })
	changes := make([]resilmail.Change, 0, len(moved))
	for _, m := range moved {
		to := newName + m.name[len(oldName):]
		if _, err := ValidateMailbox(to); err != nil {
			s.mu.Unlock()
			return err
		}
		if mb.user.mailboxes[to] != nil {
			s.mu.Unlock()
			return fmt.Errorf("%w: mailbox %q", ErrExists, to)
		}
		c := s.changeLocked(resilmail.ChangeMailboxRename, userName)
		c.Mailbox, c.NewName, c.MailboxID = m.name, to, m.id
		changes = append(changes, c)
	}
	return s.commitAndUnlock(changes, nil)
}

// DeleteMailbox deletes a mailbox and its messages, durably. Mailboxes below
// it stay (IMAP's \Noselect rules are the IMAP layer's business). INBOX
// cannot be deleted.
func (s *Store) DeleteMailbox(ctx context.Context, userName, name string) error {
	name, err := checkNames(userName, name)
	if err != nil {
		return err
	}
	if name == Inbox {
		return fmt.Errorf("%w: INBOX cannot be deleted", ErrInvalidName)
	}
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	mb, err := s.lockLocalMailbox(userName, name)
	if err != nil {
		return err
	}
	c := s.changeLocked(resilmail.ChangeMailboxDelete, userName)
	c.Mailbox, c.MailboxID = mb.name, mb.id
	return s.commitAndUnlock([]resilmail.Change{c}, nil)
}

// Subscribe adds name to the user's subscriptions, durably. IMAP
// subscriptions are names: the mailbox need not exist. Subscribing twice is
// a no-op.
func (s *Store) Subscribe(ctx context.Context, userName, name string) error {
	return s.subscribe(ctx, userName, name, true)
}

// Unsubscribe removes name from the user's subscriptions, durably;
// removing a name that is not subscribed is a no-op.
func (s *Store) Unsubscribe(ctx context.Context, userName, name string) error {
	return s.subscribe(ctx, userName, name, false)
}

func (s *Store) subscribe(ctx context.Context, userName, name string, on bool) error {
	name, err := checkNames(userName, name)
	if err != nil {
		return err
	}
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	if err := s.lockLocal(); err != nil {
		return err
	}
	u := s.users[userName]
	if u == nil {
		s.mu.Unlock()
		return fmt.Errorf("%w: user %q", ErrNotFound, userName)
	}
	if _, ok := u.subs[name]; ok == on {
		return s.readBarrierUnlock()
	}
	kind := resilmail.ChangeSubscribe
	if !on {
		kind = resilmail.ChangeUnsubscribe
	}
	c := s.changeLocked(kind, userName)
	c.Mailbox = name
	return s.commitAndUnlock([]resilmail.Change{c}, nil)
}

// Subscriptions returns the user's subscribed names, sorted.
func (s *Store) Subscriptions(ctx context.Context, userName string) ([]string, error) {
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
	names := make([]string, 0, len(u.subs))
	for n := range u.subs {
		names = append(names, n)
	}
	if err := s.readBarrierUnlock(); err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

// ListMailboxes returns the status of every mailbox of the user, sorted by
// name.
func (s *Store) ListMailboxes(ctx context.Context, userName string) ([]Status, error) {
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
	out := make([]Status, 0, len(u.mailboxes))
	for _, mb := range u.mailboxes {
		out = append(out, mb.status())
	}
	if err := s.readBarrierUnlock(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// MailboxStatus returns the status of one mailbox.
func (s *Store) MailboxStatus(ctx context.Context, userName, name string) (Status, error) {
	name, err := checkNames(userName, name)
	if err != nil {
		return Status{}, err
	}
	if err := s.begin(ctx); err != nil {
		return Status{}, err
	}
	defer s.ops.Done()
	s.mu.Lock()
	mb, err := s.mailboxLocked(userName, name)
	if err != nil {
		s.mu.Unlock()
		return Status{}, err
	}
	st := mb.status()
	if err := s.readBarrierUnlock(); err != nil {
		return Status{}, err
	}
	return st, nil
}

// RangeDigest returns the combined digest (see [SetDigest]) and the number
// of the messages of a mailbox whose UIDs are between lo and hi, both
// included. Comparing it on two stores finds the UID ranges where a
// mailbox differs by bisection, without shipping the messages' metadata.
// Its cost grows with the number of messages in the range.
func (s *Store) RangeDigest(ctx context.Context, userName, name string, lo, hi uint32) (SetDigest, int, error) {
	name, err := checkNames(userName, name)
	if err != nil {
		return SetDigest{}, 0, err
	}
	if err := s.begin(ctx); err != nil {
		return SetDigest{}, 0, err
	}
	defer s.ops.Done()
	s.mu.Lock()
	mb, err := s.mailboxLocked(userName, name)
	if err != nil {
		s.mu.Unlock()
		return SetDigest{}, 0, err
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
		return SetDigest{}, 0, err
	}
	return sum, n, nil
}
