package wal_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/wal"
)

type rec struct {
	pos  wal.Pos
	data string
}

func open(t *testing.T, dir string, opts wal.Options) (*wal.Log, []rec) {
	t.Helper()
	if opts.Kind == "" {
		opts.Kind = "test"
	}
	var got []rec
	l, err := wal.Open(dir, opts, func(pos wal.Pos, b []byte) error {
		got = append(got, rec{pos, string(b)})
		return nil
	})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l, got
}

func payloads(rs []rec) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.data
	}
	return out
}

func TestAppendReplayAcrossSegments(t *testing.T) {
	dir := t.TempDir()
	l, got := open(t, dir, wal.Options{SegmentSize: 200})
	require.Empty(t, got)
	var want []string
	for i := 0; i < 50; i++ {
		s := fmt.Sprintf("record %02d", i)
		want = append(want, s)
		pos, err := l.Append([]byte(s))
		require.NoError(t, err)
		b, err := l.ReadAt(pos)
		require.NoError(t, err, "a record can be read back before it is synced")
		assert.Equal(t, s, string(b))
	}
	require.NoError(t, l.Sync())
	assert.Greater(t, len(l.Segments()), 3, "small segments roll")
	require.NoError(t, l.Close())

	l2, got := open(t, dir, wal.Options{SegmentSize: 200})
	assert.Equal(t, want, payloads(got))
	for _, r := range got {
		b, err := l2.ReadAt(r.pos)
		require.NoError(t, err)
		assert.Equal(t, r.data, string(b))
	}
	// Appending continues after the last record.
	_, err := l2.AppendSync([]byte("after reopen"))
	require.NoError(t, err)
	require.NoError(t, l2.Close())
	_, got = open(t, dir, wal.Options{SegmentSize: 200})
	assert.Equal(t, append(want, "after reopen"), payloads(got))
}

func TestGroupCommitSharesFsyncs(t *testing.T) {
	l, _ := open(t, t.TempDir(), wal.Options{})
	const writers, each = 32, 20
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				_, err := l.AppendSync(make([]byte, 4096))
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	st := l.Stats()
	assert.Equal(t, uint64(writers*each), st.Appends)
	assert.Less(t, st.Syncs, st.Appends/2, "concurrent writers must share fsyncs")
	assert.Positive(t, st.Syncs)
}

func segFiles(t *testing.T, dir string) []string {
	m, err := filepath.Glob(filepath.Join(dir, "*.wal"))
	require.NoError(t, err)
	return m
}

func TestTornTailTruncated(t *testing.T) {
	for _, tear := range []struct {
		name string
		junk func(full []byte) []byte
	}{
		{"half a header", func(full []byte) []byte { return full[:5] }},
		{"header without payload", func(full []byte) []byte { return full[:14] }},
		{"payload cut short", func(full []byte) []byte { return full[:len(full)-3] }},
		{"zeros", func(full []byte) []byte { return make([]byte, 100) }},
	} {
		t.Run(tear.name, func(t *testing.T) {
			dir := t.TempDir()
			l, _ := open(t, dir, wal.Options{})
			for i := 0; i < 3; i++ {
				_, err := l.AppendSync([]byte(fmt.Sprint("synced ", i)))
				require.NoError(t, err)
			}
			require.NoError(t, l.Close())
			// Build what an unsynced record looks like, then tear it.
			scratch := t.TempDir()
			s, _ := open(t, scratch, wal.Options{})
			_, err := s.AppendSync([]byte("never acknowledged record payload"))
			require.NoError(t, err)
			require.NoError(t, s.Close())
			full, err := os.ReadFile(segFiles(t, scratch)[0])
			require.NoError(t, err)
			full = full[32:]
			f, err := os.OpenFile(segFiles(t, dir)[0], os.O_APPEND|os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.Write(tear.junk(full))
			require.NoError(t, err)
			require.NoError(t, f.Close())

			l2, got := open(t, dir, wal.Options{})
			assert.Equal(t, []string{"synced 0", "synced 1", "synced 2"}, payloads(got))
			assert.Positive(t, l2.Stats().TornBytes)
			_, err = l2.AppendSync([]byte("next"))
			require.NoError(t, err)
			require.NoError(t, l2.Close())
			_, got = open(t, dir, wal.Options{})
			assert.Equal(t, []string{"synced 0", "synced 1", "synced 2", "next"}, payloads(got), "appends after a torn tail replay")
		})
	}
}

func TestCorruptRegionSkipped(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, wal.Options{})
	var positions []wal.Pos
	for i := 0; i < 5; i++ {
		pos, err := l.AppendSync([]byte(fmt.Sprintf("record %d with some payload", i)))
		require.NoError(t, err)
		positions = append(positions, pos)
	}
	require.NoError(t, l.Close())
	// Flip a byte in the payload of record 2: bit rot, not a torn write.
	path := segFiles(t, dir)[0]
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	data[positions[2].Off+12+3] ^= 0xff
	require.NoError(t, os.WriteFile(path, data, 0o644))

	var damaged []wal.Pos
	l2, got := open(t, dir, wal.Options{Damaged: func(pos wal.Pos, data []byte, torn bool) {
		assert.False(t, torn)
		assert.Contains(t, string(data), "rd 2 with some payload")
		damaged = append(damaged, pos)
	}})
	assert.Equal(t, []wal.Pos{positions[2]}, damaged, "the damaged region is handed to the caller")
	assert.Equal(t, []string{"record 0 with some payload", "record 1 with some payload", "record 3 with some payload", "record 4 with some payload"}, payloads(got),
		"records after a damaged one are kept")
	st := l2.Stats()
	assert.Equal(t, 1, st.CorruptRegions)
	assert.Zero(t, st.TornBytes)
	raw, err := l2.ReadAt(positions[2])
	assert.ErrorIs(t, err, wal.ErrCorrupt, "reading the damaged record reports it")
	assert.Contains(t, string(raw), "rd 2 with some payload", "and returns the damaged bytes to move aside")
}

