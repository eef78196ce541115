package replicate_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

const crashReplicaEnv = "RESILMAIL_REPLICATE_CRASH_REPLICA"

// TestCrashReplicaChild is the replica of
// TestKilledReplicaKeepsWhatItAcknowledged, run as a child process until
// the parent kills it with SIGKILL.
func TestCrashReplicaChild(t *testing.T) {
	dir := os.Getenv(crashReplicaEnv)
	if dir == "" {
		t.Skip("run by TestKilledReplicaKeepsWhatItAcknowledged as a child process")
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.Open(dir+"/store", &store.Options{Logger: quiet})
	require.NoError(t, err)
	r, err := replicate.NewReplica(st, os.Getenv(crashReplicaEnv+"_URL"), dir+"/inbox",
		&replicate.ReplicaOptions{Name: "r1", Secret: []byte(crashSecret), MaxBackoff: 50 * time.Millisecond,
			InboxSegment: 64 << 10, Logger: quiet})
	require.NoError(t, err)
	r.Run(context.Background()) // until SIGKILL
}

// TestKilledReplicaKeepsWhatItAcknowledged kills the replica (a child
// process) with SIGKILL at random moments while the primary writes under
// AckOne: alice's and bob's mail shares bodies, and alice expunges her
// copy once bob's is acknowledged. After the last kill the primary is gone
// for good; the replica, restarted, must hold every message it
// acknowledged, from its inbox alone.
func TestKilledReplicaKeepsWhatItAcknowledged(t *testing.T) {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	src, err := store.Open(dir+"/primary", &store.Options{Logger: quiet})
	require.NoError(t, err)
	defer src.Close()
	for _, u := range []string{"alice", "bob", "carol"} {
		require.NoError(t, src.CreateUser(ctx, u))
	}
	p, err := replicate.NewPrimary(src, &replicate.PrimaryOptions{Secret: []byte(crashSecret), Mode: replicate.AckOne,
		AckTimeout: 30 * time.Second, Heartbeat: 50 * time.Millisecond, Logger: quiet})
	require.NoError(t, err)
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()

	type msg struct {
		user string
		d    resilmail.Digest
	}
	var (
		mu     sync.Mutex
		acked  []msg
		wctx   context.Context
		cancel context.CancelFunc
		wg     sync.WaitGroup
	)
	wctx, cancel = context.WithCancel(ctx)
	appendAcked := func(user, content string) (uint32, bool) {
		uid, err := src.Append(wctx, user, store.Inbox, nil, time.Time{}, strings.NewReader(content))
		if err != nil {
			return 0, false
		}
		if p.Await(wctx, src.Position()) != nil {
			return uid, false
		}
		mu.Lock()
		acked = append(acked, msg{user, resilmail.DigestOf([]byte(content))})
		mu.Unlock()
		return uid, true
	}
	// alice and bob receive the same bodies; alice expunges hers once
	// bob's is acknowledged: the replica must keep bob's body.
	wg.Go(func() {
		for i := 0; wctx.Err() == nil; i++ {
			content := crashMessage(fmt.Sprintf("shared%d", i))
			uid, ok := appendAcked("alice", content)
			if !ok {
				continue
			}
			if _, ok := appendAcked("bob", content); !ok {
				continue
			}
			if _, err := src.Expunge(wctx, "alice", store.Inbox, resilmail.NewUIDSet(uid)); err == nil {
				mu.Lock()
				for j := range acked {
					if acked[j].user == "alice" && acked[j].d == resilmail.DigestOf([]byte(content)) {
						acked[j].user = "" // expunged: no longer expected
					}
				}
				mu.Unlock()
			}
		}
	})
	wg.Go(func() {
		for i := 0; wctx.Err() == nil; i++ {
			appendAcked("carol", crashMessage(fmt.Sprintf("carol%d", i)))
		}
	})

	const rounds = 4
	for round := range rounds {
		mu.Lock()
		before := len(acked)
		mu.Unlock()
		cmd := exec.Command(os.Args[0], "-test.run", "^TestCrashReplicaChild$")
		cmd.Env = append(os.Environ(), crashReplicaEnv+"="+dir+"/replica", crashReplicaEnv+"_URL="+srv.URL)
		require.NoError(t, cmd.Start())
		// Let it catch up and take some load, then kill it anywhere.
		require.Eventually(t, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(acked) > before
		}, 30*time.Second, 5*time.Millisecond, "round %d: the replica acknowledges nothing", round)
		<-time.After(time.Duration(50+rand.IntN(700)) * time.Millisecond) // a random moment under load
		require.NoError(t, cmd.Process.Kill())
		cmd.Wait()
		mu.Lock()
		t.Logf("round %d: %d messages acknowledged before SIGKILL", round, len(acked)-before)
		mu.Unlock()
	}
	cancel()
	wg.Wait()
	srv.CloseClientConnections()
	srv.Close() // the primary is gone

	st, err := store.Open(dir+"/replica/store", &store.Options{Logger: quiet})
	require.NoError(t, err)
	defer st.Close()
	r, _ := startReplica(t, st, srv.URL, dir+"/replica/inbox", &replicate.ReplicaOptions{Secret: []byte(crashSecret), InboxSegment: 64 << 10})
	var missing []msg
	require.Eventually(t, func() bool {
		have := map[msg]bool{}
		for _, u := range []string{"alice", "bob", "carol"} {
			ms, err := st.Fetch(ctx, u, store.Inbox, store.Query{})
			if err != nil {
				return false
			}
			for _, m := range ms {
				if _, err := st.Body(ctx, m.Digest); err == nil {
					have[msg{u, m.Digest}] = true
				}
			}
		}
		missing = missing[:0]
		for _, m := range acked {
			if m.user != "" && !have[m] {
				missing = append(missing, m)
			}
		}
		return len(missing) == 0
	}, 30*time.Second, 20*time.Millisecond, "acknowledged messages missing on the replica (stats %+v)", r.Stats())
	t.Logf("%d acknowledged messages over %d kills, all on the replica with their bodies", len(acked), rounds)
}
