package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

func TestValidateNames(t *testing.T) {
	users := []struct {
		name string
		ok   bool
	}{
		{"alice", true},
		{"alice@example.org", true},
		{"élodie", true},
		{"", false},
		{".", false},
		{"..", false},
		{"a/b", false},
		{`a\b`, false},
		{"a b", false},
		{"a\x00b", false},
		{"a\tb", false},
		{"a\u0085b", false},
		{"a\xffb", false},
		{strings.Repeat("u", 255), true},
		{strings.Repeat("u", 256), false},
	}
	for _, tt := range users {
		t.Run("user "+tt.name, func(t *testing.T) {
			err := store.ValidateUser(tt.name)
			if tt.ok {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, store.ErrInvalidName)
			}
		})
	}
	mailboxes := []struct {
		name, canon string // canon "" means invalid
	}{
		{"INBOX", "INBOX"},
		{"inbox", "INBOX"},
		{"InBoX/Sub", "INBOX/Sub"},
		{"Inboxes", "Inboxes"},
		{"Archive/inbox", "Archive/inbox"},
		{"Listes/Général", "Listes/Général"},
		{"Sent Items", "Sent Items"},
		{"日本語", "日本語"},
		{"", ""},
		{"/", ""},
		{"/Archive", ""},
		{"Archive/", ""},
		{"a//b", ""},
		{"..", ""},
		{"a/../b", ""},
		{"a/./b", ""},
		{"../etc/passwd", ""},
		{"a\x00b", ""},
		{"a\nb", ""},
		{"a\x7fb", ""},
		{"a\xc3", ""},
		{"a*", ""},
		{"a%", ""},
		{"a\u2028b", ""},
		{strings.Repeat("m", 255), strings.Repeat("m", 255)},
		{strings.Repeat("m", 256), ""},
		{strings.Repeat("m/", 512), ""},
		{strings.Repeat("m/", 511) + "m", strings.Repeat("m/", 511) + "m"},
	}
	for _, tt := range mailboxes {
		t.Run("mailbox "+tt.name, func(t *testing.T) {
			got, err := store.ValidateMailbox(tt.name)
			if tt.canon == "" {
				assert.ErrorIs(t, err, store.ErrInvalidName)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.canon, got)
		})
	}
}

