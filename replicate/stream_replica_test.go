package replicate_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/internal/wire"
	"github.com/resilmail/resilmail/replicate/store"
)

// startReplica runs a replica of srv's primary applying to t, until the
// test ends or stop is called.
func startReplica(tb testing.TB, t replicate.Target, url, dir string, opts *replicate.ReplicaOptions) (r *replicate.Replica, stop func()) {
	tb.Helper()
	if opts == nil {
		opts = &replicate.ReplicaOptions{}
	}
	if opts.Name == "" {
		opts.Name = "r1"
	}
	if opts.Secret == nil {
		opts.Secret = streamSecret
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 200 * time.Millisecond
	}
	r, err := replicate.NewReplica(t, url, dir, opts)
	require.NoError(tb, err)
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			require.NoError(tb, r.Close())
			require.NoError(tb, <-done)
		})
	}
	tb.Cleanup(stop)
	return r, stop
}

// TestReplicaClosedBeforeItRuns: a replica closed before its Run started
// (a stop right after the start, its goroutine not yet scheduled) has
// nothing to stop: Run returns nil, as on cancellation, instead of an
// error (TestKilledReplicaKeepsWhatItAcknowledged failed so under load).
func TestReplicaClosedBeforeItRuns(t *testing.T) {
	r, err := replicate.NewReplica(openStore(t, t.TempDir()), "http://127.0.0.1:1", t.TempDir(), &replicate.ReplicaOptions{Name: "r1", Secret: streamSecret, Logger: quietLogger()})
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.NoError(t, r.Run(context.Background()))
}

// waitApplied waits until the replica has applied every change up to the
// source's position.
func waitApplied(t testing.TB, r *replicate.Replica, src replicate.Source) {
	t.Helper()
	require.Eventually(t, func() bool {
		st := r.Stats()
		return st.Applied >= src.Position()
	}, 10*time.Second, 5*time.Millisecond, "replica stats %+v, source at %d", r.Stats(), src.Position())
}

func TestReplicaFollowsPrimary(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	dst := openStore(t, t.TempDir())
	_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), nil)

	require.NoError(t, src.CreateUser(ctx, "alice"))
	require.NoError(t, src.CreateUser(ctx, "bob"))
	addN(t, src, "alice", "INBOX", 5)
	addN(t, src, "bob", "INBOX", 3)
	_, err := src.CreateMailbox(ctx, "alice", "Archive")
	require.NoError(t, err)
	_, err = src.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(1, 2), []string{`\Seen`, "$Work"})
	require.NoError(t, err)
	_, err = src.Copy(ctx, "alice", "INBOX", resilmail.NewUIDSet(3), "Archive")
	require.NoError(t, err)
	_, err = src.Move(ctx, "alice", "INBOX", resilmail.NewUIDSet(4), "Archive")
	require.NoError(t, err)
	_, err = src.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(5))
	require.NoError(t, err)
	require.NoError(t, src.RenameMailbox(ctx, "alice", "Archive", "Old"))
	_, err = src.CreateMailbox(ctx, "bob", "Tmp")
	require.NoError(t, err)
	require.NoError(t, src.DeleteMailbox(ctx, "bob", "Tmp"))
	require.NoError(t, src.Subscribe(ctx, "alice", "Old"))
	require.NoError(t, src.CreateUser(ctx, "carol"))
	require.NoError(t, src.DeleteUser(ctx, "carol"))

	waitApplied(t, r, src)
	requireSame(t, src, dst)
	for _, mb := range []string{"INBOX", "Old"} {
		a, err := src.MailboxStatus(ctx, "alice", mb)
		require.NoError(t, err)
		b, err := dst.MailboxStatus(ctx, "alice", mb)
		require.NoError(t, err)
		assert.Equal(t, a, b, mb)
	}
	st := r.Stats()
	assert.Equal(t, src.Position(), st.Received)
	assert.Positive(t, st.Bodies)
	assert.Positive(t, st.Bytes)
}

func TestReplicaResumesAfterRestart(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	dstDir, inbox := t.TempDir(), t.TempDir()
	dst := openStore(t, dstDir)
	_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", 10)
	r, stop := startReplica(t, dst, srv.URL, inbox, &replicate.ReplicaOptions{InboxSegment: 4096})
	waitApplied(t, r, src)
	stop()
	srv.CloseClientConnections()

	addN(t, src, "alice", "INBOX", 10)
	r, _ = startReplica(t, dst, srv.URL, inbox, &replicate.ReplicaOptions{InboxSegment: 4096})
	waitApplied(t, r, src)
	requireSame(t, src, dst)
	assert.Equal(t, src.Position(), r.Stats().Received)
	segs, err := filepath.Glob(filepath.Join(inbox, "*.wal"))
	require.NoError(t, err)
	assert.LessOrEqual(t, len(segs), 2, "applied segments are removed")
}

