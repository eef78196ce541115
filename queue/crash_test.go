package queue_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
)

const crashChildEnv = "RESILMAIL_QUEUE_CRASH_CHILD"

// fileSink is a Deliverer that appends the id of every delivered message to
// a file, one write per delivery, so that a kill -9 of the process loses
// none of them (the page cache survives the process).
type fileSink struct {
	f   *os.File
	mu  sync.Mutex
	rnd *rand.Rand
}

func (s *fileSink) Deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	if _, err := io.Copy(io.Discard, body); err != nil {
		return err
	}
	s.mu.Lock()
	fail := s.rnd.IntN(10) == 0
	wait := time.Duration(s.rnd.IntN(2000)) * time.Microsecond
	s.mu.Unlock()
	time.Sleep(wait) // the window in which a kill leaves the outcome unknown
	if fail {
		return &resilmail.DeliveryError{Code: 451, Message: "try again"}
	}
	_, err := s.f.WriteString(env.ID + "\n")
	return err
}

// TestCrashChild is the child process of TestCrashRecovery: it enqueues and
// delivers until it is killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("run by TestCrashRecovery as a child process")
	}
	prefix := os.Getenv(crashChildEnv + "_PREFIX")
	f, err := os.OpenFile(filepath.Join(dir, "delivered"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(t, err)
	opts := quietOpts()
	opts.Retry = queue.RetryPolicy{MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	opts.SegmentSize = 256 << 10 // roll and compact often
	q, err := queue.Open(filepath.Join(dir, "q"), &fileSink{f: f, rnd: rand.New(rand.NewPCG(rand.Uint64(), 1))}, opts)
	require.NoError(t, err)
	go q.Run(context.Background())
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("%s-w%d-%d", prefix, w, i)
				size := 2048
				if w == 0 && i%8 == 0 {
					size = 300 << 10 // spooled, copied into a reserved place, read in place: kills land there too
				}
				if _, err := q.Enqueue(context.Background(), envelope(id, "u@example.org"), strings.NewReader(strings.Repeat("x", size))); err != nil {
					continue
				}
				mu.Lock()
				fmt.Fprintf(out, "ACK %s\n", id)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

func TestCrashRecovery(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("child")
	}
	rounds := 12
	if testing.Short() {
		rounds = 3
	}
	// The soak: RESILMAIL_QUEUE_CRASH_ROUNDS=1000 go test -run TestCrashRecovery -timeout 2h ./queue
	if n, err := strconv.Atoi(os.Getenv("RESILMAIL_QUEUE_CRASH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	dir := t.TempDir()
	acked := map[string]bool{}
	for r := 0; r < rounds; r++ {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestCrashChild$", "-test.v")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("%s_PREFIX=r%d", crashChildEnv, r))
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		lines := make(chan string, 1<<16)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Let it work, then kill it at a random instant.
		time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		cmd.Wait()
		n := 0
		for l := range lines {
			if id, ok := strings.CutPrefix(l, "ACK "); ok {
				acked[id] = true
				n++
			}
		}
		t.Logf("round %d: %d acknowledged", r, n)
	}
	require.NotEmpty(t, acked)

	// Recover and let everything deliverable be delivered.
	f, err := os.OpenFile(filepath.Join(dir, "delivered"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(t, err)
	defer f.Close()
	opts := quietOpts()
	opts.Retry = queue.RetryPolicy{MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	q := open(t, filepath.Join(dir, "q"), &fileSink{f: f, rnd: rand.New(rand.NewPCG(1, 2))}, opts)
	run(t, q)
	// Every acknowledged message must be delivered within the drain time,
	// whatever state it is in: held, maybe-delivered or deferred count as
	// stranded.
	count := map[string]int{}
	undelivered := func() int {
		data, err := os.ReadFile(filepath.Join(dir, "delivered"))
		require.NoError(t, err)
		clear(count)
		for _, id := range strings.Fields(string(data)) {
			count[id]++
		}
		n := 0
		for id := range acked {
			if count[id] == 0 {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(30 * time.Second)
	for undelivered() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
	lost, dup := 0, 0
	for id := range acked {
		if count[id] == 0 {
			lost++
			in, err := q.Inspect(id)
			t.Errorf("acknowledged message %s not delivered within the drain time (queued: %v, state %s)", id, err == nil, in.State)
		}
	}
	for _, n := range count {
		if n > 1 {
			dup++ // at least once: an attempt a kill cut short is sent again
		}
	}
	st := q.Stats()
	t.Logf("%d acknowledged over %d kills; %d delivered, %d undelivered, %d delivered more than once; %d interrupted attempts retried; damaged bytes moved aside %d",
		len(acked), rounds, len(count), lost, dup, st.Interrupted, st.DamagedBytes)
}
