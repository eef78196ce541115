package storenode_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/failover"
	"github.com/resilmail/resilmail/failover/storenode"
	"github.com/resilmail/resilmail/internal/etcdtest"
	"github.com/resilmail/resilmail/internal/faultproxy"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

var timers = failover.Timers{TTL: 2 * time.Second, Renew: 300 * time.Millisecond, RequestTimeout: 250 * time.Millisecond, Margin: 300 * time.Millisecond}

// ack is one acknowledged write: its id, the node that took it and the
// store's epoch before and after (equal when the write is classified).
type ack struct {
	id    string
	node  string
	epoch resilmail.Epoch
}

// TestPartitionNeverTwoWriters cuts the primary from etcd and from the
// standby while a writer keeps writing to both stores: by the stores'
// epochs, no epoch has writes acknowledged by two nodes; the standby takes
// over; after healing, the old primary rejoins and every acknowledged
// write is on the new primary (its unreplicated tail as orphans).
func TestPartitionNeverTwoWriters(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := etcdtest.Start(t, 3)
	etcdProxy := map[string][]*faultproxy.Proxy{}
	client := func(name string, cut bool) *clientv3.Client {
		if !cut {
			return c.Client()
		}
		var eps []string
		for _, m := range c.Members {
			p, err := faultproxy.New(strings.TrimPrefix(m.ClientURL, "http://"), 1)
			require.NoError(t, err)
			t.Cleanup(func() { p.Close() })
			etcdProxy[name] = append(etcdProxy[name], p)
			eps = append(eps, "http://"+p.Addr())
		}
		return c.Client(eps...)
	}

	open := func() *store.Store {
		st, err := store.Open(t.TempDir(), &store.Options{Logger: quiet(), ScrubInterval: -1})
		require.NoError(t, err)
		t.Cleanup(func() { st.Close() })
		return st
	}
	sa, sb := open(), open()
	require.NoError(t, sb.SetReadOnly(true))
	peersA, peersB := map[string]string{}, map[string]string{}
	a := storenode.New(sa, storenode.Options{Name: "a", Secret: secret, Dir: t.TempDir(), Peers: peersA, Heartbeat: 50 * time.Millisecond, Logger: quiet()})
	b := storenode.New(sb, storenode.Options{Name: "b", Secret: secret, Dir: t.TempDir(), Peers: peersB, Heartbeat: 50 * time.Millisecond, Logger: quiet()})
	srvA, srvB := httptest.NewServer(a.Handler()), httptest.NewServer(b.Handler())
	t.Cleanup(func() { srvA.CloseClientConnections(); srvA.Close(); srvB.CloseClientConnections(); srvB.Close() })
	// b reaches a's stream through a proxy the partition cuts.
	link, err := faultproxy.New(strings.TrimPrefix(srvA.URL, "http://"), 2)
	require.NoError(t, err)
	t.Cleanup(func() { link.Close() })
	peersB["a"] = "http://" + link.Addr()
	peersA["b"] = srvB.URL
	t.Cleanup(func() { a.Close(); b.Close() })

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	start := func(n *storenode.Node, cl *clientv3.Client) {
		lease, err := failover.NewEtcd(cl, n.Name(), &failover.EtcdOptions{Timers: timers, Logger: quiet()})
		require.NoError(t, err)
		el, err := failover.NewElector(lease, n.Candidate(1000), &failover.ElectorOptions{Timers: timers, Logger: quiet()})
		require.NoError(t, err)
		wg.Go(func() { el.Run(ctx) })
		wg.Go(func() { n.FollowLeader(ctx, lease, 100*time.Millisecond) })
	}
	// a starts as the only candidate with a store of its own (a primary
	// that never was): it must win first.
	require.NoError(t, sa.SetEpoch(ctx, 1))
	start(a, client("a", true))
	require.Eventually(t, func() bool { return sa.Role() == store.RolePrimary && a.Replica() == nil }, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, sa.CreateUser(ctx, "alice"))
	start(b, client("b", false))
	require.Eventually(t, func() bool { r := b.Replica(); return r != nil && r.Stats().Applied > 0 }, 10*time.Second, 5*time.Millisecond)

	// The writer tries every store in turn, as clients reaching both
	// datacentres would.
	var mu sync.Mutex
	var acks []ack
	stop := make(chan struct{})
	var ww sync.WaitGroup
	ww.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			for _, n := range []*storenode.Node{a, b} {
				id := fmt.Sprintf("w%d-%s", i, n.Name())
				before := n.Store().Epoch()
				_, err := n.Store().Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader("Subject: "+id+"\r\n\r\n"+id+"\r\n"))
				if err != nil {
					continue
				}
				after := n.Store().Epoch()
				mu.Lock()
				e := before
				if before != after {
					e = 0 // raised during the write: not classified
				}
				acks = append(acks, ack{id, n.Name(), e})
				mu.Unlock()
			}
			time.Sleep(2 * time.Millisecond) // paces the writer (it waits for nothing)
		}
	})
	count := func(node string) int {
		mu.Lock()
		defer mu.Unlock()
		k := 0
		for _, a := range acks {
			if a.node == node {
				k++
			}
		}
		return k
	}
	require.Eventually(t, func() bool { return count("a") >= 30 }, 10*time.Second, 5*time.Millisecond)

	// The partition: a is cut from etcd and from b.
	cut := time.Now()
	for _, p := range append(etcdProxy["a"], link) {
		p.SetFaults(faultproxy.Faults{Cut: 1})
		p.CutAll()
	}
	require.Eventually(t, func() bool { return sb.Role() == store.RolePrimary }, 4*timers.TTL, 5*time.Millisecond, "b never took over")
	took := time.Since(cut)
	require.Eventually(t, func() bool { return count("b") >= 30 }, 10*time.Second, 5*time.Millisecond)
	assert.NotEqual(t, store.RolePrimary, sa.Role(), "a demoted itself")
	t.Logf("partition: b primary %v after the cut (TTL %v); a's role %s", took.Round(time.Millisecond), timers.TTL, sa.Role())

	// Healing: a rejoins as b's standby; its tail comes over as orphans.
	for _, p := range append(etcdProxy["a"], link) {
		p.SetFaults(faultproxy.Faults{})
	}
	require.Eventually(t, func() bool { r := a.Replica(); return r != nil && r.Stats().Rejoins+r.Stats().Applied > 0 }, 20*time.Second, 10*time.Millisecond)
	close(stop)
	ww.Wait()

	// By the epochs: no epoch has writes acknowledged by two nodes.
	mu.Lock()
	byEpoch := map[resilmail.Epoch]map[string]int{}
	for _, x := range acks {
		if x.epoch == 0 {
			continue
		}
		if byEpoch[x.epoch] == nil {
			byEpoch[x.epoch] = map[string]int{}
		}
		byEpoch[x.epoch][x.node]++
	}
	ids := map[string]bool{}
	for _, x := range acks {
		ids[x.id] = true
	}
	mu.Unlock()
	for e, nodes := range byEpoch {
		assert.Len(t, nodes, 1, "epoch %d had writers %v", e, nodes)
	}
	// The writer is one goroutine, so acks are in real-time order: once a
	// write of epoch E is acknowledged, none of an older epoch may be (that
	// would be two primaries accepting writes at once).
	var high resilmail.Epoch
	mu.Lock()
	for i, x := range acks {
		if x.epoch != 0 && x.epoch < high {
			t.Errorf("ack %d (%s on %s) at epoch %d after a write at epoch %d", i, x.id, x.node, x.epoch, high)
			break
		}
		high = max(high, x.epoch)
	}
	mu.Unlock()
	t.Logf("writes by epoch and node: %v", byEpoch)

	// Every acknowledged write is on b, in INBOX or as an orphan.
	require.Eventually(t, func() bool {
		return len(missing(t, sb, ids)) == 0
	}, 20*time.Second, 20*time.Millisecond, "missing on the new primary: %v", func() []string { return missing(t, sb, ids) })
}

// missing returns the ids of ids that no message of alice on st holds.
func missing(t *testing.T, st *store.Store, ids map[string]bool) []string {
	found := map[string]bool{}
	list, err := st.Mailboxes(context.Background(), "alice")
	require.NoError(t, err)
	for _, mb := range list {
		if mb.Name != "INBOX" && mb.Name != replicate.DefaultOrphanMailbox {
			continue
		}
		msgs, err := st.MessageRange(context.Background(), "alice", mb.ID, 1, ^uint32(0), 1<<20)
		require.NoError(t, err)
		for _, m := range msgs {
			b, err := st.Body(context.Background(), m.Digest)
			require.NoError(t, err)
			if _, rest, ok := strings.Cut(string(b), "Subject: "); ok {
				id, _, _ := strings.Cut(rest, "\r\n")
				found[id] = true
			}
		}
	}
	var out []string
	for id := range ids {
		if !found[id] {
			out = append(out, id)
		}
	}
	return out
}
