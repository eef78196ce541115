// Package proxyproto encodes and decodes the PROXY protocol version 2
// header (HAProxy's doc/proxy-protocol.txt): the binary block that a proxy
// sends before a connection's first byte to tell the server the client's
// real address.
//
// A server must accept the header only from proxies it trusts, must not
// guess whether one is present, and must read a complete, valid header
// before processing the connection: [Listener] does so for the sources it
// is told to trust and passes other connections through untouched.
//
// Read consumes exactly the header's bytes and never more, so the
// connection's own data is left for the server. Headers longer than
// [MaxLen] are refused.
//
// A server trusting a proxy on loopback:
//
//	ln := &proxyproto.Listener{Listener: tcp, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
//	c, _ := ln.Accept()
//	c.RemoteAddr() // the client's address from the proxy's header
package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Signature starts every version 2 header.
var Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// MaxLen is the longest address-and-TLV block Read accepts (a header is 16
// bytes more).
const MaxLen = 2048

// ErrHeader is returned (wrapped, with what is wrong) for a header that is
// not a valid version 2 header.
var ErrHeader = errors.New("proxyproto: invalid header")

// A Command says whether the header carries addresses.
type Command uint8

const (
	// Local: the proxy's own connection (a health check); the receiver
	// uses the real endpoints.
	Local Command = 0
	// Proxy: the connection is relayed for Source.
	Proxy Command = 1
)

// A TLV is one type-length-value extension of a header.
type TLV struct {
	Type  uint8
	Value []byte
}

// A Header is a decoded version 2 header. Source and Destination are
// valid for Proxy headers over TCP (IPv4 or IPv6); they are the zero
// value otherwise (LOCAL, UNSPEC, UNIX or datagram headers).
type Header struct {
	Command     Command
	Source      netip.AddrPort
	Destination netip.AddrPort
	TLVs        []TLV
}

const (
	famUnspec = 0x00
	famTCP4   = 0x11
	famTCP6   = 0x21
)

// AppendBinary appends the encoded header to b. A Proxy header needs a
// source and destination of the same family.
func (h Header) AppendBinary(b []byte) ([]byte, error) {
	var addr []byte
	fam := byte(famUnspec)
	switch h.Command {
	case Local:
	case Proxy:
		s, d := h.Source.Addr().Unmap(), h.Destination.Addr().Unmap()
		switch {
		case s.Is4() && d.Is4():
			fam = famTCP4
			addr = append(addr, s.AsSlice()...)
			addr = append(addr, d.AsSlice()...)
		case s.Is6() && d.Is6():
			fam = famTCP6
			addr = append(addr, s.AsSlice()...)
			addr = append(addr, d.AsSlice()...)
		default:
			return b, fmt.Errorf("%w: source %v and destination %v are not both IPv4 or both IPv6", ErrHeader, h.Source, h.Destination)
		}
		addr = binary.BigEndian.AppendUint16(addr, h.Source.Port())
		addr = binary.BigEndian.AppendUint16(addr, h.Destination.Port())
	default:
		return b, fmt.Errorf("%w: command %d", ErrHeader, h.Command)
	}
	for _, t := range h.TLVs {
		if len(t.Value) > 0xffff {
			return b, fmt.Errorf("%w: TLV %#x of %d bytes", ErrHeader, t.Type, len(t.Value))
		}
		addr = append(addr, t.Type)
		addr = binary.BigEndian.AppendUint16(addr, uint16(len(t.Value)))
		addr = append(addr, t.Value...)
	}
	if len(addr) > MaxLen {
		return b, fmt.Errorf("%w: %d bytes of addresses and TLVs (at most %d)", ErrHeader, len(addr), MaxLen)
	}
	b = append(b, Signature...)
	b = append(b, 0x20|byte(h.Command), fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(addr)))
	return append(b, addr...), nil
}

// Read reads one version 2 header from r, consuming exactly its bytes.
func Read(r io.Reader) (Header, error) {
	var fixed [16]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return Header{}, fmt.Errorf("%w: connection ended in the header", ErrHeader)
		}
		return Header{}, err
	}
	if !bytes.Equal(fixed[:12], Signature) {
		return Header{}, fmt.Errorf("%w: no version 2 signature", ErrHeader)
	}
	n := int(binary.BigEndian.Uint16(fixed[14:]))
	if n > MaxLen {
		return Header{}, fmt.Errorf("%w: %d bytes of addresses and TLVs (at most %d)", ErrHeader, n, MaxLen)
	}
	rest := make([]byte, n)
	if _, err := io.ReadFull(r, rest); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return Header{}, fmt.Errorf("%w: connection ended in the header", ErrHeader)
		}
		return Header{}, err
	}
	return parse(fixed[12], fixed[13], rest)
}

// Parse decodes a header that b holds entirely (and nothing after it).
func Parse(b []byte) (Header, error) {
	if len(b) < 16 {
		return Header{}, fmt.Errorf("%w: %d bytes", ErrHeader, len(b))
	}
	h, err := Read(bytes.NewReader(b))
	if err == nil && int(binary.BigEndian.Uint16(b[14:]))+16 != len(b) {
		return Header{}, fmt.Errorf("%w: %d bytes after the header", ErrHeader, len(b)-16-int(binary.BigEndian.Uint16(b[14:])))
	}
	return h, err
}

func parse(verCmd, fam byte, rest []byte) (Header, error) {
	if verCmd>>4 != 2 {
		return Header{}, fmt.Errorf("%w: version %d", ErrHeader, verCmd>>4)
	}
	h := Header{Command: Command(verCmd & 0x0f)}
	if h.Command > Proxy {
		return Header{}, fmt.Errorf("%w: command %d", ErrHeader, h.Command)
	}
	var alen int
	switch fam >> 4 {
	case 0:
	case 1:
		alen = 12
	case 2:
		alen = 36
	case 3:
		alen = 216
	default:
		return Header{}, fmt.Errorf("%w: address family %d", ErrHeader, fam>>4)
	}
	if fam&0x0f > 2 {
		return Header{}, fmt.Errorf("%w: transport %d", ErrHeader, fam&0x0f)
	}
	if len(rest) < alen {
		return Header{}, fmt.Errorf("%w: %d bytes for addresses of family %#x", ErrHeader, len(rest), fam)
	}
	if h.Command == Proxy && (fam == famTCP4 || fam == famTCP6) {
		k := (alen - 4) / 2
		s, _ := netip.AddrFromSlice(rest[:k])
		d, _ := netip.AddrFromSlice(rest[k : 2*k])
		h.Source = netip.AddrPortFrom(s, binary.BigEndian.Uint16(rest[2*k:]))
		h.Destination = netip.AddrPortFrom(d, binary.BigEndian.Uint16(rest[2*k+2:]))
	}
	for t := rest[alen:]; len(t) > 0; {
		if len(t) < 3 {
			return Header{}, fmt.Errorf("%w: truncated TLV", ErrHeader)
		}
		l := int(binary.BigEndian.Uint16(t[1:]))
		if len(t) < 3+l {
			return Header{}, fmt.Errorf("%w: TLV %#x of %d bytes overruns the header", ErrHeader, t[0], l)
		}
		h.TLVs = append(h.TLVs, TLV{Type: t[0], Value: bytes.Clone(t[3 : 3+l])})
		t = t[3+l:]
	}
	return h, nil
}
