package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/dsn"
	"github.com/resilmail/resilmail/queue"
)

// sink is a scripted Deliverer that records what it receives.
type sink struct {
	mu     sync.Mutex
	got    map[string][]string // rcpt -> message ids
	bodies map[string]string   // id -> body
	calls  int
	answer func(env resilmail.Envelope, call int) error
	seen   chan resilmail.Envelope
}

func newSink(answer func(env resilmail.Envelope, call int) error) *sink {
	return &sink{got: map[string][]string{}, bodies: map[string]string{}, answer: answer, seen: make(chan resilmail.Envelope, 1000)}
}

func (s *sink) Deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.calls++
	call := s.calls
	s.mu.Unlock()
	var derr error
	if s.answer != nil {
		derr = s.answer(env, call)
	}
	out := resilmail.Outcomes(env.Recipients(), derr)
	s.mu.Lock()
	for r, de := range out {
		if de == nil || de.MaybeDelivered {
			s.got[r] = append(s.got[r], env.ID)
		}
	}
	s.bodies[env.ID] = string(b)
	s.mu.Unlock()
	s.seen <- env
	return derr
}

func (s *sink) delivered(rcpt string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got[rcpt]...)
}

func envelope(id string, rcpts ...string) resilmail.Envelope {
	env := resilmail.Envelope{ID: id, From: "sender@example.net"}
	for _, r := range rcpts {
		env.To = append(env.To, resilmail.Recipient{Addr: r})
	}
	return env
}

func body(s string) io.Reader {
	return strings.NewReader("From: sender@example.net\r\nSubject: " + s + "\r\nMessage-ID: <" + s + "@example.net>\r\n\r\n" + s + "\r\n")
}

func quietOpts() *queue.Options {
	return &queue.Options{Logger: discardLogger(), MinFreeBytes: -1}
}

func open(t *testing.T, dir string, d resilmail.Deliverer, opts *queue.Options) *queue.Queue {
	t.Helper()
	if opts == nil {
		opts = quietOpts()
	}
	q, err := queue.Open(dir, d, opts)
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q
}

func run(t *testing.T, q *queue.Queue) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestEnqueueDeliver(t *testing.T) {
	s := newSink(nil)
	q := open(t, t.TempDir(), s, nil)
	run(t, q)
	id, err := q.Enqueue(context.Background(), envelope("", "a@example.org", "b@example.com"), body("hello"))
	require.NoError(t, err)
	require.NotEmpty(t, id)
	waitFor(t, "delivery", func() bool { return len(s.delivered("a@example.org")) == 1 && len(s.delivered("b@example.com")) == 1 })
	waitFor(t, "removal", func() bool { return len(q.List(queue.Filter{})) == 0 })
	assert.Contains(t, s.bodies[id], "Subject: hello")
	st := q.Stats()
	assert.Equal(t, uint64(1), st.Enqueued)
	assert.Equal(t, uint64(2), st.Delivered)
	assert.Positive(t, st.Fsyncs)
}

func TestRestartKeepsMessages(t *testing.T) {
	dir := t.TempDir()
	q, err := queue.Open(dir, newSink(nil), quietOpts())
	require.NoError(t, err)
	for i := 0; i < 20; i++ {
		_, err := q.Enqueue(context.Background(), envelope(fmt.Sprint("m", i), "a@example.org"), body(fmt.Sprint("msg", i)))
		require.NoError(t, err)
	}
	_, err = queue.Open(dir, newSink(nil), quietOpts())
	require.Error(t, err, "a second Open of the same folder is refused")
	require.NoError(t, q.Close())

	s := newSink(nil)
	q2 := open(t, dir, s, nil)
	assert.Len(t, q2.List(queue.Filter{}), 20)
	run(t, q2)
	waitFor(t, "all delivered", func() bool { return len(s.delivered("a@example.org")) == 20 })
	for i := 0; i < 20; i++ {
		assert.Contains(t, s.bodies[fmt.Sprint("m", i)], fmt.Sprint("msg", i))
	}
}

