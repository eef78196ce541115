package backup

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"strings"
)

// A Target stores a repository's blobs: named byte strings that are written
// whole and never modified in place (the lock is the one blob that its
// holder rewrites). A Target is safe for concurrent use.
//
// Names are relative slash-separated paths of lower-case letters, digits,
// '-', '_' and '.', with no empty, "." or ".." element and no element
// starting with '.' (see [ValidName]); a Target may refuse any other name
// with an error wrapping [ErrBadName].
type Target interface {
	// Put stores data under name, replacing any blob of that name. When it
	// returns nil the blob is on stable storage, whole; after a crash
	// during Put the name holds the old blob or the new one, never a part.
	Put(ctx context.Context, name string, data []byte) error
	// PutIfAbsent is Put that fails with an error wrapping [ErrExists],
	// storing nothing, when a blob of that name exists: of concurrent
	// callers at most one succeeds. The lock is built on it.
	PutIfAbsent(ctx context.Context, name string, data []byte) error
	// Get returns length bytes of the blob name from offset off, or every
	// byte from off when length is negative. A missing blob is an error
	// wrapping [ErrNotExist]; a range beyond the blob's end is an error.
	Get(ctx context.Context, name string, off, length int64) ([]byte, error)
	// List returns the blobs whose names start with prefix, in no
	// particular order.
	List(ctx context.Context, prefix string) ([]BlobInfo, error)
	// Delete removes the blob name durably; a missing blob is not an error.
	Delete(ctx context.Context, name string) error
}

// BlobInfo describes a stored blob.
type BlobInfo struct {
	Name string // as given to Put
	Size int64  // bytes
}

var (
	// ErrNotExist is wrapped by the errors of Target.Get for a missing blob
	// and of reads of a body the repository lacks; it wraps
	// fs.ErrNotExist.
	ErrNotExist = fmt.Errorf("backup: does not exist: %w", fs.ErrNotExist)
	// ErrExists is wrapped by the errors of Target.PutIfAbsent when the
	// name is taken.
	ErrExists = errors.New("backup: blob exists")
	// ErrBadName is wrapped by the errors of a Target for a name that
	// [ValidName] refuses.
	ErrBadName = errors.New("backup: bad blob name")
)

// ValidName checks a blob name against the rules of [Target].
func ValidName(name string) error {
	if name == "" || len(name) > 512 {
		return fmt.Errorf("%w: %q", ErrBadName, name)
	}
	for _, el := range strings.Split(name, "/") {
		if el == "" || el[0] == '.' {
			return fmt.Errorf("%w: %q", ErrBadName, name)
		}
		for i := 0; i < len(el); i++ {
			c := el[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
				return fmt.Errorf("%w: %q", ErrBadName, name)
			}
		}
	}
	return nil
}

// TargetOptions say how [NewTarget] reaches a served repository.
type TargetOptions struct {
	// Secret is the secret shared with the server (see [NewHandler]).
	Secret []byte
	// RootCAs, if not nil, verifies the server's certificate instead of
	// the system's roots (a private CA).
	RootCAs *x509.CertPool
	// Certificates are client certificates for mutual TLS.
	Certificates []tls.Certificate
}

// NewTarget returns the target at location: a [Remote] for an https://
// URL (http:// on loopback), else a [Folder] at that path.
func NewTarget(location string, opts *TargetOptions) (Target, error) {
	if !strings.HasPrefix(location, "https://") && !strings.HasPrefix(location, "http://") {
		return NewFolder(location)
	}
	var o TargetOptions
	if opts != nil {
		o = *opts
	}
	client := http.DefaultClient
	if o.RootCAs != nil || o.Certificates != nil {
		client = &http.Client{Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: o.RootCAs, Certificates: o.Certificates, MinVersion: tls.VersionTLS12},
			ForceAttemptHTTP2: true,
		}}
	}
	return NewRemote(location, o.Secret, client)
}
