package intake_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
	"github.com/resilmail/resilmail/queue/intake"
)

// serveWith runs a queue behind a go-smtp server on a Listener and returns
// its address and the queue.
func serveWith(t *testing.T, lo *intake.ListenerOptions, tune func(*smtp.Server)) (string, *queue.Queue) {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	q, err := queue.Open(t.TempDir(), resilmail.DelivererFunc(func(context.Context, resilmail.Envelope, io.Reader) error {
		return &resilmail.DeliveryError{Code: 451, Message: "not delivering in this test"}
	}), &queue.Options{Logger: quiet, MinFreeBytes: -1})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	srv := smtp.NewServer(&intake.Backend{Queue: q, Logger: quiet})
	srv.Domain = "mx.test"
	srv.MaxMessageBytes = 1 << 20
	srv.EnableDSN = true
	if tune != nil {
		tune(srv)
	}
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
	return ln.Addr().String(), q
}

// session is a raw SMTP client that shows every reply exactly.
type session struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *session {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	s := &session{t: t, c: c, r: bufio.NewReader(c)}
	assert.True(t, strings.HasPrefix(s.reply(), "220 "))
	return s
}

// reply reads one whole reply and returns its last line.
func (s *session) reply() string {
	s.t.Helper()
	s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return "closed: " + err.Error()
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n")
		}
	}
}

// lines reads one whole reply and returns all its lines.
func (s *session) lines() []string {
	s.t.Helper()
	var out []string
	for {
		line, err := s.r.ReadString('\n')
		require.NoError(s.t, err)
		out = append(out, strings.TrimRight(line, "\r\n"))
		if len(line) < 4 || line[3] != '-' {
			return out
		}
	}
}

func (s *session) send(lines ...string) {
	s.t.Helper()
	_, err := io.WriteString(s.c, strings.Join(lines, "\r\n")+"\r\n")
	require.NoError(s.t, err)
}

func (s *session) cmd(line string) string {
	s.t.Helper()
	s.send(line)
	return s.reply()
}

func TestExactAnswers(t *testing.T) {
	addr, _ := serveWith(t, &intake.ListenerOptions{SoftErrorLimit: 100}, nil)
	s := dial(t, addr)
	assert.Regexp(t, `^503 5\.5\.1 `, s.cmd("MAIL FROM:<a@example.net>"), "MAIL before EHLO")
	assert.Regexp(t, `^250 `, s.cmd("EHLO client.test"))
	assert.Regexp(t, `^503 5\.5\.1 `, s.cmd("RCPT TO:<b@example.org>"), "RCPT before MAIL")
	assert.Regexp(t, `^503 5\.5\.1 `, s.cmd("DATA"), "DATA before MAIL")
	assert.Regexp(t, `^500 5\.5\.2 `, s.cmd("FROBNICATE now"), "an unknown command")
	assert.Regexp(t, `^500 5\.5\.2 `, s.cmd("XY"), "a line that is no command")
	assert.Regexp(t, `^502 5\.5\.1 `, s.cmd("TURN"), "a known command not implemented")
	assert.Regexp(t, `^250 `, s.cmd("MAIL FROM:<a@example.net>"))
	assert.Regexp(t, `^503 5\.5\.1 `, s.cmd("DATA"), "DATA before RCPT")
	// Pipelined (RFC 2920): every reply pairs with its command.
	s.send("RSET", "RCPT TO:<b@example.org>", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "DATA")
	for _, want := range []string{`^250 `, `^503 5\.5\.1 `, `^250 `, `^250 `, `^354 `} {
		assert.Regexp(t, want, s.reply())
	}
	s.send("Subject: hi", "", ".", "QUIT")
	assert.Regexp(t, `^250 2\.0\.0 OK: queued as `, s.reply())
	assert.Regexp(t, `^221 `, s.reply())
}

func TestOversizeIsPermanentAndTheRealSizeIsStored(t *testing.T) {
	addr, q := serveWith(t, nil, func(srv *smtp.Server) { srv.MaxMessageBytes = 4096 })
	host, port, _ := net.SplitHostPort(addr)
	out, _ := exec.Command("swaks", "--server", host, "--port", port, "--from", "a@example.net", "--to", "b@example.org",
		"--body", strings.Repeat(strings.Repeat("x", 78)+"\n", 100)).CombinedOutput()
	assert.Contains(t, string(out), "<** 552 5.3.4", "too large is permanent: %s", out)
	assert.Empty(t, q.List(queue.Filter{}))

	// A client that announces less than it sends: the queue keeps what came.
	s := dial(t, addr)
	s.cmd("EHLO client.test")
	assert.Regexp(t, `^250 `, s.cmd("MAIL FROM:<a@example.net> SIZE=10"))
	assert.Regexp(t, `^250 `, s.cmd("RCPT TO:<b@example.org>"))
	assert.Regexp(t, `^354 `, s.cmd("DATA"))
	body := "Subject: size\r\n\r\n" + strings.Repeat("y", 1000) + "\r\n"
	assert.Regexp(t, `^250 `, s.cmd(body+"."))
	list := q.List(queue.Filter{})
	require.Len(t, list, 1)
	assert.Equal(t, list[0].Size, list[0].Envelope.Size, "the size stored is the size that arrived (with the Received header)")
	assert.Greater(t, list[0].Envelope.Size, int64(len(body)))
}

