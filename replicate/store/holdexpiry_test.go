package store_test

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

// stepClock is a clock that moves only when told.
type stepClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *stepClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// logBuffer is a log destination tests can read while the store writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAbandonedHoldExpires: a hold whose reader stops renewing it (a
// backup repository no longer used) is dropped after HoldMaxAge, with a
// log line and a counter, and what it kept goes; a hold renewed in time
// stays, across a restart.
func TestAbandonedHoldExpires(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clk := &stepClock{now: time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)}
	var logs logBuffer
	opts := &store.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), Now: clk.Now}
	s, err := store.Open(dir, opts)
	require.NoError(t, err)
	defer func() { s.Close() }()
	require.NoError(t, s.CreateUser(ctx, "alice"))
	content := msg("kept", "deleted, kept for the backups")
	d := resilmail.DigestOf([]byte(content))
	uid := appendMsg(t, s, "alice", "INBOX", content)
	pos := s.Position()
	require.NoError(t, s.Hold(ctx, "backup-abandoned", pos))
	require.NoError(t, s.Hold(ctx, "backup-nightly", pos))
	_, err = s.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(uid))
	require.NoError(t, err)

	clk.Add(20 * 24 * time.Hour)
	require.NoError(t, s.Hold(ctx, "backup-nightly", pos)) // renewed, not moved
	clk.Add(11 * 24 * time.Hour)
	gone, err := s.ExpireHolds(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"backup-abandoned"}, gone)
	require.Len(t, s.Holds(), 1)
	assert.Equal(t, "backup-nightly", s.Holds()[0].Name)
	assert.Equal(t, uint64(1), s.Stats().HoldsExpired)
	assert.Contains(t, logs.String(), "retention hold expired")
	assert.Contains(t, logs.String(), "hold=backup-abandoned")
	_, err = s.Body(ctx, d)
	require.NoError(t, err, "the renewed hold still keeps the body")
	gone, err = s.ExpireHolds(ctx)
	require.NoError(t, err)
	assert.Empty(t, gone)

	require.NoError(t, s.Close())
	s, err = store.Open(dir, opts)
	require.NoError(t, err)
	require.Len(t, s.Holds(), 1)
	assert.Equal(t, clk.Now().Add(-11*24*time.Hour), s.Holds()[0].Renewed, "the renewal time survives a restart")

	// Past the age of the last renewal: the next checkpoint drops it, and
	// the body it kept goes.
	clk.Add(20 * 24 * time.Hour)
	require.NoError(t, s.Compact(ctx))
	assert.Empty(t, s.Holds())
	assert.Equal(t, uint64(1), s.Stats().HoldsExpired)
	_, err = s.Body(ctx, d)
	assert.ErrorIs(t, err, store.ErrNotFound)
	require.NoError(t, s.Close())
	s, err = store.Open(dir, opts)
	require.NoError(t, err)
	assert.Empty(t, s.Holds())
}

// With HoldMaxAge negative, holds never expire.
func TestHoldMaxAgeNegativeKeepsHolds(t *testing.T) {
	ctx := context.Background()
	clk := &stepClock{now: time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)}
	s := open(t, t.TempDir(), &store.Options{Logger: discardLogger(), Now: clk.Now, HoldMaxAge: -1})
	require.NoError(t, s.CreateUser(ctx, "alice"))
	require.NoError(t, s.Hold(ctx, "backup", s.Position()))
	clk.Add(1000 * 24 * time.Hour)
	gone, err := s.ExpireHolds(ctx)
	require.NoError(t, err)
	assert.Empty(t, gone)
	require.NoError(t, s.Compact(ctx))
	assert.Len(t, s.Holds(), 1)
}

// holdsOf returns a store's holds without their renewal times.
func holdsOf(s *store.Store) []store.Hold {
	hs := s.Holds()
	for i := range hs {
		hs[i].Renewed = time.Time{}
	}
	return hs
}
