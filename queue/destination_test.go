package queue_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
)

func rcptsOf(domain string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("u%03d@%s", i, domain)
	}
	return out
}

// sizes reads the recipient counts of the next n transactions.
func sizes(t *testing.T, s *sink, n int) map[string][]int {
	t.Helper()
	got := map[string][]int{}
	for range n {
		select {
		case env := <-s.seen:
			d := resilmail.Domain(env.To[0].Addr)
			got[d] = append(got[d], len(env.To))
		case <-time.After(10 * time.Second):
			t.Fatalf("timed out; transactions so far: %v", got)
		}
	}
	return got
}

// A destination's recipients go in transactions of at most 50 (or its
// own limit); every recipient is delivered once.
func TestRecipientsSplitIntoTransactions(t *testing.T) {
	s := newSink(nil)
	opts := quietOpts()
	opts.PerDestination = map[string]queue.DestinationLimits{"small.example": {MaxRcptsPerTransaction: 10}}
	q := open(t, t.TempDir(), s, opts)
	rcpts := append(rcptsOf("big.example", 120), rcptsOf("small.example", 25)...)
	_, err := q.Enqueue(context.Background(), envelope("many", rcpts...), body("many"))
	require.NoError(t, err)
	run(t, q)
	got := sizes(t, s, 6)
	assert.ElementsMatch(t, []int{50, 50, 20}, got["big.example"])
	assert.ElementsMatch(t, []int{10, 10, 5}, got["small.example"])
	waitFor(t, "done", func() bool { return len(q.List(queue.Filter{})) == 0 })
	for _, r := range rcpts {
		assert.Len(t, s.delivered(r), 1, r)
	}
	assert.Equal(t, 1, int(q.Stats().Enqueued))
}

// tooMany answers like a server that takes limit recipients per
// transaction and refuses the others with 452.
func tooMany(limit int) func(env resilmail.Envelope, call int) error {
	return func(env resilmail.Envelope, call int) error {
		var errs []error
		for i, r := range env.To {
			if i >= limit {
				errs = append(errs, &resilmail.DeliveryError{Recipient: r.Addr, Host: "mx.example.org", Command: "RCPT TO", Code: 452, EnhancedCode: "4.5.3", Message: "Too many recipients"})
			}
		}
		return errors.Join(errs...)
	}
}

// After a 452 to some recipients of a transaction whose others were
// taken, the rest goes at once in a new transaction, not after the
// backoff; when nothing was taken, it is an ordinary deferral.
func TestRestSentAtOnceAfter452(t *testing.T) {
	s := newSink(tooMany(3))
	opts := quietOpts()
	opts.Retry = queue.RetryPolicy{MinBackoff: time.Hour, Jitter: -1}
	q := open(t, t.TempDir(), s, opts)
	rcpts := rcptsOf("example.org", 8)
	_, err := q.Enqueue(context.Background(), envelope("m", rcpts...), body("m"))
	require.NoError(t, err)
	run(t, q)
	assert.Equal(t, []int{8, 5, 2}, sizes(t, s, 3)["example.org"])
	waitFor(t, "done", func() bool { return len(q.List(queue.Filter{})) == 0 })
	for _, r := range rcpts {
		assert.Len(t, s.delivered(r), 1, r)
	}
	st := q.Stats()
	assert.Zero(t, st.Deferred, "nothing waited for the backoff")
	assert.Equal(t, uint64(7), st.Resent452)

	s0 := newSink(tooMany(0))
	q0 := open(t, t.TempDir(), s0, opts)
	_, err = q0.Enqueue(context.Background(), envelope("none", rcptsOf("example.org", 4)...), body("n"))
	require.NoError(t, err)
	run(t, q0)
	<-s0.seen
	waitFor(t, "deferred", func() bool { return q0.Stats().Deferred == 4 })
	in, err := q0.Inspect("none")
	require.NoError(t, err)
	assert.Equal(t, queue.StateDeferred, in.State, "a 452 to everyone waits for the backoff")
	assert.Zero(t, q0.Stats().Resent452)
	select {
	case env := <-s0.seen:
		t.Fatalf("sent again at once: %v", env.To)
	default:
	}
}

// A destination's own concurrency applies to it alone.
func TestPerDestinationConcurrency(t *testing.T) {
	var mu sync.Mutex
	inflight, peak := map[string]int{}, map[string]int{}
	release := make(chan struct{})
	s := newSink(func(env resilmail.Envelope, call int) error {
		dom := resilmail.Domain(env.To[0].Addr)
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
	opts.MaxPerDestination = 4
	opts.PerDestination = map[string]queue.DestinationLimits{"one.example": {MaxConcurrency: 1}}
	q := open(t, t.TempDir(), s, opts)
	ctx := context.Background()
	for i := range 4 {
		for _, d := range []string{"one.example", "four.example"} {
			_, err := q.Enqueue(ctx, envelope(fmt.Sprint(d, i), fmt.Sprintf("u%d@%s", i, d)), body("x"))
			require.NoError(t, err)
		}
	}
	run(t, q)
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free) // before the queue stops, on failure too
	waitFor(t, "four.example at its limit", func() bool { mu.Lock(); defer mu.Unlock(); return inflight["four.example"] == 4 })
	waitFor(t, "one.example started", func() bool { mu.Lock(); defer mu.Unlock(); return inflight["one.example"] >= 1 })
	mu.Lock()
	assert.Equal(t, 1, inflight["one.example"], "its own concurrency")
	mu.Unlock()
	free()
	waitFor(t, "all delivered", func() bool { return len(q.List(queue.Filter{})) == 0 })
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, 1, peak["one.example"], "its own concurrency")
	assert.Equal(t, 4, peak["four.example"], "the default concurrency")
}

// A destination's rate spaces its attempts on the queue's clock: the
// next starts only once the clock has moved on by the interval.
func TestPerDestinationRate(t *testing.T) {
	clock := newClock()
	var starts atomic.Int32
	s := newSink(func(env resilmail.Envelope, call int) error {
		starts.Add(1)
		return nil
	})
	opts := quietOpts()
	opts.Now = clock.Now
	opts.PerDestination = map[string]queue.DestinationLimits{"rated.example": {Rate: 0.5}} // one start every 2 s
	q := open(t, t.TempDir(), s, opts)
	ctx := context.Background()
	for i := range 4 {
		_, err := q.Enqueue(ctx, envelope(fmt.Sprint("r", i), fmt.Sprintf("u%d@rated.example", i)), body("x"))
		require.NoError(t, err)
	}
	_, err := q.Enqueue(ctx, envelope("free", "u@free.example"), body("x"))
	require.NoError(t, err)
	run(t, q)
	waitFor(t, "the other destination, not rated", func() bool { return len(s.delivered("u@free.example")) == 1 })
	for k := int32(1); k <= 4; k++ {
		waitFor(t, fmt.Sprint("start ", k), func() bool { return starts.Load() >= k+1 }) // +1: free.example's
		waitFor(t, "the rest waiting", func() bool { return len(q.List(queue.Filter{Domain: "rated.example"})) == int(4-k) })
		require.Equal(t, k+1, starts.Load(), "no start before the clock moves on")
		clock.Advance(1500 * time.Millisecond)
		_, err := q.Retry(queue.Filter{}) // wakes the dispatcher, whose clock is the test's
		require.NoError(t, err)
		require.Equal(t, k+1, starts.Load(), "not after 1.5 s either")
		clock.Advance(500 * time.Millisecond)
		_, err = q.Retry(queue.Filter{})
		require.NoError(t, err)
	}
	assert.Equal(t, int32(5), starts.Load())
}
