package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/mxpool"
	"github.com/resilmail/resilmail/queue"
)

// fakeInternet stands for remote MX hosts: documentation addresses
// (198.51.100.0/24, not this machine's) whose port 25 leads to servers
// on loopback, or nowhere.
type fakeInternet struct {
	mu    sync.Mutex
	to    map[string]string // "198.51.100.10:25" -> the real address
	dials map[string]int
}

func (f *fakeInternet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	f.mu.Lock()
	f.dials[addr]++
	real, ok := f.to[addr]
	f.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("dial %s: connection refused", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, real)
}

func (f *fakeInternet) dialed(addr string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dials[addr]
}

// With -mx the relay delivers each domain's mail to its MX hosts, best
// first, moving on from one that is down, splits a long recipient list
// into transactions, and keeps a destination's own limits.
func TestRelayDeliversByMX(t *testing.T) {
	backup, other := startSink(t), startSink(t)
	res := &mxpool.StaticResolver{}
	res.AddMX("example.net", 10, "mx1.example.net")
	res.AddMX("example.net", 20, "mx2.example.net")
	res.AddAddr("mx1.example.net", netip.MustParseAddr("198.51.100.10"))
	res.AddAddr("mx2.example.net", netip.MustParseAddr("198.51.100.11"))
	res.AddMX("example.com", 10, "mx.example.com")
	res.AddAddr("mx.example.com", netip.MustParseAddr("198.51.100.20"))
	inet := &fakeInternet{dials: map[string]int{}, to: map[string]string{
		"198.51.100.11:25": backup.addr, // mx1 refuses connections
		"198.51.100.20:25": other.addr,
	}}
	relay := startRelayWith(t, config{mx: true, dir: t.TempDir(), resolver: res, dial: inet.dial, rcptsPerTx: 50,
		destLimits: map[string]queue.DestinationLimits{"example.com": {MaxRcptsPerTransaction: 25}}})
	host, port, _ := net.SplitHostPort(relay)

	out, err := exec.Command("swaks", "--server", host, "--port", port, "--from", "sender@example.org",
		"--to", "alice@example.net", "--body", "by MX").CombinedOutput()
	require.NoError(t, err, "swaks: %s", out)
	waitCount(t, backup, 1)
	assert.GreaterOrEqual(t, inet.dialed("198.51.100.10:25"), 1, "the best MX was tried first")

	// 60 recipients in one message: transactions of 25 for example.com.
	var to []string
	for i := range 60 {
		to = append(to, fmt.Sprintf("u%02d@example.com", i))
	}
	out, err = exec.Command("swaks", "--server", host, "--port", port, "--from", "sender@example.org",
		"--to", strings.Join(to, ","), "--body", "many").CombinedOutput()
	require.NoError(t, err, "swaks: %s", out)
	waitCount(t, other, 3)
	assert.EqualValues(t, 1, backup.count.Load())
}

// An MX that is this relay itself (its -hostname) is never used: mail
// goes to a better MX, or stays queued, never back to itself.
func TestRelayMXSkipsItself(t *testing.T) {
	better := startSink(t)
	res := &mxpool.StaticResolver{}
	res.AddMX("example.net", 5, "mx0.example.net")
	res.AddMX("example.net", 10, "relay.test")
	res.AddAddr("mx0.example.net", netip.MustParseAddr("198.51.100.5"))
	res.AddAddr("relay.test", netip.MustParseAddr("198.51.100.6"))
	inet := &fakeInternet{dials: map[string]int{}, to: map[string]string{}} // the better MX is down at first
	debug := freePort(t)
	relay := startRelayWith(t, config{mx: true, dir: t.TempDir(), resolver: res, dial: inet.dial, retryMin: 100 * time.Millisecond, debugAddr: debug})
	out, ok := swaksTo(t, relay, "bob@example.net")
	require.True(t, ok, out)
	waitStatus(t, debug, "the first attempt deferred", func(st map[string]any) bool { return st["deferred_messages"] == 1.0 })
	require.GreaterOrEqual(t, inet.dialed("198.51.100.5:25"), 1)
	assert.Zero(t, inet.dialed("198.51.100.6:25"), "never to itself while the better MX is down")
	inet.mu.Lock()
	inet.to["198.51.100.5:25"] = better.addr
	inet.mu.Unlock()
	waitCount(t, better, 1)
	assert.Zero(t, inet.dialed("198.51.100.6:25"), "never to itself")
}

