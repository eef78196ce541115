package replicate_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// TestGuardDelaysInsteadOfHolding: a held expunge no longer holds its
// user's lane: the user's later deliveries apply while it waits, and a
// restart keeps it delayed until it is confirmed.
func TestGuardDelaysInsteadOfHolding(t *testing.T) {
	ctx := context.Background()
	src, dst := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	require.NoError(t, dst.SetReadOnly(true))
	_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", 3)
	inbox := t.TempDir()
	r, stop := startReplica(t, dst, srv.URL, inbox, &replicate.ReplicaOptions{Hold: holdExpunges})
	waitApplied(t, r, src)
	_, err := src.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(1, 2, 3))
	require.NoError(t, err)
	add(t, src, "alice", "INBOX", msgText("later", "1"))
	add(t, src, "alice", "INBOX", msgText("later", "2"))
	delayed := func() {
		require.Eventually(t, func() bool {
			st, err := dst.MailboxStatus(ctx, "alice", "INBOX")
			return err == nil && st.Messages == 5 && len(r.Held()) == 1
		}, 10*time.Second, 5*time.Millisecond, "the later deliveries apply while the expunge waits")
	}
	delayed()
	stop()
	r, _ = startReplica(t, dst, srv.URL, inbox, &replicate.ReplicaOptions{Hold: holdExpunges})
	delayed()
	require.NoError(t, r.Confirm("alice", r.Held()[0].Change.Seq))
	require.Eventually(t, func() bool { return r.Stats().Held == 0 && r.Stats().Applied >= src.Position() }, 10*time.Second, 5*time.Millisecond)
	requireSame(t, src, dst)
}

// TestPromoteWhileHeldAndInFlight promotes a replica while a destructive
// change of one user is delayed and deliveries are still arriving:
// everything the replica acknowledged is applied before the store becomes
// a primary at the new epoch, durably; the delayed change waits for the
// operator and applies as a change of the new primary once confirmed.
func TestPromoteWhileHeldAndInFlight(t *testing.T) {
	ctx := context.Background()
	src, dst := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	require.NoError(t, dst.SetReadOnly(true))
	p, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond, Mode: replicate.AckOne, AckTimeout: 300 * time.Millisecond})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	require.NoError(t, src.CreateUser(ctx, "bob"))
	addN(t, src, "alice", "INBOX", 3)
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), &replicate.ReplicaOptions{Hold: holdExpunges})
	waitApplied(t, r, src)
	_, err := src.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(1, 2, 3))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(r.Held()) == 1 }, 10*time.Second, 5*time.Millisecond)

	// Deliveries keep coming while the replica is promoted; the ones
	// acknowledged must all be there.
	done := make(chan struct{})
	acked := make(chan uint64, 1000)
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			user := []string{"alice", "bob"}[i%2]
			if _, err := src.Append(ctx, user, "INBOX", nil, time.Time{}, stringsReader(msgText("in flight", string(rune('a'+i%26))))); err != nil {
				return
			}
			pos := src.Position()
			if p.Await(ctx, pos) != nil {
				return // the replica was promoted: it acknowledges no more
			}
			acked <- pos
			if i == 200 {
				return
			}
		}
	}()
	require.Eventually(t, func() bool { return len(acked) > 20 }, 10*time.Second, time.Millisecond)
	res, err := r.Promote(ctx, src.Epoch()+1)
	require.NoError(t, err)
	<-done
	close(acked)
	var last uint64
	for pos := range acked {
		last = max(last, pos)
	}
	t.Logf("promotion: drained %d changes, took %v, until %d", res.Drained, res.Took, res.Until)
	assert.GreaterOrEqual(t, res.Until, last, "everything acknowledged was received")
	assert.Equal(t, store.RolePrimary, dst.Role())
	assert.Equal(t, res.Epoch, dst.Epoch())
	require.Len(t, res.Held, 1, "the expunge waits for the operator")
	again, err := r.Promote(ctx, res.Epoch)
	require.NoError(t, err)
	assert.Equal(t, res.Until, again.Until, "idempotent")

	// Every acknowledged delivery is on the new primary: the source's
	// state up to Until, but for the delayed expunge.
	for _, user := range []string{"alice", "bob"} {
		want := messageBodies(t, src, user, "INBOX")
		got := messageBodies(t, dst, user, "INBOX")
		if user == "alice" {
			got = got[3:] // the three the delayed expunge would remove
		}
		require.GreaterOrEqual(t, len(got), 1)
		assert.Equal(t, want[:len(got)], got, "user %s", user)
	}
	_, err = dst.CreateMailbox(ctx, "alice", "new")
	require.NoError(t, err, "the new primary takes writes")

	before := len(messageBodies(t, dst, "alice", "INBOX"))
	require.NoError(t, r.Confirm("alice", res.Held[0].Change.Seq))
	require.Eventually(t, func() bool {
		return len(r.Held()) == 0 && len(messageBodies(t, dst, "alice", "INBOX")) == before-3
	}, 10*time.Second, 5*time.Millisecond, "the confirmed expunge applies on the new primary")
	got := messageBodies(t, dst, "alice", "INBOX")
	assert.Equal(t, messageBodies(t, src, "alice", "INBOX")[:len(got)], got)
}

