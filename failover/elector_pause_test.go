package failover

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestElectorPause: a paused elector demotes its node and releases the
// term at once (not at the next renewal), does not campaign while paused,
// and campaigns again once resumed.
func TestElectorPause(t *testing.T) {
	var primary atomic.Bool
	var promotions, demotions atomic.Int32
	node := CandidateFuncs{
		PromoteFunc: func(ctx context.Context, token uint64) error { primary.Store(true); promotions.Add(1); return nil },
		DemoteFunc:  func(ctx context.Context, reason error) error { primary.Store(false); demotions.Add(1); return nil },
	}
	lease := NewManual(0)
	// A renewal every 5 s: a pause that waited for it would time out below.
	el, err := NewElector(lease, node, &ElectorOptions{Timers: Timers{TTL: 30 * time.Second, Renew: 5 * time.Second}, Logger: quietLog()})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- el.Run(ctx) }()
	defer func() { cancel(); <-done }()

	require.NoError(t, lease.Grant(1))
	waitFor(t, func() bool { return primary.Load() })

	pctx, pcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer pcancel()
	require.NoError(t, el.Pause(pctx, "handing over to b"))
	assert.False(t, primary.Load(), "demoted before Pause returns")
	assert.Equal(t, int32(1), demotions.Load())
	assert.False(t, el.Status().Primary)

	// The term was released: a new grant finds the node paused, and it
	// is not promoted.
	require.NoError(t, lease.Grant(2))
	waitFor(t, func() bool { return el.Status().LastError != "" })
	assert.Contains(t, el.Status().LastError, "handing over to b")
	assert.Equal(t, int32(1), promotions.Load())

	el.Resume()
	waitFor(t, func() bool { return primary.Load() })
	assert.Equal(t, uint64(2), el.Status().Token)
	require.NoError(t, el.Pause(pctx, ""), "pausing again")
	assert.False(t, primary.Load())
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10 s")
		}
		time.Sleep(2 * time.Millisecond) // polling with a deadline
	}
}
