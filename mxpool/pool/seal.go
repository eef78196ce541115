package pool

// Seals: the publisher's signed, dated statement of which policy is the
// pool's current one, and what followers check it with.

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/resilmail/resilmail"
)

// DefaultPool is the pool name used when none is configured.
const DefaultPool = "default"

// maxPoolName is the longest pool name, in bytes.
const maxPoolName = 255

// A Seal is the publisher's ed25519 signature over the pool's name, the
// signing key's id, the time of signing and the version and digest of the
// policy: "in pool Pool, at time Issued, version Version with digest Digest
// is current". Every snapshot and delta carries the seal of the policy it
// produces, and the publisher seals its current version again at least
// every PublisherOptions.ResealEvery, even without a change, so a follower
// can tell a live publisher from a recording of one (see
// [FollowerOptions.StaleAfter]).
type Seal struct {
	// Pool names the pool the policy belongs to: a seal made for one
	// pool is refused by another's followers even under the same key.
	Pool string
	// Version and Digest identify the policy.
	Version uint64
	Digest  resilmail.Digest
	// KeyID is the [KeyID] of the key that made Signature.
	KeyID string
	// Issued is when the publisher made the seal, to the nanosecond.
	Issued time.Time
	// Signature is the ed25519 signature of the seal's message (see
	// SnapshotFormat).
	Signature []byte
}

// KeyID names an ed25519 public key in seals: the hex encoding of the
// first 8 bytes of its SHA-256.
func KeyID(pub ed25519.PublicKey) string {
	h := sha256.Sum256(pub)
	return hex.EncodeToString(h[:8])
}

// Trust is what a node checks seals with: the pool's name and the
// publisher's public keys that it accepts. It holds one key normally and
// two while the publisher's key is replaced: add the new public key to
// every follower, then give the publisher its new private key
// ([Publisher.Rotate]), then remove the old public key.
type Trust struct {
	// Pool is the pool's name; empty means DefaultPool.
	Pool string
	// Keys are the accepted public keys.
	Keys []ed25519.PublicKey
}

func (t Trust) pool() string {
	if t.Pool == "" {
		return DefaultPool
	}
	return t.Pool
}

func (t Trust) check() error {
	if err := checkPoolName(t.pool()); err != nil {
		return err
	}
	if len(t.Keys) == 0 {
		return errors.New("pool: no public key to check the publisher's signature with (Publisher.PublicKey gives it)")
	}
	for _, k := range t.Keys {
		if len(k) != ed25519.PublicKeySize {
			return errors.New("pool: a trusted key is not an ed25519 public key")
		}
	}
	return nil
}

func checkPoolName(p string) error {
	if p == "" || len(p) > maxPoolName {
		return fmt.Errorf("pool: pool name must be 1 to %d bytes", maxPoolName)
	}
	for i := 0; i < len(p); i++ {
		if p[i] <= ' ' || p[i] >= 0x7f {
			return fmt.Errorf("pool: pool name %q: printable ASCII without spaces only", p)
		}
	}
	return nil
}

// verify checks that s is signed by one of t's keys for t's pool.
func (t Trust) verify(s *Seal) error {
	if s.Pool != t.pool() {
		return fmt.Errorf("%w: version %d is sealed for pool %q, this node is in pool %q", ErrPolicyAuth, s.Version, s.Pool, t.pool())
	}
	if len(s.Signature) != ed25519.SignatureSize {
		return fmt.Errorf("%w: version %d is not signed", ErrPolicyAuth, s.Version)
	}
	for _, k := range t.Keys {
		if KeyID(k) != s.KeyID {
			continue
		}
		if !ed25519.Verify(k, s.message(), s.Signature) {
			return fmt.Errorf("%w: bad signature for version %d by key %s", ErrPolicyAuth, s.Version, s.KeyID)
		}
		return nil
	}
	return fmt.Errorf("%w: version %d is signed by key %s, which is not trusted", ErrPolicyAuth, s.Version, s.KeyID)
}

// sealWith makes the seal of version and digest in pool, at issued, with
// key.
func sealWith(pool string, version uint64, d resilmail.Digest, key ed25519.PrivateKey, issued time.Time) Seal {
	s := Seal{Pool: pool, Version: version, Digest: d, KeyID: KeyID(key.Public().(ed25519.PublicKey)), Issued: time.Unix(0, issued.UnixNano())}
	s.Signature = ed25519.Sign(key, s.message())
	return s
}

// message is what the signature covers (see SnapshotFormat).
func (s *Seal) message() []byte {
	b := make([]byte, 0, 128+len(s.Pool))
	b = append(b, "resilmail/mxpool seal\x00"...)
	b = binary.BigEndian.AppendUint32(b, SnapshotFormat)
	b = append(b, byte(len(s.Pool)))
	b = append(b, s.Pool...)
	b = append(b, byte(len(s.KeyID)))
	b = append(b, s.KeyID...)
	b = binary.BigEndian.AppendUint64(b, uint64(s.Issued.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, s.Version)
	return append(b, s.Digest[:]...)
}

// sealHeader is the HTTP header in which the publisher sends its current
// seal with every answer, including 304.
const sealHeader = "Mxpool-Seal"

// header encodes s for sealHeader, as URL query parameters.
func (s *Seal) header() string {
	v := url.Values{}
	v.Set("pool", s.Pool)
	v.Set("version", strconv.FormatUint(s.Version, 10))
	v.Set("digest", s.Digest.String())
	v.Set("key", s.KeyID)
	v.Set("issued", strconv.FormatInt(s.Issued.UnixNano(), 10))
	v.Set("sig", hex.EncodeToString(s.Signature))
	return v.Encode()
}

// parseSealHeader decodes what header encodes, without verifying it.
func parseSealHeader(h string) (*Seal, error) {
	if h == "" {
		return nil, fmt.Errorf("%w: no %s header", ErrPolicyAuth, sealHeader)
	}
	v, err := url.ParseQuery(h)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrPolicyMalformed, sealHeader, err)
	}
	s := &Seal{Pool: v.Get("pool"), KeyID: v.Get("key")}
	if s.Version, err = strconv.ParseUint(v.Get("version"), 10, 64); err != nil {
		return nil, fmt.Errorf("%w: %s: bad version", ErrPolicyMalformed, sealHeader)
	}
	if s.Digest, err = resilmail.ParseDigest(v.Get("digest")); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrPolicyMalformed, sealHeader, err)
	}
	ns, err := strconv.ParseInt(v.Get("issued"), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: bad issue time", ErrPolicyMalformed, sealHeader)
	}
	s.Issued = time.Unix(0, ns)
	if s.Signature, err = hex.DecodeString(v.Get("sig")); err != nil {
		return nil, fmt.Errorf("%w: %s: bad signature encoding", ErrPolicyMalformed, sealHeader)
	}
	return s, nil
}
