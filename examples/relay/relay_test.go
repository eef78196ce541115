package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/freeport"
	"github.com/resilmail/resilmail/internal/secret"
	"github.com/resilmail/resilmail/quarantine"
)

// smtpSink runs Postfix's smtp-sink on a free loopback port and counts the
// messages it accepted.
type smtpSink struct {
	addr  string
	count atomic.Int64
	cmd   *exec.Cmd
}

// freePort is an address for a program that binds it later (see
// internal/freeport).
func freePort(t testing.TB) string { return freeport.Addr(t) }

var mesgRe = regexp.MustCompile(`mesg=(\d+)`)

func startSink(t testing.TB) *smtpSink { return startSinkAt(t, freePort(t)) }

func startSinkAt(t testing.TB, addr string) *smtpSink {
	s := &smtpSink{addr: addr}
	s.cmd = exec.Command("/usr/sbin/smtp-sink", "-u", "nobody", "-c", s.addr, "1024")
	out, err := s.cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, s.cmd.Start(), "smtp-sink comes with the postfix package (.ci/run installs it)")
	t.Cleanup(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
	go func() {
		sc := bufio.NewScanner(out)
		sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
			for i, b := range data {
				if b == '\r' || b == '\n' {
					return i + 1, data[:i], nil
				}
			}
			if atEOF && len(data) > 0 {
				return len(data), data, nil
			}
			return 0, nil, nil
		})
		for sc.Scan() {
			if m := mesgRe.FindSubmatch(sc.Bytes()); m != nil {
				n, _ := strconv.ParseInt(string(m[1]), 10, 64)
				s.count.Store(n)
			}
		}
	}()
	waitDial(t, s.addr)
	return s
}

