package queue

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/resilmail/resilmail"
)

// msgHeap orders scheduled messages by their next attempt.
type msgHeap []*message

func (h msgHeap) Len() int           { return len(h) }
func (h msgHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h msgHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *msgHeap) Push(x any) {
	m := x.(*message)
	m.heapIdx = len(*h)
	*h = append(*h, m)
}
func (h *msgHeap) Pop() any {
	old := *h
	m := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	m.heapIdx = -1
	return m
}

// scheduleLocked puts m on the schedule at m.next if it has something to
// deliver and nothing stops it.
func (q *Queue) scheduleLocked(m *message) {
	// A held message stays on the schedule, at its next delay warning or
	// its expiry (heldDueLocked), not at an attempt.
	deliverable := !m.removed && !m.inRound && !m.notifing && !m.rec.Corrupt && m.synced == nil && m.doom == "" &&
		(m.hasPending() || m.owesNotice() || m.hasMaybe())
	switch {
	case deliverable && m.heapIdx >= 0:
		heap.Fix(&q.sched, m.heapIdx)
	case deliverable:
		heap.Push(&q.sched, m)
	case m.heapIdx >= 0:
		heap.Remove(&q.sched, m.heapIdx)
	}
}

// owesNotice reports whether a failure notice or a "relayed" success
// notice is yet to be sent.
func (m *message) owesNotice() bool {
	for _, r := range m.rec.Rcpts {
		if (r.State == Failed || r.Relayed) && !r.Notified {
			return true
		}
	}
	return false
}

// hasMaybe reports whether a recipient is held as maybe-delivered
// (MaybeHold): the message then waits for an operator, its delay warnings
// and its expiry.
func (m *message) hasMaybe() bool {
	for _, r := range m.rec.Rcpts {
		if r.State == MaybeDelivered {
			return true
		}
	}
	return false
}

func (m *message) hasPending() bool {
	for _, r := range m.rec.Rcpts {
		if r.State == Pending {
			return true
		}
	}
	return false
}

// dest is the delivery state of one destination: concurrency and the
// slow-down after failures that every message for it obeys.
type dest struct {
	key      string
	limits   destLimits
	active   int
	window   int // current concurrency limit; 1 after a failure, doubling
	failures int // consecutive destination failures
	paused   time.Time
	waiting  []*job
	// nextStart is the earliest start of the next attempt under the
	// destination's rate; zero without a rate.
	nextStart time.Time
}

// destLimits are the limits in force for one destination.
type destLimits struct {
	conc     int
	rcpts    int
	interval time.Duration // between attempt starts; zero: no rate
}

// limitsFor returns the limits of destination key: the Options', with its
// PerDestination override.
func (q *Queue) limitsFor(key string) destLimits {
	l := destLimits{conc: q.opts.MaxPerDestination, rcpts: q.opts.MaxRcptsPerTransaction}
	if o, ok := q.opts.PerDestination[key]; ok {
		if o.MaxConcurrency > 0 {
			l.conc = o.MaxConcurrency
		}
		if o.MaxRcptsPerTransaction > 0 {
			l.rcpts = o.MaxRcptsPerTransaction
		}
		if o.Rate > 0 {
			l.interval = max(time.Duration(float64(time.Second)/o.Rate), time.Microsecond)
		}
	}
	return l
}

// rateBlocked reports whether d's rate keeps an attempt from starting now.
func (d *dest) rateBlocked(now time.Time) bool {
	return d.limits.interval > 0 && now.Before(d.nextStart)
}

// round is one delivery attempt of one message: a job per destination.
type round struct {
	m         *message
	pending   int // jobs not finished
	attempted bool
	next      time.Time // retry time for temporary failures
	deferTo   time.Time // earliest time for jobs deferred by a paused destination
}

type job struct {
	r     *round
	num   uint32
	rcpts []int
	d     *dest
	// relayed holds the recipients (lower case) the Deliverer handed to a
	// next hop that does not offer DSN (resilmail.ReportRelayed); set
	// before finishJob.
	relayed map[string]bool
}

