package replicate_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
)

func TestComparerRunsEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		primary := openStore(t, t.TempDir())
		replica := openStore(t, t.TempDir())
		require.NoError(t, primary.CreateUser(ctx, "alice"))
		addN(t, primary, "alice", "INBOX", 3)
		c, err := replicate.NewComparer(primary, replicate.BodiesFrom(primary), replica,
			&replicate.ComparerOptions{Interval: time.Hour, Logger: quietLogger()})
		require.NoError(t, err)
		done := make(chan error)
		go func() { done <- c.Run(ctx) }()
		synctest.Wait()
		st := c.Stats()
		assert.Equal(t, 1, st.Runs)
		assert.Equal(t, 2, st.Differences) // user alice, alice/INBOX
		assert.Positive(t, st.Repaired)
		assert.Empty(t, st.LastError)
		requireSame(t, primary, replica)

		// Nothing happens before the interval is over.
		addN(t, primary, "alice", "INBOX", 1)
		time.Sleep(59 * time.Minute)
		synctest.Wait()
		assert.Equal(t, 1, c.Stats().Runs)
		time.Sleep(time.Minute)
		synctest.Wait()
		st = c.Stats()
		assert.Equal(t, 2, st.Runs)
		assert.Equal(t, 1, st.Differences)
		assert.Equal(t, 3, st.TotalDifferences)
		requireSame(t, primary, replica)

		cancel()
		require.NoError(t, <-done)
	})
}

func TestComparerReportOnlyAndConfirm(t *testing.T) {
	ctx := context.Background()
	primary := openStore(t, t.TempDir())
	replica := openStore(t, t.TempDir())
	require.NoError(t, primary.CreateUser(ctx, "alice"))
	addN(t, primary, "alice", "INBOX", 30)
	replicateAll(t, primary, replica, 0)
	_, err := primary.Expunge(ctx, "alice", "INBOX", resilmail.UIDSet{}.AddRange(1, 29))
	require.NoError(t, err)

	watch, err := replicate.NewComparer(primary, replicate.BodiesFrom(primary), replica,
		&replicate.ComparerOptions{ReportOnly: true, Logger: quietLogger()})
	require.NoError(t, err)
	rep, res, err := watch.RunOnce(ctx)
	require.NoError(t, err)
	assert.Equal(t, 29, rep.Differences())
	assert.Zero(t, res.Changes)
	assert.Zero(t, watch.Stats().Repaired)

	fix, err := replicate.NewComparer(primary, replicate.BodiesFrom(primary), replica,
		&replicate.ComparerOptions{Logger: quietLogger()})
	require.NoError(t, err)
	_, res, err = fix.RunOnce(ctx)
	require.NoError(t, err)
	require.Len(t, res.Held, 1)
	assert.Equal(t, 1, fix.Stats().Held)
	_, res, err = fix.RunOnce(ctx, fix.Stats().LastHeld...)
	require.NoError(t, err)
	assert.Empty(t, res.Held)
	assert.Equal(t, 29, res.Expunged)
	requireSame(t, primary, replica)

	_, err = replicate.NewComparer(nil, nil, replica, nil)
	require.Error(t, err)
}