func waitDial(t testing.TB, addr string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never listened: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startRelay runs the relay in this process.
func startRelay(t testing.TB, next, dir string) string {
	return startRelayWith(t, config{next: next, dir: dir})
}

func startRelayWith(t testing.TB, c config) string {
	c.listen = "127.0.0.1:0"
	if c.hostname == "" {
		c.hostname = "relay.test"
	}
	if c.mynetworks == "" {
		c.mynetworks = "127.0.0.0/8,::1/128" // the flag's default
	}
	if c.mynetworks == "none" {
		c.mynetworks = ""
	}
	if c.concurrency == 0 {
		c.concurrency = 20
	}
	if c.maxSize == 0 {
		c.maxSize = 10 << 20
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() {
		done <- run(ctx, c, log, ready)
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("relay did not start: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return addr.String()
}

func waitCount(t testing.TB, s *smtpSink, want int64) {
	deadline := time.Now().Add(60 * time.Second)
	for s.count.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink received %d messages, want %d", s.count.Load(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRelayEndToEndWithRealPeers(t *testing.T) {
	sink := startSink(t)
	relay := startRelay(t, sink.addr, t.TempDir())
	host, port, _ := net.SplitHostPort(relay)

	// swaks, with DSN parameters, and one refused transaction.
	for i := 0; i < 3; i++ {
		out, err := exec.Command("swaks", "--server", host, "--port", port,
			"--from", "sender@example.net", "--to", fmt.Sprintf("rcpt%d@example.com", i),
			"--header", "Subject: swaks test", "--body", "hello from swaks").CombinedOutput()
		require.NoError(t, err, "swaks: %s", out)
		require.Regexp(t, `250 2\.0\.0 OK: queued as \S+`, string(out))
	}
	out, err := exec.Command("swaks", "--server", host, "--port", port,
		"--from", "sender@example.net", "--to", "nobody").CombinedOutput()
	require.Error(t, err, "a bad recipient is refused: %s", out)
	require.Regexp(t, `<\*\* 5\d\d `, string(out), "refused with a permanent reply")
	waitCount(t, sink, 3)

	// Postfix's smtp-source: 5 sessions, 200 messages of 4 KiB.
	out, err = exec.Command("/usr/sbin/smtp-source", "-s", "5", "-m", "200", "-l", "4096",
		"-f", "sender@example.net", "-t", "rcpt@example.com", relay).CombinedOutput()
	require.NoError(t, err, "smtp-source: %s", out)
	waitCount(t, sink, 203)
}

func TestRelayExportsQueueMetrics(t *testing.T) {
	sink := startSink(t)
	web := freePort(t)
	relay := startRelayWith(t, config{next: sink.addr, dir: t.TempDir(), httpAddr: web})
	out, err := exec.Command("/usr/sbin/smtp-source", "-s", "2", "-m", "30", "-l", "1024",
		"-f", "sender@example.net", "-t", "rcpt@example.com", relay).CombinedOutput()
	require.NoError(t, err, "smtp-source: %s", out)
	waitCount(t, sink, 30)
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(body, "resilmail_queue_delivered_total 30\n") {
		require.True(t, time.Now().Before(deadline), "metrics never showed 30 deliveries:\n%s", body)
		resp, err := http.Get("http://" + web + "/metrics")
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		body = string(b)
		time.Sleep(20 * time.Millisecond)
	}
	assert.Contains(t, body, "resilmail_queue_enqueued_total 30\n")
	assert.Contains(t, body, `resilmail_queue_messages{state="held"} 0`)
	assert.Contains(t, body, "resilmail_queue_held_messages 0\n")
	assert.Contains(t, body, "resilmail_queue_deferred_messages 0\n")
	assert.Contains(t, body, "resilmail_queue_maybe_delivered_recipients 0\n")
	assert.Contains(t, body, "resilmail_queue_oldest_age_seconds ")
	assert.Regexp(t, `resilmail_queue_fsyncs_total [1-9]\d*\n`, body)
}

func TestRelayKeepsDebugAndSecretsOffItsPublicListener(t *testing.T) {
	// The pool's secret once leaked through /debug/pprof/cmdline on the
	// public -http listener. Now the profiler is on -debug-addr only, on
	// loopback, and no response of the public listener carries the
	// secret, whatever is asked.
	const secret = "correct horse battery staple"
	sink := startSink(t)
	policy := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(policy, []byte(`{"domains": {"example.org": {"recipients": ["alice"]}}}`), 0o644))
	web, debug := freePort(t), freePort(t)
	admins, edges, _ := credentials(t)
	startRelayWith(t, config{next: sink.addr, dir: t.TempDir(), httpAddr: web, debugAddr: debug, policyFile: policy, secret: []byte(secret), quarantine: t.TempDir(), adminPasswd: admins, quarantineEdges: edges})

	get := func(url string, auth bool) (int, string) {
		req, err := http.NewRequest("GET", url, nil)
		require.NoError(t, err)
		if auth {
			req.SetBasicAuth(testOperator, testOperatorPass)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		var h strings.Builder
		resp.Header.Write(&h)
		return resp.StatusCode, h.String() + string(b)
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=1", "/debug/pprof/symbol"} {
		code, _ := get("http://"+web+path, false)
		assert.Equal(t, http.StatusNotFound, code, "%s is not served on the public listener", path)
		code, _ = get("http://"+web+path, true)
		assert.Equal(t, http.StatusNotFound, code, "%s is not served on the public listener, even with credentials", path)
	}
	for _, path := range []string{"/metrics", "/policy", "/policy?since=0", "/quarantine/", "/quarantine/api/entries", "/quarantine/ingest", "/nothing"} {
		for _, auth := range []bool{false, true} {
			_, body := get("http://"+web+path, auth)
			assert.NotContains(t, body, secret, "%s (credentials %v)", path, auth)
			assert.NotContains(t, body, testOperatorPass, "%s (credentials %v)", path, auth)
		}
	}
	code, body := get("http://"+debug+"/debug/pprof/goroutine?debug=1", false)
	assert.Equal(t, http.StatusOK, code, "the profiler answers on -debug-addr")
	assert.NotContains(t, body, secret)
	code, body = get("http://"+debug+"/debug/pprof/cmdline", false)
	assert.Equal(t, http.StatusOK, code)
	assert.NotContains(t, body, secret, "the secret is not on the command line")
}

func TestRelayRefusesSecretFlagAndPublicDebug(t *testing.T) {
	_, err := parseFlags([]string{"-policy", "p.json", "-secret", "correct horse battery staple"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not taken on the command line")
	assert.NotContains(t, err.Error(), "correct horse")

	c, err := parseFlags([]string{"-follow", "http://mx1:8025/policy", "-secret-file", "/nonexistent"})
	require.NoError(t, err)
	assert.Equal(t, "RESILMAIL_POOL_SECRET", c.secretSrc.Env)

	for _, addr := range []string{"0.0.0.0:0", "[::]:0", "192.0.2.1:0", "example.org:0"} {
		_, err := listenDebug(addr)
		assert.ErrorContains(t, err, "loopback only", addr)
	}
	for _, addr := range []string{":0", "127.0.0.1:0", "[::1]:0", "localhost:0"} {
		ln, err := listenDebug(addr)
		if err != nil && strings.Contains(addr, "::1") {
			continue // no IPv6 on this machine
		}
		require.NoError(t, err, addr)
		assert.True(t, ln.Addr().(*net.TCPAddr).IP.IsLoopback(), "%s listens on %s", addr, ln.Addr())
		ln.Close()
	}
}

func TestRelayQueuesWhileNextHopIsDown(t *testing.T) {
	// Story 1: the mail server is down; the relay keeps accepting and
	// delivers everything when it returns.
	next := freePort(t)
	relay := startRelayWith(t, config{next: next, dir: t.TempDir(), retryMin: 100 * time.Millisecond})
	out, err := exec.Command("/usr/sbin/smtp-source", "-s", "2", "-m", "20", "-l", "1024",
		"-f", "sender@example.net", "-t", "rcpt@example.com", relay).CombinedOutput()
	require.NoError(t, err, "accepted while the next hop is down: %s", out)
	sink := startSinkAt(t, next)
	waitCount(t, sink, 20)
}

// swaksTo sends one message to rcpt through the relay at addr and returns
// swaks's transcript and whether the relay accepted it.
func swaksTo(t *testing.T, addr, rcpt string) (string, bool) {
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("swaks", "--server", host, "--port", port,
		"--from", "sender@example.net", "--to", rcpt, "--body", "pool test").CombinedOutput()
	return string(out), err == nil
}

func TestRelaysShareThePoolPolicy(t *testing.T) {
	// Story 8: adding an MX is starting a follower with the publisher's
	// address and secret; it then rejects exactly what the primary does,
	// and a change on the primary reaches it at once.
	const secret = "correct horse battery staple"
	sink := startSink(t)
	policy := filepath.Join(t.TempDir(), "policy.json")
	write := func(recipients string) {
		require.NoError(t, os.WriteFile(policy, []byte(`{"domains": {"example.org": {"recipients": [`+recipients+`]}}}`), 0o644))
	}
	write(`"alice"`)
	web := freePort(t)
	pdir := t.TempDir()
	// Both MXs see these clients as the Internet, not as their own network.
	refused := make(chan error, 100)
	primary := startRelayWith(t, config{next: sink.addr, dir: pdir, httpAddr: web, policyFile: policy, secret: []byte(secret), mynetworks: "none",
		onPolicyError: func(err error) {
			select {
			case refused <- err:
			default:
			}
		}})
	secondary := startRelayWith(t, config{next: sink.addr, dir: t.TempDir(), follow: "http://" + web + "/policy", policyKeys: publisherKey(t, pdir), secret: []byte(secret), mynetworks: "none"})

	for _, mx := range []string{primary, secondary} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			out, ok := swaksTo(t, mx, "alice@example.org")
			if ok {
				break
			}
			require.True(t, time.Now().Before(deadline), "%s never accepted a valid recipient: %s", mx, out)
			time.Sleep(50 * time.Millisecond)
		}
		out, ok := swaksTo(t, mx, "bob@example.org")
		assert.False(t, ok, "unknown recipient accepted by %s", mx)
		assert.Regexp(t, `<\*\* 550 5\.1\.1 `, out, "unknown recipient refused with 550 5.1.1 by %s", mx)
		out, ok = swaksTo(t, mx, "someone@elsewhere.example")
		assert.False(t, ok, "other domains are not relayed by %s", mx)
		assert.Regexp(t, `<\*\* 550 `, out)
	}

	// bob is added on the primary: the secondary follows within seconds.
	write(`"alice", "bob"`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := swaksTo(t, secondary, "bob@example.org"); ok {
			break
		}
		require.True(t, time.Now().Before(deadline), "the secondary never learnt the new recipient")
		time.Sleep(50 * time.Millisecond)
	}
	// A broken policy file keeps the last good policy in force.
	for len(refused) > 0 {
		<-refused // a half-written good file read earlier
	}
	require.NoError(t, os.WriteFile(policy, []byte(`{"domains": `), 0o644))
	select {
	case err := <-refused: // the broken file was read, and refused
		t.Logf("policy file refused: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the broken policy file was never read")
	}
	_, ok := swaksTo(t, primary, "bob@example.org")
	assert.True(t, ok, "a bad policy file does not take the pool down")
	waitCount(t, sink, 4)
}

func TestPoolMXsAnswerAlikeForATooLargeMessage(t *testing.T) {
	// Two MXs with different -max-size flags once answered a message
	// between the two limits differently; the pool's max_message_size now
	// decides for both.
	const secret = "correct horse battery staple"
	sink := startSink(t)
	policy := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(policy, []byte(`{"domains": {"example.org": {"recipients": ["alice"]}}, "max_message_size": 20000}`), 0o644))
	web := freePort(t)
	pdir := t.TempDir()
	primary := startRelayWith(t, config{next: sink.addr, dir: pdir, httpAddr: web, policyFile: policy, secret: []byte(secret), maxSize: 10 << 20})
	secondary := startRelayWith(t, config{next: sink.addr, dir: t.TempDir(), follow: "http://" + web + "/policy", policyKeys: publisherKey(t, pdir), secret: []byte(secret), maxSize: 10000})
	send := func(addr string, size int) (string, bool) {
		host, port, _ := net.SplitHostPort(addr)
		out, err := exec.Command("swaks", "--server", host, "--port", port,
			"--from", "sender@example.net", "--to", "alice@example.org", "--body", strings.Repeat(strings.Repeat("x", 79)+"\n", size/80)).CombinedOutput()
		// The transcript without the body's lines.
		var lines []string
		for l := range strings.Lines(string(out)) {
			if !strings.Contains(l, "xxxx") {
				lines = append(lines, l)
			}
		}
		return strings.Join(lines, ""), err == nil
	}
	for name, mx := range map[string]string{"primary": primary, "secondary": secondary} {
		var out string
		var ok bool
		deadline := time.Now().Add(10 * time.Second)
		for {
			out, ok = send(mx, 15000)
			if ok || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond) // the follower has not the policy yet
		}
		assert.True(t, ok, "%s: 15 000 bytes is within the pool's limit: %s", name, out)
		out, ok = send(mx, 30000)
		assert.False(t, ok, "%s: 30 000 bytes is over the pool's limit", name)
		assert.Contains(t, out, "552 5.3.4", name)
	}
	waitCount(t, sink, 2)
}

// publisherKey is the public key, in hex, of the publisher whose queue
// folder is dir, as it logs it.
func publisherKey(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "policy-publisher", "signing.key"))
	require.NoError(t, err)
	block, _ := pem.Decode(data)
	require.NotNil(t, block)
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	require.NoError(t, err)
	return hex.EncodeToString(k.(ed25519.PrivateKey).Public().(ed25519.PublicKey))
}

