package quarantine

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/resilmail/resilmail/internal/bearer"
)

// ShipToken returns the bearer token an edge presents to the centre's
// [Store.IngestHandler]: the hexadecimal HMAC-SHA256 of a fixed label under
// the shared secret, so that the secret itself never travels. The label
// differs from other services', so a token is good for shipping only.
func ShipToken(secret []byte) string {
	return bearer.Token(secret, "resilmail/quarantine ship token 1")
}

// ShipperOptions configure a [Shipper]. The zero value, or nil, gives the
// defaults documented on each field.
type ShipperOptions struct {
	// Logger receives a line per failed exchange, per entry the centre
	// refuses and per compaction; nil means slog.Default(). Bodies and
	// secrets are never logged.
	Logger *slog.Logger
	// Secret is the secret shared with the centre (IngestOptions.Secret):
	// requests carry "Authorization: Bearer " + ShipToken(Secret). Nil
	// sends no Authorization header (client certificates only).
	Secret []byte
	// HTTPClient talks to the centre; set its Transport's TLSClientConfig
	// for TLS and client certificates. Nil means a client of the
	// Shipper's own (a clone of http.DefaultTransport).
	HTTPClient *http.Client
	// MaxBatchItems and MaxBatchBytes bound one batch: entries, and bytes
	// of bodies (an entry larger than that goes alone); zero means 256
	// and 8 MiB.
	MaxBatchItems int
	MaxBatchBytes int64
	// MinBackoff and MaxBackoff bound the jittered, doubling wait between
	// failed exchanges; zero means 100 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// RequestTimeout bounds one exchange; zero means 60 seconds.
	RequestTimeout time.Duration
	// OnBatch, when not nil, is called after every exchange with the
	// centre, once its acknowledgements are recorded, from Run's
	// goroutine; it must not block.
	OnBatch func(ShipEvent)
}

// A ShipEvent describes one exchange with the centre.
type ShipEvent struct {
	// Batch is the batch's id, logged at both ends.
	Batch string
	// Entries is the number of entries sent; Stored, Rejected and Retry
	// count the centre's verdicts.
	Entries, Stored, Rejected, Retry int
	// Bytes is the size of the batch.
	Bytes int
	// Took is how long the exchange took.
	Took time.Duration
	// Err is why the exchange failed, or why some entries must be sent
	// again; nil otherwise.
	Err error
}

