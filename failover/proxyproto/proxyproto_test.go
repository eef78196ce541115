package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRoundTrip(t *testing.T) {
	for _, h := range []Header{
		{Command: Proxy, Source: netip.MustParseAddrPort("192.0.2.7:54321"), Destination: netip.MustParseAddrPort("198.51.100.1:143")},
		{Command: Proxy, Source: netip.MustParseAddrPort("[2001:db8::1]:1000"), Destination: netip.MustParseAddrPort("[2001:db8::2]:993"), TLVs: []TLV{{Type: 0x04, Value: []byte{}}, {Type: 0xE0, Value: []byte("node-a")}}},
		{Command: Local},
	} {
		b, err := h.AppendBinary(nil)
		require.NoError(t, err)
		got, err := Parse(b)
		require.NoError(t, err)
		if len(h.TLVs) == 0 {
			h.TLVs = nil
		}
		assert.Equal(t, h, got)
		// Read leaves the data after the header.
		r := bytes.NewReader(append(b, "A1 NOOP\r\n"...))
		_, err = Read(r)
		require.NoError(t, err)
		rest, _ := io.ReadAll(r)
		assert.Equal(t, "A1 NOOP\r\n", string(rest))
	}
}

// TestKnownBytes checks the encoding against the layout of the
// specification's example (TCP over IPv4).
func TestKnownBytes(t *testing.T) {
	h := Header{Command: Proxy, Source: netip.MustParseAddrPort("127.0.0.1:1"), Destination: netip.MustParseAddrPort("127.0.0.2:2")}
	b, err := h.AppendBinary(nil)
	require.NoError(t, err)
	assert.Equal(t, "0d0a0d0a000d0a515549540a"+"21"+"11"+"000c"+"7f000001"+"7f000002"+"0001"+"0002", hex.EncodeToString(b))
}

func TestInvalid(t *testing.T) {
	good, _ := Header{Command: Proxy, Source: netip.MustParseAddrPort("127.0.0.1:1"), Destination: netip.MustParseAddrPort("127.0.0.2:2")}.AppendBinary(nil)
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for name, b := range map[string][]byte{
		"v1 text":         []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
		"smtp":            []byte("EHLO example.com\r\nQUIT\r\n"),
		"version 1":       mut(func(b []byte) []byte { b[12] = 0x11; return b }),
		"command 2":       mut(func(b []byte) []byte { b[12] = 0x22; return b }),
		"family 4":        mut(func(b []byte) []byte { b[13] = 0x41; return b }),
		"short addresses": mut(func(b []byte) []byte { b[15] = 4; return b[:20] }),
		"truncated":       good[:20],
		"tlv overrun":     mut(func(b []byte) []byte { b[15] = 15; return append(b, 0xE0, 0x00, 0x09) }),
		"too long":        mut(func(b []byte) []byte { b[14] = 0xff; return b }),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(b)
			require.ErrorIs(t, err, ErrHeader)
		})
	}
	_, err := Header{Command: Proxy, Source: netip.MustParseAddrPort("127.0.0.1:1"), Destination: netip.MustParseAddrPort("[::1]:2")}.AppendBinary(nil)
	require.ErrorIs(t, err, ErrHeader, "mixed families")
}

func FuzzParse(f *testing.F) {
	for _, h := range []Header{
		{Command: Proxy, Source: netip.MustParseAddrPort("192.0.2.7:54321"), Destination: netip.MustParseAddrPort("198.51.100.1:143")},
		{Command: Proxy, Source: netip.MustParseAddrPort("[2001:db8::1]:1000"), Destination: netip.MustParseAddrPort("[2001:db8::2]:993"), TLVs: []TLV{{Type: 0xE0, Value: []byte("x")}}},
		{Command: Local},
	} {
		b, _ := h.AppendBinary(nil)
		f.Add(b)
	}
	f.Add([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Parse(b)
		if err != nil {
			return
		}
		if h.Command == Proxy && h.Source.IsValid() {
			// A header with addresses encodes back to one that parses the
			// same (the family and TLVs round-trip).
			out, err := h.AppendBinary(nil)
			require.NoError(t, err)
			h2, err := Parse(out)
			require.NoError(t, err)
			assert.Equal(t, h, h2)
		}
	})
}

func TestListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	pl := &Listener{Listener: ln, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Timeout: 300 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	defer pl.Close()
	type result struct {
		remote string
		line   string
		err    error
	}
	got := make(chan result, 1)
	serve := func() {
		c, err := pl.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadString('\n')
		got <- result{c.RemoteAddr().String(), line, err}
	}

	// A valid header: the server sees the client's address, then its data.
	go serve()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	h, _ := Header{Command: Proxy, Source: netip.MustParseAddrPort("203.0.113.9:4444"), Destination: netip.MustParseAddrPort("127.0.0.1:143")}.AppendBinary(nil)
	c.Write(append(h, "a NOOP\n"...))
	r := <-got
	c.Close()
	require.NoError(t, r.err)
	assert.Equal(t, "203.0.113.9:4444", r.remote)
	assert.Equal(t, "a NOOP\n", r.line)

	// No header from a trusted source: refused, never guessed.
	go serve()
	c, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	c.Write([]byte("EHLO forged.example\r\n\r\n\r\n\r\n"))
	r = <-got
	c.Close()
	require.ErrorIs(t, r.err, ErrHeader)

	// A trusted source that sends nothing times out.
	go serve()
	c, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	r = <-got
	c.Close()
	require.Error(t, r.err)

	// An untrusted source's header is data.
	pl.Trusted = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	go serve()
	c, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	c.Write(append(h, "a NOOP\n"...))
	r = <-got
	c.Close()
	require.NoError(t, r.err)
	assert.Contains(t, r.remote, "127.0.0.1:")
	assert.True(t, bytes.HasPrefix([]byte(r.line), Signature[:2]), "the header reached the server as data")
}
