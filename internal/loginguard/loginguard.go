// Package loginguard slows down password guessing for the mail servers
// (IMAP, POP3): every failed login is answered only after a delay, and a
// client address with too many recent failures is refused without its
// password being checked until the window passes. It also decides whether
// a connection may send a password at all: over TLS, or on loopback.
package loginguard

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// ErrTooMany is returned by [Guard.Login] for an address with too many
// recent failures; the password was not checked.
var ErrTooMany = errors.New("loginguard: too many failed logins from this address; try later")

// ErrNeedTLS is returned by [Guard.Login] for a password sent in clear
// over a connection that is neither TLS nor loopback.
var ErrNeedTLS = errors.New("loginguard: passwords only over TLS")

// Options configures a Guard; the zero value gives the defaults.
type Options struct {
	// Delay is how long a failed login waits before its answer; zero
	// means 1 s.
	Delay time.Duration
	// MaxFailures is how many failures an address may have within Window
	// before it is refused; zero means 10.
	MaxFailures int
	// Window is how long a failure counts; zero means 5 minutes.
	Window time.Duration
	// Logger receives failures (user and address, never the password);
	// nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Guard counts failed logins per client address. It is safe for
// concurrent use and starts no goroutine.
type Guard struct {
	o  Options
	mu sync.Mutex
	// failures per address (IPv6 addresses by their /64).
	failures map[netip.Prefix][]time.Time
}

// New returns a Guard.
func New(opts *Options) *Guard {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Delay <= 0 {
		o.Delay = time.Second
	}
	if o.MaxFailures <= 0 {
		o.MaxFailures = 10
	}
	if o.Window <= 0 {
		o.Window = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Guard{o: o, failures: make(map[netip.Prefix][]time.Time)}
}

// Secure reports whether conn may carry a password: it is TLS, or its peer
// is on loopback. A wrapper with a NetConn method is looked through.
func Secure(conn net.Conn) bool {
	for {
		if _, ok := conn.(*tls.Conn); ok {
			return true
		}
		u, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		conn = u.NetConn()
	}
	return IsLoopback(conn.RemoteAddr())
}

// IsLoopback reports whether addr is a loopback address or a Unix socket.
func IsLoopback(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	return false
}

func key(addr net.Addr) netip.Prefix {
	var ip netip.Addr
	if a, ok := addr.(*net.TCPAddr); ok {
		ip, _ = netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
	}
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// Login checks a login from conn with check (which returns nil for good
// credentials). It refuses a password sent in clear off loopback
// ([ErrNeedTLS]) and an address over its failure budget ([ErrTooMany]),
// and returns any other failure only after the delay (or ctx's end). A
// success does not clear the address's failures: a guesser that also
// knows one password gains nothing.
func (g *Guard) Login(ctx context.Context, conn net.Conn, user string, check func() error) error {
	if !Secure(conn) {
		g.o.Logger.Warn("login refused: password in clear off loopback", "user", user, "remote", conn.RemoteAddr().String())
		return ErrNeedTLS
	}
	k := key(conn.RemoteAddr())
	now := g.o.Now()
	g.mu.Lock()
	recent := g.prune(k, now)
	g.mu.Unlock()
	var err error
	if recent >= g.o.MaxFailures {
		err = ErrTooMany
	} else if err = check(); err == nil {
		return nil
	}
	g.mu.Lock()
	g.failures[k] = append(g.failures[k], now)
	n := len(g.failures[k])
	g.mu.Unlock()
	g.o.Logger.Warn("login failed", "user", user, "remote", conn.RemoteAddr().String(), "recent_failures", n, "refused", errors.Is(err, ErrTooMany))
	t := time.NewTimer(g.o.Delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return err
}

// prune drops failures older than the window and returns how many are
// left; g.mu is held.
func (g *Guard) prune(k netip.Prefix, now time.Time) int {
	l := g.failures[k]
	i := 0
	for i < len(l) && now.Sub(l[i]) > g.o.Window {
		i++
	}
	l = l[i:]
	if len(l) == 0 {
		delete(g.failures, k)
		// Forget idle addresses now and then, so that the map stays
		// bounded by the addresses seen within a window.
		if len(g.failures) > 10000 {
			for a, fl := range g.failures {
				if len(fl) == 0 || now.Sub(fl[len(fl)-1]) > g.o.Window {
					delete(g.failures, a)
				}
			}
		}
		return 0
	}
	g.failures[k] = l
	return len(l)
}
