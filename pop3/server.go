package pop3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/resilmail/resilmail/internal/loginguard"
	"github.com/resilmail/resilmail/replicate/store"
)

// An Authenticator checks a user's password; any error is a failed login.
type Authenticator interface {
	Authenticate(user, password string) error
}

// Options configures a [Server]; nil or zero fields give the defaults.
type Options struct {
	// Logger receives session errors and failed logins (never a password
	// or a message); nil means slog.Default().
	Logger *slog.Logger
	// TLSConfig enables STLS; nil means none.
	TLSConfig *tls.Config
	// Guard delays and rate-limits failed logins; nil means
	// loginguard.New(nil).
	Guard *loginguard.Guard
	// ReadOnly reports whether the node is a standby: DELE is refused.
	ReadOnly func() bool
	// Hostname is named in the greeting; empty means "resilmail".
	Hostname string
}

const (
	idleTimeout  = 10 * time.Minute // RFC 1939 §3: at least 10 minutes
	writeTimeout = time.Minute
	maxDiscard   = 64 << 10 // a longer line closes the session
	maxErrors    = 10       // bad commands before the session is closed
)

// ErrServerClosed is returned by [Server.Serve] after [Server.Close].
var ErrServerClosed = errors.New("pop3: server closed")

// Server serves POP3. It is safe for concurrent use.
type Server struct {
	st   *store.Store
	auth Authenticator
	o    Options
	log  *slog.Logger

	mu        sync.Mutex
	locks     map[string]bool // maildrops in use
	conns     map[net.Conn]struct{}
	listeners map[net.Listener]struct{}
	closed    bool
	wg        sync.WaitGroup
}

// New returns a server of st's INBOXes to the users auth knows. It does no
// I/O and starts no goroutine.
func New(st *store.Store, auth Authenticator, opts *Options) (*Server, error) {
	if st == nil || auth == nil {
		return nil, errors.New("pop3: New needs a store and an Authenticator")
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Guard == nil {
		o.Guard = loginguard.New(&loginguard.Options{Logger: o.Logger})
	}
	if o.ReadOnly == nil {
		o.ReadOnly = func() bool { return false }
	}
	if o.Hostname == "" {
		o.Hostname = "resilmail"
	}
	return &Server{st: st, auth: auth, o: o, log: o.Logger, locks: make(map[string]bool),
		conns: make(map[net.Conn]struct{}), listeners: make(map[net.Listener]struct{})}, nil
}

// Serve accepts connections on ln until Close (ErrServerClosed) or an
// accept error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			(&session{srv: s, conn: c}).serve()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Close closes the listeners and every connection (without UPDATE: marked
// messages are not deleted) and waits for the sessions to end.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) lock(user string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.locks[user] {
		return false
	}
	s.locks[user] = true
	return true
}

func (s *Server) unlock(user string) {
	s.mu.Lock()
	delete(s.locks, user)
	s.mu.Unlock()
}

// msg is a message of the maildrop.
type msg struct {
	uid     uint32
	size    int64 // octets as sent
	deleted bool
	m       store.Message
}

type state int

const (
	stateAuth state = iota
	stateTransaction
)

type session struct {
	srv     *Server
	conn    net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	state   state
	user    string // after USER, before PASS
	authed  string // the locked user
	uidv    uint32
	msgs    []msg
	errs    int
	isTLS   bool
	closing bool
}

func (c *session) ctx() context.Context { return context.Background() }

func (c *session) serve() {
	defer c.conn.Close()
	defer func() {
		if c.authed != "" {
			c.srv.unlock(c.authed)
		}
	}()
	_, c.isTLS = c.conn.(*tls.Conn)
	c.br = bufio.NewReaderSize(c.conn, 1024)
	c.bw = bufio.NewWriterSize(c.conn, 32<<10)
	c.reply("+OK " + c.srv.o.Hostname + " POP3 ready")
	for !c.closing {
		c.flush()
		c.conn.SetReadDeadline(time.Now().Add(idleTimeout))
		line, err := c.readLine()
		if errors.Is(err, errLineTooLong) {
			c.errs++
			c.reply("-ERR line too long")
			if c.errs >= maxErrors {
				break
			}
			continue
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				c.srv.log.Debug("pop3: session ends", "remote", c.conn.RemoteAddr().String(), "err", err)
			}
			break
		}
		cmd, err := parseCommand(line)
		if err != nil {
			c.bad("-ERR syntax error")
			continue
		}
		c.handle(cmd)
	}
	c.flush()
}

