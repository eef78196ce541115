package failover

import (
	"context"
	"time"
)

// A Lease is the right to be the primary of a pair or cluster, held by at
// most one node at a time. Acquire blocks until the caller holds it (or ctx
// ends, or the lease cannot be had: the error says why) and returns the
// [Term] it holds it for. A Lease is safe for concurrent use, but a node
// holds at most one Term of it at a time.
//
// The two implementations are [Manual] (the operator decides: the default)
// and [Etcd] (an election among the nodes on an etcd cluster).
type Lease interface {
	Acquire(ctx context.Context) (Term, error)
}

// LeaseFunc adapts a function to the [Lease] interface.
type LeaseFunc func(ctx context.Context) (Term, error)

// Acquire calls f(ctx).
func (f LeaseFunc) Acquire(ctx context.Context) (Term, error) { return f(ctx) }

var _ Lease = LeaseFunc(nil)

// A Term is one holding of a [Lease]. Its methods are safe for concurrent
// use.
//
// A holder acts as primary only while the term is valid: it calls
// KeepAlive at least every [Timers].Renew, and stops writing as soon as
// Lost is closed. Lost is closed by the term itself, from its local clock,
// a safety margin before any other node can acquire the lease, so a holder
// that cannot renew (a partition from etcd, a paused process) learns it has
// lost the lease while nobody else holds it yet.
type Term interface {
	// Token is the fencing token: strictly greater than the token of
	// every earlier term of the same lease. A promotion raises the
	// store's epoch to at least the token, so that writes of an older
	// holder are refused everywhere.
	Token() uint64
	// KeepAlive renews the term once. It returns the instant (local clock)
	// until which the term is certainly held, or an error. An error
	// wrapping [ErrLeaseLost] means the term is over for good; any other
	// error is temporary (try again before the validity ends).
	KeepAlive(ctx context.Context) (time.Time, error)
	// Lost is closed when the term can no longer be assumed held: its
	// validity ran out without a renewal, the lease store said it is gone,
	// or Release was called.
	Lost() <-chan struct{}
	// Release gives the lease up (so another node can acquire it at once)
	// and closes Lost. It is idempotent.
	Release(ctx context.Context) error
}

// A Leader names the current holder of a lease, for those that follow the
// primary (relays, the client proxy, the status page). [Etcd] implements
// it; name is empty when nobody holds the lease.
type Leader interface {
	Leader(ctx context.Context) (name string, token uint64, err error)
}
