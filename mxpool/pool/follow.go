package pool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/bearer"
	"github.com/resilmail/resilmail/internal/durable"
)

// FollowerStatus describes a [Follower] at one instant.
type FollowerStatus struct {
	// Publisher is the publisher's URL.
	Publisher string
	// Version and Digest identify the policy in use; zero when none.
	Version uint64
	Digest  resilmail.Digest
	// AppliedAt is when that policy was applied, or stored if it was
	// loaded from disk at start.
	AppliedAt time.Time
	// LastHeard is the issue time of the newest seal that verified for
	// the version in use (capped at the present), the last instant the
	// publisher is known to have vouched for it. After a restart it
	// starts as the stored copy's seal.
	LastHeard time.Time
	// Stale is true when LastHeard is older than StaleAfter (or unknown):
	// Check then defers what it would reject for being unknown.
	Stale bool
	// LastError is the error of the last failed exchange or store, cleared
	// by the next success; LastErrorAt is its time.
	LastError   error
	LastErrorAt time.Time
	// Applied counts the versions applied, Deltas those applied from a
	// delta, Errors the failed exchanges.
	Applied, Deltas, Errors uint64
}

// Follower keeps a node on its pool's policy: it long-polls the
// [Publisher], verifies and applies each new version atomically, stores it
// in its folder, and answers recipient checks from the version it runs.
//
// Guarantees: a Follower only ever runs a policy whose seal verifies with
// its Trust and whose digest matches, with a version above the one before;
// anything else is refused with a logged error and the last good policy
// stays in use. Each version applied is put in use at once, in one atomic
// step, then stored durably (snapshot.json, the full snapshot, fsynced)
// before the follower asks for the next one; it is loaded at the next
// start, so a node restarted without network answers at once. A crash
// between use and store restarts the node on the previous version, which
// it then brings up to date; a failed store is logged and reported in
// Status, and the version stays in use.
// Adding an MX to a pool is starting a Follower with the publisher's URL,
// the pool's secret and the publisher's public key.
type Follower struct {
	base   *url.URL
	token  string
	dir    string
	opts   FollowerOptions
	log    *slog.Logger
	client *http.Client
	owned  *http.Transport // the client's transport when the Follower made it
	unlock func() error

	cur       atomic.Pointer[Snapshot]
	lastHeard atomic.Int64  // unix nanoseconds; 0: never
	polls     atomic.Uint64 // exchanges finished, for tests

	mu        sync.Mutex
	appliedAt time.Time
	lastErr   error
	lastErrAt time.Time
	applied   uint64
	deltas    uint64
	errs      uint64
	running   bool
	closed    bool
	cancel    context.CancelFunc
	runDone   chan struct{}
}

