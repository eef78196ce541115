package resilmail

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// An Epoch numbers the terms of the primaries of a mailbox store. Every
// change carries the epoch of the primary that made it; a promotion raises
// the epoch before the new primary writes, and a node refuses changes
// stamped with an epoch lower than the highest it has seen (fencing), so
// that an old primary that comes back cannot overwrite newer state. Zero
// means "no epoch yet".
type Epoch uint64

// A ChangeKind says what a [Change] does.
type ChangeKind uint8

// The kinds of [Change]. The numbers are part of the encoding: they never
// change and are never reused.
const (
	// ChangeAppend adds one message (UID, Digest, Size, InternalDate,
	// Flags) to a mailbox.
	ChangeAppend ChangeKind = 1
	// ChangeExpunge removes the messages UIDs from a mailbox.
	ChangeExpunge ChangeKind = 2
	// ChangeFlags applies FlagOp with Flags to the messages UIDs.
	ChangeFlags ChangeKind = 3
	// ChangeMailboxCreate creates the mailbox MailboxID named Mailbox with
	// UIDValidity.
	ChangeMailboxCreate ChangeKind = 4
	// ChangeMailboxRename renames the mailbox MailboxID from Mailbox to
	// NewName. Renaming a mailbox with children is one rename per mailbox,
	// made atomically.
	ChangeMailboxRename ChangeKind = 5
	// ChangeMailboxDelete deletes the mailbox MailboxID and its messages.
	ChangeMailboxDelete ChangeKind = 6
	// ChangeSubscribe adds the name Mailbox to the user's subscriptions
	// (IMAP subscriptions are names; the mailbox need not exist).
	ChangeSubscribe ChangeKind = 7
	// ChangeUnsubscribe removes the name Mailbox from the subscriptions.
	ChangeUnsubscribe ChangeKind = 8
	// ChangeUserCreate creates the user User (with no mailbox).
	ChangeUserCreate ChangeKind = 9
	// ChangeUserDelete deletes the user User, every mailbox, message and
	// subscription of it.
	ChangeUserDelete ChangeKind = 10
	// ChangeEpoch raises the store's epoch to Epoch. It has no user.
	ChangeEpoch ChangeKind = 11
	// ChangeReserve marks the UIDs of mailbox MailboxID up to UID as used
	// (its UIDNEXT becomes at least UID+1) and raises its HIGHESTMODSEQ to
	// ModSeq, without adding or removing a message. Repair sends it to
	// give a replica's mailbox the primary's UIDNEXT and HIGHESTMODSEQ
	// when the primary's highest UIDs were expunged or its last changes
	// touched no message the replica lacks.
	ChangeReserve ChangeKind = 12
	// ChangeRestore puts one message (the fields of ChangeAppend) back
	// into a mailbox under its UID, even below the mailbox's UIDNEXT, if
	// the mailbox lacks that UID. Repair sends it to give a replica a
	// message of the primary that the replica lost; an append, by
	// contrast, never goes below UIDNEXT (a UID below it was used, and its
	// message expunged since).
	ChangeRestore ChangeKind = 13
)

var changeKindNames = [...]string{
	ChangeAppend:        "append",
	ChangeExpunge:       "expunge",
	ChangeFlags:         "flags",
	ChangeMailboxCreate: "mailbox-create",
	ChangeMailboxRename: "mailbox-rename",
	ChangeMailboxDelete: "mailbox-delete",
	ChangeSubscribe:     "subscribe",
	ChangeUnsubscribe:   "unsubscribe",
	ChangeUserCreate:    "user-create",
	ChangeUserDelete:    "user-delete",
	ChangeEpoch:         "epoch",
	ChangeReserve:       "reserve",
	ChangeRestore:       "restore",
}

// String returns the kind's name, e.g. "append".
func (k ChangeKind) String() string {
	if int(k) < len(changeKindNames) && changeKindNames[k] != "" {
		return changeKindNames[k]
	}
	return "ChangeKind(" + strconv.Itoa(int(k)) + ")"
}

// A FlagOp says how a [ChangeFlags] change combines its Flags with a
// message's flags, as IMAP STORE does.
type FlagOp uint8

