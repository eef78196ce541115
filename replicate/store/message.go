package store

import (
	"context"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/resilmail/resilmail"
)

// Message is a message's metadata, as FETCH reports it.
type Message struct {
	UID          uint32           // IMAP UID
	ModSeq       uint64           // RFC 7162 MODSEQ
	Flags        []string         // system flags first, then keywords
	InternalDate time.Time        // IMAP INTERNALDATE, UTC
	Size         int64            // bytes of the body
	Digest       resilmail.Digest // names the body; see [Store.Body]
	// Corrupt is set when the body failed its check: it will not be served
	// until a good copy is stored.
	Corrupt bool
}

// Append stores a message in a mailbox and returns its UID. When Append
// returns nil the body (in the journal, unless a message of the same
// content is stored already, and as one file named by its SHA-256, shared
// with every other message of the same content) and the journal record are
// on stable storage; concurrent appends share the journal's fsyncs, and
// Append does no other fsync. The whole body is held in memory while it is
// stored.
//
// flags are IMAP flags and keywords (\Recent is refused); a zero
// internalDate means now. Append reads body to EOF (at most
// Options.MaxMessageSize bytes, else [ErrTooLarge]). It returns
// [ErrNotFound] for an unknown user or mailbox, [ErrInvalidName],
// [ErrInvalidFlag], [ErrReadOnly] on a replica, or [ErrStorage].
func (s *Store) Append(ctx context.Context, userName, mailboxName string, flags []string, internalDate time.Time, body io.Reader) (uint32, error) {
	name, err := checkNames(userName, mailboxName)
	if err != nil {
		return 0, err
	}
	fs, err := parseFlags(flags)
	if err != nil {
		return 0, err
	}
	if err := s.begin(ctx); err != nil {
		return 0, err
	}
	defer s.ops.Done()
	if internalDate.IsZero() {
		internalDate = s.opts.Now()
	}
	internalDate = internalDate.UTC().Round(0)
	// Fail fast, before reading the body.
	if _, err := s.lockLocalMailbox(userName, name); err != nil {
		return 0, err
	}
	s.mu.Unlock()

	d, size, err := s.storeBody(ctx, body, nil)
	if err != nil {
		return 0, err
	}
	defer s.release(d)

	mb, err := s.lockLocalMailbox(userName, name)
	if err != nil {
		return 0, err
	}
	if mb.uidNext == math.MaxUint32 {
		s.mu.Unlock()
		return 0, fmt.Errorf("store: mailbox %q has used every UID; it needs a new UIDVALIDITY", name)
	}
	c := s.changeLocked(resilmail.ChangeAppend, userName)
	c.Mailbox, c.MailboxID, c.UIDValidity = mb.name, mb.id, mb.uidValidity
	c.UID, c.Digest, c.Size, c.InternalDate = mb.uidNext, d, size, internalDate
	c.Flags, c.ModSeq = fs.list(), mb.highest+1
	if err := s.commitAndUnlock([]resilmail.Change{c}, nil); err != nil {
		return 0, err
	}
	return c.UID, nil
}

// A CopyResult maps the source UIDs of a COPY or MOVE to the new UIDs, as
// the COPYUID response code does: the n-th UID of Source became the n-th
// of Dest.
type CopyResult struct {
	UIDValidity uint32           // of the destination
	Source      resilmail.UIDSet // the messages copied
	Dest        resilmail.UIDSet // their UIDs in the destination
}

// Copy copies the messages uids (those that exist) of mailbox from into
// mailbox to, durably and atomically, keeping their flags and internal
// dates; the copies share the bodies. Copying into the same mailbox is
// allowed.
func (s *Store) Copy(ctx context.Context, userName, from string, uids resilmail.UIDSet, to string) (CopyResult, error) {
	return s.copy(ctx, userName, from, uids, to, false)
}

// Move is Copy followed by an expunge of the originals, as IMAP MOVE (RFC
// 6851), in one atomic journal record: the appends come first, so that a
// replica never sees the messages gone from both mailboxes.
func (s *Store) Move(ctx context.Context, userName, from string, uids resilmail.UIDSet, to string) (CopyResult, error) {
	return s.copy(ctx, userName, from, uids, to, true)
}