func TestUsersAndMailboxes(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	assert.ErrorIs(t, s.CreateUser(ctx, "alice"), store.ErrExists)
	assert.ErrorIs(t, s.CreateUser(ctx, "../x"), store.ErrInvalidName)

	steps := []struct {
		name string
		do   func() error
		want error
	}{
		{"create", func() error { _, err := s.CreateMailbox(ctx, "alice", "Work"); return err }, nil},
		{"create child", func() error { _, err := s.CreateMailbox(ctx, "alice", "Work/2026"); return err }, nil},
		{"create grandchild", func() error { _, err := s.CreateMailbox(ctx, "alice", "Work/2026/Q1"); return err }, nil},
		{"create sibling prefix", func() error { _, err := s.CreateMailbox(ctx, "alice", "Workshop"); return err }, nil},
		{"create twice", func() error { _, err := s.CreateMailbox(ctx, "alice", "Work"); return err }, store.ErrExists},
		{"create inbox again", func() error { _, err := s.CreateMailbox(ctx, "alice", "inbox"); return err }, store.ErrExists},
		{"create for unknown user", func() error { _, err := s.CreateMailbox(ctx, "bob", "X"); return err }, store.ErrNotFound},
		{"create bad name", func() error { _, err := s.CreateMailbox(ctx, "alice", "a//b"); return err }, store.ErrInvalidName},
		{"rename below itself", func() error { return s.RenameMailbox(ctx, "alice", "Work", "Work/Old") }, store.ErrInvalidName},
		{"rename onto existing", func() error { return s.RenameMailbox(ctx, "alice", "Work", "Workshop") }, store.ErrExists},
		{"rename INBOX", func() error { return s.RenameMailbox(ctx, "alice", "INBOX", "Old") }, store.ErrInvalidName},
		{"rename unknown", func() error { return s.RenameMailbox(ctx, "alice", "Nope", "Yes") }, store.ErrNotFound},
		{"rename with children", func() error { return s.RenameMailbox(ctx, "alice", "Work", "Archive/Work") }, nil},
		{"delete INBOX", func() error { return s.DeleteMailbox(ctx, "alice", "INBOX") }, store.ErrInvalidName},
		{"delete unknown", func() error { return s.DeleteMailbox(ctx, "alice", "Work") }, store.ErrNotFound},
		{"delete", func() error { return s.DeleteMailbox(ctx, "alice", "Workshop") }, nil},
		{"subscribe", func() error { return s.Subscribe(ctx, "alice", "Archive/Work") }, nil},
		{"subscribe twice", func() error { return s.Subscribe(ctx, "alice", "Archive/Work") }, nil},
		{"subscribe to a missing mailbox", func() error { return s.Subscribe(ctx, "alice", "Later") }, nil},
		{"unsubscribe", func() error { return s.Unsubscribe(ctx, "alice", "Later") }, nil},
		{"unsubscribe twice", func() error { return s.Unsubscribe(ctx, "alice", "Later") }, nil},
		{"subscribe bad name", func() error { return s.Subscribe(ctx, "alice", "/x") }, store.ErrInvalidName},
	}
	for _, st := range steps {
		err := st.do()
		if st.want == nil {
			require.NoError(t, err, st.name)
		} else {
			require.ErrorIs(t, err, st.want, st.name)
		}
	}
	list, err := s.ListMailboxes(ctx, "alice")
	require.NoError(t, err)
	var names []string
	for _, st := range list {
		names = append(names, st.Name)
		if st.Name == "Archive/Work" {
			assert.True(t, st.Subscribed)
		}
	}
	assert.Equal(t, []string{"Archive/Work", "Archive/Work/2026", "Archive/Work/2026/Q1", "INBOX"}, names)
	subs, err := s.Subscriptions(ctx, "alice")
	require.NoError(t, err)
	assert.Equal(t, []string{"Archive/Work"}, subs)

	// A mailbox created again gets a new id and a larger UIDVALIDITY.
	before, err := s.MailboxStatus(ctx, "alice", "Archive/Work/2026/Q1")
	require.NoError(t, err)
	require.NoError(t, s.DeleteMailbox(ctx, "alice", "Archive/Work/2026/Q1"))
	_, err = s.CreateMailbox(ctx, "alice", "Archive/Work/2026/Q1")
	require.NoError(t, err)
	after, err := s.MailboxStatus(ctx, "alice", "Archive/Work/2026/Q1")
	require.NoError(t, err)
	assert.NotEqual(t, before.ID, after.ID)
	assert.Greater(t, after.UIDValidity, before.UIDValidity)

	users, err := s.Users(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"alice"}, users)
	require.NoError(t, s.DeleteUser(ctx, "alice"))
	assert.ErrorIs(t, s.DeleteUser(ctx, "alice"), store.ErrNotFound)
	_, err = s.ListMailboxes(ctx, "alice")
	assert.ErrorIs(t, err, store.ErrNotFound)
}