// Run delivers queued messages until ctx is cancelled or the queue is
// closed. It owns every goroutine it starts and returns after they exit, nil
// on cancellation. Deliveries in flight see ctx cancelled.
func (q *Queue) Run(ctx context.Context) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return ErrClosed
	}
	if q.running {
		q.mu.Unlock()
		return ErrRunning
	}
	q.running = true
	ctx, cancel := context.WithCancel(ctx)
	q.stop = cancel
	q.runDone = make(chan struct{})
	q.mu.Unlock()
	defer func() {
		cancel()
		q.wg.Wait()
		q.mu.Lock()
		q.running = false
		close(q.runDone)
		q.mu.Unlock()
	}()

	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		q.compactor(ctx)
	}()
	select {
	case q.compactCh <- struct{}{}:
	default:
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		q.mu.Lock()
		wait := q.dispatchLocked(ctx)
		q.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-q.wake:
		case <-timer.C:
		}
	}
}

// dispatchLocked starts the rounds that are due and returns how long to
// sleep before the next one.
func (q *Queue) dispatchLocked(ctx context.Context) time.Duration {
	now := q.opts.Now()
	if q.draining || ctx.Err() != nil {
		return time.Hour // Shutdown: nothing new starts
	}
	rated := q.releaseRatedLocked(ctx, now)
	for q.sched.Len() > 0 && q.active < q.opts.MaxDeliveries && q.wal.Err() == nil {
		m := q.sched[0]
		if m.next.After(now) {
			return min(m.next.Sub(now), rated)
		}
		heap.Pop(&q.sched)
		if m.rec.Held {
			q.heldDueLocked(m, now)
			continue
		}
		q.startRoundLocked(ctx, m, now)
	}
	if q.sched.Len() > 0 && q.active < q.opts.MaxDeliveries && q.wal.Err() == nil {
		return min(max(q.sched[0].next.Sub(now), 0), rated)
	}
	return min(time.Hour, rated)
}

// releaseRatedLocked starts the attempts that waited for their
// destination's rate and are due, and returns how long until the next one
// is (an hour if none waits).
func (q *Queue) releaseRatedLocked(ctx context.Context, now time.Time) time.Duration {
	wait := time.Hour
	for d := range q.rated {
		for len(d.waiting) > 0 && (now.Before(d.paused) || d.active < d.window && !d.rateBlocked(now)) {
			next := d.waiting[0]
			d.waiting = d.waiting[1:]
			q.offerLocked(ctx, next, now)
		}
		if len(d.waiting) == 0 {
			delete(q.rated, d)
			q.forgetDestLocked(d)
			continue
		}
		if d.rateBlocked(now) {
			wait = min(wait, d.nextStart.Sub(now))
		}
	}
	return wait
}

func (q *Queue) startRoundLocked(ctx context.Context, m *message, now time.Time) {
	m.inRound = true
	r := &round{m: m}
	groups := map[string][]int{}
	var keys []string
	for i, rc := range m.rec.Rcpts {
		if rc.State != Pending {
			continue
		}
		k := q.opts.Destination(m.rec.Env.To[i].Addr)
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], i)
	}
	// Each destination's recipients go in transactions of at most its
	// recipient limit.
	var jobs []*job
	for _, k := range keys {
		d := q.destLocked(k)
		rcpts := groups[k]
		for len(rcpts) > 0 {
			n := min(len(rcpts), d.limits.rcpts)
			jobs = append(jobs, &job{r: r, rcpts: rcpts[:n:n], d: d})
			rcpts = rcpts[n:]
		}
	}
	r.pending = len(jobs)
	for _, j := range jobs {
		q.offerLocked(ctx, j, now)
	}
	if r.pending == 0 {
		q.finishRoundLocked(r)
	}
}

func (q *Queue) destLocked(key string) *dest {
	d := q.dests[key]
	if d == nil {
		l := q.limitsFor(key)
		d = &dest{key: key, limits: l, window: l.conc}
		q.dests[key] = d
	}
	return d
}

// forgetDestLocked drops the state of a destination that has nothing in
// flight, nothing waiting and no failures to remember; its rate is kept
// until its next start is past.
func (q *Queue) forgetDestLocked(d *dest) {
	if len(d.waiting) == 0 && d.active == 0 && d.failures == 0 && !d.rateBlocked(q.opts.Now()) && q.dests[d.key] == d {
		delete(q.dests, d.key)
	}
}

