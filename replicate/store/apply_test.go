package store_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

// workload makes n random changes of every kind on s, deterministically
// from seed, and checks each answer only for unexpected errors.
func workload(t testing.TB, s *store.Store, seed uint64, n int) {
	t.Helper()
	ctx := context.Background()
	rnd := rand.New(rand.NewPCG(seed, 7))
	users := []string{"alice", "bob", "carol"}
	names := []string{"INBOX", "Work", "Work/2026", "Lists", "Lists/go", "Archive"}
	flags := []string{`\Seen`, `\Answered`, `\Flagged`, `\Deleted`, `\Draft`, "$Forwarded", "Work", "$Junk"}
	pick := func(xs []string) string { return xs[rnd.IntN(len(xs))] }
	someFlags := func() []string {
		var f []string
		for i := rnd.IntN(3); i > 0; i-- {
			f = append(f, pick(flags))
		}
		return f
	}
	someUIDs := func() resilmail.UIDSet {
		a := uint32(rnd.IntN(30) + 1)
		return resilmail.UIDSet{}.AddRange(a, a+uint32(rnd.IntN(5))).Add(uint32(rnd.IntN(30) + 1))
	}
	ok := func(err error, allowed ...error) {
		t.Helper()
		if err == nil {
			return
		}
		for _, a := range allowed {
			if assert.ObjectsAreEqual(true, isErr(err, a)) {
				return
			}
		}
		t.Fatalf("unexpected error: %v", err)
	}
	for _, u := range users {
		ok(s.CreateUser(ctx, u), store.ErrExists)
	}
	for i := 0; i < n; i++ {
		u, mb := pick(users), pick(names)
		switch op := rnd.IntN(100); {
		case op < 35:
			body := msg(fmt.Sprintf("m%d", rnd.IntN(40)), strings.Repeat("b", rnd.IntN(300)))
			_, err := s.Append(ctx, u, mb, someFlags(), time.Unix(int64(1700000000+rnd.IntN(1e6)), 0), strings.NewReader(body))
			ok(err, store.ErrNotFound)
		case op < 50:
			_, err := s.AddFlags(ctx, u, mb, someUIDs(), someFlags())
			ok(err, store.ErrNotFound)
		case op < 55:
			_, err := s.RemoveFlags(ctx, u, mb, someUIDs(), someFlags())
			ok(err, store.ErrNotFound)
		case op < 60:
			_, err := s.SetFlags(ctx, u, mb, someUIDs(), someFlags())
			ok(err, store.ErrNotFound)
		case op < 67:
			_, err := s.Expunge(ctx, u, mb, someUIDs())
			ok(err, store.ErrNotFound)
		case op < 72:
			_, err := s.Copy(ctx, u, mb, someUIDs(), pick(names))
			ok(err, store.ErrNotFound)
		case op < 77:
			_, err := s.Move(ctx, u, mb, someUIDs(), pick(names))
			ok(err, store.ErrNotFound)
		case op < 85:
			_, err := s.CreateMailbox(ctx, u, mb)
			ok(err, store.ErrExists, store.ErrNotFound)
		case op < 88:
			ok(s.RenameMailbox(ctx, u, mb, pick(names)), store.ErrExists, store.ErrNotFound, store.ErrInvalidName)
		case op < 91:
			ok(s.DeleteMailbox(ctx, u, mb), store.ErrNotFound, store.ErrInvalidName)
		case op < 94:
			ok(s.Subscribe(ctx, u, mb), store.ErrNotFound)
		case op < 96:
			ok(s.Unsubscribe(ctx, u, mb), store.ErrNotFound)
		case op < 98:
			ok(s.SetEpoch(ctx, s.Epoch()+1))
		case op < 99:
			ok(s.DeleteUser(ctx, u), store.ErrNotFound)
		default:
			ok(s.CreateUser(ctx, u), store.ErrExists)
		}
	}
}