func TestAppendFetchFlags(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	date := time.Date(2025, 12, 24, 18, 0, 0, 0, time.FixedZone("X", 3600))
	uid1, err := s.Append(ctx, "alice", "inbox", []string{`\seen`, "$Forwarded", "$forwarded"}, date, strings.NewReader(msg("one", "1")))
	require.NoError(t, err)
	uid2 := appendMsg(t, s, "alice", "INBOX", msg("two", "2"))
	uid3 := appendMsg(t, s, "alice", "INBOX", msg("three", "3"), `\Flagged`)
	assert.Equal(t, []uint32{1, 2, 3}, []uint32{uid1, uid2, uid3})

	st, err := s.MailboxStatus(ctx, "alice", "INBOX")
	require.NoError(t, err)
	assert.Equal(t, uint32(4), st.UIDNext)
	assert.Equal(t, 3, st.Messages)
	assert.Equal(t, 2, st.Unseen)
	assert.Equal(t, uint64(4), st.HighestModSeq)

	msgs, err := s.Fetch(ctx, "alice", "INBOX", store.Query{UIDs: resilmail.NewUIDSet(1)})
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	assert.Equal(t, []string{`\Seen`, "$Forwarded"}, msgs[0].Flags)
	assert.True(t, msgs[0].InternalDate.Equal(date))
	assert.Equal(t, resilmail.DigestOf([]byte(msg("one", "1"))), msgs[0].Digest)
	assert.Equal(t, int64(len(msg("one", "1"))), msgs[0].Size)

	tests := []struct {
		name    string
		do      func() (uint64, error)
		want    error
		changed bool
		flags   map[uint32][]string
	}{
		{"add seen to all", func() (uint64, error) {
			return s.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(1, 2, 3), []string{`\Seen`})
		}, nil, true, map[uint32][]string{2: {`\Seen`}, 3: {`\Seen`, `\Flagged`}}}, // UID 1 had it

		{"add seen again changes nothing", func() (uint64, error) {
			return s.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(1, 2, 3), []string{`\Seen`})
		}, nil, false, nil},
		{"remove keyword case-insensitively", func() (uint64, error) {
			return s.RemoveFlags(ctx, "alice", "INBOX", rng(1, 100), []string{"$FORWARDED"})
		}, nil, true, map[uint32][]string{1: {`\Seen`}}},
		{"set", func() (uint64, error) {
			return s.SetFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(2), []string{`\Answered`, "Work", "$Label1"})
		}, nil, true, map[uint32][]string{2: {`\Answered`, "$Label1", "Work"}}},
		{"recent refused", func() (uint64, error) {
			return s.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(2), []string{`\Recent`})
		}, store.ErrInvalidFlag, false, nil},
		{"bad keyword refused", func() (uint64, error) {
			return s.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(2), []string{"a(b"})
		}, store.ErrInvalidFlag, false, nil},
		{"unknown uids change nothing", func() (uint64, error) {
			return s.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(50), []string{`\Deleted`})
		}, nil, false, nil},
		{"unknown mailbox", func() (uint64, error) {
			return s.AddFlags(ctx, "alice", "Nope", resilmail.NewUIDSet(1), []string{`\Deleted`})
		}, store.ErrNotFound, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := s.MailboxStatus(ctx, "alice", "INBOX")
			require.NoError(t, err)
			modseq, err := tt.do()
			if tt.want != nil {
				require.ErrorIs(t, err, tt.want)
				return
			}
			require.NoError(t, err)
			after, err := s.MailboxStatus(ctx, "alice", "INBOX")
			require.NoError(t, err)
			if !tt.changed {
				assert.Zero(t, modseq)
				assert.Equal(t, before, after)
				return
			}
			assert.Equal(t, before.HighestModSeq+1, modseq)
			assert.Equal(t, modseq, after.HighestModSeq)
			assert.NotEqual(t, before.Digest, after.Digest)
			changed, err := s.Fetch(ctx, "alice", "INBOX", store.Query{ChangedSince: before.HighestModSeq})
			require.NoError(t, err)
			require.Len(t, changed, len(tt.flags))
			for _, m := range changed {
				assert.Equal(t, tt.flags[m.UID], m.Flags, "uid %d", m.UID)
				assert.Equal(t, modseq, m.ModSeq)
			}
		})
	}
	st, err = s.MailboxStatus(ctx, "alice", "INBOX")
	require.NoError(t, err)
	assert.Equal(t, 1, st.Unseen, "SetFlags took \\Seen from UID 2")
	sum, n, err := s.RangeDigest(ctx, "alice", "INBOX", 1, 1<<32-1)
	require.NoError(t, err)
	assert.Equal(t, 3, n)
	assert.Equal(t, st.Digest, sum, "the incremental digest equals a recomputed one")

	_, err = s.Append(ctx, "alice", "INBOX", []string{`\Recent`}, time.Time{}, strings.NewReader("x"))
	assert.ErrorIs(t, err, store.ErrInvalidFlag)
	_, err = s.Append(ctx, "alice", "Nope", nil, time.Time{}, strings.NewReader("x"))
	assert.ErrorIs(t, err, store.ErrNotFound)
}

func TestAppendTooLarge(t *testing.T) {
	opts := quietOpts()
	opts.MaxMessageSize = 10
	s := open(t, t.TempDir(), opts)
	ctx := context.Background()
	require.NoError(t, s.CreateUser(ctx, "alice"))
	_, err := s.Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader("0123456789"))
	require.NoError(t, err)
	_, err = s.Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader("0123456789a"))
	assert.ErrorIs(t, err, store.ErrTooLarge)
}

func TestAppendCancelled(t *testing.T) {
	s, _ := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader("x"))
	assert.ErrorIs(t, err, context.Canceled)
}

func bodyFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	require.NoError(t, filepath.WalkDir(filepath.Join(dir, "bodies"), func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	}))
	return n
}