func TestDuplicateEnqueueIsNoop(t *testing.T) {
	s := newSink(nil)
	dir := t.TempDir()
	q := open(t, dir, s, nil)
	env := envelope("release-42", "a@example.org")
	_, err := q.Enqueue(context.Background(), env, body("one"))
	require.NoError(t, err)
	_, err = q.Enqueue(context.Background(), env, body("one"))
	require.NoError(t, err, "a queued id with the same content is a no-op")
	_, err = q.Enqueue(context.Background(), env, body("two"))
	require.ErrorIs(t, err, queue.ErrConflict, "a queued id with other content is refused, not acknowledged and dropped")
	assert.Len(t, q.List(queue.Filter{}), 1)
	run(t, q)
	waitFor(t, "delivery", func() bool { return len(q.List(queue.Filter{})) == 0 })
	_, err = q.Enqueue(context.Background(), env, body("one"))
	require.NoError(t, err, "a recently delivered id with the same content is a no-op")
	_, err = q.Enqueue(context.Background(), env, body("three"))
	require.ErrorIs(t, err, queue.ErrConflict, "a recently delivered id with other content is refused, not acknowledged and dropped")
	assert.Equal(t, uint64(2), q.Stats().Duplicates)
	require.NoError(t, q.Close())

	// The memory of delivered ids, and of their content, survives a
	// restart.
	q2 := open(t, dir, s, nil)
	run(t, q2)
	_, err = q2.Enqueue(context.Background(), env, body("one"))
	require.NoError(t, err)
	_, err = q2.Enqueue(context.Background(), env, body("four"))
	require.ErrorIs(t, err, queue.ErrConflict)
	assert.Empty(t, q2.List(queue.Filter{}))
	assert.Equal(t, []string{"release-42"}, s.delivered("a@example.org"), "delivered exactly once")
	assert.NotContains(t, s.bodies["release-42"], "three")
}

func TestQueueIsADeliverer(t *testing.T) {
	opts := quietOpts()
	opts.MaxMessageSize = 100
	var d resilmail.Deliverer = open(t, t.TempDir(), newSink(nil), opts)
	q := d.(*queue.Queue)
	ctx := context.Background()
	require.NoError(t, d.Deliver(ctx, envelope("handed-1", "a@example.org"), body("x")))
	require.NoError(t, d.Deliver(ctx, envelope("handed-1", "a@example.org"), body("x")), "a repeated hand-off is a no-op")
	assert.Len(t, q.List(queue.Filter{}), 1)

	err := d.Deliver(ctx, envelope("handed-2", "a@example.org"), strings.NewReader(strings.Repeat("x", 200)))
	var de *resilmail.DeliveryError
	require.ErrorAs(t, err, &de, "a message the queue can never take fails for good")
	assert.True(t, de.Permanent)
	assert.ErrorIs(t, err, queue.ErrTooLarge)
	err = d.Deliver(ctx, resilmail.Envelope{ID: "handed-3", From: "a@example.org"}, body("x"))
	require.ErrorAs(t, err, &de, "no recipients")
	assert.True(t, de.Permanent)

	require.NoError(t, q.Close())
	err = d.Deliver(ctx, envelope("handed-4", "a@example.org"), body("x"))
	require.ErrorIs(t, err, queue.ErrClosed)
	assert.False(t, errors.As(err, &de), "a closed queue is a temporary failure")
}

func TestConcurrentDuplicatesDeliverOnce(t *testing.T) {
	s := newSink(nil)
	q := open(t, t.TempDir(), s, nil)
	run(t, q)
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := q.Enqueue(context.Background(), envelope("same", "a@example.org"), body("x"))
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	waitFor(t, "delivery", func() bool { return len(q.List(queue.Filter{})) == 0 })
	assert.Equal(t, []string{"same"}, s.delivered("a@example.org"))
}

func TestPartialFailureRetriesOnlyPending(t *testing.T) {
	s := newSink(func(env resilmail.Envelope, call int) error {
		if call == 1 {
			return errors.Join(
				&resilmail.DeliveryError{Recipient: "b@example.org", Code: 451, EnhancedCode: "4.2.0", Message: "mailbox busy"},
				&resilmail.DeliveryError{Recipient: "c@example.org", Code: 550, EnhancedCode: "5.1.1", Message: "no such user", Permanent: true},
			)
		}
		return nil
	})
	clock := newClock()
	opts := quietOpts()
	opts.Now = clock.Now
	opts.Retry.Jitter = -1
	q := open(t, t.TempDir(), s, opts)
	run(t, q)
	_, err := q.Enqueue(context.Background(), envelope("m1", "a@example.org", "b@example.org", "c@example.org"), body("p"))
	require.NoError(t, err)
	<-s.seen
	// The bounce for c goes to the sender; b waits for its retry.
	waitFor(t, "bounce", func() bool { return len(s.delivered("sender@example.net")) == 1 })
	in, err := q.Inspect("m1")
	require.NoError(t, err)
	assert.Equal(t, queue.StateDeferred, in.State)
	assert.Equal(t, queue.Delivered, in.Recipients[0].State)
	assert.Equal(t, queue.Pending, in.Recipients[1].State)
	assert.Equal(t, "451 4.2.0 mailbox busy", in.Recipients[1].Reply)
	assert.Equal(t, queue.Failed, in.Recipients[2].State)
	require.Len(t, in.History, 1)
	assert.Equal(t, clock.Now().Add(5*time.Minute), in.NextAttempt, "first retry after 5 minutes")

	clock.Advance(5 * time.Minute)
	_, err = q.Retry(queue.Filter{IDs: []string{"m1"}})
	require.NoError(t, err)
	var second resilmail.Envelope
	for second.ID != "m1" {
		second = <-s.seen
	}
	assert.Equal(t, []string{"b@example.org"}, second.Recipients(), "only the pending recipient is retried")
	waitFor(t, "m1 done", func() bool { _, err := q.Inspect("m1"); return errors.Is(err, queue.ErrNotFound) })
	assert.Equal(t, []string{"m1"}, s.delivered("a@example.org"))
	assert.Equal(t, []string{"m1"}, s.delivered("b@example.org"))
}