// The flag operations.
const (
	// FlagsSet replaces the message's flags with Flags (STORE FLAGS).
	FlagsSet FlagOp = 1
	// FlagsAdd adds Flags (STORE +FLAGS).
	FlagsAdd FlagOp = 2
	// FlagsRemove removes Flags (STORE -FLAGS).
	FlagsRemove FlagOp = 3
)

// String returns "set", "add" or "remove".
func (op FlagOp) String() string {
	switch op {
	case FlagsSet:
		return "set"
	case FlagsAdd:
		return "add"
	case FlagsRemove:
		return "remove"
	}
	return "FlagOp(" + strconv.Itoa(int(op)) + ")"
}

// A MailboxID names a mailbox for its whole life, across renames (like the
// MAILBOXID of RFC 8474). The primary that creates a mailbox draws it at
// random; replicas keep it. The zero MailboxID names no mailbox.
type MailboxID [16]byte

// String returns id as 32 lower-case hexadecimal digits.
func (id MailboxID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is the zero MailboxID.
func (id MailboxID) IsZero() bool { return id == MailboxID{} }

// MarshalText encodes id as by [MailboxID.String].
func (id MailboxID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText decodes id from 32 hexadecimal digits.
func (id *MailboxID) UnmarshalText(b []byte) error {
	p, err := ParseMailboxID(string(b))
	if err != nil {
		return err
	}
	*id = p
	return nil
}

// ParseMailboxID parses 32 hexadecimal digits.
func ParseMailboxID(s string) (MailboxID, error) {
	var id MailboxID
	if len(s) != 2*len(id) {
		return id, fmt.Errorf("resilmail: mailbox id %q is not %d hex digits", s, 2*len(id))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("resilmail: mailbox id %q: %w", s, err)
	}
	return id, nil
}

// A UIDRange is the IMAP UIDs from Start to Stop, both included.
type UIDRange struct {
	Start, Stop uint32 // first and last UID, Start <= Stop
}

// A UIDSet is a set of IMAP UIDs as sorted ranges. A normalized set (the
// only kind [Change] carries and the kind every method of UIDSet returns)
// has ranges in ascending order, each with 1 <= Start <= Stop, separated by
// at least one missing UID. The zero value is the empty set.
type UIDSet []UIDRange

// NewUIDSet returns the normalized set of uids, given in any order.
func NewUIDSet(uids ...uint32) UIDSet {
	var s UIDSet
	for _, u := range uids {
		s = s.AddRange(u, u)
	}
	return s
}

// Valid reports whether s is normalized.
func (s UIDSet) Valid() bool {
	for i, r := range s {
		if r.Start == 0 || r.Start > r.Stop {
			return false
		}
		if i > 0 && uint64(s[i-1].Stop)+1 >= uint64(r.Start) {
			return false
		}
	}
	return true
}

// Len returns the number of UIDs in s.
func (s UIDSet) Len() uint64 {
	var n uint64
	for _, r := range s {
		n += uint64(r.Stop-r.Start) + 1
	}
	return n
}

// IsEmpty reports whether s holds no UID.
func (s UIDSet) IsEmpty() bool { return len(s) == 0 }

// Contains reports whether uid is in the normalized set s.
func (s UIDSet) Contains(uid uint32) bool {
	lo, hi := 0, len(s)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		switch {
		case uid < s[m].Start:
			hi = m
		case uid > s[m].Stop:
			lo = m + 1
		default:
			return true
		}
	}
	return false
}

// All returns the UIDs of s in ascending order.
func (s UIDSet) All() iter.Seq[uint32] {
	return func(yield func(uint32) bool) {
		for _, r := range s {
			for u := r.Start; ; u++ {
				if !yield(u) {
					return
				}
				if u == r.Stop {
					break
				}
			}
		}
	}
}

// Add returns s with uid added; s must be normalized, and so is the result.
// Adding UIDs in ascending order is amortised O(1).
func (s UIDSet) Add(uid uint32) UIDSet { return s.AddRange(uid, uid) }

// AddRange returns s with the UIDs from start to stop added (in either
// order; UID 0 is ignored). s must be normalized, and so is the result; s's
// backing array may be reused.
func (s UIDSet) AddRange(start, stop uint32) UIDSet {
	if start > stop {
		start, stop = stop, start
	}
	if stop == 0 {
		return s
	}
	if start == 0 {
		start = 1
	}
	// Fast path: at or after the end.
	if n := len(s); n == 0 || uint64(s[n-1].Stop)+1 < uint64(start) {
		return append(s, UIDRange{start, stop})
	} else if start >= s[n-1].Start {
		s[n-1].Stop = max(s[n-1].Stop, stop)
		return s
	}
	out := make(UIDSet, 0, len(s)+1)
	placed := false
	for _, r := range s {
		switch {
		case uint64(r.Stop)+1 < uint64(start):
			out = append(out, r)
		case uint64(stop)+1 < uint64(r.Start):
			if !placed {
				out = append(out, UIDRange{start, stop})
				placed = true
			}
			out = append(out, r)
		default: // overlapping or adjacent: merge into the pending range
			start, stop = min(start, r.Start), max(stop, r.Stop)
		}
	}
	if !placed {
		out = append(out, UIDRange{start, stop})
	}
	return out
}

// String returns s in IMAP sequence-set syntax, e.g. "1:3,7,9:12", or ""
// for the empty set.
func (s UIDSet) String() string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(uint64(r.Start), 10))
		if r.Stop != r.Start {
			b.WriteByte(':')
			b.WriteString(strconv.FormatUint(uint64(r.Stop), 10))
		}
	}
	return b.String()
}