// quarantined lists the pool's quarantine as its administrator sees it
// through the pages' JSON API.
func quarantined(t *testing.T, web, user, password string) []quarantine.Entry {
	t.Helper()
	return quarantinedAt(t, http.DefaultClient, "http://"+web, user, password)
}

func quarantinedAt(t *testing.T, client *http.Client, base, user, password string) []quarantine.Entry {
	t.Helper()
	code, body := adminGet(t, client, base, user, password)
	require.Equal(t, http.StatusOK, code)
	var page struct {
		Entries []quarantine.Entry `json:"entries"`
	}
	require.NoError(t, json.Unmarshal(body, &page))
	return page.Entries
}

// adminGet asks the quarantine pages for the entries as user.
func adminGet(t *testing.T, client *http.Client, base, user, password string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", base+"/quarantine/api/entries", nil)
	require.NoError(t, err)
	req.SetBasicAuth(user, password)
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, body
}

// The test pool's credentials: an operator's account, and the edge
// relay.test's own shipping password.
const (
	testOperator     = "op"
	testOperatorPass = "operator-password-0123"
	testEdgePass     = "edge-password-0123456789"
)

// credentials writes the operators' and edges' passwd-files and the edge's
// shipping secret file.
func credentials(t *testing.T) (admins, edges string, ship secret.Source) {
	t.Helper()
	dir := t.TempDir()
	admins, edges = filepath.Join(dir, "admins"), filepath.Join(dir, "edges")
	require.NoError(t, os.WriteFile(admins, []byte(testOperator+":{PLAIN}"+testOperatorPass+"\n"), 0o600))
	require.NoError(t, os.WriteFile(edges, []byte("relay.test:{PLAIN}"+testEdgePass+"\n"), 0o600))
	ship = secret.Source{File: filepath.Join(dir, "ship"), Env: "RESILMAIL_SHIP_SECRET_UNSET"}
	require.NoError(t, os.WriteFile(ship.File, []byte(testEdgePass+"\n"), 0o600))
	return admins, edges, ship
}