func TestRetryNowWithoutWaiting(t *testing.T) {
	clock := newClock()
	s := newSink(func(env resilmail.Envelope, call int) error {
		if call == 1 {
			return &resilmail.DeliveryError{Code: 451, EnhancedCode: "4.2.0", Message: "busy"}
		}
		return nil
	})
	opts := quietOpts()
	opts.Now = clock.Now
	opts.Retry.Jitter = -1
	q := open(t, t.TempDir(), s, opts)
	run(t, q)
	_, err := q.Enqueue(context.Background(), envelope("r1", "a@example.org"), body("r"))
	require.NoError(t, err)
	<-s.seen
	waitFor(t, "retry scheduled", func() bool { in, err := q.Inspect("r1"); return err == nil && !in.NextAttempt.IsZero() })
	n, err := q.Retry(queue.Filter{IDs: []string{"r1", "unknown"}})
	require.NoError(t, err)
	assert.Equal(t, 1, n, "one scheduled message moved to now")
	select {
	case env := <-s.seen:
		assert.Equal(t, "r1", env.ID)
	case <-time.After(10 * time.Second):
		t.Fatal("Retry did not start an attempt before the retry time (clock never moved)")
	}
	waitFor(t, "r1 done", func() bool { _, err := q.Inspect("r1"); return errors.Is(err, queue.ErrNotFound) })
	assert.Equal(t, []string{"r1"}, s.delivered("a@example.org"))
}

func TestBounceContent(t *testing.T) {
	s := newSink(func(env resilmail.Envelope, call int) error {
		if env.From == "" {
			return nil // deliver the bounce
		}
		return &resilmail.DeliveryError{Recipient: "u@example.org", Host: "mx.example.org", Code: 550, EnhancedCode: "5.1.1", Message: "no such user", Permanent: true}
	})
	q := open(t, t.TempDir(), s, nil)
	run(t, q)
	env := envelope("orig", "u@example.org")
	env.EnvID = "env-123"
	env.Return = resilmail.ReturnFull
	env.To[0].ORCPT = "rfc822;U@example.org"
	_, err := q.Enqueue(context.Background(), env, body("bounce-me"))
	require.NoError(t, err)
	waitFor(t, "bounce delivered", func() bool { return len(s.delivered("sender@example.net")) == 1 })
	bid := s.delivered("sender@example.net")[0]
	p, err := dsn.Parse(strings.NewReader(s.bodies[bid]))
	require.NoError(t, err)
	assert.Equal(t, "sender@example.net", p.To)
	assert.Equal(t, "env-123", p.Report.OriginalEnvelopeID)
	require.Len(t, p.Report.Recipients, 1)
	r := p.Report.Recipients[0]
	assert.Equal(t, dsn.Failed, r.Action)
	assert.Equal(t, "5.1.1", r.Status)
	assert.Equal(t, "u@example.org", r.FinalRecipient)
	assert.Equal(t, "rfc822;U@example.org", r.OriginalRecipient)
	assert.Equal(t, "mx.example.org", r.RemoteMTA)
	assert.Contains(t, r.DiagnosticCode, "550 5.1.1 no such user")
	assert.False(t, p.HeadersOnly, "RET=FULL returns the whole message")
	assert.Contains(t, string(p.Original), "bounce-me\r\n")
	waitFor(t, "queue empty", func() bool { return len(q.List(queue.Filter{})) == 0 })
}

func TestNoBounceToNullSenderOrNotifyNever(t *testing.T) {
	fail := func(env resilmail.Envelope, call int) error {
		return &resilmail.DeliveryError{Code: 550, Message: "no", Permanent: true}
	}
	s := newSink(fail)
	q := open(t, t.TempDir(), s, nil)
	run(t, q)
	null := envelope("from-null", "u@example.org")
	null.From = ""
	_, err := q.Enqueue(context.Background(), null, body("n"))
	require.NoError(t, err)
	never := envelope("never", "u@example.org")
	never.To[0].Notify = resilmail.NotifyNever
	_, err = q.Enqueue(context.Background(), never, body("n"))
	require.NoError(t, err)
	waitFor(t, "queue empty", func() bool { return len(q.List(queue.Filter{})) == 0 })
	st := q.Stats()
	assert.Equal(t, uint64(2), st.Failed)
	assert.Zero(t, st.Notifications, "no bounce loops, NOTIFY=NEVER honoured")
}