// OpenFollower prepares a follower of the publisher at publisherURL (the
// URL its Publisher is served at, http or https), authenticating with the
// pool's secret (which derives the bearer token; the policy itself is
// checked with opts.Trust, which is required), keeping its copy in the
// folder dir (created if needed and locked against a second Follower). It loads the stored copy, if any, so
// that Check answers from it at once; call Run to follow the publisher.
//
// A stored copy of an unknown format is refused with an error wrapping
// ErrPolicyFormat (a newer build wrote it). A stored copy that does not
// verify (tampered, truncated, another secret) is renamed aside to
// snapshot.json.bad-<time>, logged and reported in Status; the follower
// then starts without a policy and fetches the full snapshot.
func OpenFollower(publisherURL string, secret []byte, dir string, opts *FollowerOptions) (*Follower, error) {
	if len(secret) < polMinSecret {
		return nil, fmt.Errorf("pool: secret shorter than %d bytes", polMinSecret)
	}
	u, err := url.Parse(publisherURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("pool: publisher URL %q is not an http or https URL", publisherURL)
	}
	f := &Follower{base: u, token: polToken(secret), dir: dir}
	if opts != nil {
		f.opts = *opts
	}
	o := &f.opts
	if f.log = o.Logger; f.log == nil {
		f.log = slog.Default()
	}
	if o.PollWait <= 0 {
		o.PollWait = 30 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 15 * time.Second
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 2 * time.Minute
	}
	if o.StaleAfter <= o.PollWait {
		return nil, fmt.Errorf("pool: StaleAfter %v must exceed PollWait %v", o.StaleAfter, o.PollWait)
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 250 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.MaxSnapshotBytes <= 0 {
		o.MaxSnapshotBytes = 64 << 20
	}
	if err := o.Trust.check(); err != nil {
		return nil, err
	}
	o.Trust.Pool = o.Trust.pool()
	if o.Now == nil {
		o.Now = time.Now
	}
	if f.client = o.HTTPClient; f.client == nil {
		f.owned = http.DefaultTransport.(*http.Transport).Clone()
		f.client = &http.Client{Transport: f.owned}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pool: follower folder: %w", err)
	}
	unlock, err := durable.Lock(dir)
	if err != nil {
		return nil, err
	}
	f.unlock = unlock
	if err := f.folLoad(); err != nil {
		unlock()
		return nil, err
	}
	return f, nil
}

func (f *Follower) folLoad() error {
	path := filepath.Join(f.dir, polSnapshotFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	snap, err := DecodeSnapshot(data, f.opts.Trust)
	if errors.Is(err, ErrPolicyFormat) {
		f.log.Error("pool: stored policy of an unknown format", "path", path, "err", err)
		return fmt.Errorf("%s: %w", path, err)
	}
	if err != nil {
		aside := fmt.Sprintf("%s.bad-%d", path, f.opts.Now().UnixNano())
		if rerr := os.Rename(path, aside); rerr != nil {
			return fmt.Errorf("pool: stored policy refused (%v) and not renamed aside: %w", err, rerr)
		}
		if serr := durable.SyncDir(f.dir); serr != nil {
			return serr
		}
		f.log.Error("pool: stored policy refused, renamed aside; waiting for the publisher", "path", path, "aside", aside, "err", err)
		f.folFailed(fmt.Errorf("stored policy refused: %w", err))
		return nil
	}
	f.cur.Store(snap)
	if st, err := os.Stat(path); err == nil {
		f.appliedAt = st.ModTime()
	}
	f.folHeard(snap.Issued)
	f.log.Info("pool: stored policy loaded", "version", snap.Version, "digest", snap.Digest.String())
	return nil
}

// Snapshot returns the snapshot in use, or nil when there is none yet. It
// must not be modified.
func (f *Follower) Snapshot() *Snapshot { return f.cur.Load() }

// Check answers for rcpt with the policy in use; see [Policy.Check]. When
// the follower is stale (it has not heard from the publisher for longer
// than StaleAfter, or not at all since it started without a recent stored
// copy), an unknown recipient gets 450 4.1.1 and an unknown domain 450
// 4.7.1 instead of 550: the publisher may have added them since, and a
// stale secondary must never bounce good mail. Known recipients are still
// accepted and bad syntax still rejected. Without any policy, every
// recipient gets 451 4.3.0.
func (f *Follower) Check(rcpt string) Verdict {
	s := f.cur.Load()
	if s == nil {
		return polCheck(nil, rcpt, 0, true)
	}
	return polCheck(s.Policy, rcpt, s.Version, f.folStale(f.opts.Now()))
}

var _ Checker = (*Follower)(nil)

func (f *Follower) folStale(now time.Time) bool {
	h := f.lastHeard.Load()
	return h == 0 || now.Sub(time.Unix(0, h)) > f.opts.StaleAfter
}

// Status returns the follower's current state.
func (f *Follower) Status() FollowerStatus {
	st := FollowerStatus{Publisher: f.base.Redacted()}
	if s := f.cur.Load(); s != nil {
		st.Version, st.Digest = s.Version, s.Digest
	}
	if h := f.lastHeard.Load(); h != 0 {
		st.LastHeard = time.Unix(0, h)
	}
	st.Stale = f.folStale(f.opts.Now())
	f.mu.Lock()
	defer f.mu.Unlock()
	st.AppliedAt, st.LastError, st.LastErrorAt = f.appliedAt, f.lastErr, f.lastErrAt
	st.Applied, st.Deltas, st.Errors = f.applied, f.deltas, f.errs
	return st
}

// Run follows the publisher until ctx is cancelled or the Follower is
// closed, then returns nil. It long-polls for newer versions, applies and
// stores each one, and after a failed exchange waits a jittered, doubling
// delay between MinBackoff and MaxBackoff. It starts no goroutine that
// outlives it. Only one Run may be active at a time.
func (f *Follower) Run(ctx context.Context) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return ErrFollowerClosed
	}
	if f.running {
		f.mu.Unlock()
		return errors.New("pool: follower already running")
	}
	ctx, cancel := context.WithCancel(ctx)
	f.running, f.cancel, f.runDone = true, cancel, make(chan struct{})
	f.mu.Unlock()
	defer func() {
		cancel()
		if f.owned != nil {
			f.owned.CloseIdleConnections()
		}
		f.mu.Lock()
		f.running = false
		close(f.runDone)
		f.mu.Unlock()
	}()

	full := false // the next request asks for the full snapshot
	failures := 0
	for ctx.Err() == nil {
		start := time.Now()
		status, err := f.folPoll(ctx, full)
		f.polls.Add(1)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			f.folFailed(err)
			f.log.Warn("pool: policy exchange failed", "publisher", f.base.Redacted(), "err", err)
			if !full && (errors.Is(err, ErrPolicyDelta) || errors.Is(err, ErrPolicyDigest)) {
				// The delta did not produce the publisher's policy:
				// fetch the whole snapshot right away.
				full = true
				continue
			}
			failures++
			d := f.opts.MinBackoff
			for i := 1; i < failures && d < f.opts.MaxBackoff; i++ {
				d *= 2
			}
			d = min(d, f.opts.MaxBackoff)
			if !f.folSleep(ctx, d/2+rand.N(d/2+1)) {
				return nil
			}
			continue
		}
		failures, full = 0, false
		if status == http.StatusNotModified {
			// A publisher that answers at once instead of waiting
			// must not make this loop spin.
			if el := time.Since(start); el < f.opts.MinBackoff && !f.folSleep(ctx, f.opts.MinBackoff-el) {
				return nil
			}
		}
	}
	return nil
}

