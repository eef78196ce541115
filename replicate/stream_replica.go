package replicate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/bearer"
	"github.com/resilmail/resilmail/internal/wal"
	"github.com/resilmail/resilmail/replicate/internal/wire"
)

// A BodyChecker is a Target that can say whether it already holds a body,
// so that the replica fetches only the bodies it lacks.
// [replicate/store.Store] implements it.
type BodyChecker interface {
	HasBody(d resilmail.Digest) bool
}

// A Replica follows a primary's stream: it keeps every change and the
// bodies the target lacks durably in its inbox (a log in its folder),
// acknowledges them, then applies them to its Target, in order per user
// and different users in parallel. Create it with NewReplica, run it with
// Run; Close stops it.
//
// Nothing acknowledged is lost: a change is acknowledged only once it and
// its body are synced in the inbox, and stays there until applied; after a
// crash, Run replays the inbox and resumes the stream after the highest
// position it holds.
type Replica struct {
	t      Target
	base   string
	dir    string
	opts   ReplicaOptions
	log    *slog.Logger
	client *http.Client
	token  string

	closeOnce sync.Once
	stop      context.CancelFunc // set by Run
	running   sync.WaitGroup

	idle      atomic.Int64 // how long a request may go without a byte (a time.Duration)
	mu        sync.Mutex
	gate      chan struct{} // closed and replaced when a lane applies or holds
	stopped   bool
	inbox     *wal.Log
	bodies    map[resilmail.Digest]wal.Pos
	confirmed map[string]uint64
	lanes     map[string]*lane
	laneCtx   context.Context // set by Run for the lanes' goroutines
	laneWG    *sync.WaitGroup
	unapplied map[uint64]uint64 // seq → lowest inbox segment it needs
	// missing are the appends received without their body (the primary
	// could not serve it): acknowledged as received, but named in every
	// acknowledgement so that the primary does not count them as
	// replicated, until they apply. ackNow asks for an acknowledgement.
	missing    map[uint64]struct{}
	ackNow     chan struct{}
	received   uint64
	primaryPos uint64
	primaryAt  time.Time
	// receivedEpoch is the epoch of the change at received, if known.
	receivedEpoch resilmail.Epoch
	// promoted is set by Promote: Run connects no more; promotion is
	// its result.
	promoted  bool
	promotion PromoteResult
	// endSession ends the current session (Promote); nil between them.
	endSession  context.CancelCauseFunc
	sessionDone chan struct{}
	orphanMu    sync.Mutex // serialises the orphan list
	stats       ReplicaStats
	inboxFile   func(string, int, os.FileMode) (wal.File, error) // tests inject faults
}

