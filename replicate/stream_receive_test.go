package replicate_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// gatedTarget holds the changes of one user while gated is set.
type gatedTarget struct {
	blockingTarget
	gated atomic.Bool
}

func (g *gatedTarget) Apply(ctx context.Context, changes []resilmail.Change, body replicate.BodyFunc) error {
	if !g.gated.Load() {
		return g.Store.Apply(ctx, changes, body)
	}
	return g.blockingTarget.Apply(ctx, changes, body)
}

func messages(t testing.TB, s *store.Store, user, mailbox string) int {
	t.Helper()
	st, err := s.MailboxStatus(context.Background(), user, mailbox)
	if err != nil {
		return 0
	}
	return st.Messages
}

// TestSharedBodySurvivesAnotherUsersExpunge: the replica holds a body
// (alice's); bob gets the same content and alice expunges hers; bob's lane
// is slow, so alice's expunge applies first; then the primary dies (and,
// in one case, the replica restarts too). Bob's acknowledged message must
// still be applied, from the copy the replica pinned in its inbox.
func TestSharedBodySurvivesAnotherUsersExpunge(t *testing.T) {
	for _, tc := range []struct {
		name    string
		body    string
		restart bool
	}{
		{"inline", msgText("shared", "a small shared body"), false},
		{"fetched", msgText("shared", strings.Repeat("a large shared body line\r\n", 4000)), false},
		{"fetched, replica restarted", msgText("shared", strings.Repeat("a large shared body line\r\n", 4000)), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			src := openStore(t, t.TempDir())
			dst := openStore(t, t.TempDir())
			gt := &gatedTarget{blockingTarget: blockingTarget{Store: dst, user: "bob", release: make(chan struct{})}}
			p, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond, Mode: replicate.AckOne})
			inbox := t.TempDir()
			opts := func() *replicate.ReplicaOptions { return &replicate.ReplicaOptions{InboxSegment: 4096} }
			r, stop := startReplica(t, gt, srv.URL, inbox, opts())
			require.NoError(t, src.CreateUser(ctx, "alice"))
			require.NoError(t, src.CreateUser(ctx, "bob"))
			add(t, src, "alice", "INBOX", tc.body)
			waitApplied(t, r, src)
			d := resilmail.DigestOf([]byte(tc.body))
			require.True(t, dst.HasBody(d))
			// Other users' mail lets the inbox drop its applied segments,
			// alice's body with them: the store's copy is the only one.
			require.NoError(t, src.CreateUser(ctx, "carol"))
			for i := 0; replicate.InboxHasBody(r, d); i++ {
				require.Less(t, i, 1000)
				add(t, src, "carol", "INBOX", msgText("filler", strings.Repeat("x", 3000+i)))
				waitApplied(t, r, src)
			}

			gt.gated.Store(true)
			add(t, src, "bob", "INBOX", tc.body)
			require.NoError(t, p.Await(ctx, src.Position()), "bob's message is acknowledged")
			_, err := src.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(1))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return dst.UpstreamPosition("alice") == src.Position() },
				10*time.Second, 5*time.Millisecond, "alice's expunge applies while bob waits")
			assert.False(t, dst.HasBody(d), "the store's own copy went with alice's message")

			srv.CloseClientConnections()
			srv.Close() // the primary is gone
			if tc.restart {
				stop()
				r, _ = startReplica(t, gt, srv.URL, inbox, opts())
			}
			close(gt.release)
			require.Eventually(t, func() bool { return messages(t, dst, "bob", "INBOX") == 1 },
				10*time.Second, 5*time.Millisecond, "%+v", r.Stats())
			b, err := dst.Body(ctx, d)
			require.NoError(t, err)
			assert.Equal(t, tc.body, string(b))
		})
	}
}

// TestCorruptBodyStallsOnlyItsUser: alice's body is damaged on the
// primary; bob's mail keeps replicating, the whole stream is received and
// acknowledged (alice's change named as missing its body), alice's change
// is parked and reported, and once the
// primary has a good copy again it applies.
func TestCorruptBodyStallsOnlyItsUser(t *testing.T) {
	for _, size := range []int{100, 200 << 10} { // inline and fetched
		ctx := context.Background()
		srcDir := t.TempDir()
		src := openStore(t, srcDir)
		dst := openStore(t, t.TempDir())
		require.NoError(t, src.CreateUser(ctx, "alice"))
		require.NoError(t, src.CreateUser(ctx, "bob"))
		content := msgText("precious", strings.Repeat("p", size))
		add(t, src, "alice", "INBOX", content)
		d := resilmail.DigestOf([]byte(content))
		flipBody(t, srcDir, d)
		p, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond, Mode: replicate.AckOne})
		r, _ := startReplica(t, dst, srv.URL, t.TempDir(), nil)
		require.Eventually(t, func() bool { return len(r.Parked()) == 1 }, 10*time.Second, 5*time.Millisecond)
		addN(t, src, "bob", "INBOX", 3)
		require.NoError(t, p.Await(ctx, src.Position()), "bob's writers are acknowledged past alice's parked change")
		require.Eventually(t, func() bool { return messages(t, dst, "bob", "INBOX") == 3 }, 10*time.Second, 5*time.Millisecond)
		require.Eventually(t, func() bool { return len(r.Parked()) == 1 }, 10*time.Second, 5*time.Millisecond)
		st := r.Stats()
		assert.Equal(t, src.Position(), st.Received)
		assert.Equal(t, 1, st.Parked)
		assert.Less(t, st.Applied, src.Position())
		pc := r.Parked()[0]
		assert.Equal(t, "alice", pc.Change.User)
		assert.Equal(t, d, pc.Change.Digest)
		assert.Contains(t, pc.Err, "corrupt")
		assert.False(t, dst.HasBody(d), "a corrupt body is never kept")
		assert.Zero(t, messages(t, dst, "alice", "INBOX"))
		assert.Positive(t, p.Stats().CorruptBodies)

		// A good copy comes back (here straight into the primary's store).
		require.NoError(t, src.RestoreBody(ctx, d, strings.NewReader(content)))
		waitApplied(t, r, src)
		requireSame(t, src, dst)
		assert.Zero(t, r.Stats().Parked)
		assert.Zero(t, r.Stats().Missing)
		assert.Equal(t, uint64(1), r.Stats().ParkedTotal)
	}
}