// ParseUIDSet parses IMAP sequence-set syntax of explicit UIDs ("1:3,7";
// "*" is not accepted) into a normalized set.
func ParseUIDSet(str string) (UIDSet, error) {
	var s UIDSet
	if str == "" {
		return s, nil
	}
	for _, part := range strings.Split(str, ",") {
		a, b, isRange := strings.Cut(part, ":")
		start, err := strconv.ParseUint(a, 10, 32)
		if err != nil || start == 0 {
			return nil, fmt.Errorf("resilmail: bad UID set %q", str)
		}
		stop := start
		if isRange {
			if stop, err = strconv.ParseUint(b, 10, 32); err != nil || stop == 0 {
				return nil, fmt.Errorf("resilmail: bad UID set %q", str)
			}
		}
		s = s.AddRange(uint32(start), uint32(stop))
	}
	return s, nil
}

// Limits on a [Change]; [Change.Validate] enforces them.
const (
	// MaxUserLen is the longest user name, in bytes.
	MaxUserLen = 255
	// MaxMailboxLen is the longest mailbox name, in bytes.
	MaxMailboxLen = 1024
	// MaxFlagLen is the longest flag or keyword, in bytes.
	MaxFlagLen = 255
	// MaxFlags is the most flags one change may carry.
	MaxFlags = 1024
	// MaxUIDRanges is the most ranges a change's UID set may have.
	MaxUIDRanges = 1 << 16
)

// A Change is one numbered entry of a mailbox store's change journal: the
// unit that replication ships, incremental backup records and failover
// compares. Which fields are set depends on Kind (see the ChangeKind
// constants); the others are zero. Changes are applied idempotently: a
// replica that sees a change twice ends in the same state as one that saw it
// once.
type Change struct {
	// Seq is the change's position in the journal that holds it: 1 for the
	// first change, then consecutive. A replica gives changes it applies
	// its own positions and remembers the primary's separately.
	Seq uint64
	// Epoch is the epoch of the primary that made the change.
	Epoch Epoch
	// Kind says what the change does.
	Kind ChangeKind
	// Time is when the primary made the change (UTC).
	Time time.Time
	// User is the user whose mail changed; empty only for ChangeEpoch.
	User string
	// Mailbox is the mailbox's name when the change was made (its old name
	// for a rename); for Subscribe and Unsubscribe, the subscribed name.
	Mailbox string
	// MailboxID names the mailbox for its whole life; every change to a
	// mailbox or its messages carries it, and replicas match mailboxes by
	// it, never by name.
	MailboxID MailboxID
	// NewName is the mailbox's new name (ChangeMailboxRename).
	NewName string
	// UIDValidity is the mailbox's IMAP UIDVALIDITY; replicas keep it and
	// refuse a message change for another incarnation of the mailbox.
	UIDValidity uint32
	// UID is the appended or restored message's UID (ChangeAppend,
	// ChangeRestore), or the highest UID
	// a ChangeReserve marks as used.
	UID uint32
	// UIDs are the messages an expunge or a flag change applies to (only
	// those it actually changed).
	UIDs UIDSet
	// Digest is the SHA-256 of the appended message's body.
	Digest Digest
	// Size is the appended body's size in bytes.
	Size int64
	// InternalDate is the appended message's IMAP INTERNALDATE (UTC).
	InternalDate time.Time
	// FlagOp says how a ChangeFlags change combines Flags with the
	// messages' flags; zero for every other kind.
	FlagOp FlagOp
	// Flags are an appended message's flags and keywords, or the operand
	// of a flag change, e.g. `\Seen`, `$Forwarded`.
	Flags []string
	// ModSeq is the mailbox mod-sequence (RFC 7162) the change gave: the
	// appended or changed messages' MODSEQ, the mailbox's HIGHESTMODSEQ
	// after an expunge, the starting HIGHESTMODSEQ of a new mailbox.
	ModSeq uint64
}

