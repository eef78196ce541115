package replicate

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/resilmail/resilmail"
)

// Defaults of [PrimaryOptions].
const (
	DefaultHeartbeat  = time.Second
	DefaultAckTimeout = 2 * time.Second
	DefaultBatch      = 256
	// DefaultInlineBody is the largest body a version 3 stream carries
	// ahead of its change instead of letting the replica fetch it.
	DefaultInlineBody = 64 << 10
)

// An AckMode says what [Primary.Await] waits for.
type AckMode int

// The acknowledgement modes.
const (
	// AckAsync: Await returns at once; replicas catch up on their own.
	AckAsync AckMode = iota
	// AckOne: Await returns once any replica has acknowledged the
	// position.
	AckOne
	// AckAll: Await returns once every replica named in
	// PrimaryOptions.Replicas has acknowledged the position.
	AckAll
)

// String returns "async", "one" or "all".
func (m AckMode) String() string {
	switch m {
	case AckAsync:
		return "async"
	case AckOne:
		return "one"
	case AckAll:
		return "all"
	}
	return "AckMode(" + strconv.Itoa(int(m)) + ")"
}

// A TimeoutPolicy says what [Primary.Await] does when the acknowledgements
// it waits for do not come within AckTimeout.
type TimeoutPolicy int

// The timeout policies.
const (
	// TimeoutRefuse: Await returns an error wrapping ErrNotReplicated.
	TimeoutRefuse TimeoutPolicy = iota
	// TimeoutAccept: Await returns nil; the event is logged and counted
	// in PrimaryStats.AcceptedUnreplicated.
	TimeoutAccept
)

// PrimaryOptions configure [NewPrimary]. One of Secret, ReplicaSecrets,
// Identify or Authenticate must be set; every other zero field means its
// default.
//
// A replica's name is bound to its credential with ReplicaSecrets or
// Identify: the primary then takes the name from the credential, never
// from the request, so two replicas (two copies of one configuration, both
// with the default name) cannot pass for one another, nor one ack count
// for two. AckAll requires it. With a shared Secret (or Authenticate),
// names are what the requests say.
type PrimaryOptions struct {
	// Secret is shared with the replicas: a request must carry
	// "Authorization: Bearer " + StreamToken(Secret). The name a replica
	// gives is not bound to it.
	Secret []byte
	// ReplicaSecrets gives each replica, by name, its own secret: a
	// request carrying StreamToken(secret) is from that replica, and
	// only it may acknowledge as that name. Other requests are checked as
	// Secret (or Authenticate) says.
	ReplicaSecrets map[string][]byte
	// Identify, if set, authenticates every request and returns the name
	// of the replica it is from (for example the common name of a
	// verified client certificate in r.TLS.PeerCertificates); an error
	// refuses the request with 401. It takes precedence over the others.
	Identify func(r *http.Request) (name string, err error)
	// Authenticate, if set, decides instead of Secret: nil lets a request
	// in (for example after checking r.TLS.PeerCertificates), an error
	// refuses it with 401. The name a replica gives is not bound to it.
	Authenticate func(r *http.Request) error
	// Heartbeat is how often a stream carries a heartbeat; zero means
	// DefaultHeartbeat (1 s).
	Heartbeat time.Duration
	// Batch is the most changes read from the Source at once; zero means
	// DefaultBatch.
	Batch int
	// InlineBody is the largest body sent in the stream ahead of the
	// change that appends it, saving the replica a request per body;
	// larger ones are fetched. Zero means DefaultInlineBody (64 KiB), a
	// negative value sends none. A stream sends each body at most once
	// (among the last several thousand), and a replica of version 2
	// fetches them all.
	InlineBody int
	// Mode is what Await waits for; zero is AckAsync.
	Mode AckMode
	// Replicas names the replicas AckAll waits for and that Stats lists
	// even before they connect; nil means the names of ReplicaSecrets.
	// When set (or ReplicaSecrets is), an acknowledgement from another
	// name is refused; when neither is, a name is known once it opened a
	// stream.
	Replicas []string
	// AckTimeout is how long Await waits; zero means DefaultAckTimeout
	// (2 s).
	AckTimeout time.Duration
	// OnTimeout is what Await does after AckTimeout; zero is
	// TimeoutRefuse.
	OnTimeout TimeoutPolicy
	// Logger receives a line per refused request, stream error, corrupt
	// body and accepted timeout; nil means slog.Default().
	Logger *slog.Logger
}