// offerLocked starts j, parks it until its destination has a free slot, or
// defers it while the destination is slowed down.
func (q *Queue) offerLocked(ctx context.Context, j *job, now time.Time) {
	d := j.d
	switch {
	case now.Before(d.paused):
		q.deferJobLocked(j, d.paused)
	case d.active >= d.window:
		d.waiting = append(d.waiting, j)
	case d.rateBlocked(now):
		d.waiting = append(d.waiting, j)
		q.rated[d] = struct{}{} // the dispatcher starts it in its turn
	default:
		if d.limits.interval > 0 {
			if d.nextStart.Before(now) {
				d.nextStart = now
			}
			d.nextStart = d.nextStart.Add(d.limits.interval)
		}
		q.startJobLocked(ctx, j, now)
	}
}

// deferJobLocked ends j without an attempt: it is not counted as one.
func (q *Queue) deferJobLocked(j *job, until time.Time) {
	r := j.r
	if r.deferTo.IsZero() || until.Before(r.deferTo) {
		r.deferTo = until
	}
	q.counters.throttled++
	r.pending--
	if r.pending == 0 {
		q.finishRoundLocked(r)
	}
}

// startJobLocked commits the attempt (so that a crash during it still backs
// off and is known to have happened) and runs it.
func (q *Queue) startJobLocked(ctx context.Context, j *job, now time.Time) {
	r, m := j.r, j.r.m
	u := &updRec{ID: m.id()}
	if !r.attempted {
		r.attempted = true
		u.Attempts = m.rec.Attempts + 1
		r.next = now.Add(q.opts.Retry.jittered(u.Attempts, q.rnd))
	} else {
		u.Attempts = m.rec.Attempts
	}
	u.Next = r.next.UnixNano()
	j.num = m.rec.JobSeq + 1
	u.Start = &jobRec{Job: j.num, Rcpts: j.rcpts, Dest: j.d.key, At: now.UnixNano()}
	if err := q.appendLocked(m, u); err != nil {
		q.log.Error("queue: cannot record attempt; not delivering", "msg_id", m.id(), "err", err)
		q.deferJobLocked(j, now.Add(time.Minute))
		return
	}
	j.d.active++
	q.active++
	q.wg.Add(1)
	go q.runJob(ctx, j)
}

func (q *Queue) runJob(ctx context.Context, j *job) {
	defer q.wg.Done()
	m := j.r.m
	env := m.rec.Env // immutable after enqueue
	env.To = make([]resilmail.Recipient, len(j.rcpts))
	for k, i := range j.rcpts {
		env.To[k] = m.rec.Env.To[i]
	}
	if ctx.Err() != nil {
		// Shut down before it started: not an attempt at all.
		q.finishJob(ctx, j, env, errNotStarted)
		return
	}
	// The attempt's start record becomes durable while the Deliverer
	// opens its transaction (MAIL, RCPT, DATA): the body, and with it the
	// message, leaves only once it is (startGate). Waiting for it first
	// cost a group commit in every attempt's time. It rides an intake's
	// commit when the queue is busy (commitDelay).
	st := &startSync{done: make(chan struct{})}
	go func() {
		st.err = q.wal.SyncWithin(commitDelay)
		close(st.done)
	}()
	var err error
	if body, done, berr := q.deliveryBody(m); berr != nil {
		var ce *resilmail.CorruptError
		if errors.As(berr, &ce) {
			q.quarantineCorrupt(m, berr)
		}
		err = &resilmail.DeliveryError{Command: "queue", Message: "cannot read message from the queue", Err: berr}
	} else {
		start := time.Now()
		var mu sync.Mutex
		relayed := map[string]bool{}
		dctx := resilmail.WithRelayedReport(ctx, func(rcpt string) {
			mu.Lock()
			relayed[strings.ToLower(rcpt)] = true
			mu.Unlock()
		})
		err = q.d.Deliver(dctx, env, io.NewSectionReader(&startGate{r: body, s: st}, 0, body.Size()))
		done()
		mu.Lock()
		j.relayed = relayed
		mu.Unlock()
		q.log.Debug("queue: delivery attempt", "msg_id", m.id(), "dest", j.d.key, "rcpts", len(env.To), "took", time.Since(start), "err", err)
	}
	if <-st.done; st.err != nil {
		// The attempt is not durable: nothing of the message left (the
		// gate failed every read), and what the next hop said of the
		// envelope is not kept either.
		err = &resilmail.DeliveryError{Command: "queue", Message: "queue storage failed", Err: st.err}
	}
	q.finishJob(ctx, j, env, err)
}

