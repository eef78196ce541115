// Package failover decides which mailbox-server node is the primary, and
// moves that role safely: roles and epochs kept durably, a [Lease] that
// one node holds at a time (manual by default, or an election on etcd),
// and an [Elector] that promotes its node while it holds the lease and
// demotes it as soon as it cannot be sure it still does.
//
// # Roles and epochs
//
// A node's [State] is its [Role] (standby, primary, fenced) and its epoch.
// [State.Next] is the pure transition function. The durable copy of a
// node's role and epoch is its store's (replicate/store: Role, Epoch,
// Promote, Demote, kept in the store's HISTORY file), so a restart resumes
// in the role the store had; this package keeps no second copy that could
// disagree with it. Only a primary writes. A promotion
// raises the epoch; a primary that hears of a higher epoch, or loses its
// lease, is fenced: it writes nothing until it rejoins as a standby, with
// its unreplicated tail kept aside.
//
// # Leases and fencing
//
// A [Term] carries a fencing token that rises with every term; the node
// promoted under it raises its epoch to at least the token, so that the
// stores refuse any change of an older primary (fencing rests on the
// epochs, not on timing). [Etcd]'s token is the revision of its election
// key. A term is valid until TTL - Margin after the last renewal that
// succeeded was sent; etcd cannot expire it earlier than TTL after it
// received that renewal, so a primary cut from etcd demotes itself before
// another node can win. [Timers.Check] refuses timers under which that
// could fail. Validity is measured on the monotonic clock (Go's
// time.Now/time.Until), so a jump of the wall clock neither extends nor
// cuts a term. Acquire never hands out a term from a campaign that
// returned after its session expired (a known pitfall of etcd's
// Election.Campaign): it renews the lease and checks its key first.
//
// With the manual lease, the operator promotes a node:
//
//	lease := failover.NewManual(lastEpoch)
//	el, err := failover.NewElector(lease, node, nil) // node: a Candidate
//	go el.Run(ctx)
//	lease.Grant(lastEpoch + 1) // node.Promote(ctx, lastEpoch+1)
//	lease.Revoke()             // node.Demote(ctx, ErrLeaseLost...)
//
// # Switchover
//
// [Switchover] moves the primary role between two [Member]s in steps that
// are logged and reported as they happen: check the target's lag (at most
// MaxLag, so a failback waits until the old primary has caught up), drain
// the primary, read its final position, wait until the target holds it,
// choose the new epoch, demote the primary, promote the target, make the
// old primary follow. A step that fails or times out rolls back to the old
// primary serving. Package failover/storenode implements Member (and
// [Candidate]) over replicate's stores.
//
// # Following the primary
//
// A [Watcher] reads the nodes' /status and names the active node;
// [FollowDeliverer] sends a relay's deliveries to it (temporary failures
// while there is none, so mail stays queued); a [Proxy] relays the clients
// that reach a standby to it, with a PROXY protocol v2 header
// (failover/proxyproto) for nodes that trust it, and drains the old
// connections when the backend changes. Package failover/statuspage is the
// status page.
//
// # Goroutines
//
// [Elector.Run] owns every goroutine it starts and returns when its
// context ends, after demoting its node and releasing the term. An etcd
// term runs a timer that closes Lost; it stops on Release or loss. A
// [Candidate]'s methods are called from the Elector's goroutine only.
// [Watcher.Run] polls in its caller's goroutine (one more per node and
// round). A [Proxy] runs two goroutines per relayed connection; Close
// ends them and waits.
package failover
