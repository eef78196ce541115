package queue_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/wal"
	"github.com/resilmail/resilmail/queue"
)

// hashSink is a Deliverer that streams what it gets into a SHA-256 (read
// twice, as a Deliverer trying two hosts would), holding nothing.
type hashSink struct {
	mu        sync.Mutex
	sums      map[string]resilmail.Digest
	rereadErr error
	allocated uint64 // bytes allocated during the last Deliver
	gate      chan struct{}
}

func (s *hashSink) Deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	if s.gate != nil {
		<-s.gate
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	h := sha256.New()
	if _, err := io.Copy(h, body); err != nil {
		return err
	}
	sr, ok := body.(*io.SectionReader)
	var again resilmail.Digest
	if ok {
		h2 := sha256.New()
		io.Copy(h2, io.NewSectionReader(sr, 0, sr.Size()))
		h2.Sum(again[:0])
	}
	runtime.ReadMemStats(&after)
	s.mu.Lock()
	defer s.mu.Unlock()
	var d resilmail.Digest
	h.Sum(d[:0])
	s.sums[env.ID] = d
	s.allocated = after.TotalAlloc - before.TotalAlloc
	if !ok {
		s.rereadErr = fmt.Errorf("the body is a %T, not an *io.SectionReader", body)
	} else if again != d {
		s.rereadErr = fmt.Errorf("read again, the body differs")
	}
	return nil
}

func (s *hashSink) sum(id string) (resilmail.Digest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.sums[id]
	return d, ok
}

// A large body is delivered from the log in place: the Deliverer reads
// it (twice) without the queue holding it in memory.
func TestLargeBodyDeliveredInPlace(t *testing.T) {
	s := &hashSink{sums: map[string]resilmail.Digest{}}
	opts := quietOpts()
	q := open(t, t.TempDir(), s, opts)
	big := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), (16<<20)/64)
	_, err := q.Enqueue(context.Background(), envelope("big", "u@example.org"), bytes.NewReader(big))
	require.NoError(t, err)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	run(t, q)
	waitFor(t, "delivered", func() bool { _, ok := s.sum("big"); return ok && len(q.List(queue.Filter{})) == 0 })
	runtime.ReadMemStats(&after)
	d, _ := s.sum("big")
	assert.Equal(t, resilmail.DigestOf(big), d, "delivered intact")
	require.NoError(t, s.rereadErr)
	allocated := after.TotalAlloc - before.TotalAlloc
	assert.Less(t, allocated, uint64(4<<20), "a 16 MiB body is not read into memory to deliver it (allocated %d bytes)", allocated)
}

// gatedFile holds every large write to a log segment until the gate is
// closed, and says when the first one is waiting.
type gatedFile struct {
	wal.File
	waiting chan struct{}
	once    *sync.Once
	gate    chan struct{}
}

func (f gatedFile) WriteAt(p []byte, off int64) (int, error) {
	if len(p) >= 256<<10 {
		f.once.Do(func() { close(f.waiting) })
		<-f.gate
	}
	return f.File.WriteAt(p, off)
}

// Copying a large body into the log holds neither the queue nor the log:
// while the copy is stuck, the queue answers, small messages are
// acknowledged, and compaction (restating a large message in place)
// works after.
func TestLargeEnqueueDoesNotHoldTheQueue(t *testing.T) {
	opts := quietOpts()
	opts.SegmentSize = 4 << 20
	waiting, gate, once := make(chan struct{}), make(chan struct{}), &sync.Once{}
	queue.SetOpenFile(opts, func(name string, flag int, perm os.FileMode) (wal.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		return gatedFile{File: f, waiting: waiting, once: once, gate: gate}, nil
	})
	s := &hashSink{sums: map[string]resilmail.Digest{}}
	dir := t.TempDir()
	q := open(t, dir, s, opts)
	ctx := context.Background()
	big := bytes.Repeat([]byte("z"), 1<<20)
	done := make(chan error, 1)
	go func() {
		_, err := q.Enqueue(ctx, envelope("big", "u@big.example"), bytes.NewReader(big))
		done <- err
	}()
	<-waiting // the copy into the log has begun and is stuck
	segs, err := filepath.Glob(filepath.Join(dir, "log", "*.wal"))
	require.NoError(t, err)
	require.Len(t, segs, 1)
	answered := make(chan error, 1)
	go func() {
		q.Stats()
		q.List(queue.Filter{})
		_, err := q.Enqueue(ctx, envelope("small", "u@example.org"), bytes.NewReader([]byte("small")))
		answered <- err
	}()
	select {
	case err := <-answered:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		close(gate)
		t.Fatal("the queue waited for a large body's copy into the log")
	}
	close(gate)
	require.NoError(t, <-done)
	_, err = q.Hold(queue.Filter{Domain: "big.example"})
	require.NoError(t, err)
	run(t, q)
	waitFor(t, "the small one delivered", func() bool { _, ok := s.sum("small"); return ok })
	// Fill segments until the big message's is compacted away.
	for i := 0; ; i++ {
		if _, err := os.Stat(segs[0]); errors.Is(err, os.ErrNotExist) {
			break
		}
		require.Less(t, i, 400, "compaction never restated the held message")
		_, err := q.Enqueue(ctx, envelope(fmt.Sprint("pad", i), "u@example.org"), bytes.NewReader(bytes.Repeat([]byte("p"), 200<<10)))
		require.NoError(t, err)
	}
	_, err = q.Release(queue.Filter{Domain: "big.example"})
	require.NoError(t, err)
	waitFor(t, "the big one delivered", func() bool { _, ok := s.sum("big"); return ok })
	d, _ := s.sum("big")
	assert.Equal(t, resilmail.DigestOf(big), d, "intact after compaction")
}

// bounceSink refuses every recipient but the null sender's notices, which
// it keeps; it streams what it reads.
type bounceSink struct {
	mu      sync.Mutex
	notices []string
}

func (s *bounceSink) Deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	if env.From != "" {
		io.Copy(io.Discard, body)
		return &resilmail.DeliveryError{Code: 550, EnhancedCode: "5.1.1", Message: "no such user", Permanent: true}
	}
	b, err := io.ReadAll(body)
	s.mu.Lock()
	s.notices = append(s.notices, string(b))
	s.mu.Unlock()
	return err
}

// The bounce of a large message returns its header only (RET=HDRS, or a
// message over dsn.DefaultMaxOriginal) without reading its body whole.
func TestBounceOfALargeMessageReadsItsHeaderOnly(t *testing.T) {
	s := &bounceSink{}
	q := open(t, t.TempDir(), s, quietOpts())
	big := append([]byte("From: sender@example.net\r\nSubject: large\r\n\r\n"), bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), (16<<20)/64)...)
	env := envelope("big", "u@example.org")
	env.To[0].Notify = resilmail.NotifyFailure
	_, err := q.Enqueue(context.Background(), env, bytes.NewReader(big))
	require.NoError(t, err)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	run(t, q)
	waitFor(t, "the bounce", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.notices) == 1 })
	runtime.ReadMemStats(&after)
	s.mu.Lock()
	n := s.notices[0]
	s.mu.Unlock()
	assert.Contains(t, n, "text/rfc822-headers")
	assert.Contains(t, n, "Subject: large")
	assert.Less(t, len(n), 64<<10, "the header, not the body")
	allocated := after.TotalAlloc - before.TotalAlloc
	assert.Less(t, allocated, uint64(8<<20), "a 16 MiB body is not read whole to bounce it (allocated %d bytes)", allocated)
}
