package replicate_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// messageBodies returns the bodies of the messages of user's mailbox.
func messageBodies(t testing.TB, s *store.Store, user, mailbox string) []string {
	t.Helper()
	ctx := context.Background()
	list, err := s.Mailboxes(ctx, user)
	require.NoError(t, err)
	var out []string
	for _, mb := range list {
		if mb.Name != mailbox {
			continue
		}
		msgs, err := s.MessageRange(ctx, user, mb.ID, 1, ^uint32(0), 1<<20)
		require.NoError(t, err)
		for _, m := range msgs {
			b, err := s.Body(ctx, m.Digest)
			require.NoError(t, err)
			out = append(out, string(b))
		}
	}
	return out
}

// TestOldPrimaryRejoinsWithOrphans: a primary acknowledges deliveries its
// replica never receives, the replica is promoted and takes writes (one
// of them an expunge), and the old primary rejoins as a replica of it:
// every delivery only the old primary had is re-delivered into the new
// primary (in the orphan mailbox, with a header saying why), counted and
// listed; the message the new primary's user expunged stays expunged; and
// both stores end equal, then follow the stream.
func TestOldPrimaryRejoinsWithOrphans(t *testing.T) {
	ctx := context.Background()
	old, nu := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	oldP, until := replicateThenCut(t, old, nu, []string{"alice", "bob"}, 5)

	// Acknowledged by the old primary, never replicated.
	var orphans []string
	for i := range 3 {
		m := msgText("orphan", strings.Repeat("a", i+1))
		add(t, old, "alice", "INBOX", m, `\Flagged`)
		orphans = append(orphans, m)
	}
	m := msgText("orphan of bob", "b")
	add(t, old, "bob", "INBOX", m)
	orphans = append(orphans, m)
	_, err := old.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(1), []string{`\Seen`})
	require.NoError(t, err)

	// The replica is promoted and takes writes.
	require.NoError(t, nu.Promote(ctx, 2, until))
	add(t, nu, "alice", "INBOX", msgText("after promotion", "new"))
	_, err = nu.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(2))
	require.NoError(t, err)
	_, nuSrv := servePrimary(t, nu, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})

	// The old primary learns of it and rejoins as a replica.
	require.NoError(t, oldP.Demote(ctx, 2))
	_, err = old.CreateMailbox(ctx, "alice", "late")
	require.ErrorIs(t, err, store.ErrReadOnly, "a demoted store refuses writes")
	inbox := t.TempDir()
	r2, _ := startReplica(t, old, nuSrv.URL, inbox, nil)
	require.Eventually(t, func() bool { return r2.Stats().Rejoins > 0 }, 10*time.Second, 5*time.Millisecond, "%+v", r2.Stats())
	waitApplied(t, r2, nu)
	requireSame(t, nu, old)

	st := r2.Stats()
	assert.Equal(t, 4, st.Orphans)
	list, err := r2.Orphans()
	require.NoError(t, err)
	require.Len(t, list, 4)
	for _, o := range list {
		require.NotNil(t, o.Kept)
		assert.Equal(t, replicate.DefaultOrphanMailbox, o.Kept.Mailbox)
		assert.Equal(t, old.History(), o.Origin.History)
		assert.Greater(t, o.Origin.Seq, until)
	}
	kept := append(messageBodies(t, nu, "alice", replicate.DefaultOrphanMailbox), messageBodies(t, nu, "bob", replicate.DefaultOrphanMailbox)...)
	require.Len(t, kept, 4, "every orphan is readable on the new primary")
	for i, b := range kept {
		assert.True(t, strings.HasPrefix(b, replicate.OrphanHeader+": origin="+old.History().String()), b)
		assert.True(t, strings.HasSuffix(b, orphans[i]), "orphan %d keeps its message", i)
	}
	assert.Equal(t, uint64(4), nu.Stats().OrphansKept)
	for _, b := range messageBodies(t, nu, "alice", "INBOX") {
		assert.NotContains(t, b, "alice/INBOX 1", "the message expunged on the new primary stays expunged")
	}

	// And the stream goes on.
	add(t, nu, "bob", "INBOX", msgText("later", "later"))
	waitApplied(t, r2, nu)
	requireSame(t, nu, old)
	require.NoError(t, r2.Close())
	r2, _ = startReplica(t, old, nuSrv.URL, inbox, nil)
	add(t, nu, "bob", "INBOX", msgText("after a restart", "later"))
	waitApplied(t, r2, nu)
	requireSame(t, nu, old)
	assert.Zero(t, r2.Stats().Rejoins, "a restarted replica resumes in the new history")
}

