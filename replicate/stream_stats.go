package replicate

import (
	"time"

	"github.com/resilmail/resilmail"
)

// PrimaryStats describe a [Primary] and its replicas.
type PrimaryStats struct {
	// Position and Epoch are the Source's.
	Position uint64
	Epoch    resilmail.Epoch
	// FencedBy is the epoch a replica acknowledged with that is higher
	// than Epoch: this primary was superseded; zero if not.
	FencedBy resilmail.Epoch
	// AcceptedUnreplicated counts Await calls that returned nil after
	// AckTimeout (TimeoutAccept); RefusedUnreplicated those that returned
	// ErrNotReplicated.
	AcceptedUnreplicated, RefusedUnreplicated uint64
	// CorruptBodies counts bodies refused because the Source's copy is
	// damaged; BodiesRestored those a replica then restored with its good
	// copy.
	CorruptBodies, BodiesRestored uint64
	// AcksRefused counts acknowledgements refused: from an unknown name,
	// with another replica's credential, or beyond the journal's end.
	AcksRefused uint64
	// OrphansKept counts orphans of rejoining nodes kept (POST orphan).
	OrphansKept uint64
	// Replicas are per replica, by name.
	Replicas []ReplicaLinkStats
}

// ReplicaLinkStats describe one replica as the primary sees it.
type ReplicaLinkStats struct {
	Name string
	// Connected reports whether a stream to the replica is open.
	Connected bool
	// Acked is the position the replica has acknowledged as durable.
	Acked uint64
	// AckedAt is when it last acknowledged.
	AckedAt time.Time
	// LagChanges is Position - Acked; LagAge the age of the oldest change
	// it has not acknowledged (zero when none). For a replica the journal
	// no longer reaches back to (TooFarBehind), LagAge is at least the
	// age of the oldest change the journal keeps.
	LagChanges   uint64
	LagAge       time.Duration
	TooFarBehind bool
	// LastError and LastErrorTime describe the last failed stream.
	LastError     string
	LastErrorTime time.Time
	// BytesSent counts stream and body bytes; ChangesSent changes;
	// BodiesServed bodies; CorruptBodies bodies refused as corrupt.
	BytesSent, ChangesSent, BodiesServed, CorruptBodies uint64
	// Missing is how many acknowledged changes the replica received
	// without their body (this primary could not serve it): they do not
	// count as replicated until the replica has them.
	Missing int
}

// ReplicaStats describe a [Replica].
type ReplicaStats struct {
	// Received is the highest position durably received (and
	// acknowledged); Applied the highest such that every change up to it
	// is applied.
	Received, Applied uint64
	// PrimaryPosition and PrimaryTime are from the last heartbeat.
	PrimaryPosition uint64
	PrimaryTime     time.Time
	// Connected reports whether the stream is open.
	Connected bool
	// Missing is how many received appends lack their body (the primary
	// could not serve it): acknowledged as received but named as missing,
	// so that the primary does not count them as replicated, until they
	// apply.
	Missing int
	// Discarded counts the delayed changes an operator discarded
	// (Replica.Discard) in this run.
	Discarded uint64
	// Held is how many changes wait for Confirm; Parked how many wait
	// for a body the primary cannot serve ([Replica.Parked]), and
	// ParkedTotal counts the changes ever parked.
	Held, Parked int
	ParkedTotal  uint64
	// BodiesPinned counts the bodies the target held that were copied
	// into the inbox for a change that needs them (see [BodyReader]).
	BodiesPinned uint64
	// LastError and LastErrorTime describe the last error of the stream or
	// of an applier.
	LastError     string
	LastErrorTime time.Time
	// Bytes counts stream and body bytes received; Changes the changes
	// received; Bodies the bodies fetched.
	Bytes, Changes, Bodies uint64
	// Reconnects counts the streams that ended in an error.
	Reconnects uint64
	// CorruptBodies counts bodies refused because they did not match
	// their digest; Fenced the streams and changes refused for an old
	// epoch; ApplyErrors the failed Apply calls; InboxErrors failed inbox
	// writes (each reopens the inbox).
	CorruptBodies, Fenced, ApplyErrors, InboxErrors uint64
	// Conflicts counts the changes that contradicted the target's state;
	// Repairs the comparisons and repairs run for them and for full syncs;
	// RepairsHeld the removals those repairs held for an operator.
	Conflicts, Repairs, RepairsHeld uint64
	// Rejoins counts the times the replica found its history parted
	// from the primary's and aligned itself (see Divergence); Orphans is
	// how many orphans it has re-delivered into its primaries in all
	// (listed by Replica.Orphans).
	Rejoins uint64
	Orphans int
	// Promoted reports that Promote made the target a primary (kept
	// across restarts, see Replica.Promote), and PromotedEpoch at which
	// epoch.
	Promoted      bool
	PromotedEpoch resilmail.Epoch
}
