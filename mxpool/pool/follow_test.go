package pool

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/testclock"
)

// folOpen opens a follower with short test timings; the test closes it.
func folOpen(t testing.TB, url, dir string, opts *FollowerOptions) *Follower {
	t.Helper()
	if opts == nil {
		opts = &FollowerOptions{}
	}
	if opts.Logger == nil {
		opts.Logger = polQuiet()
	}
	if opts.PollWait == 0 {
		opts.PollWait = 2 * time.Second
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = time.Second
	}
	if opts.StaleAfter == 0 {
		opts.StaleAfter = time.Minute
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 5 * time.Millisecond
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 50 * time.Millisecond
	}
	if opts.Trust.Keys == nil {
		opts.Trust.Keys = polTestTrust.Keys
	}
	f, err := OpenFollower(url, polTestSecret, dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// folRun runs f until the returned stop is called (or the test ends) and
// checks that Run returns nil promptly.
func folRun(t testing.TB, f *Follower) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				assert.NoError(t, err, "Run after cancel")
			case <-time.After(5 * time.Second):
				t.Error("Run did not return after its context was cancelled")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// folWait waits until f runs version v or later.
func folWait(t testing.TB, f *Follower, v uint64) {
	t.Helper()
	require.Eventually(t, func() bool { return f.Status().Version >= v }, 10*time.Second, time.Millisecond,
		"follower never reached version %d (status %+v)", v, f.Status())
}

// folWaitErrors waits until f has counted more than n failed exchanges.
func folWaitErrors(t testing.TB, f *Follower, n uint64) FollowerStatus {
	t.Helper()
	var st FollowerStatus
	require.Eventually(t, func() bool { st = f.Status(); return st.Errors > n }, 10*time.Second, time.Millisecond)
	return st
}

func TestFollowerFollows(t *testing.T) {
	ctx := context.Background()
	p := pubOpen(t, t.TempDir(), nil)
	srv := pubServe(t, p)
	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)

	var applied []uint64
	var mu sync.Mutex
	dir := t.TempDir()
	f := folOpen(t, srv.URL, dir, &FollowerOptions{Name: "relay-b", OnApply: func(v uint64) {
		mu.Lock()
		applied = append(applied, v)
		mu.Unlock()
	}})
	assert.Equal(t, 451, f.Check("alice@example.org").Code, "nothing loaded yet")
	folRun(t, f)
	folWait(t, f, 1)
	assert.Equal(t, ActionAccept, f.Check("alice@example.org").Action)

	_, err = p.Update(ctx, func(q *Policy) error { return q.AddRecipient("dan@example.org") })
	require.NoError(t, err)
	folWait(t, f, 2)
	assert.Equal(t, ActionAccept, f.Check("Dan@example.org").Action)
	st := f.Status()
	assert.Equal(t, uint64(2), st.Applied)
	assert.Equal(t, uint64(1), st.Deltas, "the second version came as a delta")
	assert.Equal(t, p.Snapshot().Digest, st.Digest)
	assert.False(t, st.Stale)
	assert.NoError(t, st.LastError)
	assert.WithinDuration(t, time.Now(), st.LastHeard, 5*time.Second)
	mu.Lock()
	assert.Equal(t, []uint64{1, 2}, applied)
	mu.Unlock()

	// What is applied reaches the disk, as a full snapshot, right after.
	require.Eventually(t, func() bool {
		data, err := os.ReadFile(filepath.Join(dir, polSnapshotFile))
		if err != nil {
			return false
		}
		s, err := DecodeSnapshot(data, polTestTrust)
		return err == nil && s.Version == 2
	}, 5*time.Second, time.Millisecond)

	require.Eventually(t, func() bool {
		fs := p.Status().Followers
		return len(fs) == 1 && fs[0].Name == "relay-b" && fs[0].Version == 2
	}, 5*time.Second, time.Millisecond)
}

// polParityRecipients mixes every kind of answer.
var polParityRecipients = []string{
	"alice@example.org", "ALICE@EXAMPLE.ORG", "<Alice@Example.org>", `"alice"@example.org`,
	"bob@example.org", "carol@example.org", "dan@example.org", "erin@example.org",
	"jörg@example.org", "JÖRG@example.org", "alice+tag@example.org", "mallory@example.org",
	"sales@example.org", "Sales@Example.Org", "team@example.org", "help@example.org",
	"postmaster@example.org", "postmaster", "info@bücher.example", "INFO@BÜCHER.EXAMPLE",
	"info@xn--bcher-kva.example", "nobody@bücher.example", "x@catchall.test",
	"neu@straße.example", "neu@xn--strae-oqa.example", "alice@other.test", "alice@[127.0.0.1]",
	"alice", "@example.org", "alice@", "a b@example.org", "alice@example.org.",
	strings.Repeat("a", 65) + "@example.org", "alice@" + strings.Repeat("b", 250) + ".org",
}

func TestFollowerParity(t *testing.T) {
	ctx := context.Background()
	p := pubOpen(t, t.TempDir(), nil)
	srv := pubServe(t, p)
	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	f := folOpen(t, srv.URL, t.TempDir(), nil)
	folRun(t, f)
	folWait(t, f, 1)

	// Changes of every kind, applied by the follower as deltas.
	edits := []func(q *Policy) error{
		func(q *Policy) error { return q.AddRecipient("dan@example.org") },
		func(q *Policy) error { return q.RemoveRecipient("carol@example.org") },
		func(q *Policy) error { return q.SetAlias("help@example.org", "dan@example.org", "team@example.org") },
		func(q *Policy) error {
			q.Domains["straße.example"] = &DomainPolicy{Recipients: []string{"Neu"}}
			return q.Normalize()
		},
		func(q *Policy) error { q.Domains["example.org"].Subaddress = "+-"; return nil },
		func(q *Policy) error { return q.RemoveAlias("sales@example.org") },
		func(q *Policy) error { return q.SetAlias("sales@example.org", "erin@elsewhere.test") },
	}
	for _, edit := range edits {
		v, err := p.Update(ctx, edit)
		require.NoError(t, err)
		// One version at a time: a follower that polls after several
		// updates rightly gets them as one delta.
		folWait(t, f, v)
	}
	want := p.Snapshot()
	folWait(t, f, want.Version)
	require.Equal(t, want.Digest, f.Snapshot().Digest)
	assert.Equal(t, uint64(len(edits)), f.Status().Deltas, "every change came as a delta")

	// A new MX: a follower started with the publisher's URL and secret.
	g := folOpen(t, srv.URL, t.TempDir(), nil)
	folRun(t, g)
	folWait(t, g, want.Version)

	static := want.Policy.Clone()
	for _, r := range polParityRecipients {
		pv, fv, gv := p.Check(r), f.Check(r), g.Check(r)
		assert.Equal(t, pv, fv, "publisher and follower differ on %q", r)
		assert.Equal(t, pv, gv, "publisher and new MX differ on %q", r)
		sv := static.Check(r)
		sv.Version = want.Version
		assert.Equal(t, pv, sv, "publisher and static policy differ on %q", r)
	}
	// The list covers every kind of answer.
	kinds := map[string]bool{}
	for _, r := range polParityRecipients {
		v := p.Check(r)
		kinds[v.EnhancedCode] = true
	}
	for _, k := range []string{"2.1.5", "5.1.1", "5.7.1", "5.1.2", "5.1.3"} {
		assert.True(t, kinds[k], "no recipient answered %s", k)
	}
}

// folScripted is a fake publisher that answers each request with the next
// scripted response, and records the requests' queries.
type folScripted struct {
	responses chan folResponse
	mu        sync.Mutex
	queries   []string
}

type folResponse struct {
	code int
	body []byte
}

func (s *folScripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.queries = append(s.queries, r.URL.RawQuery)
	s.mu.Unlock()
	select {
	case resp := <-s.responses:
		w.WriteHeader(resp.code)
		w.Write(resp.body)
	case <-r.Context().Done():
	}
}

func (s *folScripted) lastQuery() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[len(s.queries)-1]
}

