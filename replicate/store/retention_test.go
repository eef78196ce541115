package store_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

func bodyFile(dir string, d resilmail.Digest) string {
	h := d.String()
	return filepath.Join(dir, "bodies", h[:2], h)
}

// TestHoldKeepsExpungedBodies: a hold with bodies keeps the body of a
// message expunged after it, with a tombstone saying when, across a
// restart (journal replay) and a checkpoint (the retention file); moving
// the hold past the expunge lets the body go.
func TestHoldKeepsExpungedBodies(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := quietOpts()
	s := open(t, dir, opts)
	require.NoError(t, s.CreateUser(ctx, "alice"))
	content := msg("kept", "deleted but kept for the backup")
	d := resilmail.DigestOf([]byte(content))
	uid := appendMsg(t, s, "alice", "INBOX", content)
	other := msg("gone", "deleted before the hold")
	appendMsg(t, s, "alice", "INBOX", other)
	_, err := s.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(uid+1))
	require.NoError(t, err)
	require.ErrorIs(t, s.Hold(ctx, "backup", s.Position()+1), store.ErrHold, "beyond the end")
	held := s.Position()
	require.NoError(t, s.Hold(ctx, "backup", held))
	st, err := s.MailboxStatus(ctx, "alice", "INBOX")
	require.NoError(t, err)

	_, err = s.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(uid))
	require.NoError(t, err)
	expungedAt := s.Position()
	b, err := s.Body(ctx, d)
	require.NoError(t, err, "the body of a message expunged after the hold is kept")
	assert.Equal(t, content, string(b))
	_, err = s.Body(ctx, resilmail.DigestOf([]byte(other)))
	assert.ErrorIs(t, err, store.ErrNotFound, "expunged before the hold: gone")
	check := func(s *store.Store) {
		t.Helper()
		ts, floor, err := s.Tombstones(ctx, held, 0)
		require.NoError(t, err)
		assert.Zero(t, floor)
		require.Len(t, ts, 1)
		tb := ts[0]
		assert.Equal(t, expungedAt, tb.Seq)
		assert.Equal(t, "alice", tb.User)
		assert.Equal(t, "INBOX", tb.Mailbox)
		assert.Equal(t, st.ID, tb.MailboxID)
		assert.Equal(t, st.UIDValidity, tb.UIDValidity)
		assert.Equal(t, uid, tb.UID)
		assert.Equal(t, d, tb.Digest)
		assert.Equal(t, int64(len(content)), tb.Size)
		assert.False(t, tb.Deleted.IsZero())
		assert.Positive(t, tb.ModSeq)
		changes, err := s.Changes(ctx, expungedAt-1, 1)
		require.NoError(t, err)
		assert.Equal(t, changes[0].Time, tb.Deleted, "the deletion time is the expunge's, in the journal too")
		b, err := s.Body(ctx, d)
		require.NoError(t, err)
		assert.Equal(t, content, string(b))
		assert.Equal(t, []store.Hold{{Name: "backup", Position: held, Bodies: true}}, holdsOf(s))
	}
	check(s)
	_, err = s.Scrub(ctx)
	require.NoError(t, err)
	check(s) // a scrub does not take a kept body for an orphan

	require.NoError(t, s.Close())
	s = open(t, dir, opts) // the expunge is replayed from the journal
	check(s)
	require.NoError(t, s.Compact(ctx))
	require.NoError(t, s.Close())
	s = open(t, dir, opts) // the tombstone comes from the retention file
	check(s)

	// The backup has read past the expunge: the body goes.
	require.NoError(t, s.Hold(ctx, "backup", s.Position()))
	ts, _, err := s.Tombstones(ctx, 0, 0)
	require.NoError(t, err)
	assert.Empty(t, ts)
	_, err = s.Body(ctx, d)
	assert.ErrorIs(t, err, store.ErrNotFound)
	_, err = os.Stat(bodyFile(dir, d))
	assert.ErrorIs(t, err, os.ErrNotExist)
	require.NoError(t, s.Release(ctx, "backup"))
	assert.Empty(t, s.Holds())
	assert.ErrorIs(t, s.Release(ctx, "backup"), store.ErrHold)
}

// TestReleaseLetsBodiesGo: releasing the only hold removes the bodies it
// kept, also when their messages went with a whole mailbox.
func TestReleaseLetsBodiesGo(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	_, err := s.CreateMailbox(ctx, "alice", "Old")
	require.NoError(t, err)
	content := msg("old", "in a mailbox that is deleted")
	d := resilmail.DigestOf([]byte(content))
	appendMsg(t, s, "alice", "Old", content)
	require.NoError(t, s.Hold(ctx, "backup", s.Position()))
	require.NoError(t, s.HoldJournal(ctx, "replica:r1", s.Position()))
	require.NoError(t, s.DeleteMailbox(ctx, "alice", "Old"))
	ts, _, err := s.Tombstones(ctx, 0, 0)
	require.NoError(t, err)
	require.Len(t, ts, 1)
	assert.Equal(t, "Old", ts[0].Mailbox)
	assert.Zero(t, ts[0].ModSeq)
	_, err = s.Body(ctx, d)
	require.NoError(t, err)
	require.NoError(t, s.Release(ctx, "backup"))
	_, err = s.Body(ctx, d)
	assert.ErrorIs(t, err, store.ErrNotFound)
	_, err = os.Stat(bodyFile(dir, d))
	assert.ErrorIs(t, err, os.ErrNotExist)
	assert.Equal(t, []store.Hold{{Name: "replica:r1", Position: s.Position() - 1}}, holdsOf(s))
}

// TestHoldKeepsJournal: compaction keeps the journal a hold needs, up to
// HoldBytes.
func TestHoldKeepsJournal(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		holdBytes int64
		release   bool
		kept      bool
	}{
		{"held", 0, false, true},
		{"released", 0, true, false},
		{"beyond HoldBytes", 8192, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := quietOpts()
			opts.KeepChanges, opts.SegmentSize, opts.HoldBytes = 1, 4096, tc.holdBytes
			s := open(t, t.TempDir(), opts)
			require.NoError(t, s.CreateUser(ctx, "alice"))
			require.NoError(t, s.HoldJournal(ctx, "replica:r1", 2))
			for i := range 40 {
				appendMsg(t, s, "alice", "INBOX", msg(strconv.Itoa(i), strings.Repeat("y", 300)))
			}
			if tc.release {
				require.NoError(t, s.Release(ctx, "replica:r1"))
			}
			require.NoError(t, s.Compact(ctx))
			_, err := s.Changes(ctx, 2, 10)
			if tc.kept {
				require.NoError(t, err)
				assert.LessOrEqual(t, s.OldestPosition(), uint64(3))
			} else {
				require.ErrorIs(t, err, store.ErrTooFarBehind)
			}
		})
	}
}
