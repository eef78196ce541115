package backup_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/backup"
	"github.com/resilmail/resilmail/backup/backuptest"
)

func TestFolderTarget(t *testing.T) {
	backuptest.TestTarget(t, newFolder(t))
}

// newRemote serves a folder under /repo/ over TLS and returns a client of
// it that presents secret.
func newRemote(t *testing.T, secret []byte) (*backup.Remote, *backup.Folder) {
	t.Helper()
	f := newFolder(t)
	mux := http.NewServeMux()
	mux.Handle("/repo/", http.StripPrefix("/repo", backup.NewHandler(f, &backup.HandlerOptions{Secret: []byte("shared secret"), Logger: quiet()})))
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	r, err := backup.NewRemote(srv.URL+"/repo/", secret, srv.Client())
	require.NoError(t, err)
	return r, f
}

func TestRemoteTarget(t *testing.T) {
	r, _ := newRemote(t, []byte("shared secret"))
	backuptest.TestTarget(t, r)
}

func TestRemoteRefusesAWrongSecret(t *testing.T) {
	ctx := context.Background()
	r, _ := newRemote(t, []byte("another secret"))
	err := r.Put(ctx, "x", []byte("y"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "401")
	_, err = backup.NewRemote("http://backup.example.net/", nil, nil)
	assert.Error(t, err, "plain HTTP off loopback")
}

// A whole backup and restore through the remote target.
func TestBackupToRemote(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir(), nil)
	fill(t, src, 2, 2, 5)
	r, _ := newRemote(t, []byte("shared secret"))
	repo := openRepo(t, r, nil, []byte("0123456789abcdef0123456789abcdef"))
	_, err := repo.Backup(ctx, src)
	require.NoError(t, err)
	_, err = repo.Verify(ctx, backup.VerifyOptions{})
	require.NoError(t, err)
	dst := openStore(t, t.TempDir(), nil)
	_, err = repo.Restore(ctx, dst, backup.Selection{User: "user1@example.org", Mailbox: "Folder1", UID: 3}, backup.RestoreOptions{})
	require.NoError(t, err)
	dst2 := openStore(t, t.TempDir(), nil)
	_, err = repo.Restore(ctx, dst2, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
	require.NoError(t, err)
	equalStores(t, src, dst2)
}
