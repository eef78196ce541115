package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/dsn"
	"github.com/resilmail/resilmail/queue"
)

// A message the postmaster held is never sent, but it is not kept for ever
// unseen either: its sender gets the delay warning, and when its lifetime
// runs out it fails with a DSN that says it was held. A restart in between
// changes nothing.
func TestHeldMessageWarnsAndExpires(t *testing.T) {
	clock := newClock()
	s := newSink(nil)
	opts := quietOpts()
	opts.Now = clock.Now
	opts.Retry = queue.RetryPolicy{Lifetime: 10 * time.Hour, DelayWarnings: []time.Duration{4 * time.Hour}, Jitter: -1}
	dir := t.TempDir()
	q, err := queue.Open(dir, s, opts)
	require.NoError(t, err)
	env := envelope("held", "u@example.org")
	env.To[0].Notify = resilmail.NotifyFailure | resilmail.NotifyDelay
	_, err = q.Enqueue(context.Background(), env, body("h"))
	require.NoError(t, err)
	n, err := q.Hold(queue.Filter{IDs: []string{"held"}})
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, q.Close())

	q = open(t, dir, s, opts)
	run(t, q)
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
	_, err = q.Retry(queue.Filter{}) // wakes the scheduler, whose clock is the test's
	require.NoError(t, err)
	waitFor(t, "delay warning", func() bool { return len(notices()) == 1 })
	assert.Equal(t, dsn.Delayed, notices()[0].Report.Recipients[0].Action)
	in, err := q.Inspect("held")
	require.NoError(t, err)
	assert.Equal(t, queue.StateHeld, in.State, "still held after the warning")
	assert.Empty(t, s.delivered("u@example.org"), "a held message is not sent")

	clock.Advance(6 * time.Hour)
	_, err = q.Retry(queue.Filter{})
	require.NoError(t, err)
	waitFor(t, "expiry notice", func() bool { return len(notices()) == 2 })
	fail := notices()[1].Report.Recipients[0]
	assert.Equal(t, dsn.Failed, fail.Action)
	assert.Equal(t, "4.4.7", fail.Status)
	assert.Contains(t, fail.DiagnosticCode, "held by the postmaster")
	waitFor(t, "queue empty", func() bool { return len(q.List(queue.Filter{})) == 0 })
	assert.Empty(t, s.delivered("u@example.org"), "never sent")
	assert.Equal(t, uint64(1), q.Stats().Expired)
}