func (so *ShipperOptions) withDefaults() (ShipperOptions, error) {
	var out ShipperOptions
	if so != nil {
		out = *so
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.HTTPClient == nil {
		out.HTTPClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if out.MaxBatchItems == 0 {
		out.MaxBatchItems = 256
	}
	if out.MaxBatchBytes == 0 {
		out.MaxBatchBytes = 8 << 20
	}
	if out.MinBackoff == 0 {
		out.MinBackoff = 100 * time.Millisecond
	}
	if out.MaxBackoff == 0 {
		out.MaxBackoff = 30 * time.Second
	}
	if out.RequestTimeout == 0 {
		out.RequestTimeout = 60 * time.Second
	}
	if out.MaxBatchItems < 0 || out.MaxBatchBytes < 0 || out.MinBackoff < 0 || out.MaxBackoff < out.MinBackoff || out.RequestTimeout < 0 {
		return out, errors.New("quarantine: invalid ShipperOptions (negative limit, or MaxBackoff below MinBackoff)")
	}
	return out, nil
}

// ShipperStats is a snapshot of a [Shipper]. Counters count since
// NewShipper.
type ShipperStats struct {
	// Shipped counts the entries the centre acknowledged as stored.
	Shipped uint64
	// Rejected counts the entries the centre refused for good, kept in
	// the outbox's rejected/ folder; Corrupt those whose body was damaged
	// on the edge's disk, kept in corrupt/.
	Rejected uint64
	Corrupt  uint64
	// Batches counts the batches the centre answered; Retries the failed
	// exchanges, each followed by a backoff.
	Batches uint64
	Retries uint64
	// LastError is the error of the last failed exchange, cleared by the
	// next success; LastErrorAt is its time. LastShipped is when the
	// centre last acknowledged a batch.
	LastError   error
	LastErrorAt time.Time
	LastShipped time.Time
	// Pending is the number of entries waiting in the outbox, and Lag the
	// age of the oldest of them (zero when none).
	Pending int
	Lag     time.Duration
}

// A Shipper sends the entries of an [Outbox] to the central store's
// [Store.IngestHandler]: in batches, as soon as they are added, retrying
// with backoff while the centre is unreachable or failing, and forgetting
// an entry only once the centre has acknowledged it. The centre ingests
// idempotently, so an entry sent twice (a reply lost, a crash before the
// acknowledgement was recorded) is stored once.
//
// Per entry, the centre's verdict decides: stored, forgotten; invalid or
// conflicting, logged as an error and moved to the outbox's rejected/
// folder, then forgotten, so that a poison entry cannot block the outbox;
// not stored, sent again after a backoff. A whole batch refused as too
// large is split; a single entry refused as too large is rejected.
//
// Create it with [NewShipper] and run it with [Shipper.Run]. One Shipper
// runs on an outbox at a time.
type Shipper struct {
	o    *Outbox
	url  string
	opts ShipperOptions
	log  *slog.Logger
	auth string

	mu sync.Mutex
	st ShipperStats
}

// NewShipper returns a Shipper for o that posts to centreURL, the URL at
// which the centre serves [Store.IngestHandler] (https, or http on
// loopback for tests). It does no I/O.
func NewShipper(o *Outbox, centreURL string, opts *ShipperOptions) (*Shipper, error) {
	if o == nil {
		return nil, errors.New("quarantine: nil Outbox")
	}
	u, err := url.Parse(centreURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("quarantine: centre URL %q is not an http or https URL", centreURL)
	}
	so, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Shipper{o: o, url: u.String(), opts: so, log: so.Logger}
	if len(so.Secret) > 0 {
		s.auth = bearer.Header(ShipToken(so.Secret))
	}
	return s, nil
}

// Stats returns the shipper's counters and the outbox's lag.
func (s *Shipper) Stats() ShipperStats {
	ost := s.o.Stats()
	s.mu.Lock()
	st := s.st
	s.mu.Unlock()
	st.Pending = ost.Pending
	if !ost.Oldest.IsZero() {
		st.Lag = max(s.o.opts.Now().Sub(ost.Oldest), 0)
	}
	return st
}

// Run ships until ctx is done, then returns nil after every goroutine it
// started (the sender, and the outbox's compactor) has exited. It returns
// ErrClosed if the outbox is closed under it, and an error at once if
// another Shipper is running on the outbox.
func (s *Shipper) Run(ctx context.Context) error {
	if err := s.o.claim(); err != nil {
		return err
	}
	defer s.o.release()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.o.compactLoop(ctx) })
	s.o.pokeCompactor() // what an earlier run left to compact
	err := s.loop(ctx)
	cancel()
	wg.Wait()
	return err
}

// errBatchTooLarge is returned by shipOnce when the centre refused a batch
// of several entries as too large.
var errBatchTooLarge = errors.New("quarantine: batch too large for the centre")

