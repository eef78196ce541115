package replicate_test

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/wal"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

var errNoSpace = errors.New("write: no space left on device (injected)")

// fullFile is an inbox segment file on a disk that is full while full is
// set: writes stop half-way and syncs fail.
type fullFile struct {
	*os.File
	full *atomic.Bool
}

func (f fullFile) WriteAt(b []byte, off int64) (int, error) {
	if f.full.Load() {
		n, _ := f.File.WriteAt(b[:len(b)/2], off)
		return n, errNoSpace
	}
	return f.File.WriteAt(b, off)
}

func (f fullFile) Sync() error {
	if f.full.Load() {
		return errNoSpace
	}
	return f.File.Sync()
}

// TestReplicaInboxOnAFullDisk: while the replica's inbox cannot be
// written, the replica acknowledges nothing more (a waiting writer is
// refused, temporarily), logs and counts the failure; once space is back
// it reopens the inbox by itself and catches up, with nothing lost.
func TestReplicaInboxOnAFullDisk(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	dst := openStore(t, t.TempDir())
	p, srv := servePrimary(t, src, &replicate.PrimaryOptions{Mode: replicate.AckOne, AckTimeout: 300 * time.Millisecond,
		Heartbeat: 50 * time.Millisecond})
	var full atomic.Bool
	r, err := replicate.NewReplica(dst, srv.URL, t.TempDir(), &replicate.ReplicaOptions{Name: "r1", Secret: streamSecret,
		Logger: quietLogger(), MaxBackoff: 100 * time.Millisecond})
	require.NoError(t, err)
	replicate.SetInboxFile(r, func(name string, flag int, perm os.FileMode) (wal.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		return fullFile{f, &full}, nil
	})
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { r.Close(); <-done })

	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", 3)
	require.NoError(t, p.Await(ctx, src.Position()))

	full.Store(true)
	acked := p.Stats().Replicas[0].Acked
	add(t, src, "alice", "INBOX", msgText("during", "the disk is full"))
	err = p.Await(ctx, src.Position())
	require.ErrorIs(t, err, replicate.ErrNotReplicated, "a waiting writer is refused while the replica cannot keep the change")
	assert.Equal(t, acked, p.Stats().Replicas[0].Acked)
	require.Eventually(t, func() bool { return r.Stats().InboxErrors > 0 }, 10*time.Second, 5*time.Millisecond)
	assert.Contains(t, r.Stats().LastError, "no space left")

	full.Store(false)
	addN(t, src, "alice", "INBOX", 2)
	require.NoError(t, p.Await(ctx, src.Position()))
	waitApplied(t, r, src)
	requireSame(t, src, dst)
}

// fullTarget is a store whose Apply fails as on a full disk while full is
// set.
type fullTarget struct {
	*store.Store
	full *atomic.Bool
}

func (f fullTarget) Apply(ctx context.Context, changes []resilmail.Change, body replicate.BodyFunc) error {
	if f.full.Load() {
		return errNoSpace
	}
	return f.Store.Apply(ctx, changes, body)
}

// TestReplicaTargetOnAFullDisk: while the replica's store cannot be
// written, the replica still keeps and acknowledges what arrives (its
// inbox holds it), reports the failed applies, and applies everything
// once space is back.
func TestReplicaTargetOnAFullDisk(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	dst := openStore(t, t.TempDir())
	var full atomic.Bool
	full.Store(true)
	p, srv := servePrimary(t, src, &replicate.PrimaryOptions{Mode: replicate.AckOne, Heartbeat: 50 * time.Millisecond})
	r, _ := startReplica(t, fullTarget{dst, &full}, srv.URL, t.TempDir(), nil)
	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", 5)
	require.NoError(t, p.Await(ctx, src.Position()), "acknowledged from the inbox")
	require.Eventually(t, func() bool { return r.Stats().ApplyErrors > 0 }, 10*time.Second, 5*time.Millisecond)
	assert.Contains(t, r.Stats().LastError, "no space left")
	assert.Zero(t, r.Stats().Applied)
	full.Store(false)
	waitApplied(t, r, src)
	requireSame(t, src, dst)
}

// TestReplicaApplyDelay: a delayed replica acknowledges a change at once
// and applies it only once it is ApplyDelay old.
func TestReplicaApplyDelay(t *testing.T) {
	ctx := context.Background()
	src, err := store.Open(t.TempDir(), &store.Options{Logger: quietLogger(), ScrubInterval: -1}) // the real clock
	require.NoError(t, err)
	defer src.Close()
	dst := openStore(t, t.TempDir())
	const delay = 400 * time.Millisecond
	p, srv := servePrimary(t, src, &replicate.PrimaryOptions{Mode: replicate.AckOne, Heartbeat: 50 * time.Millisecond})
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), &replicate.ReplicaOptions{ApplyDelay: delay})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	start := time.Now()
	add(t, src, "alice", "INBOX", msgText("later", "apply me later"))
	require.NoError(t, p.Await(ctx, src.Position()))
	assert.Less(t, time.Since(start), delay, "acknowledged before the delay")
	assert.Less(t, r.Stats().Applied, src.Position(), "not applied yet")
	waitApplied(t, r, src)
	assert.GreaterOrEqual(t, time.Since(start), delay)
	requireSame(t, src, dst)
}

// TestReplicaHeldAndConfirmedAcrossRestarts: a held change stays held
// after a restart, and a confirmation made before a restart holds after
// it: the change is applied without being held again.
func TestReplicaHeldAndConfirmedAcrossRestarts(t *testing.T) {
	src := heldExpungeSource(t, false)
	dst := openStore(t, t.TempDir())
	inbox := t.TempDir()
	_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	var asked atomic.Int64
	hold := func(ctx context.Context, c resilmail.Change) (bool, string) {
		asked.Add(1)
		return holdExpunges(ctx, c)
	}
	r, stop := startReplica(t, dst, srv.URL, inbox, &replicate.ReplicaOptions{Hold: hold})
	require.Eventually(t, func() bool { return len(r.Held()) == 1 }, 10*time.Second, 5*time.Millisecond)
	stop()

	r, stop = startReplica(t, dst, srv.URL, inbox, &replicate.ReplicaOptions{Hold: hold})
	require.Eventually(t, func() bool { return len(r.Held()) == 1 }, 10*time.Second, 5*time.Millisecond, "still held after a restart")
	seq := r.Held()[0].Change.Seq
	// Confirm while the store cannot apply it, then restart.
	var full atomic.Bool
	full.Store(true)
	stop()
	r, stop = startReplica(t, fullTarget{dst, &full}, srv.URL, inbox, &replicate.ReplicaOptions{Hold: hold})
	require.Eventually(t, func() bool { return len(r.Held()) == 1 }, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, r.Confirm("alice", seq))
	require.Eventually(t, func() bool { return r.Stats().ApplyErrors > 0 }, 10*time.Second, 5*time.Millisecond)
	stop()

	asked.Store(0)
	r, _ = startReplica(t, dst, srv.URL, inbox, &replicate.ReplicaOptions{Hold: hold})
	waitApplied(t, r, src)
	requireSame(t, src, dst)
	assert.Zero(t, asked.Load(), "the confirmed change is not held again")
	assert.Empty(t, r.Held())
}
