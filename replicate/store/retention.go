package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
)

// Retention holds and deletion tombstones.
//
// A hold keeps, for a named reader that follows the journal (a replica, a
// backup), what it still needs after its position: the journal's changes
// (compaction keeps them, up to Options.HoldBytes of journal) and, for a
// hold with bodies, the bodies of the messages expunged after it, each
// remembered by a [Tombstone] that says when it was deleted. Holds and the
// tombstones up to the checkpoint are kept in the file "retention" (see
// encodeRetentionLocked); those after it are rebuilt from the journal by
// Open.

// A Hold is a named reader's position: the store keeps the journal after
// Position (and, with Bodies, the bodies of the messages expunged after
// it) until the reader moves its hold on or releases it.
type Hold struct {
	Name     string
	Position uint64
	// Bodies says whether the bodies of messages expunged after Position
	// are kept too (a backup needs them; a replica does not: a body the
	// primary no longer has is an expunge it will receive).
	Bodies bool
	// Renewed is when the reader last set the hold (by the store's clock;
	// for a hold written by an older version, when the store opened). A
	// hold not renewed for Options.HoldMaxAge expires (see
	// [Store.ExpireHolds]).
	Renewed time.Time
}

// A Tombstone is an expunged message whose body the store keeps for a hold
// with bodies: where it was, what it was, and when it was deleted. Seq is
// the position of the change that removed it (an expunge, or the deletion
// of its mailbox or user); ModSeq is that expunge's mod-sequence (zero
// for a deletion of the mailbox or user).
type Tombstone struct {
	Seq          uint64
	User         string
	Mailbox      string
	MailboxID    resilmail.MailboxID
	UIDValidity  uint32
	UID          uint32
	Digest       resilmail.Digest
	Size         int64
	InternalDate time.Time
	ModSeq       uint64
	Deleted      time.Time
}

// retention is the store's holds and tombstones, guarded by Store.mu.
type retention struct {
	holds    map[string]Hold
	tombs    []Tombstone // ascending by Seq
	tombRefs map[resilmail.Digest]int32
	// floor: tombstones of removals at or before it may be missing (a
	// crash between the retention file and the checkpoint).
	floor uint64
	// cur is the change applyLocked is applying, for the tombstones it
	// makes.
	cur *resilmail.Change
}

const (
	retentionFile    = "retention"
	retentionMagic   = "RMSTRETN"
	retentionVersion = 2 // 2 adds each hold's renewal time; 1 is read too
)

// ErrHold is wrapped by the errors of [Store.Hold], [Store.HoldJournal] and
// [Store.Release] for a bad name, a position beyond the journal's end, or
// a hold that does not exist.
var ErrHold = errors.New("store: bad retention hold")

// Hold keeps, for the reader name (a backup), the journal after position
// pos and the bodies of the messages expunged after it, with their
// tombstones ([Store.Tombstones]), until the reader moves its hold on
// (Hold again) or releases it ([Store.Release]). pos is the position the
// reader has read everything up to; it may not be beyond Position. A new
// hold is durable when Hold returns; moving one on is durable at the next
// checkpoint (until then a crash keeps the older position: more is kept,
// never less).
func (s *Store) Hold(ctx context.Context, name string, pos uint64) error {
	return s.setHold(ctx, Hold{Name: name, Position: pos, Bodies: true})
}

// HoldJournal keeps, for the reader name (a replica), the journal after
// position pos, as Hold does, without keeping the bodies of messages
// expunged after it.
func (s *Store) HoldJournal(ctx context.Context, name string, pos uint64) error {
	return s.setHold(ctx, Hold{Name: name, Position: pos})
}

