package backup_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/backup"
)

func TestFirstThenIncrementalThenRebuild(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	src := openStore(t, t.TempDir(), clk)
	fill(t, src, 3, 3, 20)
	target := newFolder(t)
	repo := openRepo(t, target, clk, nil)

	sum, err := repo.Backup(ctx, src)
	require.NoError(t, err)
	assert.True(t, sum.Full)
	assert.Equal(t, 180, sum.NewBodies)
	assert.Equal(t, 180, sum.Messages)
	assert.Less(t, sum.StoredBytes, sum.BodyBytes/3, "compressed")

	// Changes: a copy (no new body), flags, an expunge, a new mailbox, a rename.
	u := "user1@example.org"
	_, err = src.Copy(ctx, u, "INBOX", uids(1, 2, 3), "Folder1")
	require.NoError(t, err)
	_, err = src.AddFlags(ctx, u, "INBOX", uids(4, 5), []string{`\Flagged`, "$Label1"})
	require.NoError(t, err)
	_, err = src.Expunge(ctx, u, "Folder2", uids(1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
	require.NoError(t, err)
	_, err = src.Expunge(ctx, "user2@example.org", "INBOX", uids(19, 20)) // UIDNEXT stays above the last message
	require.NoError(t, err)
	_, err = src.CreateMailbox(ctx, u, "Archive")
	require.NoError(t, err)
	require.NoError(t, src.RenameMailbox(ctx, u, "Folder1", "Old"))
	require.NoError(t, src.Subscribe(ctx, u, "Old"))
	_, err = src.Append(ctx, u, "Archive", nil, time.Time{}, stringsReader("Subject: new\r\n\r\nnew one\r\n"))
	require.NoError(t, err)

	sum, err = repo.Backup(ctx, src)
	require.NoError(t, err)
	assert.False(t, sum.Full, sum.Reason)
	assert.Equal(t, 1, sum.NewBodies, "only the new message's body")
	assert.Equal(t, 3, sum.Reused)
	assert.Equal(t, 2, sum.Expunges)
	assert.Equal(t, 12, sum.Deleted)

	// Rebuild a new store from the backup alone, keeping UIDs.
	dst := openStore(t, t.TempDir(), nil)
	rs, err := repo.Restore(ctx, dst, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
	require.NoError(t, err)
	assert.Equal(t, 180-12+3+1, rs.Messages)
	equalStores(t, src, dst)

	// A new repository object (another process) sees the same.
	repo2 := openRepo(t, target, clk, nil)
	dst2 := openStore(t, t.TempDir(), nil)
	_, err = repo2.Restore(ctx, dst2, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
	require.NoError(t, err)
	equalStores(t, src, dst2)
}
