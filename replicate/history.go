package replicate

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/resilmail/resilmail"
)

// A HistoryID names one change journal: the numbering its positions
// follow. A store draws it at random when it is created and keeps it for
// its life; a copy of the store's folder keeps it too, which is why a
// position also carries an epoch. The zero HistoryID names no history.
type HistoryID [16]byte

// NewHistoryID draws a random HistoryID.
func NewHistoryID() HistoryID {
	var h HistoryID
	rand.Read(h[:])
	return h
}

// String returns h as 32 lower-case hexadecimal digits.
func (h HistoryID) String() string { return hex.EncodeToString(h[:]) }

// IsZero reports whether h is the zero HistoryID.
func (h HistoryID) IsZero() bool { return h == HistoryID{} }

// MarshalText encodes h as by [HistoryID.String].
func (h HistoryID) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText decodes h from 32 hexadecimal digits (or an empty text,
// the zero HistoryID).
func (h *HistoryID) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*h = HistoryID{}
		return nil
	}
	p, err := ParseHistoryID(string(b))
	if err != nil {
		return err
	}
	*h = p
	return nil
}

// ParseHistoryID parses 32 hexadecimal digits.
func ParseHistoryID(s string) (HistoryID, error) {
	var h HistoryID
	if len(s) != 2*len(h) {
		return h, fmt.Errorf("replicate: history id %q is not %d hex digits", s, 2*len(h))
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, fmt.Errorf("replicate: history id %q: %w", s, err)
	}
	return h, nil
}

// A Position is a place in a change journal: its history, the epoch of
// the change there and its number. Two journals agree up to a position
// when they have the same history and the same epoch there (raft's
// (term, index) check); a journal's [EpochStart] table tells where each
// epoch began, so that a primary can tell a replica where their histories
// part.
type Position struct {
	History HistoryID       `json:"history"`
	Epoch   resilmail.Epoch `json:"epoch"`
	Seq     uint64          `json:"seq"`
}

// String returns "history/epoch/seq".
func (p Position) String() string {
	return fmt.Sprintf("%s/%d/%d", p.History, p.Epoch, p.Seq)
}

// An EpochStart says that epoch Epoch began at change Seq of a journal:
// changes from Seq on (until the next EpochStart) carry Epoch.
type EpochStart struct {
	Epoch resilmail.Epoch `json:"epoch"`
	Seq   uint64          `json:"seq"`
}

// A Predecessor records that a journal continued another: its state at
// its own change Seq was that of history History up to position Until (a
// replica promoted after applying everything it had received from its
// primary). A replica of History at or before Until resumes in the new
// journal without a comparison; one beyond Until holds changes the new
// journal never got: orphans.
type Predecessor struct {
	History HistoryID       `json:"history"`
	Until   uint64          `json:"until"`
	Epoch   resilmail.Epoch `json:"epoch"` // the epoch at Until
	Seq     uint64          `json:"seq"`
}

// EpochAt returns the epoch of change seq by the table starts (ascending
// by Seq): the epoch of the last start at or before seq, zero before the
// first.
func EpochAt(starts []EpochStart, seq uint64) resilmail.Epoch {
	var e resilmail.Epoch
	for _, s := range starts {
		if s.Seq > seq {
			break
		}
		e = s.Epoch
	}
	return e
}

// EpochEnd returns the last change of a journal of length end (its
// position) that carries epoch e or a lower one, by the table starts: the
// change before the first start of a higher epoch. A replica whose last
// change has epoch e agrees with the journal at most up to there.
func EpochEnd(starts []EpochStart, e resilmail.Epoch, end uint64) uint64 {
	for _, s := range starts {
		if s.Epoch > e {
			return min(end, s.Seq-1)
		}
	}
	return end
}