func TestTooManyRecipients(t *testing.T) {
	addr, _ := serveWith(t, nil, func(srv *smtp.Server) { srv.MaxRecipients = 2 })
	s := dial(t, addr)
	s.cmd("EHLO client.test")
	s.cmd("MAIL FROM:<a@example.net>")
	assert.Regexp(t, `^250 `, s.cmd("RCPT TO:<b1@example.org>"))
	assert.Regexp(t, `^250 `, s.cmd("RCPT TO:<b2@example.org>"))
	assert.Regexp(t, `^452 4\.5\.3 `, s.cmd("RCPT TO:<b3@example.org>"))
}

func TestTimeouts(t *testing.T) {
	addr, _ := serveWith(t, &intake.ListenerOptions{CommandTimeout: 100 * time.Millisecond, DataTimeout: 400 * time.Millisecond}, nil)
	s := dial(t, addr)
	start := time.Now()
	assert.Regexp(t, `^421 4\.4\.2 `, s.reply(), "an idle client is told and dropped")
	assert.GreaterOrEqual(t, time.Since(start), 90*time.Millisecond)

	s = dial(t, addr)
	s.cmd("EHLO client.test")
	s.cmd("MAIL FROM:<a@example.net>")
	s.cmd("RCPT TO:<b@example.org>")
	assert.Regexp(t, `^354 `, s.cmd("DATA"))
	// The data timeout is between bytes, not for the whole message.
	for i := 0; i < 5; i++ {
		s.send(fmt.Sprintf("line %d", i))
		time.Sleep(100 * time.Millisecond) // a slow client, under the data timeout
	}
	s.send(".")
	assert.Regexp(t, `^250 `, s.reply(), "a slow but steady client is not cut off")
	s.cmd("MAIL FROM:<a@example.net>")
	s.cmd("RCPT TO:<b@example.org>")
	s.cmd("DATA")
	s.send("half a message")
	assert.Regexp(t, `^421 4\.4\.2 `, s.reply(), "a client silent in DATA is dropped")
}

func TestErrorLimitWithGrowingDelay(t *testing.T) {
	addr, _ := serveWith(t, &intake.ListenerOptions{SoftErrorLimit: 1, ErrorDelay: 40 * time.Millisecond, HardErrorLimit: 4}, nil)
	s := dial(t, addr)
	var took []time.Duration
	for i := 0; i < 3; i++ {
		start := time.Now()
		assert.Regexp(t, `^500 `, s.cmd("BOGUS"))
		took = append(took, time.Since(start))
	}
	assert.GreaterOrEqual(t, took[1], 40*time.Millisecond)
	assert.GreaterOrEqual(t, took[2], 80*time.Millisecond, "the delay grows")
	s.send("BOGUS")
	assert.Regexp(t, `^500 `, s.reply())
	assert.Regexp(t, `^421 4\.7\.0 `, s.reply(), "past the hard limit the session ends")
	assert.Contains(t, s.reply(), "closed")
}

func TestConnectionsPerClient(t *testing.T) {
	addr, _ := serveWith(t, &intake.ListenerOptions{MaxConnsPerClient: 2}, nil)
	a, b := dial(t, addr), dial(t, addr)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	line, _ := bufio.NewReader(c).ReadString('\n')
	assert.Regexp(t, `^421 4\.7\.0 `, line)
	assert.Regexp(t, `^221 `, a.cmd("QUIT"))
	assert.Contains(t, a.reply(), "closed")
	// A slot is free again once a session ends.
	var s *session
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		r := bufio.NewReader(c)
		line, _ := r.ReadString('\n')
		if strings.HasPrefix(line, "220 ") {
			s = &session{t: t, c: c, r: r}
			t.Cleanup(func() { c.Close() })
			break
		}
		c.Close()
		require.True(t, time.Now().Before(deadline), "the slot was never freed")
	}
	assert.Regexp(t, `^250 `, s.cmd("EHLO client.test"))
	assert.Regexp(t, `^250 `, b.cmd("NOOP"))
}

// testCert writes a self-signed certificate for mx.test and returns the
// TLS config and the files.
func testCert(t *testing.T) (*tls.Config, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mx.test"}, DNSNames: []string{"mx.test"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kd, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(cf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600))
	cert, err := tls.LoadX509KeyPair(cf, kf)
	require.NoError(t, err)
	return &tls.Config{Certificates: []tls.Certificate{cert}}, cf, kf
}

func TestStartTLS(t *testing.T) {
	cfg, _, _ := testCert(t)
	addr, q := serveWith(t, &intake.ListenerOptions{TLSConfig: cfg}, nil)
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("swaks", "--server", host, "--port", port, "--tls", "--from", "a@example.net", "--to", "b@example.org").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "TLS started")
	assert.Regexp(t, `<~  250 2\.0\.0 OK: queued as`, string(out), "accepted inside TLS")
	assert.Len(t, q.List(queue.Filter{}), 1)

	// Inside TLS the answers stay exact, and STARTTLS is no longer offered.
	s := dial(t, addr)
	ehlo := strings.Join(func() []string { s.send("EHLO client.test"); return s.lines() }(), "\n")
	assert.Contains(t, ehlo, "STARTTLS")
	assert.Regexp(t, `^220 `, s.cmd("STARTTLS"))
	tc := tls.Client(s.c, &tls.Config{InsecureSkipVerify: true})
	require.NoError(t, tc.Handshake())
	s.c, s.r = tc, bufio.NewReader(tc)
	s.send("EHLO client.test")
	ehlo = strings.Join(s.lines(), "\n")
	assert.NotContains(t, ehlo, "STARTTLS")
	assert.Regexp(t, `^503 5\.5\.1 `, s.cmd("RCPT TO:<b@example.org>"))
	assert.Regexp(t, `^503 5\.5\.1 `, s.cmd("STARTTLS"), "no second STARTTLS")
}
