package storenode_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/failover"
	"github.com/resilmail/resilmail/failover/storenode"
	"github.com/resilmail/resilmail/replicate/store"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type pair struct {
	a, b *storenode.Node
}

func newPair(t *testing.T) pair {
	ctx := context.Background()
	open := func() *store.Store {
		st, err := store.Open(t.TempDir(), &store.Options{Logger: quiet(), ScrubInterval: -1})
		require.NoError(t, err)
		t.Cleanup(func() { st.Close() })
		return st
	}
	sa, sb := open(), open()
	require.NoError(t, sa.SetEpoch(ctx, 1))
	require.NoError(t, sb.SetReadOnly(true))
	peers := map[string]string{}
	a := storenode.New(sa, storenode.Options{Name: "a", Secret: secret, Dir: t.TempDir(), Peers: peers, Heartbeat: 50 * time.Millisecond, Logger: quiet()})
	b := storenode.New(sb, storenode.Options{Name: "b", Secret: secret, Dir: t.TempDir(), Peers: peers, Heartbeat: 50 * time.Millisecond, Logger: quiet()})
	for _, n := range []*storenode.Node{a, b} {
		srv := httptest.NewServer(n.Handler())
		t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
		peers[n.Name()] = srv.URL
		t.Cleanup(func() { n.Close() })
	}
	require.NoError(t, a.Serve())
	require.NoError(t, b.Follow(ctx, "a"))
	require.NoError(t, sa.CreateUser(ctx, "alice"))
	return pair{a, b}
}

func inboxCount(t *testing.T, st *store.Store) int {
	list, err := st.Mailboxes(context.Background(), "alice")
	require.NoError(t, err)
	for _, mb := range list {
		if mb.Name == "INBOX" {
			msgs, err := st.MessageRange(context.Background(), "alice", mb.ID, 1, ^uint32(0), 1<<20)
			require.NoError(t, err)
			return len(msgs)
		}
	}
	return 0
}

// writer appends to whichever node's store takes the write, counting
// acknowledged appends per node, until stopped.
type writer struct {
	acked map[string]*atomic.Int64
	stop  chan struct{}
	wg    sync.WaitGroup
}

func startWriter(t *testing.T, nodes ...*storenode.Node) *writer {
	w := &writer{acked: map[string]*atomic.Int64{}, stop: make(chan struct{})}
	for _, n := range nodes {
		w.acked[n.Name()] = new(atomic.Int64)
	}
	w.wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			took := 0
			for _, n := range nodes {
				_, err := n.Store().Append(context.Background(), "alice", "INBOX", nil, time.Time{}, strings.NewReader("Subject: w\r\n\r\nmessage\r\n"))
				if err == nil {
					w.acked[n.Name()].Add(1)
					took++
				} else if !strings.Contains(err.Error(), "read-only") && !strings.Contains(err.Error(), "fenced") && !strings.Contains(err.Error(), "closed") {
					t.Errorf("append on %s: %v", n.Name(), err)
				}
			}
			if took > 1 {
				t.Errorf("both nodes took write %d", i)
			}
		}
	})
	return w
}

// waitAcked polls until node has acknowledged n writes.
func waitAcked(t *testing.T, w *writer, node string, n int64) {
	require.Eventually(t, func() bool { return w.acked[node].Load() >= n }, 10*time.Second, time.Millisecond, "%s acknowledged %d writes, want %d", node, w.acked[node].Load(), n)
}

func (w *writer) finish() { close(w.stop); w.wg.Wait() }

// TestSwitchoverAndFailbackOnTheRealStores moves the primary role between
// two real stores over the replication stream while a writer keeps
// writing: at no time do both take a write, and at the end both hold
// every acknowledged message.
func TestSwitchoverAndFailbackOnTheRealStores(t *testing.T) {
	p := newPair(t)
	w := startWriter(t, p.a, p.b)
	waitAcked(t, w, "a", 20)
	opts := &failover.SwitchoverOptions{Logger: quiet(), StepTimeout: 5 * time.Second, CatchUpTimeout: 10 * time.Second, MaxLag: 1 << 20}
	rep, err := failover.Switchover(context.Background(), p.a, p.b, opts)
	require.NoError(t, err, "%+v", rep)
	assert.Equal(t, resilmail.Epoch(2), p.b.Store().Epoch())
	t.Logf("switchover a->b: writes refused for %v", rep.WriteWindow.Round(time.Microsecond))
	waitAcked(t, w, "b", 20)
	rep, err = failover.Switchover(context.Background(), p.b, p.a, opts)
	require.NoError(t, err, "%+v", rep)
	t.Logf("failback b->a: writes refused for %v", rep.WriteWindow.Round(time.Microsecond))
	waitAcked(t, w, "a", w.acked["a"].Load()+20)
	w.finish()
	total := int(w.acked["a"].Load() + w.acked["b"].Load())
	require.Eventually(t, func() bool { return inboxCount(t, p.b.Store()) == total }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, total, inboxCount(t, p.a.Store()), "every acknowledged write is on the primary")
	assert.Equal(t, resilmail.Epoch(3), p.a.Store().Epoch())
}