// NewReplica returns a Replica that applies to t the stream of the primary
// whose Handler is served at primaryURL, keeping its inbox in dir. It does
// no I/O: Run opens the inbox.
func NewReplica(t Target, primaryURL, dir string, opts *ReplicaOptions) (*Replica, error) {
	var o ReplicaOptions
	if opts != nil {
		o = *opts
	}
	if err := checkName("replica name", o.Name, resilmail.MaxUserLen); err != nil {
		return nil, fmt.Errorf("replicate: %w", err)
	}
	if len(o.Secret) == 0 && o.HTTPClient == nil {
		return nil, errors.New("replicate: replica needs a Secret or an HTTPClient")
	}
	u, err := url.Parse(primaryURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("replicate: primary URL %q is not an HTTP URL", primaryURL)
	}
	if dir == "" {
		return nil, errors.New("replicate: replica needs a folder for its inbox")
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{}
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.InboxSegment <= 0 {
		o.InboxSegment = DefaultInboxSize
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Secret = slices.Clone(o.Secret)
	return &Replica{t: t, base: strings.TrimSuffix(primaryURL, "/"), dir: dir, opts: o, log: o.Logger,
		client: o.HTTPClient, token: StreamToken(o.Secret), gate: make(chan struct{}),
		lanes: make(map[string]*lane), unapplied: make(map[uint64]uint64),
		missing: make(map[uint64]struct{}), ackNow: make(chan struct{}, 1)}, nil
}

// Stats returns the replica's counters.
func (r *Replica) Stats() ReplicaStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stats
	st.Received = r.received
	st.PrimaryPosition, st.PrimaryTime = r.primaryPos, r.primaryAt
	st.Applied = r.appliedLocked()
	st.Promoted, st.PromotedEpoch = r.promoted, r.promotion.Epoch
	st.Missing = len(r.missing)
	for _, l := range r.lanes {
		for _, d := range l.delayed {
			if !d.confirmed {
				st.Held++
			}
		}
		if l.parked != nil {
			st.Parked++
		}
	}
	return st
}

func (r *Replica) appliedLocked() uint64 {
	a := r.received
	for seq := range r.unapplied {
		a = min(a, seq-1)
	}
	return a
}

func (r *Replica) noteError(err error, counter *uint64) {
	r.mu.Lock()
	r.stats.LastError, r.stats.LastErrorTime = err.Error(), time.Now()
	if counter != nil {
		*counter++
	}
	r.mu.Unlock()
}

// Close stops Run and waits for it to return; a Run that starts after it
// returns nil at once. It is idempotent.
func (r *Replica) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.stopped = true
		stop := r.stop
		r.mu.Unlock()
		if stop != nil {
			stop()
		}
	})
	r.running.Wait()
	return nil
}

// Run opens the inbox, applies what it holds, and follows the stream until
// ctx is done or Close is called; it reconnects with a capped backoff after
// every error. It returns nil on cancellation or Close (at once if Close
// came first), after every goroutine it started has ended and the inbox
// is closed, or an error if the inbox cannot be opened.
func (r *Replica) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.mu.Lock()
	if r.stopped {
		// Closed before it started (a stop right after the start): there
		// is nothing to stop, as for a cancellation.
		r.mu.Unlock()
		return nil
	}
	if r.stop != nil {
		r.mu.Unlock()
		return errors.New("replicate: replica already running")
	}
	r.stop = cancel
	r.running.Add(1)
	r.mu.Unlock()
	defer r.running.Done()

	if err := r.loadPromotion(ctx); err != nil {
		return err
	}
	if err := r.openInbox(true); err != nil {
		return err
	}
	var lanes sync.WaitGroup
	defer func() {
		cancel()
		lanes.Wait()
		r.mu.Lock()
		r.laneCtx, r.laneWG = nil, nil
		if r.inbox != nil {
			r.inbox.Close()
			r.inbox = nil
		}
		r.mu.Unlock()
	}()
	r.startLanes(ctx, &lanes)

	if list, err := readOrphanLog(r.dir); err == nil {
		r.mu.Lock()
		r.stats.Orphans = len(list)
		r.mu.Unlock()
	}
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		if r.isPromoted() {
			// A promoted replica only applies what is confirmed after
			// the promotion; it follows no one.
			<-ctx.Done()
			break
		}
		if r.inboxFailed() {
			// A failed write (a full disk) leaves the inbox unusable: open
			// it again, which also tells whether the fault has cleared.
			if err := r.openInbox(false); err != nil {
				r.noteError(err, nil)
				r.log.Error("replicate: reopening the inbox", "replica", r.opts.Name, "err", err, "backoff", backoff)
				select {
				case <-ctx.Done():
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, r.opts.MaxBackoff)
				continue
			}
		}
		progressed, err := r.session(ctx)
		if ctx.Err() != nil {
			break
		}
		if progressed {
			backoff = 50 * time.Millisecond
		}
		if err != nil {
			counter := (*uint64)(nil)
			if errors.Is(err, ErrFenced) {
				counter = &r.stats.Fenced
			}
			r.noteError(err, counter)
			r.mu.Lock()
			r.stats.Reconnects++
			r.mu.Unlock()
			r.log.Warn("replicate: stream failed, reconnecting", "replica", r.opts.Name, "err", err, "backoff", backoff)
			var de *divergedError
			switch {
			case errors.As(err, &de):
				if err := r.rejoin(ctx, de.d); err != nil && ctx.Err() == nil {
					r.noteError(err, nil)
					r.log.Error("replicate: aligning with the primary's history failed, retrying", "replica", r.opts.Name, "err", err)
				}
			case errors.Is(err, ErrTooFarBehind) || errors.Is(err, ErrPosition):
				r.fullSync(ctx)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, r.opts.MaxBackoff)
	}
	return nil
}

