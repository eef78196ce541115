package failover

import (
	"io"
	"net"
	"testing"
)

// BenchmarkProxyConnection measures one client connection relayed through
// a Proxy with a PROXY v2 header: connect, 1 KiB each way, close.
func BenchmarkProxyConnection(b *testing.B) {
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer target.Close()
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 16+12+1024)
				io.ReadFull(c, buf)
				c.Write(buf[28:])
			}()
		}
	}()
	p := NewProxy(Backend{Addr: target.Addr().String(), SendProxy: true}, &ProxyOptions{Logger: quietLog()})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go p.Serve(ln)
	defer p.Close()
	msg := make([]byte, 1024)
	back := make([]byte, 1024)
	b.SetBytes(2048)
	for b.Loop() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		c.Write(msg)
		if _, err := io.ReadFull(c, back); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
