package queue_test

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/wal"
	"github.com/resilmail/resilmail/queue"
)

// heldSync is a log file whose fsyncs, once hold is set, wait for release
// and then return fail.
type heldSync struct {
	*os.File
	g *syncHold
}

type syncHold struct {
	hold     atomic.Bool
	syncing  chan struct{} // a held fsync started
	release  chan struct{}
	released atomic.Bool
	fail     error
}

func (f heldSync) Sync() error {
	if !f.g.hold.Load() {
		return f.File.Sync()
	}
	select {
	case f.g.syncing <- struct{}{}:
	default:
	}
	<-f.g.release
	f.g.released.Store(true)
	if f.g.fail != nil {
		return f.g.fail
	}
	return f.File.Sync()
}

// TestAttemptIsDurableBeforeTheBodyLeaves: the Deliverer opens its
// transaction while the attempt's start is being committed, but gets no
// byte of the message before the commit returned, and none at all if it
// failed.
func TestAttemptIsDurableBeforeTheBodyLeaves(t *testing.T) {
	for _, fail := range []error{nil, errors.New("disk gone")} {
		g := &syncHold{syncing: make(chan struct{}, 1), release: make(chan struct{}), fail: fail}
		called := make(chan struct{}, 1)
		type readResult struct {
			n        int
			err      error
			released bool
		}
		read := make(chan readResult, 1)
		d := resilmail.DelivererFunc(func(_ context.Context, _ resilmail.Envelope, body io.Reader) error {
			called <- struct{}{}
			b, err := io.ReadAll(body)
			read <- readResult{len(b), err, g.released.Load()}
			return err
		})
		opts := quietOpts()
		queue.SetOpenFile(opts, func(name string, flag int, perm os.FileMode) (wal.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			if err != nil {
				return nil, err
			}
			return heldSync{f, g}, nil
		})
		q := open(t, t.TempDir(), d, opts)
		_, err := q.Enqueue(context.Background(), envelope("held", "u@example.org"), body("held"))
		require.NoError(t, err)
		g.hold.Store(true)
		run(t, q)
		// Released at the latest when the test ends, before run's cleanup
		// waits for the queue: a failure must not leave it stuck in Sync.
		release := sync.OnceFunc(func() { close(g.release) })
		t.Cleanup(release)
		select {
		case <-g.syncing:
		case <-time.After(10 * time.Second):
			t.Fatal("the attempt's start was never committed")
		}
		select {
		case <-called:
		case <-time.After(10 * time.Second):
			t.Fatal("the Deliverer was not called during the commit")
		}
		release()
		r := <-read
		assert.True(t, r.released, "the body was read before the attempt's start was durable")
		if fail == nil {
			assert.NoError(t, r.err)
			assert.Positive(t, r.n)
		} else {
			assert.ErrorIs(t, r.err, fail)
			assert.Zero(t, r.n, "a byte of the message left though the attempt could not be recorded")
		}
	}
}