func (r *Replica) inboxFailed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inbox == nil || r.inbox.Err() != nil
}

// openInbox opens (first) or reopens the inbox and queues the changes it
// holds that the target has not applied.
func (r *Replica) openInbox(first bool) error {
	r.mu.Lock()
	if r.inbox != nil {
		r.inbox.Close()
		r.inbox = nil
	}
	r.mu.Unlock()
	l, st, err := openInbox(r.dir, r.opts.InboxSegment, r.log, r.inboxFile)
	if err != nil {
		return fmt.Errorf("replicate: opening the inbox: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inbox, r.bodies, r.confirmed = l, st.bodies, st.confirmed
	if st.received >= r.received {
		r.received, r.receivedEpoch = st.received, st.receivedEpoch
	}
	for _, ic := range st.changes {
		if _, ok := st.delayed[ic.c.Seq]; ok || r.promoted || ic.c.Seq <= r.t.UpstreamPosition(ic.c.User) {
			// A promotion applied every change the inbox holds but the
			// delayed ones, and the target's upstream positions start
			// again at the promotion.
			continue
		}
		r.enqueueLocked(ic.c, ic.seg)
		if ic.c.Kind == resilmail.ChangeAppend && !r.haveBodyLocked(ic.c.Digest) {
			r.missing[ic.c.Seq] = struct{}{}
		}
	}
	r.restoreDelayedLocked(st)
	if first {
		r.log.Info("replicate: inbox opened", "replica", r.opts.Name, "received", r.received,
			"pending", len(r.unapplied))
	}
	return nil
}

func (r *Replica) fullSync(ctx context.Context) {
	sync := r.opts.FullSync
	if sync == nil {
		sync = r.defaultFullSync
	}
	r.log.Warn("replicate: the stream cannot resume; comparing with the primary in full", "replica", r.opts.Name)
	after, err := sync(ctx)
	if err != nil {
		r.noteError(fmt.Errorf("full sync: %w", err), nil)
		r.log.Error("replicate: full sync failed", "replica", r.opts.Name, "err", err)
		return
	}
	r.mu.Lock()
	inbox := r.inbox
	r.mu.Unlock()
	if inbox == nil {
		return
	}
	if _, err := inbox.AppendSync(uvarintRecord(recResync, after, "")); err != nil {
		r.noteError(fmt.Errorf("inbox: %w", err), &r.stats.InboxErrors)
		return
	}
	r.mu.Lock()
	r.received = after
	// Changes queued beyond the position (of another history) are
	// dropped, and the lanes take the stream's changes after it.
	for _, l := range r.lanes {
		if l.last > after {
			n := len(l.queue)
			for n > 0 && l.queue[n-1].Seq > after {
				n--
			}
			for _, c := range l.queue[n:] {
				delete(r.unapplied, c.Seq)
				delete(r.missing, c.Seq)
			}
			l.queue, l.last = l.queue[:n], after
		}
	}
	r.openGateLocked()
	r.mu.Unlock()
	r.log.Info("replicate: full sync done", "replica", r.opts.Name, "resume_after", after)
}

func (r *Replica) request(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, r.base+path, body)
	if err != nil {
		return nil, err
	}
	if len(r.opts.Secret) > 0 {
		req.Header.Set("Authorization", bearer.Header(r.token))
	}
	switch {
	case method == "PUT":
		req.Header.Set("Content-Type", "application/octet-stream")
	case body != nil:
		req.Header.Set("Content-Type", "application/json")
	}
	return r.client.Do(req)
}

// statusError turns an error response into an error wrapping the
// package's errors where one applies.
func statusError(what string, resp *http.Response) error {
	var e errorResponse
	json.NewDecoder(io.LimitReader(resp.Body, 8192)).Decode(&e)
	msg := fmt.Sprintf("replicate: %s: primary answered %s (%s: %s)", what, resp.Status, e.Code, e.Error)
	switch {
	case resp.StatusCode == http.StatusGone:
		return fmt.Errorf("%w: %s", ErrTooFarBehind, msg)
	case resp.StatusCode == http.StatusConflict:
		return fmt.Errorf("%w: %s", ErrPosition, msg)
	case resp.StatusCode == http.StatusNotFound && e.Code == "not_found":
		// Only the primary's own answer: a 404 from anything in between
		// (a proxy, a wrong URL) must not make the replica think a
		// message was expunged.
		return fmt.Errorf("%w: %s", ErrNotFound, msg)
	}
	return errors.New(msg)
}

// session follows one stream until it fails. progressed reports whether it
// received anything.
//
// A goroutine decodes frames while the session keeps what arrived in the
// inbox, so that the batches that arrived during one sync are kept
// together with the next (one sync, one acknowledgement, however the
// transport cuts the stream); another acknowledges, so that a round trip
// to the primary does not hold up the next sync.
func (r *Replica) session(parent context.Context) (progressed bool, err error) {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	r.mu.Lock()
	if r.promoted {
		r.mu.Unlock()
		return false, errPromoting
	}
	inbox := r.inbox
	r.endSession, r.sessionDone = cancel, make(chan struct{})
	done := r.sessionDone
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.endSession, r.sessionDone = nil, nil
		r.mu.Unlock()
		close(done)
	}()
	if inbox == nil {
		return false, errors.New("replicate: inbox not open")
	}
	claim, kind := r.claim()
	after := claim.Seq
	q := "/changes?after=" + strconv.FormatUint(after, 10) + "&replica=" + url.QueryEscape(r.opts.Name) + "&v=" + strconv.Itoa(wire.CurrentVersion)
	if kind != claimNone {
		q += "&history=" + claim.History.String() + "&epoch=" + strconv.FormatUint(uint64(claim.Epoch), 10)
	}
	resp, err := r.request(ctx, "GET", q, nil)
	if err != nil {
		return false, fmt.Errorf("replicate: connecting to the primary: %w", err)
	}
	var helpers sync.WaitGroup
	defer func() {
		cancel(nil)
		resp.Body.Close()
		helpers.Wait()
	}()
	if resp.StatusCode != http.StatusOK {
		return false, streamStatusError(resp)
	}
	if err := r.settleHistory(ctx, resp, claim, kind); err != nil {
		return false, err
	}
	r.setConnected(true)
	defer r.setConnected(false)
	silence := r.streamTimeout(resp)
	r.idle.Store(int64(silence))

	frames := make(chan wire.Frame, 256)
	// fr is the reader goroutine's; the session reads only its version,
	// set before the first frame is sent.
	fr := wire.NewReader(resp.Body, &wire.ReaderOptions{MaxFrame: r.opts.MaxFrame})
	helpers.Go(func() {
		defer close(frames)
		watchdog := time.AfterFunc(silence, func() {
			cancel(fmt.Errorf("replicate: no frame from the primary for %v; dropping the connection", silence))
		})
		defer watchdog.Stop()
		for {
			f, err := fr.Next()
			if err != nil {
				if err == io.EOF {
					err = errors.New("replicate: the primary ended the stream")
				}
				cancel(err)
				return
			}
			watchdog.Reset(silence)
			select {
			case frames <- f:
			case <-ctx.Done():
				return
			}
		}
	})
	acks := make(chan struct{}, 1)
	helpers.Go(func() {
		for {
			select {
			case <-acks:
			case <-r.ackNow:
			case <-ctx.Done():
				return
			}
			if err := r.ack(ctx); err != nil {
				cancel(err)
				return
			}
		}
	})

	var (
		batch    []inboxChange
		queued   []resilmail.Change // received, not yet in the inbox
		inline   = make(map[resilmail.Digest][]byte)
		inlined  int   // bytes in inline
		bytes    int64 // stream bytes not yet counted
		received = after
	)
	for {
		var f wire.Frame
		select {
		case f = <-frames:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			if parent.Err() != nil {
				return progressed, parent.Err()
			}
			return progressed, context.Cause(ctx)
		}
		progressed = true
		bytes += int64(f.Size)
		switch f.Type {
		case wire.FrameError:
			return progressed, fmt.Errorf("replicate: the primary reports: %s", f.Error)
		case wire.FrameHeartbeat:
			if mine := r.t.Epoch(); f.Heartbeat.Epoch < mine {
				// Tell the old primary, so that it demotes itself.
				r.ack(ctx)
				return progressed, fmt.Errorf("%w: the primary has epoch %d, this replica has seen %d", ErrFenced, f.Heartbeat.Epoch, mine)
			}
			r.mu.Lock()
			r.primaryPos, r.primaryAt = f.Heartbeat.Position, f.Heartbeat.Time
			r.mu.Unlock()
		case wire.FrameBody:
			if resilmail.DigestOf(f.Body) != f.Digest {
				// Left for the fetch, which refuses it again if the
				// primary's copy is bad.
				err := fmt.Errorf("replicate: body in the stream: %w",
					&resilmail.CorruptError{Want: f.Digest, Got: resilmail.DigestOf(f.Body), Where: r.base + "/changes"})
				r.noteError(err, &r.stats.CorruptBodies)
				r.log.Error("replicate: refused a body that does not match its digest", "replica", r.opts.Name, "digest", f.Digest)
				break
			}
			if _, ok := inline[f.Digest]; !ok {
				inline[f.Digest] = f.Body
				inlined += len(f.Body)
			}
		case wire.FrameChange:
			c := f.Change
			if c.Seq <= received {
				continue // already have it
			}
			if c.Epoch < r.t.Epoch() {
				return progressed, fmt.Errorf("%w: change %d has epoch %d, this replica has seen %d", ErrFenced, c.Seq, c.Epoch, r.t.Epoch())
			}
			queued = append(queued, c)
			received = c.Seq
		}
		// Keep what arrived once nothing more is waiting, at the end of a
		// batch (a version 3 stream ends each with a heartbeat; in version
		// 2 the end is unknown), or at a bound.
		batchEnd := len(frames) == 0 && (f.Type == wire.FrameHeartbeat || fr.Version() < 3)
		if !batchEnd && len(queued) < 1024 && inlined < 16<<20 {
			continue
		}
		// The bodies first, those the stream did not carry fetched in
		// parallel, then the changes in order: a change never precedes
		// its body in the inbox.
		unavailable, err := r.fetchBodies(ctx, inbox, queued, inline)
		if err != nil {
			return progressed, err
		}
		if len(unavailable) > 0 {
			// Named as missing before the lanes can apply (and clear) them.
			r.mu.Lock()
			for _, c := range queued {
				if c.Kind == resilmail.ChangeAppend && unavailable[c.Digest] {
					r.missing[c.Seq] = struct{}{}
				}
			}
			r.mu.Unlock()
		}
		clear(inline)
		inlined = 0
		for _, c := range queued {
			b, err := c.MarshalBinary()
			if err != nil {
				return progressed, err
			}
			pos, err := inbox.Append(append([]byte{recChange}, b...))
			if err != nil {
				r.noteError(err, &r.stats.InboxErrors)
				return progressed, fmt.Errorf("replicate: inbox: %w", err)
			}
			batch = append(batch, inboxChange{c, pos.Seg})
		}
		queued = queued[:0]
		if err := r.commit(inbox, batch, received); err != nil {
			return progressed, err
		}
		batch = batch[:0]
		select {
		case acks <- struct{}{}:
		default: // an acknowledgement is pending; it will carry this position
		}
		r.mu.Lock()
		r.stats.Bytes += uint64(bytes)
		r.mu.Unlock()
		bytes = 0
	}
}