func TestCopyMoveExpungeShareBodies(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	_, err := s.CreateMailbox(ctx, "alice", "Archive")
	require.NoError(t, err)
	appendMsg(t, s, "alice", "INBOX", msg("a", "a"), `\Seen`)
	appendMsg(t, s, "alice", "INBOX", msg("b", "b"))
	appendMsg(t, s, "alice", "INBOX", msg("a", "a")) // same content as UID 1
	assert.Equal(t, 2, bodyFiles(t, dir))
	st := s.Stats()
	assert.Equal(t, uint64(2), st.BodyWrites)
	assert.Equal(t, uint64(1), st.BodyShared)

	res, err := s.Copy(ctx, "alice", "INBOX", rng(1, 2).Add(9), "Archive")
	require.NoError(t, err)
	assert.Equal(t, "1:2", res.Source.String())
	assert.Equal(t, "1:2", res.Dest.String())
	assert.Equal(t, 2, bodyFiles(t, dir), "copies share bodies")
	archived, err := s.Fetch(ctx, "alice", "Archive", store.Query{})
	require.NoError(t, err)
	require.Len(t, archived, 2)
	assert.Equal(t, []string{`\Seen`}, archived[0].Flags)

	res, err = s.Move(ctx, "alice", "INBOX", resilmail.NewUIDSet(2, 3), "Archive")
	require.NoError(t, err)
	assert.Equal(t, "2:3", res.Source.String())
	assert.Equal(t, "3:4", res.Dest.String())
	inbox, err := s.Fetch(ctx, "alice", "INBOX", store.Query{})
	require.NoError(t, err)
	require.Len(t, inbox, 1)
	assert.Equal(t, uint32(1), inbox[0].UID)

	// The move is one batch: append, append, expunge.
	changes, err := s.Changes(ctx, s.Position()-3, 1)
	require.NoError(t, err)
	require.Len(t, changes, 3, "a batch is never split")
	assert.Equal(t, resilmail.ChangeAppend, changes[0].Kind)
	assert.Equal(t, resilmail.ChangeExpunge, changes[2].Kind)

	// Expunging every copy of "b" removes its body; "a" stays while a copy
	// is left.
	gone, err := s.Expunge(ctx, "alice", "Archive", rng(1, 4))
	require.NoError(t, err)
	assert.Equal(t, "1:4", gone.String())
	assert.Equal(t, 1, bodyFiles(t, dir))
	_, err = s.Body(ctx, resilmail.DigestOf([]byte(msg("b", "b"))))
	assert.ErrorIs(t, err, store.ErrNotFound)
	b, err := s.Body(ctx, inbox[0].Digest)
	require.NoError(t, err)
	assert.Equal(t, msg("a", "a"), string(b))
	gone, err = s.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(7))
	require.NoError(t, err)
	assert.True(t, gone.IsEmpty())

	// Deleting the mailbox or the user frees the rest.
	require.NoError(t, s.DeleteUser(ctx, "alice"))
	assert.Equal(t, 0, bodyFiles(t, dir))
	assert.Zero(t, s.Stats().BodyBytes)
}

func TestHeader(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	appendMsg(t, s, "alice", "INBOX", msg("hello", strings.Repeat("x", 1000)))
	msgs, err := s.Fetch(ctx, "alice", "INBOX", store.Query{})
	require.NoError(t, err)
	h, err := s.Header(ctx, msgs[0].Digest, 0)
	require.NoError(t, err)
	assert.Equal(t, "Subject: hello\r\nFrom: a@example.org\r\n\r\n", string(h))
	h, err = s.Header(ctx, msgs[0].Digest, 10)
	require.NoError(t, err)
	assert.Equal(t, "Subject: h", string(h))
	_, err = s.Header(ctx, resilmail.DigestOf([]byte("nope")), 0)
	assert.ErrorIs(t, err, store.ErrNotFound)
}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	for _, compact := range []bool{false, true} {
		t.Run(map[bool]string{false: "journal only", true: "checkpoint and tail"}[compact], func(t *testing.T) {
			dir := t.TempDir()
			opts := quietOpts()
			opts.SegmentSize = 4096
			opts.KeepChanges = 5
			s, err := store.Open(dir, opts)
			require.NoError(t, err)
			require.NoError(t, s.CreateUser(ctx, "alice"))
			_, err = s.CreateMailbox(ctx, "alice", "Work")
			require.NoError(t, err)
			for i := 0; i < 40; i++ {
				appendMsg(t, s, "alice", "INBOX", msg("m", strings.Repeat("y", i)), `\Seen`)
			}
			_, err = s.AddFlags(ctx, "alice", "INBOX", rng(1, 10), []string{"$Important"})
			require.NoError(t, err)
			_, err = s.Move(ctx, "alice", "INBOX", rng(5, 15), "Work")
			require.NoError(t, err)
			require.NoError(t, s.Subscribe(ctx, "alice", "Work"))
			require.NoError(t, s.SetEpoch(ctx, 7))
			if compact {
				require.NoError(t, s.Compact(ctx))
				appendMsg(t, s, "alice", "Work", msg("after", "checkpoint"))
			}
			before := snap(t, s, "alice")
			stBefore := s.Stats()
			require.NoError(t, s.Close())
			require.NoError(t, s.Close(), "Close is idempotent")

			s2 := open(t, dir, opts)
			assert.Equal(t, before, snap(t, s2, "alice"))
			st := s2.Stats()
			assert.Equal(t, stBefore.Seq, st.Seq)
			assert.Equal(t, uint64(7), st.Epoch)
			assert.Equal(t, stBefore.Bodies, st.Bodies)
			assert.Equal(t, stBefore.BodyBytes, st.BodyBytes)
			if compact {
				assert.Greater(t, st.CheckpointSeq, uint64(0))
				assert.Greater(t, st.OldestSeq, uint64(1), "old segments were removed")
			}
			// Writes continue with fresh positions and UIDs.
			uid := appendMsg(t, s2, "alice", "INBOX", msg("new", "new"))
			assert.Equal(t, uint32(41), uid)
			assert.Equal(t, stBefore.Seq+1, s2.Position())
		})
	}
}