func stringsReader(s string) *stringReader { return &stringReader{s: s} }

type stringReader struct{ s string }

func (r *stringReader) Read(p []byte) (int, error) {
	if r.s == "" {
		return 0, io.EOF
	}
	n := copy(p, r.s)
	r.s = r.s[n:]
	return n, nil
}

// TestGuardFlagWipeAndRenameOver: the guard holds a mass flag wipe and a
// rename over a mailbox that holds messages, and lets a small flag change
// and a rename to a free name through.
func TestGuardFlagWipeAndRenameOver(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	require.NoError(t, s.CreateUser(ctx, "alice"))
	addN(t, s, "alice", "INBOX", 30)
	_, err := s.CreateMailbox(ctx, "alice", "Old")
	require.NoError(t, err)
	addN(t, s, "alice", "Old", 1)
	guard := replicate.NewExpungeGuard(s, &replicate.ExpungeGuardOptions{Logger: quietLogger()})
	inbox, old := mailboxID(t, s, "alice", "INBOX"), mailboxID(t, s, "alice", "Old")
	st, err := s.MailboxStatus(ctx, "alice", "INBOX")
	require.NoError(t, err)
	flags := func(op resilmail.FlagOp, uids resilmail.UIDSet) resilmail.Change {
		return resilmail.Change{Kind: resilmail.ChangeFlags, User: "alice", Mailbox: "INBOX", MailboxID: inbox, UIDValidity: st.UIDValidity,
			FlagOp: op, UIDs: uids, Flags: []string{`\Seen`}}
	}
	all := resilmail.UIDSet{{Start: 1, Stop: 30}}
	hold, reason := guard(ctx, flags(resilmail.FlagsRemove, all))
	assert.True(t, hold, reason)
	hold, _ = guard(ctx, flags(resilmail.FlagsSet, all))
	assert.True(t, hold)
	hold, _ = guard(ctx, flags(resilmail.FlagsAdd, all))
	assert.False(t, hold, "adding flags removes nothing")
	hold, _ = guard(ctx, flags(resilmail.FlagsRemove, resilmail.NewUIDSet(1, 2)))
	assert.False(t, hold)
	rename := resilmail.Change{Kind: resilmail.ChangeMailboxRename, User: "alice", Mailbox: "INBOX", MailboxID: inbox, NewName: "Old"}
	hold, reason = guard(ctx, rename)
	assert.True(t, hold, reason)
	rename.NewName, rename.MailboxID = "Free", old
	hold, _ = guard(ctx, rename)
	assert.False(t, hold)
}