func (f *Follower) folSleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (f *Follower) folFailed(err error) {
	f.mu.Lock()
	f.lastErr, f.lastErrAt = err, f.opts.Now()
	f.errs++
	f.mu.Unlock()
}

// folPoll makes one request and applies its answer. It returns the HTTP
// status of a successful exchange.
func (f *Follower) folPoll(ctx context.Context, full bool) (int, error) {
	cur := f.cur.Load()
	u := *f.base
	q := u.Query()
	q.Set("wait", f.opts.PollWait.String())
	if cur != nil && !full {
		q.Set("since", strconv.FormatUint(cur.Version, 10))
		q.Set("have", cur.Digest.String())
	} else {
		q.Set("since", "0")
	}
	if f.opts.Name != "" {
		q.Set("node", f.opts.Name)
	}
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, f.opts.PollWait+f.opts.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", bearer.Header(f.token))
	req.Header.Set("User-Agent", "resilmail-mxpool-follower")
	resp, err := f.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, f.opts.MaxSnapshotBytes+1))
	if err != nil {
		return 0, fmt.Errorf("pool: reading the policy: %w", err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotModified:
		if cur == nil {
			return resp.StatusCode, nil // the publisher has no policy yet
		}
		return resp.StatusCode, f.folSealed(resp.Header.Get(sealHeader))
	case http.StatusConflict:
		return 0, fmt.Errorf("%w: %s", ErrPolicyConflict, bytes.TrimSpace(body[:min(len(body), 512)]))
	default:
		return 0, fmt.Errorf("pool: publisher answered %s", resp.Status)
	}
	if int64(len(body)) > f.opts.MaxSnapshotBytes {
		return 0, fmt.Errorf("%w: response larger than %d bytes", ErrPolicyMalformed, f.opts.MaxSnapshotBytes)
	}
	if err := f.folApply(cur, body); err != nil {
		return 0, err
	}
	// The header's seal may be newer than the body's.
	if h := resp.Header.Get(sealHeader); h != "" {
		f.folSealed(h)
	}
	return resp.StatusCode, nil
}

// folSealed checks the seal h (a sealHeader) against the version in use and
// counts it as heard.
func (f *Follower) folSealed(h string) error {
	seal, err := parseSealHeader(h)
	if err != nil {
		return err
	}
	if err := f.opts.Trust.verify(seal); err != nil {
		return err
	}
	cur := f.cur.Load()
	if cur == nil || seal.Version != cur.Version || seal.Digest != cur.Digest {
		return fmt.Errorf("%w: the publisher vouches for version %d (%s), this follower runs another", ErrPolicyConflict, seal.Version, seal.Digest)
	}
	if err := f.folFresh(seal.Issued); err != nil {
		return err
	}
	if seal.Issued.After(cur.Issued) {
		f.cur.CompareAndSwap(cur, cur.resealed(*seal))
	}
	return nil
}

