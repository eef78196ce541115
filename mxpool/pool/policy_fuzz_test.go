package pool

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// polFuzzRecipients are checked against every policy the fuzzers decode.
var polFuzzRecipients = []string{"alice@example.org", "x@catchall.test", "sales@example.org", "u1@d1.test", "nobody@nowhere.test"}

// polRequireSentinel fails unless err wraps one of the policy sentinels.
func polRequireSentinel(t *testing.T, err error) {
	t.Helper()
	for _, s := range []error{ErrPolicyFormat, ErrPolicyMalformed, ErrPolicyAuth, ErrPolicyDigest, ErrPolicyDelta} {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("error %v wraps no policy sentinel", err)
}

// FuzzDecodeSnapshot feeds arbitrary documents to DecodeSnapshot: it must
// refuse them with a sentinel or accept them and round-trip. As the fuzzer
// cannot forge a signature, the same content is then signed properly, so that
// validation and hashing are exercised too: a policy accepted must be a
// fixed point of Normalize.
func FuzzDecodeSnapshot(f *testing.F) {
	s, err := NewSnapshot(polTestPolicy(), 3, DefaultPool, polTestKey, time.Now())
	require.NoError(f, err)
	data, err := s.Encode()
	require.NoError(f, err)
	f.Add(data)
	f.Add([]byte(`{"format":2,"kind":"snapshot","version":1,"digest":"","pool":"default","key":"","issued":1,"sig":"","policy":{"domains":{"a.test":{"recipients":["b","a"]}}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		roundTrip := func(s *Snapshot) {
			enc, err := s.Encode()
			require.NoError(t, err)
			s2, err := DecodeSnapshot(enc, polTestTrust)
			require.NoError(t, err)
			require.Equal(t, s.Version, s2.Version)
			require.Equal(t, s.Digest, s2.Digest)
			enc2, err := s2.Encode()
			require.NoError(t, err)
			require.Equal(t, enc, enc2)
			for _, r := range polFuzzRecipients {
				require.Equal(t, s.Check(r), s2.Check(r), r)
			}
		}
		s, err := DecodeSnapshot(data, polTestTrust)
		if err != nil {
			polRequireSentinel(t, err)
		} else {
			roundTrip(s)
		}

		w, err := polDecodeWire(data)
		if err != nil || w.Policy == nil || w.Version == 0 {
			return
		}
		valid := polValidate(w.Policy) == nil
		var digest [32]byte
		if valid {
			digest = w.Policy.Digest()
		}
		signed := &Snapshot{Seal: sealWith(DefaultPool, w.Version, digest, polTestKey, time.Unix(0, 1)), Policy: w.Policy}
		enc, err := signed.Encode()
		require.NoError(t, err)
		s, err = DecodeSnapshot(enc, polTestTrust)
		if !valid {
			require.ErrorIs(t, err, ErrPolicyMalformed)
			return
		}
		require.NoError(t, err)
		roundTrip(s)
		c := s.Policy.Clone()
		require.NoError(t, c.Normalize(), "a policy in normal form normalises")
		require.Equal(t, s.Digest, c.Digest(), "normal form is a fixed point of Normalize")
	})
}

// FuzzDecodeDelta feeds arbitrary documents to the delta decoder: it must
// refuse them with a sentinel or accept them, round-trip them, and apply
// them without touching the base policy.
func FuzzDecodeDelta(f *testing.F) {
	base := polMustNormalize(f, polTestPolicy())
	next := base.Clone()
	require.NoError(f, next.AddRecipient("dan@example.org"))
	require.NoError(f, next.SetAlias("help@example.org", "dan@example.org"))
	next.Domains["new.test"] = &DomainPolicy{Recipients: []string{"a"}, SpamAction: SpamQuarantine}
	delete(next.Domains, "catchall.test")
	next.MaxMessageSize = 1
	data, err := json.Marshal(polWire{Format: SnapshotFormat, Kind: polKindDelta, From: 1, Version: 2,
		Digest: next.Digest().String(), Pool: DefaultPool, Key: "0011223344556677", Issued: 1, Sig: strings.Repeat("ab", 64), Changes: polDiff(base, next)})
	require.NoError(f, err)
	f.Add(data)
	f.Add([]byte(`{"format":2,"kind":"delta","from":1,"version":2,"digest":"00","pool":"default","key":"","issued":1,"sig":"00","changes":[{"op":"remove_domain","domain":"example.org"}]}`))
	baseDigest := base.Digest()
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := polDecodeDelta(data)
		if err != nil {
			polRequireSentinel(t, err)
			return
		}
		encode := func(d *polDelta) []byte {
			enc, err := json.Marshal(polWire{Format: SnapshotFormat, Kind: polKindDelta, From: d.From, Version: d.Seal.Version,
				Digest: d.Seal.Digest.String(), Pool: d.Seal.Pool, Key: d.Seal.KeyID, Issued: d.Seal.Issued.UnixNano(),
				Sig: hexs(d.Seal.Signature), Changes: d.Changes})
			require.NoError(t, err)
			return enc
		}
		enc := encode(d)
		d2, err := polDecodeDelta(enc)
		require.NoError(t, err)
		require.Equal(t, string(enc), string(encode(d2)))

		got, err := polApply(base, d.Changes)
		require.Equal(t, baseDigest, base.Digest(), "polApply modified its base")
		if err != nil {
			require.ErrorIs(t, err, ErrPolicyDelta)
			return
		}
		if polValidate(got) != nil {
			return // a publisher never makes it; the digest check refuses it
		}
		again, err := polApply(base, polDiff(base, got))
		require.NoError(t, err)
		require.Equal(t, got.Digest(), again.Digest())
	})
}

// FuzzCheck checks arbitrary recipients: Check never panics, its code
// matches its action, and an address's normal form gets the same answer
// and is its own normal form.
func FuzzCheck(f *testing.F) {
	p := polMustNormalize(f, polTestPolicy())
	for _, r := range polParityRecipients {
		f.Add(r)
	}
	f.Fuzz(func(t *testing.T, rcpt string) {
		v := p.Check(rcpt)
		switch v.Action {
		case ActionAccept:
			assert.Equal(t, 250, v.Code)
		case ActionReject:
			assert.True(t, v.Code >= 500 && v.Code < 600 && v.EnhancedCode[0] == '5', "%+v", v)
		default:
			t.Fatalf("no action: %+v", v)
		}
		assert.NotContains(t, v.Reason, "\r")
		assert.NotContains(t, v.Reason, "\n")
		if v.Addr != "" && len(v.Addr) <= MaxAddressLen && strings.LastIndexByte(v.Addr, '@') <= MaxLocalLen {
			w := p.Check(v.Addr)
			assert.Equal(t, v.Action, w.Action, "%q vs %q", rcpt, v.Addr)
			assert.Equal(t, v.Code, w.Code, "%q vs %q", rcpt, v.Addr)
			assert.Equal(t, v.Addr, w.Addr, "%q vs %q", rcpt, v.Addr)
		}
		if at := strings.LastIndexByte(rcpt, '@'); at >= 0 {
			if d, err := polDomainToASCII(rcpt[at+1:]); err == nil {
				d2, err := polDomainToASCII(d)
				require.NoError(t, err, "%q", d)
				assert.Equal(t, d, d2)
				assert.True(t, polValidDomain(d))
			}
			if l, err := polNormLocal(rcpt[:at]); err == nil {
				assert.True(t, polValidLocal(l), "%q normalises to %q, which is not in normal form", rcpt[:at], l)
			}
		}
	})
}