// TestPromotionSurvivesRestart: a promoted replica restarted over the same
// folder stays promoted (it does not follow its old primary again, which
// still serves), and a delayed change confirmed after the restart applies
// as a change of the new epoch instead of being refused as fenced.
func TestPromotionSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	src, dst := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	require.NoError(t, dst.SetReadOnly(true))
	_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", 3)
	inbox := t.TempDir()
	r, stop := startReplica(t, dst, srv.URL, inbox, &replicate.ReplicaOptions{Hold: holdExpunges})
	waitApplied(t, r, src)
	_, err := src.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(1, 2))
	require.NoError(t, err)
	add(t, src, "alice", "INBOX", msgText("later", "1"))
	require.Eventually(t, func() bool {
		st, err := dst.MailboxStatus(ctx, "alice", "INBOX")
		return err == nil && st.Messages == 4 && len(r.Held()) == 1
	}, 10*time.Second, 5*time.Millisecond)
	res, err := r.Promote(ctx, src.Epoch()+1)
	require.NoError(t, err)
	stop()

	r, _ = startReplica(t, dst, srv.URL, inbox, &replicate.ReplicaOptions{Hold: holdExpunges})
	require.Eventually(t, func() bool { return r.Stats().Promoted && len(r.Held()) == 1 }, 10*time.Second, 5*time.Millisecond,
		"still promoted, and the delayed expunge still waits for the operator")
	assert.Equal(t, res.Epoch, r.Stats().PromotedEpoch)
	require.NoError(t, r.Confirm("alice", r.Held()[0].Change.Seq))
	require.Eventually(t, func() bool {
		st, err := dst.MailboxStatus(ctx, "alice", "INBOX")
		return err == nil && st.Messages == 2 && len(r.Held()) == 0
	}, 10*time.Second, 5*time.Millisecond, "the confirmed expunge applies on the new primary: %+v", r.Stats())
	assert.Equal(t, store.RolePrimary, dst.Role())
	assert.Equal(t, res.Epoch, dst.Epoch())
	last, err := dst.Changes(ctx, dst.Position()-1, 10)
	require.NoError(t, err)
	require.NotEmpty(t, last)
	assert.Equal(t, resilmail.ChangeExpunge, last[len(last)-1].Kind)
	assert.Equal(t, res.Epoch, last[len(last)-1].Epoch, "a change of the new primary")
	st := r.Stats()
	assert.Zero(t, st.Bytes+st.Reconnects+st.Fenced+st.ApplyErrors, "the restarted replica followed no one: %+v", st)
	assert.Equal(t, store.RolePrimary, src.Role(), "nor did it reach the old primary")
	_, err = dst.CreateMailbox(ctx, "alice", "after")
	require.NoError(t, err)
}

// TestDiscardDelayedChange: an operator discards a delayed expunge: it is
// never applied, the replica's applied position moves past it, the
// discard is counted and survives a restart, and the change can no longer
// be confirmed.
func TestDiscardDelayedChange(t *testing.T) {
	ctx := context.Background()
	src, dst := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	require.NoError(t, dst.SetReadOnly(true))
	_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", 3)
	inbox := t.TempDir()
	r, stop := startReplica(t, dst, srv.URL, inbox, &replicate.ReplicaOptions{Hold: holdExpunges})
	waitApplied(t, r, src)
	_, err := src.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(1, 2, 3))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(r.Held()) == 1 }, 10*time.Second, 5*time.Millisecond)
	seq := r.Held()[0].Change.Seq
	require.Error(t, r.Discard("bob", seq), "no such held change")
	require.NoError(t, r.Discard("alice", seq))
	assert.Empty(t, r.Held())
	assert.Equal(t, uint64(1), r.Stats().Discarded)
	add(t, src, "alice", "INBOX", msgText("later", "1"))
	waitApplied(t, r, src)
	stop()

	r, _ = startReplica(t, dst, srv.URL, inbox, &replicate.ReplicaOptions{Hold: holdExpunges})
	add(t, src, "alice", "INBOX", msgText("later", "2"))
	waitApplied(t, r, src)
	assert.Empty(t, r.Held(), "the discard is durable")
	require.Error(t, r.Confirm("alice", seq))
	st, err := dst.MailboxStatus(ctx, "alice", "INBOX")
	require.NoError(t, err)
	assert.Equal(t, 5, st.Messages, "the discarded expunge removed nothing")
}