func (s *Shipper) loop(ctx context.Context) error {
	failures := 0
	maxItems, maxBytes := s.opts.MaxBatchItems, s.opts.MaxBatchBytes
	for {
		if ctx.Err() != nil {
			return nil
		}
		batch, err := s.o.nextBatch(maxItems, maxBytes)
		if err != nil {
			return err
		}
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-s.o.done:
				return ErrClosed
			case <-s.o.wake:
			}
			continue
		}
		id := newBatchID()
		start := time.Now()
		ev, err := s.shipOnce(ctx, id, batch)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, ErrClosed) {
			// Counted before OnBatch reports it: whoever the hook
			// tells finds the error in Stats.
			s.failed(err)
		}
		if s.opts.OnBatch != nil {
			ev.Batch, ev.Took, ev.Err = id, time.Since(start), err
			s.opts.OnBatch(ev)
		}
		if errors.Is(err, ErrClosed) {
			return ErrClosed
		}
		if errors.Is(err, errBatchTooLarge) {
			maxItems = max(1, min(maxItems, len(batch))/2)
			maxBytes = max(1, maxBytes/2)
			s.log.Warn("quarantine: centre refused a batch as too large; sending smaller ones", "batch", id, "entries", len(batch), "max_entries", maxItems, "max_bytes", maxBytes)
			continue
		}
		if err == nil {
			failures = 0
			continue
		}
		failures++
		d := s.opts.MinBackoff
		for i := 1; i < failures && d < s.opts.MaxBackoff; i++ {
			d *= 2
		}
		d = min(d, s.opts.MaxBackoff)
		wait := d/2 + mrand.N(d/2+1)
		s.log.Warn("quarantine: shipping failed; entries kept", "batch", id, "entries", len(batch), "attempt", failures, "retry_in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-s.o.done:
			t.Stop()
			return ErrClosed
		case <-t.C:
		}
	}
}

func (s *Shipper) failed(err error) {
	s.mu.Lock()
	s.st.Retries++
	s.st.LastError, s.st.LastErrorAt = err, s.o.opts.Now()
	s.mu.Unlock()
}

func newBatchID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// shipOnce sends one batch and applies the centre's answer. It returns an
// error when some of the batch must be sent again after a backoff.
func (s *Shipper) shipOnce(ctx context.Context, id string, batch []*outboxItem) (ShipEvent, error) {
	var ev ShipEvent
	var buf bytes.Buffer
	bw := NewBatchWriter(&buf)
	var sent []*outboxItem
	var bodies [][]byte
	var gone []*outboxItem // acknowledged without the centre: corrupt here
	var rejected int
	for _, it := range batch {
		body, raw, err := s.o.readBody(it)
		if errors.Is(err, ErrCorrupt) {
			s.log.Error("quarantine: outbox entry corrupt on disk; moved aside, not shipped", "entry", it.e.ID, "batch", id, "err", err)
			if kerr := s.o.keepCorrupt(it, raw, err); kerr != nil {
				return ev, fmt.Errorf("quarantine: keeping corrupt entry %s: %w", it.e.ID, kerr)
			}
			gone = append(gone, it)
			continue
		}
		if err != nil {
			return ev, err
		}
		if err := bw.Add(it.e, body); err != nil {
			// The entry was valid when added; this build's rules differ.
			if kerr := s.reject(id, it, body, "not shippable: "+err.Error()); kerr != nil {
				return ev, kerr
			}
			gone = append(gone, it)
			rejected++
			continue
		}
		sent = append(sent, it)
		bodies = append(bodies, body)
	}
	if len(gone) > 0 {
		if err := s.o.ack(gone, rejected, len(gone)-rejected); err != nil {
			return ev, err
		}
		s.mu.Lock()
		s.st.Rejected += uint64(rejected)
		s.st.Corrupt += uint64(len(gone) - rejected)
		s.mu.Unlock()
	}
	if len(sent) == 0 {
		return ev, nil
	}
	if err := bw.Close(); err != nil {
		return ev, err
	}

	ev.Entries, ev.Bytes = len(sent), buf.Len()
	results, err := s.post(ctx, id, buf.Bytes(), len(sent))
	if errors.Is(err, errBatchTooLarge) && len(sent) == 1 {
		if kerr := s.reject(id, sent[0], bodies[0], err.Error()); kerr != nil {
			return ev, kerr
		}
		if err := s.o.ack(sent, 1, 0); err != nil {
			return ev, err
		}
		ev.Rejected = 1
		s.mu.Lock()
		s.st.Rejected++
		s.mu.Unlock()
		return ev, nil
	}
	if err != nil {
		return ev, err
	}
	for i, r := range results {
		if r.ID != "" && r.ID != sent[i].e.ID {
			return ev, fmt.Errorf("quarantine: centre answered for entry %q at position %d, sent %s", r.ID, i, sent[i].e.ID)
		}
	}
	var done []*outboxItem
	var stored, refused, retry int
	var retryErr string
	for i, r := range results {
		it := sent[i]
		switch r.Status {
		case IngestStored:
			done = append(done, it)
			stored++
		case IngestInvalid, IngestConflict:
			if err := s.reject(id, it, bodies[i], fmt.Sprintf("centre answered %s: %s", r.Status, r.Error)); err != nil {
				return ev, err
			}
			done = append(done, it)
			refused++
		default: // IngestRetry, or a verdict this build does not know
			retry++
			if retryErr == "" {
				retryErr = fmt.Sprintf("%s: %s", r.Status, r.Error)
			}
		}
	}
	if err := s.o.ack(done, refused, 0); err != nil {
		return ev, err
	}
	ev.Stored, ev.Rejected, ev.Retry = stored, refused, retry
	now := s.o.opts.Now()
	s.mu.Lock()
	s.st.Batches++
	s.st.Shipped += uint64(stored)
	s.st.Rejected += uint64(refused)
	if stored+refused > 0 {
		s.st.LastShipped = now
	}
	if retry == 0 {
		s.st.LastError = nil
	}
	s.mu.Unlock()
	s.log.Debug("quarantine: batch shipped", "batch", id, "entries", len(sent), "bytes", buf.Len(), "stored", stored, "refused", refused, "retry", retry)
	if retry > 0 {
		return ev, fmt.Errorf("quarantine: centre did not store %d of %d entries: %s", retry, len(sent), retryErr)
	}
	return ev, nil
}

