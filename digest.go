package resilmail

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// A Digest is the SHA-256 of a message body. It names the body: two bodies
// with the same Digest are the same body, and a body that does not hash to
// its Digest is corrupt.
type Digest [sha256.Size]byte

// DigestOf returns the Digest of b.
func DigestOf(b []byte) Digest {
	return sha256.Sum256(b)
}

// String returns d as 64 lower-case hexadecimal digits.
func (d Digest) String() string {
	return hex.EncodeToString(d[:])
}

// IsZero reports whether d is the zero Digest (no body).
func (d Digest) IsZero() bool {
	return d == Digest{}
}

// MarshalText encodes d as by [Digest.String].
func (d Digest) MarshalText() ([]byte, error) {
	return []byte(d.String()), nil
}

// UnmarshalText decodes d from 64 hexadecimal digits.
func (d *Digest) UnmarshalText(b []byte) error {
	p, err := ParseDigest(string(b))
	if err != nil {
		return err
	}
	*d = p
	return nil
}

// ParseDigest parses 64 hexadecimal digits.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	if len(s) != 2*len(d) {
		return d, fmt.Errorf("resilmail: digest %q is not %d hex digits", s, 2*len(d))
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return d, fmt.Errorf("resilmail: digest %q: %w", s, err)
	}
	return d, nil
}

// A CorruptError reports a body whose content does not match its Digest.
type CorruptError struct {
	Want, Got Digest
	// Where says what was read: a file name, a record position.
	Where string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("resilmail: corrupt body at %s: digest %s, want %s", e.Where, e.Got, e.Want)
}