func isErr(err, target error) bool {
	return err != nil && strings.Contains(err.Error(), target.Error())
}

func users(t testing.TB, s *store.Store) []string {
	t.Helper()
	u, err := s.Users(context.Background())
	require.NoError(t, err)
	return u
}

// assertSame checks that two stores hold the same users, mailboxes (ids,
// UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, digests), messages and
// subscriptions.
func assertSame(t testing.TB, a, b *store.Store) {
	t.Helper()
	require.Equal(t, users(t, a), users(t, b))
	for _, u := range users(t, a) {
		require.Equal(t, snap(t, a, u), snap(t, b, u), "user %s", u)
	}
}

func TestApplyReplicates(t *testing.T) {
	ctx := context.Background()
	primary := open(t, t.TempDir(), nil)
	replica := open(t, t.TempDir(), nil)
	replica.SetReadOnly(true)

	// Replicate while the primary works, in rounds.
	pos := uint64(0)
	for round := 0; round < 5; round++ {
		workload(t, primary, uint64(round), 150)
		pos = replicateAll(t, primary, replica, pos)
		assertSame(t, primary, replica)
	}
	assert.Equal(t, primary.Epoch(), replica.Epoch())
	st := replica.Stats()
	assert.Greater(t, st.Applied, uint64(100))
	assert.Greater(t, st.BodyWrites, uint64(10))
	assert.Less(t, st.BodyWrites, st.Applied, "copies fetch no body")
	assert.Greater(t, st.Gone, uint64(0), "appends expunged on the primary before the replica fetched their body")

	t.Run("replaying everything again changes nothing", func(t *testing.T) {
		before := replica.Stats()
		all, err := primary.Changes(ctx, 0, 1<<20)
		require.NoError(t, err)
		require.NoError(t, replica.Apply(ctx, all, bodyFrom(primary)))
		assert.Equal(t, before.Seq, replica.Stats().Seq, "nothing journaled")
		assertSame(t, primary, replica)
	})

	t.Run("a chained replica follows the replica's own journal", func(t *testing.T) {
		chained := open(t, t.TempDir(), nil)
		replicateAll(t, replica, chained, 0)
		assertSame(t, primary, chained)
	})

	t.Run("message changes applied twice by content change nothing", func(t *testing.T) {
		p := open(t, t.TempDir(), nil)
		require.NoError(t, p.CreateUser(ctx, "alice"))
		_, err := p.CreateMailbox(ctx, "alice", "Work")
		require.NoError(t, err)
		rnd := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < 200; i++ {
			a := uint32(rnd.IntN(40) + 1)
			set := resilmail.UIDSet{}.AddRange(a, a+uint32(rnd.IntN(3)))
			switch rnd.IntN(6) {
			case 0, 1:
				appendMsg(t, p, "alice", []string{"INBOX", "Work"}[rnd.IntN(2)], msg("x", fmt.Sprint(rnd.IntN(30))))
			case 2:
				_, err = p.AddFlags(ctx, "alice", "INBOX", set, []string{`\Seen`, "$K"})
			case 3:
				_, err = p.RemoveFlags(ctx, "alice", "INBOX", set, []string{`\Seen`})
			case 4:
				_, err = p.Expunge(ctx, "alice", "Work", set)
			case 5:
				_, err = p.Move(ctx, "alice", "INBOX", set, "Work")
			}
			require.NoError(t, err)
		}
		fresh := open(t, t.TempDir(), nil)
		replicateAll(t, p, fresh, 0)
		assertSame(t, p, fresh)
		all, err := p.Changes(ctx, 0, 1<<20)
		require.NoError(t, err)
		var again []resilmail.Change
		for _, c := range all {
			switch c.Kind {
			case resilmail.ChangeAppend, resilmail.ChangeFlags, resilmail.ChangeExpunge:
				c.Seq = 0 // repairs carry no position
				again = append(again, c)
			}
		}
		require.NoError(t, fresh.Apply(ctx, again, bodyFrom(p)))
		assertSame(t, p, fresh)
	})

	t.Run("the replica survives a restart", func(t *testing.T) {
		dir := t.TempDir()
		r := open(t, dir, nil)
		half, err := primary.Changes(ctx, 0, 300)
		require.NoError(t, err)
		require.NoError(t, r.Apply(ctx, half, bodyFrom(primary)))
		upTo := half[len(half)-1].Seq
		require.NoError(t, r.Close())
		r = open(t, dir, nil)
		for _, u := range []string{"alice", "bob", "carol"} {
			assert.LessOrEqual(t, r.UpstreamPosition(u), upTo)
		}
		all, err := primary.Changes(ctx, 0, 1<<20)
		require.NoError(t, err)
		require.NoError(t, r.Apply(ctx, all, bodyFrom(primary)))
		assertSame(t, primary, r)
	})
}

