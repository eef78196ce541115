package replicate_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/faultproxy"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// TestReplicationThroughABadNetwork runs the stream through a proxy that
// drops, delays, tears and corrupts bytes at random while a writer appends,
// moves, flags and expunges; once the network heals, the replica equals
// the primary and never kept a corrupt body.
func TestReplicationThroughABadNetwork(t *testing.T) {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	primary, err := store.Open(dir+"/primary", &store.Options{Logger: quiet})
	require.NoError(t, err)
	defer primary.Close()
	replica, err := store.Open(dir+"/replica", &store.Options{Logger: quiet})
	require.NoError(t, err)
	defer replica.Close()

	secret := []byte("fault test")
	p, err := replicate.NewPrimary(primary, &replicate.PrimaryOptions{Secret: secret, Heartbeat: 50 * time.Millisecond, Logger: quiet})
	require.NoError(t, err)
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	proxy, err := faultproxy.New(strings.TrimPrefix(srv.URL, "http://"), 42)
	require.NoError(t, err)
	defer proxy.Close()
	proxy.SetFaults(faultproxy.Faults{Corrupt: 0.02, Cut: 0.01, Truncate: 0.01, MaxDelay: 2 * time.Millisecond})

	r, err := replicate.NewReplica(replica, "http://"+proxy.Addr(), dir+"/inbox",
		&replicate.ReplicaOptions{Name: "r1", Secret: secret, MaxBackoff: 50 * time.Millisecond, Logger: quiet})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	defer func() {
		stop()
		r.Close()
		<-done
	}()

	// The writer: three users, appends (some bodies shared), moves, flag
	// changes and expunges, for a while.
	rnd := rand.New(rand.NewPCG(7, 7))
	users := []string{"alice", "bob", "carol"}
	for _, u := range users {
		require.NoError(t, primary.CreateUser(ctx, u))
		_, err := primary.CreateMailbox(ctx, u, "Archive")
		require.NoError(t, err)
	}
	flags := [][]string{{`\Seen`}, {`\Flagged`}, {`\Seen`, `$Label1`}, nil}
	deadline := time.Now().Add(3 * time.Second)
	ops := 0
	for time.Now().Before(deadline) {
		u := users[rnd.IntN(len(users))]
		msgs, err := primary.Fetch(ctx, u, store.Inbox, store.Query{})
		require.NoError(t, err)
		switch op := rnd.IntN(10); {
		case op < 5 || len(msgs) == 0:
			body := fmt.Sprintf("Subject: m%d\r\n\r\n%s\r\n", rnd.IntN(400), strings.Repeat("fault ", 200+rnd.IntN(2000)))
			_, err = primary.Append(ctx, u, store.Inbox, flags[rnd.IntN(len(flags))], time.Time{}, strings.NewReader(body))
		case op < 7:
			_, err = primary.AddFlags(ctx, u, store.Inbox, resilmail.NewUIDSet(msgs[rnd.IntN(len(msgs))].UID), flags[rnd.IntN(len(flags)-1)])
		case op < 8:
			_, err = primary.Move(ctx, u, store.Inbox, resilmail.NewUIDSet(msgs[rnd.IntN(len(msgs))].UID), "Archive")
		default:
			_, err = primary.Expunge(ctx, u, store.Inbox, resilmail.NewUIDSet(msgs[rnd.IntN(len(msgs))].UID))
		}
		require.NoError(t, err)
		ops++
		time.Sleep(time.Millisecond)
	}
	st := proxy.Stats()
	t.Logf("%d operations; through the proxy: %d connections, %d chunks corrupted, %d cuts, %d torn", ops, st.Conns, st.Corrupted, st.Cuts, st.Truncated)
	require.NotZero(t, st.Corrupted+st.Cuts+st.Truncated, "the network was bad")

	// The network heals: the replica catches up by itself.
	proxy.SetFaults(faultproxy.Faults{})
	caughtUp := func() bool { return r.Stats().Applied >= primary.Position() }
	if !assert.Eventually(t, caughtUp, 30*time.Second, 10*time.Millisecond) {
		t.Fatalf("the replica did not catch up: primary at %d; replica %+v; primary %+v", primary.Position(), r.Stats(), p.Stats())
	}

	rep, err := replicate.Compare(ctx, primary, replica, &replicate.CompareOptions{Logger: quiet})
	require.NoError(t, err)
	assert.True(t, rep.Equal(), "the replica differs: %s", rep)
	for _, u := range users {
		for _, mb := range []string{store.Inbox, "Archive"} {
			a, err := primary.MailboxStatus(ctx, u, mb)
			require.NoError(t, err)
			b, err := replica.MailboxStatus(ctx, u, mb)
			require.NoError(t, err)
			assert.Equal(t, a.Digest, b.Digest, "%s/%s", u, mb)
			assert.Equal(t, a.Messages, b.Messages, "%s/%s", u, mb)
		}
	}
	scrub, err := replica.Scrub(ctx)
	require.NoError(t, err)
	assert.Zero(t, scrub.Corrupt, "no corrupt body was ever kept")
	assert.Zero(t, replica.Stats().CorruptBodies)
	t.Logf("replica: %+v", r.Stats())
}
