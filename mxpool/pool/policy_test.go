package pool

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/mxpool"
)

var polTestSecret = []byte("0123456789abcdef-pool-secret")

// polTestKey seals the tests' policies; polTestTrust checks them.
var (
	polTestKey   = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	polTestTrust = Trust{Keys: []ed25519.PublicKey{polTestKey.Public().(ed25519.PublicKey)}}
	polOtherKey  = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize))
)

// polTestPolicy is a small pool policy used across the policy tests.
func polTestPolicy() *Policy {
	return &Policy{
		MaxMessageSize: 50 << 20,
		Routes:         []mxpool.Route{{Domain: "*", Host: "mail.internal:24", LMTP: true}},
		Domains: map[string]*DomainPolicy{
			"Example.ORG": {
				Recipients:    []string{"alice", "Bob", "jörg", "carol"},
				Aliases:       map[string][]string{"sales": {"alice@example.org", "Bob@EXAMPLE.org"}, "team": {"sales@example.org", "dave@elsewhere.test"}},
				Subaddress:    "+",
				SpamThreshold: 5,
			},
			"bücher.example": {
				Recipients: []string{"info"},
				SpamAction: SpamReject,
			},
			"catchall.test": {AcceptAll: true, SpamThreshold: 8.5, SpamAction: SpamDeliver},
		},
	}
}

func polMustNormalize(t testing.TB, p *Policy) *Policy {
	t.Helper()
	require.NoError(t, p.Normalize())
	return p
}

func TestDomainToASCII(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"example.org", "example.org"},
		{"EXAMPLE.Org", "example.org"},
		{"bücher.example", "xn--bcher-kva.example"},
		{"BÜCHER.example", "xn--bcher-kva.example"},
		{"xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example"},
		{"bücher。example", "xn--bcher-kva.example"},
		{"ドメイン名例.jp", "xn--eckwd4c7cu47r2wf.jp"},
		{"a-b.c0", "a-b.c0"},
		{"localhost", "localhost"},
	} {
		got, err := polDomainToASCII(tc.in)
		if assert.NoError(t, err, tc.in) {
			assert.Equal(t, tc.want, got, tc.in)
		}
	}
	for _, bad := range []string{
		"", ".", "example.org.", "a..b", "-a.org", "a-.org", "a_b.org", "a b.org", "ab--c.org",
		"xn--.org", "xn--a.org", "xn--Bcher-kva.example" + "\x00", "1.2.3.4",
		"xn--mnchen-3ya-.de", "xn---qdv.example", strings.Repeat("a", 64) + ".org", strings.Repeat("a.", 127) + "org",
		"bü cher.example", "\u0301b.org", "ex\xffample.org",
	} {
		_, err := polDomainToASCII(bad)
		assert.Error(t, err, "%q", bad)
	}
}

