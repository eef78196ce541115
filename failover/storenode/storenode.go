// Package storenode runs a mailbox store (replicate/store) as a node whose
// primary role a [failover.Switchover] moves: as primary it serves the
// replication stream (replicate.Primary), as standby it follows a peer's
// (replicate.Replica), and [Node] implements [failover.Member] over the
// store's durable roles and epochs (Promote raises the epoch before the
// first write, Demote fences the store and ends its streams, a demoted
// node that follows the new primary hands its unreplicated tail over as
// orphans).
//
//	a, b := storenode.New(stA, optsA), storenode.New(stB, optsB) // Options.Peers: name -> URL of Handler
//	a.Serve()                                                    // a's store is primary
//	b.Follow(ctx, "a")                                           // b replicates a
//	rep, err := failover.Switchover(ctx, a, b, nil)              // b primary at a higher epoch, a follows b
//
// Goroutines: a standby's replica runs in a goroutine the Node owns; it
// stops on Promote and Close, except after a promotion that left delayed
// destructive changes for the operator ([Node.Held], [Node.Confirm]):
// then it runs on, following no one, until the next Follow or Close.
package storenode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/failover"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// Options configure a [Node].
type Options struct {
	// Name names the node (the replica name it follows others with).
	Name string
	// Secret authenticates the replication stream both ways.
	Secret []byte
	// Dir holds the replicas' inboxes, one per primary followed
	// ("inbox-" and its name), kept across restarts: what a replica
	// acknowledged and had not applied when its process died is applied
	// when it follows that primary again.
	Dir string
	// Peers maps node names to the base URL of their [Node.Handler].
	Peers map[string]string
	// Heartbeat of the stream when primary; zero means replicate's default.
	Heartbeat time.Duration
	// Primary, if set, is the template of the options the node serves its
	// stream with while primary (acknowledgement mode, replica secrets,
	// ...); its zero Secret, Heartbeat and Logger take the fields above.
	Primary *replicate.PrimaryOptions
	// Replica, if set, is the template of the options the node follows a
	// primary with (guard, repair, HTTP client, ...); its zero Name,
	// Secret and Logger take the fields above, a zero MaxBackoff 100 ms.
	Replica *replicate.ReplicaOptions
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// A Node is a store with its role-dependent replication.
type Node struct {
	st   *store.Store
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	primary  *replicate.Primary
	replica  *replicate.Replica
	follows  string
	done     chan error
	promoted replicate.PromoteResult // the last promotion from standby
	// kept is the replica of the last promotion while it holds delayed
	// changes for the operator (it applies those confirmed, as changes
	// of the new epoch); keptDone its Run's result.
	kept     *replicate.Replica
	keptDone chan error
}

var _ failover.Member = (*Node)(nil)

// New returns a node over st. It starts nothing: call [Node.Serve] (as
// primary) or [Node.Follow].
func New(st *store.Store, opts Options) *Node {
	n := &Node{st: st, opts: opts, log: opts.Logger}
	if n.log == nil {
		n.log = slog.Default()
	}
	return n
}

// Name returns the node's name.
func (n *Node) Name() string { return n.opts.Name }

// Store returns the node's store.
func (n *Node) Store() *store.Store { return n.st }

// Handler serves the replication stream while the node is primary and
// answers 503 otherwise.
func (n *Node) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.mu.Lock()
		p := n.primary
		n.mu.Unlock()
		if p == nil {
			http.Error(w, "not the primary", http.StatusServiceUnavailable)
			return
		}
		p.Handler().ServeHTTP(w, r)
	})
}

// Serve makes an existing primary store serve its stream.
func (n *Node) Serve() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.servePrimaryLocked()
}

func (n *Node) servePrimaryLocked() error {
	var po replicate.PrimaryOptions
	if n.opts.Primary != nil {
		po = *n.opts.Primary
	}
	if po.Secret == nil {
		po.Secret = n.opts.Secret
	}
	if po.Heartbeat == 0 {
		po.Heartbeat = n.opts.Heartbeat
	}
	if po.Logger == nil {
		po.Logger = n.log
	}
	p, err := replicate.NewPrimary(n.st, &po)
	if err != nil {
		return err
	}
	n.primary = p
	return nil
}

// Drain makes the store refuse local writes until resume.
func (n *Node) Drain(ctx context.Context) (func(context.Context) error, error) {
	if err := n.st.SetRole(ctx, store.RoleStandby); err != nil {
		return nil, err
	}
	return func(ctx context.Context) error { return n.st.SetRole(ctx, store.RolePrimary) }, nil
}

// Position is the store's head as primary, or what its replica applied of
// its primary's journal as standby.
func (n *Node) Position(ctx context.Context) (failover.Position, error) {
	n.mu.Lock()
	r := n.replica
	n.mu.Unlock()
	if r != nil {
		return failover.Position{History: n.st.UpstreamHistory().String(), Epoch: n.st.Epoch(), Seq: r.Stats().Applied}, nil
	}
	h := n.st.Head()
	return failover.Position{History: h.History.String(), Epoch: h.Epoch, Seq: h.Seq}, nil
}

// WaitCaughtUp waits until the replica has applied pos.
func (n *Node) WaitCaughtUp(ctx context.Context, pos failover.Position) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		n.mu.Lock()
		r := n.replica
		n.mu.Unlock()
		if r == nil {
			return errors.New("storenode: not following a primary")
		}
		if r.Stats().Applied >= pos.Seq {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("storenode: %s applied %d of %d: %w", n.opts.Name, r.Stats().Applied, pos.Seq, ctx.Err())
		case <-t.C:
		}
	}
}

