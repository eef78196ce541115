package replicate

import "errors"

// Why an acknowledgement is refused (answered 403 "unknown_replica", 403
// "wrong_replica" or 409 "position"; counted in PrimaryStats.AcksRefused).
var (
	// ErrUnknownReplica: the acknowledgement names a replica the primary
	// does not know: not in PrimaryOptions.Replicas or ReplicaSecrets,
	// or, when neither is set, one that never opened a stream.
	ErrUnknownReplica = errors.New("replicate: unknown replica")
	// ErrWrongReplica: the credential of the request belongs to another
	// replica than the one named.
	ErrWrongReplica = errors.New("replicate: the credential is another replica's")
	// ErrAckBeyondEnd: the acknowledged position is beyond the end of the
	// primary's journal (a replica of another history, or a forgery).
	ErrAckBeyondEnd = errors.New("replicate: acknowledged position beyond the end of the journal")
)

// ErrDiverged is wrapped by a replica's error when the primary's history
// and its own part ([Divergence]).
var ErrDiverged = errors.New("replicate: histories diverge")

// ErrNotReplicated is wrapped by the error of [Primary.Await] when the
// replicas did not acknowledge a change in time and OnTimeout is
// TimeoutRefuse. The error is temporary: the change is durable on the
// primary and will reach the replicas; the caller may refuse its client's
// command with a temporary failure and let it retry.
var ErrNotReplicated = errors.New("replicate: change not acknowledged by the replicas in time")

// ErrBodyUnavailable is wrapped by the error of a body the primary answered
// for but could not serve: its copy is damaged (it never sends a corrupt
// body), the bytes did not match the digest, or it answered another error
// status. The replica keeps and acknowledges the change without its body,
// parks the change (its user's lane waits at it and retries, other users go
// on: [Replica.Parked]) and reports it. A body the primary explicitly says
// it no longer has (404 with the code "not_found") is ErrNotFound instead:
// the message was expunged since.
var ErrBodyUnavailable = errors.New("replicate: the primary cannot serve the body")