func TestExpiryAndDelayWarning(t *testing.T) {
	clock := newClock()
	s := newSink(func(env resilmail.Envelope, call int) error {
		if env.From == "" {
			return nil
		}
		return &resilmail.DeliveryError{Command: "connect", Message: "connection refused"}
	})
	opts := quietOpts()
	opts.Now = clock.Now
	opts.Retry = queue.RetryPolicy{Lifetime: 10 * time.Hour, DelayWarnings: []time.Duration{4 * time.Hour}, Jitter: -1}
	q := open(t, t.TempDir(), s, opts)
	run(t, q)
	env := envelope("slow", "u@example.org")
	env.To[0].Notify = resilmail.NotifyFailure | resilmail.NotifyDelay
	_, err := q.Enqueue(context.Background(), env, body("s"))
	require.NoError(t, err)
	<-s.seen
	for k, step := range []time.Duration{5 * time.Hour, 6 * time.Hour} {
		waitFor(t, "retry scheduled", func() bool { in, err := q.Inspect("slow"); return err == nil && !in.NextAttempt.IsZero() })
		clock.Advance(step)
		// The scheduler may see the message due on its own before Retry
		// runs (the clock has moved past its next attempt); either way
		// exactly one more attempt follows.
		n, err := q.Retry(queue.Filter{IDs: []string{"slow"}})
		require.NoError(t, err)
		require.LessOrEqual(t, n, 1)
		waitFor(t, "attempt", func() bool {
			in, err := q.Inspect("slow")
			return err != nil || (in.Attempts == k+2 && in.State == queue.StateDeferred)
		})
	}
	waitFor(t, "two notices", func() bool { return len(s.delivered("sender@example.net")) == 2 })
	var actions []dsn.Action
	for _, id := range s.delivered("sender@example.net") {
		p, err := dsn.Parse(strings.NewReader(s.bodies[id]))
		require.NoError(t, err)
		actions = append(actions, p.Report.Recipients[0].Action)
		if p.Report.Recipients[0].Action == dsn.Failed {
			assert.Equal(t, "4.4.7", p.Report.Recipients[0].Status, "expiry is reported as 4.4.7")
		}
	}
	assert.ElementsMatch(t, []dsn.Action{dsn.Delayed, dsn.Failed}, actions)
	waitFor(t, "queue empty", func() bool { return len(q.List(queue.Filter{})) == 0 })
	assert.Equal(t, uint64(1), q.Stats().Expired)
}

// The default: a maybe-delivered recipient is sent again, but only after
// the backoff, not at once.
func TestMaybeDeliveredIsRetriedAfterDelay(t *testing.T) {
	s := newSink(func(env resilmail.Envelope, call int) error {
		if call == 1 {
			return &resilmail.DeliveryError{Command: "end of data", Message: "timeout after final dot", MaybeDelivered: true}
		}
		return nil
	})
	opts := quietOpts()
	opts.Retry = queue.RetryPolicy{MinBackoff: time.Hour, Jitter: -1}
	q := open(t, t.TempDir(), s, opts)
	run(t, q)
	start := time.Now()
	_, err := q.Enqueue(context.Background(), envelope("maybe", "u@example.org"), body("m"))
	require.NoError(t, err)
	<-s.seen
	waitFor(t, "deferred", func() bool {
		in, err := q.Inspect("maybe")
		return err == nil && in.State == queue.StateDeferred && !in.NextAttempt.IsZero()
	})
	in, err := q.Inspect("maybe")
	require.NoError(t, err)
	assert.GreaterOrEqual(t, in.NextAttempt.Sub(start), 59*time.Minute, "retried after the backoff, not at once")
	assert.Equal(t, queue.Pending, in.Recipients[0].State)
	assert.Contains(t, in.Recipients[0].Reply, "maybe delivered")
	assert.Equal(t, uint64(1), q.Stats().MaybeDelivered)
	assert.Equal(t, 1, q.Stats().DeferredMessages)
	n, err := q.Retry(queue.Filter{})
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	<-s.seen
	waitFor(t, "done", func() bool { return len(q.List(queue.Filter{})) == 0 })
}

