package smtpout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/resilmail/resilmail"
)

// A Deliverer sends messages over SMTP or LMTP to a next hop, reusing
// connections. It is safe for concurrent use; its zero value is not usable:
// call [New].
type Deliverer struct {
	opts Options // with defaults
	log  *slog.Logger

	noPipelining bool // for tests: one command at a time over SMTP

	timers sync.WaitGroup // idle timers that may still run
	bufs   sync.Pool      // *xferBufs

	mu     sync.Mutex
	closed bool
	idle   map[string][]*conn // by address in lower case, most recent last
}

var _ resilmail.Deliverer = (*Deliverer)(nil)

// New returns a Deliverer configured by opts, which it copies; nil means
// every default. It validates the options, does no I/O and starts no
// goroutine.
func New(opts *Options) (*Deliverer, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Deliverer{opts: o, log: o.Logger}, nil
}

// Deliver sends the message to Options.Addr, as [Deliverer.DeliverTo]
// does.
func (d *Deliverer) Deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	if d.opts.Addr == "" {
		return errors.New("smtpout: Deliver needs Options.Addr")
	}
	return d.DeliverTo(ctx, d.opts.Addr, env, body)
}

// DeliverTo sends the message to the server at addr, "host:port", in one
// transaction for all of env's recipients. It reports one outcome per
// recipient as [resilmail.Deliverer] says: nil when every recipient was
// accepted, else DeliveryErrors joined with [errors.Join], classified as
// the package documentation describes. It reads body to EOF unless it
// returns an error, and returns promptly when ctx is done.
func (d *Deliverer) DeliverTo(ctx context.Context, addr string, env resilmail.Envelope, body io.Reader) error {
	return d.DeliverTarget(ctx, Target{Addr: addr, TLS: d.opts.TLS}, env, body)
}

// Target is where and how [Deliverer.DeliverTarget] sends a message, when
// that differs from one next hop to another (MX hosts dialled by address,
// TLS required by MTA-STS for some domains only).
type Target struct {
	// Addr is the address to dial, "host:port".
	Addr string
	// ServerName is the name the server's certificate must be valid for
	// when TLS is verified, and the name in DeliveryError.Host. Empty
	// means the host part of Addr.
	ServerName string
	// TLS is the session's TLS mode; Options.TLSConfig, if set, still
	// supplies roots and client certificates.
	TLS TLSMode
	// Verify insists that the certificate be valid for ServerName even if
	// Options.TLSConfig skips verification (an MTA-STS policy in enforce
	// mode, a domain configured to require TLS).
	Verify bool
}

// key is the pool key: sessions are reused only for the same address,
// server name and TLS mode.
func (t *Target) key() string {
	return strings.ToLower(t.Addr) + "|" + strings.ToLower(t.ServerName) + "|" + strconv.Itoa(int(t.TLS)) + "|" + strconv.FormatBool(t.Verify)
}

func (t *Target) serverName(host string) string {
	if t.ServerName != "" {
		return t.ServerName
	}
	return host
}

// DeliverTarget sends the message as [Deliverer.DeliverTo] does, to t.
func (d *Deliverer) DeliverTarget(ctx context.Context, t Target, env resilmail.Envelope, body io.Reader) error {
	host, _, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return fmt.Errorf("smtpout: address %q: %w", t.Addr, err)
	}
	host = t.serverName(host)
	if len(env.To) == 0 {
		return errors.New("smtpout: envelope has no recipient")
	}
	if ctx.Err() != nil {
		cause := context.Cause(ctx)
		return &resilmail.DeliveryError{Host: host, Command: cmdConnect, Message: cause.Error(), Err: cause}
	}
	if d.isClosed() {
		return ErrClosed
	}
	tx, errs := d.prepare(host, &env)
	if tx == nil {
		err := errors.Join(errs...)
		d.logOutcome(&env, host, err)
		return err
	}
	key := t.key()

	for try := 0; ; try++ {
		var cn *conn
		if try == 0 {
			cn = d.getIdle(key)
		}
		reused := cn != nil
		if reused {
			cn.guard(ctx)
		} else {
			cn, err = d.dialSession(ctx, &t, host)
			if err != nil {
				err = errors.Join(append(errs, err)...)
				d.logOutcome(&env, host, err)
				return err
			}
		}
		res := d.send(ctx, cn, tx, body, reused)
		if res.dead && doneCause(ctx) == nil {
			d.log.Debug("smtpout: pooled connection was dead, reconnecting", "msg_id", env.ID, "host", host, "err", res.errs[0])
			cn.unguard()
			cn.close()
			continue
		}
		d.release(ctx, cn, res.keep, res.clean)
		err = errors.Join(append(errs, res.errs...)...)
		d.logOutcome(&env, host, err)
		return err
	}
}

// release puts cn back in the pool after a transaction, or QUITs it.
func (d *Deliverer) release(ctx context.Context, cn *conn, keep, clean bool) {
	switch {
	case !keep:
		cn.unguard()
		cn.close()
		return
	case cn.msgs >= d.opts.MaxPerConn || d.opts.MaxIdle < 0:
		d.quit(cn)
		cn.unguard()
		return
	}
	if !clean {
		if err := d.rset(ctx, cn); err != nil {
			d.log.Debug("smtpout: RSET failed", "host", cn.host, "err", err)
			cn.unguard()
			cn.close()
			return
		}
	}
	if !cn.unguard() {
		cn.close()
		return
	}
	if !d.putIdle(cn) {
		cn.guard(ctx)
		d.quit(cn)
		cn.unguard()
	}
}

// Close QUITs the idle connections and stops their timers. Deliveries in
// flight finish; their connections are QUIT, not pooled, and later calls
// return [ErrClosed]. Close is idempotent and always returns nil.
func (d *Deliverer) Close() error {
	d.closeIdle()
	return nil
}

func (d *Deliverer) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// logOutcome logs one line per failed recipient (or one for all).
func (d *Deliverer) logOutcome(env *resilmail.Envelope, host string, err error) {
	if err == nil {
		d.log.Debug("smtpout: delivered", "msg_id", env.ID, "host", host, "rcpts", len(env.To))
		return
	}
	for rcpt, de := range resilmail.Outcomes(env.Recipients(), err) {
		switch {
		case de == nil:
			d.log.Debug("smtpout: delivered", "msg_id", env.ID, "rcpt", rcpt, "host", host)
		case de.MaybeDelivered:
			d.log.Warn("smtpout: maybe delivered", "msg_id", env.ID, "rcpt", rcpt, "host", host, "err", de)
		case de.Permanent:
			d.log.Info("smtpout: delivery failed", "msg_id", env.ID, "rcpt", rcpt, "host", host, "err", de)
		default:
			d.log.Info("smtpout: delivery deferred", "msg_id", env.ID, "rcpt", rcpt, "host", host, "err", de)
		}
	}
}
