package intake

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// ListenerOptions configure a [Listener]. Zero fields give the defaults
// named on each (RFC 5321 section 4.5.3.2 and Postfix's smtpd).
type ListenerOptions struct {
	// TLSConfig, when set, offers STARTTLS (RFC 3207).
	TLSConfig *tls.Config
	// CommandTimeout is how long the client may take to send a command;
	// zero means 5 minutes (RFC 5321 section 4.5.3.2.7).
	CommandTimeout time.Duration
	// DataTimeout is how long the client may go without sending any byte
	// of a message; zero means 3 minutes (RFC 5321 section 4.5.3.2.5).
	DataTimeout time.Duration
	// SoftErrorLimit is the number of error replies (4xx and 5xx) in one
	// session after which every further error reply is delayed; zero
	// means 3. ErrorDelay is the first delay, growing by as much with each
	// error; zero means 1 s. HardErrorLimit closes the session with 421
	// after that many errors; zero means 20 (Postfix's
	// smtpd_hard_error_limit).
	SoftErrorLimit int
	ErrorDelay     time.Duration
	HardErrorLimit int
	// MaxConnsPerClient limits the sessions open at once from one IP
	// address; more get 421 4.7.0 and are closed. Zero means 50 (Postfix's
	// smtpd_client_connection_count_limit); negative means no limit.
	MaxConnsPerClient int
	// Logger receives a line per refused connection and per session
	// closed for errors or timeouts; nil means slog.Default().
	Logger *slog.Logger
}

// A Listener wraps the net.Listener a go-smtp Server serves on, and
// corrects what go-smtp v0.25 answers on its own: a command out of
// sequence gets 503 5.5.1 (not 502), a line it cannot parse gets 500 5.5.2
// (not 501). It times out an idle client with 421 4.4.2 (a command timeout
// between commands, a data timeout between bytes of a message), delays
// every error reply past a soft limit by a growing delay and closes the
// session past a hard limit, and limits the sessions of one client.
//
// With TLSConfig it terminates STARTTLS itself, so that these corrections
// hold inside TLS too; the session's [Conn.TLS] tells whether it runs over
// TLS. Call [Listener.Configure] on the go-smtp Server.
type Listener struct {
	net.Listener
	opts ListenerOptions
	log  *slog.Logger

	mu      sync.Mutex
	clients map[string]int
}

// NewListener wraps l.
func NewListener(l net.Listener, opts *ListenerOptions) *Listener {
	var o ListenerOptions
	if opts != nil {
		o = *opts
	}
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = 5 * time.Minute
	}
	if o.DataTimeout <= 0 {
		o.DataTimeout = 3 * time.Minute
	}
	if o.SoftErrorLimit <= 0 {
		o.SoftErrorLimit = 3
	}
	if o.ErrorDelay <= 0 {
		o.ErrorDelay = time.Second
	}
	if o.HardErrorLimit <= 0 {
		o.HardErrorLimit = 20
	}
	if o.MaxConnsPerClient == 0 {
		o.MaxConnsPerClient = 50
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Listener{Listener: l, opts: o, log: o.Logger, clients: map[string]int{}}
}

// Configure sets what srv needs to serve through l: go-smtp's own read
// timeout off (l times out instead), and, when l offers STARTTLS, a
// TLSConfig so that go-smtp advertises it (l answers the command).
func (l *Listener) Configure(srv *smtp.Server) {
	srv.ReadTimeout = 0
	srv.TLSConfig = l.opts.TLSConfig
}

// Accept waits for the next session within the per-client limit.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		l.mu.Lock()
		n := l.clients[host]
		over := l.opts.MaxConnsPerClient > 0 && n >= l.opts.MaxConnsPerClient
		if !over {
			l.clients[host] = n + 1
		}
		l.mu.Unlock()
		if over {
			l.log.Warn("smtp: too many sessions from one client; refused", "remote", c.RemoteAddr().String(), "sessions", n)
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "421 4.7.0 Too many connections from your address, try again later\r\n")
			c.Close()
			continue
		}
		return newConn(l, c, host), nil
	}
}

func (l *Listener) release(host string) {
	l.mu.Lock()
	if l.clients[host]--; l.clients[host] <= 0 {
		delete(l.clients, host)
	}
	l.mu.Unlock()
}