// Promote makes the node primary at epoch and serves the stream. A
// standby is promoted by its replica (replicate.Replica.Promote: every
// change it acknowledged is applied first, delayed destructive changes
// resolved by the guard's rule, then the store continues the followed
// history at the new epoch); a node that follows nobody (a fenced old
// primary, a primary raising its epoch under a new lease term) by its
// store. A node that is primary at epoch already returns nil.
func (n *Node) Promote(ctx context.Context, epoch resilmail.Epoch) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.st.Role() == store.RolePrimary && n.st.Epoch() == epoch && n.primary != nil {
		return nil
	}
	if n.replica != nil {
		res, err := n.replica.Promote(ctx, epoch)
		if err != nil {
			return err
		}
		n.promoted = res
		if len(res.Held) > 0 {
			// Its Run goes on, following no one, to apply what the
			// operator confirms of the changes left delayed.
			n.kept, n.keptDone = n.replica, n.done
			n.replica, n.follows, n.done = nil, "", nil
		} else if err := n.stopReplicaLocked(); err != nil {
			n.log.Warn("storenode: the promoted replica stopped with an error", "node", n.opts.Name, "err", err)
		}
		n.log.Warn("storenode: promoted from standby", "node", n.opts.Name, "epoch", uint64(epoch), "until", res.Until,
			"drained", res.Drained, "held", len(res.Held), "took", res.Took)
	} else if err := n.st.Promote(ctx, epoch, 0); err != nil {
		return err
	}
	if n.primary != nil {
		// A primary raising its epoch keeps its stream: the next change
		// carries the new epoch to the replicas.
		return nil
	}
	return n.servePrimaryLocked()
}

// LastPromotion returns what the last promotion from standby did (zero if
// none since the node started).
func (n *Node) LastPromotion() replicate.PromoteResult {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.promoted
}

// Primary returns the stream the node serves while primary, nil otherwise.
func (n *Node) Primary() *replicate.Primary {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.primary
}

// Follows returns the name of the peer the node replicates, empty when it
// follows none.
func (n *Node) Follows() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.follows
}

// Await waits, as replicate.Primary.Await does, until the change at pos
// is acknowledged as the primary's mode asks; it fails when the node is
// not serving as primary (a delivery then answers 451 and is retried).
func (n *Node) Await(ctx context.Context, pos uint64) error {
	p := n.Primary()
	if p == nil {
		return ErrNotPrimary
	}
	return p.Await(ctx, pos)
}

// Demote fences the store at epoch and ends its streams.
func (n *Node) Demote(ctx context.Context, epoch resilmail.Epoch) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.primary != nil {
		if err := n.primary.Demote(ctx, epoch); err != nil {
			return err
		}
		n.primary = nil
		return nil
	}
	return n.st.Demote(ctx, epoch)
}

// Follow makes the node a replica of the peer primary.
func (n *Node) Follow(ctx context.Context, primary string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.replica != nil && n.follows == primary {
		return nil
	}
	n.stopKeptLocked()
	url, ok := n.opts.Peers[primary]
	if !ok {
		return fmt.Errorf("storenode: no URL for peer %q", primary)
	}
	if n.replica != nil {
		if err := n.stopReplicaLocked(); err != nil {
			return err
		}
	}
	var ro replicate.ReplicaOptions
	if n.opts.Replica != nil {
		ro = *n.opts.Replica
	}
	if ro.Name == "" {
		ro.Name = n.opts.Name
	}
	if ro.Secret == nil {
		ro.Secret = n.opts.Secret
	}
	if ro.Logger == nil {
		ro.Logger = n.log
	}
	if ro.MaxBackoff == 0 {
		ro.MaxBackoff = 100 * time.Millisecond
	}
	r, err := replicate.NewReplica(n.st, url, filepath.Join(n.opts.Dir, "inbox-"+primary), &ro)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	n.replica, n.follows, n.done = r, primary, done
	return nil
}

func (n *Node) stopReplicaLocked() error {
	err := n.replica.Close()
	<-n.done
	n.replica, n.follows, n.done = nil, "", nil
	return err
}

func (n *Node) stopKeptLocked() {
	if n.kept != nil {
		n.kept.Close()
		<-n.keptDone
		n.kept, n.keptDone = nil, nil
	}
}

// Held returns the destructive changes the guard delays (the
// ReplicaOptions' Hold) for the operator: the running replica's, or,
// after a promotion that left some, the promoted replica's, until the
// node follows a primary again.
func (n *Node) Held() []replicate.HeldChange {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.replica != nil:
		return n.replica.Held()
	case n.kept != nil:
		return n.kept.Held()
	}
	return nil
}

// Confirm applies the delayed change seq of user (see [Node.Held]).
func (n *Node) Confirm(user string, seq uint64) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.replica != nil:
		return n.replica.Confirm(user, seq)
	case n.kept != nil:
		return n.kept.Confirm(user, seq)
	}
	return errors.New("storenode: no replica holds delayed changes")
}

// Replica returns the running replica, nil when primary.
func (n *Node) Replica() *replicate.Replica {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.replica
}

// Close stops the replica, if any.
func (n *Node) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stopKeptLocked()
	if n.replica != nil {
		return n.stopReplicaLocked()
	}
	return nil
}

// ErrNotPrimary is returned by [Node.Await] when the node does not serve
// as primary.
var ErrNotPrimary = errors.New("storenode: not the primary")
