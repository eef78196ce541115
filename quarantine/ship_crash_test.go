package quarantine

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const shCrashEnv = "RESILMAIL_QUARANTINE_SHIP_CRASH_CHILD"

// shCrashOutboxOpts makes the log roll and compact often.
func shCrashOutboxOpts() *OutboxOptions {
	return &OutboxOptions{Logger: shLogger(), SegmentSize: 128 << 10, MinFreeBytes: -1}
}

func shCrashBody(id string) []byte { return shBody(id, 2000+len(id)*97%3000) }

// TestShipCrashChild is the child process of TestShipCrash: it adds
// entries to an outbox from four goroutines, prints "ACK <id>" for each Add
// that returned nil, and ships them to the parent's centre, until it is
// killed.
func TestShipCrashChild(t *testing.T) {
	dir := os.Getenv(shCrashEnv)
	if dir == "" {
		t.Skip("run by TestShipCrash as a child process")
	}
	prefix := os.Getenv(shCrashEnv + "_PREFIX")
	o, err := OpenOutbox(dir, shCrashOutboxOpts())
	require.NoError(t, err)
	s, err := NewShipper(o, os.Getenv(shCrashEnv+"_URL"), &ShipperOptions{
		Logger: shLogger(), Secret: shSecret, MaxBatchItems: 32,
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond,
	})
	require.NoError(t, err)
	go s.Run(context.Background())
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("%s-w%d-%d", prefix, w, i)
				var err error
				if i%7 == 6 {
					err = o.Add(context.Background(), shEntry(id), nil)
				} else {
					err = o.Add(context.Background(), shEntry(id), bytes.NewReader(shCrashBody(id)))
				}
				if err != nil {
					continue
				}
				mu.Lock()
				fmt.Fprintf(out, "ACK %s\n", id)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// TestShipCrash kills an edge with kill -9 at random points while it adds
// and ships, several times, and checks that every entry it acknowledged
// (Add returned nil: the sender was told 5xx) is still in its outbox or at
// the centre, and that in the end each one is stored at the centre exactly
// once.
func TestShipCrash(t *testing.T) {
	if os.Getenv(shCrashEnv) != "" {
		t.Skip("child")
	}
	rounds := 8
	if testing.Short() {
		rounds = 3
	}
	c := shStartCentre(t, nil, nil)
	dir := t.TempDir()
	acked := map[string]bool{}
	for r := range rounds {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run", "^TestShipCrashChild$")
		cmd.Env = append(os.Environ(), shCrashEnv+"="+dir, fmt.Sprintf("%s_PREFIX=r%d", shCrashEnv, r), shCrashEnv+"_URL="+c.srv.URL)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		// Kill it after a random number of acknowledgements: at a random
		// point of adding, shipping, acknowledging or compacting.
		killAt := 1 + rand.IntN(600)
		sc := bufio.NewScanner(stdout)
		n := 0
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "ACK "); ok {
				acked[id] = true
				n++
				if n == killAt {
					require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
				}
			}
		}
		_ = cmd.Wait()
		cancel()
		require.GreaterOrEqual(t, n, killAt, "round %d: the child died before it was killed", r)
		t.Logf("round %d: killed after %d acknowledgements (%d printed)", r, killAt, n)
	}

	// Reopen: every acknowledged entry is pending or at the centre.
	o, err := OpenOutbox(dir, shCrashOutboxOpts())
	require.NoError(t, err)
	t.Cleanup(func() { o.Close() }) // after the shipper stops
	pending := map[string]bool{}
	for _, e := range o.Pending() {
		pending[e.ID] = true
	}
	lost := 0
	var ids []string
	for id := range acked {
		ids = append(ids, id)
		if !pending[id] && c.rec.count(id) == 0 {
			lost++
			t.Errorf("acknowledged entry %s is neither pending nor at the centre", id)
		}
	}
	require.Zero(t, lost)

	// Ship the rest; everything arrives, each entry stored once.
	s, ev := shShipper(t, o, c.srv.URL, nil)
	shRun(t, s)
	c.rec.wait(t, ids, 60*time.Second)
	ev.waitFor(t, "outbox empty", func() bool { return o.Stats().Pending == 0 })

	ctx := context.Background()
	for _, id := range ids {
		e, err := c.store.Get(ctx, "admin", id)
		require.NoError(t, err)
		if e.HasBody() {
			body, err := c.store.Body(ctx, "admin", id)
			require.NoError(t, err)
			require.Equal(t, shCrashBody(id), body)
		}
	}
	c.rec.mu.Lock()
	distinct, sent := len(c.rec.seen), 0
	for _, n := range c.rec.seen {
		sent += n
	}
	c.rec.mu.Unlock()
	st := c.store.Stats()
	assert.Equal(t, uint64(distinct), st.Stored, "each entry stored exactly once")
	assert.Equal(t, int64(distinct), st.Entries)
	assert.Zero(t, s.Stats().Rejected)
	ost := o.Stats()
	t.Logf("%d acknowledged over %d kills; %d pending at reopen; %d distinct entries at the centre (%d unacknowledged Adds that reached the disk), received %d times (%d repeats ignored); outbox: %d segments, %d damaged bytes moved aside",
		len(acked), rounds, len(pending), distinct, distinct-len(acked), sent, st.Duplicates, ost.Segments, ost.DamagedBytes)
}
