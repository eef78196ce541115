package replicate

import (
	"context"
	"io"

	"github.com/resilmail/resilmail"
)

// A Source is what a primary replicates from: its numbered change journal
// and the bodies the changes name. [replicate/store.Store] implements it.
type Source interface {
	// Changes returns the durable changes after position after, in order,
	// at most limit of them (whole batches: a call's changes are never
	// split), and none when there are none yet. A position older than the
	// journal still holds is an error wrapping ErrTooFarBehind; one beyond
	// its end (another history) wraps ErrPosition.
	Changes(ctx context.Context, after uint64, limit int) ([]resilmail.Change, error)
	// Wait blocks until the journal reaches past after, or ctx is done,
	// and returns the newest durable position.
	Wait(ctx context.Context, after uint64) (uint64, error)
	// Body returns the body named d, verified against d: a body that does
	// not match is an error (carrying a *resilmail.CorruptError), never the
	// bytes; one the source no longer has wraps ErrNotFound.
	Body(ctx context.Context, d resilmail.Digest) ([]byte, error)
	// Position is the newest durable position.
	Position() uint64
	// Epoch is the highest epoch the source has seen.
	Epoch() resilmail.Epoch
}

// A BodyFunc returns the body named d; a Target calls it for the bodies it
// lacks and verifies what it reads. A body the source no longer has is an
// error wrapping ErrNotFound.
type BodyFunc = func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error)

// A Target is what a replica applies to. [replicate/store.Store]
// implements it.
type Target interface {
	// Apply applies changes of a primary in order, idempotently (a change
	// at or before UpstreamPosition of its user is skipped; one with Seq
	// zero, a repair, is applied by content), and returns once they are
	// durable. It fetches the bodies it lacks with body and verifies them.
	// A change with an epoch lower than the highest seen is an error
	// wrapping ErrFenced; one that contradicts the target's state wraps
	// ErrConflict (compare and repair that mailbox). [Repair] sends two
	// kinds the stream does not: ChangeReserve, which raises a mailbox's
	// UIDNEXT and HIGHESTMODSEQ and touches no message, and ChangeRestore,
	// which puts a message back under its UID, below UIDNEXT, when the
	// mailbox lacks it.
	Apply(ctx context.Context, changes []resilmail.Change, body BodyFunc) error
	// UpstreamPosition is the primary's position of the last change
	// applied for user ("" for changes without a user).
	UpstreamPosition(user string) uint64
	// Epoch is the highest epoch the target has seen.
	Epoch() resilmail.Epoch
}