func TestFormatChecks(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, wal.Options{Kind: "queue", Version: 2})
	_, err := l.AppendSync([]byte("x"))
	require.NoError(t, err)
	require.NoError(t, l.Close())

	noop := func(wal.Pos, []byte) error { return nil }
	_, err = wal.Open(dir, wal.Options{Kind: "journal", Version: 2}, noop)
	assert.ErrorIs(t, err, wal.ErrFormat, "another kind is refused")
	_, err = wal.Open(dir, wal.Options{Kind: "queue", Version: 1}, noop)
	assert.ErrorIs(t, err, wal.ErrFormat, "a newer caller version is refused")
	assert.ErrorContains(t, err, "version 2")
	l3, err := wal.Open(dir, wal.Options{Kind: "queue", Version: 3}, noop)
	require.NoError(t, err, "an older caller version is read")
	require.NoError(t, l3.Close())

	// A file with a foreign magic is refused, not truncated.
	other := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(other, "0000000000000001.wal"), make([]byte, 64), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(other, "0000000000000002.wal"), make([]byte, 64), 0o644))
	_, err = wal.Open(other, wal.Options{Kind: "queue"}, noop)
	assert.ErrorIs(t, err, wal.ErrFormat)
}

func TestTornSegmentHeaderRemoved(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, wal.Options{})
	_, err := l.AppendSync([]byte("kept"))
	require.NoError(t, err)
	require.NoError(t, l.Close())
	// A crash while creating the next segment leaves a short file.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "0000000000000002.wal"), []byte("RMW"), 0o644))
	l2, got := open(t, dir, wal.Options{})
	assert.Equal(t, []string{"kept"}, payloads(got))
	_, err = l2.AppendSync([]byte("more"))
	require.NoError(t, err)
}

func TestReplayErrorStopsOpen(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, wal.Options{})
	_, err := l.AppendSync([]byte("x"))
	require.NoError(t, err)
	require.NoError(t, l.Close())
	boom := errors.New("boom")
	_, err = wal.Open(dir, wal.Options{Kind: "test"}, func(wal.Pos, []byte) error { return boom })
	assert.ErrorIs(t, err, boom)
}

// faultFile fails Sync or WriteAt on demand.
type faultFile struct {
	*os.File
	failSync, failWrite *atomic.Bool
}

func (f faultFile) Sync() error {
	if f.failSync.Load() {
		return errors.New("injected fsync failure")
	}
	return f.File.Sync()
}

func (f faultFile) WriteAt(b []byte, off int64) (int, error) {
	if f.failWrite.Load() {
		n, _ := f.File.WriteAt(b[:len(b)/2], off)
		return n, errors.New("injected ENOSPC")
	}
	return f.File.WriteAt(b, off)
}

func TestFailureIsStickyAndLosesNothingSynced(t *testing.T) {
	for _, which := range []string{"fsync", "write"} {
		t.Run(which, func(t *testing.T) {
			dir := t.TempDir()
			var failSync, failWrite atomic.Bool
			opts := wal.Options{OpenFile: func(name string, flag int, perm os.FileMode) (wal.File, error) {
				f, err := os.OpenFile(name, flag, perm)
				if err != nil {
					return nil, err
				}
				return faultFile{f, &failSync, &failWrite}, nil
			}}
			l, _ := open(t, dir, opts)
			_, err := l.AppendSync([]byte("durable"))
			require.NoError(t, err)
			if which == "fsync" {
				failSync.Store(true)
			} else {
				failWrite.Store(true)
			}
			_, err = l.AppendSync([]byte("not acknowledged"))
			require.ErrorIs(t, err, wal.ErrFailed)
			failSync.Store(false)
			failWrite.Store(false)
			// A failed fsync is never retried: the log stays failed.
			_, err = l.AppendSync([]byte("after failure"))
			require.ErrorIs(t, err, wal.ErrFailed)
			require.Error(t, l.Err())
			l.Close()

			_, got := open(t, dir, wal.Options{})
			require.NotEmpty(t, got)
			assert.Equal(t, "durable", got[0].data, "what was synced survives")
			assert.NotContains(t, payloads(got), "after failure")
		})
	}
}

