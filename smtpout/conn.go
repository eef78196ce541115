package smtpout

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
)

// A conn is one SMTP or LMTP session with a next hop. It is owned by one
// delivery at a time, or idle in the pool (then only its timer field is
// touched, under Deliverer.mu).
type conn struct {
	key        string  // pool key: see Target.key
	host       string  // host part of the address, for DeliveryError.Host
	mode       TLSMode // the session's TLS mode
	serverName string  // name the server's certificate is checked against
	verify     bool    // see Target.Verify

	raw  net.Conn      // the TCP connection; closing it interrupts any I/O
	wire *wire         // raw, watched
	top  net.Conn      // what the session speaks over: wire, or TLS over it
	br   *bufio.Reader // reads top; every read goes through it, the client's too
	tr   *textproto.Reader
	c    *smtp.Client // says EHLO, AUTH and QUIT; reads through br
	tls  bool
	ext  extensions // what the last EHLO (LHLO) offered

	msgs int // transactions started on this connection

	unguard func() bool // see guard
	timer   *time.Timer // idle expiry, guarded by Deliverer.mu
}

// extensions is what the server offered, as far as the transaction cares.
type extensions struct {
	pipelining bool // PIPELINING (RFC 2920)
	eightBit   bool // 8BITMIME
	smtpUTF8   bool // SMTPUTF8
	dsn        bool // DSN
	size       bool // SIZE, with or without a limit
	sizeLimit  int  // SIZE's limit; 0 if none
}

// A wire is the raw connection, watching the final flush of a message:
// between watch and the next read, a failed write means that the final "."
// did not leave, so no server can have the whole message. (A read may
// write too, a TLS KeyUpdate; such a failure does not count.)
type wire struct {
	net.Conn
	watching bool
	lost     bool
}

func (w *wire) watch() { w.watching, w.lost = true, false }

func (w *wire) Read(p []byte) (int, error) {
	w.watching = false
	return w.Conn.Read(p)
}

func (w *wire) Write(p []byte) (int, error) {
	n, err := w.Conn.Write(p)
	if err != nil && w.watching {
		w.lost = true
	}
	return n, err
}

// greeted is a connection whose first line reads as a 220 greeting, for a
// go-smtp client that must not read one: the greeting was read here (to
// tell a refusing greeting from a refused EHLO), or the session has none
// because STARTTLS upgraded it (RFC 3207 §4.2).
type greeted struct {
	net.Conn
	r io.Reader
}

func (g *greeted) Read(p []byte) (int, error) { return g.r.Read(p) }

func newGreeted(c net.Conn, r io.Reader) *greeted {
	return &greeted{Conn: c, r: io.MultiReader(strings.NewReader("220 greeted\r\n"), r)}
}

// guard makes the cancellation of ctx close the connection, which
// interrupts whatever I/O is in flight: go-smtp's client takes no context.
// unguard undoes it and reports whether the connection is still open; once
// it returns, the closing (if any) is over.
func (cn *conn) guard(ctx context.Context) {
	done := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		cn.raw.Close()
		close(done)
	})
	cn.unguard = func() bool {
		if stop() {
			return true
		}
		<-done
		return false
	}
}

// arm sets the client's timeouts for the next command, capped by the
// deadline of ctx.
func (d *Deliverer) arm(ctx context.Context, cn *conn) {
	cn.c.CommandTimeout = capTimeout(ctx, d.opts.CommandTimeout)
	cn.c.SubmissionTimeout = capTimeout(ctx, d.opts.DataTimeout)
}

func capTimeout(ctx context.Context, t time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return time.Nanosecond
		}
		if left < t {
			return left
		}
	}
	return t
}

// close drops the connection without QUIT. The TCP connection is closed
// first, so that TLS does not wait to send its close_notify.
func (cn *conn) close() {
	cn.raw.Close()
	if cn.c != nil {
		cn.c.Close()
	}
}

// quit ends the session politely, waiting a short time for the reply.
func (d *Deliverer) quit(cn *conn) {
	cn.c.CommandTimeout = min(d.opts.CommandTimeout, maxQuitTimeout)
	if err := cn.c.Quit(); err != nil {
		d.log.Debug("smtpout: QUIT failed", "host", cn.host, "err", err)
	}
	cn.close()
}

func (d *Deliverer) newClient(c net.Conn) *smtp.Client {
	if d.opts.LMTP {
		return smtp.NewClientLMTP(c)
	}
	return smtp.NewClient(c)
}

// errTLSFallback is returned by open when an opportunistic TLS handshake
// failed: the caller retries in plain text on a new connection.
var errTLSFallback = errors.New("smtpout: TLS handshake failed")

