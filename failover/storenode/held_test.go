package storenode_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/failover/storenode"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// TestHeldSurvivesPromotion: a mailbox delete that the standby's guard
// delays is listed by Held; a promotion leaves it delayed (not applied,
// not lost), still listed, and the operator's Confirm applies it on the
// new primary.
func TestHeldSurvivesPromotion(t *testing.T) {
	ctx := context.Background()
	open := func() *store.Store {
		st, err := store.Open(t.TempDir(), &store.Options{Logger: quiet(), ScrubInterval: -1})
		require.NoError(t, err)
		t.Cleanup(func() { st.Close() })
		return st
	}
	sa, sb := open(), open()
	require.NoError(t, sa.SetEpoch(ctx, 1))
	require.NoError(t, sb.SetReadOnly(true))
	peers := map[string]string{}
	a := storenode.New(sa, storenode.Options{Name: "a", Secret: secret, Dir: t.TempDir(), Peers: peers, Heartbeat: 50 * time.Millisecond, Logger: quiet()})
	b := storenode.New(sb, storenode.Options{Name: "b", Secret: secret, Dir: t.TempDir(), Peers: peers, Heartbeat: 50 * time.Millisecond, Logger: quiet(),
		Replica: &replicate.ReplicaOptions{Hold: replicate.NewExpungeGuard(sb, &replicate.ExpungeGuardOptions{MinMessages: 2, Logger: quiet()})}})
	for _, n := range []*storenode.Node{a, b} {
		srv := httptest.NewServer(n.Handler())
		t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
		peers[n.Name()] = srv.URL
		t.Cleanup(func() { n.Close() })
	}
	require.NoError(t, a.Serve())
	require.NoError(t, b.Follow(ctx, "a"))
	require.NoError(t, sa.CreateUser(ctx, "alice"))
	_, err := sa.CreateMailbox(ctx, "alice", "Old")
	require.NoError(t, err)
	for range 3 {
		_, err := sa.Append(ctx, "alice", "Old", nil, time.Time{}, strings.NewReader("Subject: old\r\n\r\nold\r\n"))
		require.NoError(t, err)
	}
	// The guard judges a change by the standby's store when it arrives:
	// the appends are applied first.
	require.Eventually(t, func() bool {
		boxes, err := sb.Mailboxes(ctx, "alice")
		for _, mb := range boxes {
			if mb.Name == "Old" && mb.Messages == 3 {
				return err == nil
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond)
	require.NoError(t, sa.DeleteMailbox(ctx, "alice", "Old"))
	deadline := time.Now().Add(10 * time.Second)
	for len(b.Held()) != 1 {
		if time.Now().After(deadline) {
			m, _ := sb.Mailboxes(ctx, "alice")
			t.Fatalf("the delete is not delayed: %+v %+v", b.Replica().Stats(), m)
		}
		time.Sleep(5 * time.Millisecond) // polls the replica
	}
	require.Eventually(t, func() bool { return b.Replica().Stats().Received >= sa.Position() }, 10*time.Second, 5*time.Millisecond)

	require.NoError(t, a.Demote(ctx, 1))
	require.NoError(t, b.Promote(ctx, 2))
	held := b.Held()
	require.Len(t, held, 1, "still listed after the promotion")
	assert.Equal(t, "Old", held[0].Change.Mailbox)
	assert.Len(t, b.LastPromotion().Held, 1)
	boxes, err := sb.Mailboxes(ctx, "alice")
	require.NoError(t, err)
	assert.True(t, hasMailbox(boxes, "Old"), "a delayed delete is not applied by the promotion")

	require.NoError(t, b.Confirm(held[0].Change.User, held[0].Change.Seq))
	require.Eventually(t, func() bool {
		boxes, err := sb.Mailboxes(ctx, "alice")
		return err == nil && !hasMailbox(boxes, "Old")
	}, 10*time.Second, 5*time.Millisecond, "confirmed on the new primary")
	assert.Empty(t, b.Held())
}

func hasMailbox(list []replicate.MailboxState, name string) bool {
	for _, mb := range list {
		if mb.Name == name {
			return true
		}
	}
	return false
}