// watch returns a context for one request that is cancelled when no byte
// of the answer arrives for as long as a stream may stay silent (a
// connection gone half-open, a length garbled on the way), and a wrapper
// for the answer's body that counts its bytes as signs of life.
func (r *Replica) watch(ctx context.Context) (context.Context, func(io.ReadCloser) io.ReadCloser, func()) {
	ctx, cancel := context.WithCancel(ctx)
	idle := time.Duration(r.idle.Load())
	if idle <= 0 {
		idle = 15 * time.Second
	}
	t := time.AfterFunc(idle, cancel)
	wrap := func(rc io.ReadCloser) io.ReadCloser { return &lively{rc, t, idle} }
	return ctx, wrap, func() { t.Stop(); cancel() }
}

// lively is a body whose reads keep its request's watchdog from firing.
type lively struct {
	io.ReadCloser
	t    *time.Timer
	idle time.Duration
}

func (l *lively) Read(p []byte) (int, error) {
	n, err := l.ReadCloser.Read(p)
	if n > 0 {
		l.t.Reset(l.idle)
	}
	return n, err
}

// streamTimeout is how long a stream may stay silent (see
// ReplicaOptions.StreamTimeout).
func (r *Replica) streamTimeout(resp *http.Response) time.Duration {
	if r.opts.StreamTimeout > 0 {
		return r.opts.StreamTimeout
	}
	if ms, err := strconv.ParseInt(resp.Header.Get(heartbeatHeader), 10, 64); err == nil && ms > 0 && ms <= 3_600_000 {
		return max(5*time.Duration(ms)*time.Millisecond, 100*time.Millisecond)
	}
	return 15 * time.Second
}