// MaybeHold holds the one recipient whose reply was lost, delivers the
// others, warns the sender, and expires it with a DSN that says why.
func TestMaybeHoldIsPerRecipientWarnsAndExpires(t *testing.T) {
	clock := newClock()
	s := newSink(func(env resilmail.Envelope, call int) error {
		if env.From == "" || env.To[0].Addr != "held@one.example" {
			return nil
		}
		return &resilmail.DeliveryError{Host: "mx.one.example", Command: "end of data", Message: "timeout after final dot", MaybeDelivered: true}
	})
	opts := quietOpts()
	opts.Now = clock.Now
	opts.MaybeDelivered = queue.MaybeHold
	opts.Retry = queue.RetryPolicy{Lifetime: 10 * time.Hour, DelayWarnings: []time.Duration{4 * time.Hour}, Jitter: -1}
	q := open(t, t.TempDir(), s, opts)
	run(t, q)
	env := envelope("maybe", "held@one.example", "ok@two.example")
	for i := range env.To {
		env.To[i].Notify = resilmail.NotifyFailure | resilmail.NotifyDelay
	}
	_, err := q.Enqueue(context.Background(), env, body("m"))
	require.NoError(t, err)
	waitFor(t, "other recipient delivered", func() bool { return len(s.delivered("ok@two.example")) == 1 })
	waitFor(t, "held", func() bool { return len(q.List(queue.Filter{State: queue.StateMaybeDelivered})) == 1 })
	st := q.Stats()
	assert.Equal(t, 1, st.MaybeDeliveredRecipients)
	assert.Zero(t, st.HeldMessages, "the message itself is not held")

	notices := func() []*dsn.Parsed {
		var out []*dsn.Parsed
		for _, id := range s.delivered("sender@example.net") {
			s.mu.Lock()
			b := s.bodies[id]
			s.mu.Unlock()
			p, err := dsn.Parse(strings.NewReader(b))
			require.NoError(t, err)
			out = append(out, p)
		}
		return out
	}
	clock.Advance(5 * time.Hour)
	_, err = q.Retry(queue.Filter{})
	require.NoError(t, err)
	waitFor(t, "delay warning", func() bool { return len(notices()) == 1 })
	assert.Equal(t, dsn.Delayed, notices()[0].Report.Recipients[0].Action)
	assert.Equal(t, "held@one.example", notices()[0].Report.Recipients[0].FinalRecipient)
	assert.Len(t, s.delivered("held@one.example"), 1, "held, not sent again")

	clock.Advance(6 * time.Hour)
	_, err = q.Retry(queue.Filter{})
	require.NoError(t, err)
	waitFor(t, "expiry notice", func() bool { return len(notices()) == 2 })
	fail := notices()[1].Report.Recipients[0]
	assert.Equal(t, dsn.Failed, fail.Action)
	assert.Equal(t, "4.4.7", fail.Status)
	assert.Contains(t, fail.DiagnosticCode, "may already have been delivered")
	waitFor(t, "queue empty", func() bool { return len(q.List(queue.Filter{})) == 0 })
	assert.Len(t, s.delivered("held@one.example"), 1, "never sent twice")
}

func TestMaybeHoldRelease(t *testing.T) {
	s := newSink(func(env resilmail.Envelope, call int) error {
		if call == 1 {
			return &resilmail.DeliveryError{Command: "end of data", Message: "timeout after final dot", MaybeDelivered: true}
		}
		return nil
	})
	opts := quietOpts()
	opts.MaybeDelivered = queue.MaybeHold
	q := open(t, t.TempDir(), s, opts)
	run(t, q)
	_, err := q.Enqueue(context.Background(), envelope("maybe", "u@example.org"), body("m"))
	require.NoError(t, err)
	<-s.seen
	waitFor(t, "held", func() bool { return len(q.List(queue.Filter{State: queue.StateMaybeDelivered})) == 1 })
	assert.Equal(t, uint64(1), q.Stats().MaybeDelivered)
	n, err := q.Release(queue.Filter{State: queue.StateMaybeDelivered})
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	<-s.seen
	waitFor(t, "done", func() bool { return len(q.List(queue.Filter{})) == 0 })
}

func TestAdmin(t *testing.T) {
	block := make(chan struct{})
	s := newSink(func(env resilmail.Envelope, call int) error {
		if env.From == "" {
			return nil
		}
		<-block
		return &resilmail.DeliveryError{Code: 451, Message: "later"}
	})
	q := open(t, t.TempDir(), s, nil)
	ctx := context.Background()
	for i, r := range []string{"a@one.example", "b@two.example", "c@two.example"} {
		_, err := q.Enqueue(ctx, envelope(fmt.Sprint("m", i), r), body("x"))
		require.NoError(t, err)
	}
	assert.Len(t, q.List(queue.Filter{Domain: "two.example"}), 2)
	assert.Len(t, q.List(queue.Filter{Recipient: "A@one.example"}), 1)
	assert.Len(t, q.List(queue.Filter{Sender: "sender@example.net", State: queue.StateQueued}), 3)
	assert.Empty(t, q.List(queue.Filter{OlderThan: time.Hour}))

	n, err := q.Hold(queue.Filter{Domain: "two.example"})
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	assert.Len(t, q.List(queue.Filter{State: queue.StateHeld}), 2)
	n, err = q.Delete(queue.Filter{IDs: []string{"m2"}})
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	n, err = q.Bounce(queue.Filter{IDs: []string{"m1"}}, "test bounce")
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	close(block)
	run(t, q)
	waitFor(t, "bounce of m1", func() bool { return len(s.delivered("sender@example.net")) == 1 })
	_, err = q.Inspect("m2")
	assert.ErrorIs(t, err, queue.ErrNotFound)
	assert.Empty(t, s.delivered("b@two.example"), "a bounced message is not delivered")
	assert.Empty(t, s.delivered("c@two.example"), "a deleted message is not delivered")
}

