package quarantine

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// shEvents collects a shipper's events and lets a test wait for a
// condition checked after each one.
type shEvents struct {
	mu     sync.Mutex
	events []ShipEvent
	ch     chan struct{}
}

func newShEvents() *shEvents { return &shEvents{ch: make(chan struct{})} }

func (e *shEvents) on(ev ShipEvent) {
	e.mu.Lock()
	e.events = append(e.events, ev)
	close(e.ch)
	e.ch = make(chan struct{})
	e.mu.Unlock()
}

// waitFor waits until cond holds, checking it after every exchange.
func (e *shEvents) waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		e.mu.Lock()
		ch := e.ch
		e.mu.Unlock()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (e *shEvents) failures() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.events {
		if ev.Err != nil {
			n++
		}
	}
	return n
}

func shShipper(t testing.TB, o *Outbox, url string, opts *ShipperOptions) (*Shipper, *shEvents) {
	t.Helper()
	if opts == nil {
		opts = &ShipperOptions{}
	}
	ev := newShEvents()
	opts.OnBatch = ev.on
	if opts.Logger == nil {
		opts.Logger = shLogger()
	}
	if opts.Secret == nil {
		opts.Secret = shSecret
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = time.Millisecond
		opts.MaxBackoff = 20 * time.Millisecond
	}
	s, err := NewShipper(o, url, opts)
	require.NoError(t, err)
	return s, ev
}