func polEncode(t testing.TB, s *Snapshot) []byte {
	t.Helper()
	data, err := s.Encode()
	require.NoError(t, err)
	return data
}

func TestFollowerRefusesBadInput(t *testing.T) {
	script := &folScripted{responses: make(chan folResponse)}
	srv := httptest.NewServer(script)
	t.Cleanup(srv.Close) // after the follower's cleanup, which ends its long poll
	// Requests wait for the script, never for a timeout.
	f := folOpen(t, srv.URL, t.TempDir(), &FollowerOptions{PollWait: time.Minute, StaleAfter: 2 * time.Minute})
	folRun(t, f)

	v5, err := NewSnapshot(polTestPolicy(), 5, DefaultPool, polTestKey, time.Now())
	require.NoError(t, err)
	script.responses <- folResponse{200, polEncode(t, v5)}
	folWait(t, f, 5)

	other := polTestPolicy()
	other.Domains["evil.test"] = &DomainPolicy{AcceptAll: true}
	v4, err := NewSnapshot(other, 4, DefaultPool, polTestKey, time.Now())
	require.NoError(t, err)
	forged, err := NewSnapshot(other, 6, DefaultPool, polOtherKey, time.Now())
	require.NoError(t, err)
	same, err := NewSnapshot(other, 5, DefaultPool, polTestKey, time.Now())
	require.NoError(t, err)
	v6, err := NewSnapshot(other, 6, DefaultPool, polTestKey, time.Now())
	require.NoError(t, err)
	tampered := polEdit(t, polEncode(t, v5), func(m map[string]any) {
		m["policy"].(map[string]any)["domains"].(map[string]any)["evil.test"] = map[string]any{"accept_all": true, "spam_action": "quarantine"}
	})

	for _, tc := range []struct {
		name string
		resp folResponse
		want error
	}{
		{"signed by another key", folResponse{200, polEncode(t, forged)}, ErrPolicyAuth},
		{"lower version", folResponse{200, polEncode(t, v4)}, ErrPolicyVersion},
		{"malformed", folResponse{200, []byte(`{"format":2,"kind":"snapshot",`)}, ErrPolicyMalformed},
		{"unknown format", folResponse{200, []byte(`{"format":99,"kind":"hologram"}`)}, ErrPolicyFormat},
		{"wrong digest", folResponse{200, tampered}, ErrPolicyDigest},
		{"same version, other content", folResponse{200, polEncode(t, same)}, ErrPolicyConflict},
		{"publisher behind", folResponse{409, []byte("publisher lost its folder")}, ErrPolicyConflict},
		{"server error", folResponse{500, nil}, nil},
	} {
		before := f.Status().Errors
		script.responses <- tc.resp

		st := folWaitErrors(t, f, before)
		if tc.want != nil {
			assert.ErrorIs(t, st.LastError, tc.want, tc.name)
		} else {
			assert.Error(t, st.LastError, tc.name)
		}
		assert.Equal(t, uint64(5), st.Version, "%s: the last good policy stays", tc.name)
		assert.Equal(t, v5.Digest, st.Digest, tc.name)
		assert.Equal(t, ActionReject, f.Check("x@evil.test").Action, tc.name)
		assert.Equal(t, ActionAccept, f.Check("alice@example.org").Action, tc.name)
	}
	script.responses <- folResponse{200, polEncode(t, v6)}
	folWait(t, f, 6)
	assert.NoError(t, f.Status().LastError, "a success clears the error")
	assert.Equal(t, ActionAccept, f.Check("x@evil.test").Action)
}