func TestNormalize(t *testing.T) {
	p := polMustNormalize(t, polTestPolicy())
	require.Contains(t, p.Domains, "example.org")
	require.Contains(t, p.Domains, "xn--bcher-kva.example")
	d := p.Domains["example.org"]
	assert.Equal(t, []string{"alice", "bob", "carol", "jörg"}, d.Recipients)
	assert.Equal(t, []string{"alice@example.org", "bob@example.org"}, d.Aliases["sales"])
	assert.Equal(t, SpamQuarantine, d.SpamAction)
	assert.Equal(t, SpamReject, p.Domains["xn--bcher-kva.example"].SpamAction)
	require.NoError(t, polValidate(p), "Normalize's output must be in normal form")

	for name, mutate := range map[string]func(p *Policy){
		"negative size": func(p *Policy) { p.MaxMessageSize = -1 },
		"bad domain":    func(p *Policy) { p.Domains["bad_domain.org"] = &DomainPolicy{} },
		"two spellings": func(p *Policy) { p.Domains["EXAMPLE.org"] = &DomainPolicy{} },
		"nil domain":    func(p *Policy) { p.Domains["x.org"] = nil },
		"bad local": func(p *Policy) {
			p.Domains["Example.ORG"].Recipients = append(p.Domains["Example.ORG"].Recipients, "a b")
		},
		"long local":        func(p *Policy) { p.Domains["Example.ORG"].Recipients = []string{strings.Repeat("x", 65)} },
		"alias+recipient":   func(p *Policy) { p.Domains["Example.ORG"].Aliases["ALICE"] = []string{"bob@example.org"} },
		"alias twice":       func(p *Policy) { p.Domains["Example.ORG"].Aliases["Sales"] = []string{"bob@example.org"} },
		"empty alias":       func(p *Policy) { p.Domains["Example.ORG"].Aliases["x"] = nil },
		"bad target":        func(p *Policy) { p.Domains["Example.ORG"].Aliases["x"] = []string{"nobody"} },
		"spam action":       func(p *Policy) { p.Domains["Example.ORG"].SpamAction = "drop" },
		"spam threshold":    func(p *Policy) { p.Domains["Example.ORG"].SpamThreshold = -1 },
		"subaddress":        func(p *Policy) { p.Domains["Example.ORG"].Subaddress = "@" },
		"two routes":        func(p *Policy) { p.Routes = append(p.Routes, mxpool.Route{Domain: "*", Host: "x"}) },
		"route host":        func(p *Policy) { p.Routes[0].Host = "a b" },
		"route domain":      func(p *Policy) { p.Routes[0].Domain = "-x" },
		"too many targets":  func(p *Policy) { p.Domains["Example.ORG"].Aliases["x"] = make([]string, MaxAliasTargets+1) },
		"quoted badly":      func(p *Policy) { p.Domains["Example.ORG"].Recipients = []string{`"a"b"`} },
		"control character": func(p *Policy) { p.Domains["Example.ORG"].Recipients = []string{"a\tb"} },
	} {
		p := polTestPolicy()
		mutate(p)
		assert.Error(t, p.Normalize(), name)
	}
}

func TestDigestCanonical(t *testing.T) {
	a := polMustNormalize(t, polTestPolicy())
	// The same content spelled differently and built in another order.
	b := polMustNormalize(t, &Policy{
		Domains: map[string]*DomainPolicy{
			"catchall.test":         {AcceptAll: true, SpamThreshold: 8.5, SpamAction: SpamDeliver},
			"XN--BCHER-KVA.example": {Recipients: []string{"INFO", "info"}, SpamAction: SpamReject},
			"example.org": {
				Recipients:    []string{"JÖRG", "carol", "bob", "alice", "Alice"},
				Aliases:       map[string][]string{"team": {"DAVE@elsewhere.test", "sales@EXAMPLE.org"}, "SALES": {"bob@example.org", "alice@example.org", "alice@example.org"}},
				Subaddress:    "++",
				SpamThreshold: 5,
				SpamAction:    SpamQuarantine,
			},
		},
		Routes:         []mxpool.Route{{Domain: "*", Host: "mail.internal:24", LMTP: true}},
		MaxMessageSize: 50 << 20,
	})
	require.Equal(t, a.Digest(), b.Digest())
	require.Equal(t, a.Digest(), a.Clone().Digest())

	// Every field counts.
	seen := map[string]string{a.Digest().String(): "original"}
	for name, mutate := range map[string]func(p *Policy){
		"size":          func(p *Policy) { p.MaxMessageSize++ },
		"route host":    func(p *Policy) { p.Routes[0].Host = "other:24" },
		"route lmtp":    func(p *Policy) { p.Routes[0].LMTP = false },
		"no routes":     func(p *Policy) { p.Routes = nil },
		"accept all":    func(p *Policy) { p.Domains["example.org"].AcceptAll = true },
		"subaddress":    func(p *Policy) { p.Domains["example.org"].Subaddress = "+-" },
		"threshold":     func(p *Policy) { p.Domains["example.org"].SpamThreshold = 5.5 },
		"action":        func(p *Policy) { p.Domains["example.org"].SpamAction = SpamDeliver },
		"recipient":     func(p *Policy) { p.Domains["example.org"].Recipients = p.Domains["example.org"].Recipients[1:] },
		"alias target":  func(p *Policy) { p.Domains["example.org"].Aliases["sales"] = []string{"alice@example.org"} },
		"alias removed": func(p *Policy) { delete(p.Domains["example.org"].Aliases, "team") },
		"domain":        func(p *Policy) { delete(p.Domains, "catchall.test") },
		"domain added":  func(p *Policy) { p.Domains["new.test"] = &DomainPolicy{SpamAction: SpamQuarantine} },
		"refuse":        func(p *Policy) { p.Domains["example.org"].SpamAction = SpamQuarantineRefuse },
		"scanner":       func(p *Policy) { p.Scanner = &ScannerProfile{Name: "rspamd"} },
		"scanner version": func(p *Policy) {
			p.Scanner = &ScannerProfile{Name: "rspamd", Version: "3.4"}
		},
		"scanner settings": func(p *Policy) {
			p.Scanner = &ScannerProfile{Name: "rspamd", Settings: "3.4"}
		},
		// Moving an entry between lists must not collide.
		"recipient moved": func(p *Policy) {
			p.Domains["example.org"].Recipients = []string{"alice", "bob", "carol"}
			p.Domains["catchall.test"].Recipients = []string{"jörg"}
		},
	} {
		c := a.Clone()
		mutate(c)
		d := c.Digest().String()
		assert.NotContains(t, seen, d, "%s gives the digest of %s", name, seen[d])
		seen[d] = name
	}
}