// Conn is a session accepted by a [Listener]; go-smtp's Conn.Conn returns
// it.
type Conn struct {
	net.Conn // the current transport: the TCP connection, or TLS over it
	l        *Listener
	raw      net.Conn
	host     string
	r        *bufio.Reader
	tls      bool

	in      []byte   // bytes read for go-smtp, not yet returned
	pending []string // commands go-smtp has read and not yet answered
	data    bool     // between DATA's 354 and the final dot
	midLine bool     // during DATA: the last bytes passed on did not end a line
	bdat    int64    // BDAT bytes still to pass through
	out     []byte   // a reply line being written
	wbuf    []byte   // reply lines to send at the end of this Write
	line    int      // lines of the current reply written
	errors  int
	err     error // a read error that ended a body read by a bodyReader: every later Read returns it
	closed  sync.Once
}

// internalRSET is the command the Conn sends go-smtp after STARTTLS, so
// that it forgets the session as RFC 3207 requires; its reply is dropped.
const internalRSET = "\x00RSET"

func newConn(l *Listener, c net.Conn, host string) *Conn {
	return &Conn{Conn: c, l: l, raw: c, host: host, r: bufio.NewReaderSize(c, 4096)}
}

// TLS returns the session's TLS state once STARTTLS succeeded.
func (c *Conn) TLS() (tls.ConnectionState, bool) {
	if tc, ok := c.Conn.(*tls.Conn); ok {
		return tc.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}

// NetConn returns the session's current transport: the *tls.Conn once
// STARTTLS succeeded, the accepted connection before.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// Close closes the session.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() { c.l.release(c.host) })
	return err
}

// Read gives go-smtp the client's bytes: one command line per call between
// commands (so replies pair with commands even when the client pipelines),
// the message as it comes during DATA and BDAT.
func (c *Conn) Read(p []byte) (int, error) {
	for len(c.in) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *Conn) fill() error {
	switch {
	case c.bdat > 0:
		c.raw.SetReadDeadline(time.Now().Add(c.l.opts.DataTimeout))
		n := int(min(c.bdat, 32<<10))
		buf := make([]byte, n)
		n, err := c.r.Read(buf)
		c.bdat -= int64(n)
		c.in = buf[:n]
		return c.timeout(err)
	case c.data:
		return c.fillData()
	}
	c.raw.SetReadDeadline(time.Now().Add(c.l.opts.CommandTimeout))
	line, err := c.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// go-smtp refuses a line this long and closes the session.
		c.in = append(c.in[:0], line...)
		return nil
	}
	if err != nil {
		return c.timeout(err)
	}
	verb, arg, _ := strings.Cut(strings.TrimRight(string(line), "\r\n"), " ")
	verb = strings.ToUpper(verb)
	if verb == "STARTTLS" && c.l.opts.TLSConfig != nil {
		return c.startTLS(arg)
	}
	if verb == "BDAT" {
		if f := strings.Fields(arg); len(f) > 0 {
			if n, err := strconv.ParseInt(f[0], 10, 64); err == nil && n > 0 {
				c.bdat = n
			}
		}
	}
	c.pending = append(c.pending, verb)
	c.in = append(c.in[:0], line...)
	return nil
}

// timeout turns a read timeout into the error go-smtp answers with
// 421 4.4.2, and logs it.
// fillData passes on, during DATA, every whole line already buffered (up
// to dataChunk bytes) in one piece, watching each for the final dot; it
// waits on the network (and sets the data timeout for that wait) only when
// no whole line is buffered, and never while it holds lines to pass on.
// One line per Read, with a deadline set for each, cost the Listener about
// a third of go-smtp's own rate.
func (c *Conn) fillData() error {
	c.in = c.in[:0]
	for c.data && len(c.in) < dataChunk {
		if !c.lineBuffered() {
			if len(c.in) > 0 {
				return nil
			}
			c.raw.SetReadDeadline(time.Now().Add(c.l.opts.DataTimeout))
		}
		line, err := c.r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			err = nil // a long line: pass it on in pieces
		} else if err == nil && !c.midLine && (string(line) == ".\r\n" || string(line) == ".\n") {
			c.data = false
			c.pending = append(c.pending, ".")
		}
		c.midLine = len(line) > 0 && line[len(line)-1] != '\n'
		c.in = append(c.in, line...)
		if err != nil {
			return c.timeout(err)
		}
	}
	return nil
}

