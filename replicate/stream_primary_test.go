package replicate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/bearer"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/internal/wire"
	"github.com/resilmail/resilmail/replicate/store"
)

var streamSecret = []byte("stream secret")

// servePrimary serves a Primary of src on loopback.
func servePrimary(t testing.TB, src replicate.Source, opts *replicate.PrimaryOptions) (*replicate.Primary, *httptest.Server) {
	t.Helper()
	if opts == nil {
		opts = &replicate.PrimaryOptions{}
	}
	if opts.Secret == nil && opts.Authenticate == nil {
		opts.Secret = streamSecret
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	p, err := replicate.NewPrimary(src, opts)
	require.NoError(t, err)
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return p, srv
}

func get(t testing.TB, ctx context.Context, url string, secret []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", bearer.Header(replicate.StreamToken(secret)))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	return resp
}

func postAck(t testing.TB, url, replica string, pos uint64, epoch resilmail.Epoch) {
	t.Helper()
	require.Equal(t, http.StatusNoContent, postAckAs(t, url, streamSecret, replica, pos, epoch))
}

// postAckAs posts an acknowledgement with the token of secret and returns
// the status.
func postAckAs(t testing.TB, url string, secret []byte, replica string, pos uint64, epoch resilmail.Epoch) int {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"replica": replica, "position": pos, "epoch": epoch})
	req, err := http.NewRequest("POST", url+"/ack", bytes.NewReader(b))
	require.NoError(t, err)
	req.Header.Set("Authorization", bearer.Header(replicate.StreamToken(secret)))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// Per-replica secrets of the tests.
var (
	secretA = []byte("replica a's own secret")
	secretB = []byte("replica b's own secret")
)

func replicaSecrets() map[string][]byte { return map[string][]byte{"a": secretA, "b": secretB} }

func TestPrimaryStreamsChangesAndHeartbeats(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src := openStore(t, t.TempDir())
	require.NoError(t, src.CreateUser(ctx, "alice"))
	add(t, src, "alice", "INBOX", msgText("one", "1"))
	p, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})

	resp := get(t, ctx, srv.URL+"/changes?after=0&replica=r1", streamSecret)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	fr := wire.NewReader(resp.Body, nil)
	var seqs []uint64
	beats := 0
	pos0 := int(src.Position())
	added := false
	for len(seqs) < pos0+1 || beats < 3 {
		if len(seqs) == pos0 && beats >= 1 && !added {
			add(t, src, "alice", "INBOX", msgText("two", "2")) // arrives while streaming
			added = true
		}
		f, err := fr.Next()
		require.NoError(t, err)
		switch f.Type {
		case wire.FrameChange:
			seqs = append(seqs, f.Change.Seq)
		case wire.FrameHeartbeat:
			beats++
			assert.Equal(t, src.Epoch(), f.Heartbeat.Epoch)
		}
	}
	for i, s := range seqs {
		assert.Equal(t, uint64(i+1), s)
	}
	st := p.Stats()
	require.Len(t, st.Replicas, 1)
	assert.True(t, st.Replicas[0].Connected)
	assert.Equal(t, uint64(len(seqs)), st.Replicas[0].ChangesSent)
	assert.Positive(t, st.Replicas[0].BytesSent)
	assert.Equal(t, src.Position(), st.Replicas[0].LagChanges)
	assert.Positive(t, st.Replicas[0].LagAge)

	postAck(t, srv.URL, "r1", src.Position(), src.Epoch())
	st = p.Stats()
	assert.Zero(t, st.Replicas[0].LagChanges)
	assert.Zero(t, st.Replicas[0].LagAge)
}

func TestPrimaryErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := openStore(t, dir)
	require.NoError(t, src.CreateUser(ctx, "alice"))
	content := msgText("precious", "p p p p p p p p p p")
	add(t, src, "alice", "INBOX", content)
	d := resilmail.DigestOf([]byte(content))
	p, srv := servePrimary(t, src, nil)

	code := func(resp *http.Response) string {
		defer resp.Body.Close()
		var e struct{ Code string }
		json.NewDecoder(resp.Body).Decode(&e)
		return strconv.Itoa(resp.StatusCode) + " " + e.Code
	}
	assert.Equal(t, "401 unauthorized", code(get(t, ctx, srv.URL+"/changes?after=0&replica=r1", []byte("wrong"))))
	assert.Equal(t, "409 position", code(get(t, ctx, srv.URL+"/changes?after=99&replica=r1", streamSecret)))
	assert.Equal(t, "400 bad_request", code(get(t, ctx, srv.URL+"/changes?after=x&replica=r1", streamSecret)))
	assert.Equal(t, "400 bad_request", code(get(t, ctx, srv.URL+"/changes?after=0", streamSecret)))
	assert.Equal(t, "404 not_found", code(get(t, ctx, srv.URL+"/body/"+resilmail.DigestOf([]byte("x")).String(), streamSecret)))

	resp := get(t, ctx, srv.URL+"/body/"+d.String()+"?replica=r1", streamSecret)
	body := new(bytes.Buffer)
	body.ReadFrom(resp.Body)
	resp.Body.Close()
	assert.Equal(t, content, body.String())

	flipBody(t, dir, d)
	assert.Equal(t, "500 corrupt", code(get(t, ctx, srv.URL+"/body/"+d.String()+"?replica=r1", streamSecret)))
	assert.Equal(t, "500 corrupt", code(get(t, ctx, srv.URL+"/body/"+d.String()+"?replica=r1", streamSecret)))
	st := p.Stats()
	assert.Equal(t, uint64(2), st.CorruptBodies)
	assert.Equal(t, uint64(1), st.Replicas[0].BodiesServed)
}