// startSync is the group commit that makes an attempt's start durable.
type startSync struct {
	done chan struct{} // closed when err is set
	err  error
}

// startGate is a message body whose reads wait until the attempt's start
// is durable, and fail if it cannot be: a crash while the Deliverer
// speaks the envelope finds no attempt and loses nothing (no byte of the
// message left), one after finds the attempt, as when the queue waited
// for the commit before it called the Deliverer.
type startGate struct {
	r io.ReaderAt
	s *startSync
}

func (g *startGate) ReadAt(p []byte, off int64) (int, error) {
	if <-g.s.done; g.s.err != nil {
		return 0, fmt.Errorf("queue: the attempt could not be recorded: %w", g.s.err)
	}
	return g.r.ReadAt(p, off)
}

// deliveryBody returns m's body for one delivery, verified, as an
// *io.SectionReader (a Deliverer that tries several hosts reads it again
// from its start through ReadAt), and a func to call when done. A body up
// to spoolThreshold is read into memory; a larger one is read in place
// from the log.
func (q *Queue) deliveryBody(m *message) (*io.SectionReader, func(), error) {
	q.mu.Lock()
	size := m.size
	q.mu.Unlock()
	if size > spoolThreshold {
		body, rec, err := q.openBody(m)
		if err != nil {
			return nil, nil, err
		}
		return body, func() { rec.Close() }, nil
	}
	b, err := q.body(m)
	if err != nil {
		return nil, nil, err
	}
	return io.NewSectionReader(bytes.NewReader(b), 0, int64(len(b))), func() {}, nil
}

// errNotStarted ends a job that never reached the Deliverer: its recipients
// stay as they were.
var errNotStarted = errors.New("queue: delivery not started")

