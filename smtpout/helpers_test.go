package smtpout_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/textproto"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/smtpout"
)

// A message is what a test server received.
type message struct {
	From     string
	MailOpts smtp.MailOptions
	To       []string
	RcptOpts []smtp.RcptOptions
	Body     string
	TLS      bool
}

// A backend is a go-smtp backend whose answers the test scripts. Nil
// functions accept.
type backend struct {
	mail func(from string, o *smtp.MailOptions) error
	rcpt func(to string, o *smtp.RcptOptions) error
	// dataStart runs before the message is read.
	dataStart func()
	// data runs once the whole message was read; c is the server side of
	// the connection.
	data func(c *smtp.Conn, m *message) error
	// lmtp sets a status per recipient over LMTP.
	lmtp func(m *message, status smtp.StatusCollector) error
	// auth checks PLAIN credentials; nil means AUTH is not offered.
	auth func(username, password string) error
	// discard keeps no message.
	discard bool

	mu       sync.Mutex
	msgs     []message
	helos    []string
	dataSeen int
	logouts  chan struct{}
}

func newBackend() *backend { return &backend{logouts: make(chan struct{}, 1000)} }

func (be *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	be.mu.Lock()
	be.helos = append(be.helos, c.Hostname())
	be.mu.Unlock()
	return &session{be: be, c: c}, nil
}

func (be *backend) messages() []message {
	be.mu.Lock()
	defer be.mu.Unlock()
	return append([]message(nil), be.msgs...)
}

func (be *backend) datas() int {
	be.mu.Lock()
	defer be.mu.Unlock()
	return be.dataSeen
}

// waitLogouts waits until n sessions have ended at the server.
func (be *backend) waitLogouts(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for range n {
		select {
		case <-be.logouts:
		case <-timeout:
			t.Fatalf("server sessions did not end")
		}
	}
}

type session struct {
	be  *backend
	c   *smtp.Conn
	msg message
}

func (s *session) Reset() { s.msg = message{} }
func (s *session) Logout() error {
	select {
	case s.be.logouts <- struct{}{}:
	default: // a benchmark does not count
	}
	return nil
}

func (s *session) Mail(from string, o *smtp.MailOptions) error {
	if s.be.mail != nil {
		if err := s.be.mail(from, o); err != nil {
			return err
		}
	}
	s.msg = message{From: from}
	if o != nil {
		s.msg.MailOpts = *o
	}
	return nil
}

func (s *session) Rcpt(to string, o *smtp.RcptOptions) error {
	if s.be.rcpt != nil {
		if err := s.be.rcpt(to, o); err != nil {
			return err
		}
	}
	s.msg.To = append(s.msg.To, to)
	if o != nil {
		s.msg.RcptOpts = append(s.msg.RcptOpts, *o)
	}
	return nil
}

func (s *session) read(r io.Reader) (*message, error) {
	if s.be.dataStart != nil {
		s.be.dataStart()
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	m := s.msg
	m.Body = string(b)
	_, m.TLS = s.c.TLSConnectionState()
	s.be.mu.Lock()
	s.be.dataSeen++
	s.be.mu.Unlock()
	return &m, nil
}

func (s *session) record(m *message) {
	if s.be.discard {
		return
	}
	s.be.mu.Lock()
	s.be.msgs = append(s.be.msgs, *m)
	s.be.mu.Unlock()
}

func (s *session) Data(r io.Reader) error {
	m, err := s.read(r)
	if err != nil {
		return err
	}
	if s.be.data != nil {
		if err := s.be.data(s.c, m); err != nil {
			return err
		}
	}
	s.record(m)
	return nil
}

func (s *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	m, err := s.read(r)
	if err != nil {
		return err
	}
	if s.be.lmtp != nil {
		return s.be.lmtp(m, status)
	}
	s.record(m)
	return nil
}

func (s *session) AuthMechanisms() []string {
	if s.be.auth == nil {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, username, password string) error {
		if err := s.be.auth(username, password); err != nil {
			return smtp.ErrAuthFailed
		}
		return nil
	}), nil
}