func (r *Replica) setConnected(on bool) {
	r.mu.Lock()
	r.stats.Connected = on
	r.mu.Unlock()
}

// commit makes a batch durable and queues it.
func (r *Replica) commit(inbox *wal.Log, batch []inboxChange, received uint64) error {
	if len(batch) > 0 {
		if err := inbox.Sync(); err != nil {
			r.noteError(err, &r.stats.InboxErrors)
			return fmt.Errorf("replicate: inbox: %w", err)
		}
		r.mu.Lock()
		if received >= r.received {
			r.received, r.receivedEpoch = received, batch[len(batch)-1].c.Epoch
		}
		r.stats.Changes += uint64(len(batch))
		for _, ic := range batch {
			r.enqueueLocked(ic.c, ic.seg)
		}
		r.mu.Unlock()
	}
	r.compact(inbox)
	return nil
}

// ack tells the primary the position durably received.
func (r *Replica) ack(ctx context.Context) error {
	r.mu.Lock()
	a := ackRequest{Replica: r.opts.Name, Position: r.received}
	for seq := range r.missing {
		if seq <= a.Position {
			a.Missing = append(a.Missing, seq)
		}
	}
	r.mu.Unlock()
	slices.Sort(a.Missing)
	if len(a.Missing) > maxAckMissing {
		// Too many to name: acknowledge only up to the first one not
		// named, so that nothing without its body counts as replicated.
		a.Position = a.Missing[maxAckMissing] - 1
		a.Missing = a.Missing[:maxAckMissing]
	}
	a.Epoch = r.t.Epoch()
	b, _ := json.Marshal(a)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ctx, body, stop := r.watch(ctx)
	defer stop()
	resp, err := r.request(ctx, "POST", "/ack", bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("replicate: acknowledging: %w", err)
	}
	defer resp.Body.Close()
	resp.Body = body(resp.Body)
	if resp.StatusCode != http.StatusNoContent {
		return statusError("acknowledging", resp)
	}
	return nil
}