// Defaults of [ReplicaOptions].
const (
	DefaultMaxBackoff = 5 * time.Second
	DefaultInboxSize  = 8 << 20
)

// ReplicaOptions configure [NewReplica]. Either Secret or HTTPClient (with
// its own authentication, e.g. client certificates) must be set; every
// other zero field means its default.
type ReplicaOptions struct {
	// Name identifies the replica to the primary (acknowledgements,
	// statistics); required.
	Name string
	// Secret is shared with the primary: requests carry
	// "Authorization: Bearer " + StreamToken(Secret).
	Secret []byte
	// HTTPClient makes the requests; nil means a client without timeout
	// (the stream is long-lived; other requests get their own).
	HTTPClient *http.Client
	// ApplyDelay keeps every change in the inbox until it is this old
	// (by the primary's clock) before applying it: a delayed replica.
	ApplyDelay time.Duration
	// Hold, if set, is asked about every change before it is applied; a
	// change it holds stops its user's lane until Confirm. A change that
	// can remove something (an expunge, a delete or rename, flags removed
	// or replaced) is asked about once every earlier change of its user
	// is applied, so Hold may judge it against the target's state; others
	// may be asked while earlier ones of the same batch still wait.
	// NewExpungeGuard returns such a function.
	Hold func(ctx context.Context, c resilmail.Change) (hold bool, reason string)
	// FullSync is called when the primary no longer has the position the
	// replica needs (410) or the replica followed another history (409);
	// it brings the target in step and returns the primary's position the
	// stream resumes after. Nil means, for a target that is a
	// [RepairTarget] (as replicate/store's Store is), a comparison with
	// the inventory the primary serves next to its stream and a repair
	// (see Repair), once the lanes have applied what the inbox holds; for
	// another target, logging the error and retrying.
	FullSync func(ctx context.Context) (resumeAfter uint64, err error)
	// Repair configures the repairs of a full sync and of a user whose
	// change conflicts with the target's state (another UIDVALIDITY, a
	// mailbox id taken): the replica compares that user with the primary
	// and repairs it, then goes on after the change. Nil means the
	// defaults of RepairOptions: large removals are held for an operator
	// (see Comparer).
	Repair *RepairOptions
	// MaxBackoff caps the wait between reconnections; zero means
	// DefaultMaxBackoff (5 s).
	MaxBackoff time.Duration
	// StreamTimeout drops a stream on which no frame arrived for this
	// long (a half-open connection, a length garbled on the way that
	// leaves the reader waiting for bytes that never come) and connects
	// again. Zero means five heartbeats of the primary (it says how often
	// it sends them), or 15 s if it does not say.
	StreamTimeout time.Duration
	// InboxSegment is the size of an inbox segment: segments whose
	// changes are all applied are removed whole. Zero means
	// DefaultInboxSize (8 MiB).
	InboxSegment int64
	// MaxFrame is the largest frame accepted; zero means DefaultMaxFrame.
	MaxFrame int
	// OrphanMailbox is the mailbox of the primary that orphans are
	// re-delivered into when this node rejoins a new primary (see
	// [KeepOrphans]); empty means DefaultOrphanMailbox.
	OrphanMailbox string
	// Logger receives a line per error, reconnection and held change;
	// nil means slog.Default().
	Logger *slog.Logger
}
