package replicate_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
)

func TestRepairHoldsMassRemovalsUntilConfirmed(t *testing.T) {
	ctx := context.Background()
	primary := openStore(t, t.TempDir())
	replica := openStore(t, t.TempDir())
	require.NoError(t, primary.CreateUser(ctx, "alice"))
	addN(t, primary, "alice", "INBOX", 40)
	_, err := primary.CreateMailbox(ctx, "alice", "Old")
	require.NoError(t, err)
	addN(t, primary, "alice", "Old", 25)
	replicateAll(t, primary, replica, 0)
	// A client deletes most of INBOX and a whole mailbox on the primary;
	// the replica holds a user the primary does not.
	_, err = primary.Expunge(ctx, "alice", "INBOX", resilmail.UIDSet{}.AddRange(1, 30))
	require.NoError(t, err)
	require.NoError(t, primary.DeleteMailbox(ctx, "alice", "Old"))
	require.NoError(t, replica.CreateUser(ctx, "zoe"))
	addN(t, replica, "zoe", "INBOX", 21)
	add(t, primary, "alice", "INBOX", msgText("new", "still copied"))

	copts := &replicate.CompareOptions{Logger: quietLogger()}
	ropts := &replicate.RepairOptions{Logger: quietLogger()}
	rep, err := replicate.Compare(ctx, primary, replica, copts)
	require.NoError(t, err)
	require.Equal(t, 30+1+1+1, rep.Differences(), rep.String())
	res, err := replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, ropts)
	require.NoError(t, err)
	inbox := mailboxID(t, primary, "alice", "INBOX")
	assert.ElementsMatch(t, []replicate.HeldRemoval{
		{Kind: replicate.HeldExpunge, User: "alice", MailboxID: inbox, Mailbox: "INBOX", Messages: 30, Of: 40},
		{Kind: replicate.HeldMailboxDelete, User: "alice", MailboxID: rep.MailboxDiffs[1].ID, Mailbox: "Old", Messages: 25, Of: 25},
		{Kind: replicate.HeldUserDelete, User: "zoe", Messages: 21, Of: 21},
	}, res.Held)
	assert.Equal(t, 1, res.Appended, "what is not a removal is repaired")
	assert.Zero(t, res.Expunged)

	// Left alone: a second comparison finds the same removals, and a
	// second repair holds them again.
	rep, err = replicate.Compare(ctx, primary, replica, copts)
	require.NoError(t, err)
	require.Equal(t, 30+1+1, rep.Differences(), rep.String())
	again, err := replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, ropts)
	require.NoError(t, err)
	assert.ElementsMatch(t, withoutOf(res.Held), withoutOf(again.Held))

	// A confirmation does not cover a bigger removal than it states.
	small := res.Held[0]
	small.Messages = 1
	bigger := *ropts
	bigger.Confirmed = []replicate.HeldRemoval{small}
	again, err = replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, &bigger)
	require.NoError(t, err)
	assert.Len(t, again.Held, 3)

	// The operator confirms.
	confirmed := *ropts
	confirmed.Confirmed = res.Held
	done, err := replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, &confirmed)
	require.NoError(t, err)
	assert.Empty(t, done.Held)
	assert.Equal(t, 30, done.Expunged)
	assert.Equal(t, 1, done.MailboxesDeleted)
	assert.Equal(t, 1, done.UsersDeleted)
	requireSame(t, primary, replica)
}

