package quarantine

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/resilmail/resilmail"
)

// A release link carries a token: what it authorises, signed with a key
// only the quarantine holds. The token is base64url (no padding) of
//
//	version (1 byte, tokenVersion)
//	expiry  (8 bytes, big-endian Unix seconds)
//	id      (1 byte length, then the entry id)
//	rcpt    (1 byte length, then the recipient)
//	mac     (16 bytes: HMAC-SHA256 truncated)
//
// where mac is computed over tokenDomain followed by every byte before it,
// so that a token cannot be mistaken for another signed object made with
// the same key.
const (
	tokenVersion = 1
	tokenDomain  = "resilmail quarantine release link v1\x00"
	tokenMACLen  = 16
	// MinLinkKeyLen is the shortest key accepted for signing release links.
	MinLinkKeyLen = 32
	// maxTokenLen bounds the encoded tokens parsed: the longest possible
	// one (64-byte id, 254-byte recipient) is well under it.
	maxTokenLen = 512
)

// A ReleaseToken is what a release link authorises: releasing entry ID to
// recipient Rcpt, and to nobody else, until Expires. It grants nothing
// else: not seeing other entries, not releasing to other recipients.
type ReleaseToken struct {
	ID      string
	Rcpt    string
	Expires time.Time
}

// Sign encodes t as a URL-safe string signed with key, which must be at
// least MinLinkKeyLen bytes of secret randomness. Expires is kept to the
// second, rounded down.
func (t ReleaseToken) Sign(key []byte) (string, error) {
	if len(key) < MinLinkKeyLen {
		return "", fmt.Errorf("%w: release link key of %d bytes, need %d", ErrInvalid, len(key), MinLinkKeyLen)
	}
	if !ValidID(t.ID) {
		return "", fmt.Errorf("%w: bad entry id %q", ErrInvalid, t.ID)
	}
	if err := resilmail.CheckAddress(t.Rcpt); err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if t.Expires.IsZero() {
		return "", fmt.Errorf("%w: release token without expiry", ErrInvalid)
	}
	b := make([]byte, 0, 1+8+1+len(t.ID)+1+len(t.Rcpt)+tokenMACLen)
	b = append(b, tokenVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(t.Expires.Unix()))
	b = append(b, byte(len(t.ID)))
	b = append(b, t.ID...)
	b = append(b, byte(len(t.Rcpt)))
	b = append(b, t.Rcpt...)
	b = append(b, tokenMAC(key, b)...)
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// ParseReleaseToken checks token against key and returns what it
// authorises. Any token that was not made by Sign with key, was altered,
// is malformed, or expired at or before now, is ErrBadToken; a key that
// is too short is ErrInvalid.
func ParseReleaseToken(key []byte, token string, now time.Time) (ReleaseToken, error) {
	if len(key) < MinLinkKeyLen {
		return ReleaseToken{}, fmt.Errorf("%w: release link key of %d bytes, need %d", ErrInvalid, len(key), MinLinkKeyLen)
	}
	if len(token) > maxTokenLen {
		return ReleaseToken{}, ErrBadToken
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil || len(b) < 1+8+1+1+1+tokenMACLen {
		return ReleaseToken{}, ErrBadToken
	}
	body, mac := b[:len(b)-tokenMACLen], b[len(b)-tokenMACLen:]
	if !hmac.Equal(mac, tokenMAC(key, body)) {
		return ReleaseToken{}, ErrBadToken
	}
	// Authentic from here on; the checks below catch only our own bugs.
	if body[0] != tokenVersion {
		return ReleaseToken{}, ErrBadToken
	}
	exp := int64(binary.BigEndian.Uint64(body[1:9]))
	rest := body[9:]
	id, rest, ok := lengthPrefixed(rest)
	if !ok {
		return ReleaseToken{}, ErrBadToken
	}
	rcpt, rest, ok := lengthPrefixed(rest)
	if !ok || len(rest) != 0 || !ValidID(id) || resilmail.CheckAddress(rcpt) != nil {
		return ReleaseToken{}, ErrBadToken
	}
	t := ReleaseToken{ID: id, Rcpt: rcpt, Expires: time.Unix(exp, 0)}
	if !now.Before(t.Expires) {
		return ReleaseToken{}, fmt.Errorf("%w: expired %s", ErrBadToken, t.Expires.UTC().Format(time.RFC3339))
	}
	return t, nil
}

// lengthPrefixed splits a one-byte length and that many bytes off b.
func lengthPrefixed(b []byte) (string, []byte, bool) {
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return "", nil, false
	}
	n := int(b[0])
	return string(b[1 : 1+n]), b[1+n:], true
}

func tokenMAC(key, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(tokenDomain))
	m.Write(body)
	return m.Sum(nil)[:tokenMACLen]
}