func TestScannerProfile(t *testing.T) {
	sp := &ScannerProfile{Name: "rspamd", Version: "3.4"}
	for scanner, want := range map[string]bool{
		"rspamd 3.4": true, "rspamd 3.4.1": true, "rspamd 3.40": false, "rspamd 3.5": false,
		"rspamd": false, "spamassassin 3.4": false, "": false,
	} {
		assert.Equal(t, want, sp.Matches(scanner), scanner)
	}
	assert.True(t, (&ScannerProfile{Name: "rspamd"}).Matches("rspamd 9"))
	assert.True(t, (*ScannerProfile)(nil).Matches("anything"))
	for _, bad := range []*ScannerProfile{{}, {Name: "a b"}, {Name: "rspamd", Settings: "x\n"}, {Name: strings.Repeat("x", 65)}} {
		assert.Error(t, (&Policy{Scanner: bad}).Normalize(), "%+v", bad)
	}
	p := &Policy{Scanner: sp, Domains: map[string]*DomainPolicy{"a.test": {}}}
	require.NoError(t, p.Normalize())
	assert.Equal(t, "rspamd 3.4", p.Clone().Scanner.String())
	assert.NotSame(t, p.Scanner, p.Clone().Scanner)
}

func TestIsSpam(t *testing.T) {
	for _, c := range []struct {
		threshold, score float64
		rejects, want    bool
	}{
		{0, 100, false, false}, {0, -1, true, true}, // no threshold: the scanner decides
		{5, 4.99, true, false}, {5, 5, false, true}, {5, 12, false, true},
	} {
		assert.Equal(t, c.want, (&DomainPolicy{SpamThreshold: c.threshold}).IsSpam(c.score, c.rejects), "%+v", c)
	}
	assert.True(t, (*DomainPolicy)(nil).IsSpam(0, true))
	assert.True(t, SpamReject.Refuses())
	assert.True(t, SpamQuarantineRefuse.Refuses())
	assert.False(t, SpamQuarantine.Refuses())
	assert.False(t, SpamDeliver.Refuses())
	assert.False(t, SpamAccept.Refuses())
}

