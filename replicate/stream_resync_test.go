package replicate_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// TestReplicaFullSyncWhenTooFarBehind stops a replica, lets the primary
// write and compact its journal past the replica's position, and starts
// the replica again: the primary answers 410, the replica compares with
// the primary's inventory and repairs, then follows the stream again.
func TestReplicaFullSyncWhenTooFarBehind(t *testing.T) {
	ctx := context.Background()
	// HoldBytes: 1 lets compaction drop the journal held for the replica.
	src, err := store.Open(t.TempDir(), &store.Options{Logger: quietLogger(), KeepChanges: 1, SegmentSize: 4096, ScrubInterval: -1, HoldBytes: 1})
	require.NoError(t, err)
	defer src.Close()
	dst := openStore(t, t.TempDir())
	inbox := t.TempDir()
	_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", 10)
	r, stop := startReplica(t, dst, srv.URL, inbox, nil)
	waitApplied(t, r, src)
	stop()
	srv.CloseClientConnections()

	// While the replica is away: new mail, flags, an expunge, a new
	// mailbox and user, and the journal compacted past the replica.
	for range 40 {
		add(t, src, "alice", "INBOX", msgText("later", string(bytes.Repeat([]byte("y"), 200))))
	}
	_, err = src.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(2, 3), []string{`\Seen`})
	require.NoError(t, err)
	_, err = src.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(4))
	require.NoError(t, err)
	_, err = src.CreateMailbox(ctx, "alice", "Archive")
	require.NoError(t, err)
	require.NoError(t, src.CreateUser(ctx, "bob"))
	addN(t, src, "bob", "INBOX", 3)
	require.NoError(t, src.Compact(ctx))
	require.Greater(t, src.OldestPosition(), r.Stats().Received+1, "the journal no longer reaches the replica")

	r, _ = startReplica(t, dst, srv.URL, inbox, nil)
	require.Eventually(t, func() bool { return r.Stats().Repairs > 0 && r.Stats().Received >= src.Position() },
		10*time.Second, 5*time.Millisecond, "%+v", r.Stats())
	waitApplied(t, r, src)
	requireSame(t, src, dst)

	// And the stream goes on from there.
	addN(t, src, "bob", "INBOX", 2)
	waitApplied(t, r, src)
	requireSame(t, src, dst)
}

// conflictingPair makes a primary on which alice has primaryMessages
// messages, served on loopback, and a replica store on which alice exists
// already, with an INBOX of its own (another mailbox id and UIDVALIDITY)
// holding replicaMessages.
func conflictingPair(t *testing.T, primaryMessages, replicaMessages int) (src, dst *store.Store, url string) {
	ctx := context.Background()
	src, dst = openStore(t, t.TempDir()), openStore(t, t.TempDir())
	require.NoError(t, dst.CreateUser(ctx, "alice"))
	addN(t, dst, "alice", "INBOX", replicaMessages)
	_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", primaryMessages)
	// The replica follows src from its start: its own mailbox is not
	// another history but state that contradicts the stream's changes.
	require.NoError(t, dst.AdoptUpstream(ctx, src.History()))
	return src, dst, srv.URL
}

func TestReplicaRepairsAConflictingUser(t *testing.T) {
	ctx := context.Background()
	src, dst, url := conflictingPair(t, 5, 0)
	require.NoError(t, src.CreateUser(ctx, "bob"))
	addN(t, src, "bob", "INBOX", 2)
	r, _ := startReplica(t, dst, url, t.TempDir(), nil)
	waitApplied(t, r, src)
	requireSame(t, src, dst)
	st := r.Stats()
	assert.Positive(t, st.Conflicts)
	assert.Positive(t, st.Repairs)
	assert.Contains(t, st.LastError, "conflicts")

	// Later changes of the repaired user apply as usual.
	addN(t, src, "alice", "INBOX", 2)
	_, err := src.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(1), []string{`\Flagged`})
	require.NoError(t, err)
	waitApplied(t, r, src)
	requireSame(t, src, dst)
}

