package pool

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/testclock"
)

// polReplayer stands between a follower and its publisher, as a man in the
// middle would: it passes requests on and remembers the last answer, and
// once frozen it answers every request with that recording.
type polReplayer struct {
	proxy  *httputil.ReverseProxy
	frozen atomic.Bool
	mu     sync.Mutex
	status int
	header http.Header
	body   []byte
}

func polNewReplayer(t testing.TB, target string) *polReplayer {
	u, err := url.Parse(target)
	require.NoError(t, err)
	r := &polReplayer{proxy: httputil.NewSingleHostReverseProxy(u)}
	r.proxy.ModifyResponse = func(resp *http.Response) error {
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		r.mu.Lock()
		r.status, r.header, r.body = resp.StatusCode, resp.Header.Clone(), body
		r.mu.Unlock()
		return nil
	}
	return r
}

func (r *polReplayer) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if !r.frozen.Load() {
		r.proxy.ServeHTTP(w, req)
		return
	}
	r.mu.Lock()
	status, header, body := r.status, r.header, r.body
	r.mu.Unlock()
	for k, v := range header {
		w.Header()[k] = v
	}
	w.WriteHeader(status)
	w.Write(body)
}

func TestFollowerBehindAReplayingProxyGoesStale(t *testing.T) {
	// A man in the middle that replays the publisher's last "no change"
	// once froze a follower on an old version forever, answering 550 for
	// recipients added since. Now only a seal counts, from the time it
	// was made: a follower behind a live publisher stays fresh, one
	// behind the replayer turns stale (450) after StaleAfter.
	ctx := context.Background()
	clock := testclock.New(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	p := pubOpen(t, t.TempDir(), &PublisherOptions{Now: clock.Now, ResealEvery: 10 * time.Second})
	srv := pubServe(t, p)
	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	replayer := polNewReplayer(t, srv.URL)
	mitm := httptest.NewServer(replayer)
	t.Cleanup(mitm.Close)

	opts := func() *FollowerOptions {
		return &FollowerOptions{Now: clock.Now, PollWait: 20 * time.Millisecond, RequestTimeout: time.Second, StaleAfter: time.Minute, MinBackoff: time.Millisecond}
	}
	live := folOpen(t, srv.URL, t.TempDir(), opts())
	fooled := folOpen(t, mitm.URL, t.TempDir(), opts())
	folRun(t, live)
	folRun(t, fooled)
	folWait(t, live, 1)
	folWait(t, fooled, 1)
	// Wait for a 304 to be recorded, then freeze the recording.
	require.Eventually(t, func() bool {
		replayer.mu.Lock()
		defer replayer.mu.Unlock()
		return replayer.status == http.StatusNotModified
	}, 5*time.Second, time.Millisecond)
	replayer.frozen.Store(true)

	// Time passes in steps shorter than the reseal interval; both
	// followers keep polling. Only the live one hears anything new.
	for range 18 { // 90 s
		clock.Advance(5 * time.Second)
		// Wait for a poll that started after the step.
		waitPolls(t, live, 2)
		waitPolls(t, fooled, 2)
		assert.False(t, live.Status().Stale, "the live follower hears fresh seals")
		assert.Equal(t, 550, live.Check("mallory@example.org").Code)
	}
	assert.True(t, fooled.Status().Stale, "90 s after the last seal the replayed follower is stale")
	assert.Equal(t, 450, fooled.Check("mallory@example.org").Code, "and defers rather than bounces")
	assert.Equal(t, 250, fooled.Check("alice@example.org").Code, "known recipients are still accepted")
	assert.Equal(t, clock.Now().Add(-90*time.Second).Unix(), fooled.Status().LastHeard.Unix(), "heard when the recorded seal was made, however often it is replayed")
}

// waitPolls waits until f has finished n more exchanges with its
// publisher.
func waitPolls(t testing.TB, f *Follower, n uint64) {
	t.Helper()
	start := f.polls.Load()
	require.Eventually(t, func() bool { return f.polls.Load() >= start+n }, 10*time.Second, 100*time.Microsecond)
}

func TestFollowerCannotForgeThePolicy(t *testing.T) {
	// A follower holds the pool's secret (its bearer token), the
	// publisher's public key and its own copy of the policy. With all of
	// that it can pose as the publisher to another follower, but what it
	// signs is refused: the other follower keeps the real policy.
	ctx := context.Background()
	p := pubOpen(t, t.TempDir(), nil)
	srv := pubServe(t, p)
	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	victim := folOpen(t, srv.URL, t.TempDir(), nil)
	stop := folRun(t, victim)
	folWait(t, victim, 1)
	stop()

	// The rogue follower's best attempts: sign with a key of its own,
	// claiming the publisher's key id; or reuse the publisher's seal on
	// other content.
	evil := victim.Snapshot().Policy.Clone()
	evil.Domains["evil.test"] = &DomainPolicy{AcceptAll: true}
	_, rogueKey, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	own, err := NewSnapshot(evil, 2, DefaultPool, rogueKey, time.Now())
	require.NoError(t, err)
	claimed := *own
	claimed.KeyID = p.Snapshot().KeyID
	reused := &Snapshot{Seal: p.Snapshot().Seal, Policy: polMustNormalize(t, evil)}
	reused.Version = 2
	for name, s := range map[string]*Snapshot{"own key": own, "claims the publisher's key": &claimed, "reuses the publisher's seal": reused} {
		script := &folScripted{responses: make(chan folResponse, 1)}
		rogue := httptest.NewServer(script)
		g := folOpen(t, rogue.URL, t.TempDir(), &FollowerOptions{PollWait: time.Minute, StaleAfter: 2 * time.Minute})
		// Give g the real policy first, from the real publisher's seal.
		data, err := p.Snapshot().Encode()
		require.NoError(t, err)
		script.responses <- folResponse{200, data}
		folRun(t, g)
		folWait(t, g, 1)
		script.responses <- folResponse{200, polEncode(t, s)}
		st := folWaitErrors(t, g, g.Status().Errors)
		assert.ErrorIs(t, st.LastError, ErrPolicyAuth, name)
		assert.Equal(t, uint64(1), st.Version, name)
		assert.Equal(t, ActionReject, g.Check("x@evil.test").Action, name)
		g.Close()
		rogue.Close()
	}
}

func TestKeyRotationWithoutA451(t *testing.T) {
	// The publisher's key is replaced: followers first trust both keys,
	// the publisher switches, a new version is published and applied,
	// followers restart, and then trust the new key only. No recipient
	// check ever answers 4xx meanwhile, and no follower goes stale.
	ctx := context.Background()
	oldKey, newKey := polTestKey, polOtherKey
	oldPub, newPub := oldKey.Public().(ed25519.PublicKey), newKey.Public().(ed25519.PublicKey)
	p := pubOpen(t, t.TempDir(), &PublisherOptions{SigningKey: oldKey})
	srv := pubServe(t, p)
	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)

	dir := t.TempDir()
	open := func(keys ...ed25519.PublicKey) (*Follower, func()) {
		f := folOpen(t, srv.URL, dir, &FollowerOptions{Trust: Trust{Keys: keys}, PollWait: 50 * time.Millisecond})
		return f, folRun(t, f)
	}
	f, stop := open(oldPub)
	folWait(t, f, 1)

	var cur atomic.Pointer[Follower]
	cur.Store(f)
	var bad atomic.Int64
	var checks atomic.Int64
	watch, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for watch.Err() == nil {
			g := cur.Load()
			if g.Check("alice@example.org").Code != 250 || g.Check("mallory@example.org").Code != 550 || g.Status().Stale {
				bad.Add(1)
			}
			checks.Add(1)
		}
	}()

	// 1. Followers trust both keys (a restart with the new configuration).
	stop()
	require.NoError(t, f.Close())
	f, stop = open(oldPub, newPub)
	cur.Store(f)
	assert.Equal(t, uint64(1), f.Status().Version, "the stored copy, sealed by the old key, is still good")
	// 2. The publisher switches keys; the follower hears the new seal.
	require.NoError(t, p.Rotate(ctx, newKey))
	require.Eventually(t, func() bool { return f.Snapshot().KeyID == KeyID(newPub) }, 5*time.Second, time.Millisecond)
	// 3. A new version, sealed by the new key.
	v, err := p.Update(ctx, func(q *Policy) error { return q.AddRecipient("dan@example.org") })
	require.NoError(t, err)
	folWait(t, f, v)
	// 4. The old key is dropped.
	stop()
	require.NoError(t, f.Close())
	f, stop = open(newPub)
	cur.Store(f)
	assert.Equal(t, v, f.Status().Version, "the stored copy is sealed by the new key")
	v, err = p.Update(ctx, func(q *Policy) error { return q.AddRecipient("erin@example.org") })
	require.NoError(t, err)
	folWait(t, f, v)
	cancel()
	wg.Wait()
	stop()
	assert.Zero(t, bad.Load(), "answers other than 250/550, or stale, during the rotation (of %d checks)", checks.Load())
	assert.NoError(t, f.Status().LastError)

	// A follower that was never told of the new key refuses its seals.
	g := folOpen(t, srv.URL, t.TempDir(), &FollowerOptions{Trust: Trust{Keys: []ed25519.PublicKey{oldPub}}})
	folRun(t, g)
	st := folWaitErrors(t, g, 0)
	assert.ErrorIs(t, st.LastError, ErrPolicyAuth)
	assert.Nil(t, g.Snapshot())
}