func TestPrimaryTooFarBehind(t *testing.T) {
	ctx := context.Background()
	src, err := store.Open(t.TempDir(), &store.Options{Logger: quietLogger(), KeepChanges: 1, SegmentSize: 4096, ScrubInterval: -1})
	require.NoError(t, err)
	defer src.Close()
	require.NoError(t, src.CreateUser(ctx, "alice"))
	for range 40 {
		add(t, src, "alice", "INBOX", msgText("x", string(bytes.Repeat([]byte("y"), 200))))
	}
	require.NoError(t, src.Compact(ctx))
	if src.OldestPosition() <= 1 {
		t.Skip("compaction kept the whole journal")
	}
	_, srv := servePrimary(t, src, nil)
	resp := get(t, ctx, srv.URL+"/changes?after=0&replica=r1", streamSecret)
	resp.Body.Close()
	assert.Equal(t, http.StatusGone, resp.StatusCode)
}

func TestPrimaryAwait(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	require.NoError(t, src.SetEpoch(ctx, 2))
	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", 4)
	require.GreaterOrEqual(t, src.Position(), uint64(6))

	secrets := map[string][]byte{"a": secretA, "b": secretB}
	for _, tc := range []struct {
		name   string
		opts   replicate.PrimaryOptions
		acks   map[string]uint64
		want   error
		accept bool
	}{
		{name: "async", opts: replicate.PrimaryOptions{Mode: replicate.AckAsync}},
		{name: "one acked", opts: replicate.PrimaryOptions{Mode: replicate.AckOne}, acks: map[string]uint64{"a": 5}},
		{name: "one behind", opts: replicate.PrimaryOptions{Mode: replicate.AckOne}, acks: map[string]uint64{"a": 4}, want: replicate.ErrNotReplicated},
		{name: "all, one dead", opts: replicate.PrimaryOptions{Mode: replicate.AckAll}, acks: map[string]uint64{"a": 5}, want: replicate.ErrNotReplicated},
		{name: "all, one dead, accept", opts: replicate.PrimaryOptions{Mode: replicate.AckAll, OnTimeout: replicate.TimeoutAccept}, acks: map[string]uint64{"a": 5}, accept: true},
		{name: "all acked", opts: replicate.PrimaryOptions{Mode: replicate.AckAll}, acks: map[string]uint64{"a": 5, "b": 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.AckTimeout = 200 * time.Millisecond
			tc.opts.ReplicaSecrets = secrets
			p, srv := servePrimary(t, src, &tc.opts)
			done := make(chan error, 1)
			start := time.Now()
			go func() { done <- p.Await(ctx, 5) }()
			for name, pos := range tc.acks {
				require.Equal(t, http.StatusNoContent, postAckAs(t, srv.URL, secrets[name], name, pos, 2))
			}
			err := <-done
			if tc.want != nil {
				require.ErrorIs(t, err, tc.want)
				assert.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
				assert.Equal(t, uint64(1), p.Stats().RefusedUnreplicated)
				return
			}
			require.NoError(t, err)
			if tc.accept {
				assert.Equal(t, uint64(1), p.Stats().AcceptedUnreplicated)
			} else {
				assert.Less(t, time.Since(start), 200*time.Millisecond)
			}
		})
	}
}

// TestPrimaryFenced: an acknowledgement with a higher epoch from a known
// replica fences the primary.
func TestPrimaryFenced(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	require.NoError(t, src.SetEpoch(ctx, 2))
	p, srv := servePrimary(t, src, &replicate.PrimaryOptions{Mode: replicate.AckOne, ReplicaSecrets: replicaSecrets()})
	require.Equal(t, http.StatusNoContent, postAckAs(t, srv.URL, secretA, "a", 1, 3))
	err := p.Await(ctx, 1)
	require.ErrorIs(t, err, replicate.ErrFenced)
	assert.Equal(t, resilmail.Epoch(3), p.Stats().FencedBy)
	_, err = replicate.NewPrimary(src, &replicate.PrimaryOptions{Secret: streamSecret, Mode: replicate.AckAll})
	assert.Error(t, err, "AckAll without replicas")
	_, err = replicate.NewPrimary(src, &replicate.PrimaryOptions{Secret: streamSecret, Mode: replicate.AckAll, Replicas: []string{"a", "b"}})
	assert.Error(t, err, "AckAll with names not bound to credentials")
	_, err = replicate.NewPrimary(src, nil)
	assert.Error(t, err, "no secret")
}