// TestOldPrimaryFencedAtItsOwnEpochRejoins: an old primary fenced at its
// own epoch (a lease lost, not a higher epoch heard of) rejoins a primary
// promoted at a higher epoch, through a comparison (it holds orphans), and
// then follows its stream. It claimed its position in the new history
// with its own, older epoch, which that history holds only up to the
// promotion: refused, it compared and repaired again, for ever, never
// following (examples/primary TestPairFailoverUnderLMTPLoad, after etcd's
// leader was killed).
func TestOldPrimaryFencedAtItsOwnEpochRejoins(t *testing.T) {
	ctx := context.Background()
	old, nu := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	oldP, until := replicateThenCut(t, old, nu, []string{"alice"}, 3)
	add(t, old, "alice", "INBOX", msgText("orphan", "o"))

	require.NoError(t, nu.Promote(ctx, 5, until))
	add(t, nu, "alice", "INBOX", msgText("after promotion", "new"))
	_, nuSrv := servePrimary(t, nu, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, oldP.Demote(ctx, 1))

	r2, _ := startReplica(t, old, nuSrv.URL, t.TempDir(), nil)
	require.Eventually(t, func() bool { st := r2.Stats(); return st.Rejoins > 0 && st.Connected }, 10*time.Second, 5*time.Millisecond,
		"the old primary follows the new one's stream after its rejoin: %+v", r2.Stats())
	add(t, nu, "alice", "INBOX", msgText("after the rejoin", "later"))
	waitApplied(t, r2, nu)
	requireSame(t, nu, old)
	assert.Equal(t, uint64(1), r2.Stats().Rejoins, "it rejoined once")
}

// TestReplicaOfAPromotedSibling points a second replica of a primary at
// its promoted sibling: one that received exactly what the sibling had
// resumes without a comparison; one that received more (a longer
// history) keeps what the sibling never got as orphans; both end equal
// with the new primary and follow it, no change skipped.
func TestReplicaOfAPromotedSibling(t *testing.T) {
	for _, longer := range []bool{false, true} {
		name := "same point"
		if longer {
			name = "longer history"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			src, r1s, r2s := openStore(t, t.TempDir()), openStore(t, t.TempDir()), openStore(t, t.TempDir())
			_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
			require.NoError(t, src.CreateUser(ctx, "alice"))
			addN(t, src, "alice", "INBOX", 4)
			r1, stop1 := startReplica(t, r1s, srv.URL, t.TempDir(), &replicate.ReplicaOptions{Name: "r1"})
			inbox2 := t.TempDir()
			r2, stop2 := startReplica(t, r2s, srv.URL, inbox2, &replicate.ReplicaOptions{Name: "r2"})
			waitApplied(t, r1, src)
			stop1()
			if longer {
				add(t, src, "alice", "INBOX", msgText("only r2 got this", "x"))
				require.NoError(t, src.CreateUser(ctx, "carol"))
				add(t, src, "carol", "INBOX", msgText("and this", "y"))
			}
			waitApplied(t, r2, src)
			stop2()
			require.NoError(t, r1s.Promote(ctx, src.Epoch()+1, r1.Stats().Received))
			add(t, r1s, "alice", "INBOX", msgText("new primary", "z"))
			_, srv1 := servePrimary(t, r1s, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})

			r2, _ = startReplica(t, r2s, srv1.URL, inbox2, &replicate.ReplicaOptions{Name: "r2"})
			require.Eventually(t, func() bool { return r2.Stats().Rejoins > 0 }, 10*time.Second, 5*time.Millisecond, "%+v", r2.Stats())
			waitApplied(t, r2, r1s)
			requireSame(t, r1s, r2s)
			st := r2.Stats()
			if longer {
				assert.Equal(t, 2, st.Orphans)
				assert.Len(t, messageBodies(t, r1s, "alice", replicate.DefaultOrphanMailbox), 1)
				assert.Len(t, messageBodies(t, r1s, "carol", replicate.DefaultOrphanMailbox), 1)
			} else {
				assert.Zero(t, st.Orphans)
				assert.Zero(t, st.Repairs, "resumed where the new primary continued, without a comparison")
			}
			addN(t, r1s, "alice", "Other", 0)
			add(t, r1s, "alice", "INBOX", msgText("later", "later"))
			waitApplied(t, r2, r1s)
			requireSame(t, r1s, r2s)
		})
	}
}

