package backup_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/backup"
	"github.com/resilmail/resilmail/replicate/store"
)

// A deleted message stays restorable for the retention period counted from
// its deletion; "what was deleted between T1 and T2" lists it; after the
// period (and past the kept snapshots) prune removes its body, and the
// repository still verifies.
func TestRetentionFromDeletion(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	src := openStore(t, t.TempDir(), clk)
	fill(t, src, 1, 2, 10)
	target := newFolder(t)
	repo, err := backup.Open(ctx, target, &backup.Options{Logger: quiet(), Now: clk.Now, KeepSnapshots: 2, PackSize: 1 << 10})
	require.NoError(t, err)
	_, err = repo.Backup(ctx, src)
	require.NoError(t, err)

	u := "user0@example.org"
	clk.Add(time.Hour)
	t1 := clk.Now()
	_, err = src.Expunge(ctx, u, "Folder1", uids(3, 4))
	require.NoError(t, err)
	// Delivered and deleted between two backups: still captured by Follow
	// below? Here a run sees both changes, and the body is read while it
	// is... gone: Backup reads after the expunge, so it is lost (no hold).
	t2 := clk.Now()
	clk.Add(time.Hour)
	sum, err := repo.Backup(ctx, src)
	require.NoError(t, err)
	assert.Equal(t, 2, sum.Deleted)

	deleted, err := repo.Messages(ctx, backup.Selection{DeletedFrom: t1, DeletedTo: t2})
	require.NoError(t, err)
	require.Len(t, deleted, 2)
	assert.Equal(t, uint32(3), deleted[0].UID)
	assert.Equal(t, "Folder1", deleted[0].Mailbox)
	none, err := repo.Messages(ctx, backup.Selection{DeletedFrom: t2.Add(time.Second)})
	require.NoError(t, err)
	assert.Empty(t, none)

	// Restore them as new messages into the live store.
	rs, err := repo.Restore(ctx, src, backup.Selection{DeletedFrom: t1, DeletedTo: t2}, backup.RestoreOptions{})
	require.NoError(t, err)
	assert.Equal(t, 2, rs.Messages)
	msgs, err := src.Fetch(ctx, u, "Folder1", store.Query{})
	require.NoError(t, err)
	assert.Len(t, msgs, 10)
	assert.Equal(t, uint32(12), msgs[9].UID, "new UIDs")
	// Again: nothing is duplicated.
	rs, err = repo.Restore(ctx, src, backup.Selection{DeletedFrom: t1, DeletedTo: t2}, backup.RestoreOptions{})
	require.NoError(t, err)
	assert.Equal(t, 0, rs.Messages)
	assert.Equal(t, 2, rs.Present)
	_, err = src.Expunge(ctx, u, "Folder1", uids(11, 12))
	require.NoError(t, err)

	// Six days later the deleted messages are still in a new snapshot and
	// survive prune.
	clk.Add(6 * 24 * time.Hour)
	_, err = repo.Backup(ctx, src)
	require.NoError(t, err)
	_, err = repo.Prune(ctx)
	require.NoError(t, err)
	deleted, err = repo.Messages(ctx, backup.Selection{DeletedFrom: t1, DeletedTo: t2})
	require.NoError(t, err)
	require.Len(t, deleted, 2)
	one := backup.Selection{User: u, Mailbox: "Folder1", UID: 3}
	dst := openStore(t, t.TempDir(), nil)
	rs, err = repo.Restore(ctx, dst, one, backup.RestoreOptions{})
	require.NoError(t, err)
	assert.Equal(t, 1, rs.Messages)
	got, err := dst.Fetch(ctx, u, "Folder1", store.Query{})
	require.NoError(t, err)
	require.Len(t, got, 1)
	b, err := dst.Body(ctx, got[0].Digest)
	require.NoError(t, err)
	assert.Equal(t, body(u, "Folder1", 2), string(b))

	// Past 7 days, two more snapshots: the deleted messages leave the
	// newest snapshot, prune drops the older ones and the bodies.
	clk.Add(2 * 24 * time.Hour)
	_, err = repo.Backup(ctx, src)
	require.NoError(t, err)
	clk.Add(time.Hour)
	sum, err = repo.Backup(ctx, src)
	require.NoError(t, err)
	assert.Equal(t, 0, sum.Deleted)
	ps, err := repo.Prune(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, ps.SnapshotsKept)
	assert.Positive(t, ps.BodiesRemoved, "%+v", ps)
	deleted, err = repo.Messages(ctx, backup.Selection{DeletedFrom: t1, DeletedTo: t2})
	require.NoError(t, err)
	assert.Empty(t, deleted)
	_, err = repo.Verify(ctx, backup.VerifyOptions{})
	require.NoError(t, err)
	// And everything still restores exactly.
	dst2 := openStore(t, t.TempDir(), nil)
	_, err = repo.Restore(ctx, dst2, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
	require.NoError(t, err)
	equalStores(t, src, dst2)
}

// A point-in-time restore reads the newest snapshot before the time and
// the changes after it up to the time.
func TestPointInTime(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	src := openStore(t, t.TempDir(), clk)
	fill(t, src, 1, 1, 5)
	repo := openRepo(t, newFolder(t), clk, nil)
	_, err := repo.Backup(ctx, src)
	require.NoError(t, err)
	u := "user0@example.org"
	clk.Add(time.Minute)
	_, err = src.Append(ctx, u, "INBOX", nil, time.Time{}, strings.NewReader("Subject: six\r\n\r\n6\r\n"))
	require.NoError(t, err)
	clk.Add(time.Minute)
	between := clk.Now()
	clk.Add(time.Minute)
	_, err = src.Expunge(ctx, u, "INBOX", uids(1, 2))
	require.NoError(t, err)
	_, err = repo.Backup(ctx, src)
	require.NoError(t, err)

	at, err := repo.Messages(ctx, backup.Selection{At: between})
	require.NoError(t, err)
	assert.Len(t, at, 6, "five, plus the sixth, before the expunge")
	now, err := repo.Messages(ctx, backup.Selection{})
	require.NoError(t, err)
	assert.Len(t, now, 4)
	snaps, err := repo.Snapshots(ctx)
	require.NoError(t, err)
	require.Len(t, snaps, 2)
	first, err := repo.Messages(ctx, backup.Selection{Snapshot: snaps[0].Name})
	require.NoError(t, err)
	assert.Len(t, first, 5)
	_, err = repo.Messages(ctx, backup.Selection{At: snaps[0].Time.Add(-time.Hour)})
	assert.ErrorIs(t, err, backup.ErrNotCovered)

	// Rebuild as of between, keeping UIDs.
	dst := openStore(t, t.TempDir(), nil)
	_, err = repo.Restore(ctx, dst, backup.Selection{At: between}, backup.RestoreOptions{KeepUIDs: true})
	require.NoError(t, err)
	got, err := dst.Fetch(ctx, u, "INBOX", store.Query{})
	require.NoError(t, err)
	assert.Len(t, got, 6)
}

// When the store's journal no longer reaches back to the backup's
// position, the run reads the whole state, and what disappeared meanwhile
// is recorded as deleted.
func TestJournalCompactedFallsBackToFullRead(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	dir := t.TempDir()
	// HoldBytes: 1 lets compaction drop the journal the backup holds.
	src, err := store.Open(dir, &store.Options{Logger: quiet(), Now: clk.Now, SegmentSize: 4 << 10, KeepChanges: 1, KeepBytes: 1, HoldBytes: 1})
	require.NoError(t, err)
	defer src.Close()
	fill(t, src, 1, 1, 10)
	repo := openRepo(t, newFolder(t), clk, nil)
	_, err = repo.Backup(ctx, src)
	require.NoError(t, err)
	u := "user0@example.org"
	_, err = src.Expunge(ctx, u, "INBOX", uids(1))
	require.NoError(t, err)
	for i := 0; i < 20; i++ {
		_, err = src.Append(ctx, u, "INBOX", nil, time.Time{}, strings.NewReader(body(u, "x", 100+i)))
		require.NoError(t, err)
	}
	require.NoError(t, src.Compact(ctx))
	require.Greater(t, src.OldestPosition(), uint64(20))
	sum, err := repo.Backup(ctx, src)
	require.NoError(t, err)
	assert.True(t, sum.Full)
	assert.Contains(t, sum.Reason, "journal starts at")
	assert.Equal(t, 29, sum.Messages)
	assert.Equal(t, 1, sum.Deleted)
	dst := openStore(t, t.TempDir(), nil)
	_, err = repo.Restore(ctx, dst, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
	require.NoError(t, err)
	equalStores(t, src, dst)
	// And incremental again afterwards.
	_, err = src.Expunge(ctx, u, "INBOX", uids(2))
	require.NoError(t, err)
	sum, err = repo.Backup(ctx, src)
	require.NoError(t, err)
	assert.False(t, sum.Full)
	assert.Equal(t, 2, sum.Deleted)
}

func TestEncryption(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir(), nil)
	fill(t, src, 1, 1, 3)
	target := newFolder(t)
	key := []byte(strings.Repeat("k", 40))
	repo := openRepo(t, target, nil, key)
	_, err := repo.Backup(ctx, src)
	require.NoError(t, err)

	_, err = backup.Open(ctx, target, &backup.Options{Logger: quiet()})
	assert.ErrorIs(t, err, backup.ErrWrongKey)
	_, err = backup.Open(ctx, target, &backup.Options{Logger: quiet(), Key: []byte(strings.Repeat("x", 40))})
	assert.ErrorIs(t, err, backup.ErrWrongKey)
	// No body text in any blob.
	blobs, err := target.List(ctx, "")
	require.NoError(t, err)
	for _, bi := range blobs {
		b, err := target.Get(ctx, bi.Name, 0, -1)
		require.NoError(t, err)
		assert.NotContains(t, string(b), "Subject:", bi.Name)
		assert.NotContains(t, string(b), "user0@example.org", bi.Name)
	}
	dst := openStore(t, t.TempDir(), nil)
	_, err = openRepo(t, target, nil, key).Restore(ctx, dst, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
	require.NoError(t, err)
	equalStores(t, src, dst)
}

// Verify finds a flipped byte in a pack, a missing pack and a torn
// manifest, naming what is affected; a sampled verify reads a part.
func TestVerifyFindsDamage(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir(), nil)
	fill(t, src, 2, 2, 10)
	target := newFolder(t)
	repo, err := backup.Open(ctx, target, &backup.Options{Logger: quiet(), PackSize: 1 << 10})
	require.NoError(t, err)
	_, err = repo.Backup(ctx, src)
	require.NoError(t, err)
	rep, err := repo.Verify(ctx, backup.VerifyOptions{})
	require.NoError(t, err)
	assert.Equal(t, 40, rep.Bodies)
	var sampled int
	for part := 0; part < 3; part++ {
		rep, err := repo.Verify(ctx, backup.VerifyOptions{Part: part, Of: 3})
		require.NoError(t, err)
		sampled += rep.Bodies
		assert.Less(t, rep.Bodies, 40)
	}
	assert.Equal(t, 40, sampled, "the parts cover everything once")

	packs, err := target.List(ctx, "packs/")
	require.NoError(t, err)
	require.Greater(t, len(packs), 2)
	flip := func(name string, at int64) {
		b, err := target.Get(ctx, name, 0, -1)
		require.NoError(t, err)
		b[at] ^= 0x40
		require.NoError(t, target.Put(ctx, name, b))
	}
	flip(packs[0].Name, packs[0].Size/2)
	_, err = repo.Verify(ctx, backup.VerifyOptions{})
	require.ErrorIs(t, err, backup.ErrCorrupt)
	assert.Contains(t, err.Error(), strings.TrimPrefix(packs[0].Name, "packs/"))
	// A restore that needs the damaged body fails and says which.
	dst := openStore(t, t.TempDir(), nil)
	_, err = repo.Restore(ctx, dst, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
	require.ErrorIs(t, err, backup.ErrCorrupt)

	require.NoError(t, target.Delete(ctx, packs[1].Name))
	rep, err = repo.Verify(ctx, backup.VerifyOptions{})
	require.Error(t, err)
	assert.True(t, containsAny(rep.Problems, "is missing"), rep.Problems)

	snaps, err := repo.Snapshots(ctx)
	require.NoError(t, err)
	b, err := target.Get(ctx, snaps[0].Name, 0, -1)
	require.NoError(t, err)
	require.NoError(t, target.Put(ctx, snaps[0].Name, b[:len(b)/2]))
	_, err = repo.Messages(ctx, backup.Selection{})
	require.ErrorIs(t, err, backup.ErrCorrupt)
	assert.Contains(t, err.Error(), snaps[0].Name)
}

func containsAny(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// A second run is refused while one holds the lock; a lock whose holder
// is gone is taken over.
func TestLock(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	src := openStore(t, t.TempDir(), clk)
	fill(t, src, 1, 1, 2)
	target := newFolder(t)
	repo := openRepo(t, target, clk, nil)

	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- repo.Follow(fctx, src) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := target.Get(ctx, "lock", 0, -1); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "the follower never took the lock")
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
	_, err := repo.Backup(ctx, src)
	require.ErrorIs(t, err, backup.ErrLocked)
	_, err = repo.Prune(ctx)
	require.ErrorIs(t, err, backup.ErrLocked)
	cancel()
	require.NoError(t, <-done)
	_, err = target.Get(ctx, "lock", 0, -1)
	require.True(t, errors.Is(err, backup.ErrNotExist), "released: %v", err)

	// A lock left by a crashed run on another host: valid until it expires.
	stale := `{"owner":"0123","host":"elsewhere","pid":1,"op":"backup","acquired":"2026-03-01T12:00:00Z","expires":"2026-03-01T12:10:00Z"}`
	require.NoError(t, target.Put(ctx, "lock", []byte(stale)))
	_, err = repo.Backup(ctx, src)
	require.ErrorIs(t, err, backup.ErrLocked)
	clk.Add(time.Hour)
	_, err = repo.Backup(ctx, src)
	require.NoError(t, err)
}

// The backup holds the store's journal and bodies at its position: a
// message delivered and deleted between two runs is still read (the store
// keeps its body for the hold), so nothing is lost; without the hold it
// would be counted as lost.
func TestHoldKeepsWhatArrivesAndGoesBetweenRuns(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir(), nil)
	fill(t, src, 1, 1, 2)
	repo := openRepo(t, newFolder(t), nil, nil)
	_, err := repo.Backup(ctx, src)
	require.NoError(t, err)
	holds := src.Holds()
	require.Len(t, holds, 1, "the backup holds the store at its position")
	assert.True(t, holds[0].Bodies)

	u := "user0@example.org"
	before := time.Now()
	uid, err := src.Append(ctx, u, "INBOX", nil, time.Time{}, strings.NewReader("Subject: brief\r\n\r\nhere and gone\r\n"))
	require.NoError(t, err)
	_, err = src.Expunge(ctx, u, "INBOX", uids(uid))
	require.NoError(t, err)
	sum, err := repo.Backup(ctx, src)
	require.NoError(t, err)
	assert.Equal(t, 0, sum.Lost)
	assert.Equal(t, 1, sum.NewBodies)
	gone, err := repo.Messages(ctx, backup.Selection{DeletedFrom: before})
	require.NoError(t, err)
	require.Len(t, gone, 1)
	assert.False(t, gone[0].NoBody)
	assert.Equal(t, src.Holds()[0].Position, src.Position(), "the hold moved on")
}
