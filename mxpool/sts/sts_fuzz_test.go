package sts

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzParseSTSPolicy checks that ParsePolicy never panics, that what it
// accepts obeys RFC 8461's limits, and that an accepted policy survives a
// round trip through String.
func FuzzParseSTSPolicy(f *testing.F) {
	f.Fuzz(func(t *testing.T, text []byte) {
		if len(text) > MaxPolicySize {
			return // MTASTS never parses more
		}
		p, err := ParsePolicy(text)
		if err != nil {
			if p != nil {
				t.Fatalf("policy %+v with error %v", p, err)
			}
			return
		}
		if !utf8.Valid(text) {
			t.Fatalf("accepted invalid UTF-8")
		}
		switch p.Mode {
		case Enforce, Testing:
			if len(p.MX) == 0 {
				t.Fatalf("mode %s without mx", p.Mode)
			}
		case None:
		default:
			t.Fatalf("mode %q", p.Mode)
		}
		if p.MaxAge < 0 || p.MaxAge > MaxPolicyAge || p.MaxAge%time.Second != 0 {
			t.Fatalf("max_age %v", p.MaxAge)
		}
		for i, mx := range p.MX {
			if mx != strings.ToLower(mx) || strings.LastIndexByte(mx, '*') > 0 || stsValidPattern(mx) != nil {
				t.Fatalf("bad mx pattern %q", mx)
			}
			if i >= 20 {
				continue // Match is linear in len(p.MX): keep the check linear
			}
			host := strings.TrimPrefix(mx, "*.")
			if mx != host {
				host = "x." + host
			}
			if !p.Match(host) || !p.Match(strings.ToUpper(host)+".") {
				t.Fatalf("pattern %q does not match %q", mx, host)
			}
		}
		q, err := ParsePolicy([]byte(p.String()))
		if err != nil {
			t.Fatalf("String output %q does not parse: %v", p.String(), err)
		}
		if q.Mode != p.Mode || q.MaxAge != p.MaxAge || strings.Join(q.MX, " ") != strings.Join(p.MX, " ") {
			t.Fatalf("round trip: %+v became %+v", p, q)
		}
	})
}

// FuzzParseSTSRecord checks that ParseRecord never panics, that an
// accepted id is 1 to 32 letters and digits, and that the id parses back
// from a minimal record.
func FuzzParseSTSRecord(f *testing.F) {
	f.Fuzz(func(t *testing.T, txt string) {
		id, err := ParseRecord(txt)
		if err != nil {
			if id != "" {
				t.Fatalf("id %q with error %v", id, err)
			}
			if !strings.HasPrefix(txt, "v=STSv1") && err != ErrNotRecord {
				t.Fatalf("record without v=STSv1: %v", err)
			}
			return
		}
		if !strings.HasPrefix(txt, "v=STSv1") || len(id) < 1 || len(id) > 32 || !stsAlnum(id) {
			t.Fatalf("accepted %q with id %q", txt, id)
		}
		if !strings.Contains(txt, "id="+id) {
			t.Fatalf("id %q not in %q", id, txt)
		}
		again, err := ParseRecord("v=STSv1; id=" + id + ";")
		if err != nil || again != id {
			t.Fatalf("id %q does not round-trip: %q, %v", id, again, err)
		}
	})
}
