package queue_test

import (
	"context"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/queue"
)

// downgradeSegment rewrites a log segment of format 2 (salted record CRCs,
// a 40-byte header) as format 1 wrote it (a 32-byte header, plain CRC-32C),
// record for record.
func downgradeSegment(t *testing.T, path string) {
	t.Helper()
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, uint16(2), binary.BigEndian.Uint16(b[6:8]), "%s is format 2", path)
	h := append([]byte(nil), b[:28]...)
	binary.BigEndian.PutUint16(h[6:], 1)
	h = binary.BigEndian.AppendUint32(h, crc32.Checksum(h, castagnoli))
	out := h
	for off := 40; off+12 <= len(b); {
		n := int(binary.BigEndian.Uint32(b[off:]))
		if n == 0 || off+12+n > len(b) {
			break
		}
		rec := b[off+12 : off+12+n]
		var rh [12]byte
		binary.BigEndian.PutUint32(rh[0:], uint32(n))
		binary.BigEndian.PutUint32(rh[4:], crc32.Checksum(rh[0:4], castagnoli))
		binary.BigEndian.PutUint32(rh[8:], crc32.Checksum(rec, castagnoli))
		out = append(append(out, rh[:]...), rec...)
		off += 12 + n
	}
	require.NoError(t, os.WriteFile(path, out, 0o600))
}

// A queue written by a build whose log was format 1 opens with every
// message, its state and the ids it remembers, and goes on appending.
func TestFormat1LogOpens(t *testing.T) {
	dir := t.TempDir()
	s := newSink(nil)
	q, err := queue.Open(dir, s, quietOpts())
	require.NoError(t, err)
	ctx := context.Background()
	_, err = q.Enqueue(ctx, envelope("done", "u@example.org"), body("done"))
	require.NoError(t, err)
	_, err = q.Enqueue(ctx, envelope("kept", "u@held.example"), body("kept"))
	require.NoError(t, err)
	_, err = q.Hold(queue.Filter{Domain: "held.example"})
	require.NoError(t, err)
	ctx2, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx2) }()
	waitFor(t, "delivery", func() bool { return len(s.delivered("u@example.org")) == 1 && len(q.List(queue.Filter{})) == 1 })
	cancel()
	require.NoError(t, <-done)
	require.NoError(t, q.Close())

	segs, err := filepath.Glob(filepath.Join(dir, "log", "*.wal"))
	require.NoError(t, err)
	require.NotEmpty(t, segs)
	for _, p := range segs {
		downgradeSegment(t, p)
	}

	s2 := newSink(nil)
	q2 := open(t, dir, s2, nil)
	st := q2.Stats()
	assert.Zero(t, st.BadRecords, "every format-1 record is read")
	held := q2.List(queue.Filter{State: queue.StateHeld})
	require.Len(t, held, 1)
	assert.Equal(t, "kept", held[0].ID)
	_, err = q2.Enqueue(ctx, envelope("done", "u@example.org"), body("done"))
	require.NoError(t, err)
	assert.Equal(t, uint64(1), q2.Stats().Duplicates, "the delivered id is remembered")
	run(t, q2)
	_, err = q2.Release(queue.Filter{})
	require.NoError(t, err)
	waitFor(t, "the held message delivered", func() bool { return len(s2.delivered("u@held.example")) == 1 })
	assert.Contains(t, s2.bodies["kept"], "kept", "its body reads back")
	_, err = q2.Enqueue(ctx, envelope("new", "u@example.org"), body("new"))
	require.NoError(t, err, "appends go on in the format-1 segment")
	waitFor(t, "the new message delivered", func() bool { return len(s2.delivered("u@example.org")) == 1 })
	require.NoError(t, q2.Close())
	q3 := open(t, dir, newSink(nil), nil)
	assert.Zero(t, q3.Stats().BadRecords)
	assert.Empty(t, q3.List(queue.Filter{}))
}
