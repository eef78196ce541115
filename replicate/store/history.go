package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
	"github.com/resilmail/resilmail/replicate"
)

// The file HISTORY holds what a store knows of its place among primaries,
// rewritten atomically (temporary file, fsync, rename, fsync the folder)
// whenever it changes, and before every checkpoint:
//
//	first line   "resilmail-history 1 <CRC-32C of the rest, decimal>"
//	rest         JSON: {"history", "role", "epochs", "predecessors",
//	             "upstream": {"history", "base", "reset_seq"}}
//
// reset_seq is the store's last change when the upstream positions were
// reset: Open ignores the positions journaled at or before it, and those
// of a checkpoint at or before it.
//
// history is the store's own [replicate.HistoryID], drawn when the store is
// created; role says whether local writes are taken ([Role]); epochs is the
// epoch-start table of the store's journal; predecessors the histories it
// continued when it was promoted; upstream the history its upstream
// positions ([Store.UpstreamPosition]) belong to, the position every user
// is at least at, and the change at which they were last reset: the
// primary's positions journaled before it belong to another history and
// are ignored by Open. The epoch table is also rebuilt from the journal at
// Open, so a crash between a change of epoch and this file loses nothing.
const (
	historyFile    = "HISTORY"
	historyMagic   = "resilmail-history"
	historyVersion = 1
)

// A Role says what a store does with local writes; it is durable, and
// [Open] restores it.
type Role uint8

// The roles.
const (
	// RolePrimary: local writes are taken (the default of a new store).
	RolePrimary Role = iota
	// RoleStandby: local writes are refused with ErrReadOnly; the store
	// follows a primary (Apply).
	RoleStandby
	// RoleFenced: local writes are refused with ErrReadOnly; the store
	// was a primary and learned of a higher epoch (or was demoted), so
	// it must not write until promoted again.
	RoleFenced
)

// String returns "primary", "standby" or "fenced".
func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleStandby:
		return "standby"
	case RoleFenced:
		return "fenced"
	}
	return "Role(" + strconv.Itoa(int(r)) + ")"
}

// MarshalText encodes r as by String.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText decodes a role name.
func (r *Role) UnmarshalText(b []byte) error {
	for _, v := range []Role{RolePrimary, RoleStandby, RoleFenced} {
		if v.String() == string(b) {
			*r = v
			return nil
		}
	}
	return fmt.Errorf("store: unknown role %q", b)
}

type historyMeta struct {
	History      replicate.HistoryID     `json:"history"`
	Role         Role                    `json:"role"`
	Epochs       []replicate.EpochStart  `json:"epochs"`
	Predecessors []replicate.Predecessor `json:"predecessors,omitempty"`
	Upstream     upstreamMeta            `json:"upstream"`
}

type upstreamMeta struct {
	History  replicate.HistoryID `json:"history"`
	Base     uint64              `json:"base"`
	ResetSeq uint64              `json:"reset_seq"`
}

// loadHistory reads HISTORY, or draws a new history for a store that has
// none (a new store, or one written before the file existed).
func (s *Store) loadHistory() error {
	path := filepath.Join(s.dir, historyFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		s.meta = historyMeta{History: replicate.NewHistoryID()}
		s.metaDirty = true
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	m, err := decodeHistory(b)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	s.meta = m
	return nil
}

func decodeHistory(b []byte) (historyMeta, error) {
	var m historyMeta
	line, rest, ok := cutLine(b)
	if !ok {
		return m, errors.New("no header line")
	}
	var magic string
	var version int
	var sum uint32
	if _, err := fmt.Sscanf(string(line), "%s %d %d", &magic, &version, &sum); err != nil || magic != historyMagic {
		return m, fmt.Errorf("not a history file (header %q)", line)
	}
	if version != historyVersion {
		return m, fmt.Errorf("%w: history file version %d; this build reads %d", ErrFormat, version, historyVersion)
	}
	if crc32.Checksum(rest, crcTable) != sum {
		return m, errors.New("fails its checksum")
	}
	if err := json.Unmarshal(rest, &m); err != nil {
		return m, err
	}
	if m.History.IsZero() {
		return m, errors.New("no history id")
	}
	return m, nil
}

func cutLine(b []byte) (line, rest []byte, ok bool) {
	for i, c := range b {
		if c == '\n' {
			return b[:i], b[i+1:], true
		}
	}
	return nil, nil, false
}

func encodeHistory(m historyMeta) []byte {
	js, _ := json.Marshal(m)
	hdr := fmt.Sprintf("%s %d %d\n", historyMagic, historyVersion, crc32.Checksum(js, crcTable))
	return append([]byte(hdr), js...)
}

// saveHistory writes HISTORY if it changed since the last write. Writers
// are serialised by metaMu; the content is taken under s.mu.
func (s *Store) saveHistory() error {
	s.metaMu.Lock()
	defer s.metaMu.Unlock()
	s.mu.Lock()
	if !s.metaDirty {
		s.mu.Unlock()
		return nil
	}
	m := s.meta
	m.Epochs = slices.Clone(m.Epochs)
	m.Predecessors = slices.Clone(m.Predecessors)
	s.metaDirty = false
	s.mu.Unlock()
	if err := durable.WriteFile(durable.OS, filepath.Join(s.dir, historyFile), encodeHistory(m), 0o640); err != nil {
		s.mu.Lock()
		s.metaDirty = true
		s.failLocked(err)
		s.mu.Unlock()
		return storageErr(err)
	}
	return nil
}

// noteEpochLocked records in the epoch table that epoch e began at change
// seq, if it is higher than the last one recorded.
func (s *Store) noteEpochLocked(e resilmail.Epoch, seq uint64) {
	if n := len(s.meta.Epochs); n > 0 && s.meta.Epochs[n-1].Epoch >= e || e == 0 {
		return
	}
	s.meta.Epochs = append(s.meta.Epochs, replicate.EpochStart{Epoch: e, Seq: seq})
	s.metaDirty = true
}

// History returns the id of the store's own journal.
func (s *Store) History() replicate.HistoryID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.meta.History
}

