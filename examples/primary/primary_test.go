package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/faultproxy"
	"github.com/resilmail/resilmail/internal/freeport"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

const (
	testSecret = "primary test secret"
	// childEnv carries the arguments of a primary run as a child process
	// by this test binary, one per line.
	childEnv = "RESILMAIL_PRIMARY_CHILD_ARGS"
)

func TestMain(m *testing.M) {
	if args := os.Getenv(childEnv); args != "" {
		os.Exit(realMain(strings.Split(args, "\n")))
	}
	os.Exit(m.Run())
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startPrimary runs the command in this process with args (the secret and
// loopback ports added) until the test ends, and returns its addresses.
func startPrimary(t *testing.T, args ...string) addrs {
	t.Helper()
	args = append([]string{"-dir", t.TempDir(), "-secret-file", secretFile(t), "-lmtp", "127.0.0.1:0", "-http", "127.0.0.1:0", "-hostname", "primary.test"}, args...)
	c, err := parseFlags(args, func(string) string { return "" })
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan addrs, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, quiet, ready) }()
	var a addrs
	select {
	case a = <-ready:
	case err := <-done:
		t.Fatalf("primary did not start: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return a
}

// startReplica follows the primary at httpAddr into a store of its own.
func startReplica(t *testing.T, httpAddr, name string) (*store.Store, *replicate.Replica) {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(dir+"/store", &store.Options{Logger: quiet})
	require.NoError(t, err)
	r, err := replicate.NewReplica(st, "http://"+httpAddr+"/replicate", dir+"/inbox",
		&replicate.ReplicaOptions{Name: name, Secret: []byte(testSecret), MaxBackoff: 100 * time.Millisecond, Logger: quiet})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
		st.Close()
	})
	return st, r
}

// swaks delivers one message with swaks speaking LMTP and returns its
// transcript.
func swaks(t *testing.T, addr, body string, rcpts ...string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	out, _ := exec.Command("swaks", "--protocol", "LMTP", "--server", host, "--port", port,
		"--from", "sender@example.net", "--to", strings.Join(rcpts, ","),
		"--header", "Subject: primary test", "--body", body).CombinedOutput()
	return string(out)
}

func getStatus(t *testing.T, httpAddr string) statusReport {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/status")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var s statusReport
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&s))
	return s
}

func inbox(t *testing.T, st *store.Store, user string) []store.Message {
	t.Helper()
	msgs, err := st.Fetch(context.Background(), user, store.Inbox, store.Query{})
	require.NoError(t, err)
	return msgs
}