// waitStatus polls the relay's /status on debug until ok says it shows
// what, and returns it.
func waitStatus(t *testing.T, debug, what string, ok func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + debug + "/status")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		var st map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
		resp.Body.Close()
		if ok(st) {
			return st
		}
		require.True(t, time.Now().Before(deadline), "/status never showed %s: %v", what, st)
		time.Sleep(20 * time.Millisecond) // polls the relay
	}
}

// /status tells the queue's state, the policy's version and age and the
// quarantine outbox's backlog, on the loopback debug listener only.
func TestRelayStatus(t *testing.T) {
	const secret = "correct horse battery staple"
	policy := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(policy, []byte(`{"domains": {"example.org": {"recipients": ["alice"]}}}`), 0o644))
	web, debug := freePort(t), freePort(t)
	_, _, ship := credentials(t)
	relay := startRelayWith(t, config{next: "127.0.0.1:1", dir: t.TempDir(), httpAddr: web, debugAddr: debug, policyFile: policy,
		secret: []byte(secret), retryMin: time.Hour, quarantineShip: "http://127.0.0.1:1/quarantine/ingest", shipSecret: ship})
	out, ok := swaksTo(t, relay, "alice@example.org")
	require.True(t, ok, out)
	_, ok = swaksTo(t, relay, "nobody@example.org")
	require.False(t, ok, "an unknown recipient is refused")

	st := waitStatus(t, debug, "the deferred message and the recorded reject", func(st map[string]any) bool {
		return st["deferred_messages"] == 1.0 && st["quarantine_outbox"] == 1.0
	})
	assert.Equal(t, "relay", st["role"])
	assert.Equal(t, 1.0, st["queue_messages"])
	assert.Greater(t, st["queue_oldest_age_seconds"], 0.0)
	assert.Equal(t, 0.0, st["held_messages"])
	assert.Equal(t, 0.0, st["maybe_delivered_recipients"])
	assert.Equal(t, "publisher", st["policy_role"])
	assert.Equal(t, 1.0, st["policy_version"])
	assert.Less(t, st["policy_age_seconds"], 60.0, "the publisher seals every 30 s")
	assert.NotEmpty(t, st["policy_applied_at"])
	assert.Greater(t, st["quarantine_outbox_bytes"], -1.0)

	// Not on the public listener; the status page reads /metrics there.
	resp, err := http.Get("http://" + web + "/status")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, err = http.Get("http://" + web + "/metrics")
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Contains(t, string(b), "resilmail_policy_version 1\n")
	assert.Contains(t, string(b), "resilmail_policy_age_seconds ")
	assert.Contains(t, string(b), "resilmail_quarantine_outbox_entries 1\n")
}

// A domain of -tls-required-domains is never sent in clear: its MX
// without STARTTLS (smtp-sink) gets nothing, and the mail stays queued.
func TestRelayMXRequiredTLS(t *testing.T) {
	plain := startSink(t)
	res := &mxpool.StaticResolver{}
	res.AddMX("example.net", 10, "mx.example.net")
	res.AddAddr("mx.example.net", netip.MustParseAddr("198.51.100.30"))
	inet := &fakeInternet{dials: map[string]int{}, to: map[string]string{"198.51.100.30:25": plain.addr}}
	debug := freePort(t)
	relay := startRelayWith(t, config{mx: true, dir: t.TempDir(), resolver: res, dial: inet.dial, debugAddr: debug, tlsRequired: "example.net"})
	out, ok := swaksTo(t, relay, "carol@example.net")
	require.True(t, ok, out)
	waitStatus(t, debug, "the message deferred", func(st map[string]any) bool { return st["deferred_messages"] == 1.0 })
	assert.GreaterOrEqual(t, inet.dialed("198.51.100.30:25"), 1, "the MX was tried")
	assert.Zero(t, plain.count.Load(), "nothing sent in clear")
}