func (s *Store) setHold(ctx context.Context, h Hold) error {
	h.Renewed = s.opts.Now().UTC().Round(0)
	if h.Name == "" || len(h.Name) > 255 || strings.ContainsFunc(h.Name, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return fmt.Errorf("%w: name %q", ErrHold, h.Name)
	}
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	s.mu.Lock()
	if h.Position > s.durable {
		end := s.durable
		s.mu.Unlock()
		return fmt.Errorf("%w: position %d is beyond the journal's end %d", ErrHold, h.Position, end)
	}
	old, exists := s.ret.holds[h.Name]
	if exists && old.Bodies == h.Bodies {
		s.ret.holds[h.Name] = h
		s.pruneTombsLocked()
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	// A new hold (or one that changes kind) is written at once.
	s.ckptMu.Lock()
	defer s.ckptMu.Unlock()
	s.mu.Lock()
	s.ret.init()
	s.ret.holds[h.Name] = h
	s.pruneTombsLocked()
	buf := s.encodeRetentionLocked(s.ckptSeq)
	s.mu.Unlock()
	if err := s.writeRetention(buf); err != nil {
		return err
	}
	s.log.Info("store: retention hold set", "hold", h.Name, "position", h.Position, "bodies", h.Bodies)
	return nil
}

// Release removes the hold name: what only it kept goes at the next
// checkpoint (journal) or at once (bodies of expunged messages).
func (s *Store) Release(ctx context.Context, name string) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	s.ckptMu.Lock()
	defer s.ckptMu.Unlock()
	s.mu.Lock()
	if _, ok := s.ret.holds[name]; !ok {
		s.mu.Unlock()
		return fmt.Errorf("%w: no hold %q", ErrHold, name)
	}
	delete(s.ret.holds, name)
	s.pruneTombsLocked()
	buf := s.encodeRetentionLocked(s.ckptSeq)
	s.mu.Unlock()
	if err := s.writeRetention(buf); err != nil {
		return err
	}
	s.log.Info("store: retention hold released", "hold", name)
	return nil
}

// Holds returns the holds, by name.
func (s *Store) Holds() []Hold {
	s.mu.Lock()
	defer s.mu.Unlock()
	hs := make([]Hold, 0, len(s.ret.holds))
	for _, h := range s.ret.holds {
		hs = append(hs, h)
	}
	slices.SortFunc(hs, func(a, b Hold) int { return strings.Compare(a.Name, b.Name) })
	return hs
}