// TestDeliveriesReachTheReplica delivers with swaks over LMTP to two users
// of a primary that waits for one replica: each recipient gets its own
// 250, and the message, byte for byte, reaches the replica's INBOXes; the
// status page and the metrics show the replica in step.
func TestDeliveriesReachTheReplica(t *testing.T) {
	a := startPrimary(t, "-users", "alice@example.org,bob@example.org", "-ack", "one", "-ack-timeout", "10s")
	rst, r := startReplica(t, a.http.String(), "r1")
	require.Eventually(t, func() bool { return r.Stats().Connected }, 10*time.Second, 10*time.Millisecond)

	out := swaks(t, a.lmtp.String(), "hello from the primary test", "alice@example.org", "Bob@Example.org", "nobody@example.org")
	assert.Contains(t, out, "<** 550 5.1.1 no such user")
	assert.Contains(t, out, "<-  250 2.0.0 <alice@example.org> OK")
	assert.Contains(t, out, "<-  250 2.0.0 <Bob@Example.org> OK")

	// Acknowledged means durable in the replica's inbox; applying follows.
	require.Eventually(t, func() bool {
		a, errA := rst.Fetch(context.Background(), "alice@example.org", store.Inbox, store.Query{})
		b, errB := rst.Fetch(context.Background(), "bob@example.org", store.Inbox, store.Query{})
		return errA == nil && errB == nil && len(a) == 1 && len(b) == 1
	}, 10*time.Second, 10*time.Millisecond)
	body, err := rst.Body(context.Background(), inbox(t, rst, "alice@example.org")[0].Digest)
	require.NoError(t, err)
	assert.Contains(t, string(body), "hello from the primary test")
	assert.Contains(t, string(body), "Subject: primary test")

	s := getStatus(t, a.http.String())
	assert.Equal(t, "primary", s.Role)
	assert.Equal(t, "one", s.Ack)
	assert.Equal(t, 2, s.Messages)
	require.Len(t, s.Replicas, 1)
	assert.Equal(t, "r1", s.Replicas[0].Name)
	assert.True(t, s.Replicas[0].Connected)
	assert.Equal(t, s.Position, s.Replicas[0].Acked)
	assert.Zero(t, s.Replicas[0].LagChanges)

	resp, err := http.Get("http://" + a.http.String() + "/metrics")
	require.NoError(t, err)
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Contains(t, string(m), `resilmail_replicate_connected{replica="r1"} 1`)
	assert.Contains(t, string(m), "resilmail_store_messages 2")
	assert.Contains(t, string(m), "resilmail_store_retention_holds_expired_total 0")
	assert.Contains(t, string(m), "resilmail_store_pack_bytes 0", "a store built by deliveries has no pack")

	// The stream refuses a caller without the secret's token.
	resp, err = http.Get("http://" + a.http.String() + "/replicate/changes?after=0&replica=intruder")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

// TestNoReplicaAnswers delivers to a primary that waits for a replica
// none of which is running: with -on-timeout refuse the client gets 451
// and delivers again later; with accept it gets 250 and the window is
// counted. Either way the message is durable on the primary and reaches
// a replica that starts later.
func TestNoReplicaAnswers(t *testing.T) {
	for _, tc := range []struct {
		onTimeout, reply  string
		refused, accepted uint64
	}{
		{"refuse", "<** 451 4.4.0 <alice@example.org> not replicated yet, try again later", 1, 0},
		{"accept", "<-  250 2.0.0 <alice@example.org> OK", 0, 1},
	} {
		t.Run(tc.onTimeout, func(t *testing.T) {
			a := startPrimary(t, "-users", "alice@example.org", "-ack", "one", "-ack-timeout", "300ms", "-on-timeout", tc.onTimeout)
			out := swaks(t, a.lmtp.String(), "while the replica is away", "alice@example.org")
			assert.Contains(t, out, tc.reply)
			s := getStatus(t, a.http.String())
			assert.Equal(t, tc.refused, s.Refused)
			assert.Equal(t, tc.accepted, s.Accepted)
			assert.Equal(t, 1, s.Messages, "stored on the primary either way")

			rst, _ := startReplica(t, a.http.String(), "late")
			require.Eventually(t, func() bool {
				msgs, err := rst.Fetch(context.Background(), "alice@example.org", store.Inbox, store.Query{})
				return err == nil && len(msgs) == 1
			},
				10*time.Second, 10*time.Millisecond)
		})
	}
}

func TestFlags(t *testing.T) {
	env := func(string) string { return "" }
	withSecret := func(k string) string { return map[string]string{"RESILMAIL_SECRET": testSecret}[k] }
	_, err := parseFlags(nil, env)
	assert.ErrorContains(t, err, "no usable secret")
	c, err := parseFlags(nil, withSecret)
	require.NoError(t, err)
	assert.Equal(t, testSecret, string(c.secret))
	assert.Equal(t, replicate.AckAsync, c.mode)
	assert.Equal(t, "resilmail-primary", c.dir, "mail is kept in a named folder by default, never a temporary one")
	assert.ErrorContains(t, run(context.Background(), config{}, quiet, nil), "-dir is empty")
	_, err = parseFlags([]string{"-secret", testSecret}, withSecret)
	assert.ErrorContains(t, err, "not taken on the command line")
	assert.NotContains(t, err.Error(), testSecret, "the error does not repeat the secret")
	_, err = parseFlags(nil, func(k string) string { return map[string]string{"RESILMAIL_SECRET": "short"}[k] })
	assert.ErrorContains(t, err, "shorter than")
	c, err = parseFlags([]string{"-secret-file", secretFile(t)}, env)
	require.NoError(t, err)
	assert.Equal(t, testSecret, string(c.secret))
	_, err = parseFlags([]string{"-ack", "all"}, withSecret)
	assert.ErrorContains(t, err, "-replicas")
	_, err = parseFlags([]string{"-ack", "some"}, withSecret)
	assert.ErrorContains(t, err, "want async, one or all")
	_, err = parseFlags([]string{"-on-timeout", "maybe"}, withSecret)
	assert.ErrorContains(t, err, "want refuse or accept")
	_, err = parseFlags([]string{"-tls-cert", "cert.pem"}, withSecret)
	assert.ErrorContains(t, err, "go together")
	c, err = parseFlags([]string{"-ack", "all", "-replicas", "b, c"}, withSecret)
	require.NoError(t, err)
	assert.Equal(t, []string{"b", "c"}, c.replicas)
	// Plain HTTP beyond loopback only when asked for.
	_, err = parseFlags([]string{"-http", "0.0.0.0:8026"}, withSecret)
	assert.ErrorContains(t, err, "-insecure-http")
	_, err = parseFlags([]string{"-http", "0.0.0.0:8026", "-insecure-http"}, withSecret)
	assert.NoError(t, err)
	_, err = parseFlags([]string{"-http", "0.0.0.0:8026", "-tls-cert", "c.pem", "-tls-key", "k.pem"}, withSecret)
	assert.NoError(t, err)
}

// secretFile writes testSecret to a file only its owner reads.
func secretFile(t testing.TB) string {
	path := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(path, []byte(testSecret+"\n"), 0o600))
	return path
}

