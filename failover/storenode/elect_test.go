package storenode_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/failover"
)

// TestADrainedPrimaryKeepsItsTerm: a primary that a switchover drained
// stays eligible, so its elector does not give the lease away (to the
// switchover's own target, whose promotion by the election would end the
// replica the switchover waits on) while writes wait.
func TestADrainedPrimaryKeepsItsTerm(t *testing.T) {
	ctx := context.Background()
	p := newPair(t)
	lease := failover.NewManual(1)
	require.NoError(t, lease.Grant(2))
	tm := failover.Timers{TTL: time.Second, Renew: 20 * time.Millisecond, RequestTimeout: 10 * time.Millisecond, Margin: 100 * time.Millisecond}
	el, err := failover.NewElector(lease, p.a.Candidate(1000), &failover.ElectorOptions{Timers: tm, Logger: quiet()})
	require.NoError(t, err)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- el.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })
	require.Eventually(t, func() bool { return el.Status().Primary }, 10*time.Second, time.Millisecond)

	resume, err := p.a.Drain(ctx)
	require.NoError(t, err)
	assert.Never(t, func() bool { return !el.Status().Primary }, 20*tm.Renew, tm.Renew/4, "the drained primary keeps its term")
	assert.Zero(t, el.Status().Demotions, "%s", el.Status().LastError)
	require.NoError(t, resume(ctx))
	_, err = p.a.Store().Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
	require.NoError(t, err, "resumed, it takes writes")
}
