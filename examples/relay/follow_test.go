package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"
)

// lmtpNode is a mailbox server stand-in: an LMTP server that counts
// messages and a /status that says its role.
type lmtpNode struct {
	addr, web string
	got       atomic.Int64
	mu        sync.Mutex
	role      string
	epoch     int
	stop      func()
}

func (n *lmtpNode) set(role string, epoch int) {
	n.mu.Lock()
	n.role, n.epoch = role, epoch
	n.mu.Unlock()
}

type lmtpSession struct {
	n     *lmtpNode
	rcpts int
}

func (s *lmtpSession) Reset()                               {}
func (s *lmtpSession) Logout() error                        { return nil }
func (s *lmtpSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *lmtpSession) Rcpt(string, *smtp.RcptOptions) error { s.rcpts++; return nil }
func (s *lmtpSession) Data(r io.Reader) error               { io.Copy(io.Discard, r); s.n.got.Add(1); return nil }
func (s *lmtpSession) LMTPData(r io.Reader, st smtp.StatusCollector) error {
	io.Copy(io.Discard, r)
	s.n.got.Add(1)
	return nil
}

func startLMTPNode(t *testing.T, role string, epoch int) *lmtpNode {
	n := &lmtpNode{role: role, epoch: epoch}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) { return &lmtpSession{n: n}, nil }))
	srv.LMTP, srv.Domain = true, "node.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(ln)
	n.stop = func() { srv.Close() }
	t.Cleanup(n.stop)
	n.addr = ln.Addr().String()
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.role == "" {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, `{"role":%q,"epoch":%d}`, n.role, n.epoch)
	}))
	t.Cleanup(web.Close)
	n.web = web.URL
	return n
}

func waitGot(t *testing.T, n *lmtpNode, want int64) {
	deadline := time.Now().Add(30 * time.Second)
	for n.got.Load() < want {
		require.True(t, time.Now().Before(deadline), "node got %d messages, want %d", n.got.Load(), want)
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRelayFollowsThePrimary: the relay delivers over LMTP to whichever
// -mailserver is primary, keeps mail queued while none is, and follows a
// switchover without a restart.
func TestRelayFollowsThePrimary(t *testing.T) {
	a := startLMTPNode(t, "primary", 3)
	b := startLMTPNode(t, "secondary", 3)
	relay := startRelayWith(t, config{dir: t.TempDir(), retryMin: 100 * time.Millisecond, servers: []mailServer{
		{name: "a", lmtp: a.addr, status: a.web + "/status"}, {name: "b", lmtp: b.addr, status: b.web + "/status"},
	}})
	send := func(n int) {
		out, err := exec.Command("/usr/sbin/smtp-source", "-s", "2", "-m", fmt.Sprint(n), "-l", "512",
			"-f", "sender@example.net", "-t", "rcpt@example.com", relay).CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
	send(5)
	waitGot(t, a, 5)

	// The primary dies, nobody is primary yet: mail is accepted and kept
	// queued.
	a.set("", 0)
	a.stop()
	send(5)
	require.Equal(t, int64(5), a.got.Load())
	require.Zero(t, b.got.Load())

	// b is promoted: the queued mail and new mail go to b.
	b.set("primary", 4)
	waitGot(t, b, 5)
	send(3)
	waitGot(t, b, 8)
	require.Equal(t, int64(5), a.got.Load(), "nothing went to the old primary")
}
