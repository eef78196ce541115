package proxyproto

import (
	"bytes"
	"net/netip"
	"testing"
)

func BenchmarkAppendAndRead(b *testing.B) {
	h := Header{Command: Proxy, Source: netip.MustParseAddrPort("192.0.2.7:54321"), Destination: netip.MustParseAddrPort("198.51.100.1:143")}
	buf := make([]byte, 0, 64)
	r := bytes.NewReader(nil)
	b.ReportAllocs()
	for b.Loop() {
		out, err := h.AppendBinary(buf[:0])
		if err != nil {
			b.Fatal(err)
		}
		r.Reset(out)
		if _, err := Read(r); err != nil {
			b.Fatal(err)
		}
	}
}