// TestReplicaSecretsBindNames: with -replicas each replica has its own
// secret (-replica-secret prints it); the primary's own secret and
// another replica's cannot acknowledge as that replica, so -ack all needs
// both replicas.
func TestReplicaSecretsBindNames(t *testing.T) {
	a := startPrimary(t, "-users", "alice@example.org", "-ack", "all", "-replicas", "mail2,mail3", "-ack-timeout", "300ms")
	base := "http://" + a.http.String() + "/replicate"
	master := []byte(testSecret)
	ack := func(secret []byte, name string) int {
		body := strings.NewReader(`{"replica":"` + name + `","position":1}`)
		req, err := http.NewRequest("POST", base+"/ack", body)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+replicate.StreamToken(secret))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	assert.Equal(t, http.StatusForbidden, ack(master, "mail2"), "the primary's secret cannot act as mail2")
	assert.Equal(t, http.StatusForbidden, ack(replicaSecret(master, "mail3"), "mail2"), "nor can mail3's")
	assert.Equal(t, http.StatusNoContent, ack(replicaSecret(master, "mail2"), "mail2"))
	assert.NotEqual(t, string(replicaSecret(master, "mail2")), string(replicaSecret(master, "mail3")))
}

// crashMessage is the message of delivery id; its digest names it on the
// replica.
func crashMessage(id string) string {
	return "Subject: " + id + "\r\nMessage-ID: <" + id + "@crash.test>\r\n\r\n" + strings.Repeat(strings.Repeat(id+" ", 8)+"\r\n", 50)
}

// lmtpClient delivers messages over one LMTP session, as a relay does,
// and dials again after an error.
type lmtpClient struct {
	addr string
	c    *smtp.Client
}

// deliver delivers one message to rcpt and reports whether it was
// acknowledged with 250.
func (l *lmtpClient) deliver(rcpt, msg string) (bool, error) {
	ok, err := l.try(rcpt, msg)
	if err != nil && l.c != nil {
		l.c.Close()
		l.c = nil
	}
	return ok, err
}