// folFresh refuses a seal issued further in the future than StaleAfter (the
// publisher's clock is wrong) and otherwise counts it as heard.
func (f *Follower) folFresh(issued time.Time) error {
	if now := f.opts.Now(); issued.Sub(now) > f.opts.StaleAfter {
		return fmt.Errorf("pool: the publisher's seal is dated %v ahead of this node's clock", issued.Sub(now).Round(time.Second))
	}
	f.folHeard(issued)
	return nil
}

// folApply verifies and applies a snapshot or delta received while cur was
// in use.
func (f *Follower) folApply(cur *Snapshot, body []byte) error {
	w, err := polDecodeWire(body)
	if err != nil {
		return err
	}
	var next *Snapshot
	delta := false
	switch w.Kind {
	case polKindSnapshot:
		next, err = polSnapshotFromWire(w, &f.opts.Trust)
		if err != nil {
			return err
		}
		if cur != nil {
			switch {
			case next.Version < cur.Version:
				return fmt.Errorf("%w: received version %d, running %d", ErrPolicyVersion, next.Version, cur.Version)
			case next.Version == cur.Version && next.Digest != cur.Digest:
				return fmt.Errorf("%w: version %d received with digest %s, running it with %s", ErrPolicyConflict, next.Version, next.Digest, cur.Digest)
			case next.Version == cur.Version:
				if err := f.folFresh(next.Issued); err != nil {
					return err
				}
				if next.Issued.After(cur.Issued) {
					f.cur.CompareAndSwap(cur, cur.resealed(next.Seal))
				}
				return nil
			}
		}
	case polKindDelta:
		d, err := polDeltaFromWire(w)
		if err != nil {
			return err
		}
		if next, err = polApplyDelta(cur, d, f.opts.Trust); err != nil {
			return err
		}
		body, delta = nil, true
	default:
		return fmt.Errorf("%w: kind %q", ErrPolicyMalformed, w.Kind)
	}
	// Use it at once, then store it: the store's fsync is not on the
	// propagation path, and a crash in between only restarts the node on
	// the previous version, which it then brings up to date.
	if next.Issued.Sub(f.opts.Now()) > f.opts.StaleAfter {
		return fmt.Errorf("pool: the publisher's seal is dated %v ahead of this node's clock", next.Issued.Sub(f.opts.Now()).Round(time.Second))
	}
	now := f.opts.Now()
	f.cur.Store(next)
	f.folHeard(next.Issued)
	f.mu.Lock()
	f.appliedAt = now
	f.applied++
	if delta {
		f.deltas++
	}
	f.lastErr = nil
	f.mu.Unlock()
	if f.opts.OnApply != nil {
		f.opts.OnApply(next.Version)
	}
	var from uint64
	if cur != nil {
		from = cur.Version
	}
	f.log.Info("pool: policy applied", "version", next.Version, "from", from, "delta", delta, "digest", next.Digest.String())
	if body == nil {
		body, err = next.Encode()
	}
	if err == nil {
		err = durable.WriteFile(durable.OS, filepath.Join(f.dir, polSnapshotFile), body, 0o600)
	}
	if err != nil {
		f.log.Error("pool: policy in use but not stored", "version", next.Version, "err", err)
		f.folFailed(fmt.Errorf("store policy version %d: %w", next.Version, err))
	}
	return nil
}

// folHeard records that the publisher vouched for the version in use at
// issued (capped at now); lastHeard only moves forward.
func (f *Follower) folHeard(issued time.Time) {
	t := min(issued.UnixNano(), f.opts.Now().UnixNano())
	for {
		h := f.lastHeard.Load()
		if t <= h || f.lastHeard.CompareAndSwap(h, t) {
			break
		}
	}
	f.mu.Lock()
	f.lastErr = nil
	f.mu.Unlock()
}

// Close stops Run, if it is running, waits for it to return, and releases
// the folder. Check keeps answering from the last policy. Close is
// idempotent.
func (f *Follower) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	running, done := f.running, f.runDone
	if running {
		f.cancel()
	}
	f.mu.Unlock()
	if running {
		<-done
	}
	if f.owned != nil {
		f.owned.CloseIdleConnections()
	}
	return f.unlock()
}