// Tombstones returns the tombstones of messages removed after position
// after, in journal order, at most limit (zero means 1000), and the
// position at or before which tombstones may be missing (a crash between
// two files; zero in general). Their bodies can be read with [Store.Body]
// while a hold with bodies is before their Seq. Tombstones exist only
// while such a hold needs them; QRESYNC's expunged UIDs by mod-sequence
// come from [Store.MailboxDelta] instead, which needs no hold.
func (s *Store) Tombstones(ctx context.Context, after uint64, limit int) ([]Tombstone, uint64, error) {
	if err := s.begin(ctx); err != nil {
		return nil, 0, err
	}
	defer s.ops.Done()
	if limit <= 0 {
		limit = 1000
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i := sort.Search(len(s.ret.tombs), func(i int) bool { return s.ret.tombs[i].Seq > after })
	var out []Tombstone
	for ; i < len(s.ret.tombs) && len(out) < limit && s.ret.tombs[i].Seq <= s.durable; i++ {
		out = append(out, s.ret.tombs[i])
	}
	return out, s.ret.floor, nil
}

func (r *retention) init() {
	if r.holds == nil {
		r.holds = make(map[string]Hold)
		r.tombRefs = make(map[resilmail.Digest]int32)
	}
}

// minHoldLocked returns the lowest position of the holds (with bodies
// only if bodies), or MaxUint64 when there is none.
func (s *Store) minHoldLocked(bodies bool) uint64 {
	m := uint64(math.MaxUint64)
	for _, h := range s.ret.holds {
		if h.Bodies || !bodies {
			m = min(m, h.Position)
		}
	}
	return m
}

// tombLocked records message m of mb as removed by the change being
// applied, if a hold with bodies needs it.
func (s *Store) tombLocked(mb *mailbox, m *message, seq uint64) {
	if seq == 0 || seq <= s.minHoldLocked(true) {
		return // no hold with bodies is before it
	}
	t := Tombstone{Seq: seq, User: mb.user.name, Mailbox: mb.name, MailboxID: mb.id, UIDValidity: mb.uidValidity,
		UID: m.uid, Digest: m.digest, Size: m.size}
	if m.dateSec != 0 || m.dateNsec != 0 {
		t.InternalDate = time.Unix(m.dateSec, int64(m.dateNsec)).UTC()
	}
	if c := s.ret.cur; c != nil {
		t.Deleted = c.Time
		if c.Kind == resilmail.ChangeExpunge {
			t.ModSeq = c.ModSeq
		}
	}
	s.ret.init()
	s.ret.tombs = append(s.ret.tombs, t)
	s.ret.tombRefs[t.Digest]++
}

// retainedLocked reports whether a tombstone keeps body d.
func (s *Store) retainedLocked(d resilmail.Digest) bool { return s.ret.tombRefs[d] > 0 }

// pruneTombsLocked forgets the tombstones no hold with bodies needs any
// more, and removes the bodies only they kept.
func (s *Store) pruneTombsLocked() {
	floor := s.minHoldLocked(true)
	n := 0
	for n < len(s.ret.tombs) && s.ret.tombs[n].Seq <= floor && s.ret.tombs[n].Seq <= s.durable {
		t := &s.ret.tombs[n]
		n++
		if s.ret.tombRefs[t.Digest]--; s.ret.tombRefs[t.Digest] > 0 {
			continue
		}
		delete(s.ret.tombRefs, t.Digest)
		if s.refs[t.Digest] > 0 || s.inflight[t.Digest] != nil {
			continue
		}
		if _, pending := s.pendingUnlink[t.Digest]; pending {
			continue // unlinkLocked removes it once its removal is durable
		}
		delete(s.corrupt, t.Digest)
		if err := s.removeBody(t.Digest); err != nil {
			s.log.Warn("store: removing a body no hold needs", "digest", t.Digest.String(), "err", err)
			continue
		}
		s.c.bodiesRemoved++
	}
	if n > 0 {
		clear(s.ret.tombs[:n])
		s.ret.tombs = s.ret.tombs[n:]
	}
}

// holdCutLocked returns the first journal segment the holds need: the one
// with the first change after the lowest hold, unless the journal from it
// is larger than Options.HoldBytes (the hold then no longer keeps it, and
// its reader gets ErrTooFarBehind). It returns MaxUint64 without holds.
func (s *Store) holdCutLocked() uint64 {
	low := s.minHoldLocked(false)
	if low == math.MaxUint64 {
		return math.MaxUint64
	}
	i := sort.Search(len(s.recs), func(i int) bool { return s.recs[i].last > low })
	if i == len(s.recs) {
		return math.MaxUint64
	}
	seg := s.recs[i].pos.Seg
	segs := s.wal.Segments()
	var total int64
	for j := len(segs) - 1; j >= 0 && segs[j] >= seg; j-- {
		total += s.wal.SegmentSize(segs[j])
		if total > s.opts.HoldBytes {
			s.log.Warn("store: a retention hold needs more journal than HoldBytes; its reader will have to compare in full",
				"position", low, "hold_bytes", s.opts.HoldBytes)
			return math.MaxUint64
		}
	}
	return seg
}

// encodeRetentionLocked encodes the retention file: the holds and the
// tombstones of removals up to seq (the checkpoint's; later ones are
// rebuilt from the journal by Open):
//
//	magic    "RMSTRETN"
//	version  uint16 big-endian (retentionVersion)
//	payload  seq, floor (uvarints); holds (count, then name, position,
//	         bodies byte, renewal time as varint Unix nanoseconds (0:
//	         unknown; absent in version 1)); tombstones (count, then seq, user, mailbox
//	         name, mailbox id (16 bytes), UIDVALIDITY, UID, digest (32
//	         bytes), size, internal date and deletion time as varint Unix
//	         nanoseconds (0: none), mod-sequence)
//	crc      uint32 big-endian CRC-32C of everything before it
func (s *Store) encodeRetentionLocked(seq uint64) []byte {
	var e encoder
	e.raw([]byte(retentionMagic))
	e.b = binary.BigEndian.AppendUint16(e.b, retentionVersion)
	e.uvarint(seq)
	e.uvarint(s.ret.floor)
	e.uvarint(uint64(len(s.ret.holds)))
	for _, h := range s.ret.holds {
		e.str(h.Name)
		e.uvarint(h.Position)
		e.raw([]byte{map[bool]byte{false: 0, true: 1}[h.Bodies]})
		e.varint(unixNano(h.Renewed))
	}
	n := sort.Search(len(s.ret.tombs), func(i int) bool { return s.ret.tombs[i].Seq > seq })
	e.uvarint(uint64(n))
	for _, t := range s.ret.tombs[:n] {
		e.uvarint(t.Seq)
		e.str(t.User)
		e.str(t.Mailbox)
		e.raw(t.MailboxID[:])
		e.uvarint(uint64(t.UIDValidity))
		e.uvarint(uint64(t.UID))
		e.raw(t.Digest[:])
		e.uvarint(uint64(t.Size))
		e.varint(unixNano(t.InternalDate))
		e.varint(unixNano(t.Deleted))
		e.uvarint(t.ModSeq)
	}
	e.b = binary.BigEndian.AppendUint32(e.b, crc32.Checksum(e.b, crcTable))
	return e.b
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func (s *Store) writeRetention(buf []byte) error {
	if err := durable.WriteFile(durable.OS, filepath.Join(s.dir, retentionFile), buf, 0o640); err != nil {
		return storageErr(err)
	}
	return nil
}

// loadRetention reads the retention file after the checkpoint (at
// s.ckptSeq) is loaded and before the journal is replayed.
func (s *Store) loadRetention() error {
	s.ret.init()
	path := filepath.Join(s.dir, retentionFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	seq, err := s.decodeRetention(b)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	now := s.opts.Now().UTC().Round(0)
	for name, h := range s.ret.holds {
		if h.Renewed.IsZero() { // written by version 1: its age counts from now
			h.Renewed = now
			s.ret.holds[name] = h
		}
	}
	switch {
	case seq > s.ckptSeq:
		// Written before a checkpoint that a crash stopped: the journal
		// after the checkpoint gives the later tombstones again.
		n := sort.Search(len(s.ret.tombs), func(i int) bool { return s.ret.tombs[i].Seq > s.ckptSeq })
		for _, t := range s.ret.tombs[n:] {
			if s.ret.tombRefs[t.Digest]--; s.ret.tombRefs[t.Digest] <= 0 {
				delete(s.ret.tombRefs, t.Digest)
			}
		}
		s.ret.tombs = s.ret.tombs[:n]
	case seq < s.ckptSeq:
		s.ret.floor = max(s.ret.floor, s.ckptSeq)
		s.log.Warn("store: the retention file is older than the checkpoint; tombstones before it may be missing",
			"retention_seq", seq, "checkpoint_seq", s.ckptSeq)
	}
	return nil
}

// decodeRetention decodes the retention file b into s.ret and returns its
// seq.
func (s *Store) decodeRetention(b []byte) (uint64, error) {
	if len(b) < len(retentionMagic)+2+4 || string(b[:len(retentionMagic)]) != retentionMagic {
		return 0, errors.New("not a retention file")
	}
	v := binary.BigEndian.Uint16(b[len(retentionMagic):])
	if v != 1 && v != retentionVersion {
		return 0, fmt.Errorf("%w: retention format version %d; this build reads versions 1 and %d", ErrFormat, v, retentionVersion)
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return 0, errors.New("checksum mismatch")
	}
	d := decoder{b: body[len(retentionMagic)+2:]}
	seq := d.uvarint()
	s.ret.floor = d.uvarint()
	for n := d.count(3); n > 0 && d.err == nil; n-- {
		h := Hold{Name: d.str(255), Position: d.uvarint()}
		if f := d.bytes(1); f != nil {
			h.Bodies = f[0] == 1
		}
		if v >= 2 {
			h.Renewed = fromUnixNano(d.varint())
		}
		if d.err == nil {
			s.ret.holds[h.Name] = h
		}
	}
	prev := uint64(0)
	for n := d.count(60); n > 0 && d.err == nil; n-- {
		var t Tombstone
		t.Seq = d.uvarint()
		t.User = d.str(MaxUserLen)
		t.Mailbox = d.str(MaxMailboxLen)
		t.MailboxID = d.mailboxID()
		t.UIDValidity = d.uint32()
		t.UID = d.uint32()
		t.Digest = d.digest()
		t.Size = int64(d.uvarint())
		t.InternalDate = fromUnixNano(d.varint())
		t.Deleted = fromUnixNano(d.varint())
		t.ModSeq = d.uvarint()
		if d.err != nil {
			break
		}
		if t.Seq < prev {
			d.fail("tombstones out of order")
			break
		}
		prev = t.Seq
		s.ret.tombs = append(s.ret.tombs, t)
		s.ret.tombRefs[t.Digest]++
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	return seq, d.err
}