func TestChangesWaitCompaction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := quietOpts()
	opts.SegmentSize = 2048
	opts.KeepChanges = 10
	s := open(t, dir, opts)
	require.NoError(t, s.CreateUser(ctx, "alice"))

	changes, err := s.Changes(ctx, 0, 0)
	require.NoError(t, err)
	require.Len(t, changes, 2)
	assert.Equal(t, resilmail.ChangeUserCreate, changes[0].Kind)
	assert.Equal(t, resilmail.ChangeMailboxCreate, changes[1].Kind)
	assert.Equal(t, "INBOX", changes[1].Mailbox)
	assert.Equal(t, []uint64{1, 2}, []uint64{changes[0].Seq, changes[1].Seq})

	none, err := s.Changes(ctx, 2, 10)
	require.NoError(t, err)
	assert.Empty(t, none)
	_, err = s.Changes(ctx, 3, 10)
	assert.ErrorIs(t, err, store.ErrPosition)

	// Wait wakes up on a new change.
	got := make(chan uint64, 1)
	go func() {
		pos, err := s.Wait(ctx, 2)
		assert.NoError(t, err)
		got <- pos
	}()
	appendMsg(t, s, "alice", "INBOX", msg("w", "w"))
	assert.Equal(t, uint64(3), <-got)
	wctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = s.Wait(wctx, 3)
	assert.ErrorIs(t, err, context.Canceled)

	for i := 0; i < 100; i++ {
		appendMsg(t, s, "alice", "INBOX", msg("c", strings.Repeat("z", i)))
	}
	all, err := s.Changes(ctx, 0, 1000)
	require.NoError(t, err)
	require.Len(t, all, 103)
	for i, c := range all {
		assert.Equal(t, uint64(i+1), c.Seq)
	}
	page, err := s.Changes(ctx, 50, 7)
	require.NoError(t, err)
	require.Len(t, page, 7)
	assert.Equal(t, uint64(51), page[0].Seq)

	require.NoError(t, s.Compact(ctx))
	oldest := s.OldestPosition()
	assert.Greater(t, oldest, uint64(1))
	assert.LessOrEqual(t, oldest, uint64(103-10+1), "KeepChanges are kept")
	_, err = s.Changes(ctx, 0, 10)
	assert.ErrorIs(t, err, store.ErrTooFarBehind)
	tail, err := s.Changes(ctx, oldest-1, 1000)
	require.NoError(t, err)
	assert.Equal(t, oldest, tail[0].Seq)
	assert.Equal(t, uint64(103), tail[len(tail)-1].Seq)

	// The same after a restart.
	require.NoError(t, s.Close())
	s = open(t, dir, opts)
	assert.Equal(t, oldest, s.OldestPosition())
	_, err = s.Changes(ctx, oldest-2, 10)
	assert.ErrorIs(t, err, store.ErrTooFarBehind)
	tail2, err := s.Changes(ctx, oldest-1, 1000)
	require.NoError(t, err)
	assert.Equal(t, len(tail), len(tail2))
}

