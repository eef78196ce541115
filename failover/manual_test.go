package failover

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestManualLease(t *testing.T) {
	m := NewManual(4)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := m.Acquire(ctx)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "nobody granted the lease: Acquire waits")

	require.ErrorIs(t, m.Grant(4), ErrTransition, "a token must rise")
	got := make(chan Term)
	go func() {
		term, err := m.Acquire(context.Background())
		assert.NoError(t, err)
		got <- term
	}()
	require.NoError(t, m.Grant(5))
	term := <-got
	assert.Equal(t, uint64(5), term.Token())
	_, err = term.KeepAlive(context.Background())
	require.NoError(t, err)

	m.Revoke()
	<-term.Lost()
	_, err = term.KeepAlive(context.Background())
	require.ErrorIs(t, err, ErrLeaseLost)

	require.NoError(t, m.Grant(7))
	term2, err := m.Acquire(context.Background())
	require.NoError(t, err)
	assert.Equal(t, uint64(7), term2.Token())
	require.NoError(t, term2.Release(context.Background()))
	<-term2.Lost()
}
