package backup

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"os"

	"github.com/klauspost/compress/zstd"
)

// Blob kinds, the fourth byte of every sealed object; the kind is also
// authenticated, so an object cannot be passed off as another kind.
const (
	kindBody     = 'b'
	kindIndex    = 'i'
	kindChanges  = 'c'
	kindSnapshot = 's'
	kindLock     = 'l'
)

const (
	sealVersion   = 1
	sealHeaderLen = 5 // 'R' 'B' version kind flags
	flagZstd      = 1
	flagSealed    = 2 // AES-256-GCM
	nonceLen      = 12
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// MinKeyLen is the shortest key file content [ReadKeyFile] accepts.
const MinKeyLen = 32

// ReadKeyFile reads an operator's key from a file: at least [MinKeyLen]
// bytes (for example 64 hexadecimal digits from `openssl rand -hex 32`);
// surrounding white space is ignored. The repository's encryption key is
// derived from it with HKDF-SHA-256.
func ReadKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("backup: key file: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) < MinKeyLen {
		return nil, fmt.Errorf("backup: key file %s holds %d bytes, fewer than %d", path, len(b), MinKeyLen)
	}
	return b, nil
}

// codec seals and opens objects: zstd compression, then AES-256-GCM when
// the repository is encrypted, or a CRC-32C when it is not.
type codec struct {
	aead  cipher.AEAD   // nil: not encrypted
	check string        // hex key check, stored in the config
	enc   *zstd.Encoder // bodies
	fast  *zstd.Encoder // manifests, indexes, changes: written on every run
	dec   *zstd.Decoder
}

func newCodec(key []byte, repoID string, level zstd.EncoderLevel) (*codec, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	fast, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(maxObject))
	if err != nil {
		return nil, err
	}
	c := &codec{enc: enc, fast: fast, dec: dec}
	if key != nil {
		master, err := hkdf.Key(sha256.New, key, []byte(repoID), "resilmail-backup 1 encryption", 32)
		if err != nil {
			return nil, err
		}
		block, err := aes.NewCipher(master)
		if err != nil {
			return nil, err
		}
		if c.aead, err = cipher.NewGCM(block); err != nil {
			return nil, err
		}
		m := hmac.New(sha256.New, master)
		m.Write([]byte("resilmail-backup key check"))
		c.check = hex.EncodeToString(m.Sum(nil)[:16])
	}
	return c, nil
}

// maxObject bounds a decompressed object.
const maxObject = 1 << 30

// seal encodes payload as an object of kind: header, then either
// nonce+GCM(zstd(payload)) or zstd(payload)+CRC-32C. compress false
// stores the payload as it is (a body that zstd does not shrink).
func (c *codec) seal(kind byte, payload []byte, compress bool) []byte {
	flags := byte(0)
	data := payload
	if compress {
		enc := c.fast
		if kind == kindBody {
			enc = c.enc
		}
		z := enc.EncodeAll(payload, make([]byte, 0, len(payload)/2+64))
		if len(z) < len(payload) {
			data, flags = z, flagZstd
		}
	}
	hdr := []byte{'R', 'B', sealVersion, kind, flags}
	if c.aead != nil {
		hdr[4] |= flagSealed
		out := make([]byte, 0, sealHeaderLen+nonceLen+len(data)+c.aead.Overhead())
		out = append(out, hdr...)
		nonce := make([]byte, nonceLen)
		rand.Read(nonce)
		out = append(out, nonce...)
		return c.aead.Seal(out, nonce, data, hdr)
	}
	out := make([]byte, 0, sealHeaderLen+len(data)+4)
	out = append(out, hdr...)
	out = append(out, data...)
	return binary.BigEndian.AppendUint32(out, crc32.Checksum(out, crcTable))
}

// ErrCorrupt is wrapped by the errors for an object or a body that fails
// its check: a bad checksum or authentication tag, a body that does not
// hash to its digest, a manifest that does not decode.
var ErrCorrupt = errors.New("backup: corrupt")

// ErrWrongKey is returned when the key given does not open the repository,
// or when an encrypted repository is opened without a key.
var ErrWrongKey = errors.New("backup: wrong key")

// open checks and decodes an object of kind.
func (c *codec) open(kind byte, b []byte) ([]byte, error) { return c.openInto(kind, b, nil) }

// openInto is open decoding into dst's memory when it is large enough
// (a buffer the caller reuses).
func (c *codec) openInto(kind byte, b, dst []byte) ([]byte, error) {
	if len(b) < sealHeaderLen || b[0] != 'R' || b[1] != 'B' {
		return nil, fmt.Errorf("%w: not a backup object", ErrCorrupt)
	}
	if b[2] != sealVersion {
		return nil, fmt.Errorf("%w: %w: object version %d (damaged, or written by another build, which reads %d)", ErrCorrupt, ErrFormat, b[2], sealVersion)
	}
	if b[3] != kind {
		return nil, fmt.Errorf("%w: object of kind %q, want %q", ErrCorrupt, b[3], kind)
	}
	flags := b[4]
	var data []byte
	switch {
	case flags&flagSealed != 0:
		if c.aead == nil {
			return nil, fmt.Errorf("%w: the object is encrypted and no key was given", ErrWrongKey)
		}
		if len(b) < sealHeaderLen+nonceLen+c.aead.Overhead() {
			return nil, fmt.Errorf("%w: encrypted object of %d bytes", ErrCorrupt, len(b))
		}
		nonce := b[sealHeaderLen : sealHeaderLen+nonceLen]
		var err error
		data, err = c.aead.Open(nil, nonce, b[sealHeaderLen+nonceLen:], b[:sealHeaderLen])
		if err != nil {
			return nil, fmt.Errorf("%w: authentication failed", ErrCorrupt)
		}
	default:
		if c.aead != nil {
			return nil, fmt.Errorf("%w: an unencrypted object in an encrypted repository", ErrCorrupt)
		}
		if len(b) < sealHeaderLen+4 {
			return nil, fmt.Errorf("%w: object of %d bytes", ErrCorrupt, len(b))
		}
		n := len(b) - 4
		if crc32.Checksum(b[:n], crcTable) != binary.BigEndian.Uint32(b[n:]) {
			return nil, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
		}
		data = b[sealHeaderLen:n]
	}
	if flags&^(flagZstd|flagSealed) != 0 {
		return nil, fmt.Errorf("%w: unknown object flags %#x", ErrCorrupt, flags)
	}
	if flags&flagZstd != 0 {
		out, err := c.dec.DecodeAll(data, dst[:0])
		if err != nil {
			return nil, fmt.Errorf("%w: decompress: %w", ErrCorrupt, err)
		}
		return out, nil
	}
	if dst != nil {
		return append(dst[:0], data...), nil
	}
	return bytes.Clone(data), nil
}
