package intake

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/resilmail/resilmail"
)

// A Signer signs a submitted message before it is queued. Sign reads msg,
// the message as the client sent it (the Received header this node adds is
// not part of it), to EOF, and returns header fields to put above it, each
// ending in CRLF. An error that came from reading msg is returned wrapped
// (%w); any other error refuses the message with 451 4.3.0, so that
// nothing leaves unsigned. Sign is safe for concurrent use.
type Signer interface {
	Sign(ctx context.Context, env resilmail.Envelope, msg io.Reader) (string, error)
}

// DKIMSigner signs messages with DKIM (RFC 6376; ed25519 keys, RFC 8463,
// or RSA keys of 1024 bits or more), relaxed/relaxed, sha256. It signs
// every message it is given, whatever its From: d= is Domain, so the
// signature aligns for DMARC only for senders of Domain. It is safe for
// concurrent use once its fields are set.
type DKIMSigner struct {
	// Domain is the signing domain (d=), whose DNS publishes the public
	// key at Selector._domainkey.Domain.
	Domain string
	// Selector is the key's selector (s=).
	Selector string
	// Key is the private key: ed25519.PrivateKey or *rsa.PrivateKey.
	Key crypto.Signer
	// HeaderKeys are the header fields signed (h=); nil means
	// DefaultDKIMHeaders.
	HeaderKeys []string
}

// DefaultDKIMHeaders are the header fields a DKIMSigner signs by default:
// RFC 6376 section 5.4.1's list. From, Subject, To, Cc, Date, Reply-To
// and the MIME fields appear twice (oversigning), so that a copy of one
// added on the way breaks the signature instead of being shown to the
// reader.
var DefaultDKIMHeaders = []string{
	"From", "From", "Reply-To", "Reply-To", "Subject", "Subject", "Date", "Date",
	"To", "To", "Cc", "Cc", "Message-ID", "In-Reply-To", "References",
	"MIME-Version", "MIME-Version", "Content-Type", "Content-Type",
	"Content-Transfer-Encoding", "Content-Transfer-Encoding",
	"Resent-Date", "Resent-From", "Resent-To", "Resent-Cc",
	"List-Id", "List-Help", "List-Unsubscribe", "List-Subscribe", "List-Post", "List-Owner", "List-Archive",
}

// ErrDKIMKey is returned by ParseDKIMKey for a key it cannot use.
var ErrDKIMKey = errors.New("intake: not a usable DKIM private key (want PEM PKCS#8 ed25519 or RSA, or PKCS#1 RSA, of 1024 bits or more)")

// ParseDKIMKey reads a private key in PEM: "PRIVATE KEY" (PKCS#8, ed25519
// or RSA) or "RSA PRIVATE KEY" (PKCS#1). Its errors never contain the key.
func ParseDKIMKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrDKIMKey)
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%w: PEM block %q", ErrDKIMKey, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: the PEM block does not parse", ErrDKIMKey)
	}
	switch k := key.(type) {
	case ed25519.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		if k.N.BitLen() < 1024 {
			return nil, fmt.Errorf("%w: RSA key of %d bits", ErrDKIMKey, k.N.BitLen())
		}
		return k, nil
	}
	return nil, fmt.Errorf("%w: key type %T", ErrDKIMKey, key)
}

// DKIMRecord returns the DNS TXT record that publishes key's public half
// at Selector._domainkey.Domain: "v=DKIM1; k=ed25519; p=..." or k=rsa.
func DKIMRecord(key crypto.Signer) (string, error) {
	switch pub := key.Public().(type) {
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub), nil
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", err
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	}
	return "", ErrDKIMKey
}

// Sign implements [Signer].
func (s *DKIMSigner) Sign(ctx context.Context, env resilmail.Envelope, msg io.Reader) (string, error) {
	keys := s.HeaderKeys
	if keys == nil {
		keys = DefaultDKIMHeaders
	}
	sg, err := dkim.NewSigner(&dkim.SignOptions{
		Domain: s.Domain, Selector: s.Selector, Signer: s.Key, HeaderKeys: keys,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
	})
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(sg, &ctxReader{ctx: ctx, r: msg}); err != nil {
		sg.Close() // ends the signer's goroutine
		return "", fmt.Errorf("reading the message to sign: %w", err)
	}
	if err := sg.Close(); err != nil {
		return "", fmt.Errorf("DKIM signing: %w", err)
	}
	return sg.Signature(), nil
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// spoolThreshold is how much of a message being signed a session holds in
// memory before it spools the rest to a file.
const spoolThreshold = 256 << 10

// spool keeps a copy of a message while it is signed: in memory up to
// spoolThreshold, the rest in a file of dir (in memory too when dir is "").
type spool struct {
	dir string
	mem bytes.Buffer
	f   *os.File
}

func (s *spool) Write(p []byte) (int, error) {
	if s.f == nil && (s.dir == "" || s.mem.Len()+len(p) <= spoolThreshold) {
		return s.mem.Write(p)
	}
	if s.f == nil {
		f, err := os.CreateTemp(s.dir, "submit-*")
		if err != nil {
			return 0, fmt.Errorf("spooling a message to sign: %w", err)
		}
		s.f = f
	}
	return s.f.Write(p)
}

// reader returns the whole message again.
func (s *spool) reader() (io.Reader, error) {
	if s.f == nil {
		return bytes.NewReader(s.mem.Bytes()), nil
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return io.MultiReader(bytes.NewReader(s.mem.Bytes()), s.f), nil
}

// remove deletes the spool file, if any.
func (s *spool) remove() {
	if s.f != nil {
		s.f.Close()
		os.Remove(s.f.Name())
		s.f = nil
	}
}
