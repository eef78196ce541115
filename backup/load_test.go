package backup_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/backup"
	"github.com/resilmail/resilmail/replicate/store"
)

// A full restore keeping UIDs into an empty store loads it at once (no
// body through the store's journal); into a store that holds something it
// goes mailbox by mailbox; both give the backed-up state.
func TestRestoreLoadsAnEmptyStore(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	src := openStore(t, t.TempDir(), clk)
	fill(t, src, 3, 3, 30)
	u := "user1@example.org"
	_, err := src.Expunge(ctx, u, "INBOX", uids(29, 30)) // UIDNEXT above the last message
	require.NoError(t, err)
	_, err = src.Copy(ctx, u, "Folder1", uids(1, 2), "INBOX") // a body shared by two messages
	require.NoError(t, err)
	require.NoError(t, src.Subscribe(ctx, u, "Folder2"))
	repo := openRepo(t, newFolder(t), clk, nil)
	_, err = repo.Backup(ctx, src)
	require.NoError(t, err)

	var mu sync.Mutex
	var most backup.Progress
	progress := func(p backup.Progress) {
		mu.Lock()
		defer mu.Unlock()
		if p.Done > most.Done {
			most = p
		}
	}
	opts := &backup.Options{Logger: quiet(), Progress: progress, Parallelism: 3}
	repo2, err := backup.Open(ctx, repo.Target(), opts)
	require.NoError(t, err)
	dir := t.TempDir()
	dst := openStore(t, dir, nil)
	sum, err := repo2.Restore(ctx, dst, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
	require.NoError(t, err)
	assert.Equal(t, 270-2+2, sum.Messages)
	assert.Equal(t, 9, sum.Mailboxes)
	equalStores(t, src, dst)
	st := dst.Stats()
	assert.Zero(t, st.BodyWrites, "loaded: no body through the journal")
	assert.Equal(t, 268, st.Bodies)
	_, err = dst.Changes(ctx, 0, 10)
	assert.ErrorIs(t, err, store.ErrTooFarBehind, "loaded: the journal starts after the load")
	mu.Lock()
	assert.Equal(t, int64(270), most.Done)
	assert.Equal(t, most.Total, most.Done)
	mu.Unlock()
	require.NoError(t, dst.Close())
	dst = openStore(t, dir, nil)
	equalStores(t, src, dst)

	// A store that holds a user already: mailbox by mailbox, same result
	// for the restored users.
	busy := openStore(t, t.TempDir(), nil)
	require.NoError(t, busy.CreateUser(ctx, "other@example.org"))
	sum, err = repo2.Restore(ctx, busy, backup.Selection{User: u}, backup.RestoreOptions{KeepUIDs: true})
	require.NoError(t, err)
	assert.Equal(t, 90, sum.Messages)
	assert.Positive(t, busy.Stats().BodyWrites, "not loaded: through the journal")
	for _, box := range []string{"INBOX", "Folder1", "Folder2"} {
		w, err := src.MailboxStatus(ctx, u, box)
		require.NoError(t, err)
		g, err := busy.MailboxStatus(ctx, u, box)
		require.NoError(t, err)
		assert.Equal(t, w, g)
	}
}

// A body the repository lacks: the load leaves its message out and keeps
// its UID given (UIDNEXT as backed up), and reports it.
func TestRestoreLoadWithoutABody(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	src := openStore(t, t.TempDir(), clk)
	fill(t, src, 1, 1, 5)
	target := newFolder(t)
	repo := openRepo(t, target, clk, nil)
	_, err := repo.Backup(ctx, src)
	require.NoError(t, err)
	// The last message's body in a pack of its own, then lost.
	u := "user0@example.org"
	_, err = src.Append(ctx, u, "INBOX", nil, clk.Now(), strings.NewReader(body(u, "late", 1)))
	require.NoError(t, err)
	before, err := target.List(ctx, "packs/")
	require.NoError(t, err)
	_, err = repo.Backup(ctx, src)
	require.NoError(t, err)
	after, err := target.List(ctx, "packs/")
	require.NoError(t, err)
	require.Len(t, after, len(before)+1)
	known := map[string]bool{}
	for _, b := range before {
		known[b.Name] = true
	}
	for _, b := range after {
		if !known[b.Name] {
			require.NoError(t, target.Delete(ctx, b.Name))
		}
	}
	dst := openStore(t, t.TempDir(), nil)
	sum, err := openRepo(t, target, nil, nil).Restore(ctx, dst, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
	require.NoError(t, err)
	assert.Equal(t, 1, sum.NoBody)
	assert.Equal(t, 5, sum.Messages)
	w, err := src.MailboxStatus(ctx, u, "INBOX")
	require.NoError(t, err)
	g, err := dst.MailboxStatus(ctx, u, "INBOX")
	require.NoError(t, err)
	assert.Equal(t, w.UIDNext, g.UIDNext)
	assert.Equal(t, w.UIDValidity, g.UIDValidity)
	assert.Equal(t, 5, g.Messages)
}

// replicate/store's *Store is every interface backup consumes.
var (
	_ backup.Source      = (*store.Store)(nil)
	_ backup.Historian   = (*store.Store)(nil)
	_ backup.Holder      = (*store.Store)(nil)
	_ backup.Destination = (*store.Store)(nil)
	_ backup.Loader      = (*store.Store)(nil)
)
