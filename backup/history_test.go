package backup_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/backup"
)

// A backup that follows a store and is then pointed at another one (a
// store rebuilt or replaced, whose journal positions mean something else)
// reads the new store in full and starts a new lineage, instead of
// applying the new journal from the old position and skipping what came
// before it.
func TestBackupOfAnotherStoreStartsANewChain(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	a := openStore(t, t.TempDir(), clk)
	fill(t, a, 1, 1, 5)
	repo := openRepo(t, newFolder(t), clk, nil)
	sum, err := repo.Backup(ctx, a)
	require.NoError(t, err)
	require.True(t, sum.Full)
	sum, err = repo.Backup(ctx, a)
	require.NoError(t, err)
	require.False(t, sum.Full, "the same store goes on incrementally")

	// Another store, its journal further on than the backup's position.
	b := openStore(t, t.TempDir(), clk)
	fill(t, b, 2, 2, 5)
	for i := 0; i < 5; i++ {
		_, err := b.Append(ctx, "user1@example.org", "INBOX", nil, time.Time{}, strings.NewReader(body("b", "x", i)))
		require.NoError(t, err)
	}
	require.Greater(t, b.Position(), sum.To)
	sum, err = repo.Backup(ctx, b)
	require.NoError(t, err)
	assert.True(t, sum.Full, "another store's journal is not a continuation")
	assert.Contains(t, sum.Reason, "history")
	assert.Equal(t, 25, sum.Messages)
	assert.Equal(t, 5, sum.Deleted, "what only the old store had is recorded as deleted")

	dst := openStore(t, t.TempDir(), nil)
	_, err = repo.Restore(ctx, dst, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
	require.NoError(t, err)
	equalStores(t, b, dst)
	snaps, err := repo.Snapshots(ctx)
	require.NoError(t, err)
	require.Len(t, snaps, 3)
	assert.NotEqual(t, snaps[1].Lineage, snaps[2].Lineage, fmt.Sprintf("%+v", snaps))
}