// finishJob records the outcome of one attempt, per recipient.
func (q *Queue) finishJob(ctx context.Context, j *job, env resilmail.Envelope, err error) {
	now := q.opts.Now()
	m := j.r.m
	addrs := env.Recipients()
	out := resilmail.Outcomes(addrs, err)
	var events []Event

	q.mu.Lock()
	u := &updRec{ID: m.id(), End: &j.num}
	h := &attemptRec{At: now.UnixNano(), Dest: j.d.key}
	anyAccepted, anyPermanent := false, false
	for k := range j.rcpts {
		if de := out[addrs[k]]; de == nil || de.MaybeDelivered {
			anyAccepted = true
		}
	}
	var rest []int // refused with 452 after others were taken: sent again at once
	for k, i := range j.rcpts {
		if err == errNotStarted {
			break
		}
		rc := m.rec.Rcpts[i]
		de := out[addrs[k]]
		ev := Event{ID: m.id(), Rcpt: addrs[k], Time: now}
		switch {
		case de == nil:
			rc = rcptRec{State: Delivered, Host: j.d.key, Reply: "delivered"}
			if j.relayed[strings.ToLower(addrs[k])] && q.wantsSuccessNotice(m, i) {
				rc.Relayed, rc.Code, rc.Reply = true, "2.0.0", "relayed: the next hop does not offer DSN"
			}
			anyAccepted = true
			q.counters.delivered++
			ev.Kind = EventDelivered
		case de.MaybeDelivered:
			rc = rcptRec{State: MaybeDelivered, Reply: "maybe delivered (the reply to the end of data was lost): " + de.Reply(), Host: de.Host, Code: "4.4.2"}
			switch q.opts.MaybeDelivered {
			case MaybeRetry:
				rc.State = Pending
			case MaybeAssumeDelivered:
				rc.State = Delivered
			}
			anyAccepted = true
			q.counters.maybeDelivered++
			ev.Kind, ev.Host, ev.Err = EventMaybeDelivered, de.Host, de
			q.log.Warn("queue: maybe delivered: reply lost after the message was sent",
				"msg_id", m.id(), "rcpt", addrs[k], "host", de.Host, "err", de, "policy", q.opts.MaybeDelivered.String())
		case de.Permanent:
			rc = rcptRec{State: Failed, Reply: de.Reply(), Host: de.Host, Code: statusCode(de), Perm: true}
			rc.Notified = !q.wantsFailureNotice(m, i)
			anyPermanent = true
			q.counters.failed++
			ev.Kind, ev.Host, ev.Err = EventFailed, de.Host, de
			q.log.Info("queue: delivery failed permanently", "msg_id", m.id(), "rcpt", addrs[k], "host", de.Host, "err", de)
		case tooManyRcpts(de) && anyAccepted && ctx.Err() == nil:
			rc = rcptRec{State: Pending, Reply: de.Reply() + " (sent again at once in another transaction)", Host: de.Host, Code: statusCode(de)}
			rest = append(rest, i)
			q.counters.split++
			ev.Kind, ev.Host, ev.Err = EventDeferred, de.Host, de
		default:
			rc = rcptRec{State: Pending, Reply: de.Reply(), Host: de.Host, Code: statusCode(de)}
			q.counters.deferred++
			ev.Kind, ev.Host, ev.Err = EventDeferred, de.Host, de
			q.log.Info("queue: delivery deferred", "msg_id", m.id(), "rcpt", addrs[k], "host", de.Host,
				"attempt", m.rec.Attempts, "retry_in", j.r.next.Sub(now).Round(time.Second), "err", de)
		}
		u.Rcpts = append(u.Rcpts, rcptChange{I: i, rcptRec: rc})
		h.Results = append(h.Results, i)
		h.States = append(h.States, uint8(rc.State))
		h.Replies = append(h.Replies, rc.Reply)
		events = append(events, ev)
	}
	if err == errNotStarted {
		q.counters.notStarted++
	} else {
		u.History = h
	}
	if aerr := q.appendLocked(m, u); aerr != nil {
		q.log.Error("queue: cannot record delivery result", "msg_id", m.id(), "err", aerr)
	}

	// Feedback to the destination: a refused connection, a 421 or a
	// timeout before anything was accepted slows it down for every message.
	d := j.d
	d.active--
	q.active--
	if err != errNotStarted && !anyAccepted && !anyPermanent && ctx.Err() == nil && destinationFailure(err) {
		d.failures++
		d.window = 1
		first := min(10*time.Second, q.opts.Retry.MinBackoff)
		pause := min(first<<min(d.failures-1, 10), 5*time.Minute, q.opts.Retry.MaxBackoff)
		d.paused = now.Add(pause)
		q.log.Warn("queue: destination slowed down", "dest", d.key, "failures", d.failures, "pause", pause, "err", err)
	} else if anyAccepted || anyPermanent {
		d.failures = 0
		d.paused = time.Time{}
		d.window = min(d.window*2, d.limits.conc)
	}
	if len(rest) > 0 && !q.draining {
		// The next hop took part of the transaction and asked for the
		// rest in another (RFC 5321 section 4.5.3.1.10): it goes now,
		// first in the destination's line.
		j.r.pending++
		d.waiting = append([]*job{{r: j.r, rcpts: rest, d: d}}, d.waiting...)
	}
	for len(d.waiting) > 0 && (d.active < d.window && !d.rateBlocked(now) || now.Before(d.paused)) {
		next := d.waiting[0]
		d.waiting = d.waiting[1:]
		q.offerLocked(ctx, next, now)
	}
	if len(d.waiting) > 0 && d.rateBlocked(now) {
		q.rated[d] = struct{}{}
	}
	q.forgetDestLocked(d)
	j.r.pending--
	if j.r.pending == 0 {
		q.finishRoundLocked(j.r)
	}
	if q.active == 0 && q.idle != nil {
		close(q.idle)
		q.idle = nil
	}
	q.mu.Unlock()
	// The results ride the next group commit (commitDelay): a crash from
	// then on does not send these recipients again.
	if serr := q.wal.SyncWithin(commitDelay); serr != nil {
		q.log.Error("queue: cannot make delivery results durable", "msg_id", m.id(), "err", serr)
	}
	q.poke()
	for _, ev := range events {
		q.event(ev)
	}
}

// tooManyRcpts reports whether de is a next hop's 452 to RCPT: too many
// recipients for this transaction (or, as some servers say it, not enough
// storage for more of them).
func tooManyRcpts(de *resilmail.DeliveryError) bool {
	return de.Code == 452 && !de.Permanent && !de.MaybeDelivered && de.Command == "RCPT TO"
}

