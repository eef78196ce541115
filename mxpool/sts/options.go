package sts

import (
	"log/slog"
	"net/http"
	"time"
)

// Options configures an [MTASTS]. A nil *Options, and every zero
// field, gives working defaults.
type Options struct {
	// HTTPClient fetches policies. Nil means a client using
	// http.DefaultTransport, which verifies certificates against the
	// system roots. MTASTS uses a copy that never follows redirects.
	HTTPClient *http.Client

	// Dir, when set, is a folder where every fetched policy is also
	// written, one file per domain, so that a restarted node keeps
	// enforcing the policies it knew. Open creates it if needed and
	// loads it. Empty means the cache lives in memory only.
	Dir string

	// MaxAge caps how long a policy is cached, whatever its max_age.
	// Zero means MaxPolicyAge, i.e. max_age as published.
	MaxAge time.Duration

	// FetchTimeout bounds one policy fetch. Zero means one minute, as RFC
	// 8461 §3.3 suggests.
	FetchTimeout time.Duration

	// RetryAfter is how long after a failed fetch the same record id is
	// not fetched again (the cached policy, if any, or the failure is
	// returned meanwhile). Zero means five minutes (RFC 8461 §3.3).
	RetryAfter time.Duration

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time

	// Logger receives log lines keyed domain, sts_id, mode, expires and
	// err. Nil means slog.Default.
	Logger *slog.Logger
}

// TLSPolicyOptions configures a [TLSPolicy]. A nil *TLSPolicyOptions, and
// every zero field, gives working defaults.
type TLSPolicyOptions struct {
	// Required lists recipient domains (A-label form; case and a trailing
	// dot ignored) whose mail must go over TLS with a certificate valid
	// for the MX host name, whatever MTA-STS says: Postfix's "secure"
	// level. Each name is one domain, not its subdomains. Empty means
	// none.
	Required []string

	// Logger receives log lines keyed domain, host, sts_id and err. Nil
	// means slog.Default.
	Logger *slog.Logger
}