// fetchBodies keeps in the inbox the bodies the appends of changes name:
// those in inline (verified bodies the stream carried) at once, the others
// read back from the target if it holds them (pinFromTarget) or fetched,
// up to eight at once. It returns the digests the primary could not serve
// (their changes are kept without them, and not counted as replicated).
func (r *Replica) fetchBodies(ctx context.Context, inbox *wal.Log, changes []resilmail.Change, inline map[resilmail.Digest][]byte) (map[resilmail.Digest]bool, error) {
	seen := make(map[resilmail.Digest]bool)
	var (
		mu          sync.Mutex
		unavailable map[resilmail.Digest]bool
	)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, c := range changes {
		if c.Kind != resilmail.ChangeAppend || seen[c.Digest] {
			continue
		}
		seen[c.Digest] = true
		if b, ok := inline[c.Digest]; ok {
			if err := r.keepBody(inbox, c.Digest, b, false); err != nil {
				g.Wait()
				return nil, err
			}
			continue
		}
		g.Go(func() error {
			missing, err := r.fetchBody(ctx, inbox, c.Digest, c.Size)
			if missing {
				mu.Lock()
				if unavailable == nil {
					unavailable = make(map[resilmail.Digest]bool)
				}
				unavailable[c.Digest] = true
				mu.Unlock()
			}
			return err
		})
	}
	err := g.Wait()
	return unavailable, err
}

