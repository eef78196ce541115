package store_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

func inboxStatus(t testing.TB, s *store.Store) store.Status {
	t.Helper()
	list, err := s.ListMailboxes(context.Background(), "alice")
	require.NoError(t, err)
	for _, st := range list {
		if st.Name == store.Inbox {
			return st
		}
	}
	t.Fatal("no INBOX")
	return store.Status{}
}

// TestApplyReserve: a reservation raises UIDNEXT and HIGHESTMODSEQ and
// touches no message, durably, and applying it again journals nothing.
func TestApplyReserve(t *testing.T) {
	ctx := context.Background()
	primary, _ := newStore(t)
	for i := range 3 {
		appendMsg(t, primary, "alice", store.Inbox, msg("m", string(rune('a'+i))))
	}
	dir := t.TempDir()
	replica := open(t, dir, nil)
	replicateAll(t, primary, replica, 0)
	before := inboxStatus(t, replica)

	c := resilmail.Change{Epoch: replica.Epoch(), Kind: resilmail.ChangeReserve, User: "alice", Mailbox: store.Inbox,
		MailboxID: before.ID, UIDValidity: before.UIDValidity, UID: 40, ModSeq: before.HighestModSeq + 10}
	require.NoError(t, replica.Apply(ctx, []resilmail.Change{c}, nil))
	after := inboxStatus(t, replica)
	assert.Equal(t, uint32(41), after.UIDNext)
	assert.Equal(t, before.HighestModSeq+10, after.HighestModSeq)
	assert.Equal(t, before.Messages, after.Messages)
	assert.Equal(t, before.Digest, after.Digest, "no message changed")

	seq := replica.Stats().Seq
	require.NoError(t, replica.Apply(ctx, []resilmail.Change{c}, nil))
	lower := c
	lower.UID, lower.ModSeq = 5, 2
	require.NoError(t, replica.Apply(ctx, []resilmail.Change{lower}, nil))
	assert.Equal(t, seq, replica.Stats().Seq, "a reservation already there journals nothing")
	assert.Equal(t, after, inboxStatus(t, replica), "nothing goes back")

	require.NoError(t, replica.Close())
	replica = open(t, dir, nil)
	assert.Equal(t, after, inboxStatus(t, replica), "replayed at Open")

	bad := c
	bad.UIDValidity++
	assert.ErrorIs(t, replica.Apply(ctx, []resilmail.Change{bad}, nil), store.ErrConflict)
}

// TestApplyRestoresBelowUIDNext: a restore of a UID the replica lacks below
// its UIDNEXT puts the message back in its place, durably; an append of
// that UID is history (expunged since) and is skipped.
func TestApplyRestoresBelowUIDNext(t *testing.T) {
	ctx := context.Background()
	primary, _ := newStore(t)
	for i := range 5 {
		appendMsg(t, primary, "alice", store.Inbox, msg("m", string(rune('a'+i))), `\Seen`)
	}
	dir := t.TempDir()
	replica := open(t, dir, nil)
	pos := replicateAll(t, primary, replica, 0)
	st := inboxStatus(t, primary)
	msgs, err := primary.Fetch(ctx, "alice", store.Inbox, store.Query{})
	require.NoError(t, err)
	m := msgs[2] // UID 3

	// The replica loses UID 3 (a divergence).
	x := resilmail.Change{Epoch: replica.Epoch(), Kind: resilmail.ChangeExpunge, User: "alice", Mailbox: store.Inbox,
		MailboxID: st.ID, UIDValidity: st.UIDValidity, UIDs: resilmail.NewUIDSet(m.UID), ModSeq: st.HighestModSeq}
	require.NoError(t, replica.Apply(ctx, []resilmail.Change{x}, nil))
	require.Equal(t, 4, inboxStatus(t, replica).Messages)

	back := resilmail.Change{Epoch: replica.Epoch(), Kind: resilmail.ChangeRestore, User: "alice", Mailbox: store.Inbox,
		MailboxID: st.ID, UIDValidity: st.UIDValidity, UID: m.UID, Digest: m.Digest, Size: m.Size,
		InternalDate: m.InternalDate, Flags: m.Flags, ModSeq: m.ModSeq}
	appended := back
	appended.Kind = resilmail.ChangeAppend
	require.NoError(t, replica.Apply(ctx, []resilmail.Change{appended}, bodyFrom(primary)))
	appended.Seq = pos + 1
	require.NoError(t, replica.Apply(ctx, []resilmail.Change{appended}, bodyFrom(primary)))
	require.Equal(t, 4, inboxStatus(t, replica).Messages, "an append below UIDNEXT was expunged since")

	require.NoError(t, replica.Apply(ctx, []resilmail.Change{back}, bodyFrom(primary)))
	seq := replica.Stats().Seq
	require.NoError(t, replica.Apply(ctx, []resilmail.Change{back}, bodyFrom(primary)))
	assert.Equal(t, seq, replica.Stats().Seq, "a restore of a message there journals nothing")
	other := back
	other.Digest = resilmail.DigestOf([]byte("another body"))
	assert.ErrorIs(t, replica.Apply(ctx, []resilmail.Change{other}, bodyFrom(primary)), store.ErrConflict)
	assert.Equal(t, snap(t, primary, "alice").Messages, snap(t, replica, "alice").Messages)
	assert.Equal(t, st.Digest, inboxStatus(t, replica).Digest)
	assert.Equal(t, st.UIDNext, inboxStatus(t, replica).UIDNext)

	require.NoError(t, replica.Close())
	replica = open(t, dir, nil)
	assert.Equal(t, snap(t, primary, "alice").Messages, snap(t, replica, "alice").Messages, "replayed at Open")
	b, err := replica.Body(ctx, m.Digest)
	require.NoError(t, err)
	assert.Equal(t, m.Digest, resilmail.DigestOf(b))
}
