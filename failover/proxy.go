package failover

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/resilmail/resilmail/failover/proxyproto"
)

// A Backend is where a [Proxy] sends connections: the active node's
// address for one service (IMAP, POP3, submission, LMTP).
type Backend struct {
	// Addr is host:port; empty means no active node.
	Addr string
	// SendProxy sends a PROXY protocol v2 header with the client's address
	// before the first byte. Set it only for nodes configured to trust this
	// proxy (they refuse connections without a header from it).
	SendProxy bool
}

// ProxyOptions configure a [Proxy]. The zero value is usable.
type ProxyOptions struct {
	// Unavailable is written to a client when there is no backend or it
	// cannot be reached, before the connection is closed: for SMTP and LMTP
	// "421 4.3.2 ...\r\n", for IMAP "* BYE ...\r\n", for POP3
	// "-ERR ...\r\n". Nil closes the connection without a word.
	Unavailable []byte
	// DialTimeout bounds the connection to the backend. Zero means 5 s.
	DialTimeout time.Duration
	// LocalAddr, when set, is the local IP address connections to the
	// backend come from (the address the backend trusts for PROXY
	// headers). Empty lets the system choose.
	LocalAddr string
	// DrainTimeout is how long connections to a former backend go on after
	// [Proxy.SetBackend] before they are closed. Zero means 30 s.
	DrainTimeout time.Duration
	// Logger receives a line per refused connection and per drain. Nil
	// means slog.Default().
	Logger *slog.Logger
}

// ProxyStats count a [Proxy]'s connections.
type ProxyStats struct {
	// Active is the number of open relayed connections.
	Active int64
	// Relayed counts connections relayed to a backend, Refused those
	// answered Unavailable, Drained those closed by a drain.
	Relayed, Refused, Drained uint64
}

// A Proxy relays the connections that reach a standby (or any node) to the
// active node, following role changes without a restart: [Proxy.SetBackend]
// points new connections at the new active node and drains the ones to
// the old one. It is safe for concurrent use.
type Proxy struct {
	opts ProxyOptions
	log  *slog.Logger

	mu      sync.Mutex
	backend Backend
	conns   map[*proxyConn]struct{}
	lns     map[net.Listener]struct{}
	closed  bool
	wg      sync.WaitGroup

	active                    atomic.Int64
	relayed, refused, drained atomic.Uint64
}

type proxyConn struct {
	client, server net.Conn
	addr           string
	timer          *time.Timer
}

func (c *proxyConn) close() {
	c.client.Close()
	if c.server != nil {
		c.server.Close()
	}
}

// ErrProxyClosed is returned by [Proxy.Serve] after [Proxy.Close].
var ErrProxyClosed = errors.New("failover: proxy closed")

// NewProxy returns a proxy to b.
func NewProxy(b Backend, opts *ProxyOptions) *Proxy {
	if opts == nil {
		opts = &ProxyOptions{}
	}
	p := &Proxy{opts: *opts, backend: b, conns: map[*proxyConn]struct{}{}, lns: map[net.Listener]struct{}{}}
	if p.opts.DialTimeout == 0 {
		p.opts.DialTimeout = 5 * time.Second
	}
	if p.opts.DrainTimeout == 0 {
		p.opts.DrainTimeout = 30 * time.Second
	}
	p.log = p.opts.Logger
	if p.log == nil {
		p.log = slog.Default()
	}
	return p
}

// Backend returns the current backend.
func (p *Proxy) Backend() Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.backend
}

// SetBackend sends new connections to b from now on. Open connections to
// another address go on for DrainTimeout, then are closed (their clients
// reconnect and reach b).
func (p *Proxy) SetBackend(b Backend) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.backend == b {
		return
	}
	p.log.Info("failover: proxy follows the active node", "from", p.backend.Addr, "to", b.Addr)
	p.backend = b
	for c := range p.conns {
		if c.addr != b.Addr && c.timer == nil {
			c.timer = time.AfterFunc(p.opts.DrainTimeout, func() {
				p.drained.Add(1)
				c.close()
			})
		}
	}
}

// Stats returns the counters.
func (p *Proxy) Stats() ProxyStats {
	return ProxyStats{Active: p.active.Load(), Relayed: p.relayed.Load(), Refused: p.refused.Load(), Drained: p.drained.Load()}
}

// Serve accepts connections on ln and relays each until [Proxy.Close]; it
// then returns ErrProxyClosed.
func (p *Proxy) Serve(ln net.Listener) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		ln.Close()
		return ErrProxyClosed
	}
	p.lns[ln] = struct{}{}
	p.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			p.mu.Lock()
			closed := p.closed
			delete(p.lns, ln)
			p.mu.Unlock()
			if closed {
				return ErrProxyClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return ErrProxyClosed
		}
		p.wg.Add(1)
		p.mu.Unlock()
		go func() {
			defer p.wg.Done()
			p.relay(c)
		}()
	}
}

// Close stops every listener, closes every connection and waits for the
// relaying goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for ln := range p.lns {
		ln.Close()
	}
	for c := range p.conns {
		if c.timer != nil {
			c.timer.Stop()
		}
		c.close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

func (p *Proxy) refuse(c net.Conn, why string, err error) {
	p.refused.Add(1)
	p.log.Warn("failover: proxy refused a connection", "remote", c.RemoteAddr().String(), "why", why, "err", err)
	if p.opts.Unavailable != nil {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write(p.opts.Unavailable)
	}
	c.Close()
}

func (p *Proxy) relay(client net.Conn) {
	b := p.Backend()
	if b.Addr == "" {
		p.refuse(client, "no active node", nil)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.DialTimeout)
	d := &net.Dialer{}
	if p.opts.LocalAddr != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(p.opts.LocalAddr)}
	}
	server, err := d.DialContext(ctx, "tcp", b.Addr)
	cancel()
	if err != nil {
		p.refuse(client, "active node unreachable", err)
		return
	}
	if b.SendProxy {
		src, _ := netip.ParseAddrPort(client.RemoteAddr().String())
		dst, _ := netip.ParseAddrPort(client.LocalAddr().String())
		h := proxyproto.Header{Command: proxyproto.Proxy, Source: src, Destination: dst}
		hdr, err := h.AppendBinary(nil)
		if err == nil {
			server.SetWriteDeadline(time.Now().Add(p.opts.DialTimeout))
			_, err = server.Write(hdr)
			server.SetWriteDeadline(time.Time{})
		}
		if err != nil {
			server.Close()
			p.refuse(client, "PROXY header not sent", err)
			return
		}
	}
	pc := &proxyConn{client: client, server: server, addr: b.Addr}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		pc.close()
		return
	}
	p.conns[pc] = struct{}{}
	if p.backend.Addr != b.Addr { // the backend changed while dialling
		pc.timer = time.AfterFunc(p.opts.DrainTimeout, func() { p.drained.Add(1); pc.close() })
	}
	p.mu.Unlock()
	p.relayed.Add(1)
	p.active.Add(1)
	defer func() {
		p.mu.Lock()
		delete(p.conns, pc)
		if pc.timer != nil {
			pc.timer.Stop()
		}
		p.mu.Unlock()
		p.active.Add(-1)
		pc.close()
	}()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(interface{ CloseWrite() error }); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	// One side ended: give the other a moment to finish its half, then
	// close both (a half-open peer must not hold the goroutine forever).
	t := time.NewTimer(p.opts.DialTimeout)
	select {
	case <-done:
	case <-t.C:
		pc.close()
		<-done
	}
	t.Stop()
}