// TestPrimaryRefusesForgedAcks: acknowledgements from a name the primary
// does not know, with another replica's credential, or beyond the end of
// the journal are refused and change nothing; two replicas configured
// with the same name cannot make one acknowledgement count for AckAll.
func TestPrimaryRefusesForgedAcks(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	require.NoError(t, src.CreateUser(ctx, "alice"))
	end := src.Position()

	p, srv := servePrimary(t, src, &replicate.PrimaryOptions{Mode: replicate.AckAll, ReplicaSecrets: replicaSecrets(),
		AckTimeout: 100 * time.Millisecond})
	for _, tc := range []struct {
		name    string
		secret  []byte
		replica string
		pos     uint64
		want    int
	}{
		{"unknown name, shared secret", streamSecret, "c", end, http.StatusForbidden},
		{"a's name, shared secret", streamSecret, "a", end, http.StatusForbidden},
		{"unknown name, a's secret", secretA, "c", end, http.StatusForbidden},
		{"b's name, a's secret", secretA, "b", end, http.StatusForbidden},
		{"beyond the end", secretA, "a", end + 1, http.StatusConflict},
		{"far beyond the end", secretB, "b", 1 << 60, http.StatusConflict},
	} {
		assert.Equal(t, tc.want, postAckAs(t, srv.URL, tc.secret, tc.replica, tc.pos, 0), tc.name)
	}
	st := p.Stats()
	assert.Equal(t, uint64(6), st.AcksRefused)
	for _, l := range st.Replicas {
		assert.Zero(t, l.Acked, l.Name)
	}
	// Both replicas run with the same name ("a", a copy of one
	// configuration) but their own secrets: the name comes from the
	// credential, so b's acknowledgement does not count as a's, and a's
	// alone does not satisfy AckAll.
	assert.Equal(t, http.StatusNoContent, postAckAs(t, srv.URL, secretA, "a", end, 0))
	assert.Equal(t, http.StatusForbidden, postAckAs(t, srv.URL, secretB, "a", end, 0))
	assert.ErrorIs(t, p.Await(ctx, end), replicate.ErrNotReplicated)
	assert.Equal(t, http.StatusNoContent, postAckAs(t, srv.URL, secretB, "", end, 0), "the name may be left out")
	assert.NoError(t, p.Await(ctx, end))

	// With a shared secret and no names configured, a name is known once
	// it opened a stream.
	p2, srv2 := servePrimary(t, src, &replicate.PrimaryOptions{Mode: replicate.AckOne, AckTimeout: 100 * time.Millisecond})
	assert.Equal(t, http.StatusForbidden, postAckAs(t, srv2.URL, streamSecret, "ghost", end, 0))
	assert.ErrorIs(t, p2.Await(ctx, end), replicate.ErrNotReplicated)
	sctx, cancel := context.WithCancel(ctx)
	resp := get(t, sctx, srv2.URL+"/changes?after=0&replica=r1", streamSecret)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	postAck(t, srv2.URL, "r1", end, 0)
	cancel()
	resp.Body.Close()
	assert.NoError(t, p2.Await(ctx, end))
}

// TestPrimaryLagOfAReplicaOffTheJournal: compaction keeps the journal
// the slowest known replica needs, up to the store's HoldBytes; a replica
// beyond that bound shows its real lag, not zero.
func TestPrimaryLagOfAReplicaOffTheJournal(t *testing.T) {
	ctx := context.Background()
	for _, holdBytes := range []int64{0, 2048} {
		src, err := store.Open(t.TempDir(), &store.Options{Logger: quietLogger(), KeepChanges: 1, SegmentSize: 4096, ScrubInterval: -1,
			HoldBytes: holdBytes, Now: (&clock{now: time.Now().Add(-time.Hour)}).Now})
		require.NoError(t, err)
		defer src.Close()
		require.NoError(t, src.CreateUser(ctx, "alice"))
		p, srv := servePrimary(t, src, &replicate.PrimaryOptions{ReplicaSecrets: replicaSecrets()})
		require.Equal(t, http.StatusNoContent, postAckAs(t, srv.URL, secretA, "a", 1, 0))
		for i := range 40 {
			add(t, src, "alice", "INBOX", msgText(strconv.Itoa(i), string(bytes.Repeat([]byte("y"), 200))))
		}
		require.NoError(t, src.Compact(ctx))
		var a replicate.ReplicaLinkStats
		for _, l := range p.Stats().Replicas {
			if l.Name == "a" {
				a = l
			}
		}
		assert.Equal(t, src.Position()-1, a.LagChanges)
		assert.Greater(t, a.LagAge, 50*time.Minute, "at least the age of the oldest change kept")
		if holdBytes == 0 {
			assert.Equal(t, uint64(1), src.OldestPosition(), "the journal is kept for replica a")
			assert.False(t, a.TooFarBehind)
			continue
		}
		assert.Greater(t, src.OldestPosition(), uint64(2), "beyond HoldBytes, compaction removed a's position")
		assert.True(t, a.TooFarBehind)
	}
}