// body returns a reader of the message that follows DATA's 354, read
// straight from the Conn's buffer a line at a time, dot-unstuffed in
// bulk, or nil if go-smtp holds some of it already (it never does after
// a DATA line: Read gives it one command line at a time). go-smtp's own
// reader takes a byte per call through two more layers, which cost the
// relay a sixth of its CPU per message. The reader ends at the final
// dot (CRLF "." CRLF, as go-smtp's), after which go-smtp's reader finds
// the end of the message at once; it enforces the server's
// MaxLineLength and MaxMessageBytes as go-smtp's does. The caller reads
// it to its end (Drain) before answering.
func (c *Conn) body(srv *smtp.Server) *bodyReader {
	if !c.data || len(c.in) > 0 || c.midLine || c.bdat > 0 || c.err != nil {
		return nil
	}
	b := &bodyReader{c: c, bol: true, maxLine: srv.MaxLineLength, left: -1}
	if srv.MaxMessageBytes > 0 {
		b.left = srv.MaxMessageBytes
	}
	return b
}

// bodyReader is the reader [Conn.body] returns.
type bodyReader struct {
	c       *Conn
	rest    []byte // the rest of the current piece of a line, in c.r's buffer
	bol     bool   // at the start of a line (after CRLF): a dot there is stuffing, or the end
	cr      bool   // the last byte read was CR
	lineLen int    // bytes of the current line so far
	maxLine int    // go-smtp's MaxLineLength; 0: none
	left    int64  // go-smtp's MaxMessageBytes left; negative: no limit
	err     error  // io.EOF after the final dot, or what ended the read
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(b.rest) == 0 {
			if b.err != nil {
				break
			}
			if n > 0 && !b.c.lineBuffered() {
				break // never wait on the network holding bytes
			}
			b.next()
			continue
		}
		if b.left >= 0 {
			if b.left == 0 {
				return n, smtp.ErrDataTooLarge
			}
			if int64(len(p)-n) > b.left {
				p = p[:n+int(b.left)]
			}
		}
		k := copy(p[n:], b.rest)
		b.rest = b.rest[k:]
		n += k
		if b.left >= 0 {
			b.left -= int64(k)
		}
	}
	if n > 0 {
		return n, nil
	}
	return 0, b.err
}

// lineBuffered reports whether a whole line (or its end) is buffered:
// reading it does not wait on the network.
func (c *Conn) lineBuffered() bool {
	buf, _ := c.r.Peek(c.r.Buffered())
	return bytes.IndexByte(buf, '\n') >= 0
}

// next reads the next line (or piece of a line longer than the buffer)
// into rest, or sets err.
func (b *bodyReader) next() {
	c := b.c
	if !b.c.lineBuffered() {
		c.raw.SetReadDeadline(time.Now().Add(c.l.opts.DataTimeout))
	}
	line, err := c.r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		err = nil
	}
	if err != nil {
		// The client is gone or too slow: go-smtp sees the same error
		// after the message's reply, and ends the session.
		c.err = c.timeout(err)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		b.err = err
		return
	}
	if b.bol && string(line) == ".\r\n" {
		// The end: go-smtp's reader is given the final dot to find.
		c.data = false
		c.pending = append(c.pending, ".")
		c.in = append(c.in[:0], ".\r\n"...)
		b.err = io.EOF
		return
	}
	if b.maxLine > 0 {
		// go-smtp counts a line's bytes before its LF, plus one.
		b.lineLen += len(line)
		if line[len(line)-1] != '\n' && b.lineLen >= b.maxLine || b.lineLen > b.maxLine {
			c.err = smtp.ErrTooLongLine
			b.err = smtp.ErrTooLongLine
			return
		}
	}
	end := line[len(line)-1] == '\n'
	crlf := end && (len(line) >= 2 && line[len(line)-2] == '\r' || len(line) == 1 && b.cr)
	b.cr = line[len(line)-1] == '\r'
	if b.bol && line[0] == '.' {
		line = line[1:] // dot-stuffing (RFC 5321 section 4.5.2)
	}
	b.bol = crlf
	if end {
		b.lineLen = 0
	}
	b.rest = line
}

// Drain reads the rest of the message, if any, up to its final dot.
func (b *bodyReader) Drain() {
	b.left = -1
	for b.err == nil {
		b.rest = nil
		b.next()
	}
}

// dataChunk bounds what fillData passes on at once.
const dataChunk = 32 << 10

func (c *Conn) timeout(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.l.log.Info("smtp: client timed out", "remote", c.raw.RemoteAddr().String(), "data", c.data || c.bdat > 0)
	}
	return err
}