// fetchBody keeps in the inbox the body d unless the inbox has it already:
// the target's copy if it holds one (a change must never depend on a copy
// that another user's expunge may remove before it applies), else the
// primary's. A body the primary no longer has is skipped: applying the
// change records the message as expunged. A body the primary cannot serve
// is skipped too, and reported (unavailable): the change is kept without
// it, parked when applied, and not counted as replicated until then.
func (r *Replica) fetchBody(ctx context.Context, inbox *wal.Log, d resilmail.Digest, size int64) (unavailable bool, err error) {
	if r.inInbox(d) {
		return false, nil
	}
	if bc, ok := r.t.(BodyChecker); ok && bc.HasBody(d) {
		pinned, err := r.pinFromTarget(ctx, inbox, d)
		if err != nil || pinned {
			return false, err
		}
		if _, ok := r.t.(BodyReader); !ok {
			return false, nil // cannot be pinned: the target's copy is relied on
		}
	}
	b, err := r.download(ctx, d, size)
	switch {
	case errors.Is(err, ErrNotFound):
		return false, nil
	case errors.Is(err, ErrBodyUnavailable):
		r.log.Warn("replicate: body unavailable at the primary; its change is kept, not counted as replicated, and will wait for it",
			"replica", r.opts.Name, "digest", d, "err", err)
		return true, nil
	case err != nil:
		return false, err
	}
	return false, r.keepBody(inbox, d, b, true)
}

// haveBodyLocked reports whether the inbox or the target holds body d.
func (r *Replica) haveBodyLocked(d resilmail.Digest) bool {
	if _, ok := r.bodies[d]; ok {
		return true
	}
	bc, ok := r.t.(BodyChecker)
	return ok && bc.HasBody(d)
}

// inInbox reports whether the inbox holds body d.
func (r *Replica) inInbox(d resilmail.Digest) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, have := r.bodies[d]
	return have
}

// keepBody appends verified body b of digest d to the inbox unless the
// inbox holds it already; fetched says whether its bytes came outside the
// stream (and count apart).
func (r *Replica) keepBody(inbox *wal.Log, d resilmail.Digest, b []byte, fetched bool) error {
	added, err := r.appendBody(inbox, d, b)
	if err != nil || !added {
		return err
	}
	r.mu.Lock()
	r.stats.Bodies++
	if fetched {
		r.stats.Bytes += uint64(len(b))
	}
	r.mu.Unlock()
	return nil
}

