package mxpool

import (
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/testclock"
)

func newTestHealth() (*Health, *testclock.Clock) {
	c := testclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	return NewHealth(&HealthOptions{Failures: 2, MinBackoff: 30 * time.Second, MaxBackoff: 2 * time.Minute, Now: c.Now, Logger: discardLogger()}), c
}

func TestHealthOpensAfterConsecutiveFailures(t *testing.T) {
	h, clock := newTestHealth()
	refused := errors.New("connection refused")
	assert.True(t, h.Allow("MX1.example.org."), "an unknown host is tried")
	h.Failure("mx1.example.org", refused)
	assert.True(t, h.Allow("mx1.example.org"), "one failure is not enough")
	h.Success("mx1.example.org")
	h.Failure("mx1.example.org", refused)
	assert.True(t, h.Allow("mx1.example.org"), "failures must be consecutive")
	h.Failure("mx1.example.org", refused)
	assert.False(t, h.Allow("mx1.example.org"), "open after two in a row: skipped without a connection")
	assert.True(t, h.Allow("mx2.example.org"), "other hosts are unaffected")

	st := h.Host("mx1.example.org")
	assert.Equal(t, CircuitOpen, st.State)
	assert.Equal(t, 2, st.Failures)
	assert.Equal(t, "connection refused", st.LastError)
	assert.Equal(t, clock.Now().Add(30*time.Second), st.OpenUntil)

	clock.Advance(29 * time.Second)
	assert.False(t, h.Allow("mx1.example.org"))
	h.Failure("mx1.example.org", refused) // a delivery started before it opened
	assert.Equal(t, clock.Now().Add(time.Second), h.Host("mx1.example.org").OpenUntil, "late failures do not extend the backoff")
}

func TestHealthHalfOpenProbe(t *testing.T) {
	h, clock := newTestHealth()
	for range 2 {
		h.Failure("mx", errors.New("timeout"))
	}
	clock.Advance(30 * time.Second)
	assert.True(t, h.Allow("mx"), "the backoff ended: one probe")
	assert.Equal(t, CircuitHalfOpen, h.Host("mx").State)
	assert.False(t, h.Allow("mx"), "only one probe at a time")

	// The probe fails: open again for twice as long.
	h.Failure("mx", errors.New("timeout"))
	assert.Equal(t, CircuitOpen, h.Host("mx").State)
	assert.Equal(t, clock.Now().Add(time.Minute), h.Host("mx").OpenUntil)
	clock.Advance(time.Minute)
	require.True(t, h.Allow("mx"))
	h.Failure("mx", errors.New("timeout"))
	assert.Equal(t, clock.Now().Add(2*time.Minute), h.Host("mx").OpenUntil, "doubling")
	clock.Advance(2 * time.Minute)
	require.True(t, h.Allow("mx"))
	h.Failure("mx", errors.New("timeout"))
	assert.Equal(t, clock.Now().Add(2*time.Minute), h.Host("mx").OpenUntil, "capped at MaxBackoff")

	// A probe that never reports does not block the host for ever.
	clock.Advance(2 * time.Minute)
	require.True(t, h.Allow("mx"))
	assert.False(t, h.Allow("mx"))
	clock.Advance(2 * time.Minute)
	assert.True(t, h.Allow("mx"), "probe timed out: another caller probes")

	// The probe succeeds: closed, and failures start counting afresh.
	h.Success("mx")
	st := h.Host("mx")
	assert.Equal(t, CircuitClosed, st.State)
	assert.Zero(t, st.Failures)
	assert.Equal(t, clock.Now(), st.LastSuccess)
	h.Failure("mx", errors.New("timeout"))
	assert.True(t, h.Allow("mx"))
	h.Failure("mx", errors.New("timeout"))
	assert.Equal(t, clock.Now().Add(30*time.Second), h.Host("mx").OpenUntil, "backoff starts again from MinBackoff")
}

func TestHealthConcurrentProbeIsSingle(t *testing.T) {
	h, clock := newTestHealth()
	h.Failure("mx", nil)
	h.Failure("mx", nil)
	clock.Advance(time.Minute)
	var allowed atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if h.Allow("mx") {
				allowed.Add(1)
			}
		})
	}
	wg.Wait()
	assert.Equal(t, int32(1), allowed.Load())
}

func TestHealthStatsSorted(t *testing.T) {
	h, _ := newTestHealth()
	h.Success("b.example")
	h.Failure("A.example", errors.New("x"))
	st := h.Stats()
	require.Len(t, st, 2)
	assert.Equal(t, "a.example", st[0].Host)
	assert.Equal(t, CircuitClosed, st[0].State)
	assert.Equal(t, 1, st[0].Failures)
	assert.Equal(t, "b.example", st[1].Host)
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
