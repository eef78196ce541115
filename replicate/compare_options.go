package replicate

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/resilmail/resilmail"
)

// CompareOptions configure [Compare]. A nil *CompareOptions or the zero
// value gives working defaults; each field says what its zero value means.
type CompareOptions struct {
	// LeafSize is how many messages (both sides together) a UID range may
	// hold for bisection to stop and list them; zero means 64.
	LeafSize int
	// Parallelism is how many users are compared at once; zero means 4.
	Parallelism int
	// Users, if not nil, restricts the comparison to these users.
	Users []string
	// Logger receives a summary line per comparison; nil means
	// slog.Default().
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o *CompareOptions) withDefaults() CompareOptions {
	var r CompareOptions
	if o != nil {
		r = *o
	}
	if r.LeafSize <= 0 {
		r.LeafSize = 64
	}
	if r.Parallelism <= 0 {
		r.Parallelism = 4
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	return r
}

// ComparerOptions configure a [Comparer]. A nil pointer or the zero value
// gives working defaults; each field says what its zero value means.
type ComparerOptions struct {
	// Interval is the time between the end of one run and the start of
	// the next; zero means one hour.
	Interval time.Duration
	// ReportOnly makes runs compare and report without repairing.
	ReportOnly bool
	// Compare and Repair configure each run's [Compare] and [Repair]; nil
	// means their defaults (with this Logger and Now).
	Compare *CompareOptions
	Repair  *RepairOptions
	// RestorePrimary, if set, is called (unless ReportOnly) with every
	// body a run finds damaged on the primary, to send the primary the
	// replica's good copy; [Replica.Comparer] sets it.
	RestorePrimary func(ctx context.Context, d resilmail.Digest) error
	// Logger receives a line per run; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// InventoryHandlerOptions configure [InventoryHandler]. Either Secret or
// Authenticate must be set.
type InventoryHandlerOptions struct {
	// Secret is the secret shared with the clients: a request must carry
	// "Authorization: Bearer " + InventoryToken(Secret), compared in
	// constant time.
	Secret []byte
	// Authenticate, if set, decides instead of Secret: it returns nil to
	// let a request in (for example after checking
	// r.TLS.PeerCertificates), or an error to refuse it with 401.
	Authenticate func(r *http.Request) error
	// Logger receives a line per refused or failed request; nil means
	// slog.Default(). Secrets and tokens are never logged.
	Logger *slog.Logger
}

// RemoteInventoryOptions configure [NewRemoteInventory].
type RemoteInventoryOptions struct {
	// Secret is the secret shared with the server (see
	// [InventoryHandlerOptions]); nil sends no token (for client
	// certificates, set Client's TLS configuration).
	Secret []byte
	// Client sends the requests; nil means a client with a 30 s timeout.
	Client *http.Client
	// MaxResponseBytes bounds a response body; zero means 64 MiB. A
	// longer one is an error wrapping ErrBadInventory.
	MaxResponseBytes int64
}

// RepairOptions configure [Repair]. A nil *RepairOptions or the zero value
// gives working defaults; each field says what its zero value means.
type RepairOptions struct {
	// MaxRemoveShare is the share of a mailbox's messages that repair
	// expunges without confirmation; an expunge of more is held. Zero
	// means 0.5; 1 or more holds nothing. Deleting a whole user or mailbox
	// that holds messages is always held (see [RepairResult.Held]) unless
	// MaxRemoveShare is 1 or more.
	MaxRemoveShare float64
	// MinHeldMessages is the smallest expunge that can be held: expunges
	// from a mailbox with fewer messages are never held. Zero means 20.
	MinHeldMessages int
	// HoldAllRemovals holds every removal of messages, whatever its
	// share and size, until the operator confirms it: what a rejoining
	// replica uses when its journal no longer tells which of its
	// messages are orphans (any removal may take one).
	HoldAllRemovals bool
	// Confirmed are held removals the operator confirmed (from an
	// earlier RepairResult.Held). A confirmation matches the same kind,
	// user and mailbox id, and covers a removal of at most as many
	// messages as it states (and, for HeldOrphan, of no UID it does not
	// list).
	Confirmed []HeldRemoval
	// BatchSize is how many changes one Target.Apply call carries; zero
	// means 1000.
	BatchSize int
	// Epoch stamps the repair's changes; zero means the replica's
	// Target.Epoch() (so that the replica never fences its own repair).
	Epoch resilmail.Epoch
	// Logger receives a line per repaired mailbox and per held removal;
	// nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock that stamps changes; nil means time.Now.
	Now func() time.Time
}

func (o *RepairOptions) withDefaults() RepairOptions {
	var r RepairOptions
	if o != nil {
		r = *o
	}
	if r.MaxRemoveShare <= 0 {
		r.MaxRemoveShare = 0.5
	}
	if r.MinHeldMessages <= 0 {
		r.MinHeldMessages = 20
	}
	if r.BatchSize <= 0 {
		r.BatchSize = 1000
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	return r
}