// A listener counts and keeps the connections it accepts.
type listener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *listener) accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// closeAll closes the server side of every connection accepted so far.
func (l *listener) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

type testServer struct {
	addr string
	be   *backend
	ln   *listener
}

// startServer serves be with go-smtp on 127.0.0.1:0. configure, if not nil,
// adjusts the server before it starts; wrap, if not nil, wraps the listener
// (for implicit TLS).
func startServer(t testing.TB, be *backend, configure func(*smtp.Server), wrap func(net.Listener) net.Listener) *testServer {
	t.Helper()
	s := smtp.NewServer(be)
	s.Domain = "mx.test"
	s.ErrorLog = log.New(io.Discard, "", 0)
	s.AllowInsecureAuth = true
	if configure != nil {
		configure(s)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := &listener{Listener: l}
	var served net.Listener = ln
	if wrap != nil {
		served = wrap(ln)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(served)
	}()
	t.Cleanup(func() {
		s.Close()
		l.Close() // in case Serve had not registered it yet
		<-done
	})
	return &testServer{addr: l.Addr().String(), be: be, ln: ln}
}

// rawScript drives a hand-written server for what go-smtp's server cannot
// do: a refusing greeting, no 8BITMIME, LMTP replies cut short.
type rawScript struct {
	tls       *tls.Config // serve implicit TLS
	greeting  string      // default "220 raw.test ESMTP"
	ehlo      []string    // extensions announced
	ehloReply string      // a refusal of EHLO, instead of the extensions
	// resetOnData resets the connection right after "354".
	resetOnData bool
	// afterDot answers the end of a message; false closes the connection.
	// Nil answers "250 2.0.0 ok".
	afterDot func(tp *textproto.Conn, rcpts []string) bool
}

func startRaw(t testing.TB, sc rawScript) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	if sc.tls != nil {
		l = tls.NewListener(l, sc.tls)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { serveRaw(c, sc) })
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}

func serveRaw(c net.Conn, sc rawScript) {
	defer c.Close()
	tp := textproto.NewConn(c)
	greeting := sc.greeting
	if greeting == "" {
		greeting = "220 raw.test ESMTP"
	}
	tp.PrintfLine("%s", greeting)
	var rcpts []string
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO", "LHLO":
			if sc.ehloReply != "" {
				tp.PrintfLine("%s", sc.ehloReply)
				continue
			}
			lines := append([]string{"raw.test"}, sc.ehlo...)
			for i, l := range lines {
				sep := "-"
				if i == len(lines)-1 {
					sep = " "
				}
				tp.PrintfLine("250%s%s", sep, l)
			}
		case "HELO":
			tp.PrintfLine("250 raw.test")
		case "MAIL":
			rcpts = nil
			tp.PrintfLine("250 2.1.0 ok")
		case "RCPT":
			if i, j := strings.Index(arg, "<"), strings.LastIndex(arg, ">"); 0 <= i && i < j {
				rcpts = append(rcpts, arg[i+1:j])
			}
			tp.PrintfLine("250 2.1.5 ok")
		case "DATA":
			tp.PrintfLine("354 go ahead")
			if sc.resetOnData {
				c.(*net.TCPConn).SetLinger(0)
				return
			}
			if _, err := tp.ReadDotBytes(); err != nil {
				return
			}
			if sc.afterDot == nil {
				tp.PrintfLine("250 2.0.0 ok")
			} else if !sc.afterDot(tp, rcpts) {
				return
			}
		case "RSET", "NOOP":
			tp.PrintfLine("250 2.0.0 ok")
		case "QUIT":
			tp.PrintfLine("221 2.0.0 bye")
			return
		default:
			tp.PrintfLine("502 5.5.1 not implemented")
		}
	}
}

// newCert returns a server TLS configuration with a self-signed
// certificate for 127.0.0.1 and localhost, and a pool that trusts it.
func newCert(t testing.TB) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mx.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost", "mx.test"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, pool
}