func TestShipEndToEnd(t *testing.T) {
	c := shStartCentre(t, nil, nil)
	o := shOutbox(t, t.TempDir(), &OutboxOptions{Node: "mx2"})
	s, ev := shShipper(t, o, c.srv.URL, &ShipperOptions{MaxBatchItems: 16})
	shRun(t, s)

	var mu sync.Mutex
	var ids []string
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 50 {
				id := fmt.Sprintf("w%d-%d", w, i)
				var err error
				if i%10 == 3 {
					err = o.Add(context.Background(), shEntry(id), nil)
				} else {
					err = o.Add(context.Background(), shEntry(id), bytes.NewReader(shBody(id, 2000+i)))
				}
				if assert.NoError(t, err) {
					mu.Lock()
					ids = append(ids, id)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	c.rec.wait(t, ids, 20*time.Second)
	ev.waitFor(t, "outbox empty", func() bool { return o.Stats().Pending == 0 })

	ctx := context.Background()
	for _, id := range ids {
		e, err := c.store.Get(ctx, "admin", id)
		require.NoError(t, err)
		assert.Equal(t, "mx2", e.Node)
		if e.HasBody() {
			body, err := c.store.Body(ctx, "admin", id)
			require.NoError(t, err)
			assert.Equal(t, shBody(id, int(e.Size)), body)
		}
		assert.Equal(t, 1, c.rec.count(id), "entry %s stored once", id)
	}
	st := s.Stats()
	assert.Equal(t, uint64(len(ids)), st.Shipped)
	assert.Zero(t, st.Pending)
	assert.Zero(t, st.Lag)
	assert.Positive(t, st.Batches)
	assert.Less(t, st.Batches, uint64(len(ids)), "entries travel in batches")
	assert.NoError(t, st.LastError)
	assert.Equal(t, uint64(len(ids)), c.store.Stats().Stored)
	assert.Equal(t, uint64(len(ids)), o.Stats().Acked)
}

// shFlaky makes a centre unreachable while down is set: it answers 503 or
// drops the connection, in turn. With lose set, it lets the request reach
// the centre and then drops the connection, so the edge never hears that
// its batch was stored.
type shFlaky struct {
	down, lose atomic.Bool
	n          atomic.Int64
}

func (f *shFlaky) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := f.n.Add(1)
		switch {
		case f.down.Load() && n%2 == 0:
			http.Error(w, "centre down", http.StatusServiceUnavailable)
		case f.down.Load():
			shDrop(w)
		case f.lose.Load():
			next.ServeHTTP(httptest.NewRecorder(), r)
			shDrop(w)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func shDrop(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		conn.Close()
	}
}

func TestShipCentreDownThenUp(t *testing.T) {
	for _, mode := range []string{"down", "replies lost"} {
		t.Run(mode, func(t *testing.T) {
			flaky := &shFlaky{}
			if mode == "down" {
				flaky.down.Store(true)
			} else {
				flaky.lose.Store(true)
			}
			c := shStartCentre(t, nil, flaky.wrap)
			o := shOutbox(t, t.TempDir(), nil)
			s, ev := shShipper(t, o, c.srv.URL, &ShipperOptions{MaxBatchItems: 8})
			shRun(t, s)
			var ids []string
			for i := range 40 {
				id := fmt.Sprintf("d%02d", i)
				require.NoError(t, o.Add(context.Background(), shEntry(id), bytes.NewReader(shBody(id, 1500))))
				ids = append(ids, id)
			}
			ev.waitFor(t, "failed exchanges", func() bool { return ev.failures() >= 6 })
			assert.Equal(t, 40, o.Stats().Pending, "nothing is forgotten while the centre does not answer")
			assert.Error(t, s.Stats().LastError)
			flaky.down.Store(false)
			flaky.lose.Store(false)

			c.rec.wait(t, ids, 20*time.Second)
			ev.waitFor(t, "outbox empty", func() bool { return o.Stats().Pending == 0 })
			// The shipper counts a batch just after the outbox forgets it.
			ev.waitFor(t, "every entry counted", func() bool { return s.Stats().Shipped == 40 })
			st := c.store.Stats()
			assert.Equal(t, uint64(40), st.Stored, "every entry stored exactly once")
			assert.Equal(t, int64(40), st.Entries)
			if mode == "replies lost" {
				assert.Positive(t, st.Duplicates, "batches whose reply was lost were sent again, and ignored")
			} else {
				for _, id := range ids {
					assert.Equal(t, 1, c.rec.count(id))
				}
			}
			sst := s.Stats()
			assert.GreaterOrEqual(t, sst.Retries, uint64(6))
			assert.NoError(t, sst.LastError)
			assert.Equal(t, uint64(40), sst.Shipped)
		})
	}
}

func TestShipPoisonEntries(t *testing.T) {
	c := shStartCentre(t, &IngestOptions{MaxBodySize: 4 << 10}, nil)
	ctx := context.Background()
	require.NoError(t, c.store.Put(ctx, shEntry("taken"), bytes.NewReader([]byte("the centre's own body"))))
	dir := t.TempDir()
	o := shOutbox(t, dir, nil)
	require.NoError(t, o.Add(ctx, shEntry("p1"), bytes.NewReader(shBody("p1", 1000))))
	require.NoError(t, o.Add(ctx, shEntry("poison"), bytes.NewReader(shBody("poison", 8<<10))))
	require.NoError(t, o.Add(ctx, shEntry("taken"), bytes.NewReader(shBody("taken", 500))))
	require.NoError(t, o.Add(ctx, shEntry("p4"), nil))

	s, ev := shShipper(t, o, c.srv.URL, nil)
	shRun(t, s)
	ev.waitFor(t, "outbox empty", func() bool { return o.Stats().Pending == 0 })

	for _, id := range []string{"p1", "p4"} {
		_, err := c.store.Get(ctx, "admin", id)
		assert.NoError(t, err, id)
	}
	for _, id := range []string{"poison", "taken"} {
		for _, ext := range []string{".json", ".eml", ".reason"} {
			assert.FileExists(t, filepath.Join(dir, "rejected", id+ext))
		}
	}
	eml, err := os.ReadFile(filepath.Join(dir, "rejected", "poison.eml"))
	require.NoError(t, err)
	assert.Equal(t, shBody("poison", 8<<10), eml, "the refused message is kept whole")
	reason, err := os.ReadFile(filepath.Join(dir, "rejected", "taken.reason"))
	require.NoError(t, err)
	assert.Contains(t, string(reason), "conflict")
	assert.Equal(t, uint64(2), s.Stats().Rejected)
	assert.Equal(t, uint64(2), o.Stats().Rejected)
	body, err := c.store.Body(ctx, "admin", "taken")
	require.NoError(t, err)
	assert.Equal(t, "the centre's own body", string(body))
}

func TestShipSplitsBatchesTooLarge(t *testing.T) {
	c := shStartCentre(t, &IngestOptions{MaxBatchBytes: 40 << 10}, nil)
	ctx := context.Background()
	dir := t.TempDir()
	o := shOutbox(t, dir, nil)
	var ids []string
	for i := range 12 {
		id := fmt.Sprintf("s%02d", i)
		require.NoError(t, o.Add(ctx, shEntry(id), bytes.NewReader(shBody(id, 10<<10))))
		ids = append(ids, id)
	}
	require.NoError(t, o.Add(ctx, shEntry("huge"), bytes.NewReader(shBody("huge", 60<<10))))
	s, ev := shShipper(t, o, c.srv.URL, nil)
	shRun(t, s)
	c.rec.wait(t, ids, 20*time.Second)
	ev.waitFor(t, "outbox empty", func() bool { return o.Stats().Pending == 0 })
	assert.FileExists(t, filepath.Join(dir, "rejected", "huge.eml"), "one entry too large for the centre is set aside")
	assert.Equal(t, uint64(12), c.store.Stats().Stored)
}

func TestShipperRunRules(t *testing.T) {
	o := shOutbox(t, t.TempDir(), nil)
	s1, ev := shShipper(t, o, "http://127.0.0.1:1/", nil)
	s2, _ := shShipper(t, o, "http://127.0.0.1:1/", nil)
	shRun(t, s1)
	require.NoError(t, o.Add(context.Background(), shEntry("r1"), nil))
	ev.waitFor(t, "s1 running", func() bool { return ev.failures() > 0 })
	assert.Error(t, s2.Run(context.Background()), "one Shipper per outbox")

	for _, u := range []string{"", "ftp://x/", "http://", "://x"} {
		_, err := NewShipper(o, u, nil)
		assert.Error(t, err, u)
	}
	_, err := NewShipper(nil, "http://x/", nil)
	assert.Error(t, err)
	_, err = NewShipper(o, "http://x/", &ShipperOptions{MinBackoff: time.Second, MaxBackoff: time.Millisecond})
	assert.Error(t, err)
}

func TestShipperStopsWhenOutboxCloses(t *testing.T) {
	o := shOutbox(t, t.TempDir(), nil)
	s, _ := shShipper(t, o, "http://127.0.0.1:1/", nil)
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	require.NoError(t, o.Close())
	assert.ErrorIs(t, <-done, ErrClosed)
}

// shMemPutter is an in-memory central store: idempotent by id and digest.
type shMemPutter struct {
	mu sync.Mutex
	m  map[string]Item
}

func (p *shMemPutter) PutBatch(ctx context.Context, items []Item) []error {
	p.mu.Lock()
	defer p.mu.Unlock()
	errs := make([]error, len(items))
	for i, it := range items {
		if old, ok := p.m[it.Entry.ID]; ok && old.Entry.Digest != it.Entry.Digest {
			errs[i] = ErrConflict
			continue
		}
		p.m[it.Entry.ID] = it
	}
	return errs
}

type shRoundTripper func(*http.Request) (*http.Response, error)

func (f shRoundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestShipBackoff checks the retry schedule on a fake clock: doubling
// waits, jittered within [d/2, d], capped at MaxBackoff, and shipping at
// once when the centre is back.
func TestShipBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := &shMemPutter{m: map[string]Item{}}
		h := newIngestHandler(mem, 64<<20, &IngestOptions{Secret: shSecret, Logger: shLogger()})
		const fails = 8
		var attempts []time.Time
		client := &http.Client{Transport: shRoundTripper(func(r *http.Request) (*http.Response, error) {
			attempts = append(attempts, time.Now())
			w := httptest.NewRecorder()
			if len(attempts) <= fails {
				w.WriteHeader(http.StatusBadGateway)
			} else {
				h.ServeHTTP(w, r)
			}
			return w.Result(), nil
		})}
		o := shOutbox(t, t.TempDir(), nil)
		s, _ := shShipper(t, o, "https://centre.example/ingest", &ShipperOptions{
			HTTPClient: client, MinBackoff: time.Second, MaxBackoff: 16 * time.Second,
		})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		require.NoError(t, o.Add(ctx, shEntry("b1"), bytes.NewReader([]byte("Subject: x\r\n\r\nbody"))))
		start := time.Now()
		time.Sleep(10 * time.Minute) // fake time: lets the schedule play out
		synctest.Wait()
		require.Len(t, attempts, fails+1)
		assert.Equal(t, start, attempts[0], "the first attempt is immediate")
		d := time.Second
		for i := 1; i < len(attempts); i++ {
			gap := attempts[i].Sub(attempts[i-1])
			assert.GreaterOrEqual(t, gap, d/2, "attempt %d", i)
			assert.LessOrEqual(t, gap, d, "attempt %d", i)
			d = min(2*d, 16*time.Second)
		}
		assert.Len(t, mem.m, 1)
		assert.Zero(t, o.Stats().Pending)
		assert.Equal(t, uint64(fails), s.Stats().Retries)
		cancel()
		require.NoError(t, <-done)
	})
}