func TestAdmissionControl(t *testing.T) {
	opts := quietOpts()
	opts.MaxMessages = 2
	opts.MaxMessageSize = 1000
	q := open(t, t.TempDir(), newSink(nil), opts)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		_, err := q.Enqueue(ctx, envelope(fmt.Sprint("m", i), "a@example.org"), body("x"))
		require.NoError(t, err)
	}
	_, err := q.Enqueue(ctx, envelope("m2", "a@example.org"), body("x"))
	assert.ErrorIs(t, err, queue.ErrFull)
	_, err = q.Enqueue(ctx, envelope("big", "a@example.org"), bytes.NewReader(make([]byte, 2000)))
	assert.ErrorIs(t, err, queue.ErrTooLarge)
	_, err = q.Enqueue(ctx, envelope("bad id/..", "a@example.org"), body("x"))
	assert.ErrorIs(t, err, queue.ErrInvalid)
	assert.Equal(t, uint64(1), q.Stats().Refused)
}

func TestDestinationLimitsAndSlowDown(t *testing.T) {
	var mu sync.Mutex
	inflight := map[string]int{}
	peak := map[string]int{}
	release := make(chan struct{})
	s := newSink(func(env resilmail.Envelope, call int) error {
		dom := resilmail.Domain(env.To[0].Addr)
		if dom == "dead.example" {
			return &resilmail.DeliveryError{Host: "mx.dead.example", Command: "connect", Message: "connection refused"}
		}
		mu.Lock()
		inflight[dom]++
		peak[dom] = max(peak[dom], inflight[dom])
		mu.Unlock()
		<-release
		mu.Lock()
		inflight[dom]--
		mu.Unlock()
		return nil
	})
	opts := quietOpts()
	opts.MaxPerDestination = 2
	q := open(t, t.TempDir(), s, opts)
	ctx := context.Background()
	for i := 0; i < 6; i++ {
		_, err := q.Enqueue(ctx, envelope(fmt.Sprint("slow", i), fmt.Sprintf("u%d@busy.example", i)), body("x"))
		require.NoError(t, err)
	}
	for i := 0; i < 5; i++ {
		_, err := q.Enqueue(ctx, envelope(fmt.Sprint("dead", i), fmt.Sprintf("u%d@dead.example", i)), body("x"))
		require.NoError(t, err)
	}
	run(t, q)
	waitFor(t, "throttling", func() bool { return q.Stats().Throttled >= 1 })
	waitFor(t, "busy at its limit", func() bool { mu.Lock(); defer mu.Unlock(); return inflight["busy.example"] == 2 })
	close(release)
	waitFor(t, "busy delivered", func() bool { return len(q.List(queue.Filter{Domain: "busy.example"})) == 0 })
	mu.Lock()
	assert.Equal(t, 2, peak["busy.example"], "per-destination limit")
	mu.Unlock()
	st := q.Stats()
	assert.Less(t, st.Deferred, uint64(5), "a dead destination is not tried for every message")
	for _, in := range q.List(queue.Filter{Domain: "dead.example"}) {
		assert.LessOrEqual(t, in.Attempts, 1)
	}
}