func TestCheck(t *testing.T) {
	p := polMustNormalize(t, polTestPolicy())
	for _, tc := range []struct {
		rcpt    string
		action  Action
		code    int
		enh     string
		addr    string
		targets []string
	}{
		{"alice@example.org", ActionAccept, 250, "2.1.5", "alice@example.org", nil},
		{"<ALICE@Example.Org>", ActionAccept, 250, "2.1.5", "alice@example.org", nil},
		{`"alice"@example.org`, ActionAccept, 250, "2.1.5", "alice@example.org", nil},
		{"JÖRG@example.org", ActionAccept, 250, "2.1.5", "jörg@example.org", nil},
		{"alice+lists@example.org", ActionAccept, 250, "2.1.5", "alice+lists@example.org", nil},
		{"sales@example.org", ActionAccept, 250, "2.1.5", "sales@example.org", []string{"alice@example.org", "bob@example.org"}},
		{"team@example.org", ActionAccept, 250, "2.1.5", "team@example.org", []string{"alice@example.org", "bob@example.org", "dave@elsewhere.test"}},
		{"sales+x@example.org", ActionAccept, 250, "2.1.5", "sales+x@example.org", []string{"alice@example.org", "bob@example.org"}},
		{"postmaster@example.org", ActionAccept, 250, "2.1.5", "postmaster@example.org", nil},
		{"Postmaster", ActionAccept, 250, "2.1.5", "postmaster", nil},
		{"info@bücher.example", ActionAccept, 250, "2.1.5", "info@xn--bcher-kva.example", nil},
		{"INFO@BÜCHER.EXAMPLE", ActionAccept, 250, "2.1.5", "info@xn--bcher-kva.example", nil},
		{"info@xn--bcher-kva.example", ActionAccept, 250, "2.1.5", "info@xn--bcher-kva.example", nil},
		{"anything@catchall.test", ActionAccept, 250, "2.1.5", "anything@catchall.test", nil},
		{"mallory@example.org", ActionReject, 550, "5.1.1", "mallory@example.org", nil},
		{"+alice@example.org", ActionReject, 550, "5.1.1", "+alice@example.org", nil},
		{"alice-x@example.org", ActionReject, 550, "5.1.1", "alice-x@example.org", nil},
		{"alice@other.test", ActionReject, 550, "5.7.1", "alice@other.test", nil},
		{"alice@[192.0.2.1]", ActionReject, 550, "5.7.1", "", nil},
		{"alice", ActionReject, 553, "5.1.3", "", nil},
		{"@example.org", ActionReject, 553, "5.1.3", "", nil},
		{"a b@example.org", ActionReject, 553, "5.1.3", "", nil},
		{strings.Repeat("a", 65) + "@example.org", ActionReject, 553, "5.1.3", "", nil},
		{"alice@" + strings.Repeat("a", 250) + ".org", ActionReject, 553, "5.1.3", "", nil},
		{"alice@example.org.", ActionReject, 553, "5.1.2", "", nil},
		{"alice@exa_mple.org", ActionReject, 553, "5.1.2", "", nil},
		{"alice@", ActionReject, 553, "5.1.2", "", nil},
	} {
		v := p.Check(tc.rcpt)
		assert.Equal(t, tc.action, v.Action, tc.rcpt)
		assert.Equal(t, tc.code, v.Code, tc.rcpt)
		assert.Equal(t, tc.enh, v.EnhancedCode, tc.rcpt)
		assert.Equal(t, tc.addr, v.Addr, tc.rcpt)
		assert.Equal(t, tc.targets, v.Targets, tc.rcpt)
		assert.NotContains(t, v.Reason, "\n", tc.rcpt)
	}
	v := p.Check("anything@catchall.test")
	assert.Equal(t, 8.5, v.SpamThreshold)
	assert.Equal(t, SpamDeliver, v.SpamAction)
	assert.Equal(t, int64(50<<20), v.MaxMessageSize)
	assert.Equal(t, "250 2.1.5 recipient <anything@catchall.test> ok", v.String())

	// Stale answers: what depends on the policy being current defers.
	for _, tc := range []struct {
		rcpt string
		code int
		enh  string
	}{
		{"mallory@example.org", 450, "4.1.1"},
		{"alice@other.test", 450, "4.7.1"},
		{"alice@example.org", 250, "2.1.5"},
		{"alice@[192.0.2.1]", 550, "5.7.1"},
		{"alice", 553, "5.1.3"},
	} {
		v := polCheck(p, tc.rcpt, 7, true)
		assert.Equal(t, tc.code, v.Code, tc.rcpt)
		assert.Equal(t, tc.enh, v.EnhancedCode, tc.rcpt)
		assert.Equal(t, uint64(7), v.Version)
	}
	var none *Policy
	assert.Equal(t, 451, none.Check("alice@example.org").Code)

	// Alias loops end.
	q := polMustNormalize(t, &Policy{Domains: map[string]*DomainPolicy{"l.test": {
		Aliases: map[string][]string{"a": {"b@l.test"}, "b": {"a@l.test"}},
	}}})
	v = q.Check("a@l.test")
	assert.Equal(t, ActionAccept, v.Action)
	assert.Equal(t, []string{}, v.Targets)
}