// blockingTarget blocks the changes of one user until released.
type blockingTarget struct {
	*store.Store
	user    string
	release chan struct{}
}

func (b *blockingTarget) Apply(ctx context.Context, changes []resilmail.Change, body replicate.BodyFunc) error {
	for _, c := range changes {
		if c.User == b.user {
			select {
			case <-b.release:
			case <-ctx.Done():
				return ctx.Err()
			}
			break
		}
	}
	return b.Store.Apply(ctx, changes, body)
}

func TestReplicaStalledUserDoesNotStallOthers(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	dst := openStore(t, t.TempDir())
	require.NoError(t, src.CreateUser(ctx, "alice"))
	require.NoError(t, src.CreateUser(ctx, "bob"))
	addN(t, src, "alice", "INBOX", 3)
	addN(t, src, "bob", "INBOX", 3)
	bt := &blockingTarget{Store: dst, user: "alice", release: make(chan struct{})}
	_, srv := servePrimary(t, src, nil)
	r, _ := startReplica(t, bt, srv.URL, t.TempDir(), nil)
	require.Eventually(t, func() bool {
		st, err := dst.MailboxStatus(ctx, "bob", "INBOX")
		return err == nil && st.Messages == 3
	}, 10*time.Second, 5*time.Millisecond)
	_, err := dst.MailboxStatus(ctx, "alice", "INBOX")
	assert.Error(t, err, "alice is blocked")
	assert.Less(t, r.Stats().Applied, src.Position())
	close(bt.release)
	waitApplied(t, r, src)
	requireSame(t, src, dst)
}

func TestReplicaBadToken(t *testing.T) {
	src := openStore(t, t.TempDir())
	dst := openStore(t, t.TempDir())
	_, srv := servePrimary(t, src, nil)
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), &replicate.ReplicaOptions{Secret: []byte("wrong")})
	require.Eventually(t, func() bool { return r.Stats().Reconnects > 0 }, 10*time.Second, 5*time.Millisecond)
	assert.Contains(t, r.Stats().LastError, "401")
}

func TestAwaitWithReplicas(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	dst := openStore(t, t.TempDir())
	p, srv := servePrimary(t, src, &replicate.PrimaryOptions{Mode: replicate.AckOne, AckTimeout: 5 * time.Second})
	startReplica(t, dst, srv.URL, t.TempDir(), nil)
	require.NoError(t, src.CreateUser(ctx, "alice"))
	for i := range 5 {
		add(t, src, "alice", "INBOX", msgText("m", string(rune('a'+i))))
		pos := src.Position()
		require.NoError(t, p.Await(ctx, pos))
		st := p.Stats()
		require.GreaterOrEqual(t, st.Replicas[0].Acked, pos)
	}

	// AckAll with a replica that never comes.
	for _, policy := range []replicate.TimeoutPolicy{replicate.TimeoutRefuse, replicate.TimeoutAccept} {
		p2, srv2 := servePrimary(t, src, &replicate.PrimaryOptions{Mode: replicate.AckAll,
			ReplicaSecrets: map[string][]byte{"r1": secretA, "dead": secretB},
			AckTimeout:     300 * time.Millisecond, OnTimeout: policy})
		startReplica(t, openStore(t, t.TempDir()), srv2.URL, t.TempDir(), &replicate.ReplicaOptions{Secret: secretA})
		err := p2.Await(ctx, src.Position())
		if policy == replicate.TimeoutRefuse {
			require.ErrorIs(t, err, replicate.ErrNotReplicated)
			assert.Equal(t, uint64(1), p2.Stats().RefusedUnreplicated)
		} else {
			require.NoError(t, err)
			assert.Equal(t, uint64(1), p2.Stats().AcceptedUnreplicated)
		}
	}
}

// heldExpungeSource is a primary where alice expunges her three messages
// and then, after a promotion if promote is set, bob gets two.
func heldExpungeSource(t *testing.T, promote bool) *store.Store {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	require.NoError(t, src.CreateUser(ctx, "alice"))
	require.NoError(t, src.CreateUser(ctx, "bob"))
	addN(t, src, "alice", "INBOX", 3)
	_, err := src.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(1, 2, 3))
	require.NoError(t, err)
	if promote {
		require.NoError(t, src.SetEpoch(ctx, src.Epoch()+1))
	}
	addN(t, src, "bob", "INBOX", 2)
	return src
}