func TestEpochAndReadOnly(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	assert.Equal(t, resilmail.Epoch(0), s.Epoch())
	require.NoError(t, s.SetEpoch(ctx, 3))
	require.NoError(t, s.SetEpoch(ctx, 3), "same epoch: no-op")
	assert.ErrorIs(t, s.SetEpoch(ctx, 2), store.ErrFenced)
	appendMsg(t, s, "alice", "INBOX", msg("e", "e"))
	changes, err := s.Changes(ctx, 0, 100)
	require.NoError(t, err)
	last := changes[len(changes)-1]
	assert.Equal(t, resilmail.ChangeAppend, last.Kind)
	assert.Equal(t, resilmail.Epoch(3), last.Epoch)
	assert.Equal(t, resilmail.ChangeEpoch, changes[len(changes)-2].Kind)

	require.NoError(t, s.SetReadOnly(true))
	_, err = s.Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader("x"))
	assert.ErrorIs(t, err, store.ErrReadOnly)
	_, err = s.CreateMailbox(ctx, "alice", "X")
	assert.ErrorIs(t, err, store.ErrReadOnly)
	assert.True(t, s.Stats().ReadOnly)

	require.NoError(t, s.Close())
	s = open(t, dir, nil)
	assert.Equal(t, resilmail.Epoch(3), s.Epoch(), "the epoch is durable")
	assert.ErrorIs(t, s.SetEpoch(ctx, 1), store.ErrFenced)
	assert.Equal(t, store.RoleStandby, s.Role(), "read-only is durable")
	_, err = s.CreateMailbox(ctx, "alice", "X")
	assert.ErrorIs(t, err, store.ErrReadOnly)
	require.NoError(t, s.SetReadOnly(false))
	_, err = s.CreateMailbox(ctx, "alice", "X")
	assert.NoError(t, err)
}

// TestHistoryPromoteDemote: a store keeps its history id, its epoch-start
// table and its role across restarts and checkpoints; Demote refuses local
// writes durably and a fenced store is not made writable but by Promote,
// which raises the epoch once (a second call is a no-op) and records the
// history it continued.
func TestHistoryPromoteDemote(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	h := s.History()
	require.False(t, h.IsZero())
	appendMsg(t, s, "alice", "INBOX", msg("a", "a"))
	require.NoError(t, s.SetEpoch(ctx, 2))
	appendMsg(t, s, "alice", "INBOX", msg("b", "b"))
	head := s.Head()
	assert.Equal(t, resilmail.Epoch(2), head.Epoch)
	epochs := s.Epochs()
	require.Len(t, epochs, 1)
	assert.Equal(t, resilmail.Epoch(2), epochs[0].Epoch)
	assert.Equal(t, replicate.EpochAt(epochs, epochs[0].Seq-1), resilmail.Epoch(0))
	assert.Equal(t, epochs[0].Seq-1, replicate.EpochEnd(epochs, 0, head.Seq))

	require.NoError(t, s.Demote(ctx, 5))
	assert.Equal(t, store.RoleFenced, s.Role())
	assert.Equal(t, resilmail.Epoch(5), s.Epoch(), "the epoch it heard of")
	_, err := s.Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader("x"))
	assert.ErrorIs(t, err, store.ErrReadOnly)
	assert.ErrorIs(t, s.SetReadOnly(false), store.ErrFenced, "only Promote makes a fenced store writable")
	require.NoError(t, s.Compact(ctx))
	require.NoError(t, s.Close())

	s = open(t, dir, nil)
	assert.Equal(t, h, s.History(), "the history id is durable")
	assert.Equal(t, store.RoleFenced, s.Role(), "the role is durable")
	assert.Equal(t, []replicate.EpochStart{epochs[0], {Epoch: 5, Seq: epochs[0].Seq + 2}}, s.Epochs())
	assert.ErrorIs(t, s.Promote(ctx, 5, 0), store.ErrFenced, "a promotion raises the epoch")
	require.NoError(t, s.Promote(ctx, 6, 0))
	require.NoError(t, s.Promote(ctx, 6, 0), "idempotent")
	appendMsg(t, s, "alice", "INBOX", msg("c", "c"))
	assert.Equal(t, resilmail.Epoch(6), s.Head().Epoch)
	require.NoError(t, s.Close())
	s = open(t, dir, nil)
	assert.Equal(t, store.RolePrimary, s.Role())
	assert.Len(t, s.Epochs(), 3)
}