// ErrBadChange is wrapped by the errors of [Change.Validate],
// [Change.MarshalBinary] and [Change.UnmarshalBinary].
var ErrBadChange = errors.New("resilmail: bad change")

func badChange(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadChange, fmt.Sprintf(format, args...))
}

// Validate checks c's structure: a known kind with the fields that kind
// requires, and nothing beyond the limits (lengths, UTF-8 without NUL,
// normalized UID set). It does not check names against a store's naming
// rules.
func (c *Change) Validate() error {
	if c.Kind == 0 || int(c.Kind) >= len(changeKindNames) {
		return badChange("unknown kind %d", c.Kind)
	}
	if err := checkString("user", c.User, MaxUserLen); err != nil {
		return err
	}
	if err := checkString("mailbox", c.Mailbox, MaxMailboxLen); err != nil {
		return err
	}
	if err := checkString("new name", c.NewName, MaxMailboxLen); err != nil {
		return err
	}
	if len(c.Flags) > MaxFlags {
		return badChange("%d flags, more than %d", len(c.Flags), MaxFlags)
	}
	for _, f := range c.Flags {
		if f == "" {
			return badChange("empty flag")
		}
		if err := checkString("flag", f, MaxFlagLen); err != nil {
			return err
		}
	}
	if len(c.UIDs) > MaxUIDRanges {
		return badChange("%d UID ranges, more than %d", len(c.UIDs), MaxUIDRanges)
	}
	if !c.UIDs.Valid() {
		return badChange("UID set %s is not normalized", c.UIDs)
	}
	if c.Size < 0 {
		return badChange("negative size")
	}
	if c.FlagOp != 0 && (c.Kind != ChangeFlags || c.FlagOp > FlagsRemove) {
		return badChange("flag operation %d on a %s change", c.FlagOp, c.Kind)
	}
	if c.Kind != ChangeEpoch && c.User == "" {
		return badChange("%s change without a user", c.Kind)
	}
	need := func(ok bool, what string) error {
		if !ok {
			return badChange("%s change without %s", c.Kind, what)
		}
		return nil
	}
	var errs []error
	switch c.Kind {
	case ChangeAppend, ChangeRestore:
		errs = append(errs, need(!c.MailboxID.IsZero(), "a mailbox id"), need(c.UIDValidity != 0, "a UIDVALIDITY"),
			need(c.UID != 0, "a UID"), need(!c.Digest.IsZero(), "a digest"))
	case ChangeExpunge, ChangeFlags:
		errs = append(errs, need(!c.MailboxID.IsZero(), "a mailbox id"), need(c.UIDValidity != 0, "a UIDVALIDITY"),
			need(!c.UIDs.IsEmpty(), "UIDs"))
		if c.Kind == ChangeFlags {
			errs = append(errs, need(c.FlagOp != 0, "a flag operation"))
		}
	case ChangeMailboxCreate:
		errs = append(errs, need(!c.MailboxID.IsZero(), "a mailbox id"), need(c.UIDValidity != 0, "a UIDVALIDITY"),
			need(c.Mailbox != "", "a name"))
	case ChangeMailboxRename:
		errs = append(errs, need(!c.MailboxID.IsZero(), "a mailbox id"), need(c.NewName != "", "a new name"))
	case ChangeMailboxDelete:
		errs = append(errs, need(!c.MailboxID.IsZero(), "a mailbox id"))
	case ChangeSubscribe, ChangeUnsubscribe:
		errs = append(errs, need(c.Mailbox != "", "a name"))
	case ChangeEpoch:
		errs = append(errs, need(c.Epoch != 0, "an epoch"))
	case ChangeReserve:
		errs = append(errs, need(!c.MailboxID.IsZero(), "a mailbox id"), need(c.UIDValidity != 0, "a UIDVALIDITY"),
			need(c.UID != 0, "a UID"))
	}
	return errors.Join(errs...)
}

