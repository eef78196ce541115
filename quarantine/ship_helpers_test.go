package quarantine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
)

// Helpers of the outbox, shipper and ingest tests; all prefixed "sh" so
// that they cannot collide with the store's tests in this package.

var shSecret = []byte("shared secret of the pool")

func shLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// shEntry returns a valid entry with id (a new one if empty).
func shEntry(id string) Entry {
	t := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	if id == "" {
		id = NewID(t)
	}
	return Entry{
		ID: id,
		Envelope: resilmail.Envelope{
			ID:   "env-" + id,
			From: "sender@example.net",
			To:   []resilmail.Recipient{{Addr: "alice@example.org"}, {Addr: "bob@example.org"}},
		},
		Recipients: []RecipientState{
			{Addr: "alice@example.org", Status: Held, Changed: t},
			{Addr: "bob@example.org", Status: Held, Changed: t},
		},
		Time:       t,
		ClientAddr: "192.0.2.1",
		HELO:       "mx.example.net",
		Reason:     Reason{Kind: KindSpam, Score: 12.5, Threshold: 5, Reply: "550 5.7.1 spam"},
	}
}

// shBody returns a message of about n bytes.
func shBody(id string, n int) []byte {
	h := fmt.Sprintf("Subject: test %s\r\nMessage-ID: <%s@example.net>\r\n\r\n", id, id)
	if n < len(h) {
		n = len(h)
	}
	return append([]byte(h), bytes.Repeat([]byte("x"), n-len(h))...)
}

// shOutbox opens an outbox in dir and closes it at the end of the test.
func shOutbox(t testing.TB, dir string, opts *OutboxOptions) *Outbox {
	t.Helper()
	if opts == nil {
		opts = &OutboxOptions{}
	}
	if opts.Logger == nil {
		opts.Logger = shLogger()
	}
	if opts.MinFreeBytes == 0 {
		opts.MinFreeBytes = -1
	}
	o, err := OpenOutbox(dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { o.Close() })
	return o
}

// shStore opens a real central store.
func shStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), &StaticAuthorizer{Admins: []string{"admin"}}, &Options{Logger: shLogger()})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// shRecorder is a batchPutter that forwards to another and records, for
// each entry id, how many times the store said it was stored (first time
// or again), and wakes waiters.
type shRecorder struct {
	p batchPutter

	mu      sync.Mutex
	seen    map[string]int
	at      map[string]time.Time // when first stored
	changed chan struct{}
}

func shRecord(p batchPutter) *shRecorder {
	return &shRecorder{p: p, seen: map[string]int{}, at: map[string]time.Time{}, changed: make(chan struct{})}
}

func (r *shRecorder) PutBatch(ctx context.Context, items []Item) []error {
	errs := r.p.PutBatch(ctx, items)
	now := time.Now()
	r.mu.Lock()
	for i, it := range items {
		if errs[i] == nil {
			if r.seen[it.Entry.ID] == 0 {
				r.at[it.Entry.ID] = now
			}
			r.seen[it.Entry.ID]++
		}
	}
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	return errs
}

// wait waits until every id has been stored, or fails the test after
// timeout.
func (r *shRecorder) wait(t testing.TB, ids []string, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		missing := 0
		for _, id := range ids {
			if r.seen[id] == 0 {
				missing++
			}
		}
		ch := r.changed
		r.mu.Unlock()
		if missing == 0 {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("%d of %d entries not stored at the centre after %v", missing, len(ids), timeout)
		}
	}
}

func (r *shRecorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[id]
}

// shCentre serves the ingest handler of a real store through a recorder,
// behind mw (nil: none), on loopback.
type shCentre struct {
	store *Store
	rec   *shRecorder
	srv   *httptest.Server
	h     http.Handler
}

func shStartCentre(t testing.TB, iopts *IngestOptions, mw func(http.Handler) http.Handler) *shCentre {
	t.Helper()
	st := shStore(t)
	c := &shCentre{store: st, rec: shRecord(st)}
	if iopts == nil {
		iopts = &IngestOptions{}
	}
	if iopts.Secret == nil && iopts.Authenticate == nil {
		iopts.Secret = shSecret
	}
	if iopts.Logger == nil {
		iopts.Logger = shLogger()
	}
	c.h = newIngestHandler(c.rec, st.opts.MaxSize, iopts)
	if mw != nil {
		c.h = mw(c.h)
	}
	c.srv = httptest.NewServer(c.h)
	t.Cleanup(c.srv.Close)
	return c
}

// shRun runs a shipper until the end of the test.
func shRun(t testing.TB, s *Shipper) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

// shBatch encodes entries with bodies into a batch.
func shBatch(t testing.TB, items ...Item) []byte {
	t.Helper()
	var buf bytes.Buffer
	bw := NewBatchWriter(&buf)
	for _, it := range items {
		require.NoError(t, bw.Add(it.Entry, it.Body))
	}
	require.NoError(t, bw.Close())
	return buf.Bytes()
}

// shPost posts a batch to url with the shared secret's token.
func shPost(t testing.TB, url string, batch []byte) (int, IngestResponse) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(batch))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+ShipToken(shSecret))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var ir IngestResponse
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		require.NoError(t, json.Unmarshal(data, &ir))
	}
	return resp.StatusCode, ir
}