func TestRemoveBefore(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, wal.Options{})
	_, err := l.AppendSync([]byte("old"))
	require.NoError(t, err)
	require.NoError(t, l.Roll())
	_, err = l.AppendSync([]byte("new"))
	require.NoError(t, err)
	segs := l.Segments()
	require.Len(t, segs, 2)
	require.NoError(t, l.RemoveBefore(segs[1]))
	assert.Equal(t, segs[1:], l.Segments())
	require.NoError(t, l.Close())
	_, got := open(t, dir, wal.Options{})
	assert.Equal(t, []string{"new"}, payloads(got))
}

func TestClosed(t *testing.T) {
	l, _ := open(t, t.TempDir(), wal.Options{})
	require.NoError(t, l.Close())
	require.NoError(t, l.Close(), "Close is idempotent")
	_, err := l.Append([]byte("x"))
	assert.ErrorIs(t, err, wal.ErrClosed)
}

// BenchmarkAppendSync measures durable appends of 4 KiB records by exactly
// 1, 16 and 64 concurrent writers, each waiting for its record to be synced.
func BenchmarkAppendSync(b *testing.B) {
	for _, writers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			l, err := wal.Open(b.TempDir(), wal.Options{Kind: "bench"}, func(wal.Pos, []byte) error { return nil })
			require.NoError(b, err)
			defer l.Close()
			rec := make([]byte, 4096)
			b.SetBytes(int64(len(rec)))
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if _, err := l.AppendSync(rec); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			st := l.Stats()
			b.ReportMetric(float64(st.Syncs)/float64(st.Appends), "fsyncs/record")
		})
	}
}

func TestAppendFromStreams(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, wal.Options{SegmentSize: 4 << 20})
	var want []string
	for i := 0; i < 12; i++ {
		var s string
		if i%3 == 0 {
			s = fmt.Sprintf("small %d", i)
			_, err := l.Append([]byte(s))
			require.NoError(t, err)
		} else {
			big := strings.Repeat(fmt.Sprintf("%d", i%10), 700<<10+i)
			s = "head:" + big
			pos, err := l.AppendFrom([]byte("head:"), strings.NewReader(big), int64(len(big)))
			require.NoError(t, err)
			b, err := l.ReadAt(pos)
			require.NoError(t, err)
			require.Equal(t, s, string(b))
		}
		want = append(want, s)
	}
	// A reader that ends early appends nothing and leaves the log usable.
	_, err := l.AppendFrom([]byte("x"), strings.NewReader("short"), 100)
	require.Error(t, err)
	_, err = l.Append([]byte("after a short reader"))
	require.NoError(t, err)
	want = append(want, "after a short reader")
	require.NoError(t, l.Sync())
	assert.Greater(t, len(l.Segments()), 1, "big records roll segments too")
	require.NoError(t, l.Close())
	_, got := open(t, dir, wal.Options{SegmentSize: 4 << 20})
	assert.Equal(t, want, payloads(got))
}

// A record hidden in a payload (a message body that holds bytes shaped as
// a record) is never taken for one when Open resynchronises after damage:
// record CRCs start from the segment's random salt.
func TestContentCannotForgeRecords(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, wal.Options{})
	forged := []byte("FORGED: a record the sender wrote")
	var hidden []byte
	hidden = binary.BigEndian.AppendUint32(hidden, uint32(len(forged)))
	hidden = binary.BigEndian.AppendUint32(hidden, crc32.Checksum(hidden[0:4], crc32.MakeTable(crc32.Castagnoli)))
	hidden = binary.BigEndian.AppendUint32(hidden, crc32.Checksum(forged, crc32.MakeTable(crc32.Castagnoli)))
	hidden = append(hidden, forged...)
	_, err := l.Append([]byte("before"))
	require.NoError(t, err)
	pos, err := l.Append(append([]byte("a message whose body hides "), hidden...))
	require.NoError(t, err)
	_, err = l.Append([]byte("after"))
	require.NoError(t, err)
	require.NoError(t, l.Close())

	// Damage the carrying record's length: Open must skip to "after".
	name := filepath.Join(dir, fmt.Sprintf("%016x.wal", pos.Seg))
	data, err := os.ReadFile(name)
	require.NoError(t, err)
	data[pos.Off+1] ^= 0xff
	require.NoError(t, os.WriteFile(name, data, 0o600))
	_, got := open(t, dir, wal.Options{})
	assert.Equal(t, []string{"before", "after"}, payloads(got), "the hidden record is not replayed")
}