func TestCorruptBodyMovedAside(t *testing.T) {
	dir := t.TempDir()
	q, err := queue.Open(dir, newSink(nil), quietOpts())
	require.NoError(t, err)
	_, err = q.Enqueue(context.Background(), envelope("bad", "a@example.org"), body("BADBODY-unique-marker"))
	require.NoError(t, err)
	_, err = q.Enqueue(context.Background(), envelope("good", "a@example.org"), body("good-body"))
	require.NoError(t, err)
	require.NoError(t, q.Close())
	segs, _ := filepath.Glob(filepath.Join(dir, "log", "*.wal"))
	require.Len(t, segs, 1)
	data, err := os.ReadFile(segs[0])
	require.NoError(t, err)
	i := bytes.Index(data, []byte("BADBODY-unique-marker"))
	require.Positive(t, i)
	data[i] = 'X'
	require.NoError(t, os.WriteFile(segs[0], data, 0o644))

	s := newSink(nil)
	q2 := open(t, dir, s, nil)
	run(t, q2)
	waitFor(t, "good delivered", func() bool { return len(s.delivered("a@example.org")) == 1 })
	assert.Equal(t, []string{"good"}, s.delivered("a@example.org"), "a corrupt body is never delivered and does not block the others")
	st := q2.Stats()
	assert.Equal(t, 1, st.CorruptRegions, "the damage is reported")
	moved, _ := filepath.Glob(filepath.Join(dir, "corrupt", "*"))
	assert.NotEmpty(t, moved, "the damaged bytes are moved aside")
	bad := q2.List(queue.Filter{State: queue.StateCorrupt})
	require.Len(t, bad, 1, "the damaged message stays listed for the operator")
	assert.Equal(t, "bad", bad[0].ID)
	assert.Equal(t, "sender@example.net", bad[0].Envelope.From)
	require.NoError(t, q2.Close())

	// The salvaged entry survives another restart, and the damaged region is
	// not reported twice.
	q3 := open(t, dir, newSink(nil), nil)
	assert.Len(t, q3.List(queue.Filter{State: queue.StateCorrupt}), 1)
}

func TestCorruptBodyFoundWhileRunning(t *testing.T) {
	dir := t.TempDir()
	s := newSink(nil)
	q := open(t, dir, s, nil)
	_, err := q.Enqueue(context.Background(), envelope("rot", "a@example.org"), body("ROTTING-marker"))
	require.NoError(t, err)
	segs, _ := filepath.Glob(filepath.Join(dir, "log", "*.wal"))
	f, err := os.OpenFile(segs[0], os.O_RDWR, 0)
	require.NoError(t, err)
	data, err := os.ReadFile(segs[0])
	require.NoError(t, err)
	i := bytes.Index(data, []byte("ROTTING-marker"))
	_, err = f.WriteAt([]byte("X"), int64(i))
	require.NoError(t, err)
	require.NoError(t, f.Close())
	run(t, q)
	waitFor(t, "corrupt found", func() bool { return q.Stats().Corrupt == 1 })
	assert.Empty(t, s.delivered("a@example.org"), "never delivered")
	assert.Len(t, q.List(queue.Filter{State: queue.StateCorrupt}), 1)
	moved, _ := filepath.Glob(filepath.Join(dir, "corrupt", "rot"))
	assert.Len(t, moved, 1)
}

func TestCompactionKeepsLiveMessagesAndDedup(t *testing.T) {
	dir := t.TempDir()
	s := newSink(nil)
	opts := quietOpts()
	opts.SegmentSize = 32 << 10
	q := open(t, dir, s, opts)
	ctx := context.Background()
	pad := strings.Repeat("p", 2048)
	// Held messages sit in the oldest segments and must be carried forward.
	for i := 0; i < 5; i++ {
		_, err := q.Enqueue(ctx, envelope(fmt.Sprint("held", i), "u@held.example"), body(fmt.Sprint("held-body-", i, pad)))
		require.NoError(t, err)
	}
	_, err := q.Hold(queue.Filter{Domain: "held.example"})
	require.NoError(t, err)
	run(t, q)
	for i := 0; i < 200; i++ {
		_, err := q.Enqueue(ctx, envelope(fmt.Sprint("d", i), "u@example.org"), body(fmt.Sprint("d", i, pad)))
		require.NoError(t, err)
	}
	waitFor(t, "deliveries", func() bool { return len(s.delivered("u@example.org")) == 200 })
	waitFor(t, "compaction to free the space of delivered mail", func() bool {
		st := q.Stats()
		return st.Compactions >= 5 && st.Rewritten >= 5 && st.DiskBytes < 200*2048
	})
	require.NoError(t, q.Close())

	s2 := newSink(nil)
	q2 := open(t, dir, s2, opts)
	held := q2.List(queue.Filter{State: queue.StateHeld})
	require.Len(t, held, 5, "held messages survive compaction and restart")
	for i := 0; i < 200; i += 20 {
		_, err := q2.Enqueue(ctx, envelope(fmt.Sprint("d", i), "u@example.org"), body(fmt.Sprint("d", i, pad)))
		require.NoError(t, err)
		_, err = q2.Enqueue(ctx, envelope(fmt.Sprint("d", i), "u@example.org"), body("again"))
		require.ErrorIs(t, err, queue.ErrConflict, "the content of delivered ids is remembered through compaction")
	}
	assert.Equal(t, uint64(10), q2.Stats().Duplicates, "delivered ids are remembered through compaction")
	run(t, q2)
	_, err = q2.Release(queue.Filter{State: queue.StateHeld})
	require.NoError(t, err)
	waitFor(t, "held delivered", func() bool { return len(s2.delivered("u@held.example")) == 5 })
	for i := 0; i < 5; i++ {
		assert.Contains(t, s2.bodies[fmt.Sprint("held", i)], fmt.Sprint("held-body-", i), "bodies copied forward intact")
	}
	assert.Empty(t, s2.delivered("u@example.org"), "nothing delivered twice")
}

