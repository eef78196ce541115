package queue_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/wal"
	"github.com/resilmail/resilmail/queue"
)

var errPowerLost = errors.New("power lost")

// powerFS is a file-system shim that remembers, per file, how much of it an
// fsync made durable. At crash() it freezes (every later write and fsync
// fails) and cuts every file back to what was fsynced, keeping a random part
// of the unsynced tail as a torn write would.
type powerFS struct {
	mu     sync.Mutex
	rnd    *rand.Rand
	files  map[string]*powerFile
	frozen bool
}

type powerFile struct {
	fs     *powerFS
	name   string
	size   int64 // bytes written
	synced int64 // bytes durable
}

func (p *powerFS) open(name string, flag int, perm os.FileMode) (wal.File, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		return nil, errPowerLost
	}
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	pf := p.files[name]
	if pf == nil || flag&os.O_CREATE != 0 {
		pf = &powerFile{fs: p, name: name, size: fi.Size(), synced: fi.Size()}
		if flag&os.O_CREATE != 0 {
			pf.synced = 0
		}
		p.files[name] = pf
	}
	return &powerHandle{pf: pf, f: f}, nil
}

// crash cuts the power.
func (p *powerFS) crash() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.frozen = true
	for _, pf := range p.files {
		keep := pf.synced
		if pf.size > pf.synced {
			keep += p.rnd.Int64N(pf.size - pf.synced + 1)
		}
		if err := os.Truncate(pf.name, keep); err != nil && !errors.Is(err, os.ErrNotExist) {
			panic(err)
		}
	}
	p.files = map[string]*powerFile{}
}

type powerHandle struct {
	pf *powerFile
	f  *os.File
}

func (h *powerHandle) ReadAt(b []byte, off int64) (int, error) { return h.f.ReadAt(b, off) }

func (h *powerHandle) WriteAt(b []byte, off int64) (int, error) {
	p := h.pf.fs
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		return 0, errPowerLost
	}
	n, err := h.f.WriteAt(b, off)
	h.pf.size = max(h.pf.size, off+int64(n))
	return n, err
}

func (h *powerHandle) Sync() error {
	p := h.pf.fs
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		return errPowerLost
	}
	if err := h.f.Sync(); err != nil {
		return err
	}
	h.pf.synced = h.pf.size
	return nil
}

func (h *powerHandle) Truncate(n int64) error {
	p := h.pf.fs
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		return errPowerLost
	}
	if err := h.f.Truncate(n); err != nil {
		return err
	}
	h.pf.size = n
	h.pf.synced = min(h.pf.synced, n)
	return nil
}

func (h *powerHandle) Close() error { return h.f.Close() }

// remote is the next hop: what it received survives our power loss.
type remote struct {
	mu  sync.Mutex
	got map[string]int
}

func (r *remote) Deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	if _, err := io.Copy(io.Discard, body); err != nil {
		return err
	}
	r.mu.Lock()
	r.got[env.ID]++
	r.mu.Unlock()
	return nil
}

func (r *remote) missing(ids map[string]bool) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for id := range ids {
		if r.got[id] == 0 {
			out = append(out, id)
		}
	}
	return out
}

// TestPowerLoss cuts the power at random instants while messages are
// enqueued and delivered: every message Enqueue acknowledged must survive
// and be delivered after the restart.
func TestPowerLoss(t *testing.T) {
	rounds := 8
	if testing.Short() {
		rounds = 3
	}
	dir := filepath.Join(t.TempDir(), "q")
	rnd := rand.New(rand.NewPCG(rand.Uint64(), 7))
	rem := &remote{got: map[string]int{}}
	acked := map[string]bool{}
	var ackMu sync.Mutex
	for r := 0; r < rounds; r++ {
		pfs := &powerFS{rnd: rnd, files: map[string]*powerFile{}}
		opts := quietOpts()
		opts.Retry = queue.RetryPolicy{MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
		opts.SegmentSize = 128 << 10
		queue.SetOpenFile(opts, pfs.open)
		q, err := queue.Open(dir, rem, opts)
		require.NoError(t, err, "round %d", r)
		ctx, cancel := context.WithCancel(context.Background())
		runDone := make(chan struct{})
		go func() { q.Run(ctx); close(runDone) }()
		var n atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					id := fmt.Sprintf("r%d-w%d-%d", r, w, i)
					if _, err := q.Enqueue(ctx, envelope(id, "u@example.org"), strings.NewReader(strings.Repeat("y", 1500))); err != nil {
						continue
					}
					n.Add(1)
					ackMu.Lock()
					acked[id] = true
					ackMu.Unlock()
				}
			}()
		}
		// Cut the power after a random number of acknowledgements.
		want := int64(50 + rnd.IntN(400))
		deadline := time.Now().Add(10 * time.Second)
		for n.Load() < want && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond) // polling with a deadline
		}
		pfs.crash()
		cancel()
		wg.Wait()
		<-runDone
		q.Close() // fails: the power is off; it only releases the lock
		t.Logf("round %d: power cut after %d acknowledgements", r, n.Load())
	}

	q := open(t, dir, rem, &queue.Options{Logger: discardLogger(), MinFreeBytes: -1,
		Retry: queue.RetryPolicy{MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}})
	run(t, q)
	deadline := time.Now().Add(20 * time.Second)
	for len(rem.missing(acked)) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
	missing := rem.missing(acked)
	for _, id := range missing {
		t.Errorf("acknowledged message %s lost in a power cut", id)
	}
	t.Logf("%d acknowledged over %d power cuts, %d lost; torn bytes moved aside %d", len(acked), rounds, len(missing), q.Stats().DamagedBytes)
}

// TestReportedDeliveryIsDurable: a delivery's results ride other commits
// (an idle queue commits them itself a moment later), but the queue
// reports a delivery only once its result is durable, so a power cut after
// the report does not send the message again.
func TestReportedDeliveryIsDurable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "q")
	rem := &remote{got: map[string]int{}}
	pfs := &powerFS{rnd: rand.New(rand.NewPCG(rand.Uint64(), 9)), files: map[string]*powerFile{}}
	opts := quietOpts()
	queue.SetOpenFile(opts, pfs.open)
	delivered := make(chan string, 1)
	opts.Hooks.Event = func(e queue.Event) {
		if e.Kind == queue.EventDelivered {
			pfs.crash() // power off the moment the delivery is reported
			delivered <- e.ID
		}
	}
	q, err := queue.Open(dir, rem, opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { q.Run(ctx); close(runDone) }()
	_, err = q.Enqueue(ctx, envelope("once", "u@example.org"), body("once"))
	require.NoError(t, err)
	select {
	case <-delivered:
	case <-time.After(10 * time.Second):
		t.Fatal("the message was not delivered")
	}
	cancel()
	<-runDone
	q.Close() // fails: the power is off; it only releases the lock

	q = open(t, dir, rem, quietOpts())
	require.Zero(t, q.Stats().Recipients, "a delivery reported before the power cut is finished after it, not to be sent again")
	rem.mu.Lock()
	defer rem.mu.Unlock()
	require.Equal(t, 1, rem.got["once"])
}
