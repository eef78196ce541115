package quarantine_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/quarantine"
)

func TestStoreCapsItsEntries(t *testing.T) {
	// A flood of rejects once grew the store without bound: now a new
	// entry beyond MaxEntries is refused with ErrFull, while an entry
	// already held may arrive again (a retried shipment) and deleting
	// makes room.
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), &quarantine.Options{MaxEntries: 3})
	for i := range 3 {
		put(t, s, testEntry(fmt.Sprintf("e%d", i), t0, "x@bad.example", "alice@example.org"), "")
	}
	err := s.Put(ctx, testEntry("e3", t0, "x@bad.example", "alice@example.org"), nil)
	require.ErrorIs(t, err, quarantine.ErrFull)
	require.NoError(t, s.Put(ctx, testEntry("e1", t0, "x@bad.example", "alice@example.org"), nil), "an entry held already")
	errs := s.PutBatch(ctx, []quarantine.Item{{Entry: testEntry("e4", t0, "x@bad.example", "bob@example.org")}, {Entry: testEntry("e0", t0, "x@bad.example", "alice@example.org")}})
	assert.ErrorIs(t, errs[0], quarantine.ErrFull)
	assert.NoError(t, errs[1])
	assert.Equal(t, int64(3), s.Stats().Entries)
}

func TestStoreConcurrentPutsShareCommits(t *testing.T) {
	// Concurrent Puts go through bbolt's Batch: every one is stored, and
	// each returned only once it is durable (the store reopens with all).
	dir := t.TempDir()
	s := openTestStore(t, dir, nil)
	const writers, each = 16, 25
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				e := testEntry(fmt.Sprintf("w%d-%d", w, i), t0, "x@bad.example", "alice@example.org")
				assert.NoError(t, s.Put(context.Background(), e, nil))
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, int64(writers*each), s.Stats().Entries)
	require.NoError(t, s.Close())
	s = openTestStore(t, dir, nil)
	assert.Equal(t, int64(writers*each), s.Stats().Entries)
}
