package backup

import (
	"cmp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
)

// The repository's model of a mailbox store: what a snapshot manifest
// holds. It is the store's state (users, subscriptions, mailboxes with their
// UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ, messages with UID, body digest,
// size, internal date, flags and MODSEQ) plus, for retention, when each
// message was first backed up and when it was deleted: a deleted message
// stays in the model, marked, until retention drops it.

// state is the model at one position of the source's journal.
type state struct {
	pos     uint64          // last change of the source's journal applied
	history string          // the source's history id, if it has one
	epoch   resilmail.Epoch // highest epoch seen
	time    int64           // Unix ns of the last change applied (or of the full read)
	users   map[string]*userEntry
	boxes   map[resilmail.MailboxID]*boxEntry
}

type userEntry struct {
	name    string
	subs    []string // sorted
	deleted int64    // Unix ns; 0 while the user exists
}

type boxEntry struct {
	id          resilmail.MailboxID
	user        string
	name        string
	uidValidity uint32
	uidNext     uint32
	highest     uint64
	created     int64 // Unix ns
	deleted     int64 // Unix ns; 0 while the mailbox exists
	msgs        []msgEntry
}

// msgEntry is a message; flags is shared between messages with equal flags
// and never modified in place.
type msgEntry struct {
	uid     uint32
	noBody  bool // the backup could not read the body (see Summary.Lost)
	modseq  uint64
	digest  resilmail.Digest
	size    int64
	date    int64 // internal date, Unix ns
	flags   []string
	added   int64 // Unix ns of the change that appended it
	deleted int64 // Unix ns of the change that expunged it; 0 while live
}

