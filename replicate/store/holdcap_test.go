package store_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

// TestHoldBodyBytesCap: the bodies of removed messages kept for holds are
// capped: over HoldBodyBytes, the hold with the lowest position is dropped
// (logged, counted), the bodies only it kept are removed, and the other
// hold keeps its own; a store with no cap keeps everything.
func TestHoldBodyBytesCap(t *testing.T) {
	ctx := context.Background()
	for _, capped := range []bool{true, false} {
		var logs logBuffer
		opts := &store.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), Now: newClock().Now, HoldBodyBytes: 10 << 10, HoldMaxAge: -1}
		if !capped {
			opts.HoldBodyBytes = -1
		}
		s := open(t, t.TempDir(), opts)
		require.NoError(t, s.CreateUser(ctx, "alice"))
		body := func(i int) string { return msg("big", strings.Repeat(string(rune('a'+i)), 4<<10)) }
		var uids []uint32
		for i := range 4 {
			uids = append(uids, appendMsg(t, s, "alice", "INBOX", body(i)))
		}
		require.NoError(t, s.Hold(ctx, "backup-old", s.Position()))
		_, err := s.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(uids[0], uids[1]))
		require.NoError(t, err)
		require.NoError(t, s.Hold(ctx, "backup-new", s.Position()))
		_, err = s.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(uids[2]))
		require.NoError(t, err)

		// 3 bodies of 4 KiB kept for the holds: over 10 KiB.
		gone, err := s.ExpireHolds(ctx)
		require.NoError(t, err)
		has := func(i int) bool {
			_, err := s.Body(ctx, resilmail.DigestOf([]byte(body(i))))
			return err == nil
		}
		if !capped {
			assert.Empty(t, gone)
			assert.Len(t, s.Holds(), 2)
			assert.True(t, has(0) && has(1) && has(2))
			continue
		}
		assert.Equal(t, []string{"backup-old"}, gone)
		require.Len(t, s.Holds(), 1)
		assert.Equal(t, "backup-new", s.Holds()[0].Name)
		assert.Equal(t, uint64(1), s.Stats().HoldsOverCap)
		assert.False(t, has(0), "kept only for the dropped hold")
		assert.False(t, has(1))
		assert.True(t, has(2), "the newer hold keeps its body")
		assert.True(t, has(3), "a live message")
		ts, _, err := s.Tombstones(ctx, 0, 0)
		require.NoError(t, err)
		assert.Len(t, ts, 1)
		assert.Contains(t, logs.String(), "HoldBodyBytes")
	}
}