func TestFollowerKeepsItsPolicyWhenTheSecretChanges(t *testing.T) {
	// The shared secret only makes bearer tokens now: a follower restarted
	// with a new one still trusts its stored copy (it once answered 451
	// until it could fetch again).
	p := pubOpen(t, t.TempDir(), nil)
	srv := pubServe(t, p)
	_, err := p.Publish(context.Background(), polTestPolicy())
	require.NoError(t, err)
	dir := t.TempDir()
	f := folOpen(t, srv.URL, dir, nil)
	stop := folRun(t, f)
	folWait(t, f, 1)
	stop()
	require.NoError(t, f.Close())
	srv.Close()
	g, err := OpenFollower(srv.URL, []byte("a-brand-new-pool-secret-0123"), dir, &FollowerOptions{Logger: polQuiet(), Trust: polTestTrust})
	require.NoError(t, err)
	defer g.Close()
	assert.Equal(t, uint64(1), g.Status().Version)
	assert.Equal(t, 250, g.Check("alice@example.org").Code)
	assert.Equal(t, 550, g.Check("mallory@example.org").Code)
}

// FuzzParseSealHeader feeds arbitrary header values to the seal parser: it
// must refuse them with a sentinel or decode a seal that encodes back to
// the same seal, and a seal the fuzzer makes never verifies.
func FuzzParseSealHeader(f *testing.F) {
	s := sealWith(DefaultPool, 3, polTestPolicy().Digest(), polTestKey, time.Unix(1900000000, 5))
	f.Add(s.header())
	f.Add("pool=default&version=1&digest=00&key=x&issued=1&sig=00")
	f.Add("%zz")
	f.Fuzz(func(t *testing.T, h string) {
		seal, err := parseSealHeader(h)
		if err != nil {
			polRequireSentinel(t, err)
			return
		}
		again, err := parseSealHeader(seal.header())
		require.NoError(t, err)
		require.Equal(t, seal, again)
		if err := polTestTrust.verify(seal); err == nil {
			require.Equal(t, s.header(), seal.header(), "only the real seal verifies")
		}
	})
}

func TestNotModifiedCarriesTheSealOfItsAnswerTime(t *testing.T) {
	// A long poll that ends without a change answers with a seal made
	// when it answers, not when it began to wait: otherwise a follower's
	// last word from the publisher would be a whole PollWait old already.
	clock := testclock.New(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	p := pubOpen(t, t.TempDir(), &PublisherOptions{Now: clock.Now, ResealEvery: 10 * time.Second})
	srv := pubServe(t, p)
	_, err := p.Publish(context.Background(), polTestPolicy())
	require.NoError(t, err)
	f := folOpen(t, srv.URL, t.TempDir(), &FollowerOptions{Now: clock.Now, PollWait: 300 * time.Millisecond, StaleAfter: 2 * time.Minute})
	folRun(t, f)
	folWait(t, f, 1)
	waitPolls(t, f, 1) // the next poll is waiting now
	clock.Advance(time.Minute)
	waitPolls(t, f, 1)
	assert.Equal(t, clock.Now(), f.Status().LastHeard.UTC(), "the 304 that ended the wait carried a seal of its own time")
}