func TestApplyFencing(t *testing.T) {
	ctx := context.Background()
	primary := open(t, t.TempDir(), nil)
	replica := open(t, t.TempDir(), nil)
	require.NoError(t, primary.SetEpoch(ctx, 2))
	require.NoError(t, primary.CreateUser(ctx, "alice"))
	replicateAll(t, primary, replica, 0)
	assert.Equal(t, resilmail.Epoch(2), replica.Epoch())

	// A promotion elsewhere raised the epoch: the old primary is fenced.
	require.NoError(t, replica.SetEpoch(ctx, 3))
	pos := primary.Position()
	appendMsg(t, primary, "alice", "INBOX", msg("late", "late"))
	changes, err := primary.Changes(ctx, pos, 10)
	require.NoError(t, err)
	err = replica.Apply(ctx, changes, bodyFrom(primary))
	assert.ErrorIs(t, err, store.ErrFenced)
	st, err := replica.MailboxStatus(ctx, "alice", "INBOX")
	require.NoError(t, err)
	assert.Equal(t, 0, st.Messages)
	assert.Equal(t, uint64(1), replica.Stats().Fenced)

	// A newer epoch is learnt from the changes themselves.
	c := changes[0]
	c.Epoch = 9
	c.Seq = 0
	require.NoError(t, replica.Apply(ctx, []resilmail.Change{c}, bodyFrom(primary)))
	assert.Equal(t, resilmail.Epoch(9), replica.Epoch())
}