// TestA404IsNotAnExpunge: a 404 that does not come from the primary's own
// "not_found" (a proxy, a wrong path) must not make the replica record a
// message as expunged; the change waits for its body.
func TestA404IsNotAnExpunge(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	dst := openStore(t, t.TempDir())
	require.NoError(t, src.CreateUser(ctx, "alice"))
	content := msgText("big", strings.Repeat("big body line\r\n", 8000))
	add(t, src, "alice", "INBOX", content)
	p, err := replicate.NewPrimary(src, &replicate.PrimaryOptions{Secret: streamSecret, Logger: quietLogger(), Heartbeat: 50 * time.Millisecond})
	require.NoError(t, err)
	var broken atomic.Bool
	broken.Store(true)
	h := p.Handler()
	srv := newServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if broken.Load() && strings.HasPrefix(r.URL.Path, "/body/") {
			http.NotFound(w, r) // a plain 404, as a proxy gives
			return
		}
		h.ServeHTTP(w, r)
	}))
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), nil)
	require.Eventually(t, func() bool { return len(r.Parked()) == 1 }, 10*time.Second, 5*time.Millisecond, "%+v", r.Stats())
	assert.Zero(t, messages(t, dst, "alice", "INBOX"), "not recorded as expunged")
	broken.Store(false)
	waitApplied(t, r, src)
	requireSame(t, src, dst)
	assert.Equal(t, 1, messages(t, dst, "alice", "INBOX"))
}

// newServer serves h on loopback until the test ends.
func newServer(t testing.TB, h http.Handler) *httptest.Server {
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv
}

// TestBodylessChangeIsNotAcknowledged: a body the primary cannot serve
// for a while (here its body requests fail) leaves its change received but
// not replicated: the writer's Await does not return nil, a later writer
// of another user is not held back, and once the body can be served the
// change applies and the Await waiting for it returns.
func TestBodylessChangeIsNotAcknowledged(t *testing.T) {
	ctx := context.Background()
	src, dst := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	require.NoError(t, src.CreateUser(ctx, "alice"))
	require.NoError(t, src.CreateUser(ctx, "bob"))
	big := func(s string) string { return msgText("precious", strings.Repeat(s, 200<<10)) } // fetched, not inline
	var broken sync.Map                                                                     // digest string → true
	p, err := replicate.NewPrimary(src, &replicate.PrimaryOptions{Secret: streamSecret, Logger: quietLogger(), Heartbeat: 50 * time.Millisecond,
		Mode: replicate.AckOne, AckTimeout: time.Minute})
	require.NoError(t, err)
	h := p.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d, ok := strings.CutPrefix(r.URL.Path, "/body/"); ok {
			if _, bad := broken.Load(d); bad {
				http.Error(w, "disk error", http.StatusInternalServerError)
				return
			}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), nil)
	add(t, src, "bob", "INBOX", msgText("first", "1"))
	require.NoError(t, p.Await(ctx, src.Position()))

	// Alice's writer waits from before its change exists.
	first := big("p")
	broken.Store(resilmail.DigestOf([]byte(first)).String(), true)
	pos := src.Position() + 1
	waited := make(chan error, 1)
	go func() { waited <- p.Await(ctx, pos) }()
	add(t, src, "alice", "INBOX", first)
	require.Equal(t, pos, src.Position())
	require.Eventually(t, func() bool {
		st := p.Stats()
		return len(st.Replicas) == 1 && st.Replicas[0].Acked >= pos && st.Replicas[0].Missing == 1
	}, 10*time.Second, 5*time.Millisecond, "the replica acknowledges the position and names the change as missing")
	assert.Equal(t, 1, r.Stats().Missing)
	select {
	case err := <-waited:
		t.Fatalf("alice's writer was answered (%v) though no replica has her message", err)
	default:
	}

	// Bob's later writer is not held back.
	add(t, src, "bob", "INBOX", msgText("later", "2"))
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, p.Await(bctx, src.Position()), "a later writer is not held back")

	// The body comes back: the change applies and alice's writer is
	// answered.
	broken.Clear()
	select {
	case err := <-waited:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatalf("alice's writer still waits: %+v", r.Stats())
	}
	assert.Equal(t, 1, messages(t, dst, "alice", "INBOX"))
	require.Eventually(t, func() bool { return r.Stats().Missing == 0 && p.Stats().Replicas[0].Missing == 0 }, 10*time.Second, 5*time.Millisecond)
}
