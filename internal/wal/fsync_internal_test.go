package wal

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestKeepPOnlyWhileFsyncsAreQuick: a group commit's fsync keeps its P only
// with more than one P and while the last fsync was quick; a slow disk, or
// a program with one P, gets the ordinary system call.
func TestKeepPOnlyWhileFsyncsAreQuick(t *testing.T) {
	assert.True(t, keepP(300*time.Microsecond, 2))
	assert.False(t, keepP(300*time.Microsecond, 1), "the only P: nothing else could run during the fsync")
	assert.False(t, keepP(50*time.Millisecond, 8), "a slow disk: the P goes to other goroutines")
	assert.False(t, keepP(fastSync, 8))
}

// TestRawFsync: the raw call syncs a file, and reports a failure: a closed
// file, and the system call's own error as Sync reports it (a pipe cannot
// be synced: EINVAL).
func TestRawFsync(t *testing.T) {
	name := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(name)
	require.NoError(t, err)
	_, err = f.WriteString("x")
	require.NoError(t, err)
	require.NoError(t, rawFsync(f))
	require.NoError(t, f.Close())
	require.ErrorIs(t, rawFsync(f), os.ErrClosed)

	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	want := w.Sync()
	require.Error(t, want)
	got := rawFsync(w)
	require.Error(t, got)
	assert.Equal(t, want.Error(), got.Error())
}
