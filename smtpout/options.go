package smtpout

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
)

// TLSMode says whether and how a session is encrypted.
type TLSMode int

const (
	// TLSOpportunistic, the zero value, uses STARTTLS when the server offers
	// it and plain text otherwise. Without a TLSConfig the server's
	// certificate is not verified (like Postfix's "may" level: unauthenticated
	// encryption beats none). If the TLS handshake fails, the delivery is
	// retried once on a new connection in plain text.
	TLSOpportunistic TLSMode = iota

	// TLSRequired insists on STARTTLS: a server that does not offer it,
	// refuses it or fails the handshake gets a temporary DeliveryError with
	// Command "STARTTLS". Without a TLSConfig the certificate is verified
	// against the system roots and the host name of the address.
	TLSRequired

	// TLSNone never encrypts, even when the server offers STARTTLS.
	TLSNone

	// TLSImplicit starts TLS as soon as the connection is open (port 465
	// style, RFC 8314). The certificate is verified as with TLSRequired.
	TLSImplicit
)

// String returns the mode's name, e.g. "opportunistic".
func (m TLSMode) String() string {
	switch m {
	case TLSOpportunistic:
		return "opportunistic"
	case TLSRequired:
		return "required"
	case TLSNone:
		return "none"
	case TLSImplicit:
		return "implicit"
	}
	return fmt.Sprintf("TLSMode(%d)", int(m))
}

// Options configures a [Deliverer]. A nil *Options, and every zero field,
// gives working defaults.
type Options struct {
	// Addr is the fixed next hop, "host:port", that [Deliverer.Deliver]
	// sends to. Empty means Deliver fails and only [Deliverer.DeliverTo]
	// is useful.
	Addr string

	// LMTP makes the Deliverer speak LMTP (RFC 2033): LHLO instead of EHLO,
	// and one reply per recipient after the message.
	LMTP bool

	// LocalName is the name given with EHLO or LHLO. Empty means
	// "localhost"; a server on the Internet wants the sending host's
	// fully-qualified name.
	LocalName string

	// TLS says whether and how sessions are encrypted; the zero value is
	// [TLSOpportunistic].
	TLS TLSMode

	// TLSConfig is used for STARTTLS and implicit TLS. Its ServerName, when
	// empty, is set to the host part of the address. Nil means a default
	// configuration, verifying or not as the TLS mode says.
	TLSConfig *tls.Config

	// Auth, when not nil, is called once per new connection with the host
	// name of the address and returns the SASL client to authenticate with
	// (RFC 4954), e.g. sasl.NewPlainClient for a smart host. A nil client
	// means no AUTH for that host. Credentials are only sent over TLS or to
	// a loopback host.
	Auth func(host string) (sasl.Client, error)

	// DialTimeout bounds opening the connection (and, with TLSImplicit, the
	// TLS handshake). Zero means 30 seconds.
	DialTimeout time.Duration

	// CommandTimeout bounds the wait for each reply, the greeting included,
	// and each write of the message. Zero means 5 minutes (RFC 5321
	// §4.5.3.2).
	CommandTimeout time.Duration

	// DataTimeout bounds the wait for the reply after the final ".". Zero
	// means 10 minutes (RFC 5321 §4.5.3.2.6).
	DataTimeout time.Duration

	// MaxIdle is the number of idle connections kept per address for
	// reuse. Zero means 2; a negative value disables reuse: every delivery
	// opens a connection and QUITs it.
	MaxIdle int

	// IdleTimeout is how long an idle connection is kept before it is
	// QUIT. Zero means 30 seconds.
	IdleTimeout time.Duration

	// MaxPerConn is the number of transactions made on one connection
	// before it is QUIT. Zero means 100.
	MaxPerConn int

	// Dial opens connections. Nil means a [net.Dialer]. It is called with
	// network "tcp" and the address to deliver to, and a context that
	// carries the DialTimeout.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// Logger receives the Deliverer's log lines, keyed msg_id, rcpt, host
	// and err; never a message body or a credential. Nil means
	// [slog.Default].
	Logger *slog.Logger
}

const (
	defaultLocalName      = "localhost"
	defaultDialTimeout    = 30 * time.Second
	defaultCommandTimeout = 5 * time.Minute
	defaultDataTimeout    = 10 * time.Minute
	defaultMaxIdle        = 2
	defaultIdleTimeout    = 30 * time.Second
	defaultMaxPerConn     = 100

	// maxQuitTimeout bounds the wait for the reply to QUIT.
	maxQuitTimeout = 5 * time.Second
)

// withDefaults returns a copy of o with every zero field set to its default,
// or an error if a field is invalid.
func (o *Options) withDefaults() (Options, error) {
	var c Options
	if o != nil {
		c = *o
	}
	if c.Addr != "" {
		if _, _, err := net.SplitHostPort(c.Addr); err != nil {
			return c, fmt.Errorf("smtpout: Options.Addr: %w", err)
		}
	}
	if c.LocalName == "" {
		c.LocalName = defaultLocalName
	}
	if strings.ContainsAny(c.LocalName, " \t\r\n") {
		return c, fmt.Errorf("smtpout: Options.LocalName %q has white space", c.LocalName)
	}
	switch c.TLS {
	case TLSOpportunistic, TLSRequired, TLSNone, TLSImplicit:
	default:
		return c, fmt.Errorf("smtpout: unknown %v", c.TLS)
	}
	if c.TLSConfig != nil {
		c.TLSConfig = c.TLSConfig.Clone()
	}
	for _, f := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"DialTimeout", &c.DialTimeout, defaultDialTimeout},
		{"CommandTimeout", &c.CommandTimeout, defaultCommandTimeout},
		{"DataTimeout", &c.DataTimeout, defaultDataTimeout},
		{"IdleTimeout", &c.IdleTimeout, defaultIdleTimeout},
	} {
		if *f.v < 0 {
			return c, fmt.Errorf("smtpout: negative Options.%s", f.name)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if c.MaxIdle == 0 {
		c.MaxIdle = defaultMaxIdle
	}
	if c.MaxPerConn < 0 {
		return c, errors.New("smtpout: negative Options.MaxPerConn")
	}
	if c.MaxPerConn == 0 {
		c.MaxPerConn = defaultMaxPerConn
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = d.DialContext
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// tlsConfig returns the TLS configuration for a session in mode with
// serverName; verify insists on a certificate valid for it whatever
// Options.TLSConfig says.
func (o *Options) tlsConfig(mode TLSMode, serverName string, verify bool) *tls.Config {
	var cfg *tls.Config
	switch {
	case o.TLSConfig != nil:
		cfg = o.TLSConfig.Clone()
	case mode == TLSOpportunistic && !verify:
		// Opportunistic TLS (RFC 7435) is unauthenticated: an active
		// attacker can strip STARTTLS anyway, and falling back to plain
		// text for a self-signed certificate would protect nobody.
		cfg = &tls.Config{InsecureSkipVerify: true}
	default:
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" || verify {
		cfg.ServerName = serverName
	}
	if verify {
		cfg.InsecureSkipVerify = false
	}
	return cfg
}