// destinationFailure reports whether err says the destination itself is
// unwell (no connection, 421, a timeout) rather than one recipient: an error
// that applies to every recipient and is neither permanent, nor
// maybe-delivered, nor the queue's own.
func destinationFailure(err error) bool {
	_, general := resilmail.SplitErrors(err)
	if general == nil {
		return false
	}
	var de *resilmail.DeliveryError
	if !errors.As(general, &de) {
		return true // a dial or I/O failure
	}
	return !de.Permanent && !de.MaybeDelivered && de.Command != "queue"
}

// statusCode returns the RFC 3463 code for a DSN.
func statusCode(de *resilmail.DeliveryError) string {
	if de.EnhancedCode != "" {
		return de.EnhancedCode
	}
	switch {
	case de.Permanent:
		return "5.0.0"
	case de.Command == "connect":
		return "4.4.1"
	default:
		return "4.0.0"
	}
}

// finishRoundLocked ends a round: expiry, the next attempt, notifications,
// removal.
func (q *Queue) finishRoundLocked(r *round) {
	m := r.m
	m.inRound = false
	switch {
	case r.attempted && !r.deferTo.IsZero():
		m.next = r.next
		if r.deferTo.Before(m.next) {
			m.next = r.deferTo
		}
	case r.attempted:
		m.next = r.next
	case !r.deferTo.IsZero():
		m.next = r.deferTo
	}
	now := q.opts.Now()
	if m.doom == "" && (m.hasPending() || m.hasMaybe()) && now.Sub(time.Unix(0, m.rec.Created)) >= q.opts.Retry.Lifetime {
		q.expireLocked(m, now)
	}
	if m.rec.Held || !m.hasPending() && m.hasMaybe() {
		m.next = q.waitDeadlineLocked(m)
	}
	q.afterRoundLocked(m)
}

// heldDueLocked is the scheduler's visit to a message an operator held:
// nothing is sent, but the sender gets the delay warnings and the message
// expires with its lifetime like any other (a hold is a pause, never a
// way to keep mail for ever unseen). Its next visit is the next warning
// or the expiry.
func (q *Queue) heldDueLocked(m *message, now time.Time) {
	if m.doom == "" && (m.hasPending() || m.hasMaybe()) && now.Sub(time.Unix(0, m.rec.Created)) >= q.opts.Retry.Lifetime {
		q.expireLocked(m, now)
	}
	m.next = q.waitDeadlineLocked(m)
	q.afterRoundLocked(m)
}

// waitDeadlineLocked returns when a message that waits for an operator
// (held, or with recipients held as maybe-delivered and nothing else)
// needs the queue again: its next delay warning, if one will be sent, or
// its expiry.
func (q *Queue) waitDeadlineLocked(m *message) time.Time {
	created := time.Unix(0, m.rec.Created)
	t := created.Add(q.opts.Retry.Lifetime)
	if w := q.opts.Retry.DelayWarnings; m.rec.Warned < len(w) && q.wantsDelayWarning(m) {
		if wt := created.Add(w[m.rec.Warned]); wt.Before(t) {
			t = wt
		}
	}
	return t
}

// expireLocked fails every pending recipient of a message that has been
// queued for longer than its lifetime.
func (q *Queue) expireLocked(m *message, now time.Time) {
	u := &updRec{ID: m.id()}
	for i, rc := range m.rec.Rcpts {
		if rc.State != Pending && rc.State != MaybeDelivered {
			continue
		}
		reply := "message expired after " + q.opts.Retry.Lifetime.String() + " in the queue"
		if m.rec.Held {
			reply = "message expired after " + q.opts.Retry.Lifetime.String() + " in the queue, held by the postmaster and never released"
		}
		if rc.State == MaybeDelivered {
			reply = "message expired after " + q.opts.Retry.Lifetime.String() + " in the queue, held because it may already have been delivered to this recipient and no operator released or deleted it; it may or may not have arrived"
		}
		if rc.Reply != "" {
			reply += "; last error: " + rc.Reply
		}
		code := "4.4.7"
		nrc := rcptRec{State: Failed, Reply: reply, Host: rc.Host, Code: code}
		nrc.Notified = !q.wantsFailureNotice(m, i)
		u.Rcpts = append(u.Rcpts, rcptChange{I: i, rcptRec: nrc})
		q.counters.expired++
		q.log.Warn("queue: message expired", "msg_id", m.id(), "rcpt", m.rec.Env.To[i].Addr, "err", rc.Reply)
	}
	if err := q.appendLocked(m, u); err != nil {
		q.log.Error("queue: recording expiry", "msg_id", m.id(), "err", err)
	}
}