func TestShutdownDrains(t *testing.T) {
	release := make(chan struct{})
	started := make(chan string, 10)
	d := resilmail.DelivererFunc(func(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
		started <- env.ID
		<-release
		return nil
	})
	dir := t.TempDir()
	q, err := queue.Open(dir, d, quietOpts())
	require.NoError(t, err)
	go q.Run(context.Background())
	_, err = q.Enqueue(context.Background(), envelope("first", "u@example.org"), body("a"))
	require.NoError(t, err)
	assert.Equal(t, "first", <-started)
	done := make(chan error, 1)
	go func() { done <- q.Shutdown(context.Background()) }()
	waitFor(t, "draining", func() bool { return q.Stats().Draining })
	// Accepted while draining, and due at once: it must wait for the next
	// Open.
	_, err = q.Enqueue(context.Background(), envelope("second", "u@example.org"), body("b"))
	require.NoError(t, err)
	waitFor(t, "second queued", func() bool { return q.Stats().Messages[queue.StateQueued] == 1 })
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a delivery in flight", err)
	default:
	}
	close(release)
	require.NoError(t, <-done)
	select {
	case id := <-started:
		t.Fatalf("%s started during Shutdown", id)
	default:
	}
	q2 := open(t, dir, newSink(nil), nil)
	ids := []string{}
	for _, in := range q2.List(queue.Filter{}) {
		ids = append(ids, in.ID)
	}
	assert.Equal(t, []string{"second"}, ids, "the finished delivery is durable, the one not started is kept")
	in, err := q2.Inspect("second")
	require.NoError(t, err)
	assert.Zero(t, in.Attempts, "no attempt was started during Shutdown")
}

func TestShutdownDeadline(t *testing.T) {
	cancelled := make(chan struct{})
	d := resilmail.DelivererFunc(func(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
		<-ctx.Done()
		close(cancelled)
		return ctx.Err()
	})
	dir := t.TempDir()
	q, err := queue.Open(dir, d, quietOpts())
	require.NoError(t, err)
	go q.Run(context.Background())
	_, err = q.Enqueue(context.Background(), envelope("stuck", "u@example.org"), body("a"))
	require.NoError(t, err)
	waitFor(t, "in flight", func() bool { return q.Stats().InFlight == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, q.Shutdown(ctx), context.DeadlineExceeded)
	<-cancelled
	q2 := open(t, dir, newSink(nil), nil)
	in, err := q2.Inspect("stuck")
	require.NoError(t, err)
	assert.Equal(t, queue.Pending, in.Recipients[0].State, "cut short by the deadline: tried again")
}

// refuser answers every delivery with a permanent refusal without reading
// the body, as a server that refuses at RCPT does, after calling before.
type refuser struct{ before func() }

func (r refuser) Deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	r.before()
	return &resilmail.DeliveryError{Code: 550, Message: "5.1.1 no such user", Permanent: true}
}

// TestUnreadableBodyDoesNotBlockItsNotices: a message whose body cannot be
// read when its failure notice is due (damaged on disk while it was
// refused at RCPT) still gets its notice, without the original, and is
// finished; one whose recipient wants no notice is finished too.
func TestUnreadableBodyDoesNotBlockItsNotices(t *testing.T) {
	damage := func(dir string) {
		segs, _ := filepath.Glob(filepath.Join(dir, "log", "*.wal"))
		data, err := os.ReadFile(segs[0])
		if err != nil {
			panic(err)
		}
		i := bytes.Index(data, []byte("ROTTING-notice-marker"))
		f, err := os.OpenFile(segs[0], os.O_RDWR, 0)
		if err != nil || i < 0 {
			panic(fmt.Sprint("cannot damage the body: ", err, i))
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte("X"), int64(i)); err != nil {
			panic(err)
		}
	}
	for _, notify := range []resilmail.Notify{resilmail.NotifyFailure, resilmail.NotifyNever} {
		dir := t.TempDir()
		q := open(t, dir, refuser{before: func() { damage(dir) }}, nil)
		env := envelope("rot", "a@example.org")
		env.To[0].Notify = notify
		_, err := q.Enqueue(context.Background(), env, body("ROTTING-notice-marker"))
		require.NoError(t, err)
		run(t, q)
		waitFor(t, "the refused message finished", func() bool {
			for _, m := range q.List(queue.Filter{}) {
				if m.ID == "rot" {
					return false
				}
			}
			return true
		})
		want := uint64(1)
		if notify == resilmail.NotifyNever {
			want = 0
		}
		assert.Equal(t, want, q.Stats().Notifications, "NOTIFY=%v", notify)
	}
}
