package backup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/resilmail/resilmail"
)

// Payload versions of the repository's objects (inside the sealed
// envelope; see doc.go).
const (
	manifestVersion = 1
	changesVersion  = 1
	indexVersion    = 1
)

// ErrFormat is returned for a repository or object of a format version this
// build does not read.
var ErrFormat = errors.New("backup: unknown format")

type enc struct{ b []byte }

func (e *enc) u(v uint64)   { e.b = binary.AppendUvarint(e.b, v) }
func (e *enc) i(v int64)    { e.b = binary.AppendVarint(e.b, v) }
func (e *enc) raw(p []byte) { e.b = append(e.b, p...) }
func (e *enc) str(s string) { e.u(uint64(len(s))); e.b = append(e.b, s...) }

// dec reads what enc wrote; the first error sticks and every read after it
// returns zero values. It never panics and allocates at most in proportion
// to the input.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
}

func (d *dec) u(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad %s", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) i(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad %s", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) u32(what string) uint32 {
	v := d.u(what)
	if v > 1<<32-1 {
		d.fail("%s out of range", what)
	}
	return uint32(v)
}

func (d *dec) raw(what string, n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.fail("%s truncated", what)
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) str(what string, maxLen int) string {
	n := d.u(what)
	if n > uint64(maxLen) {
		d.fail("%s longer than %d bytes", what, maxLen)
		return ""
	}
	p := d.raw(what, int(n))
	if d.err == nil && (!utf8.Valid(p) || strings.IndexByte(string(p), 0) >= 0) {
		d.fail("%s is not UTF-8 without NUL", what)
	}
	return string(p)
}

// count reads a count of items of at least minSize bytes each.
func (d *dec) count(what string, minSize int) int {
	n := d.u(what)
	if n > uint64(len(d.b)/max(minSize, 1)) {
		d.fail("%s of %d items in %d bytes", what, n, len(d.b))
		return 0
	}
	return int(n)
}

// encodeManifest encodes a state (format version 1):
//
//	version 1 byte
//	pos uvarint, history string, epoch uvarint, time varint
//	flag sets: count, then each: count, strings (messages refer to them by index)
//	users: count, then each: name, deleted varint, subscriptions: count, strings
//	mailboxes: count, then each (sorted by user, name, id): id 16 bytes, user,
//	  name, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ uvarints, created and deleted
//	  varints, messages: count, then each in UID order: UID minus the
//	  previous UID uvarint, flags byte (1: no body), MODSEQ uvarint, digest
//	  32 bytes, size uvarint, internal date varint, flag set index uvarint,
//	  added varint, deleted varint
//
// Strings are a uvarint length and UTF-8 bytes; times are Unix nanoseconds.
func encodeManifest(s *state) []byte {
	e := &enc{b: make([]byte, 0, 64+60*len(s.boxes))}
	e.raw([]byte{manifestVersion})
	e.u(s.pos)
	e.str(s.history)
	e.u(uint64(s.epoch))
	e.i(s.time)
	boxes := s.sortedBoxes()
	sets := map[string]int{}
	var setList [][]string
	key := func(f []string) string { return strings.Join(f, "\x00") }
	for _, b := range boxes {
		for i := range b.msgs {
			k := key(b.msgs[i].flags)
			if _, ok := sets[k]; !ok {
				sets[k] = len(setList)
				setList = append(setList, b.msgs[i].flags)
			}
		}
	}
	e.u(uint64(len(setList)))
	for _, f := range setList {
		e.u(uint64(len(f)))
		for _, x := range f {
			e.str(x)
		}
	}
	users := make([]string, 0, len(s.users))
	for n := range s.users {
		users = append(users, n)
	}
	slices.Sort(users)
	e.u(uint64(len(users)))
	for _, n := range users {
		u := s.users[n]
		e.str(u.name)
		e.i(u.deleted)
		e.u(uint64(len(u.subs)))
		for _, x := range u.subs {
			e.str(x)
		}
	}
	e.u(uint64(len(boxes)))
	for _, b := range boxes {
		e.raw(b.id[:])
		e.str(b.user)
		e.str(b.name)
		e.u(uint64(b.uidValidity))
		e.u(uint64(b.uidNext))
		e.u(b.highest)
		e.i(b.created)
		e.i(b.deleted)
		e.u(uint64(len(b.msgs)))
		var prev uint32
		for i := range b.msgs {
			m := &b.msgs[i]
			e.u(uint64(m.uid - prev))
			prev = m.uid
			var fl byte
			if m.noBody {
				fl = 1
			}
			e.raw([]byte{fl})
			e.u(m.modseq)
			e.raw(m.digest[:])
			e.u(uint64(m.size))
			e.i(m.date)
			e.u(uint64(sets[key(m.flags)]))
			e.i(m.added)
			e.i(m.deleted)
		}
	}
	return e.b
}

