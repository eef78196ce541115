package quarantine_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/quarantine"
	"github.com/resilmail/resilmail/queue"
)

const crashChildEnv = "RESILMAIL_QUARANTINE_CRASH_CHILD"

func openCrashPair(t testing.TB, dir string) (*quarantine.Store, *queue.Queue) {
	discard := slog.New(slog.DiscardHandler)
	q, err := queue.Open(filepath.Join(dir, "q"), resilmail.DelivererFunc(func(context.Context, resilmail.Envelope, io.Reader) error {
		return &resilmail.DeliveryError{Code: 451, Message: "not in this test"}
	}), &queue.Options{Logger: discard})
	require.NoError(t, err)
	s, err := quarantine.Open(filepath.Join(dir, "store"), testAuth(), &quarantine.Options{Logger: discard, Deliverer: q})
	require.NoError(t, err)
	return s, q
}

// TestCrashChild is the child of TestCrashIngestAndRelease: it stores
// entries and releases them until it is killed, printing "PUT id" once an
// entry is stored and "REL id" once its release has returned.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("run by TestCrashIngestAndRelease as a child process")
	}
	prefix := os.Getenv(crashChildEnv + "_PREFIX")
	s, _ := openCrashPair(t, dir)
	ctx := context.Background()
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
		mu.Unlock()
	}
	stored := make(chan string, 1<<16)
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			for i := 0; ; i++ {
				// Batches of 1 to 8, some sharing a body.
				n := 1 + rand.IntN(8)
				items := make([]quarantine.Item, n)
				for j := range items {
					id := fmt.Sprintf("%s-w%d-%d-%d", prefix, w, i, j)
					items[j] = quarantine.Item{
						Entry: testEntry(id, time.Now(), "x@bad.example", "alice@example.org", "bob@example.org"),
						Body:  []byte(testBody(fmt.Sprintf("%s %d", prefix, rand.IntN(50)))),
					}
				}
				for j, err := range s.PutBatch(ctx, items) {
					if err == nil {
						say("PUT %s", items[j].Entry.ID)
						stored <- items[j].Entry.ID
					}
				}
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for id := range stored {
				if rand.IntN(2) == 0 {
					continue
				}
				// Release twice at once: still one delivery.
				var inner sync.WaitGroup
				for range 2 {
					inner.Go(func() {
						if _, err := s.Release(ctx, "admin", id, nil); err == nil {
							say("REL %s", id)
						}
					})
				}
				inner.Wait()
			}
		})
	}
	wg.Wait()
}

func TestCrashIngestAndRelease(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("child")
	}
	rounds := 8
	if testing.Short() {
		rounds = 3
	}
	dir := t.TempDir()
	puts, rels := map[string]bool{}, map[string]bool{}
	for r := range rounds {
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
		time.Sleep(time.Duration(200+rand.IntN(500)) * time.Millisecond) // kill at a random instant
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		_ = cmd.Wait()
		np, nr := 0, 0
		for l := range lines {
			if id, ok := strings.CutPrefix(l, "PUT "); ok {
				puts[id] = true
				np++
			}
			if id, ok := strings.CutPrefix(l, "REL "); ok {
				rels[id] = true
				nr++
			}
		}
		t.Logf("round %d: %d stored, %d released", r, np, nr)
	}
	require.NotEmpty(t, puts)
	require.NotEmpty(t, rels)

	// Recover: Run finishes the releases that were in flight.
	s, q := openCrashPair(t, dir)
	defer q.Close()
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	require.Eventually(t, func() bool { return s.Stats().Releasing == 0 }, 30*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)

	// Nothing stored is lost, every acknowledged release is done.
	for id := range puts {
		e, err := s.Get(context.Background(), "admin", id)
		require.NoError(t, err, "stored entry %s lost", id)
		for _, r := range e.Recipients {
			if rels[id] {
				assert.Equal(t, quarantine.Released, r.Status, "%s %s", id, r.Addr)
			}
		}
	}
	// Nothing is released twice: one queued message per released entry and
	// recipient, and none for a recipient still held.
	perRcpt := map[string]int{}
	for _, m := range q.List(queue.Filter{}) {
		entry, _, ok := strings.Cut(m.ID, ".r")
		require.True(t, ok, m.ID)
		for _, r := range m.Envelope.To {
			perRcpt[entry+" "+r.Addr]++
		}
	}
	released := 0
	page := quarantine.Query{Limit: 1000}
	for {
		p, err := s.List(context.Background(), "admin", page)
		require.NoError(t, err)
		for _, e := range p.Entries {
			for _, r := range e.Recipients {
				n := perRcpt[e.ID+" "+r.Addr]
				if r.Status == quarantine.Released {
					released++
					assert.Equal(t, 1, n, "%s to %s released %d times", e.ID, r.Addr, n)
				} else {
					assert.Zero(t, n, "%s to %s is %s but was queued", e.ID, r.Addr, r.Status)
				}
			}
		}
		if p.Next == "" {
			break
		}
		page.Cursor = p.Next
	}
	t.Logf("%d entries stored, %d releases acknowledged, %d recipients released", len(puts), len(rels), released)
}
