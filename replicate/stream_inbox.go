package replicate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/wal"
)

// The replica's inbox is a wal.Log of records, each a type byte and data:
//
//	'c' change      resilmail.Change binary
//	'b' body        32-byte digest, then the body
//	'p' position    uvarint: every change up to it was received; then,
//	                optionally, the epoch of that change (uvarint)
//	'r' resync      uvarint: a full sync brought the target up to it;
//	                earlier changes of the inbox are moot
//	'k' confirm     uvarint seq, then the user: a held change confirmed
//	'd' delayed     uvarint length and reason, then the resilmail.Change
//	                binary: a destructive change set aside until confirmed
//	'x' delay done  uvarint seq, then the user: a delayed change applied
//	'z' discarded   uvarint seq, then the user: a delayed change the
//	                operator discarded (Replica.Discard), never applied
const (
	inboxKind    = "replica-inbox"
	inboxVersion = 1

	recChange    = 'c'
	recBody      = 'b'
	recPosition  = 'p'
	recResync    = 'r'
	recConfirm   = 'k'
	recDelayed   = 'd'
	recDelayDone = 'x'
	recDiscard   = 'z'
)

// inboxState is what replaying an inbox finds.
type inboxState struct {
	received      uint64
	receivedEpoch resilmail.Epoch // of the change at received, if known
	changes       []inboxChange
	bodies        map[resilmail.Digest]wal.Pos
	confirmed     map[string]uint64
	delayed       map[uint64]inboxDelayed // by seq
	confirmedSeq  map[uint64]bool
}

type inboxDelayed struct {
	c      resilmail.Change
	reason string
	seg    uint64
}

type inboxChange struct {
	c   resilmail.Change
	seg uint64 // segment of its record
}

func openInbox(dir string, segSize int64, log *slog.Logger, openFile func(string, int, os.FileMode) (wal.File, error)) (*wal.Log, *inboxState, error) {
	st := &inboxState{bodies: make(map[resilmail.Digest]wal.Pos), confirmed: make(map[string]uint64),
		delayed: make(map[uint64]inboxDelayed), confirmedSeq: make(map[uint64]bool)}
	l, err := wal.Open(dir, wal.Options{Kind: inboxKind, Version: inboxVersion, SegmentSize: segSize, Logger: log, OpenFile: openFile},
		func(pos wal.Pos, rec []byte) error {
			if len(rec) == 0 {
				return errors.New("replicate: empty inbox record")
			}
			data := rec[1:]
			switch rec[0] {
			case recChange:
				var c resilmail.Change
				if err := c.UnmarshalBinary(data); err != nil {
					return fmt.Errorf("replicate: inbox record at %s: %w", pos, err)
				}
				if c.Seq >= st.received {
					st.received, st.receivedEpoch = c.Seq, c.Epoch
				}
				st.changes = append(st.changes, inboxChange{c, pos.Seg})
			case recBody:
				if len(data) < len(resilmail.Digest{}) {
					return fmt.Errorf("replicate: short body record at %s", pos)
				}
				st.bodies[resilmail.Digest(data[:32])] = pos
			case recPosition, recResync:
				v, n := binary.Uvarint(data)
				if n <= 0 {
					return fmt.Errorf("replicate: bad position record at %s", pos)
				}
				if rec[0] == recResync {
					// Another numbering may follow: earlier changes and
					// confirmations are moot.
					st.changes = st.changes[:0]
					clear(st.confirmed)
					clear(st.delayed)
					clear(st.confirmedSeq)
					st.received, st.receivedEpoch = v, 0
				}
				if v > st.received {
					st.received, st.receivedEpoch = v, 0
					if e, m := binary.Uvarint(data[n:]); m > 0 {
						st.receivedEpoch = resilmail.Epoch(e)
					}
				}
			case recConfirm:
				v, n := binary.Uvarint(data)
				if n <= 0 {
					return fmt.Errorf("replicate: bad confirm record at %s", pos)
				}
				st.confirmed[string(data[n:])] = max(st.confirmed[string(data[n:])], v)
				st.confirmedSeq[v] = true
			case recDelayed:
				c, reason, err := decodeDelayed(data)
				if err != nil {
					return fmt.Errorf("replicate: inbox record at %s: %w", pos, err)
				}
				st.delayed[c.Seq] = inboxDelayed{c, reason, pos.Seg}
			case recDelayDone, recDiscard:
				v, n := binary.Uvarint(data)
				if n <= 0 {
					return fmt.Errorf("replicate: bad delay record at %s", pos)
				}
				delete(st.delayed, v)
			default:
				return fmt.Errorf("replicate: unknown inbox record %q at %s", rec[0], pos)
			}
			return nil
		})
	if err != nil {
		return nil, nil, err
	}
	return l, st, nil
}

func uvarintRecord(typ byte, v uint64, tail string) []byte {
	b := binary.AppendUvarint([]byte{typ}, v)
	return append(b, tail...)
}

func positionRecord(pos uint64, e resilmail.Epoch) []byte {
	b := binary.AppendUvarint([]byte{recPosition}, pos)
	return binary.AppendUvarint(b, uint64(e))
}