func (l *lmtpClient) try(rcpt, msg string) (bool, error) {
	if l.c == nil {
		conn, err := net.DialTimeout("tcp", l.addr, 2*time.Second)
		if err != nil {
			time.Sleep(10 * time.Millisecond) // the primary is down
			return false, err
		}
		l.c = smtp.NewClientLMTP(conn)
		if err := l.c.Hello("crash.test"); err != nil {
			return false, err
		}
	}
	if err := l.c.Mail("sender@example.net", nil); err != nil {
		return false, err
	}
	if err := l.c.Rcpt(rcpt, nil); err != nil {
		return false, err
	}
	w, err := l.c.Data()
	if err != nil {
		return false, err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return false, err
	}
	ok, err := w.CloseWithLMTPResponse()
	if err != nil {
		return false, err
	}
	return len(ok) == 1, nil
}

// TestKilledPrimaryLosesNoAcknowledgedDelivery runs the primary as a child
// process in -ack one mode with a replica following it, delivers over LMTP
// from four clients, and kills the primary with SIGKILL at random moments,
// three times, starting it again on the same folder: every delivery that
// got 250 is on the replica.
func TestKilledPrimaryLosesNoAcknowledgedDelivery(t *testing.T) {
	dir := t.TempDir()
	lmtpAddr, httpAddr := freeport.Addr(t), freeport.Addr(t)
	// A slow link (up to 20 ms per chunk) keeps the replica behind, so
	// that only waiting for it makes a 250 safe: the same test with
	// -ack async loses deliveries.
	link, err := faultproxy.New(httpAddr, 1)
	require.NoError(t, err)
	defer link.Close()
	link.SetFaults(faultproxy.Faults{MaxDelay: 20 * time.Millisecond})
	rst, _ := startReplica(t, link.Addr(), "r1")

	var mu sync.Mutex
	acked := map[string]bool{}
	for round := range 3 {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), childEnv+"="+strings.Join([]string{
			"-dir", dir, "-secret-file", secretFile(t), "-lmtp", lmtpAddr, "-http", httpAddr,
			"-users", "alice@example.org", "-ack", "one", "-ack-timeout", "20s",
		}, "\n"))
		stderr, err := cmd.StderrPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		serving := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				if strings.Contains(sc.Text(), "primary: serving") {
					close(serving)
				}
			}
		}()
		select {
		case <-serving:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("round %d: the primary did not start", round)
		}

		stop := make(chan struct{})
		var wg sync.WaitGroup
		before := len(acked)
		for w := range 4 {
			wg.Go(func() {
				l := &lmtpClient{addr: lmtpAddr}
				defer func() {
					if l.c != nil {
						l.c.Close()
					}
				}()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					id := fmt.Sprintf("r%dw%di%d", round, w, i)
					ok, err := l.deliver("alice@example.org", crashMessage(id))
					if err != nil || !ok {
						continue // refused, or cut by the kill: not acknowledged
					}
					mu.Lock()
					acked[id] = true
					mu.Unlock()
				}
			})
		}
		time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond)
		require.NoError(t, cmd.Process.Kill())
		cmd.Wait()
		close(stop)
		wg.Wait()
		t.Logf("round %d: %d deliveries acknowledged before SIGKILL", round, len(acked)-before)
		require.Greater(t, len(acked), before, "round %d acknowledged nothing: is the replica following?", round)
	}

	// The primary's machine is gone for good: what it acknowledged must
	// be on the replica.
	require.NoError(t, os.RemoveAll(dir))
	want := map[resilmail.Digest]string{}
	for id := range acked {
		want[resilmail.DigestOf([]byte(crashMessage(id)))] = id
	}
	var missing []string
	for deadline := time.Now().Add(20 * time.Second); ; {
		msgs, err := rst.Fetch(context.Background(), "alice@example.org", store.Inbox, store.Query{})
		require.NoError(t, err)
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
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.Empty(t, missing, "acknowledged deliveries missing on the replica")
	t.Logf("%d acknowledged deliveries over 3 kills, all on the replica", len(acked))
}