// holdExpunges holds every expunge for confirmation.
func holdExpunges(_ context.Context, c resilmail.Change) (bool, string) {
	return c.Kind == resilmail.ChangeExpunge, "mass expunge"
}

func TestReplicaHoldAndConfirm(t *testing.T) {
	ctx := context.Background()
	src := heldExpungeSource(t, false)
	dst := openStore(t, t.TempDir())
	_, srv := servePrimary(t, src, nil)
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), &replicate.ReplicaOptions{Hold: holdExpunges})
	require.Eventually(t, func() bool { return len(r.Held()) == 1 }, 10*time.Second, 5*time.Millisecond)
	h := r.Held()[0]
	assert.Equal(t, "mass expunge", h.Reason)
	require.Eventually(t, func() bool {
		st, err := dst.MailboxStatus(ctx, "bob", "INBOX")
		return err == nil && st.Messages == 2
	}, 10*time.Second, 5*time.Millisecond, "bob's lane goes on")
	assert.Less(t, dst.UpstreamPosition("alice"), h.Change.Seq, "the expunge waits")
	assert.Error(t, r.Confirm("alice", h.Change.Seq+100))
	require.NoError(t, r.Confirm("alice", h.Change.Seq))
	waitApplied(t, r, src)
	requireSame(t, src, dst)
}

func TestReplicaRefusesOldEpoch(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	dst := openStore(t, t.TempDir())
	require.NoError(t, src.SetEpoch(ctx, 1))
	require.NoError(t, dst.SetEpoch(ctx, 5))
	_, srv := servePrimary(t, src, nil)
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), nil)
	require.Eventually(t, func() bool { return r.Stats().Fenced > 0 }, 10*time.Second, 5*time.Millisecond)
	assert.Contains(t, r.Stats().LastError, "fenced")
}

// TestHeldChangeSurvivesAPromotion: a change held on the replica was
// made under the old epoch; another user's changes after a promotion
// (a higher epoch) must not make the store refuse it once confirmed.
func TestHeldChangeSurvivesAPromotion(t *testing.T) {
	src := heldExpungeSource(t, true)
	dst := openStore(t, t.TempDir())
	_, srv := servePrimary(t, src, nil)
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), &replicate.ReplicaOptions{Hold: holdExpunges})
	require.Eventually(t, func() bool { return len(r.Held()) == 1 }, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, r.Confirm("alice", r.Held()[0].Change.Seq))
	waitApplied(t, r, src)
	requireSame(t, src, dst)
	assert.Zero(t, r.Stats().Fenced, "nothing dropped as coming from a demoted primary")
}

// countBodies wraps a primary's handler, counting body requests.
func countBodies(h http.Handler, n *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/body/") {
			n.Add(1)
		}
		h.ServeHTTP(w, r)
	})
}

func TestReplicaTakesSmallBodiesFromTheStream(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	dst := openStore(t, t.TempDir())
	p, err := replicate.NewPrimary(src, &replicate.PrimaryOptions{Secret: streamSecret, InlineBody: 2000, Logger: quietLogger()})
	require.NoError(t, err)
	var fetched atomic.Int64
	srv := httptest.NewServer(countBodies(p.Handler(), &fetched))
	defer srv.Close()
	require.NoError(t, src.CreateUser(ctx, "alice"))
	small := msgText("small", "short")
	add(t, src, "alice", "INBOX", small)
	add(t, src, "alice", "INBOX", small) // the same body again: sent once
	add(t, src, "alice", "INBOX", msgText("other", "also short"))
	add(t, src, "alice", "INBOX", msgText("large", strings.Repeat("large body line\r\n", 200)))
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), nil)
	waitApplied(t, r, src)
	requireSame(t, src, dst)
	assert.Equal(t, int64(1), fetched.Load(), "only the body over InlineBody is fetched")
	assert.Equal(t, uint64(3), r.Stats().Bodies)
	st := p.Stats()
	require.Len(t, st.Replicas, 1)
	assert.Equal(t, uint64(3), st.Replicas[0].BodiesServed)
}