// A user or mailbox only the replica has may be one the primary lost (a
// primary restored from an older copy): however small, deleting it is held.
func TestRepairHoldsSmallUserAndMailboxDeletes(t *testing.T) {
	ctx := context.Background()
	primary := openStore(t, t.TempDir())
	replica := openStore(t, t.TempDir())
	require.NoError(t, primary.CreateUser(ctx, "alice"))
	_, err := primary.CreateMailbox(ctx, "alice", "Lost")
	require.NoError(t, err)
	addN(t, primary, "alice", "Lost", 3)
	replicateAll(t, primary, replica, 0)
	require.NoError(t, replica.CreateUser(ctx, "zoe"))
	addN(t, replica, "zoe", "INBOX", 2)
	// The primary loses the mailbox without a word to the replica (its
	// folder restored from an older copy, say).
	require.NoError(t, primary.DeleteMailbox(ctx, "alice", "Lost"))

	ropts := &replicate.RepairOptions{Logger: quietLogger()}
	rep, err := replicate.Compare(ctx, primary, replica, &replicate.CompareOptions{Logger: quietLogger()})
	require.NoError(t, err)
	res, err := replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, ropts)
	require.NoError(t, err)
	kinds := map[replicate.HeldKind]int{}
	for _, h := range res.Held {
		kinds[h.Kind] += h.Messages
	}
	assert.Equal(t, map[replicate.HeldKind]int{replicate.HeldMailboxDelete: 3, replicate.HeldUserDelete: 2}, kinds)
	assert.Zero(t, res.MailboxesDeleted)
	assert.Zero(t, res.UsersDeleted)
	st, err := replica.MailboxStatus(ctx, "zoe", "INBOX")
	require.NoError(t, err)
	assert.Equal(t, 2, st.Messages, "the replica keeps zoe's messages")

	confirmed := *ropts
	confirmed.Confirmed = res.Held
	done, err := replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, &confirmed)
	require.NoError(t, err)
	assert.Empty(t, done.Held)
	assert.Equal(t, 1, done.MailboxesDeleted)
	assert.Equal(t, 1, done.UsersDeleted)
	requireSame(t, primary, replica)
}

func TestRepairShareOption(t *testing.T) {
	ctx := context.Background()
	primary := openStore(t, t.TempDir())
	replica := openStore(t, t.TempDir())
	require.NoError(t, primary.CreateUser(ctx, "alice"))
	addN(t, primary, "alice", "INBOX", 20)
	replicateAll(t, primary, replica, 0)
	_, err := primary.Expunge(ctx, "alice", "INBOX", resilmail.UIDSet{}.AddRange(1, 15))
	require.NoError(t, err)
	rep, err := replicate.Compare(ctx, primary, replica, &replicate.CompareOptions{Logger: quietLogger()})
	require.NoError(t, err)
	// 75 % is within a share of 0.8.
	res, err := replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica,
		&replicate.RepairOptions{Logger: quietLogger(), MaxRemoveShare: 0.8})
	require.NoError(t, err)
	assert.Empty(t, res.Held)
	assert.Equal(t, 15, res.Expunged)
	requireSame(t, primary, replica)
}

func TestRepairBodyFromPrimaryIsVerified(t *testing.T) {
	ctx := context.Background()
	primary := openStore(t, t.TempDir())
	replica := openStore(t, t.TempDir())
	require.NoError(t, primary.CreateUser(ctx, "alice"))
	replicateAll(t, primary, replica, 0)
	addN(t, primary, "alice", "INBOX", 3)
	rep, err := replicate.Compare(ctx, primary, replica, &replicate.CompareOptions{Logger: quietLogger()})
	require.NoError(t, err)
	lying := func(ctx context.Context, d resilmail.Digest) (ioReadCloser, error) {
		return nopCloser("not the body"), nil
	}
	_, err = replicate.Repair(ctx, rep, primary, lying, replica, &replicate.RepairOptions{Logger: quietLogger()})
	require.Error(t, err, "the target refuses a body that does not match its digest")
	again, err := replicate.Compare(ctx, primary, replica, &replicate.CompareOptions{Logger: quietLogger()})
	require.NoError(t, err)
	assert.Equal(t, 3, again.Differences(), "nothing half-done is left behind")
}

func withoutOf(hs []replicate.HeldRemoval) []replicate.HeldRemoval {
	var out []replicate.HeldRemoval
	for _, h := range hs {
		h.Of = 0
		out = append(out, h)
	}
	return out
}

func TestRepairReportsCorruptionOnThePrimary(t *testing.T) {
	ctx := context.Background()
	primaryDir := t.TempDir()
	primary := openStore(t, primaryDir)
	replica := openStore(t, t.TempDir())
	require.NoError(t, primary.CreateUser(ctx, "alice"))
	add(t, primary, "alice", "INBOX", msgText("x", "damaged on the primary"))
	replicateAll(t, primary, replica, 0)
	msgs, err := primary.MessageRange(ctx, "alice", mailboxID(t, primary, "alice", "INBOX"), 1, 1, 1)
	require.NoError(t, err)
	flipBody(t, primaryDir, msgs[0].Digest)
	_, err = primary.Scrub(ctx)
	require.NoError(t, err)
	rep, err := replicate.Compare(ctx, primary, replica, &replicate.CompareOptions{Logger: quietLogger()})
	require.NoError(t, err)
	assert.Equal(t, "alice/INBOX: UID 1 body corrupt on the primary\n", rep.String())
	res, err := replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, &replicate.RepairOptions{Logger: quietLogger()})
	require.NoError(t, err)
	assert.Equal(t, []string{"alice/INBOX: UID 1: body corrupt on the primary"}, res.Unrepairable)
	_, err = replica.Body(ctx, msgs[0].Digest)
	require.NoError(t, err, "the replica's good copy is untouched")
}