// TestPrimaryDemote: Demote ends the streams with a clean "shutting
// down" frame, refuses writes at the store durably, and fails Await; a
// replica that has seen a higher epoch makes an old primary demote
// itself.
func TestPrimaryDemote(t *testing.T) {
	ctx := context.Background()
	src, dst := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	p, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), nil)
	waitApplied(t, r, src)
	require.NoError(t, p.Demote(ctx, 0))
	require.NoError(t, p.Demote(ctx, 0), "idempotent")
	require.Eventually(t, func() bool { return strings.Contains(r.Stats().LastError, "shutting down") }, 10*time.Second, 5*time.Millisecond, "%+v", r.Stats())
	_, err := src.CreateMailbox(ctx, "alice", "X")
	assert.ErrorIs(t, err, store.ErrReadOnly)
	assert.ErrorIs(t, p.Await(ctx, src.Position()), replicate.ErrFenced)
	assert.Equal(t, store.RoleFenced, src.Role())
	resp := get(t, ctx, srv.URL+"/changes?after=0&replica=r9", streamSecret)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)

	// An old primary that a replica with a higher epoch reaches.
	old, fresh := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	require.NoError(t, old.SetEpoch(ctx, 1))
	require.NoError(t, fresh.SetEpoch(ctx, 3))
	oldP, oldSrv := servePrimary(t, old, nil)
	r2, _ := startReplica(t, fresh, oldSrv.URL, t.TempDir(), nil)
	require.Eventually(t, func() bool { return old.Role() == store.RoleFenced }, 10*time.Second, 5*time.Millisecond, "%+v", r2.Stats())
	assert.Equal(t, resilmail.Epoch(3), oldP.Stats().FencedBy)
	assert.Equal(t, resilmail.Epoch(3), old.Epoch(), "the epoch it heard of is durable")
	assert.ErrorIs(t, old.CreateUser(ctx, "zed"), store.ErrReadOnly)
}

// TestRejoinWithCompactedJournalHoldsEveryRemoval: an old primary whose
// journal was compacted past the point where the histories parted cannot
// list its orphans; it rejoins, and every removal its repair would make
// is held for the operator (counted), so that none of the deliveries only
// it had is lost, however small the removal.
func TestRejoinWithCompactedJournalHoldsEveryRemoval(t *testing.T) {
	ctx := context.Background()
	old, err := store.Open(t.TempDir(), &store.Options{Logger: quietLogger(), ScrubInterval: -1, SegmentSize: 4 << 10, KeepChanges: 1, KeepBytes: 1})
	require.NoError(t, err)
	t.Cleanup(func() { old.Close() })
	nu := openStore(t, t.TempDir())
	oldP, until := replicateThenCut(t, old, nu, []string{"alice", "bob"}, 5)

	// Acknowledged by the old primary, never replicated; then its journal
	// is compacted past the parting point.
	var orphans []string
	for i := range 2 {
		m := msgText("orphan", strings.Repeat(string(rune('a'+i)), 6<<10))
		add(t, old, "alice", "INBOX", m)
		orphans = append(orphans, m)
	}
	m := msgText("orphan of bob", strings.Repeat("b", 6<<10))
	add(t, old, "bob", "INBOX", m)
	orphans = append(orphans, m)
	for _, h := range old.Holds() {
		require.NoError(t, old.Release(ctx, h.Name)) // the replica's hold, as HoldBytes or HoldMaxAge would drop it
	}
	require.NoError(t, old.Compact(ctx))
	require.Greater(t, old.OldestPosition(), until+1, "the journal no longer reaches the parting point")

	require.NoError(t, nu.Promote(ctx, 2, until))
	_, nuSrv := servePrimary(t, nu, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, oldP.Demote(ctx, 2))
	r2, _ := startReplica(t, old, nuSrv.URL, t.TempDir(), nil)
	require.Eventually(t, func() bool { return r2.Stats().Rejoins > 0 }, 10*time.Second, 5*time.Millisecond, "%+v", r2.Stats())
	assert.Positive(t, r2.Stats().RepairsHeld, "the removals are held for the operator")
	have := append(messageBodies(t, old, "alice", "INBOX"), messageBodies(t, old, "bob", "INBOX")...)
	for i, o := range orphans {
		assert.True(t, slices.Contains(have, o), "orphan %d is still on the old primary", i)
	}
}

// replicateThenCut makes old a primary at epoch 1 with users (the first
// one given n messages in its INBOX), replicates them to nu (read-only),
// and stops the replica: what old takes from then on is old's alone, as
// for a primary cut off before it failed. It returns old's Primary and
// the replica's position at the cut.
func replicateThenCut(t *testing.T, old, nu *store.Store, users []string, n int) (*replicate.Primary, uint64) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, old.SetEpoch(ctx, 1))
	require.NoError(t, nu.SetReadOnly(true))
	oldP, oldSrv := servePrimary(t, old, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	for _, u := range users {
		require.NoError(t, old.CreateUser(ctx, u))
	}
	addN(t, old, users[0], "INBOX", n)
	r, stop := startReplica(t, nu, oldSrv.URL, t.TempDir(), nil)
	waitApplied(t, r, old)
	stop()
	return oldP, r.Stats().Received
}
