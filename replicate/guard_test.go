package replicate_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
)

// failingInventory is an Inventory whose reads fail.
type failingInventory struct{ replicate.Inventory }

func (failingInventory) Mailboxes(context.Context, string) ([]replicate.MailboxState, error) {
	return nil, errors.New("disk on fire")
}

func TestExpungeGuard(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	require.NoError(t, s.CreateUser(ctx, "alice"))
	addN(t, s, "alice", "INBOX", 40)
	_, err := s.CreateMailbox(ctx, "alice", "Small")
	require.NoError(t, err)
	addN(t, s, "alice", "Small", 10)
	require.NoError(t, s.CreateUser(ctx, "bob"))
	addN(t, s, "bob", "INBOX", 5)
	inbox, small := mailboxID(t, s, "alice", "INBOX"), mailboxID(t, s, "alice", "Small")
	bobInbox := mailboxID(t, s, "bob", "INBOX")
	guard := replicate.NewExpungeGuard(s, &replicate.ExpungeGuardOptions{Logger: quietLogger()})
	expunge := func(user string, id resilmail.MailboxID, uids resilmail.UIDSet) resilmail.Change {
		return resilmail.Change{Kind: resilmail.ChangeExpunge, User: user, MailboxID: id, UIDValidity: 1, UIDs: uids}
	}
	for _, tc := range []struct {
		name string
		c    resilmail.Change
		hold bool
	}{
		{"half of a big mailbox passes", expunge("alice", inbox, resilmail.UIDSet{}.AddRange(1, 20)), false},
		{"more than half is held", expunge("alice", inbox, resilmail.UIDSet{}.AddRange(1, 21)), true},
		{"all of a small mailbox passes", expunge("alice", small, resilmail.UIDSet{}.AddRange(1, 10)), false},
		{"unknown mailbox passes", expunge("alice", resilmail.MailboxID{1}, resilmail.NewUIDSet(1)), false},
		{"unknown user passes", expunge("zed", inbox, resilmail.NewUIDSet(1)), false},
		{"append passes", resilmail.Change{Kind: resilmail.ChangeAppend, User: "alice", MailboxID: inbox}, false},
		{"delete of a big mailbox is held", resilmail.Change{Kind: resilmail.ChangeMailboxDelete, User: "alice", MailboxID: inbox}, true},
		{"delete of a small mailbox passes", resilmail.Change{Kind: resilmail.ChangeMailboxDelete, User: "alice", MailboxID: small}, false},
		{"delete of a big user is held", resilmail.Change{Kind: resilmail.ChangeUserDelete, User: "alice"}, true},
		{"delete of a small user passes", resilmail.Change{Kind: resilmail.ChangeUserDelete, User: "bob"}, false},
		{"delete of another user's mailbox id passes", resilmail.Change{Kind: resilmail.ChangeMailboxDelete, User: "bob", MailboxID: inbox}, false},
		{"expunge of bob's whole small INBOX passes", expunge("bob", bobInbox, resilmail.UIDSet{}.AddRange(1, 5)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hold, reason := guard(ctx, tc.c)
			assert.Equal(t, tc.hold, hold, reason)
			if hold {
				assert.NotEmpty(t, reason)
			}
		})
	}

	t.Run("thresholds are options", func(t *testing.T) {
		g := replicate.NewExpungeGuard(s, &replicate.ExpungeGuardOptions{MaxShare: 0.1, MinMessages: 5, Logger: quietLogger()})
		hold, _ := g(ctx, expunge("alice", small, resilmail.UIDSet{}.AddRange(1, 2)))
		assert.True(t, hold)
		hold, _ = g(ctx, expunge("alice", small, resilmail.NewUIDSet(1)))
		assert.False(t, hold)
	})
	t.Run("unreadable replica holds unless fail-open", func(t *testing.T) {
		g := replicate.NewExpungeGuard(failingInventory{s}, &replicate.ExpungeGuardOptions{Logger: quietLogger()})
		hold, reason := g(ctx, expunge("alice", small, resilmail.NewUIDSet(1)))
		assert.True(t, hold)
		assert.Contains(t, reason, "disk on fire")
		hold, _ = g(ctx, resilmail.Change{Kind: resilmail.ChangeSubscribe, User: "alice", Mailbox: "x"})
		assert.False(t, hold, "only destructive changes are checked")
		g = replicate.NewExpungeGuard(failingInventory{s}, &replicate.ExpungeGuardOptions{FailOpen: true, Logger: quietLogger()})
		hold, _ = g(ctx, expunge("alice", small, resilmail.NewUIDSet(1)))
		assert.False(t, hold)
	})
}
