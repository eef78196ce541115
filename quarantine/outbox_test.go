package quarantine

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
	"github.com/resilmail/resilmail/internal/wal"
)

func pendingIDs(o *Outbox) []string {
	var ids []string
	for _, e := range o.Pending() {
		ids = append(ids, e.ID)
	}
	return ids
}

// ackFirst acknowledges the n oldest pending entries, as the shipper does.
func ackFirst(t *testing.T, o *Outbox, n int) {
	t.Helper()
	batch, err := o.nextBatch(n, 1<<40)
	require.NoError(t, err)
	require.Len(t, batch, n)
	require.NoError(t, o.ack(batch, 0, 0))
}

func TestOutboxAddReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	o := shOutbox(t, dir, &OutboxOptions{Node: "mx2"})
	bodies := map[string][]byte{}
	for i, n := range []int{2000, -1, 0, 500} {
		id := fmt.Sprintf("e%d", i)
		e := shEntry(id)
		e.Recipients = nil // Add fills them
		var body []byte
		if n >= 0 {
			body = shBody(id, n)
			bodies[id] = body
			require.NoError(t, o.Add(ctx, e, bytes.NewReader(body)))
		} else {
			require.NoError(t, o.Add(ctx, e, nil), "metadata only")
		}
	}
	assert.Equal(t, []string{"e0", "e1", "e2", "e3"}, pendingIDs(o))
	st := o.Stats()
	assert.Equal(t, 4, st.Pending)
	assert.Equal(t, int64(len(bodies["e0"])+len(bodies["e2"])+len(bodies["e3"])), st.PendingBytes)
	assert.False(t, st.Oldest.IsZero())
	assert.Equal(t, uint64(4), st.Added)

	p := o.Pending()
	assert.Equal(t, "mx2", p[0].Node)
	assert.Equal(t, resilmail.DigestOf(bodies["e0"]), p[0].Digest)
	assert.Equal(t, int64(len(bodies["e0"])), p[0].Size)
	assert.False(t, p[1].HasBody())
	require.Len(t, p[0].Recipients, 2)
	assert.Equal(t, Held, p[0].Recipients[0].Status)

	ackFirst(t, o, 2) // e0, e1 acknowledged
	assert.Equal(t, []string{"e2", "e3"}, pendingIDs(o))
	require.NoError(t, o.Close())
	require.NoError(t, o.Close(), "Close is idempotent")
	assert.ErrorIs(t, o.Add(ctx, shEntry("late"), nil), ErrClosed)

	o = shOutbox(t, dir, nil)
	assert.Equal(t, []string{"e2", "e3"}, pendingIDs(o), "reopen keeps pending entries in order and forgets acknowledged ones")
	batch, err := o.nextBatch(10, 1<<30)
	require.NoError(t, err)
	for _, it := range batch {
		body, _, err := o.readBody(it)
		require.NoError(t, err)
		assert.Equal(t, bodies[it.e.ID], body)
	}
	st = o.Stats()
	assert.Equal(t, 2, st.Pending)
	assert.Equal(t, int64(len(bodies["e2"])+len(bodies["e3"])), st.PendingBytes)
}

func TestOutboxAddRefuses(t *testing.T) {
	o := shOutbox(t, t.TempDir(), &OutboxOptions{MaxSize: 1000})
	ctx := context.Background()
	body := shBody("x", 100)
	tests := []struct {
		name string
		edit func(e *Entry)
		body []byte
		err  error
	}{
		{"too large", func(e *Entry) {}, shBody("x", 1001), ErrTooLarge},
		{"digest mismatch", func(e *Entry) { e.Digest = resilmail.DigestOf([]byte("x")) }, body, ErrInvalid},
		{"size mismatch", func(e *Entry) { e.Size = 1 }, body, ErrInvalid},
		{"digest without body", func(e *Entry) { e.Digest = resilmail.DigestOf(body) }, nil, ErrInvalid},
		{"no id", func(e *Entry) { e.ID = "" }, body, ErrInvalid},
		{"bad id", func(e *Entry) { e.ID = "a/b" }, body, ErrInvalid},
		{"bad recipient", func(e *Entry) { e.Envelope.To[0].Addr = "nobody" }, body, ErrInvalid},
		{"released recipient", func(e *Entry) { e.Recipients[1].Status = Released }, body, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := shEntry("r1")
			tt.edit(&e)
			var err error
			if tt.body != nil {
				err = o.Add(ctx, e, bytes.NewReader(tt.body))
			} else {
				err = o.Add(ctx, e, nil)
			}
			require.ErrorIs(t, err, tt.err)
		})
	}
	assert.Zero(t, o.Stats().Pending)

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	assert.ErrorIs(t, o.Add(cctx, shEntry("c1"), nil), context.Canceled)
}