var errLineTooLong = errors.New("line too long")

// readLine reads a line (CRLF or LF) of at most MaxLine octets; a longer
// one is discarded up to maxDiscard (beyond that the session ends).
func (c *session) readLine() (string, error) {
	var buf []byte
	for {
		frag, err := c.br.ReadSlice('\n')
		buf = append(buf, frag...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
		if len(buf) > MaxLine {
			// Discard the rest of the line.
			n := len(buf)
			for {
				frag, err := c.br.ReadSlice('\n')
				n += len(frag)
				if n > maxDiscard {
					return "", fmt.Errorf("pop3: line of over %d bytes", maxDiscard)
				}
				if err == nil {
					return "", errLineTooLong
				}
				if !errors.Is(err, bufio.ErrBufferFull) {
					return "", err
				}
			}
		}
	}
	if len(buf) > MaxLine {
		return "", errLineTooLong
	}
	line := strings.TrimSuffix(strings.TrimSuffix(string(buf), "\n"), "\r")
	return line, nil
}

func (c *session) reply(s string) {
	c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	c.bw.WriteString(s)
	c.bw.WriteString("\r\n")
}

// flush writes buffered replies unless more pipelined commands wait.
func (c *session) flush() {
	if c.br != nil && c.br.Buffered() > 0 && !c.closing {
		return
	}
	c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := c.bw.Flush(); err != nil {
		c.closing = true
	}
}

func (c *session) bad(s string) {
	c.errs++
	c.reply(s)
	if c.errs >= maxErrors {
		c.reply("-ERR too many errors, closing")
		c.closing = true
	}
}

func (c *session) secure() bool {
	if c.isTLS {
		return true
	}
	return loginguard.IsLoopback(c.conn.RemoteAddr())
}

func (c *session) handle(cmd command) {
	if c.state == stateAuth {
		switch cmd.name {
		case "CAPA":
			c.capa()
		case "QUIT":
			c.reply("+OK bye")
			c.closing = true
		case "STLS":
			c.stls(cmd)
		case "USER":
			if len(cmd.args) != 1 {
				c.bad("-ERR USER takes a name")
				return
			}
			if !c.secure() {
				c.bad("-ERR [AUTH] use STLS before sending a password")
				return
			}
			c.user = cmd.args[0]
			c.reply("+OK send PASS")
		case "PASS":
			if c.user == "" {
				c.bad("-ERR USER first")
				return
			}
			user := c.user
			c.user = ""
			c.login(user, cmd.args[0])
		case "AUTH":
			c.authCmd(cmd)
		default:
			c.bad("-ERR unknown command or not before login")
		}
		return
	}
	switch cmd.name {
	case "CAPA":
		c.capa()
	case "STAT":
		if len(cmd.args) != 0 {
			c.bad("-ERR STAT takes no argument")
			return
		}
		n, size := 0, int64(0)
		for _, m := range c.msgs {
			if !m.deleted {
				n++
				size += m.size
			}
		}
		c.reply(fmt.Sprintf("+OK %d %d", n, size))
	case "LIST", "UIDL":
		c.list(cmd)
	case "RETR":
		if len(cmd.args) != 1 {
			c.bad("-ERR RETR takes a message number")
			return
		}
		c.retr(cmd.args[0], -1)
	case "TOP":
		if len(cmd.args) != 2 {
			c.bad("-ERR TOP takes a message number and a line count")
			return
		}
		n, ok := parseNumber(cmd.args[1])
		if !ok && cmd.args[1] != "0" {
			c.bad("-ERR bad line count")
			return
		}
		c.retr(cmd.args[0], n)
	case "DELE":
		if len(cmd.args) != 1 {
			c.bad("-ERR DELE takes a message number")
			return
		}
		m := c.message(cmd.args[0])
		if m == nil {
			return
		}
		if c.srv.o.ReadOnly() {
			c.reply("-ERR [SYS/PERM] this server is a standby: read-only")
			return
		}
		m.deleted = true
		c.reply("+OK marked for deletion")
	case "RSET":
		for i := range c.msgs {
			c.msgs[i].deleted = false
		}
		c.reply("+OK")
	case "NOOP":
		c.reply("+OK")
	case "QUIT":
		c.update()
		c.closing = true
	default:
		c.bad("-ERR unknown command or not after login")
	}
}

func (c *session) capa() {
	c.reply("+OK capabilities follow")
	c.reply("TOP")
	c.reply("UIDL")
	c.reply("RESP-CODES")
	c.reply("AUTH-RESP-CODE")
	c.reply("PIPELINING")
	c.reply("EXPIRE NEVER")
	c.reply("IMPLEMENTATION resilmail")
	if c.state == stateAuth {
		if c.secure() {
			c.reply("USER")
			c.reply("SASL PLAIN")
		}
		if c.srv.o.TLSConfig != nil && !c.isTLS {
			c.reply("STLS")
		}
	}
	c.reply(".")
}

func (c *session) stls(cmd command) {
	if c.srv.o.TLSConfig == nil || c.isTLS || len(cmd.args) != 0 {
		c.bad("-ERR STLS not available")
		return
	}
	if c.br.Buffered() > 0 {
		// Commands pipelined after STLS would be injected into the TLS
		// session (CVE-2011-0411 and kin): refuse.
		c.reply("-ERR no pipelining after STLS")
		c.closing = true
		return
	}
	c.reply("+OK begin TLS")
	c.flush()
	tc := tls.Server(c.conn, c.srv.o.TLSConfig)
	tc.SetDeadline(time.Now().Add(writeTimeout))
	if err := tc.Handshake(); err != nil {
		c.srv.log.Info("pop3: TLS handshake failed", "remote", c.conn.RemoteAddr().String(), "err", err)
		c.closing = true
		return
	}
	tc.SetDeadline(time.Time{})
	c.srv.mu.Lock()
	delete(c.srv.conns, c.conn)
	c.srv.conns[tc] = struct{}{}
	c.srv.mu.Unlock()
	c.conn, c.isTLS = tc, true
	c.br = bufio.NewReaderSize(tc, 1024)
	c.bw = bufio.NewWriterSize(tc, 32<<10)
	c.user = ""
}

// authCmd handles AUTH PLAIN, with the initial response on the line or
// after "+ ".
func (c *session) authCmd(cmd command) {
	if len(cmd.args) == 0 {
		c.reply("+OK SASL mechanisms follow")
		c.reply("PLAIN")
		c.reply(".")
		return
	}
	if !strings.EqualFold(cmd.args[0], "PLAIN") || len(cmd.args) > 2 {
		c.bad("-ERR unsupported SASL mechanism")
		return
	}
	if !c.secure() {
		c.bad("-ERR [AUTH] use STLS before sending a password")
		return
	}
	resp := ""
	if len(cmd.args) == 2 {
		resp = cmd.args[1]
	} else {
		c.reply("+ ")
		c.flush()
		line, err := c.readLine()
		if err != nil {
			c.closing = true
			return
		}
		resp = line
	}
	if resp == "*" {
		c.bad("-ERR authentication cancelled")
		return
	}
	if resp == "=" {
		resp = ""
	}
	raw, err := base64.StdEncoding.DecodeString(resp)
	if err != nil {
		c.bad("-ERR bad base64")
		return
	}
	parts := bytes.Split(raw, []byte{0})
	if len(parts) != 3 || (len(parts[0]) > 0 && !bytes.Equal(parts[0], parts[1])) {
		c.bad("-ERR [AUTH] bad PLAIN response")
		return
	}
	c.login(string(parts[1]), string(parts[2]))
}

func (c *session) login(user, password string) {
	err := c.srv.o.Guard.Login(c.ctx(), c.conn, user, func() error {
		if err := store.ValidateUser(user); err != nil {
			return err
		}
		return c.srv.auth.Authenticate(user, password)
	})
	switch {
	case errors.Is(err, loginguard.ErrNeedTLS):
		c.bad("-ERR [AUTH] use STLS before sending a password")
		return
	case errors.Is(err, loginguard.ErrTooMany):
		c.bad("-ERR [LOGIN-DELAY] too many failed logins; try later")
		return
	case err != nil:
		c.bad("-ERR [AUTH] authentication failed")
		return
	}
	if !c.srv.lock(user) {
		c.reply("-ERR [IN-USE] maildrop already locked by another session")
		return
	}
	msgs, err := c.srv.st.Fetch(c.ctx(), user, store.Inbox, store.Query{})
	var st store.Status
	if err == nil {
		st, err = c.srv.st.MailboxStatus(c.ctx(), user, store.Inbox)
	}
	if errors.Is(err, store.ErrNotFound) {
		msgs, err = nil, nil // no mail yet
	}
	if err != nil {
		c.srv.unlock(user)
		c.srv.log.Error("pop3: opening maildrop", "user", user, "err", err)
		c.reply("-ERR [SYS/TEMP] maildrop unavailable")
		return
	}
	c.msgs = make([]msg, 0, len(msgs))
	for _, m := range msgs {
		size, err := c.srv.sentSize(c.ctx(), m)
		if err != nil {
			c.srv.log.Error("pop3: message unreadable, left out of the maildrop", "user", user, "uid", m.UID, "err", err)
			continue
		}
		c.msgs = append(c.msgs, msg{uid: m.UID, size: size, m: m})
	}
	c.authed, c.uidv, c.state = user, st.UIDValidity, stateTransaction
	c.reply(fmt.Sprintf("+OK maildrop locked and ready, %d messages", len(c.msgs)))
}

// message returns message number arg, answering -ERR itself when there is
// none.
func (c *session) message(arg string) *msg {
	n, ok := parseNumber(arg)
	if !ok || n > len(c.msgs) {
		c.bad("-ERR no such message")
		return nil
	}
	m := &c.msgs[n-1]
	if m.deleted {
		c.reply("-ERR message deleted")
		return nil
	}
	return m
}

func (c *session) uidl(m *msg) string { return fmt.Sprintf("%08x%08x", c.uidv, m.uid) }

func (c *session) list(cmd command) {
	line := func(i int, m *msg) string {
		if cmd.name == "UIDL" {
			return fmt.Sprintf("%d %s", i+1, c.uidl(m))
		}
		return fmt.Sprintf("%d %d", i+1, m.size)
	}
	switch len(cmd.args) {
	case 0:
		c.reply("+OK")
		for i := range c.msgs {
			if !c.msgs[i].deleted {
				c.reply(line(i, &c.msgs[i]))
			}
		}
		c.reply(".")
	case 1:
		m := c.message(cmd.args[0])
		if m == nil {
			return
		}
		n, _ := parseNumber(cmd.args[0])
		c.reply("+OK " + line(n-1, m))
	default:
		c.bad("-ERR too many arguments")
	}
}

// retr sends message arg, whole (lines < 0) or its header and first lines
// of body (TOP).
func (c *session) retr(arg string, lines int) {
	m := c.message(arg)
	if m == nil {
		return
	}
	r, err := c.srv.st.OpenBody(c.ctx(), m.m.Digest)
	if err != nil {
		c.srv.log.Error("pop3: message unreadable", "user", c.authed, "uid", m.uid, "err", err)
		c.reply("-ERR [SYS/TEMP] message unreadable on this server")
		return
	}
	defer r.Close()
	var src io.Reader = r.Verified()
	if lines >= 0 {
		src = r.Section(0, r.Size())
	}
	c.reply(fmt.Sprintf("+OK %d octets", m.size))
	c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := writeStuffed(c.bw, src, lines); err != nil {
		// Cut before the final ".": the client must not take a partial
		// or damaged message for the message.
		c.srv.log.Error("pop3: sending a message failed", "user", c.authed, "uid", m.uid, "err", err)
		c.closing = true
		c.conn.Close()
		return
	}
	c.reply(".")
}

// update expunges the messages marked deleted (the UPDATE state) and
// answers QUIT.
func (c *session) update() {
	var del []uint32
	for _, m := range c.msgs {
		if m.deleted {
			del = append(del, m.uid)
		}
	}
	if len(del) > 0 {
		var set = uidSet(del)
		if _, err := c.srv.st.Expunge(c.ctx(), c.authed, store.Inbox, set); err != nil {
			c.srv.log.Error("pop3: deleting at QUIT", "user", c.authed, "err", err)
			c.reply("-ERR [SYS/TEMP] some deleted messages not removed")
			return
		}
	}
	// The maildrop is released before the answer, so a client that
	// reconnects as soon as it reads +OK finds it free (RFC 1939 section 6).
	c.srv.unlock(c.authed)
	c.authed = ""
	c.reply(fmt.Sprintf("+OK bye, %d messages deleted", len(del)))
}
