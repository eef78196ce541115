package queue_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/wal"
	"github.com/resilmail/resilmail/queue"
)

// failingReads makes reads of the first log segment fail with EMFILE.
type failingReads struct {
	*os.File
	fails *atomic.Int64
}

func (f failingReads) ReadAt(b []byte, off int64) (int, error) {
	f.fails.Add(1)
	return 0, &os.PathError{Op: "read", Path: f.Name(), Err: syscall.EMFILE}
}

// Compaction that cannot read a message (not damage: too many open files)
// stops and keeps the segment; it never restates the message without its
// body as corrupt.
func TestCompactionStopsOnReadErrors(t *testing.T) {
	dir := t.TempDir()
	opts := quietOpts()
	opts.SegmentSize = 32 << 10
	q := open(t, dir, newSink(nil), opts)
	for i := 0; i < 60; i++ {
		_, err := q.Enqueue(context.Background(), envelope(fmt.Sprint("m", i), "u@example.org"), strings.NewReader(strings.Repeat("z", 2000)))
		require.NoError(t, err)
	}
	_, err := q.Hold(queue.Filter{})
	require.NoError(t, err)
	_, err = q.Delete(queue.Filter{IDs: func() []string {
		var ids []string
		for i := 1; i < 60; i++ {
			ids = append(ids, fmt.Sprint("m", i))
		}
		return ids
	}()})
	require.NoError(t, err)
	require.NoError(t, q.Close())

	var fails atomic.Int64
	var armed atomic.Bool // after Open's replay
	opts2 := quietOpts()
	opts2.SegmentSize = 32 << 10
	queue.SetOpenFile(opts2, func(name string, flag int, perm os.FileMode) (wal.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil || !armed.Load() || flag != os.O_RDONLY || filepath.Base(name) != "0000000000000001.wal" {
			return f, err
		}
		return failingReads{File: f, fails: &fails}, nil
	})
	q2, err := queue.Open(dir, newSink(nil), opts2)
	require.NoError(t, err)
	armed.Store(true)
	run(t, q2)
	waitFor(t, "compaction tried", func() bool { return fails.Load() > 0 })
	require.NoError(t, q2.Close())

	q3 := open(t, dir, newSink(nil), nil)
	in, err := q3.Inspect("m0")
	require.NoError(t, err)
	assert.NotEqual(t, queue.StateCorrupt, in.State, "a read error is not damage")
	assert.Zero(t, q3.Stats().Messages[queue.StateCorrupt])
}