func TestOutboxDuplicateAndConflict(t *testing.T) {
	o := shOutbox(t, t.TempDir(), nil)
	ctx := context.Background()
	require.NoError(t, o.Add(ctx, shEntry("d1"), bytes.NewReader([]byte("one"))))
	require.NoError(t, o.Add(ctx, shEntry("d1"), bytes.NewReader([]byte("one"))), "the same entry again is a no-op")
	require.ErrorIs(t, o.Add(ctx, shEntry("d1"), bytes.NewReader([]byte("two"))), ErrConflict)
	st := o.Stats()
	assert.Equal(t, 1, st.Pending)
	assert.Equal(t, uint64(1), st.Duplicates)

	// Once acknowledged, the id is forgotten: adding it again ships it
	// again (the centre ignores it).
	ackFirst(t, o, 1)
	require.NoError(t, o.Add(ctx, shEntry("d1"), bytes.NewReader([]byte("one"))))
	assert.Equal(t, 1, o.Stats().Pending)
}

func TestOutboxGroupCommit(t *testing.T) {
	o := shOutbox(t, t.TempDir(), nil)
	const workers, each = 32, 8
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				id := fmt.Sprintf("w%d-%d", w, i)
				assert.NoError(t, o.Add(context.Background(), shEntry(id), bytes.NewReader(shBody(id, 1000))))
			}
		})
	}
	wg.Wait()
	st := o.Stats()
	assert.Equal(t, workers*each, st.Pending)
	assert.Less(t, st.Fsyncs, uint64(workers*each), "concurrent Adds share fsyncs")
	t.Logf("%d Adds, %d fsyncs", workers*each, st.Fsyncs)
}

func TestOutboxCompaction(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	const seg = 64 << 10
	o := shOutbox(t, dir, &OutboxOptions{SegmentSize: seg})
	var keep []string
	for i := range 100 {
		id := fmt.Sprintf("c%03d", i)
		require.NoError(t, o.Add(ctx, shEntry(id), bytes.NewReader(shBody(id, 4000))))
		if i%25 == 7 {
			keep = append(keep, id)
		}
	}
	before := o.Stats()
	require.Greater(t, before.Segments, 5)
	// Acknowledge all but a few, scattered over the segments.
	batch, err := o.nextBatch(1000, 1<<40)
	require.NoError(t, err)
	var done []*outboxItem
	for _, it := range batch {
		if !contains(keep, it.e.ID) {
			done = append(done, it)
		}
	}
	require.NoError(t, o.ack(done, 0, 0))
	for o.compactOnce() {
	}
	after := o.Stats()
	assert.LessOrEqual(t, after.Segments, 2, "segments of acknowledged entries are removed")
	assert.Less(t, after.DiskBytes, before.DiskBytes/4)
	assert.Positive(t, after.Compactions)
	assert.Positive(t, after.Rewritten, "live entries are copied forward")
	assert.Equal(t, keep, pendingIDs(o))
	for _, it := range mustBatch(t, o) {
		body, _, err := o.readBody(it)
		require.NoError(t, err)
		assert.Equal(t, shBody(it.e.ID, 4000), body)
	}

	require.NoError(t, o.Close())
	o = shOutbox(t, dir, &OutboxOptions{SegmentSize: seg})
	assert.Equal(t, keep, pendingIDs(o), "order and content survive compaction and reopen")
	for _, it := range mustBatch(t, o) {
		body, _, err := o.readBody(it)
		require.NoError(t, err)
		assert.Equal(t, shBody(it.e.ID, 4000), body)
	}
}