// TestResetUpstream: a replica store that followed one history and is
// reset to another at a position takes no change of the new history at or
// before it and skips none after it, across a restart and a checkpoint.
func TestResetUpstream(t *testing.T) {
	ctx := context.Background()
	primary, _ := newStore(t)
	for i := range 5 {
		appendMsg(t, primary, "alice", "INBOX", msg("m", strings.Repeat("x", i)))
	}
	dir := t.TempDir()
	replica := open(t, dir, nil)
	require.NoError(t, replica.AdoptUpstream(ctx, primary.History()))
	pos := replicateAll(t, primary, replica, 0)
	assert.Equal(t, pos, replica.UpstreamPosition("alice"))
	require.NoError(t, replica.Compact(ctx))

	other := replicate.NewHistoryID()
	require.NoError(t, replica.ResetUpstream(ctx, other, 2))
	assert.Equal(t, uint64(2), replica.UpstreamPosition("alice"))
	assert.Equal(t, uint64(2), replica.UpstreamPosition("bob"), "every user")
	assert.Error(t, replica.AdoptUpstream(ctx, primary.History()))
	require.NoError(t, replica.Close())
	replica = open(t, dir, nil)
	assert.Equal(t, other, replica.UpstreamHistory())
	assert.Equal(t, uint64(2), replica.UpstreamPosition("alice"), "the old history's positions stay forgotten after a restart")
	require.NoError(t, replica.Compact(ctx))
	require.NoError(t, replica.Close())
	replica = open(t, dir, nil)
	assert.Equal(t, uint64(2), replica.UpstreamPosition("alice"), "and after a checkpoint")
}

func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	open(t, dir, nil)
	_, err := store.Open(dir, quietOpts())
	assert.Error(t, err)
}

func TestUnknownFormatRefused(t *testing.T) {
	ctx := context.Background()
	t.Run("VERSION", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir, nil)
		require.NoError(t, s.Close())
		require.NoError(t, os.WriteFile(filepath.Join(dir, "VERSION"), []byte("resilmail-store 4\n"), 0o644))
		_, err := store.Open(dir, quietOpts())
		assert.ErrorIs(t, err, store.ErrFormat)
	})
	t.Run("version 1", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir, nil)
		require.NoError(t, s.Close())
		require.NoError(t, os.WriteFile(filepath.Join(dir, "VERSION"), []byte("resilmail-store 1\n"), 0o644))
		_, err := store.Open(dir, quietOpts())
		assert.ErrorIs(t, err, store.ErrFormat)
		assert.ErrorContains(t, err, "format version 1")
	})
	t.Run("no VERSION with data", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir, nil)
		require.NoError(t, s.Close())
		require.NoError(t, os.Remove(filepath.Join(dir, "VERSION")))
		_, err := store.Open(dir, quietOpts())
		assert.ErrorIs(t, err, store.ErrFormat)
	})
	t.Run("checkpoint version", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir, nil)
		require.NoError(t, s.CreateUser(ctx, "alice"))
		require.NoError(t, s.Compact(ctx))
		require.NoError(t, s.Close())
		path := filepath.Join(dir, "checkpoint")
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		b[9] = 3 // version 3
		require.NoError(t, os.WriteFile(path, b, 0o644))
		_, err = store.Open(dir, quietOpts())
		assert.ErrorIs(t, err, store.ErrFormat)
		b[9] = 2
		b[20] ^= 0xff
		require.NoError(t, os.WriteFile(path, b, 0o644))
		_, err = store.Open(dir, quietOpts())
		assert.ErrorIs(t, err, store.ErrCorrupt)
	})
	t.Run("journal version", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir, nil)
		require.NoError(t, s.CreateUser(ctx, "alice"))
		require.NoError(t, s.Close())
		segs, err := filepath.Glob(filepath.Join(dir, "journal", "*.wal"))
		require.NoError(t, err)
		require.NotEmpty(t, segs)
		b, err := os.ReadFile(segs[0])
		require.NoError(t, err)
		b[25] = 9 // caller version 9 (the header CRC then fails: torn header)
		require.NoError(t, os.WriteFile(segs[0], b, 0o644))
		_, err = store.Open(dir, quietOpts())
		assert.Error(t, err)
	})
}

