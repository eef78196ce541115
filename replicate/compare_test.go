package replicate_test

import (
	"context"
	"errors"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// divergent returns a primary and a replica (and the replica's folder)
// that differ in every way Compare knows, and the digest of the body that
// is damaged on the replica.
func divergent(t *testing.T) (primary, replica *store.Store, replicaDir string, corrupt resilmail.Digest) {
	t.Helper()
	ctx := context.Background()
	primary = openStore(t, t.TempDir())
	replicaDir = t.TempDir()
	replica = openStore(t, replicaDir)
	for _, u := range []string{"alice", "bob", "carol"} {
		require.NoError(t, primary.CreateUser(ctx, u))
		addN(t, primary, u, "INBOX", 10)
	}
	for _, mb := range []struct{ user, name string }{{"bob", "Work"}, {"carol", "Lists"}, {"carol", "Drafts"}, {"bob", "A"}, {"bob", "B"}} {
		_, err := primary.CreateMailbox(ctx, mb.user, mb.name)
		require.NoError(t, err)
		addN(t, primary, mb.user, mb.name, 5)
	}
	unique := add(t, primary, "carol", "INBOX", msgText("unique", "only here"))
	require.NoError(t, primary.Subscribe(ctx, "alice", "INBOX"))
	replicateAll(t, primary, replica, 0)
	requireSame(t, primary, replica)

	// The primary moves on without the replica.
	require.NoError(t, primary.CreateUser(ctx, "dave"))
	addN(t, primary, "dave", "INBOX", 2)
	require.NoError(t, primary.Subscribe(ctx, "dave", "INBOX"))
	_, err := primary.CreateMailbox(ctx, "alice", "Archive")
	require.NoError(t, err)
	addN(t, primary, "alice", "Archive", 2)
	require.NoError(t, primary.Subscribe(ctx, "alice", "Archive"))
	add(t, primary, "alice", "INBOX", msgText("new", "missing on the replica"))
	_, err = primary.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(1), []string{`\Flagged`})
	require.NoError(t, err)
	_, err = primary.Expunge(ctx, "bob", "INBOX", resilmail.NewUIDSet(2))
	require.NoError(t, err)
	require.NoError(t, primary.RenameMailbox(ctx, "bob", "Work", "Projects"))
	// A swap: A becomes B and B becomes A.
	require.NoError(t, primary.RenameMailbox(ctx, "bob", "A", "tmp"))
	require.NoError(t, primary.RenameMailbox(ctx, "bob", "B", "A"))
	require.NoError(t, primary.RenameMailbox(ctx, "bob", "tmp", "B"))
	add(t, primary, "carol", "Drafts", msgText("split", "on the primary"))

	// The replica diverges on its own.
	require.NoError(t, replica.CreateUser(ctx, "eve"))
	addN(t, replica, "eve", "INBOX", 3)
	_, err = replica.CreateMailbox(ctx, "alice", "Junk")
	require.NoError(t, err)
	add(t, replica, "alice", "Junk", msgText("junk", "extra"))
	require.NoError(t, replica.Subscribe(ctx, "alice", "Junk"))
	add(t, replica, "carol", "Drafts", msgText("split", "brain")) // the same UID as the primary's, another body
	// carol/Lists becomes another incarnation with the same id.
	lists, err := replica.MailboxStatus(ctx, "carol", "Lists")
	require.NoError(t, err)
	ep := replica.Epoch()
	require.NoError(t, replica.Apply(ctx, []resilmail.Change{
		{Epoch: ep, Kind: resilmail.ChangeMailboxDelete, User: "carol", Mailbox: "Lists", MailboxID: lists.ID},
		{Epoch: ep, Kind: resilmail.ChangeMailboxCreate, User: "carol", Mailbox: "Lists", MailboxID: lists.ID, UIDValidity: lists.UIDValidity + 7, ModSeq: 1},
	}, nil))
	add(t, replica, "carol", "Lists", msgText("other", "incarnation"))
	// The replica's copy of a body is damaged; a scrub finds it.
	msgs, err := replica.Fetch(ctx, "carol", "INBOX", store.Query{UIDs: resilmail.NewUIDSet(unique)})
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	corrupt = msgs[0].Digest
	flipBody(t, replicaDir, corrupt)
	rep, err := replica.Scrub(ctx)
	require.NoError(t, err)
	require.Equal(t, []resilmail.Digest{corrupt}, rep.Corrupt)
	return primary, replica, replicaDir, corrupt
}

