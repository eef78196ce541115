package imapstore

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/resilmail/resilmail/internal/loginguard"
	"github.com/resilmail/resilmail/replicate/store"
)

// An Authenticator checks a user's password. It is safe for concurrent use;
// any error is a failed login. *passwd.File is one.
type Authenticator interface {
	Authenticate(user, password string) error
}

// Options configures a [Server]; nil or zero fields give the defaults.
type Options struct {
	// Logger receives session errors and failed logins (never a password
	// or a message); nil means slog.Default().
	Logger *slog.Logger
	// TLSConfig enables STARTTLS (and is what an implicit-TLS listener
	// should use); nil means no STARTTLS.
	TLSConfig *tls.Config
	// Guard delays and rate-limits failed logins per client address; nil
	// means loginguard.New(nil) (1 s delay, 10 failures in 5 minutes).
	Guard *loginguard.Guard
	// ReadOnly reports whether the node is a standby whose store takes no
	// local writes: every SELECT is then an EXAMINE and every write is
	// refused with NO before it reaches the store. nil means never.
	ReadOnly func() bool
	// MaxMessageSize is the largest APPEND accepted; zero means 64 MiB.
	MaxMessageSize int64
	// NoSpecialUse, if set, does not create Drafts, Sent, Trash, Junk and
	// Archive for a user at the first login.
	NoSpecialUse bool
	// ParseCache, if set, is a file that keeps the ENVELOPE and
	// BODYSTRUCTURE parsed from bodies across restarts (parsecache.go):
	// New loads it, Close writes it (the most recently used, as many as
	// the store's Derived cache holds). A damaged file is ignored.
	ParseCache string
}

// Server serves IMAP over a store. Create it with [New]; it is safe for
// concurrent use.
type Server struct {
	st   *store.Store
	auth Authenticator
	o    Options
	log  *slog.Logger
	hub  *hub

	imap *imapserver.Server

	mu        sync.Mutex
	listeners map[net.Listener]chan struct{} // closed when its go-imap servers return
	closed    bool
}

// ErrServerClosed is returned by [Server.Serve] after [Server.Close].
var ErrServerClosed = errors.New("imapstore: server closed")

// SpecialUse maps the names created for every new user to their RFC 6154
// attribute.
var SpecialUse = map[string]imap.MailboxAttr{
	"Drafts":  imap.MailboxAttrDrafts,
	"Sent":    imap.MailboxAttrSent,
	"Trash":   imap.MailboxAttrTrash,
	"Junk":    imap.MailboxAttrJunk,
	"Archive": imap.MailboxAttrArchive,
}

// New returns a server of st's mailboxes to the users auth knows. It does
// no I/O and starts no goroutine.
func New(st *store.Store, auth Authenticator, opts *Options) (*Server, error) {
	if st == nil || auth == nil {
		return nil, errors.New("imapstore: New needs a store and an Authenticator")
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
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = 64 << 20
	}
	s := &Server{st: st, auth: auth, o: o, log: o.Logger, listeners: make(map[net.Listener]chan struct{})}
	s.hub = newHub(st, o.Logger)
	if o.ParseCache != "" {
		n, err := s.loadParseCache(o.ParseCache)
		if err != nil {
			o.Logger.Warn("imap: parse cache ignored: every body is parsed again", "err", err)
		} else if n > 0 {
			o.Logger.Info("imap: parse cache loaded", "bodies", n)
		}
	}
	caps := imap.CapSet{
		imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {},
		imap.CapNamespace: {}, imap.CapUIDPlus: {}, imap.CapESearch: {}, imap.CapSearchRes: {},
		imap.CapListExtended: {}, imap.CapListStatus: {}, imap.CapMove: {}, imap.CapStatusSize: {},
		imap.CapBinary: {}, imap.CapChildren: {}, imap.CapSpecialUse: {}, imap.CapLiteralPlus: {},
		imap.CapUnauthenticate: {},
	}
	// One go-imap server: passwords go through it in clear, and the
	// session refuses them unless the connection is TLS or loopback
	// (loginguard); the front states LOGINDISABLED and STARTTLS, and does
	// STARTTLS itself.
	s.imap = imapserver.New(&imapserver.Options{
		NewSession: func(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			f, ok := c.NetConn().(*front)
			if !ok {
				return nil, nil, errors.New("imapstore: connection without its front")
			}
			sess := &session{srv: s, conn: c, front: f, nonce: strconv.FormatUint(rand.Uint64(), 36)}
			f.sess = sess
			return sess, nil, nil
		},
		Caps:         caps,
		Logger:       slogPrintf{o.Logger},
		InsecureAuth: true,
	})
	return s, nil
}

type slogPrintf struct{ l *slog.Logger }

// Printf logs go-imap's messages at warning level.
func (p slogPrintf) Printf(format string, args ...any) {
	p.l.Warn("imap: " + fmt.Sprintf(format, args...))
}

// chanListener hands the connections Serve accepted to one go-imap server.
type chanListener struct {
	ch   chan net.Conn
	addr net.Addr
	done chan struct{}
	once sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// Serve accepts IMAP connections on ln until [Server.Close] (then it
// returns ErrServerClosed) or an accept error. A listener of *tls.Conn
// (implicit TLS, port 993) works as is. Passwords are accepted over TLS,
// and in clear only from loopback peers.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	l := &chanListener{ch: make(chan net.Conn), addr: ln.Addr(), done: make(chan struct{})}
	served := make(chan struct{})
	s.listeners[ln] = served
	s.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { s.imap.Serve(l) })
	defer func() {
		l.Close()
		wg.Wait()
		close(served)
	}()
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
		select {
		case l.ch <- newFront(s, c):
		case <-l.done:
			c.Close()
		}
	}
}

// Close closes the listeners and every connection, stops the mailbox
// watchers and writes the parse cache (Options.ParseCache). It is
// idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var served []chan struct{}
	for ln, ch := range s.listeners {
		ln.Close()
		served = append(served, ch)
	}
	s.mu.Unlock()
	// go-imap's Close must not run while its Serve starts (its WaitGroup
	// would race): let every Serve return first, then close the
	// connections.
	for _, ch := range served {
		<-ch
	}
	s.imap.Close()
	s.hub.close()
	if s.o.ParseCache != "" {
		if err := s.saveParseCache(s.o.ParseCache); err != nil {
			s.log.Warn("imap: parse cache not saved", "err", err)
			return fmt.Errorf("imapstore: saving the parse cache: %w", err)
		}
	}
	return nil
}

// Stats counts what the server is doing.
type Stats struct {
	Sessions        int // open sessions
	OpenMailboxes   int // mailboxes selected by at least one session
	DerivedHits     uint64
	DerivedMisses   uint64
	DerivedBytes    int64
	FailedLogins    uint64
	RefusedReadOnly uint64 // writes refused on a standby
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	h, m, b := s.st.DerivedStats()
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return Stats{
		Sessions: int(s.hub.sessions.Load()), OpenMailboxes: len(s.hub.boxes),
		DerivedHits: h, DerivedMisses: m, DerivedBytes: b,
		FailedLogins: s.hub.failed.Load(), RefusedReadOnly: s.hub.refused.Load(),
	}
}