func TestApplyConflictsAndBadInput(t *testing.T) {
	ctx := context.Background()
	primary := open(t, t.TempDir(), nil)
	require.NoError(t, primary.CreateUser(ctx, "alice"))
	_, err := primary.CreateMailbox(ctx, "alice", "Work")
	require.NoError(t, err)
	appendMsg(t, primary, "alice", "Work", msg("p", "p"))
	all, err := primary.Changes(ctx, 0, 100)
	require.NoError(t, err)
	require.Len(t, all, 4)

	t.Run("mailbox name held by another id", func(t *testing.T) {
		replica := open(t, t.TempDir(), nil)
		require.NoError(t, replica.CreateUser(ctx, "alice"))
		_, err := replica.CreateMailbox(ctx, "alice", "Work")
		require.NoError(t, err)
		err = replica.Apply(ctx, all[2:], bodyFrom(primary))
		assert.ErrorIs(t, err, store.ErrConflict)
		assert.Equal(t, uint64(1), replica.Stats().Conflicts)
	})
	t.Run("same UID, another body", func(t *testing.T) {
		replica := open(t, t.TempDir(), nil)
		require.NoError(t, replica.Apply(ctx, all, bodyFrom(primary)))
		c := all[3]
		c.Seq, c.Digest = 0, resilmail.DigestOf([]byte("other"))
		err := replica.Apply(ctx, []resilmail.Change{c}, func(context.Context, resilmail.Digest) (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader("other")), nil
		})
		assert.ErrorIs(t, err, store.ErrConflict)
	})
	t.Run("body that does not match its digest", func(t *testing.T) {
		replica := open(t, t.TempDir(), nil)
		bad := func(context.Context, resilmail.Digest) (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader(msg("p", "tampered"))), nil
		}
		err := replica.Apply(ctx, all, bad)
		assert.ErrorIs(t, err, store.ErrCorrupt)
		var ce *resilmail.CorruptError
		assert.ErrorAs(t, err, &ce)
		assert.Equal(t, all[3].Digest, ce.Want)
		assert.Equal(t, uint64(1), replica.Stats().CorruptReceived)
		assert.Zero(t, replica.Stats().Seq, "nothing applied")
		assert.Zero(t, replica.Stats().Bodies)
	})
	t.Run("unknown mailbox id", func(t *testing.T) {
		replica := open(t, t.TempDir(), nil)
		err := replica.Apply(ctx, all[3:], bodyFrom(primary))
		assert.ErrorIs(t, err, store.ErrConflict)
	})
	t.Run("invalid names and flags", func(t *testing.T) {
		replica := open(t, t.TempDir(), nil)
		for _, mutate := range []func(c *resilmail.Change){
			func(c *resilmail.Change) { c.User = "../x" },
			func(c *resilmail.Change) { c.Mailbox = "a//b" },
			func(c *resilmail.Change) { c.Mailbox = "inbox" }, // not canonical
			func(c *resilmail.Change) { c.Flags = []string{`\Recent`} },
			func(c *resilmail.Change) { c.UID = 0 },
		} {
			c := all[3]
			mutate(&c)
			assert.Error(t, replica.Apply(ctx, []resilmail.Change{c}, bodyFrom(primary)))
		}
		assert.Zero(t, replica.Stats().Seq)
	})
}

func TestRangeDigestBisect(t *testing.T) {
	ctx := context.Background()
	a := open(t, t.TempDir(), nil)
	require.NoError(t, a.CreateUser(ctx, "alice"))
	for i := 0; i < 64; i++ {
		appendMsg(t, a, "alice", "INBOX", msg("r", fmt.Sprint(i)))
	}
	b := open(t, t.TempDir(), nil)
	replicateAll(t, a, b, 0)
	// Diverge: a flag change on b only (as a repair would, bypassing a).
	pos := a.Position()
	_, err := a.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(37), []string{`\Seen`})
	require.NoError(t, err)
	stA, err := a.MailboxStatus(ctx, "alice", "INBOX")
	require.NoError(t, err)
	stB, err := b.MailboxStatus(ctx, "alice", "INBOX")
	require.NoError(t, err)
	require.NotEqual(t, stA.Digest, stB.Digest)

	diff := bisect(t, a, b, "alice", "INBOX", 1, stA.UIDNext-1)
	assert.Equal(t, "37", diff.String())

	replicateAll(t, a, b, pos)
	stB, err = b.MailboxStatus(ctx, "alice", "INBOX")
	require.NoError(t, err)
	assert.Equal(t, stA, stB)
}

// bisect returns the UIDs between lo and hi where two mailboxes differ,
// comparing range digests.
func bisect(t testing.TB, a, b *store.Store, user, mailbox string, lo, hi uint32) resilmail.UIDSet {
	t.Helper()
	ctx := context.Background()
	da, na, err := a.RangeDigest(ctx, user, mailbox, lo, hi)
	require.NoError(t, err)
	db, nb, err := b.RangeDigest(ctx, user, mailbox, lo, hi)
	require.NoError(t, err)
	if da == db && na == nb {
		return nil
	}
	if lo == hi {
		return resilmail.NewUIDSet(lo)
	}
	mid := lo + (hi-lo)/2
	left := bisect(t, a, b, user, mailbox, lo, mid)
	for u := range bisect(t, a, b, user, mailbox, mid+1, hi).All() {
		left = left.Add(u)
	}
	return left
}
