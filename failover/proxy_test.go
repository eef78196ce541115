package failover

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/failover/proxyproto"
)

// lineServer answers every line with "name remote line"; with trust, it
// requires a PROXY header from loopback.
func lineServer(t *testing.T, name string, trust bool) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var l net.Listener = ln
	if trust {
		l = &proxyproto.Listener{Listener: ln, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Logger: quietLog()}
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "%s %s %s", name, c.RemoteAddr(), line)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func ask(t *testing.T, r *bufio.Reader, c net.Conn, q string) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", q); err != nil {
		return "", err
	}
	return r.ReadString('\n')
}

func TestProxyFollowsAndDrains(t *testing.T) {
	a := lineServer(t, "a", false)
	b := lineServer(t, "b", true)
	p := NewProxy(Backend{Addr: a}, &ProxyOptions{DrainTimeout: 300 * time.Millisecond, Unavailable: []byte("421 4.3.2 no active node\r\n"), Logger: quietLog()})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()

	c1, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c1.Close()
	r1 := bufio.NewReader(c1)
	line, err := ask(t, r1, c1, "one")
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(line, "a "), line)

	// Switchover: new connections reach b, with the client's address in a
	// PROXY header that b validates.
	p.SetBackend(Backend{Addr: b, SendProxy: true})
	c2, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c2.Close()
	r2 := bufio.NewReader(c2)
	line, err = ask(t, r2, c2, "two")
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprintf("b %s two\n", c2.LocalAddr()), line, "b sees the client's own address")

	// The old connection goes on during the drain, then is closed.
	line, err = ask(t, r1, c1, "still")
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(line, "a "))
	c1.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = r1.ReadString('\n')
	require.Error(t, err, "the drained connection is closed")
	assert.Equal(t, uint64(1), p.Stats().Drained)
	line, err = ask(t, r2, c2, "after")
	require.NoError(t, err, "connections to the new node are not drained")
	assert.True(t, strings.HasPrefix(line, "b "))

	// No active node: the client is told so.
	p.SetBackend(Backend{})
	c3, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	line, err = bufio.NewReader(c3).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "421 4.3.2 no active node\r\n", line)
	c3.Close()

	// b refuses a connection without a header from the trusted proxy.
	p.SetBackend(Backend{Addr: b})
	c4, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	_, err = ask(t, bufio.NewReader(c4), c4, "forged")
	require.Error(t, err)
	c4.Close()

	require.NoError(t, p.Close())
	require.ErrorIs(t, <-served, ErrProxyClosed)
	assert.Zero(t, p.Stats().Active)
}
