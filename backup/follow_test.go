package backup_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/backup"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond) // polling with a deadline
	}
}

// Follow captures a message delivered and deleted between two snapshots:
// its body is in the repository and its deletion time is recorded.
func TestFollowCapturesWhatComesAndGoes(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir(), nil)
	fill(t, src, 1, 1, 3)
	target := newFolder(t)
	repo, err := backup.Open(ctx, target, &backup.Options{Logger: quiet(), FlushEvery: 5 * time.Millisecond, SnapshotEvery: time.Hour})
	require.NoError(t, err)
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- repo.Follow(fctx, src) }()

	u := "user0@example.org"
	waitFor(t, "the first snapshot", func() bool {
		s, _ := repo.Snapshots(ctx)
		return len(s) == 1
	})
	text := "Subject: here and gone\r\n\r\nbriefly\r\n"
	uid, err := src.Append(ctx, u, "INBOX", nil, time.Time{}, strings.NewReader(text))
	require.NoError(t, err)
	waitFor(t, "the append in the repository", func() bool {
		m, err := repo.Messages(ctx, backup.Selection{User: u, UID: uid})
		return err == nil && len(m) == 1
	})
	before := time.Now()
	_, err = src.Expunge(ctx, u, "INBOX", uids(uid))
	require.NoError(t, err)
	expungedAt := src.Position()
	waitFor(t, "the expunge in the repository", func() bool {
		m, err := repo.Messages(ctx, backup.Selection{DeletedFrom: before})
		return err == nil && len(m) == 1
	})
	cancel()
	require.NoError(t, <-done)

	gone, err := repo.Messages(ctx, backup.Selection{DeletedFrom: before})
	require.NoError(t, err)
	require.Len(t, gone, 1)
	assert.False(t, gone[0].NoBody)
	assert.WithinDuration(t, time.Now(), gone[0].Deleted, time.Minute)
	snaps, err := repo.Snapshots(ctx)
	require.NoError(t, err)
	assert.Less(t, snaps[len(snaps)-1].Position, expungedAt, "no snapshot was due: the changes alone hold the deletion")

	dst := openStore(t, t.TempDir(), nil)
	rs, err := repo.Restore(ctx, dst, backup.Selection{DeletedFrom: before}, backup.RestoreOptions{})
	require.NoError(t, err)
	assert.Equal(t, 1, rs.Messages)
}

// deafSource is a Source whose Wait never reports a change: Follow reads
// nothing after its first catch-up until it is stopped, as a follower not
// yet scheduled when the stop comes.
type deafSource struct{ backup.Source }

func (deafSource) Wait(ctx context.Context, after uint64) (uint64, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

// A clean stop of Follow reads what the journal holds by then before it
// writes: a change the store made durable before the stop is in the
// repository, even if Follow had not read it yet (the store may be lost
// next, and the repository is all that is left).
func TestFollowStoppedWritesWhatTheJournalHolds(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir(), nil)
	fill(t, src, 1, 1, 3)
	repo, err := backup.Open(ctx, newFolder(t), &backup.Options{Logger: quiet(), FlushEvery: time.Hour, SnapshotEvery: time.Hour})
	require.NoError(t, err)
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- repo.Follow(fctx, deafSource{src}) }()
	waitFor(t, "the first snapshot", func() bool {
		s, _ := repo.Snapshots(ctx)
		return len(s) == 1
	})

	u := "user0@example.org"
	uid, err := src.Append(ctx, u, "INBOX", nil, time.Time{}, strings.NewReader("Subject: just before the stop\r\n\r\nlate\r\n"))
	require.NoError(t, err)
	before := time.Now()
	_, err = src.Expunge(ctx, u, "INBOX", uids(1))
	require.NoError(t, err)
	cancel()
	require.NoError(t, <-done)

	m, err := repo.Messages(ctx, backup.Selection{User: u, UID: uid})
	require.NoError(t, err)
	assert.Len(t, m, 1, "the append made just before the stop is in the repository")
	gone, err := repo.Messages(ctx, backup.Selection{DeletedFrom: before})
	require.NoError(t, err)
	assert.Len(t, gone, 1, "and so is the expunge")
}