// appendBody appends body b of digest d to the inbox unless the inbox
// holds it already, and reports whether it did.
func (r *Replica) appendBody(inbox *wal.Log, d resilmail.Digest, b []byte) (bool, error) {
	if r.inInbox(d) {
		return false, nil
	}
	rec := make([]byte, 0, 1+len(d)+len(b))
	rec = append(append(append(rec, recBody), d[:]...), b...)
	pos, err := inbox.Append(rec)
	if err != nil {
		r.noteError(err, &r.stats.InboxErrors)
		return false, fmt.Errorf("replicate: inbox: %w", err)
	}
	r.mu.Lock()
	r.bodies[d] = pos
	r.mu.Unlock()
	return true, nil
}

// download fetches body d from the primary and verifies it.
func (r *Replica) download(ctx context.Context, d resilmail.Digest, size int64) ([]byte, error) {
	ctx, body, stop := r.watch(ctx)
	defer stop()
	resp, err := r.request(ctx, "GET", "/body/"+d.String()+"?replica="+url.QueryEscape(r.opts.Name), nil)
	if err != nil {
		return nil, fmt.Errorf("replicate: fetching body %s: %w", d, err)
	}
	defer resp.Body.Close()
	resp.Body = body(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, bodyRefused("fetching body "+d.String(), resp)
	}
	limit := int64(wal.MaxRecord - 64)
	if size >= 0 && size < limit {
		limit = size + 1
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, fmt.Errorf("replicate: fetching body %s: %w", d, err)
	}
	if got := resilmail.DigestOf(b); got != d {
		err := fmt.Errorf("%w: body fetched from the primary: %w", ErrBodyUnavailable,
			&resilmail.CorruptError{Want: d, Got: got, Where: r.base + "/body/" + d.String()})
		r.noteError(err, &r.stats.CorruptBodies)
		r.log.Error("replicate: refused a body that does not match its digest", "replica", r.opts.Name, "digest", d)
		return nil, err
	}
	return b, nil
}

// body is the BodyFunc the lanes apply with: the inbox's copy, or the
// primary's if the inbox has none.
func (r *Replica) body(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error) {
	r.mu.Lock()
	pos, ok := r.bodies[d]
	inbox := r.inbox
	r.mu.Unlock()
	if ok && inbox != nil {
		rec, err := inbox.ReadAt(pos)
		if err == nil && len(rec) >= 1+len(d) && resilmail.DigestOf(rec[1+len(d):]) == d {
			return io.NopCloser(bytes.NewReader(rec[1+len(d):])), nil
		}
		r.log.Warn("replicate: inbox copy of a body unusable, fetching it again", "replica", r.opts.Name, "digest", d, "err", err)
	}
	b, err := r.download(ctx, d, -1)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// compact removes the inbox segments that hold only applied changes and
// the bodies they needed, once the segment being written is full.
func (r *Replica) compact(inbox *wal.Log) {
	segs := inbox.Segments()
	if len(segs) == 0 || len(segs) == 1 && inbox.SegmentSize(segs[0]) < r.opts.InboxSegment/2 {
		return
	}
	r.mu.Lock()
	cut := uint64(math.MaxUint64)
	for _, seg := range r.unapplied {
		cut = min(cut, seg)
	}
	received := r.received
	r.mu.Unlock()
	if cut <= segs[0] {
		return
	}
	// The segment written next remembers the position, whatever is
	// removed.
	if err := inbox.Roll(); err != nil {
		r.noteError(err, &r.stats.InboxErrors)
		return
	}
	r.mu.Lock()
	ep := r.receivedEpoch
	r.mu.Unlock()
	if _, err := inbox.AppendSync(positionRecord(received, ep)); err != nil {
		r.noteError(err, &r.stats.InboxErrors)
		return
	}
	segs = inbox.Segments()
	cut = min(cut, segs[len(segs)-1])
	if err := inbox.RemoveBefore(cut); err != nil {
		r.noteError(err, &r.stats.InboxErrors)
		return
	}
	r.mu.Lock()
	for d, pos := range r.bodies {
		if pos.Seg < cut {
			delete(r.bodies, d)
		}
	}
	r.mu.Unlock()
}