func TestSnapshotRoundTrip(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	in := polTestPolicy()
	s, err := NewSnapshot(in, 42, DefaultPool, priv, time.Now())
	require.NoError(t, err)
	assert.Contains(t, in.Domains, "Example.ORG", "NewSnapshot must not modify its argument")
	data, err := s.Encode()
	require.NoError(t, err)
	got, err := DecodeSnapshot(data, Trust{Keys: []ed25519.PublicKey{pub}})
	require.NoError(t, err)
	assert.Equal(t, s.Version, got.Version)
	assert.Equal(t, s.Digest, got.Digest)
	assert.Equal(t, s.Seal, got.Seal)
	assert.Equal(t, s.Policy.Digest(), got.Policy.Digest())
	again, err := got.Encode()
	require.NoError(t, err)
	assert.Equal(t, data, again)

	_, err = NewSnapshot(in, 1, DefaultPool, nil, time.Now())
	assert.Error(t, err, "no key")
	_, err = NewSnapshot(in, 1, "bad pool", polTestKey, time.Now())
	assert.Error(t, err, "a pool name with a space")
	_, err = NewSnapshot(in, 0, DefaultPool, polTestKey, time.Now())
	assert.Error(t, err)
}

// polEdit decodes a snapshot's JSON, lets edit change it and encodes it.
func polEdit(t *testing.T, data []byte, edit func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // issue times in nanoseconds do not fit a float64
	require.NoError(t, dec.Decode(&m))
	edit(m)
	out, err := json.Marshal(m)
	require.NoError(t, err)
	return out
}

func TestDecodeSnapshotRefuses(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	s, err := NewSnapshot(polTestPolicy(), 5, DefaultPool, priv, time.Now())
	require.NoError(t, err)
	good, err := s.Encode()
	require.NoError(t, err)
	otherKey, err := NewSnapshot(polTestPolicy(), 5, DefaultPool, polOtherKey, time.Now())
	require.NoError(t, err)
	otherKeyData, err := otherKey.Encode()
	require.NoError(t, err)
	otherPool, err := NewSnapshot(polTestPolicy(), 5, "another", priv, time.Now())
	require.NoError(t, err)
	otherPoolData, err := otherPool.Encode()
	require.NoError(t, err)
	trust := Trust{Keys: []ed25519.PublicKey{pub}}
	domains := func(m map[string]any) map[string]any {
		return m["policy"].(map[string]any)["domains"].(map[string]any)
	}
	example := func(m map[string]any) map[string]any { return domains(m)["example.org"].(map[string]any) }

	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"not json", []byte("{not json"), ErrPolicyMalformed},
		{"empty", nil, ErrPolicyMalformed},
		{"no format", polEdit(t, good, func(m map[string]any) { delete(m, "format") }), ErrPolicyMalformed},
		{"future format", polEdit(t, good, func(m map[string]any) { m["format"] = 3; m["new_field"] = true }), ErrPolicyFormat},
		{"format 1 (HMAC)", polEdit(t, good, func(m map[string]any) { m["format"] = 1 }), ErrPolicyMalformed},
		{"unknown field", polEdit(t, good, func(m map[string]any) { m["extra"] = 1 }), ErrPolicyMalformed},
		{"trailing data", append(append([]byte{}, good...), []byte(" {}")...), ErrPolicyMalformed},
		{"delta kind", polEdit(t, good, func(m map[string]any) { m["kind"] = "delta" }), ErrPolicyMalformed},
		{"version 0", polEdit(t, good, func(m map[string]any) { m["version"] = 0 }), ErrPolicyMalformed},
		{"no policy", polEdit(t, good, func(m map[string]any) { delete(m, "policy") }), ErrPolicyMalformed},
		{"short sig", polEdit(t, good, func(m map[string]any) { m["sig"] = "abcd" }), ErrPolicyMalformed},
		{"no sig", polEdit(t, good, func(m map[string]any) { delete(m, "sig") }), ErrPolicyMalformed},
		{"no issue time", polEdit(t, good, func(m map[string]any) { delete(m, "issued") }), ErrPolicyMalformed},
		{"bad digest hex", polEdit(t, good, func(m map[string]any) { m["digest"] = "zz" }), ErrPolicyMalformed},
		{"untrusted key", otherKeyData, ErrPolicyAuth},
		{"untrusted key claiming the trusted id", polEdit(t, otherKeyData, func(m map[string]any) { m["key"] = KeyID(pub) }), ErrPolicyAuth},
		{"other pool", otherPoolData, ErrPolicyAuth},
		{"pool renamed", polEdit(t, good, func(m map[string]any) { m["pool"] = "another" }), ErrPolicyAuth},
		{"issue time moved", polEdit(t, good, func(m map[string]any) { n, _ := m["issued"].(json.Number).Int64(); m["issued"] = n + 1 }), ErrPolicyAuth},
		{"version raised", polEdit(t, good, func(m map[string]any) { m["version"] = 6 }), ErrPolicyAuth},
		{"digest replaced", polEdit(t, good, func(m map[string]any) { m["digest"] = strings.Repeat("00", 32) }), ErrPolicyAuth},
		{"recipient added", polEdit(t, good, func(m map[string]any) {
			example(m)["recipients"] = append(example(m)["recipients"].([]any), "zed")
		}), ErrPolicyDigest},
		{"domain added", polEdit(t, good, func(m map[string]any) {
			domains(m)["evil.test"] = map[string]any{"accept_all": true, "spam_action": "quarantine"}
		}), ErrPolicyDigest},
		{"upper-case recipient", polEdit(t, good, func(m map[string]any) { example(m)["recipients"] = []any{"Alice"} }), ErrPolicyMalformed},
		{"unsorted recipients", polEdit(t, good, func(m map[string]any) { example(m)["recipients"] = []any{"bob", "alice"} }), ErrPolicyMalformed},
		{"U-label domain", polEdit(t, good, func(m map[string]any) { domains(m)["bücher.example"] = domains(m)["xn--bcher-kva.example"] }), ErrPolicyMalformed},
		{"unknown spam action", polEdit(t, good, func(m map[string]any) { example(m)["spam_action"] = "drop" }), ErrPolicyMalformed},
		{"bad signature", polEdit(t, good, func(m map[string]any) { m["sig"] = strings.Repeat("00", 64) }), ErrPolicyAuth},
	} {
		_, err := DecodeSnapshot(tc.data, trust)
		assert.ErrorIs(t, err, tc.want, tc.name)
	}
	_, err = DecodeSnapshot(good, trust)
	require.NoError(t, err)
	_, err = DecodeSnapshot(good, Trust{Keys: []ed25519.PublicKey{polOtherKey.Public().(ed25519.PublicKey), pub}})
	require.NoError(t, err, "any trusted key will do (a rotation)")
}