// Epochs returns the epoch-start table of the store's journal, ascending.
func (s *Store) Epochs() []replicate.EpochStart {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.meta.Epochs)
}

// Predecessors returns the histories this store continued when it was
// promoted, oldest first.
func (s *Store) Predecessors() []replicate.Predecessor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.meta.Predecessors)
}

// Head returns the position of the last durable change of the store's
// own journal: its history, the epoch there, its number.
func (s *Store) Head() replicate.Position {
	s.mu.Lock()
	defer s.mu.Unlock()
	return replicate.Position{History: s.meta.History, Epoch: replicate.EpochAt(s.meta.Epochs, s.durable), Seq: s.durable}
}

// UpstreamHistory returns the history the upstream positions belong to:
// the journal of the primary this store follows; zero if it follows none
// (it never did, or it was promoted since).
func (s *Store) UpstreamHistory() replicate.HistoryID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.meta.Upstream.History
}

// Role returns the store's durable role.
func (s *Store) Role() Role {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.meta.Role
}

// IsPrimary reports whether the store's durable role is primary (it takes
// local writes).
func (s *Store) IsPrimary() bool { return s.Role() == RolePrimary }

// SetRole makes the store a standby or fenced (local writes refused with
// [ErrReadOnly]) or a primary again, durably before it returns: [Open]
// restores it. Making a fenced store a primary is refused: a fenced store
// becomes a primary only by [Store.Promote], which raises the epoch.
// Setting the role it has is a no-op.
func (s *Store) SetRole(ctx context.Context, r Role) error {
	if r > RoleFenced {
		return fmt.Errorf("store: unknown role %d", r)
	}
	if err := s.beginLocked(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	if s.meta.Role == r {
		s.mu.Unlock()
		return nil
	}
	if r == RolePrimary && s.meta.Role == RoleFenced {
		s.mu.Unlock()
		return fmt.Errorf("%w: a fenced store becomes a primary only by Promote, which raises the epoch", ErrFenced)
	}
	old := s.meta.Role
	s.meta.Role = r
	s.metaDirty = true
	s.mu.Unlock()
	if err := s.saveHistory(); err != nil {
		return err
	}
	s.log.Warn("store: role changed", "dir", s.dir, "from", old.String(), "to", r.String())
	return nil
}

// SetReadOnly makes the store a standby (ro) or a primary (not ro), as
// [Store.SetRole] does, durably.
func (s *Store) SetReadOnly(ro bool) error {
	r := RolePrimary
	if ro {
		r = RoleStandby
	}
	return s.SetRole(context.Background(), r)
}

// Demote makes the store fenced (local writes refused with
// [ErrReadOnly]) and raises its epoch to seen if that is higher, both
// durably: a primary that learned of a newer primary (epoch seen) or that
// an operator demotes (seen zero). It is idempotent.
func (s *Store) Demote(ctx context.Context, seen resilmail.Epoch) error {
	if seen > s.Epoch() {
		if err := s.SetEpoch(ctx, seen); err != nil && !errors.Is(err, ErrFenced) {
			return err
		}
	}
	return s.SetRole(ctx, RoleFenced)
}

// Promote makes the store a primary at epoch e, durably before it
// returns: a ChangeEpoch at the head of the journal starts epoch e (the
// first change the new primary makes carries it), the history the store
// followed is recorded as a predecessor continued up to position until
// (what the replica received and applied: the caller drains first), and
// local writes are taken. A store that is a primary at e already returns
// nil (idempotent); an epoch not higher than the store's is refused with
// [ErrFenced] (a promotion raises the epoch; a primary of that epoch may
// exist).
func (s *Store) Promote(ctx context.Context, e resilmail.Epoch, until uint64) error {
	if err := s.beginLocked(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	if s.meta.Role == RolePrimary && s.epoch == e {
		s.mu.Unlock()
		return nil
	}
	if e <= s.epoch {
		cur := s.epoch
		s.c.fenced++
		s.mu.Unlock()
		return fmt.Errorf("%w: promotion to epoch %d, the store has seen %d", ErrFenced, e, cur)
	}
	prev := s.epoch
	c := s.changeLocked(resilmail.ChangeEpoch, "")
	c.Epoch = e
	last, err := s.commitLocked([]resilmail.Change{c}, nil)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	if up := s.meta.Upstream; !up.History.IsZero() {
		s.meta.Predecessors = append(s.meta.Predecessors, replicate.Predecessor{
			History: up.History, Until: until, Epoch: prev, Seq: last - 1})
		if n, keep := len(s.meta.Predecessors), s.opts.MaxPredecessors; n > keep {
			for _, p := range s.meta.Predecessors[:n-keep] {
				s.log.Warn("store: a history continued long ago is forgotten (MaxPredecessors); a replica still on it will compare in full",
					"dir", s.dir, "history", p.History.String(), "until", p.Until, "max_predecessors", keep)
			}
			s.meta.Predecessors = slices.Delete(s.meta.Predecessors, 0, n-keep)
		}
	}
	s.meta.Upstream = upstreamMeta{ResetSeq: last}
	clear(s.upstream)
	s.meta.Role = RolePrimary
	s.metaDirty = true
	s.mu.Unlock()
	if err := s.waitDurable(last); err != nil {
		return err
	}
	if err := s.saveHistory(); err != nil {
		return err
	}
	s.log.Warn("store: promoted", "dir", s.dir, "epoch", uint64(e), "seq", last, "until", until)
	return nil
}

// ResetUpstream makes the store follow history h from position pos: the
// upstream positions of every user become pos, durably before it
// returns, and the positions of the history followed before are
// forgotten. A replica calls it once it has brought the store in step with
// h at pos (a comparison and repair, or a predecessor's position that the
// new primary continued), so that Apply skips no change of h after pos
// and takes none before it again.
func (s *Store) ResetUpstream(ctx context.Context, h replicate.HistoryID, pos uint64) error {
	if h.IsZero() {
		return errors.New("store: ResetUpstream needs a history")
	}
	if err := s.beginLocked(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	// Positions journaled up to the last change belong to the old
	// history: Open ignores them (and a checkpoint's at or before it).
	last := s.applied
	old := s.meta.Upstream
	clear(s.upstream)
	s.meta.Upstream = upstreamMeta{History: h, Base: pos, ResetSeq: last}
	s.metaDirty = true
	s.mu.Unlock()
	if err := s.waitDurable(last); err != nil {
		return err
	}
	if err := s.saveHistory(); err != nil {
		return err
	}
	s.log.Warn("store: upstream positions reset", "dir", s.dir, "history", h.String(), "position", pos,
		"old_history", old.History.String(), "old_base", old.Base)
	return nil
}

// upstreamLocked returns the upstream position of user.
func (s *Store) upstreamLocked(user string) uint64 {
	return max(s.meta.Upstream.Base, s.upstream[user])
}

// AdoptUpstream records h as the history the upstream positions belong to
// when the store has none recorded (a new replica, or one from before
// histories were recorded), durably; it keeps the positions. It is a
// no-op when h is recorded already, and an error when another history is.
func (s *Store) AdoptUpstream(ctx context.Context, h replicate.HistoryID) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	defer s.ops.Done()
	s.mu.Lock()
	switch cur := s.meta.Upstream.History; {
	case cur == h:
		s.mu.Unlock()
		return nil
	case !cur.IsZero():
		s.mu.Unlock()
		return fmt.Errorf("store: upstream history is %s, not %s: reset it (ResetUpstream)", cur, h)
	}
	s.meta.Upstream.History = h
	s.metaDirty = true
	s.mu.Unlock()
	return s.saveHistory()
}

// HasUpstreamPositions reports whether the store has applied a change of
// a primary since its upstream positions were last reset (or ever).
func (s *Store) HasUpstreamPositions() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.upstream) > 0 || s.meta.Upstream.Base > 0
}

// beginLocked is begin, then s.mu taken on a usable store: it returns nil
// with s.mu held and the call counted (the caller calls s.ops.Done), or
// an error with neither.
func (s *Store) beginLocked(ctx context.Context) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	if err := s.usableLocked(); err != nil {
		s.mu.Unlock()
		s.ops.Done()
		return err
	}
	return nil
}