// TestRepairHoldsWhatOnlyTheReplicaHas: messages under UIDs the primary
// never gave are held, however few, listed by UID, and removed only once
// confirmed; the mailbox is never replaced.
func TestRepairHoldsWhatOnlyTheReplicaHas(t *testing.T) {
	ctx := context.Background()
	primary, replica := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	require.NoError(t, primary.CreateUser(ctx, "alice"))
	addN(t, primary, "alice", "INBOX", 3)
	replicateAll(t, primary, replica, 0)
	addN(t, replica, "alice", "INBOX", 2) // UIDs 4 and 5: an old primary's acknowledged mail

	opts := &replicate.RepairOptions{Logger: quietLogger()}
	rep, err := replicate.Compare(ctx, primary, replica, &replicate.CompareOptions{Logger: quietLogger()})
	require.NoError(t, err)
	res, err := replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, opts)
	require.NoError(t, err)
	inbox := mailboxID(t, primary, "alice", "INBOX")
	require.Equal(t, []replicate.HeldRemoval{{Kind: replicate.HeldOrphan, User: "alice", MailboxID: inbox, Mailbox: "INBOX",
		Messages: 2, Of: 5, UIDs: resilmail.NewUIDSet(4, 5)}}, res.Held)
	assert.Zero(t, res.MailboxesReplaced)
	assert.Zero(t, res.Expunged)
	assert.Len(t, res.Unrepairable, 1, "the replica is ahead of the primary's UIDNEXT")
	st, err := replica.MailboxStatus(ctx, "alice", "INBOX")
	require.NoError(t, err)
	assert.Equal(t, 5, st.Messages, "nothing removed")

	opts.Confirmed = res.Held
	res, err = replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, opts)
	require.NoError(t, err)
	assert.Empty(t, res.Held)
	assert.Equal(t, 2, res.Expunged)
	assert.Zero(t, res.MailboxesReplaced)
	st, err = replica.MailboxStatus(ctx, "alice", "INBOX")
	require.NoError(t, err)
	assert.Equal(t, 3, st.Messages)
}

// TestRepairOrphanConfirmationNamesUIDs: confirming orphans covers the
// UIDs the operator was shown, not others that appeared since.
func TestRepairOrphanConfirmationNamesUIDs(t *testing.T) {
	ctx := context.Background()
	primary, replica := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	require.NoError(t, primary.CreateUser(ctx, "alice"))
	addN(t, primary, "alice", "INBOX", 3)
	replicateAll(t, primary, replica, 0)
	add(t, replica, "alice", "INBOX", msgText("orphan", "4"))
	inbox := mailboxID(t, primary, "alice", "INBOX")
	seen := replicate.HeldRemoval{Kind: replicate.HeldOrphan, User: "alice", MailboxID: inbox, Mailbox: "INBOX", Messages: 2, Of: 4, UIDs: resilmail.NewUIDSet(4, 9)}
	rep, err := replicate.Compare(ctx, primary, replica, &replicate.CompareOptions{Logger: quietLogger()})
	require.NoError(t, err)
	res, err := replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, &replicate.RepairOptions{Logger: quietLogger(), Confirmed: []replicate.HeldRemoval{{
		Kind: replicate.HeldOrphan, User: "alice", MailboxID: inbox, Messages: 1, UIDs: resilmail.NewUIDSet(5)}}})
	require.NoError(t, err)
	require.Len(t, res.Held, 1, "UID 4 was not confirmed")
	assert.Zero(t, res.Expunged)
	res, err = replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, &replicate.RepairOptions{Logger: quietLogger(), Confirmed: []replicate.HeldRemoval{seen}})
	require.NoError(t, err)
	assert.Empty(t, res.Held)
	assert.Equal(t, 1, res.Expunged)
}
