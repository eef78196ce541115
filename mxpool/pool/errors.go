package pool

import "errors"

// Errors about policy snapshots and deltas. Every error returned while
// decoding or applying one wraps exactly one of them, with the detail in its
// text.
var (
	// ErrPolicyFormat is returned for a snapshot, delta or stored file of a
	// format version this build does not know.
	ErrPolicyFormat = errors.New("pool: unknown policy format version")
	// ErrPolicyMalformed is returned for input that is not a well-formed
	// snapshot or delta: bad JSON, missing or unknown fields, names not in
	// normal form, lists out of order, limits exceeded.
	ErrPolicyMalformed = errors.New("pool: malformed policy")
	// ErrPolicyDigest is returned when a policy does not hash to the digest
	// that its snapshot or delta declares.
	ErrPolicyDigest = errors.New("pool: policy digest mismatch")
	// ErrPolicyAuth is returned when a snapshot's seal does not verify:
	// no signature, another pool, a key not trusted, a bad signature.
	ErrPolicyAuth = errors.New("pool: policy authentication failed")
	// ErrPolicyVersion is returned for a snapshot whose version is lower
	// than the one already applied (a replay or a publisher gone back).
	ErrPolicyVersion = errors.New("pool: policy version older than the one applied")
	// ErrPolicyDelta is returned for a delta that does not apply to the
	// policy at hand: another starting version, or a change that adds what
	// exists or removes what does not.
	ErrPolicyDelta = errors.New("pool: policy delta does not apply")
)

// ErrPublisherClosed is returned by [Publisher.Update] after
// [Publisher.Close].
var ErrPublisherClosed = errors.New("pool: publisher closed")

// ErrFollowerClosed is returned by [Follower.Run] when the Follower is
// closed before Run starts.
var ErrFollowerClosed = errors.New("pool: follower closed")

// ErrPolicyConflict is reported (in FollowerStatus.LastError and the log)
// when the publisher answers that this follower holds a version it never
// made: the publisher lost its folder, or two publishers serve one pool.
// The follower keeps its policy; an operator must act (see
// [OpenPublisher]).
var ErrPolicyConflict = errors.New("pool: publisher and follower disagree on the policy history")
