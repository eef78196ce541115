package queue_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
)

// A large message is streamed to disk: Enqueue's memory does not grow with
// its size, and it survives a restart intact.
func TestLargeMessageIsStreamed(t *testing.T) {
	dir := t.TempDir()
	opts := quietOpts()
	opts.SegmentSize = 8 << 20
	q, err := queue.Open(dir, newSink(nil), opts)
	require.NoError(t, err)
	big := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), (16<<20)/64)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err = q.Enqueue(context.Background(), envelope("big", "u@example.org"), bytes.NewReader(big))
	require.NoError(t, err)
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	assert.Less(t, allocated, uint64(4<<20), "a 16 MiB message is not held in memory (allocated %d bytes)", allocated)
	left, _ := os.ReadDir(filepath.Join(dir, "spool"))
	assert.Empty(t, left, "the spool file is removed once the message is in the log")

	// Too large: refused, and nothing left behind.
	opts2 := *opts
	_, err = q.Enqueue(context.Background(), envelope("huge", "u@example.org"), bytes.NewReader(make([]byte, 65<<20)))
	assert.ErrorIs(t, err, queue.ErrTooLarge)
	left, _ = os.ReadDir(filepath.Join(dir, "spool"))
	assert.Empty(t, left)
	require.NoError(t, q.Close())

	s := newSink(nil)
	q2 := open(t, dir, s, &opts2)
	in, err := q2.Inspect("big")
	require.NoError(t, err)
	assert.Equal(t, resilmail.DigestOf(big), in.Digest)
	assert.Equal(t, int64(len(big)), in.Envelope.Size)
	run(t, q2)
	waitFor(t, "delivered", func() bool { return len(s.delivered("u@example.org")) == 1 })
	s.mu.Lock()
	assert.True(t, s.bodies["big"] == string(big), "delivered intact")
	s.mu.Unlock()
}

func TestAdmitBeforeData(t *testing.T) {
	opts := quietOpts()
	opts.MaxMessages = 1
	opts.MaxMessageSize = 1 << 20
	q := open(t, t.TempDir(), newSink(nil), opts)
	assert.NoError(t, q.Admit(0))
	assert.ErrorIs(t, q.Admit(2<<20), queue.ErrTooLarge)
	_, err := q.Enqueue(context.Background(), envelope("one", "u@example.org"), strings.NewReader("x"))
	require.NoError(t, err)
	assert.ErrorIs(t, q.Admit(100), queue.ErrFull)
}

func TestIDReusedWithOtherContentIsAConflict(t *testing.T) {
	q := open(t, t.TempDir(), newSink(nil), nil)
	ctx := context.Background()
	_, err := q.Enqueue(ctx, envelope("same-id", "u@example.org"), strings.NewReader("first"))
	require.NoError(t, err)
	_, err = q.Enqueue(ctx, envelope("same-id", "u@example.org"), strings.NewReader("first"))
	assert.NoError(t, err, "the same message again is a duplicate")
	_, err = q.Enqueue(ctx, envelope("same-id", "u@example.org"), strings.NewReader("second, different"))
	assert.ErrorIs(t, err, queue.ErrConflict)
	err = q.Deliver(ctx, envelope("same-id", "u@example.org"), strings.NewReader("third"))
	var de *resilmail.DeliveryError
	require.ErrorAs(t, err, &de)
	assert.True(t, de.Permanent)
	assert.Equal(t, uint64(1), q.Stats().Duplicates)
}