// polRandomPolicy builds a random normalised policy over a small name space,
// so that two of them overlap.
func polRandomPolicy(t testing.TB, r *rand.Rand) *Policy {
	p := &Policy{Domains: map[string]*DomainPolicy{}, MaxMessageSize: int64(r.IntN(3))}
	if r.IntN(2) == 0 {
		p.Routes = []mxpool.Route{{Domain: "*", Host: fmt.Sprintf("h%d", r.IntN(2)), LMTP: r.IntN(2) == 0}}
	}
	for d := range 4 {
		if r.IntN(4) == 0 {
			continue
		}
		dp := &DomainPolicy{AcceptAll: r.IntN(5) == 0, SpamThreshold: float64(r.IntN(3)), Subaddress: []string{"", "+", "+-"}[r.IntN(3)]}
		for l := range 30 {
			switch r.IntN(4) {
			case 0:
				dp.Recipients = append(dp.Recipients, fmt.Sprintf("u%d", l))
			case 1:
				if dp.Aliases == nil {
					dp.Aliases = map[string][]string{}
				}
				dp.Aliases[fmt.Sprintf("u%d", l)] = []string{fmt.Sprintf("t%d@d%d.test", r.IntN(3), r.IntN(4))}
			}
		}
		dp.SpamAction = []SpamAction{"", SpamQuarantineRefuse, SpamReject, SpamDeliver, SpamAccept}[r.IntN(5)]
		p.Domains[fmt.Sprintf("d%d.test", d)] = dp
	}
	if n := r.IntN(4); n > 0 {
		p.Scanner = &ScannerProfile{Name: "rspamd", Version: []string{"", "3.4", "3.5"}[n-1], Settings: []string{"", "inbound"}[r.IntN(2)]}
	}
	return polMustNormalize(t, p)
}

