package wal_test

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/wal"
)

// slowReader hands out its bytes only as the test releases them.
type slowReader struct {
	r    io.Reader
	gate chan struct{}
}

func (s *slowReader) Read(p []byte) (int, error) {
	<-s.gate
	return s.r.Read(p)
}

// A reserved record is copied without the log's lock: records appended
// and synced meanwhile are not held up, they come after it, and the
// reserved one reads back whole once filled.
func TestReserveDoesNotHoldTheLog(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, wal.Options{})
	big := strings.Repeat("b", 1<<20)
	p, err := l.Reserve([]byte("head:"), int64(len(big)))
	require.NoError(t, err)
	sr := &slowReader{r: strings.NewReader(big), gate: make(chan struct{})}
	filled := make(chan error, 1)
	go func() {
		_, err := p.Fill(sr)
		filled <- err
	}()
	sr.gate <- struct{}{} // the copy has begun
	done := make(chan error, 1)
	go func() {
		_, err := l.AppendSync([]byte("while filling"))
		done <- err
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("an append waited for the reserved record's copy")
	}
	close(sr.gate)
	require.NoError(t, <-filled)
	b, err := l.ReadAt(p.Pos())
	require.NoError(t, err)
	assert.Equal(t, "head:"+big, string(b))
	require.NoError(t, l.Sync())
	require.NoError(t, l.Close())
	_, got := open(t, dir, wal.Options{})
	assert.Equal(t, []string{"head:" + big, "while filling"}, payloads(got), "in the order of their places")
}

// A reserved record whose reader fails after other records were appended
// leaves a place that Open skips as damaged, keeping the records after it.
func TestReserveUnfilledIsSkipped(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, wal.Options{})
	_, err := l.AppendSync([]byte("before"))
	require.NoError(t, err)
	p, err := l.Reserve([]byte("x"), 100)
	require.NoError(t, err)
	_, err = l.AppendSync([]byte("after"))
	require.NoError(t, err)
	_, err = p.Fill(strings.NewReader("short"))
	require.Error(t, err)
	_, err = l.AppendSync([]byte("later"))
	require.NoError(t, err)
	require.NoError(t, l.Close())
	l2, got := open(t, dir, wal.Options{})
	assert.Equal(t, []string{"before", "after", "later"}, payloads(got))
	assert.Equal(t, 1, l2.Stats().CorruptRegions)
}

// Records read in place stream from a handle of their own, survive the
// removal of their segment, and pass their CRC.
func TestOpenRecord(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, wal.Options{SegmentSize: 1 << 10})
	pos, err := l.AppendSync([]byte(strings.Repeat("r", 2000)))
	require.NoError(t, err)
	r, err := l.OpenRecord(pos)
	require.NoError(t, err)
	defer r.Close()
	require.NoError(t, l.Roll())
	_, err = l.AppendSync([]byte("next"))
	require.NoError(t, err)
	require.NoError(t, l.RemoveBefore(pos.Seg+1))
	assert.EqualValues(t, 2000, r.Size())
	b, err := io.ReadAll(io.NewSectionReader(r, 0, r.Size()))
	require.NoError(t, err)
	assert.Equal(t, strings.Repeat("r", 2000), string(b), "readable after its segment was removed")
	require.NoError(t, r.Verify())
	buf := make([]byte, 10)
	n, err := r.ReadAt(buf, 1995)
	assert.Equal(t, 5, n)
	assert.ErrorIs(t, err, io.EOF)
}