// reject moves an entry the centre refused into rejected/ and says so
// loudly.
func (s *Shipper) reject(batch string, it *outboxItem, body []byte, reason string) error {
	err := s.o.keepRejected(it, body, reason)
	s.log.Error("quarantine: entry refused by the centre; kept in the outbox's rejected folder",
		"entry", it.e.ID, "batch", batch, "reason", reason, "copy_err", err)
	if err != nil {
		return fmt.Errorf("quarantine: keeping rejected entry %s: %w", it.e.ID, err)
	}
	return nil
}

// post sends an encoded batch of n entries and returns the centre's
// per-entry results.
func (s *Shipper) post(ctx context.Context, id string, batch []byte, n int) ([]IngestResult, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(batch))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", BatchContentType)
	req.Header.Set(batchHeader, id)
	req.Header.Set("User-Agent", "resilmail-quarantine-shipper")
	if s.auth != "" {
		req.Header.Set("Authorization", s.auth)
	}
	resp, err := s.opts.HTTPClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, int64(n)*8<<10+1<<20))
	if err != nil {
		return nil, fmt.Errorf("quarantine: reading the centre's answer: %w", err)
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusServiceUnavailable:
		var ir IngestResponse
		if jerr := json.Unmarshal(data, &ir); jerr != nil || len(ir.Results) != n {
			if resp.StatusCode == http.StatusOK {
				return nil, fmt.Errorf("quarantine: centre answered 200 without %d results (%v)", n, jerr)
			}
			break // a 503 from something else than the centre
		}
		return ir.Results, nil
	case http.StatusRequestEntityTooLarge:
		return nil, fmt.Errorf("%w: %s", errBatchTooLarge, snippet(data))
	case http.StatusUnauthorized, http.StatusForbidden:
		return nil, fmt.Errorf("quarantine: centre refused our credentials (%s): check the shared secret or client certificate", resp.Status)
	}
	return nil, fmt.Errorf("quarantine: centre answered %s: %s", resp.Status, snippet(data))
}

// snippet returns the start of an error body, printable, for a log line.
func snippet(b []byte) string {
	if len(b) > 200 {
		b = b[:200]
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, strings.TrimSpace(string(b)))
}