func TestDiffApply(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		old, new := polRandomPolicy(t, r), polRandomPolicy(t, r)
		oldDigest := old.Digest()
		changes := polDiff(old, new)
		got, err := polApply(old, changes)
		require.NoError(t, err, "case %d", i)
		require.Equal(t, new.Digest(), got.Digest(), "case %d: %+v", i, changes)
		require.Equal(t, oldDigest, old.Digest(), "case %d: polApply modified its base", i)
		require.NoError(t, polValidate(got), "case %d", i)
		for j := range changes {
			require.NoError(t, changes[j].validate(), "case %d: %+v", i, changes[j])
		}
		if oldDigest == new.Digest() {
			assert.Empty(t, changes)
		}
	}
	// From nothing.
	p := polMustNormalize(t, polTestPolicy())
	got, err := polApply(nil, polDiff(nil, p))
	require.NoError(t, err)
	assert.Equal(t, p.Digest(), got.Digest())
}

func TestApplyDelta(t *testing.T) {
	base, err := NewSnapshot(polTestPolicy(), 3, DefaultPool, polTestKey, time.Now())
	require.NoError(t, err)
	next := base.Policy.Clone()
	require.NoError(t, next.AddRecipient("dan@example.org"))
	require.NoError(t, next.RemoveRecipient("carol@example.org"))
	want, err := NewSnapshot(next, 4, DefaultPool, polTestKey, time.Now())
	require.NoError(t, err)
	delta := &polDelta{From: 3, Seal: want.Seal, Changes: polDiff(base.Policy, next)}

	got, err := polApplyDelta(base, delta, polTestTrust)
	require.NoError(t, err)
	assert.Equal(t, want.Digest, got.Digest)
	assert.Equal(t, uint64(4), got.Version)
	assert.Equal(t, ActionAccept, got.Check("dan@example.org").Action)
	assert.Equal(t, ActionAccept, base.Check("carol@example.org").Action, "the base must be untouched")
	assert.Equal(t, ActionReject, got.Check("carol@example.org").Action)

	wrongFrom := *delta
	wrongFrom.From = 2
	_, err = polApplyDelta(base, &wrongFrom, polTestTrust)
	assert.ErrorIs(t, err, ErrPolicyDelta)

	_, err = polApplyDelta(base, delta, Trust{Keys: []ed25519.PublicKey{polOtherKey.Public().(ed25519.PublicKey)}})
	assert.ErrorIs(t, err, ErrPolicyAuth)
	_, err = polApplyDelta(base, delta, Trust{Pool: "another", Keys: polTestTrust.Keys})
	assert.ErrorIs(t, err, ErrPolicyAuth)

	// Changes that do not produce the declared digest.
	short := *delta
	short.Changes = delta.Changes[:1]
	_, err = polApplyDelta(base, &short, polTestTrust)
	assert.ErrorIs(t, err, ErrPolicyDigest)

	// Adding what exists.
	dup := *delta
	dup.Changes = []polChange{{Op: polOpAddRecipients, Domain: "example.org", Locals: []string{"alice"}}}
	_, err = polApplyDelta(base, &dup, polTestTrust)
	assert.ErrorIs(t, err, ErrPolicyDelta)

	// Wire round trip.
	data, err := json.Marshal(polWire{Format: SnapshotFormat, Kind: polKindDelta, From: 3, Version: 4,
		Digest: want.Digest.String(), Pool: want.Pool, Key: want.KeyID, Issued: want.Issued.UnixNano(),
		Sig: fmt.Sprintf("%x", want.Signature), Changes: delta.Changes})
	require.NoError(t, err)
	dec, err := polDecodeDelta(data)
	require.NoError(t, err)
	got, err = polApplyDelta(base, dec, polTestTrust)
	require.NoError(t, err)
	assert.Equal(t, want.Digest, got.Digest)
}