// afterRoundLocked sends the notifications a message needs, then removes it
// if it is done or schedules it again. Notifications are enqueued without
// the lock, in a goroutine the queue waits for.
func (q *Queue) afterRoundLocked(m *message) {
	if m.removed || m.notifing {
		return
	}
	now := q.opts.Now()
	if q.needsNotifyLocked(m, now) {
		m.notifing = true
		q.wg.Add(1)
		go func() {
			defer q.wg.Done()
			q.notify(m)
			q.mu.Lock()
			m.notifing = false
			q.finalizeLocked(m)
			q.mu.Unlock()
			q.poke()
		}()
		return
	}
	q.finalizeLocked(m)
}

// finalizeLocked removes a finished or doomed message, or schedules it.
func (q *Queue) finalizeLocked(m *message) {
	if m.removed || m.inRound || m.notifing {
		return
	}
	switch {
	case m.doom != "" && m.doom != "bounced":
		q.removeLocked(m, m.doom)
	case q.doneLocked(m):
		q.removeLocked(m, "done")
	default:
		q.scheduleLocked(m)
	}
}

// doneLocked reports whether nothing remains to do for m.
func (q *Queue) doneLocked(m *message) bool {
	if len(m.rec.Jobs) > 0 || m.rec.Corrupt {
		return false
	}
	for _, rc := range m.rec.Rcpts {
		switch {
		case rc.State == Pending, rc.State == MaybeDelivered:
			return false
		case (rc.State == Failed || rc.Relayed) && !rc.Notified:
			return false
		}
	}
	return true
}

func (q *Queue) removeLocked(m *message, why string) {
	now := q.opts.Now()
	u := &updRec{ID: m.id(), Removed: why, At: now.UnixNano(), Sum: cut(m.rec.Digest).hex()}
	if err := q.appendLocked(m, u); err != nil {
		q.log.Error("queue: recording removal", "msg_id", m.id(), "err", err)
		return
	}
	q.log.Debug("queue: message removed", "msg_id", m.id(), "why", why)
	ev := Event{Kind: EventRemoved, ID: m.id(), Time: now}
	go q.event(ev)
}

// wantsFailureNotice reports whether the sender of m asked to hear about a
// failure of recipient i.
func (q *Queue) wantsFailureNotice(m *message, i int) bool {
	return m.rec.Env.From != "" && m.rec.Env.To[i].Notify.Has(resilmail.NotifyFailure)
}

// needsNotifyLocked reports whether m owes its sender a failure notice, a
// "relayed" notice or a delay warning now.
func (q *Queue) needsNotifyLocked(m *message, now time.Time) bool {
	return m.owesNotice() || q.delayWarningDueLocked(m, now)
}

// wantsSuccessNotice reports whether recipient i of m asked to be told of
// its delivery (NOTIFY=SUCCESS).
func (q *Queue) wantsSuccessNotice(m *message, i int) bool {
	return m.rec.Env.From != "" && m.rec.Env.To[i].Notify.Has(resilmail.NotifySuccess)
}

func (q *Queue) delayWarningDueLocked(m *message, now time.Time) bool {
	warnings := q.opts.Retry.DelayWarnings
	if m.rec.Warned >= len(warnings) || !q.wantsDelayWarning(m) {
		return false
	}
	return now.Sub(time.Unix(0, m.rec.Created)) >= warnings[m.rec.Warned]
}

// wantsDelayWarning reports whether m's sender would be told of a delay
// now: it has a sender, a recipient that asked for delay notices, and
// recipients still waiting.
func (q *Queue) wantsDelayWarning(m *message) bool {
	return m.rec.Env.From != "" && (m.hasPending() || m.hasMaybe()) &&
		slices.ContainsFunc(m.rec.Env.To, func(r resilmail.Recipient) bool { return r.Notify.Has(resilmail.NotifyDelay) })
}

// commitDelay bounds how long an attempt's start and its results wait for
// another caller's group commit (an intake's, which must be durable before
// its 250) before the queue commits them itself. A busy queue commits
// intakes more often than that, so deliveries add no fsyncs of their own:
// measured under smtp-source, 8% more messages relayed per second for 5%
// less CPU. An idle queue sends a body and reports a result this much
// later.
const commitDelay = 2 * time.Millisecond