func TestFollowerDeltaMismatchFetchesFull(t *testing.T) {
	script := &folScripted{responses: make(chan folResponse)}
	srv := httptest.NewServer(script)
	t.Cleanup(srv.Close) // after the follower's cleanup, which ends its long poll
	// Requests wait for the script, never for a timeout.
	f := folOpen(t, srv.URL, t.TempDir(), &FollowerOptions{PollWait: time.Minute, StaleAfter: 2 * time.Minute})
	folRun(t, f)
	v1, err := NewSnapshot(polTestPolicy(), 1, DefaultPool, polTestKey, time.Now())
	require.NoError(t, err)
	script.responses <- folResponse{200, polEncode(t, v1)}
	folWait(t, f, 1)

	next := v1.Policy.Clone()
	require.NoError(t, next.AddRecipient("dan@example.org"))
	v2, err := NewSnapshot(next, 2, DefaultPool, polTestKey, time.Now())
	require.NoError(t, err)
	// An authentic seal with changes that do not produce it.
	bad, err := json.Marshal(polWire{Format: SnapshotFormat, Kind: polKindDelta, From: 1, Version: 2, Digest: v2.Digest.String(),
		Pool: v2.Pool, Key: v2.KeyID, Issued: v2.Issued.UnixNano(), Sig: hexs(v2.Signature),
		Changes: []polChange{{Op: polOpAddRecipients, Domain: "example.org", Locals: []string{"eve"}}}})
	require.NoError(t, err)
	script.responses <- folResponse{200, bad}
	// The follower must come straight back for the full snapshot.
	require.Eventually(t, func() bool {
		script.mu.Lock()
		defer script.mu.Unlock()
		return len(script.queries) == 3
	}, 5*time.Second, time.Millisecond)
	assert.Contains(t, script.lastQuery(), "since=0")
	assert.ErrorIs(t, f.Status().LastError, ErrPolicyDigest)
	assert.Equal(t, uint64(1), f.Status().Version)
	assert.Equal(t, ActionReject, f.Check("eve@example.org").Action)
	script.responses <- folResponse{200, polEncode(t, v2)}
	folWait(t, f, 2)
	assert.Equal(t, ActionAccept, f.Check("dan@example.org").Action)
	assert.Equal(t, ActionReject, f.Check("eve@example.org").Action)
}