func (s *Store) copy(ctx context.Context, userName, from string, uids resilmail.UIDSet, to string, move bool) (CopyResult, error) {
	from, err := checkNames(userName, from)
	if err != nil {
		return CopyResult{}, err
	}
	if to, err = ValidateMailbox(to); err != nil {
		return CopyResult{}, err
	}
	if !uids.Valid() {
		return CopyResult{}, fmt.Errorf("store: UID set %s is not normalized", uids)
	}
	if err := s.begin(ctx); err != nil {
		return CopyResult{}, err
	}
	defer s.ops.Done()
	src, err := s.lockLocalMailbox(userName, from)
	if err != nil {
		return CopyResult{}, err
	}
	dst, err := s.mailboxLocked(userName, to)
	if err != nil {
		s.mu.Unlock()
		return CopyResult{}, err
	}
	res := CopyResult{UIDValidity: dst.uidValidity}
	var changes []resilmail.Change
	uid, modseq := dst.uidNext, dst.highest+1
	src.each(uids, func(m *message) {
		c := s.changeLocked(resilmail.ChangeAppend, userName)
		c.Mailbox, c.MailboxID, c.UIDValidity = dst.name, dst.id, dst.uidValidity
		c.UID, c.Digest, c.Size, c.Flags, c.ModSeq = uid, m.digest, m.size, m.flags.list(), modseq
		if m.dateSec != 0 || m.dateNsec != 0 {
			c.InternalDate = time.Unix(m.dateSec, int64(m.dateNsec)).UTC()
		}
		changes = append(changes, c)
		res.Source = res.Source.Add(m.uid)
		res.Dest = res.Dest.Add(uid)
		uid++
	})
	if len(changes) == 0 {
		return res, s.readBarrierUnlock()
	}
	if uint64(dst.uidNext)+uint64(len(changes)) >= math.MaxUint32 {
		s.mu.Unlock()
		return CopyResult{}, fmt.Errorf("store: mailbox %q has too few UIDs left; it needs a new UIDVALIDITY", to)
	}
	if move {
		c := s.changeLocked(resilmail.ChangeExpunge, userName)
		c.Mailbox, c.MailboxID, c.UIDValidity, c.UIDs = src.name, src.id, src.uidValidity, res.Source
		c.ModSeq = src.highest + 1
		if src == dst {
			c.ModSeq++
		}
		changes = append(changes, c)
	}
	return res, s.commitAndUnlock(changes, nil)
}

// Expunge removes the messages uids (those that exist) from a mailbox,
// durably, and returns the UIDs it removed. A body no other message
// references is deleted once the expunge is durable.
func (s *Store) Expunge(ctx context.Context, userName, mailboxName string, uids resilmail.UIDSet) (resilmail.UIDSet, error) {
	name, err := checkNames(userName, mailboxName)
	if err != nil {
		return nil, err
	}
	if !uids.Valid() {
		return nil, fmt.Errorf("store: UID set %s is not normalized", uids)
	}
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.ops.Done()
	mb, err := s.lockLocalMailbox(userName, name)
	if err != nil {
		return nil, err
	}
	gone := mb.present(uids)
	if gone.IsEmpty() {
		return nil, s.readBarrierUnlock()
	}
	c := s.changeLocked(resilmail.ChangeExpunge, userName)
	c.Mailbox, c.MailboxID, c.UIDValidity, c.UIDs, c.ModSeq = mb.name, mb.id, mb.uidValidity, gone, mb.highest+1
	return gone, s.commitAndUnlock([]resilmail.Change{c}, nil)
}

// SetFlags replaces the flags of the messages uids (IMAP STORE FLAGS),
// durably. The messages whose flags change get a new mod-sequence, which
// SetFlags returns (0 if nothing changed).
func (s *Store) SetFlags(ctx context.Context, userName, mailboxName string, uids resilmail.UIDSet, flags []string) (uint64, error) {
	mod, _, err := s.storeFlags(ctx, userName, mailboxName, uids, resilmail.FlagsSet, flags, noCondition)
	return mod, err
}

// AddFlags adds flags to the messages uids (STORE +FLAGS), as SetFlags.
func (s *Store) AddFlags(ctx context.Context, userName, mailboxName string, uids resilmail.UIDSet, flags []string) (uint64, error) {
	mod, _, err := s.storeFlags(ctx, userName, mailboxName, uids, resilmail.FlagsAdd, flags, noCondition)
	return mod, err
}