// dialSession opens a ready session: connected, greeted, EHLO said, TLS
// as the mode wants, authenticated if configured, guarded by ctx.
func (d *Deliverer) dialSession(ctx context.Context, t *Target, host string) (*conn, error) {
	cn, err := d.open(ctx, t, host, t.TLS != TLSNone)
	var de *resilmail.DeliveryError
	if errors.As(err, &de) && errors.Is(de.Err, errTLSFallback) {
		d.log.Warn("smtpout: TLS handshake failed, retrying in plain text", "host", host, "err", de.Message)
		cn, err = d.open(ctx, t, host, false)
	}
	return cn, err
}

func (d *Deliverer) open(ctx context.Context, t *Target, host string, tryTLS bool) (_ *conn, err error) {
	dctx, cancel := context.WithTimeout(ctx, d.opts.DialTimeout)
	raw, err := d.opts.Dial(dctx, "tcp", t.Addr)
	cancel()
	if err != nil {
		return nil, failure(ctx, host, cmdConnect, err)
	}
	cn := &conn{key: t.key(), host: host, mode: t.TLS, serverName: t.serverName(host), verify: t.Verify, raw: raw, wire: &wire{Conn: raw}}
	cn.top = cn.wire
	cn.guard(ctx)
	defer func() {
		if err != nil {
			cn.unguard()
			cn.close()
		}
	}()

	if cn.mode == TLSImplicit {
		tc := tls.Client(cn.wire, d.opts.tlsConfig(cn.mode, cn.serverName, cn.verify))
		hctx, cancel := context.WithTimeout(ctx, d.opts.DialTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			return nil, failure(ctx, host, cmdConnect, err)
		}
		cn.top, cn.tls = tc, true
	}
	if err := d.greeting(ctx, cn); err != nil {
		return nil, err
	}
	if err := d.hello(ctx, cn); err != nil {
		return nil, err
	}
	if tryTLS && cn.mode != TLSImplicit {
		if err := d.startTLS(ctx, cn); err != nil {
			return nil, err
		}
	}
	if d.opts.Auth != nil {
		if err := d.auth(ctx, cn); err != nil {
			return nil, err
		}
	}
	d.log.Debug("smtpout: connected", "host", host, "addr", t.Addr, "tls", cn.tls)
	return cn, nil
}

// greeting reads the server's greeting (RFC 5321 §4.3.1) and starts the
// client. A server that refuses to talk (554) is treated as unavailable,
// not as a verdict on the message, like Postfix's smtp_skip_5xx_greeting.
func (d *Deliverer) greeting(ctx context.Context, cn *conn) error {
	cn.top.SetReadDeadline(time.Now().Add(capTimeout(ctx, d.opts.CommandTimeout)))
	cn.setReader(cn.top)
	code, msg, err := cn.tr.ReadResponse(220)
	cn.top.SetReadDeadline(time.Time{})
	if err != nil {
		var te *textproto.Error
		if errors.As(err, &te) {
			err = parseReply(code, msg)
		}
		de := failure(ctx, cn.host, cmdGreeting, err)
		de.Permanent = false
		return de
	}
	cn.c = d.newClient(newGreeted(cn.top, cn.br))
	return nil
}

// setReader makes r, through a new buffer, what every reply is read from:
// smtpout's own reads and, behind it, go-smtp's client's. One buffer for
// both means that no reply can be left in a buffer the other does not see.
func (cn *conn) setReader(r io.Reader) {
	cn.br = bufio.NewReader(&lineLimitReader{r: r})
	cn.tr = textproto.NewReader(cn.br)
}

// maxLine bounds the length of a reply line, twice RFC 5321's 512
// (§4.5.3.1.5) as go-smtp's client does, so that a server cannot make a
// reply grow without end.
const maxLine = 2000

var errLineTooLong = errors.New("smtpout: reply line too long")

// lineLimitReader fails once a line, from one newline to the next, has
// grown past maxLine bytes across reads. (A line within one read is bounded
// by the read buffer.)
type lineLimitReader struct {
	r   io.Reader
	cur int // bytes since the last newline
}

func (l *lineLimitReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if i := bytes.LastIndexByte(p[:n], '\n'); i >= 0 {
		l.cur = n - i - 1
	} else {
		l.cur += n
	}
	if l.cur > maxLine && err == nil {
		err = errLineTooLong
	}
	return n, err
}

// hello says EHLO (or LHLO).
func (d *Deliverer) hello(ctx context.Context, cn *conn) error {
	d.arm(ctx, cn)
	err := cn.c.Hello(d.opts.LocalName)
	if err == nil {
		cn.ext = extensions{}
		cn.ext.pipelining, _ = cn.c.Extension("PIPELINING")
		cn.ext.eightBit, _ = cn.c.Extension("8BITMIME")
		cn.ext.smtpUTF8, _ = cn.c.Extension("SMTPUTF8")
		cn.ext.dsn, _ = cn.c.Extension("DSN")
		cn.ext.size, _ = cn.c.Extension("SIZE")
		cn.ext.sizeLimit, _ = cn.c.MaxMessageSize()
		return nil
	}
	cmd := "EHLO"
	if d.opts.LMTP {
		cmd = "LHLO"
	}
	return failure(ctx, cn.host, cmd, err)
}

