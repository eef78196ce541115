package durable_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/durable"
)

// faultFS fails the named step once.
type faultFS struct {
	fail  string // "create", "write", "sync", "rename", "syncdir"
	steps []string
}

var errInjected = errors.New("injected failure")

type faultFile struct {
	*os.File
	fs *faultFS
}

func (f faultFile) Write(b []byte) (int, error) {
	f.fs.steps = append(f.fs.steps, "write")
	if f.fs.fail == "write" {
		n, _ := f.File.Write(b[:len(b)/2])
		return n, errInjected
	}
	return f.File.Write(b)
}

func (f faultFile) Sync() error {
	f.fs.steps = append(f.fs.steps, "sync")
	if f.fs.fail == "sync" {
		return errInjected
	}
	return f.File.Sync()
}

func (fs *faultFS) CreateTemp(dir, pattern string) (durable.File, error) {
	fs.steps = append(fs.steps, "create")
	if fs.fail == "create" {
		return nil, errInjected
	}
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return faultFile{f, fs}, nil
}

func (fs *faultFS) Rename(o, n string) error {
	fs.steps = append(fs.steps, "rename")
	if fs.fail == "rename" {
		return errInjected
	}
	return os.Rename(o, n)
}

func (fs *faultFS) Remove(name string) error { return os.Remove(name) }

func (fs *faultFS) SyncDir(dir string) error {
	fs.steps = append(fs.steps, "syncdir")
	if fs.fail == "syncdir" {
		return errInjected
	}
	return durable.SyncDir(dir)
}

func TestWriteFileOrder(t *testing.T) {
	dir := t.TempDir()
	fs := &faultFS{}
	path := filepath.Join(dir, "manifest")
	require.NoError(t, durable.WriteFile(fs, path, []byte("v1"), 0o600))
	// The data is synced before the rename makes it visible, and the folder
	// after it.
	assert.Equal(t, []string{"create", "write", "sync", "rename", "syncdir"}, fs.steps)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "v1", string(got))
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
}

func TestWriteFileFailuresKeepOldContent(t *testing.T) {
	for _, step := range []string{"create", "write", "sync", "rename"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "manifest")
			require.NoError(t, durable.WriteFile(durable.OS, path, []byte("old"), 0o644))
			err := durable.WriteFile(&faultFS{fail: step}, path, []byte("new content"), 0o644)
			require.ErrorIs(t, err, errInjected)
			got, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Equal(t, "old", string(got), "a failed write must leave the old file")
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			assert.Len(t, entries, 1, "no temporary file is left behind")
		})
	}
	t.Run("syncdir", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "manifest")
		err := durable.WriteFile(&faultFS{fail: "syncdir"}, path, []byte("new"), 0o644)
		assert.ErrorIs(t, err, errInjected, "a failed folder sync is reported")
	})
}

func TestLock(t *testing.T) {
	dir := t.TempDir()
	unlock, err := durable.Lock(dir)
	require.NoError(t, err)
	_, err = durable.Lock(dir)
	require.ErrorIs(t, err, durable.ErrLocked, "a second writer is refused")
	require.NoError(t, unlock())
	unlock2, err := durable.Lock(dir)
	require.NoError(t, err, "the lock is free again after unlock")
	require.NoError(t, unlock2())
}

func TestFreeSpace(t *testing.T) {
	n, err := durable.FreeSpace(t.TempDir())
	require.NoError(t, err)
	assert.Positive(t, n)
	_, err = durable.FreeSpace(filepath.Join(t.TempDir(), "missing"))
	assert.Error(t, err)
}

func TestMkdirAll(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a", "b", "c")
	require.NoError(t, durable.MkdirAll(dir, 0o700))
	for _, d := range []string{filepath.Join(base, "a"), filepath.Join(base, "a", "b"), dir} {
		fi, err := os.Stat(d)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), d)
	}
	require.NoError(t, durable.MkdirAll(dir, 0o700), "an existing folder is fine")
	f := filepath.Join(base, "file")
	require.NoError(t, os.WriteFile(f, nil, 0o600))
	assert.Error(t, durable.MkdirAll(f, 0o700))
}