func TestCompareAndRepairEveryDivergence(t *testing.T) {
	ctx := context.Background()
	primary, replica, _, corrupt := divergent(t)
	opts := &replicate.CompareOptions{Logger: quietLogger(), LeafSize: 2}
	rep, err := replicate.Compare(ctx, primary, replica, opts)
	require.NoError(t, err)
	assert.Equal(t, `user alice: subscription "Archive" missing
user alice: subscription "Junk" extra
user dave: missing
user dave: subscription "INBOX" missing
user eve: extra (3 messages)
alice/Archive: missing (2 messages)
alice/INBOX: UID 1 flags differ
alice/INBOX: UID 11 missing
alice/Junk: extra (1 messages)
bob/A: named "B" on the replica
bob/B: named "A" on the replica
bob/INBOX: UID 2 extra
bob/Projects: named "Work" on the replica
carol/Drafts: UID 6 body differs
carol/INBOX: UID 11 body corrupt on the replica
carol/Lists: UIDVALIDITY `+uidValidity(t, replica, "carol", "Lists")+`, the primary's `+uidValidity(t, primary, "carol", "Lists")+`
dave/INBOX: missing (2 messages)
`, rep.String())
	assert.Equal(t, 17, rep.Differences())
	assert.False(t, rep.Equal())
	assert.Equal(t, 4, rep.Users) // alice, bob, carol, dave on the primary

	res, err := replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, &replicate.RepairOptions{Logger: quietLogger()})
	require.NoError(t, err)
	lists, drafts := mailboxID(t, primary, "carol", "Lists"), mailboxID(t, primary, "carol", "Drafts")
	junk := mailboxID(t, replica, "alice", "Junk")
	// What only the replica has is held, however small: alice/Junk and
	// the user eve (the primary may have lost them rather than deleted
	// them), carol/Lists is another incarnation holding a message,
	// carol/Drafts UID 6 holds another body than the primary's.
	assert.ElementsMatch(t, []replicate.HeldRemoval{
		{Kind: replicate.HeldMailboxDelete, User: "alice", MailboxID: junk, Mailbox: "Junk", Messages: 1, Of: 1},
		{Kind: replicate.HeldReplace, User: "carol", MailboxID: lists, Mailbox: "Lists", Messages: 1, Of: 1},
		{Kind: replicate.HeldOrphan, User: "carol", MailboxID: drafts, Mailbox: "Drafts", Messages: 1, Of: 6, UIDs: resilmail.NewUIDSet(6)},
		{Kind: replicate.HeldUserDelete, User: "eve", Messages: 3, Of: 3},
	}, res.Held)
	assert.Equal(t, 1, res.UsersCreated)
	assert.Zero(t, res.UsersDeleted)
	assert.Equal(t, 3, res.MailboxesRenamed)
	assert.Zero(t, res.MailboxesReplaced)
	assert.Equal(t, 2, res.MailboxesCreated) // alice/Archive, dave/INBOX
	assert.Zero(t, res.MailboxesDeleted)
	assert.Equal(t, 1, res.Expunged)
	assert.Equal(t, 1, res.FlagsSet)
	assert.Equal(t, 1, res.BodiesRestored)
	assert.Empty(t, res.Unrepairable)

	again, err := replicate.Compare(ctx, primary, replica, opts)
	require.NoError(t, err)
	assert.Equal(t, `user eve: extra (3 messages)
alice/Junk: extra (1 messages)
carol/Drafts: UID 6 body differs
carol/Lists: UIDVALIDITY `+uidValidity(t, replica, "carol", "Lists")+`, the primary's `+uidValidity(t, primary, "carol", "Lists")+`
`, again.String(), "only the held removals are left")

	// The operator confirms them.
	res, err = replicate.Repair(ctx, again, primary, replicate.BodiesFrom(primary), replica, &replicate.RepairOptions{Logger: quietLogger(), Confirmed: res.Held})
	require.NoError(t, err)
	assert.Empty(t, res.Held)
	assert.Equal(t, 1, res.UsersDeleted)
	assert.Equal(t, 1, res.MailboxesDeleted)
	assert.Equal(t, 1, res.MailboxesReplaced)
	assert.Equal(t, 1, res.Expunged, "the replica's carol/Drafts UID 6")
	assert.Equal(t, 6, res.Appended, "the primary's UID 6 in its place, and carol/Lists's 5 messages")

	requireSame(t, primary, replica)
	again, err = replicate.Compare(ctx, primary, replica, opts)
	require.NoError(t, err)
	assert.True(t, again.Equal(), again.String())
	assert.Zero(t, again.DigestCalls)
	assert.Zero(t, again.Listed)
	b, err := replica.Body(ctx, corrupt)
	require.NoError(t, err, "the damaged body is restored from the primary")
	assert.Equal(t, corrupt, resilmail.DigestOf(b))
}