func hexs(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func TestFollowerStoredCopyWithoutNetwork(t *testing.T) {
	ctx := context.Background()
	p := pubOpen(t, t.TempDir(), nil)
	srv := pubServe(t, p)
	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	_, err = p.Update(ctx, func(q *Policy) error { return q.AddRecipient("dan@example.org") })
	require.NoError(t, err)
	dir := t.TempDir()
	f := folOpen(t, srv.URL, dir, nil)
	stop := folRun(t, f)
	folWait(t, f, 2)
	stop()
	require.NoError(t, f.Close())

	// The publisher is gone: nothing listens at its address any more.
	url := srv.URL
	p.Close()
	srv.Close()
	st, err := os.Stat(filepath.Join(dir, polSnapshotFile))
	require.NoError(t, err)
	clock := testclock.New(st.ModTime().Add(30 * time.Second))
	f = folOpen(t, url, dir, &FollowerOptions{Now: clock.Now})
	assert.Equal(t, uint64(2), f.Status().Version, "the stored copy is loaded at open")
	assert.Equal(t, ActionAccept, f.Check("dan@example.org").Action)
	assert.Equal(t, 550, f.Check("mallory@example.org").Code, "stored 30 s ago: not stale")
	stop = folRun(t, f)
	st2 := folWaitErrors(t, f, 0)
	assert.Error(t, st2.LastError)
	assert.Equal(t, uint64(2), st2.Version)
	assert.Equal(t, ActionAccept, f.Check("alice@example.org").Action, "serves its stored copy while the network is down")
	clock.Advance(time.Minute)
	assert.Equal(t, 450, f.Check("mallory@example.org").Code, "no word from the publisher for longer than StaleAfter")
	assert.True(t, f.Status().Stale)
	stop()
}

func TestFollowerBadStoredCopy(t *testing.T) {
	ctx := context.Background()
	p := pubOpen(t, t.TempDir(), nil)
	srv := pubServe(t, p)
	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	good := polEncode(t, p.Snapshot())

	// Tampered: renamed aside, reported, and replaced from the publisher.
	dir := t.TempDir()
	path := filepath.Join(dir, polSnapshotFile)
	require.NoError(t, os.WriteFile(path, []byte(strings.Replace(string(good), `"alice"`, `"alicf"`, 1)), 0o600))
	f := folOpen(t, srv.URL, dir, nil)
	assert.Nil(t, f.Snapshot())
	assert.Equal(t, 451, f.Check("alice@example.org").Code)
	assert.ErrorIs(t, f.Status().LastError, ErrPolicyDigest)
	aside, err := filepath.Glob(path + ".bad-*")
	require.NoError(t, err)
	assert.Len(t, aside, 1, "the bad copy is kept aside, not deleted")
	folRun(t, f)
	folWait(t, f, 1)
	assert.Equal(t, ActionAccept, f.Check("alice@example.org").Action)

	// Unknown format: refused at open.
	dir = t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, polSnapshotFile), []byte(strings.Replace(string(good), `"format":2`, `"format":3`, 1)), 0o600))
	_, err = OpenFollower(srv.URL, polTestSecret, dir, &FollowerOptions{Logger: polQuiet(), Trust: polTestTrust})
	assert.ErrorIs(t, err, ErrPolicyFormat)
	_, err = OpenFollower(srv.URL, polTestSecret, t.TempDir(), &FollowerOptions{Logger: polQuiet()})
	assert.ErrorContains(t, err, "no public key", "a follower needs the publisher's public key")

	// Options are checked.
	_, err = OpenFollower("ftp://x", polTestSecret, t.TempDir(), nil)
	assert.Error(t, err)
	_, err = OpenFollower(srv.URL, []byte("short"), t.TempDir(), nil)
	assert.Error(t, err)
	_, err = OpenFollower(srv.URL, polTestSecret, t.TempDir(), &FollowerOptions{PollWait: time.Minute, StaleAfter: time.Second, Trust: polTestTrust})
	assert.Error(t, err)
}