func TestDecodeDeltaRefuses(t *testing.T) {
	mk := func(from, to uint64, changes string) []byte {
		return []byte(fmt.Sprintf(`{"format":2,"kind":"delta","from":%d,"version":%d,"digest":"%s","pool":"default","key":"0011223344556677","issued":1,"sig":"%s","changes":%s}`,
			from, to, strings.Repeat("00", 32), strings.Repeat("11", 64), changes))
	}
	ok := `[{"op":"add_recipients","domain":"example.org","locals":["a","b"]}]`
	_, err := polDecodeDelta(mk(1, 2, ok))
	require.NoError(t, err)
	for name, data := range map[string][]byte{
		"backwards":       mk(2, 2, ok),
		"no changes":      mk(1, 2, `[]`),
		"unknown op":      mk(1, 2, `[{"op":"drop_table"}]`),
		"unsorted":        mk(1, 2, `[{"op":"add_recipients","domain":"example.org","locals":["b","a"]}]`),
		"upper case":      mk(1, 2, `[{"op":"add_recipients","domain":"example.org","locals":["A"]}]`),
		"bad domain":      mk(1, 2, `[{"op":"remove_domain","domain":"Example.org"}]`),
		"extra field":     mk(1, 2, `[{"op":"remove_domain","domain":"example.org","local":"a"}]`),
		"missing field":   mk(1, 2, `[{"op":"set_domain","domain":"example.org"}]`),
		"unknown field":   mk(1, 2, `[{"op":"remove_domain","domain":"example.org","x":1}]`),
		"negative size":   mk(1, 2, `[{"op":"set_global","max_message_size":-1}]`),
		"bad target":      mk(1, 2, `[{"op":"set_alias","domain":"example.org","local":"a","targets":["B@example.org"]}]`),
		"bad settings":    mk(1, 2, `[{"op":"set_domain","domain":"example.org","settings":{"spam_action":"x"}}]`),
		"snapshot fields": []byte(strings.Replace(string(mk(1, 2, ok)), `"changes"`, `"policy":{},"changes"`, 1)),
	} {
		_, err := polDecodeDelta(data)
		assert.ErrorIs(t, err, ErrPolicyMalformed, name)
	}
}

func TestPolicyEditing(t *testing.T) {
	p := polMustNormalize(t, polTestPolicy())
	require.NoError(t, p.AddRecipient("Zed@EXAMPLE.org"))
	require.NoError(t, p.AddRecipient("zed@example.org"))
	require.NoError(t, p.RemoveRecipient("Carol@example.org"))
	require.NoError(t, p.SetAlias("Help@example.org", "ZED@example.org", "alice@example.org"))
	require.NoError(t, p.RemoveAlias("team@example.org"))
	assert.Error(t, p.AddRecipient("sales@example.org"), "an alias")
	assert.Error(t, p.SetAlias("alice@example.org", "bob@example.org"), "a recipient")
	assert.Error(t, p.AddRecipient("x@unknown.test"))
	assert.Error(t, p.AddRecipient("not an address"))
	require.NoError(t, polValidate(p), "the helpers keep normal form")
	assert.Equal(t, ActionAccept, p.Check("zed@example.org").Action)
	assert.Equal(t, ActionReject, p.Check("carol@example.org").Action)
	assert.Equal(t, []string{"alice@example.org", "zed@example.org"}, p.Check("help@example.org").Targets)
	assert.Equal(t, ActionReject, p.Check("team@example.org").Action)
}

func TestEncodeMatchesEncodingJSON(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	odd := polMustNormalize(t, &Policy{Domains: map[string]*DomainPolicy{
		"a.test": {Recipients: []string{"a&b", "jörg", "x<y"[0:1], "ünï"}, Aliases: map[string][]string{"l": {"m&n@a.test"}}, Subaddress: "&+", SpamThreshold: 1e21},
		"b.test": {},
	}})
	policies := []*Policy{polMustNormalize(t, polTestPolicy()), odd, {}}
	r := rand.New(rand.NewPCG(3, 4))
	for range 50 {
		policies = append(policies, polRandomPolicy(t, r))
	}
	for i, p := range policies {
		for _, pool := range []string{DefaultPool, "a&<b>\\\"c"} {
			s := &Snapshot{Seal: sealWith(pool, uint64(i+1), p.Digest(), priv, time.Now()), Policy: p}
			got, err := s.Encode()
			require.NoError(t, err)
			want, err := json.Marshal(polWire{Format: SnapshotFormat, Kind: polKindSnapshot, Version: s.Version,
				Digest: s.Digest.String(), Pool: s.Pool, Key: s.KeyID, Issued: s.Issued.UnixNano(), Sig: fmt.Sprintf("%x", s.Signature), Policy: p})
			require.NoError(t, err)
			require.Equal(t, string(want), string(got), "policy %d", i)
		}
	}
}
