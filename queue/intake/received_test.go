package intake_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
	"github.com/resilmail/resilmail/queue/intake"
)

// capture is an Enqueuer that keeps what it is given.
type capture struct {
	mu     sync.Mutex
	envs   []resilmail.Envelope
	bodies []string
}

func (c *capture) Enqueue(ctx context.Context, env resilmail.Envelope, body io.Reader) (string, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return env.ID, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.envs = append(c.envs, env)
	c.bodies = append(c.bodies, string(b))
	return env.ID, nil
}

func (c *capture) last() (resilmail.Envelope, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.envs) == 0 {
		return resilmail.Envelope{}, ""
	}
	return c.envs[len(c.envs)-1], c.bodies[len(c.bodies)-1]
}

func serveCapture(t *testing.T, be *intake.Backend, lo *intake.ListenerOptions) string {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	be.Logger = quiet
	srv := smtp.NewServer(be)
	srv.Domain = "mx.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	if lo == nil {
		lo = &intake.ListenerOptions{}
	}
	lo.Logger = quiet
	l := intake.NewListener(ln, lo)
	l.Configure(srv)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func swaksArgs(t *testing.T, addr string, args ...string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	out, _ := exec.Command("swaks", append([]string{"--server", host, "--port", port, "--helo", "client.example.net",
		"--from", "sender@example.net"}, args...)...).CombinedOutput()
	return string(out)
}

func TestReceivedHeaderCarriesTheQueueID(t *testing.T) {
	cap := &capture{}
	var client netip.Addr
	be := &intake.Backend{Queue: cap, Hostname: "mx1.example.org", Accept: func(ctx context.Context, rcpt string) error {
		cap.mu.Lock()
		client, _ = intake.ClientIP(ctx)
		cap.mu.Unlock()
		return nil
	}}
	cfg, _, _ := testCert(t)
	addr := serveCapture(t, be, &intake.ListenerOptions{TLSConfig: cfg})
	out := swaksArgs(t, addr, "--to", "rcpt@example.org")
	env, body := cap.last()
	require.NotEmpty(t, env.ID, out)
	assert.Contains(t, out, "queued as "+env.ID)
	assert.True(t, strings.HasPrefix(body, "Received: from client.example.net ([127.0.0.1])\r\n\tby mx1.example.org (resilmail) with ESMTP id "+env.ID+"\r\n\tfor <rcpt@example.org>; "), "%q", body)
	cap.mu.Lock()
	assert.Equal(t, "127.0.0.1", client.String(), "Accept learns the client's address")
	cap.mu.Unlock()

	out = swaksArgs(t, addr, "--to", "rcpt@example.org", "--tls")
	env, body = cap.last()
	assert.Contains(t, out, "queued as "+env.ID)
	assert.Contains(t, body, "with ESMTPS id "+env.ID)
}

func TestMailLoopIsRefused(t *testing.T) {
	cap := &capture{}
	addr := serveCapture(t, &intake.Backend{Queue: cap, Hostname: "mx.test", MaxHops: 5}, nil)
	hops := func(n int) string {
		return strings.Repeat("Received: from a by b; Mon, 7 Dec 2026 10:00:00 +0000\n", n)
	}
	out := swaksArgs(t, addr, "--to", "rcpt@example.org", "--add-header", strings.TrimSuffix(hops(6), "\n"))
	assert.Contains(t, out, "<** 554 5.4.6", "six hops are a loop at a limit of five")
	env, _ := cap.last()
	assert.Empty(t, env.ID)

	out = swaksArgs(t, addr, "--to", "rcpt@example.org", "--add-header", strings.TrimSuffix(hops(5), "\n"))
	assert.Regexp(t, `<-  250 2\.0\.0 OK: queued as`, out)
	// A "Received:" in the body is no hop.
	out = swaksArgs(t, addr, "--to", "rcpt@example.org", "--body", hops(20))
	assert.Regexp(t, `<-  250 2\.0\.0 OK: queued as`, out)
}

// admitting is an Enqueuer that is also an Admitter.
type admitting struct {
	capture
	mu   sync.Mutex
	err  error
	asks []int64
}

func (a *admitting) Admit(size int64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.asks = append(a.asks, size)
	return a.err
}

func TestAdmissionBeforeData(t *testing.T) {
	q := &admitting{err: queue.ErrFull}
	addr := serveCapture(t, &intake.Backend{Queue: q, Hostname: "mx.test"}, nil)
	out := swaksArgs(t, addr, "--to", "rcpt@example.org")
	assert.Contains(t, out, "<** 452 4.3.1", "a full queue refuses at MAIL FROM, before any data")
	assert.NotContains(t, out, "<-  354", "no DATA was started (a bare \"354\" also matches a port number in swaks' transcript)")

	q.mu.Lock()
	q.err = nil
	q.mu.Unlock()
	s := dial(t, addr)
	s.cmd("EHLO client.test")
	assert.Regexp(t, `^250 `, s.cmd("MAIL FROM:<a@example.net> SIZE=1234"))
	q.mu.Lock()
	q.err = queue.ErrFull
	q.mu.Unlock()
	assert.Regexp(t, `^452 4\.3\.1 `, s.cmd("RCPT TO:<b@example.org>"), "and at RCPT")
	q.mu.Lock()
	assert.Equal(t, []int64{0, 1234, 1234}, q.asks, "asked with the SIZE the client announced")
	q.mu.Unlock()
}