func TestFollowerStaleness(t *testing.T) {
	ctx := context.Background()
	clock := testclock.New(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	p := pubOpen(t, t.TempDir(), &PublisherOptions{Now: clock.Now})
	srv := pubServe(t, p)
	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	// A long poll longer than the test, so that only an Update is heard.
	f := folOpen(t, srv.URL, t.TempDir(), &FollowerOptions{Now: clock.Now, PollWait: 30 * time.Second, StaleAfter: time.Minute})
	folRun(t, f)
	folWait(t, f, 1)

	check := func(when string, unknown, otherDomain int) {
		t.Helper()
		v := f.Check("mallory@example.org")
		assert.Equal(t, unknown, v.Code, "%s: unknown recipient", when)
		assert.Equal(t, otherDomain, f.Check("alice@other.test").Code, "%s: unknown domain", when)
		assert.Equal(t, 250, f.Check("alice@example.org").Code, "%s: known recipient", when)
		assert.Equal(t, 553, f.Check("alice").Code, "%s: bad syntax", when)
	}
	check("fresh", 550, 550)
	clock.Advance(59 * time.Second)
	check("59 s", 550, 550)
	clock.Advance(2 * time.Second)
	check("61 s", 450, 450)
	assert.True(t, f.Status().Stale)
	assert.Equal(t, "4.1.1", f.Check("mallory@example.org").EnhancedCode)

	_, err = p.Update(ctx, func(q *Policy) error { return q.AddRecipient("dan@example.org") })
	require.NoError(t, err)
	folWait(t, f, 2)
	check("heard again", 550, 550)
	assert.False(t, f.Status().Stale)
}

// polProxy is a TCP proxy in front of a publisher that can cut the
// network: refuse (connections are closed at once) or hold (connections
// are accepted and never answered, like a black hole).
type polProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	mode   int
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

const (
	polPass = iota
	polRefuse
	polHold
)

func polNewProxy(t testing.TB, target string) *polProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &polProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.set(polRefuse)
		p.wg.Wait()
	})
	return p
}

