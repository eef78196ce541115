package mxpool

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/mxpool/sts"
	"github.com/resilmail/resilmail/smtpout"
)

// mxServer is a go-smtp server on loopback standing in for one MX host.
type mxServer struct {
	addr string
	mu   sync.Mutex
	got  map[string][]string // recipient -> message ids (Subject lines)
	// rcpt, if set, answers RCPT TO for an address.
	rcpt func(addr string) error
	// mail, if set, answers MAIL FROM.
	mail func() error
	// hang, if set, makes the server never answer the final ".".
	hang chan struct{}
}

func (m *mxServer) delivered(rcpt string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.got[rcpt]...)
}

type mxSession struct {
	srv   *mxServer
	rcpts []string
}

func (s *mxSession) AuthPlain(string, string) error { return nil }
func (s *mxSession) Mail(string, *smtp.MailOptions) error {
	if s.srv.mail != nil {
		return s.srv.mail()
	}
	return nil
}
func (s *mxSession) Reset()        { s.rcpts = nil }
func (s *mxSession) Logout() error { return nil }
func (s *mxSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.srv.rcpt != nil {
		if err := s.srv.rcpt(to); err != nil {
			return err
		}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *mxSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if s.srv.hang != nil {
		<-s.srv.hang
		return errors.New("gave up")
	}
	id := strings.TrimSpace(strings.TrimPrefix(strings.SplitN(string(b), "\r\n", 2)[0], "Subject:"))
	s.srv.mu.Lock()
	for _, r := range s.rcpts {
		s.srv.got[r] = append(s.srv.got[r], id)
	}
	s.srv.mu.Unlock()
	return nil
}

func (s *mxSession) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	err := s.Data(r)
	for _, rc := range s.rcpts {
		status.SetStatus(rc, err)
	}
	return nil
}

func startMX(t *testing.T, lmtp bool, configure func(*mxServer)) *mxServer {
	t.Helper()
	m := &mxServer{got: map[string][]string{}}
	if configure != nil {
		configure(m)
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) { return &mxSession{srv: m}, nil }))
	srv.Domain = "mx.test"
	srv.LMTP = lmtp
	srv.AllowInsecureAuth = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	m.addr = ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() {
		if m.hang != nil {
			close(m.hang)
		}
		srv.Close()
	})
	return m
}

// refusing returns an address where nothing listens.
func refusing(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// busy421 is a server that greets with 421 and hangs up.
func busy421(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "421 4.3.2 mx.test too busy, try later\r\n")
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// deliverEnv is a test world: a zone, a dialler that maps the zone's
// addresses (port 25 or 24) to real loopback servers, and a Deliverer.
type deliverEnv struct {
	zone  *StaticResolver
	mu    sync.Mutex
	ports map[string]string // "127.0.0.2:25" -> real address
	dials map[string]*atomic.Int32
	d     *Deliverer
}

func newDeliverEnv(t *testing.T, popts *PlannerOptions, dopts *DelivererOptions) *deliverEnv {
	e := &deliverEnv{zone: &StaticResolver{}, ports: map[string]string{}, dials: map[string]*atomic.Int32{}}
	var po PlannerOptions
	if popts != nil {
		po = *popts
	}
	po.NoInterfaceAddrs = true // loopback addresses stand for remote hosts here
	p, err := NewPlanner(e.zone, &po)
	require.NoError(t, err)
	var o DelivererOptions
	if dopts != nil {
		o = *dopts
	}
	so := smtpout.Options{LocalName: "relay.test", DialTimeout: 2 * time.Second, CommandTimeout: 2 * time.Second, DataTimeout: 2 * time.Second}
	if o.SMTP != nil {
		so = *o.SMTP
	}
	so.Logger = discardLogger()
	so.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		e.mu.Lock()
		real, ok := e.ports[addr]
		c := e.dials[addr]
		e.mu.Unlock()
		if !ok {
			return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("no route to host")}
		}
		c.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, real)
	}
	o.SMTP = &so
	if o.Logger == nil {
		o.Logger = discardLogger()
	}
	e.d, err = NewDeliverer(p, &o)
	require.NoError(t, err)
	t.Cleanup(func() { e.d.Close() })
	return e
}

// host puts name at ip in the zone, served by the server at real.
func (e *deliverEnv) host(name, ip, port, real string) {
	e.zone.AddAddr(name, netip.MustParseAddr(ip))
	e.mu.Lock()
	e.ports[net.JoinHostPort(ip, port)] = real
	e.dials[net.JoinHostPort(ip, port)] = &atomic.Int32{}
	e.mu.Unlock()
}