func TestRejectsReachThePoolQuarantine(t *testing.T) {
	// Folklore: any mail a secondary rejects makes its way to the
	// quarantine. Here within seconds, not ten minutes.
	const secret = "correct horse battery staple"
	sink := startSink(t)
	policy := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(policy, []byte(`{"domains": {"example.org": {"recipients": ["alice"]}}}`), 0o644))
	web := freePort(t)
	pdir := t.TempDir()
	admins, edges, ship := credentials(t)
	primary := startRelayWith(t, config{next: sink.addr, dir: pdir, httpAddr: web, policyFile: policy, secret: []byte(secret),
		quarantine: t.TempDir(), adminPasswd: admins, quarantineEdges: edges})
	secondary := startRelayWith(t, config{next: sink.addr, dir: t.TempDir(), follow: "http://" + web + "/policy", policyKeys: publisherKey(t, pdir), secret: []byte(secret),
		quarantineShip: "http://" + web + "/quarantine/ingest", shipSecret: ship})

	// The pages refuse strangers.
	resp, err := http.Get("http://" + web + "/quarantine/api/entries")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	out, ok := swaksTo(t, primary, "carol@example.org")
	require.False(t, ok)
	require.Contains(t, out, "<** 550 5.1.1")

	deadline := time.Now().Add(10 * time.Second)
	for {
		out, ok = swaksTo(t, secondary, "bob@example.org")
		if !ok && strings.Contains(out, "<** 550 5.1.1") {
			break
		}
		require.True(t, time.Now().Before(deadline), "the secondary never refused bob: %s", out)
		time.Sleep(50 * time.Millisecond)
	}
	shipped := time.Now()
	var got []quarantine.Entry
	for {
		got = quarantined(t, web, testOperator, testOperatorPass)
		if len(got) == 2 {
			break
		}
		require.True(t, time.Since(shipped) < 5*time.Second, "the quarantine has %d entries, want 2", len(got))
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the secondary's reject reached the quarantine in %v", time.Since(shipped).Round(time.Millisecond))
	byRcpt := map[string]quarantine.Entry{}
	for _, e := range got {
		require.Len(t, e.Recipients, 1)
		byRcpt[e.Recipients[0].Addr] = e
	}
	for _, rcpt := range []string{"bob@example.org", "carol@example.org"} {
		e, ok := byRcpt[rcpt]
		require.True(t, ok, "no entry for %s", rcpt)
		assert.Equal(t, quarantine.KindRecipient, e.Reason.Kind)
		assert.Regexp(t, `^550 5\.1\.1 `, e.Reason.Reply)
		assert.Equal(t, "sender@example.net", e.Envelope.From)
		assert.Equal(t, "127.0.0.1", e.ClientAddr)
		assert.NotEmpty(t, e.HELO, "swaks's HELO")
		assert.Equal(t, "relay.test", e.Node)
		assert.Equal(t, quarantine.Held, e.Recipients[0].Status)
		assert.False(t, e.HasBody(), "refused at RCPT: no body")
	}

	// The edge's password opens ingest for its own name only: an entry it
	// ships as another node is refused.
	now := time.Now()
	forged := quarantine.Entry{ID: quarantine.NewID(now), Node: "mx1", Time: now,
		Envelope:   resilmail.Envelope{From: "sender@example.net", To: []resilmail.Recipient{{Addr: "dave@example.org"}}},
		Recipients: []quarantine.RecipientState{{Addr: "dave@example.org", Status: quarantine.Held, Changed: now}},
		Reason:     quarantine.Reason{Kind: quarantine.KindRecipient, Reply: "550 5.1.1 forged"}}
	var batch bytes.Buffer
	bw := quarantine.NewBatchWriter(&batch)
	require.NoError(t, bw.Add(forged, nil))
	require.NoError(t, bw.Close())
	req, err := http.NewRequest(http.MethodPost, "http://"+web+"/quarantine/ingest", &batch)
	require.NoError(t, err)
	req.SetBasicAuth("relay.test", testEdgePass)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	var ir quarantine.IngestResponse
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&ir))
	resp.Body.Close()
	require.Len(t, ir.Results, 1)
	assert.Equal(t, quarantine.IngestInvalid, ir.Results[0].Status, "relay.test shipped an entry as mx1")
	assert.Len(t, quarantined(t, web, testOperator, testOperatorPass), 2)
}