// TestReplicaConflictRepairHoldsALargeRemoval: repairing the conflict
// would replace a replica mailbox of 30 messages; that removal is held for
// an operator instead, and the replica's messages stay.
func TestReplicaConflictRepairHoldsALargeRemoval(t *testing.T) {
	_, dst, url := conflictingPair(t, 2, 30)
	r, _ := startReplica(t, dst, url, t.TempDir(), nil)
	require.Eventually(t, func() bool { return r.Stats().RepairsHeld > 0 }, 10*time.Second, 5*time.Millisecond, "%+v", r.Stats())
	st, err := dst.MailboxStatus(context.Background(), "alice", "INBOX")
	require.NoError(t, err)
	assert.Equal(t, 30, int(st.Messages), "the replica's messages are not removed without confirmation")
}

// TestReplicaOfAnotherHistory points a replica that followed one primary
// at another, unrelated one whose journal is shorter: the primary answers
// with a divergence (a history it does not know), and the replica
// compares with it, repairs, resets its positions to the new history and
// follows it on its own: no change of the new primary is skipped, and the
// stores end equal.
func TestReplicaOfAnotherHistory(t *testing.T) {
	ctx := context.Background()
	old, other := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	dst := openStore(t, t.TempDir())
	inbox := t.TempDir()
	require.NoError(t, old.CreateUser(ctx, "alice"))
	addN(t, old, "alice", "INBOX", 12)
	_, srv := servePrimary(t, old, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	r, stop := startReplica(t, dst, srv.URL, inbox, nil)
	waitApplied(t, r, old)
	stop()
	require.Equal(t, old.History(), dst.UpstreamHistory())

	require.NoError(t, other.CreateUser(ctx, "alice"))
	addN(t, other, "alice", "INBOX", 2)
	require.NoError(t, other.CreateUser(ctx, "bob"))
	addN(t, other, "bob", "INBOX", 2)
	_, srv2 := servePrimary(t, other, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	var logs lockedBuffer
	r, _ = startReplica(t, dst, srv2.URL, inbox, &replicate.ReplicaOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Repair: &replicate.RepairOptions{MaxRemoveShare: 1}})
	require.Eventually(t, func() bool { return r.Stats().Rejoins > 0 }, 10*time.Second, 5*time.Millisecond, "%+v", r.Stats())
	waitApplied(t, r, other)
	requireSame(t, other, dst)
	assert.Positive(t, r.Stats().Repairs)
	assert.Contains(t, logs.String(), "is unknown to this primary")
	assert.Equal(t, other.History(), dst.UpstreamHistory())

	// No change of the new history is skipped: its positions are lower
	// than those the replica applied from the old one.
	for range 3 {
		add(t, other, "alice", "INBOX", msgText("next", "n"))
	}
	_, err := other.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(1), []string{`\Seen`})
	require.NoError(t, err)
	waitApplied(t, r, other)
	requireSame(t, other, dst)
}

