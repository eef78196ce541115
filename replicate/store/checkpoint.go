package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
)

// The checkpoint is the whole index at one journal position, so that the
// journal before it can be removed. It is one file written atomically
// (temporary file, fsync, rename, fsync the folder):
//
//	magic    "RMSTCKPT"
//	version  uint16 big-endian (formatVersion)
//	payload  (below)
//	crc      uint32 big-endian CRC-32C of everything before it
//
// The payload holds, with uvarints for numbers and a uvarint length before
// each string: the last change's seq, the epoch, the last UIDVALIDITY given,
// the primary's position per user (count, then user and position), the
// digests marked corrupt (count, then 32 bytes each), and the users (count,
// then per user: name, subscriptions (count, names), mailboxes (count, then
// per mailbox: id (16 bytes), name, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ,
// messages (count, then per message: UID as the gap from the previous one,
// mod-sequence, digest (32 bytes), size, internal date as varint seconds and
// uvarint nanoseconds, system flag bits (1 byte), keywords (count,
// strings))))).
const (
	checkpointFile  = "checkpoint"
	checkpointMagic = "RMSTCKPT"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func (s *Store) encodeCheckpointLocked() []byte {
	e := encoder{b: make([]byte, 0, 256+96*s.messages)}
	e.raw([]byte(checkpointMagic))
	e.b = binary.BigEndian.AppendUint16(e.b, formatVersion)
	e.uvarint(s.applied)
	e.uvarint(uint64(s.epoch))
	e.uvarint(uint64(s.lastUIDValidity))
	e.uvarint(uint64(len(s.upstream)))
	for u, pos := range s.upstream {
		e.str(u)
		e.uvarint(pos)
	}
	e.uvarint(uint64(len(s.corrupt)))
	for d := range s.corrupt {
		e.raw(d[:])
	}
	e.uvarint(uint64(len(s.users)))
	for _, u := range s.users {
		e.str(u.name)
		e.uvarint(uint64(len(u.subs)))
		for name := range u.subs {
			e.str(name)
		}
		e.uvarint(uint64(len(u.mailboxes)))
		for _, mb := range u.mailboxes {
			e.raw(mb.id[:])
			e.str(mb.name)
			e.uvarint(uint64(mb.uidValidity))
			e.uvarint(uint64(mb.uidNext))
			e.uvarint(mb.highest)
			e.uvarint(uint64(len(mb.msgs)))
			prev := uint32(0)
			for i := range mb.msgs {
				m := &mb.msgs[i]
				e.uvarint(uint64(m.uid - prev))
				prev = m.uid
				e.uvarint(m.modseq)
				e.raw(m.digest[:])
				e.uvarint(uint64(m.size))
				e.varint(m.dateSec)
				e.uvarint(uint64(m.dateNsec))
				e.raw([]byte{m.flags.sys})
				e.uvarint(uint64(len(m.flags.kw)))
				for _, k := range m.flags.kw {
					e.str(k)
				}
			}
		}
	}
	e.b = binary.BigEndian.AppendUint32(e.b, crc32.Checksum(e.b, crcTable))
	return e.b
}

// loadCheckpoint restores the index from the checkpoint, if there is one.
func (s *Store) loadCheckpoint() error {
	path := filepath.Join(s.dir, checkpointFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if len(b) < len(checkpointMagic)+2+4 || string(b[:len(checkpointMagic)]) != checkpointMagic {
		return fmt.Errorf("%w: %s is not a store checkpoint", ErrFormat, path)
	}
	if v := binary.BigEndian.Uint16(b[len(checkpointMagic):]); v != formatVersion {
		return fmt.Errorf("%w: %s has format version %d; this build reads version %d", ErrFormat, path, v, formatVersion)
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return fmt.Errorf("%w: %s fails its checksum; restore the store from a replica or a backup", ErrCorrupt, path)
	}
	if err := s.decodeCheckpoint(body[len(checkpointMagic)+2:]); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	return nil
}

func (s *Store) decodeCheckpoint(b []byte) error {
	d := decoder{b: b}
	s.ckptSeq = d.uvarint()
	s.epoch = resilmail.Epoch(d.uvarint())
	s.lastUIDValidity = d.uint32()
	for n := d.count(2); n > 0 && d.err == nil; n-- {
		u := d.str(MaxUserLen)
		s.upstream[u] = d.uvarint()
	}
	for n := d.count(32); n > 0 && d.err == nil; n-- {
		s.corrupt[d.digest()] = struct{}{}
	}
	for n := d.count(3); n > 0 && d.err == nil; n-- {
		u := newUser(d.str(MaxUserLen))
		s.users[u.name] = u
		for k := d.count(2); k > 0 && d.err == nil; k-- {
			u.subs[d.str(MaxMailboxLen)] = struct{}{}
		}
		for k := d.count(22); k > 0 && d.err == nil; k-- {
			mb := &mailbox{user: u}
			mb.id = d.mailboxID()
			mb.name = d.str(MaxMailboxLen)
			mb.uidValidity = d.uint32()
			mb.uidNext = d.uint32()
			mb.highest = d.uvarint()
			count := d.count(40)
			if d.err != nil {
				break
			}
			mb.msgs = make([]message, 0, count)
			prev := uint64(0)
			for ; count > 0 && d.err == nil; count-- {
				var m message
				uid := prev + d.uvarint()
				if uid == prev || uid >= uint64(mb.uidNext) {
					d.fail("UID")
				}
				prev = uid
				m.uid = uint32(uid)
				m.modseq = d.uvarint()
				m.digest = d.digest()
				m.size = int64(d.uvarint())
				m.dateSec = d.varint()
				m.dateNsec = d.uint32()
				if sys := d.bytes(1); sys != nil {
					m.flags.sys = sys[0]
				}
				for kw := d.count(2); kw > 0 && d.err == nil; kw-- {
					m.flags.kw = append(m.flags.kw, d.str(resilmail.MaxFlagLen))
				}
				if d.err != nil {
					break
				}
				m.hash = m.computeHash()
				mb.msgs = append(mb.msgs, m)
				mb.sum.xor(m.hash)
				mb.size += m.size
				if !m.seen() {
					mb.unseen++
				}
				s.messages++
				s.refLocked(m.digest, m.size)
			}
			if d.err != nil {
				break
			}
			if u.mailboxes[mb.name] != nil || s.byID[mb.id] != nil {
				d.fail("duplicate mailbox")
				break
			}
			u.mailboxes[mb.name] = mb
			s.byID[mb.id] = mb
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	return d.err
}

// Compact writes a checkpoint of the whole index, fsyncs the body files
// written since the last checkpoint (their bytes are in the journal until
// then), and removes the journal segments that hold only changes both in
// the checkpoint and older than Options.KeepChanges behind the newest (or
// beyond Options.KeepBytes of journal). Readers further behind than what
// remains get [ErrTooFarBehind] from Changes and fall back to a full
// comparison. [Store.Run] calls it every Options.CheckpointEvery changes or
// Options.CheckpointBytes of journal.
func (s *Store) Compact(ctx context.Context) error {
	s.ckptMu.Lock()
	defer s.ckptMu.Unlock()
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	start := time.Now()
	if _, err := s.expireHoldsCkptLocked(); err != nil {
		return err
	}
	s.mu.Lock()
	if err := s.usableLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	buf := s.encodeCheckpointLocked()
	seq := s.applied
	rbuf := s.encodeRetentionLocked(seq)
	s.mu.Unlock()
	// The epoch table and upstream history of the changes the checkpoint
	// holds must not live only in the journal it frees.
	if err := s.saveHistory(); err != nil {
		return err
	}
	// The files of the bodies the checkpoint refers to are made durable
	// before it is written, so that Open need only check the bodies the
	// journal holds after it. bodyMu makes sure every body of a change up
	// to seq is in the unsynced set by now.
	early, err := s.syncUnsynced()
	if err != nil {
		return err
	}
	// The checkpoint must not hold a change the journal could lose.
	if err := s.waitDurable(seq); err != nil {
		return err
	}
	// The holds and tombstones up to seq go first: a crash between the
	// two files leaves a retention file ahead of the checkpoint, which
	// Open reconciles (see loadRetention).
	if err := s.writeRetention(rbuf); err != nil {
		return err
	}
	if err := durable.WriteFile(durable.OS, filepath.Join(s.dir, checkpointFile), buf, 0o640); err != nil {
		return storageErr(err)
	}

	// Choose the segments to remove, and take the bodies whose files were
	// written since: their bytes may be in those segments, so the files
	// must be durable first. bodyMu makes sure no body is between its
	// journal record and the unsynced set meanwhile.
	s.bodyMu.Lock()
	s.mu.Lock()
	s.ckptSeq = seq
	s.journalSince = 0
	cut := s.compactCutLocked(seq)
	unsynced := s.unsynced
	s.unsynced = make(map[resilmail.Digest]struct{})
	s.mu.Unlock()
	s.bodyMu.Unlock()
	if err := s.syncBodies(unsynced); err != nil {
		return err
	}
	synced := early + len(unsynced)

	s.compactMu.Lock()
	err = s.wal.RemoveBefore(cut)
	s.mu.Lock()
	i := 0
	for i < len(s.recs) && s.recs[i].pos.Seg < cut {
		i++
	}
	s.recs = append(s.recs[:0:0], s.recs[i:]...)
	s.c.checkpoints++
	oldest := s.oldestLocked()
	s.mu.Unlock()
	s.compactMu.Unlock()
	if err != nil {
		return storageErr(err)
	}
	s.log.Info("store: checkpoint written", "seq", seq, "bytes", len(buf), "oldest_change", oldest,
		"bodies_synced", synced, "took", time.Since(start))
	return nil
}

// syncUnsynced makes durable the body files written so far and not yet
// synced, and returns how many.
func (s *Store) syncUnsynced() (int, error) {
	s.bodyMu.Lock()
	s.mu.Lock()
	unsynced := s.unsynced
	s.unsynced = make(map[resilmail.Digest]struct{})
	s.mu.Unlock()
	s.bodyMu.Unlock()
	return len(unsynced), s.syncBodies(unsynced)
}

// compactCutLocked returns the first journal segment to keep after a
// checkpoint at seq: every change after seq must stay; of the others, the
// last Options.KeepChanges stay for readers, unless they would take more
// than Options.KeepBytes of journal (bodies make it large).
func (s *Store) compactCutLocked(seq uint64) uint64 {
	segs := s.wal.Segments()
	last := segs[len(segs)-1]
	need, keep := last, last // first segment with a change after seq; first in the KeepChanges window
	window := uint64(0)
	if s.applied > s.opts.KeepChanges {
		window = s.applied - s.opts.KeepChanges
	}
	for _, r := range s.recs {
		if r.last > seq {
			need = min(need, r.pos.Seg)
			break
		}
	}
	for _, r := range s.recs {
		if r.last > window {
			keep = min(keep, r.pos.Seg)
			break
		}
	}
	// The newest segments that fit in KeepBytes (at least the last one).
	byBytes, total := last, int64(0)
	for i := len(segs) - 1; i >= 0; i-- {
		total += s.wal.SegmentSize(segs[i])
		if total > s.opts.KeepBytes && segs[i] != last {
			break
		}
		byBytes = segs[i]
	}
	return min(need, max(keep, byBytes), s.holdCutLocked())
}