func TestPrimaryWritesVersion2ToAnOldReplica(t *testing.T) {
	src := openStore(t, t.TempDir())
	require.NoError(t, src.CreateUser(context.Background(), "alice"))
	add(t, src, "alice", "INBOX", msgText("hi", "there"))
	_, srv := servePrimary(t, src, nil)
	for q, want := range map[string]string{"": "resilmail-stream 2\n", "&v=3": "resilmail-stream 3\n", "&v=9": "resilmail-stream 3\n"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp := get(t, ctx, srv.URL+"/changes?after=0&replica=old"+q, streamSecret)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		fr := wire.NewReader(resp.Body, nil)
		var types []wire.FrameType
		for changes := 0; changes < 3; {
			f, err := fr.Next()
			require.NoError(t, err)
			if f.Type == wire.FrameChange {
				changes++
			}
			types = append(types, f.Type)
		}
		assert.Equal(t, int(want[len(want)-2]-'0'), fr.Version(), q)
		if fr.Version() == 2 {
			assert.NotContains(t, types, wire.FrameBody)
		} else {
			assert.Contains(t, types, wire.FrameBody)
		}
		resp.Body.Close()
		cancel()
	}
}

// TestReplicaRefusesAForgedInlineBody runs a replica against a fake
// primary whose stream carries a body that does not match its digest: the
// replica counts and logs it, fetches the body instead, and applies the
// good one.
func TestReplicaRefusesAForgedInlineBody(t *testing.T) {
	good := msgText("real", "the real body")
	d := resilmail.DigestOf([]byte(good))
	var id resilmail.MailboxID
	id[0] = 7
	changes := []resilmail.Change{
		{Seq: 1, Epoch: 1, Kind: resilmail.ChangeUserCreate, User: "alice", Time: time.Now()},
		{Seq: 2, Epoch: 1, Kind: resilmail.ChangeMailboxCreate, User: "alice", Mailbox: "INBOX", MailboxID: id, UIDValidity: 5, ModSeq: 1, Time: time.Now()},
		{Seq: 3, Epoch: 1, Kind: resilmail.ChangeAppend, User: "alice", Mailbox: "INBOX", MailboxID: id, UIDValidity: 5, UID: 1,
			Digest: d, Size: int64(len(good)), InternalDate: time.Unix(1700000000, 0).UTC(), ModSeq: 2, Time: time.Now()},
	}
	var fetched atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /changes", func(w http.ResponseWriter, r *http.Request) {
		fw, err := wire.NewWriter(w)
		if err != nil {
			return
		}
		if r.URL.Query().Get("after") == "0" {
			fw.WriteChange(&changes[0])
			fw.WriteChange(&changes[1])
			fw.WriteBody(d, []byte(strings.Replace(good, "real", "fake", 1)))
			fw.WriteChange(&changes[2])
		}
		fw.WriteHeartbeat(wire.Heartbeat{Position: 3, Epoch: 1, Time: time.Now()})
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("GET /body/{digest}", func(w http.ResponseWriter, r *http.Request) {
		fetched.Add(1)
		w.Write([]byte(good))
	})
	mux.HandleFunc("POST /ack", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	srv := httptest.NewServer(mux)
	defer func() {
		srv.CloseClientConnections()
		srv.Close()
	}()
	dst := openStore(t, t.TempDir())
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), nil)
	require.Eventually(t, func() bool { return r.Stats().Applied >= 3 }, 10*time.Second, 5*time.Millisecond, "%+v", r.Stats())
	st := r.Stats()
	assert.Equal(t, uint64(1), st.CorruptBodies)
	assert.Contains(t, st.LastError, "corrupt")
	assert.Equal(t, int64(1), fetched.Load())
	rc, err := dst.Body(context.Background(), d)
	require.NoError(t, err)
	assert.Equal(t, good, string(rc))
}

// TestReplicaRetiresIdleLanes: a lane with nothing to apply ends after a
// while, and the user's next change starts a new one.
func TestReplicaRetiresIdleLanes(t *testing.T) {
	replicate.SetLaneIdle(t, 50*time.Millisecond)
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	dst := openStore(t, t.TempDir())
	_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), nil)
	for _, u := range []string{"alice", "bob", "carol"} {
		require.NoError(t, src.CreateUser(ctx, u))
		addN(t, src, u, "INBOX", 2)
	}
	waitApplied(t, r, src)
	require.Eventually(t, func() bool { return replicate.Lanes(r) == 0 }, 10*time.Second, 5*time.Millisecond)
	addN(t, src, "bob", "INBOX", 2)
	waitApplied(t, r, src)
	requireSame(t, src, dst)
}