// heldSyncFile is a log file whose Sync, once hold is set, waits for
// release.
type heldSyncFile struct {
	*os.File
	hold    *atomic.Bool
	syncing chan struct{}
	release chan struct{}
}

func (f heldSyncFile) Sync() error {
	if f.hold.Load() {
		f.syncing <- struct{}{}
		<-f.release
	}
	return f.File.Sync()
}

// TestReadDoesNotWaitForAnotherRecordsFsync: a record already on file is
// read while a Sync of later records waits for its fsync (a queue reads a
// message's body while the start of its delivery attempt is committed);
// a record the Sync is writing is read once it is written.
func TestReadDoesNotWaitForAnotherRecordsFsync(t *testing.T) {
	var hold atomic.Bool
	syncing, release := make(chan struct{}, 1), make(chan struct{})
	opts := wal.Options{OpenFile: func(name string, flag int, perm os.FileMode) (wal.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		return heldSyncFile{f, &hold, syncing, release}, nil
	}}
	l, _ := open(t, t.TempDir(), opts)
	old, err := l.AppendSync([]byte("on file"))
	require.NoError(t, err)
	hold.Store(true)
	pending, err := l.Append([]byte("being committed"))
	require.NoError(t, err)
	synced := make(chan error, 1)
	go func() { synced <- l.Sync() }()
	<-syncing
	read := make(chan []byte, 1)
	go func() {
		b, err := l.ReadAt(old)
		assert.NoError(t, err)
		read <- b
	}()
	select {
	case b := <-read:
		assert.Equal(t, "on file", string(b))
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("reading a record on file waited for another record's fsync")
	}
	hold.Store(false)
	close(release)
	require.NoError(t, <-synced)
	b, err := l.ReadAt(pending)
	require.NoError(t, err)
	assert.Equal(t, "being committed", string(b))
}

// TestSyncWithinRidesAnotherCommit: a record committed with SyncWithin is
// made durable by another caller's Sync and adds no fsync of its own.
func TestSyncWithinRidesAnotherCommit(t *testing.T) {
	l, _ := open(t, t.TempDir(), wal.Options{})
	_, err := l.Append([]byte("result"))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- l.SyncWithin(time.Hour) }()
	select {
	case err := <-done:
		t.Fatalf("SyncWithin returned (%v) before any commit", err)
	case <-time.After(50 * time.Millisecond):
	}
	_, err = l.AppendSync([]byte("intake"))
	require.NoError(t, err)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("SyncWithin still waits after another caller's commit covered its record")
	}
	assert.Equal(t, uint64(1), l.Stats().Syncs, "the two records share one fsync")
	require.NoError(t, l.SyncWithin(time.Hour), "nothing to commit: returns at once")
}

// TestSyncWithinCommitsAlone: with nobody else committing, SyncWithin
// commits its record itself once its delay is over.
func TestSyncWithinCommitsAlone(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, wal.Options{})
	_, err := l.Append([]byte("alone"))
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, l.SyncWithin(20*time.Millisecond))
	assert.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond, "it waited for another commit first")
	assert.Equal(t, uint64(1), l.Stats().Syncs)
}

// TestSyncWithinReportsFailure: a commit that fails fails SyncWithin, as it
// fails Sync, and a Log closed while a caller waits commits its record.
func TestSyncWithinReportsFailure(t *testing.T) {
	var failSync, failWrite atomic.Bool
	opts := wal.Options{OpenFile: func(name string, flag int, perm os.FileMode) (wal.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		return faultFile{f, &failSync, &failWrite}, nil
	}}
	l, _ := open(t, t.TempDir(), opts)
	_, err := l.Append([]byte("lost"))
	require.NoError(t, err)
	failSync.Store(true)
	assert.ErrorIs(t, l.SyncWithin(time.Millisecond), wal.ErrFailed)

	dir := t.TempDir()
	l, _ = open(t, dir, wal.Options{})
	_, err = l.Append([]byte("closed while waiting"))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- l.SyncWithin(time.Hour) }()
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, l.Close())
	select {
	case err := <-done:
		require.NoError(t, err, "Close committed the record")
	case <-time.After(10 * time.Second):
		t.Fatal("SyncWithin still waits after Close")
	}
	_, got := open(t, dir, wal.Options{})
	assert.Equal(t, []string{"closed while waiting"}, payloads(got))
}