// testPKI is a private CA and certificates it signed for the pool's nodes,
// each valid for 127.0.0.1 as a server and as a client.
type testPKI struct {
	dir    string
	ca     string // the CA's certificate, PEM
	pool   *x509.CertPool
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pool CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	p.ca = filepath.Join(p.dir, "ca.pem")
	require.NoError(t, os.WriteFile(p.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	caCert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	p.pool = x509.NewCertPool()
	p.pool.AddCert(caCert)
	p.caCert, p.caKey = caCert, key
	return p
}

// node makes a certificate for the node name, returning its files.
func (p *testPKI) node(t *testing.T, name string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &k.PublicKey, p.caKey)
	require.NoError(t, err)
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	require.NoError(t, err)
	cert, key = filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+".key")
	require.NoError(t, os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600))
	return cert, key
}

func TestPoolOverTLSWithPrivateCA(t *testing.T) {
	// Between the pool's nodes everything travels over TLS verified with
	// a private CA: the policy, the shipped quarantine and the operator's
	// pages. The edge proves who it is with its certificate (mutual TLS),
	// which opens the ingest endpoint and nothing else; the operator logs
	// in with an account of the passwd-file; the pool's secret opens
	// neither.
	const secret = "correct horse battery staple"
	pki := newTestPKI(t)
	mx1Cert, mx1Key := pki.node(t, "mx1")
	mx2Cert, mx2Key := pki.node(t, "mx2")
	sink := startSink(t)
	policy := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(policy, []byte(`{"domains": {"example.org": {"recipients": ["alice"]}}}`), 0o644))
	web := freePort(t)
	pdir := t.TempDir()
	admins, _, _ := credentials(t)
	startRelayWith(t, config{next: sink.addr, dir: pdir, httpAddr: web, policyFile: policy, secret: []byte(secret),
		quarantine: t.TempDir(), adminPasswd: admins, tlsCert: mx1Cert, tlsKey: mx1Key, tlsCA: pki.ca})
	secondary := startRelayWith(t, config{next: sink.addr, dir: t.TempDir(), follow: "https://" + web + "/policy", policyKeys: publisherKey(t, pdir),
		secret: []byte(secret), quarantineShip: "https://" + web + "/quarantine/ingest", tlsCert: mx2Cert, tlsKey: mx2Key, tlsCA: pki.ca, hostname: "mx2"})

	deadline := time.Now().Add(10 * time.Second)
	for {
		out, ok := swaksTo(t, secondary, "bob@example.org")
		if !ok && strings.Contains(out, "<** 550 5.1.1") {
			break
		}
		require.True(t, time.Now().Before(deadline), "the secondary never refused bob over TLS: %s", out)
		time.Sleep(50 * time.Millisecond)
	}
	operator := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool}}}
	base := "https://" + web
	require.Eventually(t, func() bool { return len(quarantinedAt(t, operator, base, testOperator, testOperatorPass)) == 1 }, 10*time.Second, 20*time.Millisecond,
		"the edge's reject reaches the centre over mutual TLS")
	assert.Equal(t, "mx2", quarantinedAt(t, operator, base, testOperator, testOperatorPass)[0].Node, "recorded under the certificate's name")
	// An edge whose -hostname is not its certificate's name would have its
	// entries refused by the centre: it does not start.
	c := config{next: sink.addr, dir: t.TempDir(), listen: "127.0.0.1:0", hostname: "mx1", maxSize: 10 << 20, follow: "https://" + web + "/policy", policyKeys: publisherKey(t, pdir),
		secret: []byte(secret), quarantineShip: "https://" + web + "/quarantine/ingest", tlsCert: mx2Cert, tlsKey: mx2Key, tlsCA: pki.ca}
	err := run(context.Background(), c, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	require.ErrorContains(t, err, `the certificate's name "mx2"`)

	code, _ := adminGet(t, operator, base, "admin", secret)
	assert.Equal(t, http.StatusUnauthorized, code, "the pool's secret is no operator's password")
	code, _ = adminGet(t, operator, base, testOperator, "wrong")
	assert.Equal(t, http.StatusUnauthorized, code)
	// The edge's certificate opens ingest, not the pages.
	cert, err := tls.LoadX509KeyPair(mx2Cert, mx2Key)
	require.NoError(t, err)
	edge := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{cert}}}}
	code, _ = adminGet(t, edge, base, "", "")
	assert.Equal(t, http.StatusUnauthorized, code, "an edge's credential does not open the operator's pages")
	// Nothing is served in clear on the TLS port, and a client that does
	// not trust the private CA gets no answer.
	resp, err := http.Get("http://" + web + "/policy")
	if err == nil {
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "plain HTTP to the TLS port")
		resp.Body.Close()
	}
	_, err = http.Get(base + "/metrics")
	assert.Error(t, err, "the node's certificate is verified against the private CA only")
}