func (e *deliverEnv) dialsTo(ip, port string) int32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dials[net.JoinHostPort(ip, port)].Load()
}

func testEnvelope(id string, rcpts ...string) resilmail.Envelope {
	env := resilmail.Envelope{ID: id, From: "sender@example.net"}
	for _, r := range rcpts {
		env.To = append(env.To, resilmail.Recipient{Addr: r})
	}
	return env
}

func testMessage(id string) io.Reader {
	return strings.NewReader("Subject: " + id + "\r\n\r\nhello\r\n")
}

func TestDelivererFallsBackToSecondaryMX(t *testing.T) {
	backup := startMX(t, false, nil)
	e := newDeliverEnv(t, nil, &DelivererOptions{Health: NewHealth(&HealthOptions{Failures: 2, MinBackoff: time.Hour, Logger: discardLogger()})})
	e.zone.AddMX("example.org", 10, "mx1.example.org")
	e.zone.AddMX("example.org", 20, "mx2.example.org")
	e.host("mx1.example.org", "127.0.0.2", "25", refusing(t))
	e.host("mx2.example.org", "127.0.0.3", "25", backup.addr)

	ctx := context.Background()
	for i, id := range []string{"m1", "m2", "m3", "m4"} {
		require.NoError(t, e.d.Deliver(ctx, testEnvelope(id, "u@example.org"), testMessage(id)), "message %d", i)
	}
	assert.Equal(t, []string{"m1", "m2", "m3", "m4"}, backup.delivered("u@example.org"), "every message reached the backup MX")
	assert.Equal(t, int32(2), e.dialsTo("127.0.0.2", "25"), "after two failures the dead MX is skipped without a connection")
	st := e.d.Health().Host("mx1.example.org 127.0.0.2:25")
	assert.Equal(t, CircuitOpen, st.State)
	assert.Contains(t, st.LastError, "connect")
	assert.Equal(t, CircuitClosed, e.d.Health().Host("mx2.example.org 127.0.0.3:25").State)
}

func TestDelivererSessionRefusalTriesNextHost(t *testing.T) {
	good := startMX(t, false, nil)
	e := newDeliverEnv(t, nil, nil)
	e.zone.AddMX("example.org", 10, "mx1.example.org")
	e.zone.AddMX("example.org", 20, "mx2.example.org")
	e.host("mx1.example.org", "127.0.0.2", "25", busy421(t))
	e.host("mx2.example.org", "127.0.0.3", "25", good.addr)
	require.NoError(t, e.d.Deliver(context.Background(), testEnvelope("m1", "u@example.org"), testMessage("m1")))
	assert.Equal(t, []string{"m1"}, good.delivered("u@example.org"), "421 greeting")

	// 421 in the middle of the session (RFC 5321 §3.8: the server is
	// closing the channel) counts against the host too.
	closing := startMX(t, false, func(m *mxServer) {
		m.mail = func() error {
			return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "shutting down"}
		}
	})
	e.zone.AddMX("example.net", 10, "mx1.example.net")
	e.zone.AddMX("example.net", 20, "mx2.example.net")
	e.host("mx1.example.net", "127.0.0.6", "25", closing.addr)
	e.host("mx2.example.net", "127.0.0.7", "25", good.addr)
	require.NoError(t, e.d.Deliver(context.Background(), testEnvelope("m2", "u@example.net"), testMessage("m2")))
	assert.Equal(t, []string{"m2"}, good.delivered("u@example.net"), "421 to MAIL FROM")
}

func TestDelivererRecipientRepliesAreFinal(t *testing.T) {
	primary := startMX(t, false, func(m *mxServer) {
		m.rcpt = func(addr string) error {
			switch addr {
			case "busy@example.org":
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "mailbox busy"}
			case "gone@example.org":
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		}
	})
	backup := startMX(t, false, nil)
	e := newDeliverEnv(t, nil, nil)
	e.zone.AddMX("example.org", 10, "mx1.example.org")
	e.zone.AddMX("example.org", 20, "mx2.example.org")
	e.host("mx1.example.org", "127.0.0.2", "25", primary.addr)
	e.host("mx2.example.org", "127.0.0.3", "25", backup.addr)

	env := testEnvelope("m1", "ok@example.org", "busy@example.org", "gone@example.org")
	err := e.d.Deliver(context.Background(), env, testMessage("m1"))
	out := resilmail.Outcomes(env.Recipients(), err)
	assert.Nil(t, out["ok@example.org"])
	require.NotNil(t, out["busy@example.org"])
	assert.False(t, out["busy@example.org"].Permanent)
	assert.Equal(t, 451, out["busy@example.org"].Code)
	require.NotNil(t, out["gone@example.org"])
	assert.True(t, out["gone@example.org"].Permanent)
	assert.Equal(t, []string{"m1"}, primary.delivered("ok@example.org"))
	assert.Zero(t, e.dialsTo("127.0.0.3", "25"), "a reply about a recipient is not shopped around to a worse MX")
}