// decodeManifest decodes what encodeManifest wrote, checking its structure:
// known version, UTF-8 names within the limits, users that exist, UIDs
// ascending and below UIDNEXT, no trailing bytes.
func decodeManifest(p []byte) (*state, error) {
	if len(p) < 1 {
		return nil, fmt.Errorf("%w: empty manifest", ErrCorrupt)
	}
	if p[0] != manifestVersion {
		return nil, fmt.Errorf("%w: manifest version %d, this build reads %d", ErrFormat, p[0], manifestVersion)
	}
	d := &dec{b: p[1:]}
	s := newState()
	s.pos = d.u("position")
	s.history = d.str("history", 256)
	s.epoch = resilmail.Epoch(d.u("epoch"))
	s.time = d.i("time")
	nsets := d.count("flag sets", 1)
	sets := make([][]string, 0, nsets)
	for i := 0; i < nsets && d.err == nil; i++ {
		n := d.count("flags", 2)
		if n > resilmail.MaxFlags {
			d.fail("%d flags", n)
		}
		var f []string
		for j := 0; j < n && d.err == nil; j++ {
			x := d.str("flag", resilmail.MaxFlagLen)
			if x == "" {
				d.fail("empty flag")
			}
			f = append(f, x)
		}
		sets = append(sets, f)
	}
	nusers := d.count("users", 3)
	for i := 0; i < nusers && d.err == nil; i++ {
		u := &userEntry{name: d.str("user", resilmail.MaxUserLen)}
		u.deleted = d.i("user deleted")
		nsubs := d.count("subscriptions", 2)
		for j := 0; j < nsubs && d.err == nil; j++ {
			u.subs = append(u.subs, d.str("subscription", resilmail.MaxMailboxLen))
		}
		if d.err == nil && (u.name == "" || s.users[u.name] != nil) {
			d.fail("user %q empty or twice", u.name)
		}
		if d.err == nil && !slices.IsSorted(u.subs) {
			d.fail("subscriptions of %q not sorted", u.name)
		}
		s.users[u.name] = u
	}
	nboxes := d.count("mailboxes", 24)
	for i := 0; i < nboxes && d.err == nil; i++ {
		b := &boxEntry{}
		copy(b.id[:], d.raw("mailbox id", 16))
		b.user = d.str("mailbox user", resilmail.MaxUserLen)
		b.name = d.str("mailbox name", resilmail.MaxMailboxLen)
		b.uidValidity = d.u32("uidvalidity")
		b.uidNext = d.u32("uidnext")
		b.highest = d.u("highestmodseq")
		b.created = d.i("created")
		b.deleted = d.i("deleted")
		if d.err != nil {
			break
		}
		if b.id.IsZero() || s.boxes[b.id] != nil || s.users[b.user] == nil || b.name == "" || b.uidValidity == 0 {
			d.fail("mailbox %s (%q of %q) invalid, twice or of an unknown user", b.id, b.name, b.user)
			break
		}
		nmsgs := d.count("messages", 38)
		b.msgs = make([]msgEntry, 0, nmsgs)
		var prev uint32
		for j := 0; j < nmsgs && d.err == nil; j++ {
			var m msgEntry
			delta := d.u32("uid")
			if delta == 0 || uint64(prev)+uint64(delta) >= uint64(b.uidNext) {
				d.fail("uid %d+%d not ascending or not below uidnext %d", prev, delta, b.uidNext)
				break
			}
			m.uid = prev + delta
			prev = m.uid
			fl := d.raw("message flags", 1)
			if d.err == nil && fl[0] > 1 {
				d.fail("message flags %#x", fl[0])
			}
			m.noBody = d.err == nil && fl[0] == 1
			m.modseq = d.u("modseq")
			copy(m.digest[:], d.raw("digest", 32))
			size := d.u("size")
			if size > 1<<62 {
				d.fail("size out of range")
			}
			m.size = int64(size)
			m.date = d.i("internal date")
			si := d.u("flag set")
			if si >= uint64(len(sets)) {
				d.fail("flag set %d of %d", si, len(sets))
				break
			}
			m.flags = sets[si]
			m.added = d.i("added")
			m.deleted = d.i("deleted")
			b.msgs = append(b.msgs, m)
		}
		s.boxes[b.id] = b
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d bytes after the manifest", len(d.b))
	}
	if d.err != nil {
		return nil, fmt.Errorf("manifest: %w", d.err)
	}
	return s, nil
}

