package backup_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/backup"
)

// pruneOnFirstPackRead is a Target on which the first read of a pack
// first lets another process's Prune run to the end.
type pruneOnFirstPackRead struct {
	backup.Target
	once  sync.Once
	prune func()
}

func (p *pruneOnFirstPackRead) Get(ctx context.Context, name string, off, length int64) ([]byte, error) {
	if strings.HasPrefix(name, "packs/") {
		p.once.Do(p.prune)
	}
	return p.Target.Get(ctx, name, off, length)
}

// A restore that runs while another process prunes (rewriting the pack
// that holds the bodies it reads, removing the snapshot it does not use)
// still restores everything: whole into an empty store, and message by
// message into a live one.
func TestRestoreConcurrentWithPrune(t *testing.T) {
	for _, keep := range []bool{true, false} {
		name := "new messages"
		if keep {
			name = "keep UIDs"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			clk := newClock()
			src := openStore(t, t.TempDir(), clk)
			fill(t, src, 1, 1, 20)
			folder := newFolder(t)
			opts := func() *backup.Options {
				return &backup.Options{Logger: quiet(), Now: clk.Now, KeepSnapshots: 1, Retention: time.Hour, PackSize: 1 << 20}
			}
			repo, err := backup.Open(ctx, folder, opts())
			require.NoError(t, err)
			_, err = repo.Backup(ctx, src)
			require.NoError(t, err)
			u := "user0@example.org"
			_, err = src.Expunge(ctx, u, "INBOX", uids(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12))
			require.NoError(t, err)
			_, err = repo.Backup(ctx, src)
			require.NoError(t, err)
			clk.Add(2 * time.Hour) // past retention: the next snapshot drops the deleted messages
			_, err = src.Append(ctx, u, "INBOX", nil, time.Time{}, strings.NewReader(body(u, "late", 1)))
			require.NoError(t, err)
			_, err = repo.Backup(ctx, src)
			require.NoError(t, err)

			var pruned backup.PruneSummary
			target := &pruneOnFirstPackRead{Target: folder}
			target.prune = func() {
				other, err := backup.Open(ctx, folder, opts()) // another process
				require.NoError(t, err)
				pruned, err = other.Prune(ctx)
				require.NoError(t, err)
			}
			restorer, err := backup.Open(ctx, target, opts()) // its index read before the prune
			require.NoError(t, err)
			dst := openStore(t, t.TempDir(), nil)
			if !keep {
				require.NoError(t, dst.CreateUser(ctx, u))
			}
			sum, err := restorer.Restore(ctx, dst, backup.Selection{}, backup.RestoreOptions{KeepUIDs: keep})
			require.NoError(t, err)
			assert.Equal(t, 1, pruned.PacksRewritten, "the prune rewrote the pack the restore reads")
			assert.Positive(t, pruned.SnapshotsRemoved)
			assert.Equal(t, 9, sum.Messages)
			assert.Zero(t, sum.NoBody)
			if keep {
				equalStores(t, src, dst)
			} else {
				st, err := dst.MailboxStatus(ctx, u, "INBOX")
				require.NoError(t, err)
				assert.Equal(t, 9, st.Messages)
			}
		})
	}
}
