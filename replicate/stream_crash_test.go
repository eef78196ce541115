package replicate_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

const (
	crashPrimaryEnv = "RESILMAIL_REPLICATE_CRASH_PRIMARY"
	crashSecret     = "crash test secret"
)

func crashMessage(id string) string {
	return "Subject: " + id + "\r\nMessage-ID: <" + id + "@crash>\r\n\r\n" + strings.Repeat(id+" ", 300) + "\r\n"
}

// TestCrashPrimaryChild is the primary of TestKilledPrimaryLosesNoAcknowledgedWrite,
// run as a child process: four writers append to alice's INBOX and wait
// for a replica's acknowledgement (AckOne) before announcing "K <id>",
// until the parent kills the process with SIGKILL.
func TestCrashPrimaryChild(t *testing.T) {
	dir := os.Getenv(crashPrimaryEnv)
	if dir == "" {
		t.Skip("run by TestKilledPrimaryLosesNoAcknowledgedWrite as a child process")
	}
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.Open(dir, &store.Options{Logger: quiet})
	require.NoError(t, err)
	if err := st.CreateUser(ctx, "alice"); err != nil && !errors.Is(err, store.ErrExists) {
		t.Fatal(err)
	}
	p, err := replicate.NewPrimary(st, &replicate.PrimaryOptions{Secret: []byte(crashSecret), Mode: replicate.AckOne,
		AckTimeout: 20 * time.Second, OnTimeout: replicate.TimeoutRefuse, Logger: quiet})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv(crashPrimaryEnv+"_PORT"))
	require.NoError(t, err)
	go http.Serve(ln, p.Handler())
	round := os.Getenv(crashPrimaryEnv + "_ROUND")
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(os.Stdout, format+"\n", args...)
		mu.Unlock()
	}
	say("L %s", ln.Addr())
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("r%sw%di%d", round, w, i)
				if _, err := st.Append(ctx, "alice", store.Inbox, nil, time.Time{}, strings.NewReader(crashMessage(id))); err != nil {
					say("E append %s: %v", id, err)
					continue
				}
				if err := p.Await(ctx, st.Position()); err != nil {
					say("E await %s: %v", id, err)
					continue
				}
				say("K %s", id)
			}
		})
	}
	wg.Wait()
}

// TestKilledPrimaryLosesNoAcknowledgedWrite kills the primary (a child
// process) with SIGKILL at random moments while it writes in a waiting
// mode (AckOne); every write it acknowledged must be on the replica.
func TestKilledPrimaryLosesNoAcknowledgedWrite(t *testing.T) {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	replicaStore, err := store.Open(dir+"/replica", &store.Options{Logger: quiet})
	require.NoError(t, err)
	defer replicaStore.Close()

	port := freeLoopbackPort(t)
	r, err := replicate.NewReplica(replicaStore, "http://127.0.0.1:"+port, dir+"/inbox",
		&replicate.ReplicaOptions{Name: "r1", Secret: []byte(crashSecret), MaxBackoff: 100 * time.Millisecond, Logger: quiet})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	defer func() {
		stop()
		r.Close()
		<-done
	}()

	acked := map[string]bool{}
	const rounds = 3
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestCrashPrimaryChild$", "-test.v")
		cmd.Env = append(os.Environ(), crashPrimaryEnv+"="+dir+"/primary", crashPrimaryEnv+"_PORT="+port, fmt.Sprintf("%s_ROUND=%d", crashPrimaryEnv, round))
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// The kill comes at a random moment once the pair replicates (a
		// loaded machine may take a while to start the child and connect).
		var killAt <-chan time.Time
		first := time.After(20 * time.Second)
		before := len(acked)
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break read
				}
				if id, ok := strings.CutPrefix(l, "K "); ok {
					acked[id] = true
					if first != nil {
						first = nil
						killAt = time.After(time.Duration(300+rand.IntN(1500)) * time.Millisecond)
					}
				}
			case <-first:
				require.NoError(t, cmd.Process.Kill())
				first = nil
			case <-killAt:
				require.NoError(t, cmd.Process.Kill())
				killAt = nil
			}
		}
		cmd.Wait()
		t.Logf("round %d: %d writes acknowledged before SIGKILL", round, len(acked)-before)
		require.Greater(t, len(acked), before, "round %d acknowledged nothing: is the replica following? %+v", round, r.Stats())
	}

	// The primary is dead; what the replica acknowledged is in its inbox
	// and reaches its store.
	want := map[resilmail.Digest]string{}
	for id := range acked {
		want[resilmail.DigestOf([]byte(crashMessage(id)))] = id
	}
	var missing []string
	require.Eventually(t, func() bool {
		msgs, err := replicaStore.Fetch(ctx, "alice", store.Inbox, store.Query{})
		if err != nil {
			return false
		}
		have := map[resilmail.Digest]bool{}
		for _, m := range msgs {
			have[m.Digest] = true
		}
		missing = missing[:0]
		for d, id := range want {
			if !have[d] {
				missing = append(missing, id)
			}
		}
		return len(missing) == 0
	}, 20*time.Second, 20*time.Millisecond, "acknowledged writes missing on the replica: %v", missing)
	assert.NotEmpty(t, acked)
	t.Logf("%d acknowledged writes over %d kills, all on the replica", len(acked), rounds)
}

func freeLoopbackPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}