// RemoveFlags removes flags from the messages uids (STORE -FLAGS), as
// SetFlags.
func (s *Store) RemoveFlags(ctx context.Context, userName, mailboxName string, uids resilmail.UIDSet, flags []string) (uint64, error) {
	mod, _, err := s.storeFlags(ctx, userName, mailboxName, uids, resilmail.FlagsRemove, flags, noCondition)
	return mod, err
}

// StoreFlagsIf is SetFlags, AddFlags or RemoveFlags (by op) under RFC
// 7162's UNCHANGEDSINCE: a message whose mod-sequence is above
// unchangedSince is left as it is and returned in modified; the others
// are changed as one commit, whose mod-sequence is returned (zero when no
// flag changed). The check and the change are atomic: no other write to
// the mailbox comes between them.
func (s *Store) StoreFlagsIf(ctx context.Context, userName, mailboxName string, uids resilmail.UIDSet, op resilmail.FlagOp, flags []string, unchangedSince uint64) (modseq uint64, modified resilmail.UIDSet, err error) {
	switch op {
	case resilmail.FlagsSet, resilmail.FlagsAdd, resilmail.FlagsRemove:
	default:
		return 0, nil, fmt.Errorf("store: unknown flag operation %v", op)
	}
	return s.storeFlags(ctx, userName, mailboxName, uids, op, flags, unchangedSince)
}

// noCondition is the unchangedSince of an unconditional store.
const noCondition = ^uint64(0)

func (s *Store) storeFlags(ctx context.Context, userName, mailboxName string, uids resilmail.UIDSet, op resilmail.FlagOp, flags []string, unchangedSince uint64) (uint64, resilmail.UIDSet, error) {
	name, err := checkNames(userName, mailboxName)
	if err != nil {
		return 0, nil, err
	}
	if !uids.Valid() {
		return 0, nil, fmt.Errorf("store: UID set %s is not normalized", uids)
	}
	g, err := parseFlags(flags)
	if err != nil {
		return 0, nil, err
	}
	if err := s.begin(ctx); err != nil {
		return 0, nil, err
	}
	defer s.ops.Done()
	mb, err := s.lockLocalMailbox(userName, name)
	if err != nil {
		return 0, nil, err
	}
	var changed, modified resilmail.UIDSet
	mb.each(uids, func(m *message) {
		if m.modseq > unchangedSince {
			modified = modified.Add(m.uid)
			return
		}
		if _, ch := m.flags.apply(op, g); ch {
			changed = changed.Add(m.uid)
		}
	})
	if changed.IsEmpty() {
		return 0, modified, s.readBarrierUnlock()
	}
	c := s.changeLocked(resilmail.ChangeFlags, userName)
	c.Mailbox, c.MailboxID, c.UIDValidity, c.UIDs = mb.name, mb.id, mb.uidValidity, changed
	c.FlagOp, c.Flags, c.ModSeq = op, g.list(), mb.highest+1
	if err := s.commitAndUnlock([]resilmail.Change{c}, nil); err != nil {
		return 0, nil, err
	}
	return c.ModSeq, modified, nil
}

// A Query selects messages for Fetch.
type Query struct {
	// UIDs selects messages by UID; nil means every message.
	UIDs resilmail.UIDSet
	// ChangedSince, if not zero, keeps only messages whose mod-sequence is
	// higher (RFC 7162 CHANGEDSINCE).
	ChangedSince uint64
}

// Fetch returns the metadata of the messages of a mailbox that q selects,
// in UID order.
func (s *Store) Fetch(ctx context.Context, userName, mailboxName string, q Query) ([]Message, error) {
	name, err := checkNames(userName, mailboxName)
	if err != nil {
		return nil, err
	}
	if !q.UIDs.Valid() {
		return nil, fmt.Errorf("store: UID set %s is not normalized", q.UIDs)
	}
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.ops.Done()
	s.mu.Lock()
	mb, err := s.mailboxLocked(userName, name)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	var out []Message
	mb.each(q.UIDs, func(m *message) {
		if m.modseq <= q.ChangedSince {
			return
		}
		_, bad := s.corrupt[m.digest]
		msg := Message{UID: m.uid, ModSeq: m.modseq, Flags: m.flags.list(), Size: m.size, Digest: m.digest, Corrupt: bad}
		if m.dateSec != 0 || m.dateNsec != 0 {
			msg.InternalDate = time.Unix(m.dateSec, int64(m.dateNsec)).UTC()
		}
		out = append(out, msg)
	})
	if err := s.readBarrierUnlock(); err != nil {
		return nil, err
	}
	return out, nil
}