// startTLS upgrades the session with STARTTLS (RFC 3207) if the server
// offers it and the mode wants it.
//
// go-smtp exports STARTTLS only as NewClientStartTLS, which says EHLO as
// "localhost" before TLS. Instead, the session starts with go-smtp's client
// (EHLO with LocalName, extensions), this sends STARTTLS and reads its reply
// on the connection itself (nothing else is in flight), runs the handshake,
// and a new client continues over TLS behind a synthetic greeting. Plain
// text the server may have sent after its 220 is discarded (RFC 3207 §6).
// A server without STARTTLS costs nothing extra.
func (d *Deliverer) startTLS(ctx context.Context, cn *conn) error {
	required := cn.mode == TLSRequired
	if ok, _ := cn.c.Extension("STARTTLS"); !ok {
		if required {
			return &resilmail.DeliveryError{Host: cn.host, Command: cmdSTARTTLS,
				Message: "TLS is required and the server does not offer STARTTLS"}
		}
		return nil
	}

	cn.top.SetDeadline(time.Now().Add(capTimeout(ctx, d.opts.CommandTimeout)))
	_, err := io.WriteString(cn.top, "STARTTLS\r\n")
	if err == nil {
		var code int
		var msg string
		code, msg, err = cn.tr.ReadResponse(220)
		var te *textproto.Error
		if errors.As(err, &te) {
			// Refused. The session is as it was before STARTTLS (RFC 3207
			// §4): opportunistic goes on in plain text.
			se := parseReply(code, msg)
			if required {
				de := failure(ctx, cn.host, cmdSTARTTLS, se)
				de.Permanent = false
				return de
			}
			cn.top.SetDeadline(time.Time{})
			d.log.Info("smtpout: STARTTLS refused, going on in plain text", "host", cn.host, "err", se)
			return nil
		}
	}
	if err != nil {
		return failure(ctx, cn.host, cmdSTARTTLS, err)
	}

	tc := tls.Client(cn.wire, d.opts.tlsConfig(cn.mode, cn.serverName, cn.verify))
	if err := tc.HandshakeContext(ctx); err != nil {
		if !required && doneCause(ctx) == nil {
			return &resilmail.DeliveryError{Host: cn.host, Command: cmdSTARTTLS,
				Message: err.Error(), Err: errors.Join(errTLSFallback, err)}
		}
		return failure(ctx, cn.host, cmdSTARTTLS, err)
	}
	tc.SetDeadline(time.Time{})
	cn.top, cn.tls = tc, true
	cn.setReader(tc)
	cn.c = d.newClient(newGreeted(tc, cn.br))
	return d.hello(ctx, cn)
}

// parseReply makes an SMTPError of a reply read outside go-smtp, with its
// enhanced status code (RFC 2034) if the text starts with one, removed from
// every line as go-smtp's client does.
func parseReply(code int, msg string) *smtp.SMTPError {
	se := &smtp.SMTPError{Code: code, Message: msg}
	enh, rest, ok := strings.Cut(msg, " ")
	if !ok {
		return se
	}
	parts := strings.Split(enh, ".")
	if len(parts) != 3 {
		return se
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 {
			return se
		}
		ec[i] = n
	}
	se.EnhancedCode, se.Message = ec, strings.ReplaceAll(rest, "\n"+enh+" ", "\n")
	return se
}

// auth authenticates with the SASL client Options.Auth gives. Every failure
// is temporary, like Postfix's smtp_sasl_auth_soft_bounce: a refused
// password is the sender's configuration to fix, not a reason to bounce.
func (d *Deliverer) auth(ctx context.Context, cn *conn) error {
	sc, err := d.opts.Auth(cn.host)
	if err != nil {
		return &resilmail.DeliveryError{Host: cn.host, Command: cmdAuth, Message: err.Error(), Err: err}
	}
	if sc == nil {
		return nil
	}
	if !cn.tls && !isLoopback(cn.host) {
		return &resilmail.DeliveryError{Host: cn.host, Command: cmdAuth,
			Message: "refusing to send credentials without TLS"}
	}
	if ok, _ := cn.c.Extension("AUTH"); !ok {
		return &resilmail.DeliveryError{Host: cn.host, Command: cmdAuth,
			Message: "the server does not offer AUTH"}
	}
	d.arm(ctx, cn)
	if err := cn.c.Auth(sc); err != nil {
		de := failure(ctx, cn.host, cmdAuth, err)
		de.Permanent = false
		return de
	}
	return nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
