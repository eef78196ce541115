package replicate

import "errors"

// Errors shared by Sources, Targets and the replication stream. Test with
// errors.Is.
var (
	// ErrTooFarBehind: the position asked for is no longer in the
	// source's journal; the reader falls back to a full comparison.
	ErrTooFarBehind = errors.New("replicate: position no longer in the journal")
	// ErrPosition: the position asked for is beyond the end of the
	// source's journal: the reader followed another history.
	ErrPosition = errors.New("replicate: position beyond the end of the journal")
	// ErrFenced: a change or a request carries an epoch lower than the
	// highest seen; it comes from a demoted primary and is refused.
	ErrFenced = errors.New("replicate: epoch fenced")
	// ErrNotFound: no such body (every message with it was expunged since),
	// user or mailbox. A BodyFunc returns it for a body the source no
	// longer has, and the target then records the message as expunged, as
	// the source's later expunge will.
	ErrNotFound = errors.New("replicate: not found")
	// ErrConflict: a change contradicts the target's state.
	ErrConflict = errors.New("replicate: change conflicts with the replica's state")
)