func uidValidity(t *testing.T, s *store.Store, user, name string) string {
	st, err := s.MailboxStatus(context.Background(), user, name)
	require.NoError(t, err)
	return strconv.FormatUint(uint64(st.UIDValidity), 10)
}

// oneUserFails is an Inventory whose reads of one user fail.
type oneUserFails struct {
	replicate.Inventory
	user string
}

func (o oneUserFails) Mailboxes(ctx context.Context, user string) ([]replicate.MailboxState, error) {
	if user == o.user {
		return nil, errors.New("read failed (injected)")
	}
	return o.Inventory.Mailboxes(ctx, user)
}

// TestCompareCarriesOnPastAFailingUser: a user whose inventory cannot be
// read is named in the report and the error; the others are compared, and
// a Comparer repairs them.
func TestCompareCarriesOnPastAFailingUser(t *testing.T) {
	primary, replica, _, _ := divergent(t)
	bad := oneUserFails{primary, "bob"}
	rep, err := replicate.Compare(context.Background(), bad, replica, &replicate.CompareOptions{Logger: quietLogger()})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `"bob"`)
	require.NotNil(t, rep)
	assert.Equal(t, []string{"bob"}, rep.Failed)
	for _, d := range rep.MailboxDiffs {
		assert.NotEqual(t, "bob", d.User)
	}
	assert.NotEmpty(t, rep.MailboxDiffs, "the others' differences are found")

	c, err := replicate.NewComparer(bad, replicate.BodiesFrom(primary), replica, &replicate.ComparerOptions{
		Logger: quietLogger(), Repair: &replicate.RepairOptions{MaxRemoveShare: 1, Logger: quietLogger()}})
	require.NoError(t, err)
	_, res, err := c.RunOnce(context.Background())
	require.Error(t, err)
	_, _, err = c.RunOnce(context.Background(), res.Held...) // what only the replica has, confirmed
	require.Error(t, err)
	rep, err = replicate.Compare(context.Background(), primary, replica, &replicate.CompareOptions{Logger: quietLogger()})
	require.NoError(t, err)
	for _, d := range rep.UserDiffs {
		assert.Equal(t, "bob", d.User, "only bob still differs")
	}
	for _, d := range rep.MailboxDiffs {
		assert.Equal(t, "bob", d.User, "only bob still differs")
	}
	assert.NotEmpty(t, rep.MailboxDiffs)
}