func TestDelivererMaybeDeliveredIsNeverSentElsewhere(t *testing.T) {
	primary := startMX(t, false, func(m *mxServer) { m.hang = make(chan struct{}) })
	backup := startMX(t, false, nil)
	e := newDeliverEnv(t, nil, &DelivererOptions{SMTP: &smtpout.Options{LocalName: "relay.test", DataTimeout: 300 * time.Millisecond}})
	e.zone.AddMX("example.org", 10, "mx1.example.org")
	e.zone.AddMX("example.org", 20, "mx2.example.org")
	e.host("mx1.example.org", "127.0.0.2", "25", primary.addr)
	e.host("mx2.example.org", "127.0.0.3", "25", backup.addr)

	env := testEnvelope("m1", "u@example.org")
	err := e.d.Deliver(context.Background(), env, testMessage("m1"))
	out := resilmail.Outcomes(env.Recipients(), err)
	require.NotNil(t, out["u@example.org"])
	assert.True(t, out["u@example.org"].MaybeDelivered)
	assert.Zero(t, e.dialsTo("127.0.0.3", "25"), "a message that may have arrived is not sent to a second host")
	assert.Empty(t, backup.delivered("u@example.org"))
}

func TestDelivererPlansEachDomain(t *testing.T) {
	orgMX := startMX(t, false, nil)
	comMX := startMX(t, false, nil)
	e := newDeliverEnv(t, nil, nil)
	e.zone.AddMX("example.org", 10, "mx.example.org")
	e.host("mx.example.org", "127.0.0.2", "25", orgMX.addr)
	e.host("example.com", "127.0.0.3", "25", comMX.addr) // implicit MX
	e.zone.AddMX("nullmx.example", 0, ".")

	env := testEnvelope("m1", "a@example.org", "b@EXAMPLE.com", "c@nowhere.example", "d@nullmx.example", "e@example.org")
	err := e.d.Deliver(context.Background(), env, testMessage("m1"))
	out := resilmail.Outcomes(env.Recipients(), err)
	assert.Nil(t, out["a@example.org"])
	assert.Nil(t, out["e@example.org"])
	assert.Nil(t, out["b@EXAMPLE.com"])
	require.NotNil(t, out["c@nowhere.example"])
	assert.True(t, out["c@nowhere.example"].Permanent, "no such domain")
	assert.Equal(t, "5.1.2", out["c@nowhere.example"].EnhancedCode)
	require.NotNil(t, out["d@nullmx.example"])
	assert.Equal(t, "5.1.10", out["d@nullmx.example"].EnhancedCode)
	assert.Equal(t, []string{"m1"}, orgMX.delivered("a@example.org"))
	assert.Equal(t, []string{"m1"}, orgMX.delivered("e@example.org"))
	assert.Equal(t, []string{"m1"}, comMX.delivered("b@EXAMPLE.com"))
}

func TestDelivererRouteOverLMTP(t *testing.T) {
	store := startMX(t, true, func(m *mxServer) {
		m.rcpt = func(addr string) error {
			if addr == "nobody@pool.example" {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such mailbox"}
			}
			return nil
		}
	})
	e := newDeliverEnv(t, &PlannerOptions{Routes: []Route{{Domain: "pool.example", Host: "store.internal", LMTP: true}}}, nil)
	e.host("store.internal", "127.0.0.4", "24", store.addr)
	env := testEnvelope("m1", "alice@pool.example", "nobody@pool.example")
	err := e.d.Deliver(context.Background(), env, testMessage("m1"))
	out := resilmail.Outcomes(env.Recipients(), err)
	assert.Nil(t, out["alice@pool.example"])
	require.NotNil(t, out["nobody@pool.example"])
	assert.True(t, out["nobody@pool.example"].Permanent)
	assert.Equal(t, []string{"m1"}, store.delivered("alice@pool.example"))
}

