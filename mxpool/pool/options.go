package pool

import (
	"crypto/ed25519"
	"log/slog"
	"net/http"
	"time"
)

// PublisherOptions configure a [Publisher]. The zero value, or nil, gives
// the defaults.
type PublisherOptions struct {
	// Logger receives a line for each published version, each refused
	// request and each storage problem; nil means slog.Default().
	Logger *slog.Logger
	// Auth chooses how followers authenticate; zero is AuthToken.
	Auth AuthMode
	// MaxWait caps the wait a follower may ask for in a long poll; zero
	// means 60 seconds.
	MaxWait time.Duration
	// MaxHistory is how many versions of deltas the publisher keeps, so a
	// follower that far behind receives the changes rather than the whole
	// policy; zero means 1000, negative keeps none.
	MaxHistory int
	// MaxHistoryBytes caps the encoded size of the deltas kept; zero means
	// 8 MiB.
	MaxHistoryBytes int64
	// SigningKey is the ed25519 private key that seals every snapshot;
	// followers hold only the public key ([Publisher.PublicKey]), so none
	// of them can make a policy the others accept. Nil means the key kept
	// in the folder (signing.key), made on first open. A key given here is
	// used instead of the folder's.
	SigningKey ed25519.PrivateKey
	// Pool is the pool's name, part of every seal; empty means
	// DefaultPool. Followers must be given the same ([Trust]).
	Pool string
	// ResealEvery is how old the current seal may grow before the
	// publisher signs its version again, with the time of the request, so
	// that a follower counts it as heard; it must be at most half the
	// followers' StaleAfter. Zero means 30 seconds.
	ResealEvery time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// FollowerOptions configure a [Follower]. The zero value, or nil, gives the
// defaults.
type FollowerOptions struct {
	// Logger receives a line for each version applied and each failed
	// exchange; nil means slog.Default().
	Logger *slog.Logger
	// HTTPClient talks to the publisher; set its Transport's
	// TLSClientConfig for TLS and client certificates. Its Timeout, if
	// set, must exceed PollWait. Nil means a client of the Follower's own
	// (a clone of http.DefaultTransport).
	HTTPClient *http.Client
	// Name identifies this follower to the publisher (PublisherStatus);
	// empty means its address.
	Name string
	// PollWait is how long each long poll may wait for a change; zero means
	// 30 seconds.
	PollWait time.Duration
	// RequestTimeout bounds a request beyond PollWait; zero means 15
	// seconds.
	RequestTimeout time.Duration
	// StaleAfter is how long the follower may go without hearing from the
	// publisher before its answers turn cautious (see [Follower.Check]);
	// zero means 2 minutes. It must exceed PollWait, and the publisher's
	// ResealEvery must be at most half of it. The follower hears from the
	// publisher only through a seal that verifies, of the version it runs,
	// and counts it from the seal's issue time, not from its arrival: a
	// replayed answer, however recent its delivery, is as old as it was
	// made.
	StaleAfter time.Duration
	// MinBackoff and MaxBackoff bound the jittered, doubling wait between
	// failed exchanges; zero means 250 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// MaxSnapshotBytes caps a response's size; zero means 64 MiB.
	MaxSnapshotBytes int64
	// Trust is the pool's name and the publisher's public keys: every
	// policy and every seal must verify with one of them. At least one
	// key is required.
	Trust Trust
	// OnApply, when not nil, is called when each version is put in use
	// (before it is stored), from Run's goroutine; it must not block.
	OnApply func(version uint64)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// AuthMode says how a [Publisher] recognises its followers.
type AuthMode uint8

// The ways of authenticating a follower.
const (
	// AuthToken requires the header "Authorization: Bearer <token>",
	// where the token is derived from the pool's secret (an HMAC of a
	// fixed string, hex-encoded, so the secret itself never travels). It
	// is compared in constant time.
	AuthToken AuthMode = iota
	// AuthClientCert requires a TLS client certificate that the server
	// verified (r.TLS.VerifiedChains not empty): configure the
	// http.Server's TLSConfig with ClientCAs and ClientAuth.
	AuthClientCert
	// AuthTokenOrClientCert accepts either.
	AuthTokenOrClientCert
)
