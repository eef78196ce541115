package mxpool

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/resilmail/resilmail/mxpool/sts"
	"github.com/resilmail/resilmail/smtpout"
)

// PlannerOptions configures a [Planner]. A nil *PlannerOptions, and every
// zero field, gives working defaults.
type PlannerOptions struct {
	// Self are this node's host names, as the MX records of the domains it
	// serves name it. When a domain's MX records name one of them, the plan
	// drops it and every MX of equal or greater preference, as RFC 5321
	// §5.1 requires, and has no fallback relay: this node hands mail only
	// to better MXs. If no better MX is left the mail "loops back to
	// myself", a permanent failure. Empty means this node is no domain's
	// MX.
	Self []string

	// SelfAddrs are this node's addresses. An MX (or the implicit MX)
	// with an address among them is this node whatever its name, and is
	// dropped with every MX of equal or greater preference, as for Self:
	// an MX record that names this machine under another name, or an IP
	// literal, must not make mail loop.
	SelfAddrs []netip.Addr
	// NoInterfaceAddrs, when false (the default), adds to SelfAddrs the
	// addresses of this machine's network interfaces, read once by
	// NewPlanner, and counts every loopback and unspecified address as
	// this node's. Set it when the MX hosts really are on this machine's
	// addresses, as in tests that stand for remote hosts on loopback.
	NoInterfaceAddrs bool

	// Routes send a domain's mail to fixed hosts instead of its MX hosts.
	// The route of the domain itself applies first, then the route of "*"
	// (a smart host); a domain without either is planned from the DNS.
	// A route whose hosts have no address fails temporarily: a route is
	// local configuration, and bouncing mail for its mistakes would lose
	// mail.
	Routes []Route

	// FallbackRelay are hosts ("host", "host:port" or an IP address, port
	// 25 when absent) to try after the planned hosts failed temporarily,
	// like Postfix's smtp_fallback_relay. They are not used for a routed
	// domain, nor for a domain this node is an MX of, where they would
	// make a loop.
	FallbackRelay []string

	// MaxCNAMEHops bounds the aliases Plan follows for one name when the
	// resolver answers with a CNAME but without the target's records (a
	// resolver such as DNSResolver follows chains itself and applies its
	// own bound). Zero means 8.
	MaxCNAMEHops int

	// Rand returns a uniformly random int in [0, n); it orders MX hosts of
	// equal preference. Nil means math/rand/v2's IntN. The Planner never
	// calls it concurrently.
	Rand func(n int) int

	// Logger receives debug records of the hosts a plan skips. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// DelivererOptions configures a [Deliverer]. A nil *DelivererOptions, and
// every zero field, gives working defaults.
type DelivererOptions struct {
	// SMTP is the template of the SMTP and LMTP clients: LocalName,
	// TLSConfig, Auth, timeouts, pool sizes, Dial, Logger. Addr, LMTP and
	// TLS are ignored: the plan and the TLS policy decide them per hop.
	// Nil means smtpout's defaults.
	SMTP *smtpout.Options
	// TLS decides, per domain, which MX hosts may be used and whether TLS
	// is required (configuration and MTA-STS). Nil means opportunistic TLS
	// with every host.
	TLS *sts.TLSPolicy
	// Health is shared by every delivery and may be shared with other
	// Deliverers. Nil means a new one with default options.
	Health *Health
	// MaxAddrs is the number of addresses (over all hosts) tried in one
	// delivery before giving up until the next attempt, as Postfix's
	// smtp_mx_address_limit. Skipped hosts do not count. Zero means 5.
	MaxAddrs int
	// Logger receives a line per failed host. Nil means slog.Default.
	Logger *slog.Logger
}

// HealthOptions configures a [Health]. A nil *HealthOptions, and every zero
// field, gives the defaults.
type HealthOptions struct {
	// Failures is the number of consecutive failures of a host that open
	// its circuit. Zero means 2.
	Failures int
	// MinBackoff is how long a circuit first stays open. Zero means 30s.
	MinBackoff time.Duration
	// MaxBackoff caps the open time, which doubles each time a probe
	// fails. Zero means 10 minutes.
	MaxBackoff time.Duration
	// ProbeTimeout is how long a half-open probe may take before another
	// caller may probe instead (the first never reported). Zero means 2
	// minutes.
	ProbeTimeout time.Duration
	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
	// Logger receives a line when a circuit opens or closes. Nil means
	// slog.Default.
	Logger *slog.Logger
}

// DNSOptions configures a [DNSResolver]. A nil *DNSOptions, and every zero
// field, gives working defaults.
type DNSOptions struct {
	// Servers are the recursive resolvers asked, as "host:port" (a bare IP
	// address means port 53), in the order they are tried. Empty means
	// the nameservers listed in ResolvConf, or 127.0.0.1:53 when that file
	// cannot be read or lists none.
	Servers []string

	// ResolvConf is the file read for Servers when Servers is empty.
	// Empty means /etc/resolv.conf.
	ResolvConf string

	// Timeout bounds one exchange with one server (a UDP query, or the TCP
	// query that follows a truncated UDP answer). Zero means
	// 2 seconds.
	Timeout time.Duration

	// Attempts is how many times the whole server list is tried before a
	// lookup fails temporarily. Zero means 2.
	Attempts int

	// CacheSize is the most answers kept in the cache. Zero means
	// 10000; a negative value disables the cache (concurrent
	// identical lookups still share one query).
	CacheSize int

	// MaxTTL caps how long an answer, positive or negative, is cached.
	// Zero means one hour.
	MaxTTL time.Duration

	// NegativeTTL is how long a name that does not exist (NXDOMAIN) or has
	// no records of the type asked (NODATA) is cached when the answer
	// carries no SOA record to take the TTL from (RFC 2308 §5). Zero means
	// one minute.
	NegativeTTL time.Duration

	// UDPSize is the EDNS0 payload size advertised in queries. Zero means
	// 1232, the size recommended by DNS flag day 2020.
	UDPSize uint16

	// Now returns the current time for cache expiry. Nil means time.Now.
	Now func() time.Time
}
