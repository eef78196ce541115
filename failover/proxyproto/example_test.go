package proxyproto_test

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"

	"github.com/resilmail/resilmail/failover/proxyproto"
)

// A proxy on loopback sends a PROXY version 2 header before the client's
// data; the server's Listener trusts it, reads the header and reports the
// client's real address.
func Example() {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	ln := &proxyproto.Listener{
		Listener: tcp,
		Trusted:  []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	defer ln.Close()

	// The proxy: the header for a client at 192.0.2.7, then its first line.
	go func() {
		c, err := net.Dial("tcp", tcp.Addr().String())
		if err != nil {
			return
		}
		defer c.Close()
		h := proxyproto.Header{
			Command:     proxyproto.Proxy,
			Source:      netip.MustParseAddrPort("192.0.2.7:40000"),
			Destination: netip.MustParseAddrPort("198.51.100.1:25"),
		}
		b, _ := h.AppendBinary(nil)
		c.Write(append(b, "EHLO client.example.net\r\n"...))
	}()

	c, err := ln.Accept()
	if err != nil {
		panic(err)
	}
	defer c.Close()
	fmt.Println("client:", c.RemoteAddr())
	line := make([]byte, len("EHLO client.example.net\r\n"))
	if _, err := io.ReadFull(c, line); err != nil {
		panic(err)
	}
	fmt.Printf("data: %q\n", line)
	h, _ := c.(*proxyproto.Conn).Header()
	fmt.Println("destination:", h.Destination)
	// Output:
	// client: 192.0.2.7:40000
	// data: "EHLO client.example.net\r\n"
	// destination: 198.51.100.1:25
}