// TestDemotedAfterPromotionFollowsAgain: a replica promoted, then demoted
// by the operator (its epoch unchanged), follows its primary again when
// it is started over the same folder.
func TestDemotedAfterPromotionFollowsAgain(t *testing.T) {
	ctx := context.Background()
	src, dst := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	require.NoError(t, dst.SetReadOnly(true))
	_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", 2)
	inbox := t.TempDir()
	r, stop := startReplica(t, dst, srv.URL, inbox, nil)
	waitApplied(t, r, src)
	res, err := r.Promote(ctx, src.Epoch()+1)
	require.NoError(t, err)
	stop()
	require.NoError(t, dst.Demote(ctx, 0))
	require.NoError(t, src.Promote(ctx, res.Epoch+1, 0))
	addN(t, src, "alice", "INBOX", 1)
	r, _ = startReplica(t, dst, srv.URL, inbox, nil)
	require.Eventually(t, func() bool { return messages(t, dst, "alice", "INBOX") == 3 }, 10*time.Second, 5*time.Millisecond, "%+v", r.Stats())
	assert.False(t, r.Stats().Promoted)
}

// TestInterruptedPromotionFinishes: a replica killed after it recorded its
// promotion and before its target was promoted (here the record is
// written as Promote writes it) finishes the promotion when it starts.
func TestInterruptedPromotionFinishes(t *testing.T) {
	ctx := context.Background()
	src, dst := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	require.NoError(t, dst.SetReadOnly(true))
	_, srv := servePrimary(t, src, &replicate.PrimaryOptions{Heartbeat: 50 * time.Millisecond})
	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", 2)
	inbox := t.TempDir()
	r, stop := startReplica(t, dst, srv.URL, inbox, nil)
	waitApplied(t, r, src)
	stop()
	e := src.Epoch() + 1
	rec := fmt.Sprintf(`{"epoch":%d,"until":%d,"at":"2026-12-07T18:00:00Z"}`, e, src.Position())
	require.NoError(t, os.WriteFile(filepath.Join(inbox, "promoted.json"), []byte(rec), 0o640))
	require.Equal(t, store.RoleStandby, dst.Role())

	r, _ = startReplica(t, dst, srv.URL, inbox, nil)
	require.Eventually(t, func() bool { return r.Stats().Promoted }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, store.RolePrimary, dst.Role())
	assert.Equal(t, e, dst.Epoch())
	require.NotEmpty(t, dst.Predecessors())
	assert.Equal(t, src.History(), dst.Predecessors()[0].History)
	assert.Equal(t, src.Position(), dst.Predecessors()[0].Until)
}

// TestGuardJudgesADeleteAfterWhatCameBeforeIt: a mailbox created, filled
// and deleted while the replica was away reaches it in one batch; the
// guard must judge the delete against the mailbox as the earlier changes
// of that batch leave it (30 messages: held), not as it was before the
// batch (no such mailbox: nothing removed, let through).
func TestGuardJudgesADeleteAfterWhatCameBeforeIt(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	// A retention hold keeps the deleted bodies, as a backup's does: a
	// replica skips an append whose body its primary no longer has.
	require.NoError(t, src.Hold(ctx, "backup", 0))
	require.NoError(t, src.CreateUser(ctx, "alice"))
	_, err := src.CreateMailbox(ctx, "alice", "Old")
	require.NoError(t, err)
	addN(t, src, "alice", "Old", 30)
	require.NoError(t, src.DeleteMailbox(ctx, "alice", "Old"))
	dst := openStore(t, t.TempDir())
	_, srv := servePrimary(t, src, nil)
	guard := replicate.NewExpungeGuard(dst, &replicate.ExpungeGuardOptions{Logger: quietLogger()})
	r, _ := startReplica(t, dst, srv.URL, t.TempDir(), &replicate.ReplicaOptions{Hold: guard})
	require.Eventually(t, func() bool { return len(r.Held()) == 1 || r.Stats().Applied >= src.Position() },
		10*time.Second, 5*time.Millisecond)
	require.Len(t, r.Held(), 1, "the delete of 30 messages is held")
	h := r.Held()[0]
	assert.Equal(t, resilmail.ChangeMailboxDelete, h.Change.Kind)
	st, err := dst.MailboxStatus(ctx, "alice", "Old")
	require.NoError(t, err)
	assert.Equal(t, 30, int(st.Messages), "the messages stay until the operator confirms")
	require.NoError(t, r.Confirm("alice", h.Change.Seq))
	waitApplied(t, r, src)
	requireSame(t, src, dst)
}