func (c *Conn) startTLS(arg string) error {
	if c.tls || arg != "" || len(c.pending) > 0 || c.r.Buffered() > 0 {
		// Already in TLS, an argument, or commands pipelined around it.
		c.errors++
		return c.reply("503 5.5.1 STARTTLS not allowed here\r\n")
	}
	if err := c.reply("220 2.0.0 Ready to start TLS\r\n"); err != nil {
		return err
	}
	tc := tls.Server(c.raw, c.l.opts.TLSConfig)
	c.raw.SetDeadline(time.Now().Add(c.l.opts.CommandTimeout))
	if err := tc.Handshake(); err != nil {
		c.l.log.Info("smtp: TLS handshake failed", "remote", c.raw.RemoteAddr().String(), "err", err)
		return err
	}
	c.raw.SetDeadline(time.Time{})
	c.Conn, c.tls = tc, true
	c.r.Reset(tc)
	// go-smtp forgets the session (RFC 3207 section 4.2); the client
	// greets again.
	c.pending = append(c.pending, internalRSET)
	c.in = append(c.in[:0], "RSET\r\n"...)
	return nil
}

// reply writes a reply of the Conn's own, not go-smtp's.
func (c *Conn) reply(s string) error {
	c.Conn.SetWriteDeadline(time.Now().Add(c.l.opts.CommandTimeout))
	_, err := io.WriteString(c.Conn, s)
	return err
}

// Write passes go-smtp's replies to the client line by line, corrected.
func (c *Conn) Write(p []byte) (int, error) {
	c.out = append(c.out, p...)
	for {
		i := bytes.IndexByte(c.out, '\n')
		if i < 0 {
			break
		}
		line := string(c.out[:i+1])
		c.out = c.out[i+1:]
		if err := c.writeLine(line); err != nil {
			return 0, err
		}
	}
	if err := c.flush(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flush sends the reply lines writeLine kept, in one write: go-smtp
// writes a whole reply (every line of EHLO's) at once, and so do we.
func (c *Conn) flush() error {
	if len(c.wbuf) == 0 {
		return nil
	}
	c.Conn.SetWriteDeadline(time.Now().Add(c.l.opts.CommandTimeout))
	_, err := c.Conn.Write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	return err
}

func (c *Conn) writeLine(line string) error {
	if len(line) < 4 || line[0] < '1' || line[0] > '5' {
		c.wbuf = append(c.wbuf, line...)
		return nil
	}
	code, final, text := line[:3], line[3] == ' ', line[4:]
	cmd := ""
	if len(c.pending) > 0 {
		cmd = c.pending[0]
	}
	first := c.line == 0
	c.line++
	if final {
		c.line = 0
		if len(c.pending) > 0 {
			c.pending = c.pending[1:]
		}
	}
	switch {
	case cmd == internalRSET:
		return nil
	case (cmd == "EHLO" || cmd == "LHLO") && !first && strings.HasPrefix(strings.ToUpper(text), "STARTTLS") && (c.tls || c.l.opts.TLSConfig == nil):
		return nil // go-smtp does not know the session is in TLS
	case code == "354" && cmd == "DATA":
		c.data = true
	case code == "502" && (cmd == "MAIL" || cmd == "RCPT" || cmd == "DATA" || cmd == "BDAT") &&
		!strings.Contains(text, "not implemented") && !strings.Contains(text, "BINARYMIME"):
		// A command out of sequence: RFC 5321 section 4.2.4 says 503.
		code = "503"
	case code == "501" && strings.Contains(text, "Bad command"):
		// A line go-smtp cannot parse as a command: "Syntax error,
		// command unrecognized" (RFC 5321 section 4.2.2).
		code, text = "500", "5.5.2 Syntax error, command unrecognized\r\n"
	}
	if final && (code[0] == '4' || code[0] == '5') && cmd != "QUIT" {
		c.errors++
		if c.errors >= c.l.opts.HardErrorLimit {
			c.l.log.Warn("smtp: too many errors; closing the session", "remote", c.raw.RemoteAddr().String(), "errors", c.errors)
			c.flush()
			c.reply(code + line[3:4] + text)
			c.reply("421 4.7.0 Too many errors, closing the connection\r\n")
			c.Close()
			return net.ErrClosed
		}
		if over := c.errors - c.l.opts.SoftErrorLimit; over > 0 {
			if err := c.flush(); err != nil { // the lines before it go out before the tarpit
				return err
			}
			time.Sleep(min(time.Duration(over)*c.l.opts.ErrorDelay, time.Minute)) // the tarpit
		}
	}
	c.wbuf = fmt.Appendf(c.wbuf, "%s%c%s", code, line[3], text)
	if final && code == "421" {
		err := c.flush()
		c.Close() // 421 closes the transmission channel (RFC 5321 section 3.8)
		return err
	}
	return nil
}
