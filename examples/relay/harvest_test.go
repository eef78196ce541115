package main

import (
	"context"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/quarantine"
)

// duBytes is the size of the files under dir.
func duBytes(t *testing.T, dir string) int64 {
	var n int64
	require.NoError(t, filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	}))
	return n
}

// harvest sends rcpts RCPTs to unknown users of example.org and to a
// domain the pool does not serve (relay probes), from sessions parallel
// sessions of up to 19 RCPTs each (under the hard error limit), and
// returns how many RCPTs were answered and how many were refused.
func harvest(t *testing.T, addr string, rcpts, sessions int) (answered, refused int64) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Load() < int64(rcpts) {
				c, err := smtp.Dial(addr)
				if err != nil {
					return
				}
				if c.Hello("harvester.example") != nil || c.Mail("probe@harvester.example", nil) != nil {
					c.Close()
					return
				}
				for range 19 {
					i := next.Add(1)
					if i > int64(rcpts) {
						break
					}
					rcpt := "user" + strconv.FormatInt(i, 10) + "@example.org"
					if i%4 == 0 {
						rcpt = "user" + strconv.FormatInt(i, 10) + "@not-ours.example"
					}
					err := c.Rcpt(rcpt, nil)
					atomic.AddInt64(&answered, 1)
					if err != nil {
						atomic.AddInt64(&refused, 1)
					}
				}
				c.Quit()
			}
		}()
	}
	wg.Wait()
	return answered, refused
}

// realMail sends n messages of 4 KiB to alice@example.org with
// smtp-source in 5 sessions and returns the time it took.
func realMail(t *testing.T, addr string, n int) time.Duration {
	start := time.Now()
	out, err := exec.Command("/usr/sbin/smtp-source", "-s", "5", "-m", strconv.Itoa(n), "-l", "4096",
		"-f", "sender@example.net", "-t", "alice@example.org", addr).CombinedOutput()
	require.NoError(t, err, "smtp-source: %s", out)
	return time.Since(start)
}

func TestHarvestAtFullSpeed(t *testing.T) {
	// A directory-harvest attack: RCPTs to unknown users (and relay
	// probes) at full speed, with the tarpit shortened to nothing so that
	// only the cost of refusing and recording counts, while real mail is
	// delivered (100 000 RCPTs; 10 000 with -short or -race, or
	// $RESILMAIL_HARVEST_RCPTS). Real mail's rate is measured against the same relay
	// without the attack; the quarantine's growth is measured and stays
	// within its cap; relay probes are not recorded.
	rcpts := 100_000
	if testing.Short() || raceEnabled {
		rcpts = 10_000
	}
	if s := os.Getenv("RESILMAIL_HARVEST_RCPTS"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err)
		rcpts = n
	}
	const secret = "correct horse battery staple"
	sink := startSink(t)
	policy := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(policy, []byte(`{"domains": {"example.org": {"recipients": ["alice"]}}}`), 0o644))
	admins, edges, _ := credentials(t)
	dir, qdir := t.TempDir(), t.TempDir()
	c := config{next: sink.addr, dir: dir, httpAddr: freePort(t), policyFile: policy, secret: []byte(secret),
		quarantine: qdir, adminPasswd: admins, quarantineEdges: edges, errorDelay: time.Nanosecond,
		listen: "127.0.0.1:0", hostname: "relay.test", concurrency: 20, maxSize: 10 << 20}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, slog.New(slog.DiscardHandler), ready) }()
	var relay string
	select {
	case a := <-ready:
		relay = a.String()
	case err := <-done:
		t.Fatalf("relay did not start: %v", err)
	}

	const mails = 1000
	base := realMail(t, relay, mails)
	before := duBytes(t, qdir)

	var answered, refused int64
	var during time.Duration
	hstart := time.Now()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		answered, refused = harvest(t, relay, rcpts, 40)
	}()
	// Real mail while the harvest runs (started after it is under way).
	during = realMail(t, relay, mails)
	wg.Wait()
	hdur := time.Since(hstart)
	after := duBytes(t, qdir)
	waitCount(t, sink, 2*mails)

	assert.Equal(t, int64(rcpts), answered)
	assert.Equal(t, int64(rcpts), refused, "every harvested recipient is refused")
	cancel()
	require.NoError(t, <-done)
	st, err := quarantine.Open(qdir, &quarantine.StaticAuthorizer{}, &quarantine.Options{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	entries := st.Stats().Entries
	require.NoError(t, st.Close())
	probes := int64(rcpts / 4)
	assert.Equal(t, int64(rcpts)-probes, entries, "unknown users are recorded, relay probes are not")
	assert.LessOrEqual(t, entries, int64(1_000_000), "within the store's cap")
	t.Logf("real mail: %d messages in %v alone (%.0f/s), in %v during the harvest (%.0f/s): %.0f%% of the rate",
		mails, base.Round(time.Millisecond), float64(mails)/base.Seconds(), during.Round(time.Millisecond), float64(mails)/during.Seconds(), 100*base.Seconds()/during.Seconds())
	t.Logf("harvest: %d RCPTs refused in %v (%.0f/s); quarantine grew by %d bytes (%.0f bytes per recorded reject)",
		refused, hdur.Round(time.Millisecond), float64(refused)/hdur.Seconds(), after-before, float64(after-before)/float64(entries))
}
