package queue

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/wal"
)

// An update record that names a recipient the message does not have (its
// CRC intact) is ignored at Open instead of crashing it on every start.
func TestRecoveryValidatesRecipientIndexes(t *testing.T) {
	dir := t.TempDir()
	nop := resilmail.DelivererFunc(func(context.Context, resilmail.Envelope, io.Reader) error { return nil })
	opts := &Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MinFreeBytes: -1}
	q, err := Open(dir, nop, opts)
	require.NoError(t, err)
	env := resilmail.Envelope{ID: "m1", From: "a@example.net", To: []resilmail.Recipient{{Addr: "b@example.org"}}}
	_, err = q.Enqueue(context.Background(), env, strings.NewReader("hello"))
	require.NoError(t, err)
	require.NoError(t, q.Close())

	l, err := wal.Open(filepath.Join(dir, "log"), wal.Options{Kind: "queue", Version: formatVersion}, func(wal.Pos, []byte) error { return nil })
	require.NoError(t, err)
	for _, u := range []*updRec{
		{ID: "m1", Start: &jobRec{Job: 1, Rcpts: []int{7}}, Attempts: 1},
		{ID: "m1", Start: &jobRec{Job: 2, Rcpts: []int{-1}}, Attempts: 1},
	} {
		rec, err := encode(recUpdate, u, nil)
		require.NoError(t, err)
		_, err = l.AppendSync(rec)
		require.NoError(t, err)
	}
	require.NoError(t, l.Close())

	q, err = Open(dir, nop, opts)
	require.NoError(t, err, "Open survives a bad index")
	defer q.Close()
	in, err := q.Inspect("m1")
	require.NoError(t, err)
	assert.Equal(t, Pending, in.Recipients[0].State)
	assert.Equal(t, uint64(2), q.Stats().BadRecords)
}