// encodeChanges encodes a segment of changes (format version 1): version
// byte, history string, count, then each change as a uvarint length and
// its binary encoding ([resilmail.Change.MarshalBinary]).
func encodeChanges(history string, changes []resilmail.Change) ([]byte, error) {
	e := &enc{b: make([]byte, 0, 64+80*len(changes))}
	e.raw([]byte{changesVersion})
	e.str(history)
	e.u(uint64(len(changes)))
	var buf []byte
	for i := range changes {
		var err error
		buf, err = changes[i].AppendBinary(buf[:0])
		if err != nil {
			return nil, err
		}
		e.u(uint64(len(buf)))
		e.raw(buf)
	}
	return e.b, nil
}

// decodeChanges decodes a segment; the changes must have ascending
// positions.
func decodeChanges(p []byte) (history string, out []resilmail.Change, err error) {
	if len(p) < 1 {
		return "", nil, fmt.Errorf("%w: empty change segment", ErrCorrupt)
	}
	if p[0] != changesVersion {
		return "", nil, fmt.Errorf("%w: change segment version %d, this build reads %d", ErrFormat, p[0], changesVersion)
	}
	d := &dec{b: p[1:]}
	history = d.str("history", 256)
	n := d.count("changes", 3)
	out = make([]resilmail.Change, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		l := d.count("change", 1)
		raw := d.raw("change", l)
		if d.err != nil {
			break
		}
		var c resilmail.Change
		if err := c.UnmarshalBinary(raw); err != nil {
			d.fail("change %d: %v", i, err)
			break
		}
		if c.Seq == 0 || len(out) > 0 && c.Seq <= out[len(out)-1].Seq {
			d.fail("change %d: position %d not ascending", i, c.Seq)
			break
		}
		out = append(out, c)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d bytes after the changes", len(d.b))
	}
	if d.err != nil {
		return "", nil, fmt.Errorf("change segment: %w", d.err)
	}
	return history, out, nil
}

// An indexEntry locates a body in a pack: in the frame (a sealed object
// holding several bodies one after the other, compressed together) at off,
// of length bytes, from inner in the frame's content, of size bytes.
type indexEntry struct {
	digest resilmail.Digest
	off    int64 // of the sealed frame in the pack
	length int64 // of the sealed frame
	inner  int64 // of the body in the frame's content
	size   int64 // of the body
}

// encodeIndex encodes a pack's index (format version 1): version byte,
// count, then each entry: digest 32 bytes, then the frame's offset and
// length, the body's offset in the frame and its size, as uvarints.
func encodeIndex(entries []indexEntry) []byte {
	e := &enc{b: make([]byte, 0, 8+48*len(entries))}
	e.raw([]byte{indexVersion})
	e.u(uint64(len(entries)))
	for _, x := range entries {
		e.raw(x.digest[:])
		e.u(uint64(x.off))
		e.u(uint64(x.length))
		e.u(uint64(x.inner))
		e.u(uint64(x.size))
	}
	return e.b
}

func decodeIndex(p []byte) ([]indexEntry, error) {
	if len(p) < 1 {
		return nil, fmt.Errorf("%w: empty index", ErrCorrupt)
	}
	if p[0] != indexVersion {
		return nil, fmt.Errorf("%w: index version %d, this build reads %d", ErrFormat, p[0], indexVersion)
	}
	d := &dec{b: p[1:]}
	n := d.count("index entries", 36)
	out := make([]indexEntry, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		var x indexEntry
		copy(x.digest[:], d.raw("digest", 32))
		off, length, inner, size := d.u("offset"), d.u("length"), d.u("inner offset"), d.u("size")
		if off > 1<<40 || length > 1<<40 || inner > 1<<40 || size > 1<<40 {
			d.fail("index entry %d out of range", i)
		}
		x.off, x.length, x.inner, x.size = int64(off), int64(length), int64(inner), int64(size)
		out = append(out, x)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d bytes after the index", len(d.b))
	}
	if d.err != nil {
		return nil, fmt.Errorf("index: %w", d.err)
	}
	return out, nil
}
