package quarantine

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	accessLinkKey  = []byte("0123456789abcdef0123456789abcdef")
	accessOtherKey = []byte("fedcba9876543210fedcba9876543210")
)

func TestReleaseTokenRoundTrip(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tok := ReleaseToken{ID: NewID(now), Rcpt: "Alice@Example.org", Expires: now.Add(7*24*time.Hour + 500*time.Millisecond)}
	s, err := tok.Sign(accessLinkKey)
	require.NoError(t, err)
	assert.NotContains(t, s, "=", "no padding")
	assert.NotContains(t, s, "/", "URL-safe")
	assert.NotContains(t, s, "+", "URL-safe")

	got, err := ParseReleaseToken(accessLinkKey, s, now)
	require.NoError(t, err)
	assert.Equal(t, tok.ID, got.ID)
	assert.Equal(t, tok.Rcpt, got.Rcpt)
	assert.True(t, got.Expires.Equal(tok.Expires.Truncate(time.Second)), "expiry kept to the second: %v", got.Expires)

	again, err := got.Sign(accessLinkKey)
	require.NoError(t, err)
	assert.Equal(t, s, again, "signing is deterministic")
}

// tamper returns tok with byte i of its decoded form changed.
func tamper(t *testing.T, tok string, i int) string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(tok)
	require.NoError(t, err)
	b[i%len(b)] ^= 0x01
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestParseReleaseTokenRefuses(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	exp := now.Add(time.Hour)
	sign := func(id, rcpt string, exp time.Time, key []byte) string {
		s, err := ReleaseToken{ID: id, Rcpt: rcpt, Expires: exp}.Sign(key)
		require.NoError(t, err)
		return s
	}
	good := sign("entry-1", "alice@example.org", exp, accessLinkKey)
	raw, err := base64.RawURLEncoding.DecodeString(good)
	require.NoError(t, err)

	// A token whose id is swapped for another entry's, MAC kept.
	swapped := strings.Replace(string(raw), "entry-1", "entry-2", 1)
	// A token for another recipient, MAC kept.
	otherRcpt := strings.Replace(string(raw), "alice@", "bobby@", 1)
	// A path trick: "../x" in place of the id (same length, MAC kept).
	pathTrick := strings.Replace(string(raw), "entry-1", "../x/..", 1)

	tests := []struct {
		name  string
		token string
		now   time.Time
	}{
		{"forged with another key", sign("entry-1", "alice@example.org", exp, accessOtherKey), now},
		{"tampered id", base64.RawURLEncoding.EncodeToString([]byte(swapped)), now},
		{"tampered recipient", base64.RawURLEncoding.EncodeToString([]byte(otherRcpt)), now},
		{"path trick id", base64.RawURLEncoding.EncodeToString([]byte(pathTrick)), now},
		{"tampered version", tamper(t, good, 0), now},
		{"tampered expiry", tamper(t, good, 8), now},
		{"tampered mac", tamper(t, good, len(raw)-1), now},
		{"truncated", good[:len(good)-4], now},
		{"extended", good + "AAAA", now},
		{"padding", good + "==", now},
		{"not base64", "not*base64!", now},
		{"standard base64 alphabet", strings.NewReplacer("-", "+", "_", "/").Replace(good) + "+/", now},
		{"empty", "", now},
		{"too long", strings.Repeat("A", 4096), now},
		{"expired exactly", good, exp},
		{"expired", good, exp.Add(time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseReleaseToken(accessLinkKey, tt.token, tt.now)
			assert.ErrorIs(t, err, ErrBadToken)
		})
	}

	t.Run("valid until expiry", func(t *testing.T) {
		got, err := ParseReleaseToken(accessLinkKey, good, exp.Add(-time.Second))
		require.NoError(t, err)
		assert.Equal(t, "entry-1", got.ID)
	})
}

func TestReleaseTokenSignRefuses(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	tests := []struct {
		name string
		tok  ReleaseToken
		key  []byte
	}{
		{"short key", ReleaseToken{ID: "a", Rcpt: "a@example.org", Expires: exp}, accessLinkKey[:31]},
		{"path trick id", ReleaseToken{ID: "../x", Rcpt: "a@example.org", Expires: exp}, accessLinkKey},
		{"slash in id", ReleaseToken{ID: "a/b", Rcpt: "a@example.org", Expires: exp}, accessLinkKey},
		{"empty id", ReleaseToken{Rcpt: "a@example.org", Expires: exp}, accessLinkKey},
		{"bad recipient", ReleaseToken{ID: "a", Rcpt: "not an address", Expires: exp}, accessLinkKey},
		{"no expiry", ReleaseToken{ID: "a", Rcpt: "a@example.org"}, accessLinkKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.tok.Sign(tt.key)
			assert.ErrorIs(t, err, ErrInvalid)
		})
	}
	_, err := ParseReleaseToken(accessLinkKey[:8], "x", exp)
	assert.ErrorIs(t, err, ErrInvalid, "a short key is a configuration error, not a bad token")
}

func FuzzParseReleaseToken(f *testing.F) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	good, err := ReleaseToken{ID: "entry-1", Rcpt: "alice@example.org", Expires: now.Add(time.Hour)}.Sign(accessLinkKey)
	require.NoError(f, err)
	f.Add(good)
	f.Add("")
	f.Add("AQ")
	f.Add(good[:20])
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseReleaseToken(accessLinkKey, s, now)
		if err != nil {
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("error %v is not ErrBadToken", err)
			}
			return
		}
		// Only tokens we signed parse, and they re-sign to themselves.
		again, err := tok.Sign(accessLinkKey)
		require.NoError(t, err)
		assert.Equal(t, s, again)
		assert.True(t, ValidID(tok.ID))
	})
}