func TestDelivererRequiredTLSNeverFallsBackToPlainText(t *testing.T) {
	plain := startMX(t, false, nil) // offers no STARTTLS
	pol, err := sts.NewTLSPolicy(nil, &sts.TLSPolicyOptions{Required: []string{"secure.example"}, Logger: discardLogger()})
	require.NoError(t, err)
	e := newDeliverEnv(t, nil, &DelivererOptions{TLS: pol})
	e.zone.AddMX("secure.example", 10, "mx.secure.example")
	e.host("mx.secure.example", "127.0.0.2", "25", plain.addr)
	env := testEnvelope("m1", "u@secure.example")
	err = e.d.Deliver(context.Background(), env, testMessage("m1"))
	out := resilmail.Outcomes(env.Recipients(), err)
	require.NotNil(t, out["u@secure.example"])
	assert.False(t, out["u@secure.example"].Permanent, "waits for TLS rather than bouncing")
	assert.Contains(t, out["u@secure.example"].Error(), "STARTTLS")
	assert.Empty(t, plain.delivered("u@secure.example"), "never sent in plain text")
}

func TestDelivererFallbackRelay(t *testing.T) {
	relay := startMX(t, false, nil)
	e := newDeliverEnv(t, &PlannerOptions{FallbackRelay: []string{"relay.isp.example"}}, nil)
	e.zone.AddMX("example.org", 10, "mx1.example.org")
	e.host("mx1.example.org", "127.0.0.2", "25", refusing(t))
	e.host("relay.isp.example", "127.0.0.5", "25", relay.addr)
	require.NoError(t, e.d.Deliver(context.Background(), testEnvelope("m1", "u@example.org"), testMessage("m1")))
	assert.Equal(t, []string{"m1"}, relay.delivered("u@example.org"))
}

func TestDelivererFallbackRelayInheritsRequiredTLS(t *testing.T) {
	// An attacker strips STARTTLS from the domain's MX (here: it never
	// offered it). The fallback relay offers none either: a domain whose
	// mail must travel over verified TLS never goes to it in clear, while
	// other domains still use it.
	relay := startMX(t, false, nil) // offers no STARTTLS
	stripped := startMX(t, false, nil)
	pol, err := sts.NewTLSPolicy(nil, &sts.TLSPolicyOptions{Required: []string{"secure.example"}, Logger: discardLogger()})
	require.NoError(t, err)
	e := newDeliverEnv(t, &PlannerOptions{FallbackRelay: []string{"relay.isp.example"}}, &DelivererOptions{TLS: pol})
	e.zone.AddMX("secure.example", 10, "mx.secure.example")
	e.zone.AddMX("example.org", 10, "mx.example.org")
	e.host("mx.secure.example", "127.0.0.2", "25", stripped.addr)
	e.host("mx.example.org", "127.0.0.3", "25", refusing(t))
	e.host("relay.isp.example", "127.0.0.5", "25", relay.addr)

	env := testEnvelope("m1", "u@secure.example")
	err = e.d.Deliver(context.Background(), env, testMessage("m1"))
	out := resilmail.Outcomes(env.Recipients(), err)
	require.NotNil(t, out["u@secure.example"])
	assert.False(t, out["u@secure.example"].Permanent, "waits for TLS rather than bouncing")
	assert.Empty(t, stripped.delivered("u@secure.example"), "never sent in clear to the MX")
	assert.Empty(t, relay.delivered("u@secure.example"), "nor to the fallback relay")
	assert.Positive(t, e.dialsTo("127.0.0.5", "25"), "the relay was tried, with TLS required")

	require.NoError(t, e.d.Deliver(context.Background(), testEnvelope("m2", "u@example.org"), testMessage("m2")))
	assert.Equal(t, []string{"m2"}, relay.delivered("u@example.org"), "opportunistic domains still use the relay")
}

func TestDelivererAllHostsDown(t *testing.T) {
	e := newDeliverEnv(t, nil, nil)
	e.zone.AddMX("example.org", 10, "mx1.example.org")
	e.zone.AddMX("example.org", 20, "mx2.example.org")
	e.host("mx1.example.org", "127.0.0.2", "25", refusing(t))
	e.host("mx2.example.org", "127.0.0.3", "25", refusing(t))
	env := testEnvelope("m1", "u@example.org")
	err := e.d.Deliver(context.Background(), env, testMessage("m1"))
	out := resilmail.Outcomes(env.Recipients(), err)
	require.NotNil(t, out["u@example.org"])
	assert.False(t, out["u@example.org"].Permanent, "a dead MX is a reason to wait, not to bounce")
	assert.Contains(t, out["u@example.org"].Message, "mx1.example.org")
	assert.Contains(t, out["u@example.org"].Message, "mx2.example.org")
}