func (p *polProxy) URL() string { return "http://" + p.ln.Addr().String() }

func (p *polProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode := p.mode
		if mode != polRefuse {
			p.conns[c] = true
		}
		p.mu.Unlock()
		switch mode {
		case polRefuse:
			c.Close()
		case polPass:
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[up] = true
			p.mu.Unlock()
			p.wg.Add(2)
			pipe := func(dst, src net.Conn) {
				defer p.wg.Done()
				io.Copy(dst, src)
				dst.Close()
				src.Close()
			}
			go pipe(up, c)
			go pipe(c, up)
		}
	}
}

// set changes the mode and drops every connection.
func (p *polProxy) set(mode int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = mode
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func TestFollowerNetworkCut(t *testing.T) {
	ctx := context.Background()
	p := pubOpen(t, t.TempDir(), nil)
	srv := pubServe(t, p)
	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	proxy := polNewProxy(t, srv.Listener.Addr().String())
	f := folOpen(t, proxy.URL(), t.TempDir(), &FollowerOptions{PollWait: 300 * time.Millisecond, RequestTimeout: 200 * time.Millisecond})
	folRun(t, f)
	folWait(t, f, 1)

	// Refused connections.
	proxy.set(polRefuse)
	v, err := p.Update(ctx, func(q *Policy) error { return q.AddRecipient("dan@example.org") })
	require.NoError(t, err)
	st := folWaitErrors(t, f, f.Status().Errors)
	assert.Equal(t, uint64(1), st.Version)
	assert.Equal(t, ActionAccept, f.Check("alice@example.org").Action, "keeps serving the last policy")
	assert.Equal(t, ActionReject, f.Check("dan@example.org").Action)
	proxy.set(polPass)
	folWait(t, f, v)
	assert.Equal(t, ActionAccept, f.Check("dan@example.org").Action)

	// A black hole: the request times out.
	proxy.set(polHold)
	v, err = p.Update(ctx, func(q *Policy) error { return q.AddRecipient("erin@example.org") })
	require.NoError(t, err)
	// The connection in use is dropped; the next one is held until the
	// request times out.
	require.Eventually(t, func() bool {
		st = f.Status()
		return errors.Is(st.LastError, context.DeadlineExceeded)
	}, 10*time.Second, time.Millisecond)
	assert.Equal(t, v-1, st.Version)
	assert.Equal(t, ActionReject, f.Check("erin@example.org").Action)
	proxy.set(polPass)
	folWait(t, f, v)
	assert.Equal(t, ActionAccept, f.Check("erin@example.org").Action)
	assert.Equal(t, p.Snapshot().Digest, f.Snapshot().Digest)
}

func TestFollowerPublisherRestart(t *testing.T) {
	ctx := context.Background()
	pdir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	serve := func(ln net.Listener) (*Publisher, func()) {
		p := pubOpen(t, pdir, nil)
		hs := &http.Server{Handler: p}
		done := make(chan struct{})
		go func() { hs.Serve(ln); close(done) }()
		return p, func() {
			p.Close()
			hs.Close()
			<-done
		}
	}
	p, stopPub := serve(ln)
	_, err = p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	f := folOpen(t, "http://"+addr, t.TempDir(), nil)
	folRun(t, f)
	folWait(t, f, 1)
	_, err = p.Update(ctx, func(q *Policy) error { return q.AddRecipient("dan@example.org") })
	require.NoError(t, err)
	folWait(t, f, 2)

	stopPub()
	folWaitErrors(t, f, f.Status().Errors)
	assert.Equal(t, ActionAccept, f.Check("dan@example.org").Action)

	ln, err = net.Listen("tcp", addr)
	require.NoError(t, err)
	p, stopPub = serve(ln)
	defer stopPub()
	assert.Equal(t, uint64(2), p.Snapshot().Version)
	deltas := f.Status().Deltas
	v, err := p.Update(ctx, func(q *Policy) error { return q.AddRecipient("erin@example.org") })
	require.NoError(t, err)
	assert.Equal(t, uint64(3), v)
	folWait(t, f, 3)
	assert.Equal(t, deltas+1, f.Status().Deltas, "the restarted publisher still sends deltas")
	assert.Equal(t, ActionAccept, f.Check("erin@example.org").Action)
	assert.NoError(t, f.Status().LastError)
}

func TestFollowerAuthRefused(t *testing.T) {
	p := pubOpen(t, t.TempDir(), nil)
	srv := pubServe(t, p)
	_, err := p.Publish(context.Background(), polTestPolicy())
	require.NoError(t, err)
	f, err := OpenFollower(srv.URL, []byte("not-the-pool-secret-0123"), t.TempDir(), &FollowerOptions{
		Logger: polQuiet(), Trust: polTestTrust, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
	})
	require.NoError(t, err)
	defer f.Close()
	folRun(t, f)
	st := folWaitErrors(t, f, 0)
	assert.ErrorContains(t, st.LastError, "401")
	assert.Nil(t, f.Snapshot())
	assert.Equal(t, 451, f.Check("alice@example.org").Code)
}

func TestFollowerSignature(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	otherPub, _, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	p := pubOpen(t, t.TempDir(), &PublisherOptions{SigningKey: priv})
	srv := pubServe(t, p)
	_, err = p.Publish(context.Background(), polTestPolicy())
	require.NoError(t, err)

	f := folOpen(t, srv.URL, t.TempDir(), &FollowerOptions{Trust: Trust{Keys: []ed25519.PublicKey{pub}}})
	folRun(t, f)
	folWait(t, f, 1)

	g := folOpen(t, srv.URL, t.TempDir(), &FollowerOptions{Trust: Trust{Keys: []ed25519.PublicKey{otherPub}}})
	folRun(t, g)
	st := folWaitErrors(t, g, 0)
	assert.ErrorIs(t, st.LastError, ErrPolicyAuth)
	assert.Nil(t, g.Snapshot())
}

func TestFollowerLifecycle(t *testing.T) {
	p := pubOpen(t, t.TempDir(), nil)
	srv := pubServe(t, p)
	_, err := p.Publish(context.Background(), polTestPolicy())
	require.NoError(t, err)
	dir := t.TempDir()
	f := folOpen(t, srv.URL, dir, nil)
	_, err = OpenFollower(srv.URL, polTestSecret, dir, &FollowerOptions{Trust: polTestTrust})
	assert.Error(t, err, "the folder is locked")

	done := make(chan error, 1)
	go func() { done <- f.Run(context.Background()) }()
	folWait(t, f, 1)
	assert.Error(t, f.Run(context.Background()), "a second Run")
	require.NoError(t, f.Close())
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not stop Run")
	}
	require.NoError(t, f.Close())
	assert.ErrorIs(t, f.Run(context.Background()), ErrFollowerClosed)
	assert.Equal(t, ActionAccept, f.Check("alice@example.org").Action, "Check works after Close")
}

// TestNoGoroutineLeak runs a pool, stops it, and checks that none of the
// package's goroutines is left.
func TestNoGoroutineLeak(t *testing.T) {
	func() {
		p := pubOpen(t, t.TempDir(), nil)
		srv := httptest.NewServer(p)
		_, err := p.Publish(context.Background(), polTestPolicy())
		require.NoError(t, err)
		var stops []func()
		for range 3 {
			f := folOpen(t, srv.URL, t.TempDir(), nil)
			stops = append(stops, folRun(t, f))
			folWait(t, f, 1)
		}
		for _, stop := range stops {
			stop()
		}
		p.Close()
		srv.Close()
	}()
	var stacks string
	ok := assert.Eventually(t, func() bool {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		return !strings.Contains(stacks, "mxpool.(*Follower)") && !strings.Contains(stacks, "mxpool.(*Publisher)")
	}, 5*time.Second, 5*time.Millisecond)
	if !ok {
		t.Log(stacks)
	}
}
