package intake_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue/intake"
)

// FuzzParseDKIMKey: any input is a key or ErrDKIMKey, never a panic, and
// the error never repeats the input.
func FuzzParseDKIMKey(f *testing.F) {
	for _, key := range dkimKeys(f) {
		der, _ := x509.MarshalPKCS8PrivateKey(key)
		f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	}
	f.Add([]byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"))
	f.Add([]byte("not a key"))
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := intake.ParseDKIMKey(data)
		if err != nil {
			if key != nil {
				t.Fatal("a key and an error")
			}
			if len(data) >= 16 && strings.Contains(err.Error(), string(data)) {
				t.Fatalf("the error repeats the input: %v", err)
			}
			return
		}
		if _, err := intake.DKIMRecord(key); err != nil {
			t.Fatalf("a parsed key has no record: %v", err)
		}
	})
}

// BenchmarkDKIMSign signs messages of 4 KiB and 1 MiB with each key kind:
// the cost a submission adds before its 250.
func BenchmarkDKIMSign(b *testing.B) {
	for _, name := range []string{"ed25519", "rsa"} {
		key := dkimKeys(b)[name]
		s := &intake.DKIMSigner{Domain: "example.org", Selector: "sel", Key: key}
		for _, size := range []int{4 << 10, 1 << 20} {
			msg := []byte("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: bench\r\nDate: Mon, 07 Dec 2026 18:00:00 +0000\r\nMessage-ID: <b@example.org>\r\n\r\n" +
				strings.Repeat("a line of the body of the message, long enough.\r\n", size/50))
			b.Run(fmt.Sprintf("%s/%dKiB", name, size>>10), func(b *testing.B) {
				b.SetBytes(int64(len(msg)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := s.Sign(context.Background(), resilmail.Envelope{}, bytes.NewReader(msg)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