// lockedBuffer is a bytes.Buffer for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestReplicaComparer damages a replica behind its stream's back (a
// message lost, flags changed, a mailbox that only the replica has): the
// replica's own Comparer, reaching the primary with the stream's
// credentials, finds every difference and repairs it UID by UID while the
// stream keeps running, and a second run finds nothing.
func TestReplicaComparer(t *testing.T) {
	ctx := context.Background()
	src, dst := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", 10)
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), nil)
	waitApplied(t, r, src)

	_, err := dst.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(3))
	require.NoError(t, err)
	_, err = dst.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(5), []string{`\Flagged`})
	require.NoError(t, err)
	_, err = dst.CreateMailbox(ctx, "alice", "Stray")
	require.NoError(t, err)

	c, err := r.Comparer(nil)
	require.NoError(t, err)
	rep, res, err := c.RunOnce(ctx)
	require.NoError(t, err)
	assert.Equal(t, 3, rep.Differences(), "the lost message, the flags and the stray mailbox")
	// The INBOX is patched, not replaced: the lost UID is restored under
	// its UID, the message with the replica's own flags restored with
	// the primary's.
	assert.Zero(t, res.MailboxesReplaced)
	assert.Equal(t, 1, res.Appended)
	assert.Equal(t, 1, res.FlagsSet)
	assert.Equal(t, 1, res.MailboxesDeleted)
	inbox := mailboxID(t, src, "alice", "INBOX")
	want, err := src.MessageRange(ctx, "alice", inbox, 1, ^uint32(0), 100)
	require.NoError(t, err)
	got, err := dst.MessageRange(ctx, "alice", inbox, 1, ^uint32(0), 100)
	require.NoError(t, err)
	assert.Equal(t, want, got)
	// The replica's own writes raised its HIGHESTMODSEQ, which does not go
	// back: it is reported, and heals once the primary passes it.
	assert.Len(t, res.Unrepairable, 1)

	// The stream goes on undisturbed, and the next run finds nothing.
	addN(t, src, "alice", "INBOX", 2)
	waitApplied(t, r, src)
	rep, _, err = c.RunOnce(ctx)
	require.NoError(t, err)
	assert.Zero(t, rep.Differences())
	requireSame(t, src, dst)
	assert.Equal(t, 2, c.Stats().Runs)
}

// TestCorruptionOnThePrimaryIsRestoredFromTheReplica flips a byte of a
// body file on the primary: the primary reports it and never ships it (a
// replica following a copy of it gets no bytes), and the replica's
// comparison finds the damage and sends its good copy, which the primary
// verifies and serves again. A forged copy is refused.
func TestCorruptionOnThePrimaryIsRestoredFromTheReplica(t *testing.T) {
	ctx := context.Background()
	srcDir := t.TempDir()
	src, dst := openStore(t, srcDir), openStore(t, t.TempDir())
	p, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	content := msgText("precious", strings.Repeat("only copy left is on the replica ", 20))
	add(t, src, "alice", "INBOX", content)
	addN(t, src, "alice", "INBOX", 3)
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), nil)
	waitApplied(t, r, src)

	d := resilmail.DigestOf([]byte(content))
	flipBody(t, srcDir, d)
	rep, err := src.Scrub(ctx)
	require.NoError(t, err)
	assert.Equal(t, []resilmail.Digest{d}, rep.Corrupt, "the primary reports the damage")
	resp := get(t, ctx, srv.URL+"/body/"+d.String()+"?replica=other", streamSecret)
	resp.Body.Close()
	assert.Equal(t, http.StatusInternalServerError, resp.StatusCode, "and never ships it")

	// A forged copy restores nothing.
	req, err := http.NewRequest("PUT", srv.URL+"/body/"+d.String(), strings.NewReader(content+"forged"))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+replicate.StreamToken(streamSecret))
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	_, err = src.Body(ctx, d)
	require.ErrorIs(t, err, store.ErrCorrupt)

	c, err := r.Comparer(nil)
	require.NoError(t, err)
	report, _, err := c.RunOnce(ctx)
	require.NoError(t, err)
	assert.Equal(t, "alice/INBOX: UID 1 body corrupt on the primary\n", report.String())
	assert.Equal(t, 1, c.Stats().PrimaryRestored)
	b, err := src.Body(ctx, d)
	require.NoError(t, err, "the primary serves its restored copy")
	assert.Equal(t, content, string(b))
	assert.Zero(t, src.Stats().CorruptBodies)
	assert.Equal(t, uint64(1), p.Stats().BodiesRestored)

	report, _, err = c.RunOnce(ctx)
	require.NoError(t, err)
	assert.True(t, report.Equal())
	requireSame(t, src, dst)
}