func mustBatch(t *testing.T, o *Outbox) []*outboxItem {
	t.Helper()
	b, err := o.nextBatch(1<<20, 1<<40)
	require.NoError(t, err)
	return b
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestOutboxRefusesUnknownVersion(t *testing.T) {
	dir := t.TempDir()
	l, err := wal.Open(filepath.Join(dir, "log"), wal.Options{Kind: outboxKind, Version: outboxVersion + 1}, func(wal.Pos, []byte) error { return nil })
	require.NoError(t, err)
	_, err = l.AppendSync([]byte("from the future"))
	require.NoError(t, err)
	require.NoError(t, l.Close())
	_, err = OpenOutbox(dir, &OutboxOptions{Logger: shLogger()})
	require.ErrorIs(t, err, wal.ErrFormat)
	assert.Contains(t, err.Error(), "version 2")

	// A queue's log is not an outbox either.
	dir = t.TempDir()
	l, err = wal.Open(filepath.Join(dir, "log"), wal.Options{Kind: "queue"}, func(wal.Pos, []byte) error { return nil })
	require.NoError(t, err)
	require.NoError(t, l.Close())
	_, err = OpenOutbox(dir, &OutboxOptions{Logger: shLogger()})
	require.ErrorIs(t, err, wal.ErrFormat)
}

func TestOutboxLock(t *testing.T) {
	dir := t.TempDir()
	o := shOutbox(t, dir, nil)
	_, err := OpenOutbox(dir, &OutboxOptions{Logger: shLogger()})
	require.ErrorIs(t, err, durable.ErrLocked)
	require.NoError(t, o.Close())
	o2 := shOutbox(t, dir, nil)
	require.NoError(t, o2.Close())
}

func TestOutboxFull(t *testing.T) {
	ctx := context.Background()
	o := shOutbox(t, t.TempDir(), &OutboxOptions{MaxPending: 2, MaxPendingBytes: 5000})
	require.NoError(t, o.Add(ctx, shEntry("f1"), bytes.NewReader(shBody("f1", 1000))))
	require.ErrorIs(t, o.Add(ctx, shEntry("f2"), bytes.NewReader(shBody("f2", 4500))), ErrOutboxFull)
	require.NoError(t, o.Add(ctx, shEntry("f3"), nil))
	require.ErrorIs(t, o.Add(ctx, shEntry("f4"), nil), ErrOutboxFull)
	assert.Equal(t, uint64(2), o.Stats().Refused)
	ackFirst(t, o, 1)
	require.NoError(t, o.Add(ctx, shEntry("f4"), nil), "acknowledgements make room")
}

func TestOutboxTornTail(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	o := shOutbox(t, dir, nil)
	require.NoError(t, o.Add(ctx, shEntry("t1"), bytes.NewReader(shBody("t1", 3000))))
	require.NoError(t, o.Add(ctx, shEntry("t2"), bytes.NewReader(shBody("t2", 3000))))
	require.NoError(t, o.Close())
	// Cut the last record in half, as a crash in the middle of a write
	// that was never acknowledged would.
	segs, err := filepath.Glob(filepath.Join(dir, "log", "*.wal"))
	require.NoError(t, err)
	last := segs[len(segs)-1]
	fi, err := os.Stat(last)
	require.NoError(t, err)
	require.NoError(t, os.Truncate(last, fi.Size()-1500))

	o = shOutbox(t, dir, nil)
	assert.Equal(t, []string{"t1"}, pendingIDs(o))
	assert.Positive(t, o.Stats().DamagedBytes)
	moved, err := filepath.Glob(filepath.Join(dir, "corrupt", "*.torn"))
	require.NoError(t, err)
	assert.Len(t, moved, 1, "the torn bytes are moved aside, not deleted")
	require.NoError(t, o.Add(ctx, shEntry("t3"), nil), "the outbox goes on")
}

func TestOutboxCorruptBody(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	o := shOutbox(t, dir, nil)
	body := shBody("k1", 3000)
	require.NoError(t, o.Add(ctx, shEntry("k1"), bytes.NewReader(body)))
	require.NoError(t, o.Add(ctx, shEntry("k2"), nil))
	// Damage the body on disk behind the outbox's back.
	segs, err := filepath.Glob(filepath.Join(dir, "log", "*.wal"))
	require.NoError(t, err)
	data, err := os.ReadFile(segs[0])
	require.NoError(t, err)
	i := bytes.Index(data, body[200:260])
	require.Positive(t, i)
	f, err := os.OpenFile(segs[0], os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("ZZZZ"), int64(i))
	require.NoError(t, err)
	require.NoError(t, f.Close())

	b := mustBatch(t, o)
	_, raw, err := o.readBody(b[0])
	require.ErrorIs(t, err, ErrCorrupt)
	assert.NotEmpty(t, raw)
	_, _, err = o.readBody(b[1])
	require.NoError(t, err)
}

func TestOutboxConcurrentAddSameID(t *testing.T) {
	o := shOutbox(t, t.TempDir(), nil)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			assert.NoError(t, o.Add(context.Background(), shEntry("same"), strings.NewReader("body")))
		})
	}
	wg.Wait()
	st := o.Stats()
	assert.Equal(t, 1, st.Pending)
	assert.Equal(t, uint64(1), st.Added)
	assert.Equal(t, uint64(15), st.Duplicates)
}
