package main

import (
	"context"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d--j/go-milter/mailfilter"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/dnstest"
)

// captureHop is a next hop that keeps the messages it is given.
type captureHop struct {
	mu     sync.Mutex
	bodies []string
}

func (c *captureHop) NewSession(*smtp.Conn) (smtp.Session, error) { return &captureSession{c: c}, nil }

type captureSession struct{ c *captureHop }

func (s *captureSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *captureSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *captureSession) Reset()                               {}
func (s *captureSession) Logout() error                        { return nil }
func (s *captureSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.c.bodies = append(s.c.bodies, string(b))
	return err
}

func (c *captureHop) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c.mu.Lock()
		got := append([]string(nil), c.bodies...)
		c.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the next hop got %d messages, want %d", len(got), n)
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
}

func startCaptureHop(t *testing.T) (string, *captureHop) {
	c := &captureHop{}
	srv := smtp.NewServer(c)
	srv.Domain = "next.test"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), c
}

// TestRelayAuthenticatesSenders runs the relay with -authserv-id against a
// DNS server on loopback and real swaks: the delivered message carries
// this pool's Authentication-Results (and no forged one), a null-MX sender
// is refused at MAIL FROM, and a DMARC p=reject forgery at DATA.
func TestRelayAuthenticatesSenders(t *testing.T) {
	d, err := dnstest.Start(
		`example.net. 60 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`_dmarc.example.net. 60 IN TXT "v=DMARC1; p=reject"`,
		`bank.example. 60 IN TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`_dmarc.bank.example. 60 IN TXT "v=DMARC1; p=reject"`,
		`null.example. 60 IN MX 0 .`,
	)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	next, hop := startCaptureHop(t)
	addr := startRelayWith(t, config{next: next, dir: t.TempDir(), auth: senderAuth{
		authservID: "mx.example.org", onReject: "reject", onQuarantine: "tag", resolver: d.Resolver()}})
	host, port, _ := net.SplitHostPort(addr)
	swaks := func(from, header string) (string, bool) {
		out, err := exec.Command("swaks", "--server", host, "--port", port, "--helo", "client.example.net",
			"--from", from, "--to", "alice@example.org", "--header", "From: "+header,
			"--add-header", "Authentication-Results: mx.example.org; spf=pass; dkim=pass header.d=bank.example; dmarc=pass",
			"--body", "auth test").CombinedOutput()
		return string(out), err == nil
	}

	out, ok := swaks("sender@example.net", "Sender <sender@example.net>")
	require.True(t, ok, out)
	got := hop.wait(t, 1)
	head, _, _ := strings.Cut(got[0], "\r\n\r\n")
	assert.Equal(t, 1, strings.Count(head, "Authentication-Results:"), "the forged one is gone: %s", head)
	assert.Contains(t, head, "Authentication-Results: mx.example.org;\r\n\tspf=pass smtp.helo=client.example.net smtp.mailfrom=sender@example.net;\r\n\tdkim=none;\r\n\tdmarc=pass header.from=example.net\r\n")

	out, ok = swaks("someone@null.example", "someone@null.example")
	assert.False(t, ok)
	assert.Contains(t, out, "<** 550 5.7.27 ")

	out, ok = swaks("sender@example.net", "Bank <service@bank.example>")
	assert.False(t, ok)
	assert.Contains(t, out, "<** 550 5.7.1 message refused: the DMARC policy of bank.example says reject")
	assert.Len(t, hop.wait(t, 1), 1, "nothing refused was delivered")
}

// TestRelayWithMilterAndAuthentication runs the relay with -milter (a
// milter on loopback that refuses a spam subject and marks the rest) and
// -authserv-id together: the milter's reply and header reach the client
// and the delivered message, after the relay's Authentication-Results.
func TestRelayWithMilterAndAuthentication(t *testing.T) {
	d, err := dnstest.Start(`example.net. 60 IN TXT "v=spf1 ip4:127.0.0.1 -all"`)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	f, err := mailfilter.New("tcp", "127.0.0.1:0", func(_ context.Context, trx mailfilter.Trx) (mailfilter.Decision, error) {
		if s, _ := trx.Headers().Subject(); s == "buy now" {
			return mailfilter.CustomErrorResponse(554, "5.7.1 spam, says the milter"), nil
		}
		if len(trx.Headers().Value("Authentication-Results")) == 0 {
			return mailfilter.TempFail, nil // the milter sees the relay's own header
		}
		trx.Headers().Add("X-Milter", "checked")
		return mailfilter.Accept, nil
	})
	require.NoError(t, err)
	t.Cleanup(f.Close)
	next, hop := startCaptureHop(t)
	addr := startRelayWith(t, config{next: next, dir: t.TempDir(), auth: senderAuth{milter: "inet:" + f.Addr().String(),
		authservID: "mx.example.org", onReject: "reject", onQuarantine: "tag", resolver: d.Resolver()}})
	host, port, _ := net.SplitHostPort(addr)
	swaks := func(subject string) (string, bool) {
		out, err := exec.Command("swaks", "--server", host, "--port", port, "--helo", "client.example.net",
			"--from", "sender@example.net", "--to", "alice@example.org", "--header", "Subject: "+subject,
			"--body", "milter test").CombinedOutput()
		return string(out), err == nil
	}
	out, ok := swaks("buy now")
	assert.False(t, ok)
	assert.Contains(t, out, "<** 550 5.7.1 spam, says the milter")
	out, ok = swaks("hello")
	require.True(t, ok, out)
	got := hop.wait(t, 1)
	head, _, _ := strings.Cut(got[0], "\r\n\r\n")
	assert.Contains(t, head, "\r\nAuthentication-Results: mx.example.org;\r\n\tspf=pass")
	assert.Contains(t, head, "\r\nX-Milter: checked")
	assert.Len(t, hop.wait(t, 1), 1)
}