// newDeliverer returns a Deliverer closed at the end of the test, with
// short timeouts and a logger that writes to the test log.
func newDeliverer(t testing.TB, opts smtpout.Options) *smtpout.Deliverer {
	t.Helper()
	if opts.CommandTimeout == 0 {
		opts.CommandTimeout = 5 * time.Second
	}
	if opts.DialTimeout == 0 {
		opts.DialTimeout = 5 * time.Second
	}
	if opts.DataTimeout == 0 {
		opts.DataTimeout = 5 * time.Second
	}
	if opts.LocalName == "" {
		opts.LocalName = "client.test"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	d, err := smtpout.New(&opts)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

var msgSeq atomic.Int64

func envelope(rcpts ...string) resilmail.Envelope {
	env := resilmail.Envelope{
		ID:   fmt.Sprintf("msg-%d", msgSeq.Add(1)),
		From: "sender@example.net",
	}
	for _, r := range rcpts {
		env.To = append(env.To, resilmail.Recipient{Addr: r})
	}
	return env
}

const testBody = "From: sender@example.net\r\nTo: a@example.com\r\nSubject: test\r\n\r\nHello.\r\n"

func body() io.Reader { return strings.NewReader(testBody) }

// An outcome is what a test expects for one recipient.
type outcome struct {
	delivered bool
	permanent bool
	maybe     bool
	command   string
	code      int
	enhanced  string
}

var delivered = outcome{delivered: true}

// checkOutcomes decodes err as resilmail.Outcomes does and compares it
// with want, recipient by recipient.
func checkOutcomes(t *testing.T, env resilmail.Envelope, host string, err error, want map[string]outcome) {
	t.Helper()
	got := resilmail.Outcomes(env.Recipients(), err)
	require.Len(t, got, len(want), "err: %v", err)
	for rcpt, w := range want {
		de, ok := got[rcpt]
		require.True(t, ok, "no outcome for %s", rcpt)
		if w.delivered {
			assert.Nil(t, de, "%s should be delivered", rcpt)
			continue
		}
		if !assert.NotNil(t, de, "%s should have failed", rcpt) {
			continue
		}
		assert.Equal(t, w.permanent, de.Permanent, "%s permanent: %v", rcpt, de)
		assert.Equal(t, w.maybe, de.MaybeDelivered, "%s maybe delivered: %v", rcpt, de)
		// "A|B" accepts either command.
		assert.Contains(t, strings.Split(w.command, "|"), de.Command, "%s command: %v", rcpt, de)
		assert.Equal(t, w.code, de.Code, "%s code: %v", rcpt, de)
		if w.enhanced != "" {
			assert.Equal(t, w.enhanced, de.EnhancedCode, "%s enhanced code: %v", rcpt, de)
		}
		assert.Equal(t, host, de.Host, "%s host", rcpt)
	}
}

// deliveryErrors flattens the errors.Join tree of err.
func deliveryErrors(err error) []*resilmail.DeliveryError {
	var out []*resilmail.DeliveryError
	var walk func(error)
	walk = func(e error) {
		if de, ok := e.(*resilmail.DeliveryError); ok {
			out = append(out, de)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, s := range j.Unwrap() {
				walk(s)
			}
		}
	}
	walk(err)
	return out
}

// smtpoutGoroutines returns the stacks of goroutines running code of
// package smtpout.
func smtpoutGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("resilmail/smtpout.")) {
			out = append(out, string(g))
		}
	}
	return out
}

// requireNoLeak fails if goroutines of package smtpout outlive the grace
// of a few scheduler rounds: a goroutine that has finished its work may
// still be on its way out.
func requireNoLeak(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for len(smtpoutGoroutines()) > 0 && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	require.Empty(t, smtpoutGoroutines())
}

// blocker releases what waits on it at the end of the test.
func blocker(t testing.TB) chan struct{} {
	c := make(chan struct{})
	t.Cleanup(func() { close(c) })
	return c
}

func reply(code int, enh smtp.EnhancedCode, msg string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

func withTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