func checkString(what, s string, maxLen int) error {
	if len(s) > maxLen {
		return badChange("%s longer than %d bytes", what, maxLen)
	}
	if !utf8.ValidString(s) {
		return badChange("%s is not valid UTF-8", what)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return badChange("%s contains NUL", what)
	}
	return nil
}

// changeVersion is the version of the binary encoding of a Change.
const changeVersion = 1

// Field presence bits of the binary encoding, in encoding order.
const (
	fSeq = 1 << iota
	fEpoch
	fTime
	fUser
	fMailbox
	fMailboxID
	fNewName
	fUIDValidity
	fUID
	fUIDs
	fDigest
	fSize
	fInternalDate
	fFlagOp
	fFlags
	fModSeq
	fAll = 1<<iota - 1
)

// MarshalBinary encodes c after checking it with [Change.Validate].
//
// The encoding (version 1) is: the version byte, the kind byte, a uvarint
// bit mask of the fields present (non-zero), then each present field in the
// order of the struct: integers as uvarints, times as a varint of Unix
// seconds and a uvarint of nanoseconds, strings as a uvarint length and the
// bytes, MailboxID and Digest as raw bytes, the UID set as a uvarint count
// of ranges then for each the gap from the previous range and the range's
// length minus one, flags as a uvarint count then strings. The encoding is
// canonical: decoding and re-encoding gives the same bytes. It carries no
// checksum: the journal, the wire or the backup that holds it does.
func (c *Change) MarshalBinary() ([]byte, error) {
	return c.AppendBinary(make([]byte, 0, 64+len(c.User)+len(c.Mailbox)+len(c.NewName)+8*len(c.UIDs)+16*len(c.Flags)))
}

// AppendBinary appends the encoding of c (see [Change.MarshalBinary]) to b.
func (c *Change) AppendBinary(b []byte) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var mask uint64
	set := func(bit uint64, present bool) {
		if present {
			mask |= bit
		}
	}
	set(fSeq, c.Seq != 0)
	set(fEpoch, c.Epoch != 0)
	set(fTime, !c.Time.IsZero())
	set(fUser, c.User != "")
	set(fMailbox, c.Mailbox != "")
	set(fMailboxID, !c.MailboxID.IsZero())
	set(fNewName, c.NewName != "")
	set(fUIDValidity, c.UIDValidity != 0)
	set(fUID, c.UID != 0)
	set(fUIDs, len(c.UIDs) > 0)
	set(fDigest, !c.Digest.IsZero())
	set(fSize, c.Size != 0)
	set(fInternalDate, !c.InternalDate.IsZero())
	set(fFlagOp, c.FlagOp != 0)
	set(fFlags, len(c.Flags) > 0)
	set(fModSeq, c.ModSeq != 0)

	b = append(b, changeVersion, byte(c.Kind))
	b = binary.AppendUvarint(b, mask)
	str := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	tm := func(t time.Time) {
		b = binary.AppendVarint(b, t.Unix())
		b = binary.AppendUvarint(b, uint64(t.Nanosecond()))
	}
	if mask&fSeq != 0 {
		b = binary.AppendUvarint(b, c.Seq)
	}
	if mask&fEpoch != 0 {
		b = binary.AppendUvarint(b, uint64(c.Epoch))
	}
	if mask&fTime != 0 {
		tm(c.Time)
	}
	if mask&fUser != 0 {
		str(c.User)
	}
	if mask&fMailbox != 0 {
		str(c.Mailbox)
	}
	if mask&fMailboxID != 0 {
		b = append(b, c.MailboxID[:]...)
	}
	if mask&fNewName != 0 {
		str(c.NewName)
	}
	if mask&fUIDValidity != 0 {
		b = binary.AppendUvarint(b, uint64(c.UIDValidity))
	}
	if mask&fUID != 0 {
		b = binary.AppendUvarint(b, uint64(c.UID))
	}
	if mask&fUIDs != 0 {
		b = binary.AppendUvarint(b, uint64(len(c.UIDs)))
		var prev uint64 // the previous range's Stop; 0 before the first
		for _, r := range c.UIDs {
			b = binary.AppendUvarint(b, uint64(r.Start)-prev-1)
			b = binary.AppendUvarint(b, uint64(r.Stop-r.Start))
			prev = uint64(r.Stop)
		}
	}
	if mask&fDigest != 0 {
		b = append(b, c.Digest[:]...)
	}
	if mask&fSize != 0 {
		b = binary.AppendUvarint(b, uint64(c.Size))
	}
	if mask&fInternalDate != 0 {
		tm(c.InternalDate)
	}
	if mask&fFlagOp != 0 {
		b = append(b, byte(c.FlagOp))
	}
	if mask&fFlags != 0 {
		b = binary.AppendUvarint(b, uint64(len(c.Flags)))
		for _, f := range c.Flags {
			str(f)
		}
	}
	if mask&fModSeq != 0 {
		b = binary.AppendUvarint(b, c.ModSeq)
	}
	return b, nil
}