func TestRelayRefusesPlainHTTPBetweenMachines(t *testing.T) {
	for name, c := range map[string]config{
		"-http beyond loopback":           {httpAddr: "0.0.0.0:0"},
		"-follow over http elsewhere":     {follow: "http://192.0.2.1:8025/policy", policyKeys: strings.Repeat("00", 32)},
		"-quarantine-ship http elsewhere": {quarantineShip: "http://192.0.2.1:8025/quarantine/ingest"},
	} {
		c.next, c.dir, c.listen, c.secret = "127.0.0.1:1", t.TempDir(), "127.0.0.1:0", []byte("correct horse battery staple")
		// Refused at start; a relay that starts serving instead stops
		// after a while without an error, and fails the test.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := run(ctx, c, slog.New(slog.DiscardHandler), nil)
		cancel()
		require.Error(t, err, name)
		assert.Contains(t, err.Error(), "insecure-http", name)
	}
	// Asked for explicitly, it is allowed.
	c := config{httpAddr: "0.0.0.0:0", insecureHTTP: true, next: "127.0.0.1:1", dir: t.TempDir(), listen: "127.0.0.1:0"}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, slog.New(slog.DiscardHandler), ready) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("-insecure-http: %v", err)
	}
	cancel()
	require.NoError(t, <-done)
}

