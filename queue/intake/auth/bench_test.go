package auth_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue/intake"
	"github.com/resilmail/resilmail/queue/intake/auth"
)

// BenchmarkCheck authenticates a DKIM-signed 4 KiB message whose sender
// passes SPF and DMARC, each of its lookups (SPF TXT, DKIM key, DMARC
// record) going to the DNS server on loopback: the Resolver caches
// nothing, so this is the cost without a caching resolver in front.
func BenchmarkCheck(b *testing.B) {
	w := newWorld(b)
	a := w.auth(b, auth.Options{})
	text := strings.Repeat("A line of text in the body of a benchmark message.\r\n", 80)
	msg := []byte(w.sign(b, strings.Replace(message("Sender <sender@example.net>", "bench"), "Hello Alice.\r\n", text, 1)))
	env := &intake.ScanEnvelope{Envelope: resilmail.Envelope{ID: "b1", From: "sender@example.net", To: []resilmail.Recipient{{Addr: "alice@example.org"}}},
		ClientIP: netip.MustParseAddr("127.0.0.1"), HELO: "client.example.net"}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		r, err := a.Check(context.Background(), env, msg)
		if err != nil || r.DMARC.Value != "pass" || r.DKIM[0].Value != "pass" {
			b.Fatalf("%+v %v", r, err)
		}
	}
}
