package storenode

import (
	"context"
	"fmt"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/failover"
	"github.com/resilmail/resilmail/replicate/store"
)

// Candidate returns the node as a [failover.Candidate] for an Elector: it
// is eligible while primary (drained by a switchover too: it keeps the
// lease until the switchover hands it over or resumes), or as a standby
// whose replica lags its primary's last announced position by at most
// maxLag changes (a node that follows nobody, such as a fenced old primary
// that has not rejoined, is not). Promote raises the store's epoch to at
// least the term's token; Demote fences the store at its own epoch (a
// drained one is left to its switchover, which demotes it or resumes it).
func (n *Node) Candidate(maxLag uint64) failover.Candidate {
	return failover.CandidateFuncs{
		EligibleFunc: func(ctx context.Context) error {
			if n.st.Role() == store.RolePrimary || n.drained() {
				return nil
			}
			r := n.Replica()
			if r == nil {
				return fmt.Errorf("%s follows no primary", n.opts.Name)
			}
			st := r.Stats()
			if st.PrimaryPosition > st.Applied+maxLag {
				return fmt.Errorf("%s lags its primary by %d changes (at most %d)", n.opts.Name, st.PrimaryPosition-st.Applied, maxLag)
			}
			return nil
		},
		PromoteFunc: func(ctx context.Context, token uint64) error {
			return n.Promote(ctx, max(resilmail.Epoch(token), n.st.Epoch()+1))
		},
		DemoteFunc: func(ctx context.Context, reason error) error {
			if n.st.Role() != store.RolePrimary {
				return nil
			}
			n.log.Warn("storenode: demoted", "node", n.opts.Name, "reason", reason)
			return n.Demote(ctx, n.st.Epoch())
		},
	}
}

// drained reports whether the node is a primary that a switchover drained:
// it serves its stream, its store refuses writes as a standby (not fenced).
func (n *Node) drained() bool {
	return n.st.Role() == store.RoleStandby && n.Primary() != nil
}

// FollowLeader makes the node, while it does not hold the lease, follow
// the holder that l names, checking every interval, until ctx ends. A
// node whose store says primary while another node holds the lease (a
// primary restarted after a crash or a partition) is fenced first: call
// [Node.CheckLeader] once before taking writes.
func (n *Node) FollowLeader(ctx context.Context, l failover.Leader, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := n.CheckLeader(ctx, l); err != nil && ctx.Err() == nil {
			n.log.Warn("storenode: cannot follow the primary", "node", n.opts.Name, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// CheckLeader asks l who holds the lease; if another node does, it fences
// this node's store if it says primary and follows that node.
func (n *Node) CheckLeader(ctx context.Context, l failover.Leader) error {
	name, _, err := l.Leader(ctx)
	if err != nil || name == "" || name == n.opts.Name {
		return err
	}
	if n.st.Role() == store.RolePrimary {
		n.log.Warn("storenode: another node holds the lease: fencing this store", "node", n.opts.Name, "primary", name)
		if err := n.Demote(ctx, n.st.Epoch()); err != nil {
			return err
		}
	}
	return n.Follow(ctx, name)
}