// changeDecoder reads the binary encoding; the first error sticks.
type changeDecoder struct {
	b   []byte
	err error
}

func (d *changeDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = badChange(format, args...)
	}
}

// uvarint reads a minimally encoded uvarint.
func (d *changeDecoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || (n > 1 && d.b[n-1] == 0) {
		d.fail("bad %s", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *changeDecoder) nonZero(what string, v uint64) uint64 {
	if v == 0 {
		d.fail("%s present but zero", what)
	}
	return v
}

func (d *changeDecoder) uint32(what string) uint32 {
	v := d.nonZero(what, d.uvarint(what))
	if v > 1<<32-1 {
		d.fail("%s out of range", what)
	}
	return uint32(v)
}

func (d *changeDecoder) bytes(what string, n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.fail("%s truncated", what)
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *changeDecoder) str(what string, maxLen int) string {
	n := d.nonZero(what, d.uvarint(what))
	if n > uint64(maxLen) {
		d.fail("%s longer than %d bytes", what, maxLen)
		return ""
	}
	return string(d.bytes(what, int(n)))
}

func (d *changeDecoder) time(what string) time.Time {
	if d.err != nil {
		return time.Time{}
	}
	sec, n := binary.Varint(d.b)
	if n <= 0 || (n > 1 && d.b[n-1] == 0) {
		d.fail("bad %s", what)
		return time.Time{}
	}
	d.b = d.b[n:]
	ns := d.uvarint(what)
	if ns >= 1e9 {
		d.fail("bad %s nanoseconds", what)
	}
	t := time.Unix(sec, int64(ns)).UTC()
	if t.IsZero() {
		d.fail("%s present but zero", what)
	}
	return t
}

// UnmarshalBinary decodes c from the encoding [Change.MarshalBinary]
// produces. It refuses an unknown version, a truncated or over-long input,
// a non-canonical encoding and a change that fails [Change.Validate]; it
// never panics and allocates no more than the input's size. Times are
// decoded in UTC.
func (c *Change) UnmarshalBinary(data []byte) error {
	if len(data) < 2 {
		return badChange("%d bytes, too short", len(data))
	}
	if data[0] != changeVersion {
		return badChange("unknown encoding version %d", data[0])
	}
	var out Change
	out.Kind = ChangeKind(data[1])
	d := &changeDecoder{b: data[2:]}
	mask := d.uvarint("field mask")
	if mask&^fAll != 0 {
		d.fail("unknown fields %#x", mask&^fAll)
	}
	if mask&fSeq != 0 {
		out.Seq = d.nonZero("seq", d.uvarint("seq"))
	}
	if mask&fEpoch != 0 {
		out.Epoch = Epoch(d.nonZero("epoch", d.uvarint("epoch")))
	}
	if mask&fTime != 0 {
		out.Time = d.time("time")
	}
	if mask&fUser != 0 {
		out.User = d.str("user", MaxUserLen)
	}
	if mask&fMailbox != 0 {
		out.Mailbox = d.str("mailbox", MaxMailboxLen)
	}
	if mask&fMailboxID != 0 {
		copy(out.MailboxID[:], d.bytes("mailbox id", len(out.MailboxID)))
		if d.err == nil && out.MailboxID.IsZero() {
			d.fail("mailbox id present but zero")
		}
	}
	if mask&fNewName != 0 {
		out.NewName = d.str("new name", MaxMailboxLen)
	}
	if mask&fUIDValidity != 0 {
		out.UIDValidity = d.uint32("uidvalidity")
	}
	if mask&fUID != 0 {
		out.UID = d.uint32("uid")
	}
	if mask&fUIDs != 0 {
		n := d.nonZero("uid set", d.uvarint("uid set"))
		if n > MaxUIDRanges || n > uint64(len(d.b))/2 {
			d.fail("uid set of %d ranges", n)
			n = 0
		}
		if d.err == nil {
			out.UIDs = make(UIDSet, 0, n)
		}
		var prev uint64
		for i := uint64(0); i < n && d.err == nil; i++ {
			gap := d.uvarint("uid gap")
			length := d.uvarint("uid range")
			start := prev + 1 + gap
			if i > 0 && gap == 0 {
				d.fail("adjacent uid ranges")
			}
			if gap > 1<<32 || length > 1<<32 || start+length > 1<<32-1 {
				d.fail("uid out of range")
				break
			}
			out.UIDs = append(out.UIDs, UIDRange{uint32(start), uint32(start + length)})
			prev = start + length
		}
	}
	if mask&fDigest != 0 {
		copy(out.Digest[:], d.bytes("digest", len(out.Digest)))
		if d.err == nil && out.Digest.IsZero() {
			d.fail("digest present but zero")
		}
	}
	if mask&fSize != 0 {
		v := d.nonZero("size", d.uvarint("size"))
		if v > 1<<63-1 {
			d.fail("size out of range")
		}
		out.Size = int64(v)
	}
	if mask&fInternalDate != 0 {
		out.InternalDate = d.time("internal date")
	}
	if mask&fFlagOp != 0 {
		if op := d.bytes("flag operation", 1); op != nil {
			out.FlagOp = FlagOp(op[0])
			if out.FlagOp == 0 {
				d.fail("flag operation present but zero")
			}
		}
	}
	if mask&fFlags != 0 {
		n := d.nonZero("flags", d.uvarint("flags"))
		if n > MaxFlags || n > uint64(len(d.b)) {
			d.fail("%d flags", n)
			n = 0
		}
		if d.err == nil {
			out.Flags = make([]string, 0, n)
		}
		for i := uint64(0); i < n && d.err == nil; i++ {
			out.Flags = append(out.Flags, d.str("flag", MaxFlagLen))
		}
	}
	if mask&fModSeq != 0 {
		out.ModSeq = d.nonZero("modseq", d.uvarint("modseq"))
	}
	if d.err != nil {
		return d.err
	}
	if len(d.b) != 0 {
		return badChange("%d bytes after the change", len(d.b))
	}
	if err := out.Validate(); err != nil {
		return err
	}
	*c = out
	return nil
}

// String describes c in one line for logs, e.g.
// "#12 epoch 3 append alice/INBOX uid 7"; it never includes flags' or
// bodies' content beyond names and numbers.
func (c *Change) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d epoch %d %s", c.Seq, c.Epoch, c.Kind)
	if c.User != "" {
		fmt.Fprintf(&b, " %s", c.User)
		if c.Mailbox != "" {
			fmt.Fprintf(&b, "/%s", c.Mailbox)
		}
	}
	if c.NewName != "" {
		fmt.Fprintf(&b, " -> %s", c.NewName)
	}
	if c.UID != 0 {
		fmt.Fprintf(&b, " uid %d", c.UID)
	}
	if len(c.UIDs) > 0 {
		fmt.Fprintf(&b, " uids %s", c.UIDs)
	}
	if c.FlagOp != 0 {
		fmt.Fprintf(&b, " %s %v", c.FlagOp, c.Flags)
	}
	if c.ModSeq != 0 {
		fmt.Fprintf(&b, " modseq %d", c.ModSeq)
	}
	return b.String()
}