func TestPoolMXsRouteAlike(t *testing.T) {
	// Two MXs with different -next flags once sent a routed domain's mail
	// each to its own next hop; the pool's routes now decide for both.
	const secret = "correct horse battery staple"
	routed, own1, own2 := startSink(t), startSink(t), startSink(t)
	policy := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(policy, []byte(`{"domains": {"example.org": {"recipients": ["alice"]}, "example.com": {"recipients": ["bob"]}},
		"routes": [{"domain": "example.org", "host": "`+routed.addr+`"}]}`), 0o644))
	web := freePort(t)
	pdir := t.TempDir()
	primary := startRelayWith(t, config{next: own1.addr, dir: pdir, httpAddr: web, policyFile: policy, secret: []byte(secret), mynetworks: "none"})
	secondary := startRelayWith(t, config{next: own2.addr, dir: t.TempDir(), follow: "http://" + web + "/policy", policyKeys: publisherKey(t, pdir), secret: []byte(secret), mynetworks: "none"})
	for _, mx := range []string{primary, secondary} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			out, ok := swaksTo(t, mx, "alice@example.org")
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never accepted alice@example.org: %s", mx, out)
			}
			time.Sleep(20 * time.Millisecond) // the follower has not the policy yet
		}
	}
	waitCount(t, routed, 2)
	// A domain without a route goes to each MX's own next hop.
	for _, mx := range []string{primary, secondary} {
		out, ok := swaksTo(t, mx, "bob@example.com")
		require.True(t, ok, out)
	}
	waitCount(t, own1, 1)
	waitCount(t, own2, 1)
	assert.EqualValues(t, 2, routed.count.Load(), "only example.org is routed")
	assert.EqualValues(t, 1, own1.count.Load())
	assert.EqualValues(t, 1, own2.count.Load())
}

// TestTuneGC: without GOGC in the environment the relay collects at
// gcPercent under a soft limit of memLimit (a heap of long-lived ids does
// not grow to five times its size); an operator's GOGC or GOMEMLIMIT is
// left as the runtime read it.
func TestTuneGC(t *testing.T) {
	percent, limit := debug.SetGCPercent(100), debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetGCPercent(percent); debug.SetMemoryLimit(limit) })
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}

	tuneGC(env())
	assert.Equal(t, gcPercent, debug.SetGCPercent(100))
	assert.Equal(t, int64(memLimit), debug.SetMemoryLimit(math.MaxInt64))

	tuneGC(env("GOMEMLIMIT", "2GiB"))
	assert.Equal(t, gcPercent, debug.SetGCPercent(100))
	assert.Equal(t, int64(math.MaxInt64), debug.SetMemoryLimit(-1), "the operator's limit stays")

	tuneGC(env("GOGC", "50"))
	assert.Equal(t, 100, debug.SetGCPercent(100), "the operator's GOGC stays")
	assert.Equal(t, int64(math.MaxInt64), debug.SetMemoryLimit(-1))
}
