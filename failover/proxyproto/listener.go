package proxyproto

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// A Listener accepts connections and, for those from a trusted source,
// reads and validates a PROXY version 2 header before the connection's
// first byte reaches the server. Connections from other sources pass
// untouched (a header they send is data, which the server will reject).
//
// Accept does not wait for the header: the first Read or RemoteAddr of a
// trusted connection does, for at most Timeout. A connection whose header
// is missing, invalid or late fails its reads with an error wrapping
// [ErrHeader] (the server closes it) and a log line.
type Listener struct {
	net.Listener
	// Trusted lists the proxies whose headers are read.
	Trusted []netip.Prefix
	// Timeout bounds the wait for a trusted connection's header. Zero
	// means 5 s (as Postfix's smtpd_upstream_proxy_timeout).
	Timeout time.Duration
	// Logger receives a line per rejected header. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// Accept returns the next connection; see [Listener].
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil || !l.trusted(ap.Addr().Unmap()) {
		return c, nil
	}
	return &Conn{Conn: c, l: l}, nil
}

func (l *Listener) trusted(a netip.Addr) bool {
	for _, p := range l.Trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// A Conn is a connection from a trusted proxy.
type Conn struct {
	net.Conn
	l    *Listener
	once sync.Once
	hdr  Header
	err  error
}

// Header reads the PROXY header (once) and returns it.
func (c *Conn) Header() (Header, error) {
	c.once.Do(func() {
		d := c.l.Timeout
		if d == 0 {
			d = 5 * time.Second
		}
		c.Conn.SetReadDeadline(time.Now().Add(d))
		c.hdr, c.err = Read(c.Conn)
		c.Conn.SetReadDeadline(time.Time{})
		if c.err != nil {
			log := c.l.Logger
			if log == nil {
				log = slog.Default()
			}
			log.Warn("proxyproto: connection from a trusted proxy without a valid header", "remote", c.Conn.RemoteAddr().String(), "err", c.err)
			c.Conn.Close()
		}
	})
	return c.hdr, c.err
}

// Read reads after the header.
func (c *Conn) Read(b []byte) (int, error) {
	if _, err := c.Header(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

// RemoteAddr is the client's address from the header (the proxy's for a
// LOCAL header or when the header is invalid).
func (c *Conn) RemoteAddr() net.Addr {
	if h, err := c.Header(); err == nil && h.Command == Proxy && h.Source.IsValid() {
		return net.TCPAddrFromAddrPort(h.Source)
	}
	return c.Conn.RemoteAddr()
}

// LocalAddr is the address the client connected to, from the header.
func (c *Conn) LocalAddr() net.Addr {
	if h, err := c.Header(); err == nil && h.Command == Proxy && h.Destination.IsValid() {
		return net.TCPAddrFromAddrPort(h.Destination)
	}
	return c.Conn.LocalAddr()
}