func newState() *state {
	return &state{users: make(map[string]*userEntry), boxes: make(map[resilmail.MailboxID]*boxEntry)}
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func (b *boxEntry) find(uid uint32) int {
	return sort.Search(len(b.msgs), func(i int) bool { return b.msgs[i].uid >= uid })
}

func (b *boxEntry) get(uid uint32) *msgEntry {
	if i := b.find(uid); i < len(b.msgs) && b.msgs[i].uid == uid {
		return &b.msgs[i]
	}
	return nil
}

// liveBox returns the live mailbox named name of user, or nil.
func (s *state) liveBox(user, name string) *boxEntry {
	for _, b := range s.boxes {
		if b.deleted == 0 && b.user == user && b.name == name {
			return b
		}
	}
	return nil
}

func (s *state) deleteBox(b *boxEntry, t int64) {
	if b.deleted != 0 {
		return
	}
	b.deleted = t
	for i := range b.msgs {
		if b.msgs[i].deleted == 0 {
			b.msgs[i].deleted = t
		}
	}
}

// apply applies one change of the source's journal (or of a full read).
// Like the store, it is idempotent and skips what no longer applies.
func (s *state) apply(c *resilmail.Change) {
	t := unixNano(c.Time)
	if c.Seq > s.pos {
		s.pos = c.Seq
	}
	s.epoch = max(s.epoch, c.Epoch)
	s.time = max(s.time, t)
	switch c.Kind {
	case resilmail.ChangeUserCreate:
		if u := s.users[c.User]; u == nil || u.deleted != 0 {
			s.users[c.User] = &userEntry{name: c.User}
		}
	case resilmail.ChangeUserDelete:
		if u := s.users[c.User]; u != nil && u.deleted == 0 {
			u.deleted, u.subs = t, nil
		}
		for _, b := range s.boxes {
			if b.user == c.User {
				s.deleteBox(b, t)
			}
		}
	case resilmail.ChangeSubscribe, resilmail.ChangeUnsubscribe:
		u := s.users[c.User]
		if u == nil || u.deleted != 0 {
			u = &userEntry{name: c.User}
			s.users[c.User] = u
		}
		i, found := slices.BinarySearch(u.subs, c.Mailbox)
		switch {
		case c.Kind == resilmail.ChangeSubscribe && !found:
			u.subs = slices.Insert(slices.Clone(u.subs), i, c.Mailbox)
		case c.Kind == resilmail.ChangeUnsubscribe && found:
			u.subs = slices.Delete(slices.Clone(u.subs), i, i+1)
		}
	case resilmail.ChangeMailboxCreate:
		if s.boxes[c.MailboxID] != nil {
			return
		}
		if u := s.users[c.User]; u == nil || u.deleted != 0 {
			s.users[c.User] = &userEntry{name: c.User}
		}
		if old := s.liveBox(c.User, c.Mailbox); old != nil {
			s.deleteBox(old, t)
		}
		s.boxes[c.MailboxID] = &boxEntry{id: c.MailboxID, user: c.User, name: c.Mailbox, uidValidity: c.UIDValidity,
			uidNext: 1, highest: c.ModSeq, created: t}
	case resilmail.ChangeMailboxRename:
		b := s.boxes[c.MailboxID]
		if b == nil || b.deleted != 0 || b.user != c.User {
			return
		}
		if other := s.liveBox(c.User, c.NewName); other != nil && other != b {
			s.deleteBox(other, t)
		}
		b.name = c.NewName
	case resilmail.ChangeMailboxDelete:
		if b := s.boxes[c.MailboxID]; b != nil && b.user == c.User {
			s.deleteBox(b, t)
		}
	case resilmail.ChangeAppend, resilmail.ChangeRestore:
		b := s.boxFor(c)
		if b == nil || c.UID == 1<<32-1 {
			return
		}
		m := msgEntry{uid: c.UID, modseq: c.ModSeq, digest: c.Digest, size: c.Size,
			date: unixNano(c.InternalDate), flags: internFlags(c.Flags), added: t}
		switch {
		case c.UID >= b.uidNext:
			b.msgs = append(b.msgs, m)
			b.uidNext = c.UID + 1
		case c.Kind == resilmail.ChangeAppend:
			return // there already, or given before and expunged since
		default:
			// A restore puts a message back under its UID if the mailbox
			// lacks it (a deleted entry of that UID is replaced: it is
			// there again).
			i := b.find(c.UID)
			if i < len(b.msgs) && b.msgs[i].uid == c.UID {
				if b.msgs[i].deleted == 0 {
					return
				}
				b.msgs[i] = m
			} else {
				b.msgs = slices.Insert(b.msgs, i, m)
			}
		}
		b.highest = max(b.highest, c.ModSeq)
	case resilmail.ChangeReserve:
		if b := s.boxFor(c); b != nil && c.UID < 1<<32-1 {
			b.uidNext = max(b.uidNext, c.UID+1)
			b.highest = max(b.highest, c.ModSeq)
		}
	case resilmail.ChangeExpunge:
		b := s.boxFor(c)
		if b == nil {
			return
		}
		for _, r := range c.UIDs {
			for i := b.find(r.Start); i < len(b.msgs) && b.msgs[i].uid <= r.Stop; i++ {
				if b.msgs[i].deleted == 0 {
					b.msgs[i].deleted = t
				}
			}
		}
		if n := len(c.UIDs); n > 0 && c.UIDs[n-1].Stop >= b.uidNext {
			b.uidNext = c.UIDs[n-1].Stop + 1
		}
		b.highest = max(b.highest, c.ModSeq)
	case resilmail.ChangeFlags:
		b := s.boxFor(c)
		if b == nil {
			return
		}
		for _, r := range c.UIDs {
			for i := b.find(r.Start); i < len(b.msgs) && b.msgs[i].uid <= r.Stop; i++ {
				m := &b.msgs[i]
				if m.deleted != 0 || m.modseq >= c.ModSeq {
					continue
				}
				m.flags, m.modseq = applyFlags(m.flags, c.FlagOp, c.Flags), c.ModSeq
			}
		}
		b.highest = max(b.highest, c.ModSeq)
	}
}

// boxFor returns the live mailbox a message change applies to.
func (s *state) boxFor(c *resilmail.Change) *boxEntry {
	b := s.boxes[c.MailboxID]
	if b == nil || b.deleted != 0 || b.user != c.User || b.uidValidity != c.UIDValidity {
		return nil
	}
	return b
}

// internFlags returns flags sorted as the store lists them (system flags,
// then keywords, each case-insensitively), without duplicates.
func internFlags(flags []string) []string {
	if len(flags) == 0 {
		return nil
	}
	out := slices.Clone(flags)
	slices.SortFunc(out, flagCompare)
	return slices.CompactFunc(out, strings.EqualFold)
}

func flagCompare(a, b string) int {
	as, bs := strings.HasPrefix(a, `\`), strings.HasPrefix(b, `\`)
	if as != bs {
		if as {
			return -1
		}
		return 1
	}
	return cmp.Compare(strings.ToLower(a), strings.ToLower(b))
}

func applyFlags(cur []string, op resilmail.FlagOp, g []string) []string {
	switch op {
	case resilmail.FlagsSet:
		return internFlags(g)
	case resilmail.FlagsAdd:
		return internFlags(append(slices.Clone(cur), g...))
	case resilmail.FlagsRemove:
		out := make([]string, 0, len(cur))
		for _, f := range cur {
			if !slices.ContainsFunc(g, func(x string) bool { return strings.EqualFold(x, f) }) {
				out = append(out, f)
			}
		}
		if len(out) == 0 {
			return nil
		}
		return out
	}
	return cur
}

// expire drops what retention no longer keeps at time now: messages
// deleted before now-retention, then mailboxes and users deleted before it
// that hold no message any more.
func (s *state) expire(now int64, retention time.Duration) (dropped int) {
	cut := now - int64(retention)
	for id, b := range s.boxes {
		keep := b.msgs[:0]
		for _, m := range b.msgs {
			if m.deleted != 0 && m.deleted < cut {
				dropped++
				continue
			}
			keep = append(keep, m)
		}
		clear(b.msgs[len(keep):])
		b.msgs = keep
		if b.deleted != 0 && b.deleted < cut && len(b.msgs) == 0 {
			delete(s.boxes, id)
		}
	}
	for name, u := range s.users {
		if u.deleted == 0 || u.deleted >= cut {
			continue
		}
		has := false
		for _, b := range s.boxes {
			if b.user == name {
				has = true
				break
			}
		}
		if !has {
			delete(s.users, name)
		}
	}
	return dropped
}

// sortedBoxes returns the mailboxes by user, name and id.
func (s *state) sortedBoxes() []*boxEntry {
	out := make([]*boxEntry, 0, len(s.boxes))
	for _, b := range s.boxes {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b *boxEntry) int {
		if c := strings.Compare(a.user, b.user); c != 0 {
			return c
		}
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
		return slices.Compare(a.id[:], b.id[:])
	})
	return out
}

// digests calls fn for every body digest the state references.
func (s *state) digests(fn func(d resilmail.Digest)) {
	for _, b := range s.boxes {
		for i := range b.msgs {
			if !b.msgs[i].noBody {
				fn(b.msgs[i].digest)
			}
		}
	}
}

// counts returns the numbers of live and deleted messages.
func (s *state) counts() (live, deleted int, bytes int64) {
	for _, b := range s.boxes {
		for i := range b.msgs {
			if b.msgs[i].deleted == 0 {
				live++
				bytes += b.msgs[i].size
			} else {
				deleted++
			}
		}
	}
	return
}