func TestTornTail(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	for i := 0; i < 5; i++ {
		appendMsg(t, s, "alice", "INBOX", msg("t", strings.Repeat("t", i)))
	}
	before := snap(t, s, "alice")
	require.NoError(t, s.Close())
	segs, err := filepath.Glob(filepath.Join(dir, "journal", "*.wal"))
	require.NoError(t, err)
	last := segs[len(segs)-1]
	f, err := os.OpenFile(last, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.Write([]byte{0, 0, 0, 50, 1, 2, 3}) // half a record header
	require.NoError(t, err)
	require.NoError(t, f.Close())

	s2 := open(t, dir, nil)
	assert.Equal(t, before, snap(t, s2, "alice"))
	assert.Greater(t, s2.Stats().TornBytes, int64(0))
	uid := appendMsg(t, s2, "alice", "INBOX", msg("t", "after"))
	assert.Equal(t, uint32(6), uid)
	_, err = os.Stat(filepath.Join(dir, "corrupt"))
	assert.NoError(t, err, "the torn bytes were moved aside")
	_ = ctx
}

func TestClosed(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t)
	require.NoError(t, s.Close())
	_, err := s.Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader("x"))
	assert.ErrorIs(t, err, store.ErrClosed)
	_, err = s.Changes(ctx, 0, 1)
	assert.ErrorIs(t, err, store.ErrClosed)
	_, err = s.Wait(ctx, 100)
	assert.ErrorIs(t, err, store.ErrClosed)
	assert.True(t, errors.Is(s.SetEpoch(ctx, 9), store.ErrClosed))
}

func TestDamagedJournal(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := quietOpts()
	opts.SegmentSize = 2048
	s := open(t, dir, opts)
	require.NoError(t, s.CreateUser(ctx, "alice"))
	for i := 0; i < 40; i++ {
		appendMsg(t, s, "alice", "INBOX", msg("d", strings.Repeat("d", i)))
	}
	require.NoError(t, s.Close())
	segs, err := filepath.Glob(filepath.Join(dir, "journal", "*.wal"))
	require.NoError(t, err)
	require.Greater(t, len(segs), 2)
	// Damage a record in the middle of a sealed segment.
	b, err := os.ReadFile(segs[1])
	require.NoError(t, err)
	b[len(b)/2] ^= 0xff
	require.NoError(t, os.WriteFile(segs[1], b, 0o644))

	_, err = store.Open(dir, opts)
	require.ErrorIs(t, err, store.ErrCorrupt, "changes missing in the middle: refuse to open")
	assert.Contains(t, err.Error(), "missing")

	opts.Salvage = true
	s = open(t, dir, opts)
	st := s.Stats()
	assert.Greater(t, st.MissingChanges, uint64(0))
	assert.Equal(t, 1, st.CorruptRegions)
	assert.Greater(t, st.OldestSeq, uint64(1), "readers cannot resume across the hole")
	msgs, err := s.Fetch(ctx, "alice", "INBOX", store.Query{})
	require.NoError(t, err)
	assert.Less(t, len(msgs), 40)
	assert.Greater(t, len(msgs), 20)
	uid := appendMsg(t, s, "alice", "INBOX", msg("d", "after"))
	assert.Equal(t, uint32(41), uid, "UIDs after the hole are not reused")
}

// TestMaxPredecessors: a store promoted more often than MaxPredecessors
// remembers only the newest histories it continued, across a reopen.
func TestMaxPredecessors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := quietOpts()
	opts.MaxPredecessors = 2
	s := open(t, dir, opts)
	var hs []replicate.HistoryID
	for i := range 4 {
		h := replicate.NewHistoryID()
		hs = append(hs, h)
		require.NoError(t, s.ResetUpstream(ctx, h, uint64(10*(i+1))))
		require.NoError(t, s.Promote(ctx, s.Epoch()+1, uint64(10*(i+1))))
		require.LessOrEqual(t, len(s.Predecessors()), 2)
	}
	check := func(s *store.Store) {
		ps := s.Predecessors()
		require.Len(t, ps, 2)
		assert.Equal(t, hs[2], ps[0].History)
		assert.Equal(t, hs[3], ps[1].History)
		assert.Equal(t, uint64(40), ps[1].Until)
	}
	check(s)
	require.NoError(t, s.Close())
	check(open(t, dir, opts))

	// The default is DefaultMaxPredecessors.
	d := open(t, t.TempDir(), quietOpts())
	for range store.DefaultMaxPredecessors + 3 {
		require.NoError(t, d.ResetUpstream(ctx, replicate.NewHistoryID(), 1))
		require.NoError(t, d.Promote(ctx, d.Epoch()+1, 1))
	}
	assert.Len(t, d.Predecessors(), store.DefaultMaxPredecessors)
}
