package queue

import (
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/wal"
)

// RetryPolicy says when a message that failed temporarily is tried again and
// when the queue gives up. The zero value is the default policy: 5 minutes
// doubling to 67 minutes with 10% jitter, a lifetime of 5 days, and one delay
// warning after 4 hours (close to Postfix's defaults).
type RetryPolicy struct {
	// Intervals, when set, lists the waits after the first, second, ...
	// failed attempt; the last one repeats. When empty, the wait starts at
	// MinBackoff and doubles up to MaxBackoff.
	Intervals []time.Duration
	// MinBackoff is the wait after the first failed attempt; zero means 5 min.
	MinBackoff time.Duration
	// MaxBackoff caps the wait; zero means 4000 s (about 67 min).
	MaxBackoff time.Duration
	// Jitter spreads each wait by up to this fraction either way so that
	// messages deferred together are not retried together; zero means 0.1,
	// negative means none.
	Jitter float64
	// Lifetime is how long a message may stay queued before its pending
	// recipients fail as expired; zero means 5 days.
	Lifetime time.Duration
	// DelayWarnings lists the ages at which the sender is told that the
	// message is still being retried (RFC 3464 "delayed"); nil means
	// [4 h]; an empty non-nil slice means none.
	DelayWarnings []time.Duration
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.MinBackoff <= 0 {
		p.MinBackoff = 5 * time.Minute
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = 4000 * time.Second
	}
	if p.MaxBackoff < p.MinBackoff {
		p.MaxBackoff = p.MinBackoff
	}
	if p.Jitter == 0 {
		p.Jitter = 0.1
	}
	if p.Jitter < 0 {
		p.Jitter = 0
	}
	if p.Lifetime <= 0 {
		p.Lifetime = 5 * 24 * time.Hour
	}
	if p.DelayWarnings == nil {
		p.DelayWarnings = []time.Duration{4 * time.Hour}
	}
	return p
}

// Backoff returns the wait after the n-th failed attempt (n >= 1), before
// jitter.
func (p RetryPolicy) Backoff(n int) time.Duration {
	p = p.withDefaults()
	if n < 1 {
		n = 1
	}
	if len(p.Intervals) > 0 {
		if n > len(p.Intervals) {
			n = len(p.Intervals)
		}
		return p.Intervals[n-1]
	}
	d := p.MinBackoff
	for i := 1; i < n && d < p.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, p.MaxBackoff)
}

func (p RetryPolicy) jittered(n int, rnd *rand.Rand) time.Duration {
	d := p.Backoff(n)
	if p.Jitter > 0 {
		f := 1 + p.Jitter*(2*rnd.Float64()-1)
		d = time.Duration(float64(d) * f)
	}
	return d
}

// MaybeDeliveredPolicy says what the queue does with a recipient whose
// delivery may have succeeded: the whole message was sent and the reply to
// its final dot was lost. It applies per recipient: the message's other
// recipients carry on. An attempt cut short by the queue's own crash is not
// "maybe delivered" (nothing says the final dot left): it is retried under
// every policy.
type MaybeDeliveredPolicy int

const (
	// MaybeRetry sends it again after the usual backoff, to the same
	// destination, as Postfix does: no loss, a rare duplicate (RFC 5321
	// section 6.1 puts not losing mail first). The default.
	MaybeRetry MaybeDeliveredPolicy = iota
	// MaybeHold keeps the recipient marked maybe-delivered, for an operator
	// to release (send again) or delete. Nothing is sent twice and nothing
	// is dropped unseen: the sender still gets delay warnings, and when the
	// message's lifetime runs out the recipient fails with a DSN that says
	// it may have been delivered.
	MaybeHold
	// MaybeAssumeDelivered counts it as delivered: no duplicate, a possible
	// loss. Use it only where the next hop deduplicates on its own.
	MaybeAssumeDelivered
)

// DestinationLimits override, for one destination, the limits that
// [Options] set for all. Zero fields keep the Options' values.
type DestinationLimits struct {
	// MaxConcurrency limits deliveries in flight to the destination, in
	// place of MaxPerDestination.
	MaxConcurrency int
	// MaxRcptsPerTransaction is the most recipients in one transaction, in
	// place of Options.MaxRcptsPerTransaction.
	MaxRcptsPerTransaction int
	// Rate is the most delivery attempts started per second (a fraction
	// for fewer: 0.1 is one every 10 s); zero means no limit. Attempts over
	// the rate wait their turn in the queue, in order.
	Rate float64
}

// Options configure a Queue. A nil *Options, and every zero field, gives
// working defaults.
type Options struct {
	// Retry is the retry, expiry and delay-warning policy.
	Retry RetryPolicy

	// MaxDeliveries limits deliveries in flight over all destinations;
	// zero means 100.
	MaxDeliveries int
	// MaxPerDestination limits deliveries in flight to one destination;
	// zero means 20.
	MaxPerDestination int
	// Destination maps a recipient address to the key that concurrency
	// limits and slow-downs apply to: the next-hop host when the caller
	// knows it (a fixed relay, the first MX), else the domain. Recipients of
	// one message with different keys are delivered separately. Nil means
	// the recipient's domain.
	Destination func(rcpt string) string

	// MaxRcptsPerTransaction is the most recipients of one message sent to
	// one destination in one transaction; more are split into several
	// (each an attempt of its own, under the destination's concurrency).
	// Zero means 50, like Postfix's default recipient limit. When a next
	// hop takes some recipients and answers 452 to the others (too many
	// recipients, RFC 5321 section 4.5.3.1.10), the others are sent at
	// once in a new transaction, not after the retry backoff.
	MaxRcptsPerTransaction int
	// PerDestination overrides the limits for some destinations, keyed by
	// what Destination returns.
	PerDestination map[string]DestinationLimits

	// MaxMessages refuses new messages (a temporary error, SMTP 452) while
	// the queue holds this many; zero means no limit.
	MaxMessages int
	// MaxBytes refuses new messages while queued bodies total this many
	// bytes; zero means no limit.
	MaxBytes int64
	// MinFreeBytes refuses new messages while the queue's file system has
	// less free space than this; zero means 256 MiB, negative means no
	// check.
	MinFreeBytes int64
	// MaxMessageSize refuses larger messages permanently (SMTP 552); zero
	// means 64 MiB. Enqueue holds a message of up to 256 KiB in memory
	// while it stores it (about three copies); a larger one is spooled to
	// the folder "spool" as it arrives and copied into the log in 256 KiB
	// pieces, so an intake's memory does not grow with message sizes.
	MaxMessageSize int64

	// DedupWindow is how long the id of a delivered, bounced or deleted
	// message is remembered, with its body's digest, so that enqueueing it
	// again is a no-op (and enqueueing it with other content is
	// ErrConflict); zero means 24 h, negative means only while queued.
	DedupWindow time.Duration
	// DedupMax caps the remembered ids; the oldest are forgotten first.
	// Zero means 1 000 000.
	DedupMax int

	// MaybeDelivered is what happens to maybe-delivered recipients; zero
	// means MaybeRetry.
	MaybeDelivered MaybeDeliveredPolicy

	// Hostname names this node in notifications (Reporting-MTA, the
	// MAILER-DAEMON address); "" means os.Hostname.
	Hostname string

	// SegmentSize is the size of the queue's log segments; zero means
	// 64 MiB. Smaller segments free disk sooner and copy more.
	SegmentSize int64

	// Logger receives the queue's log lines; nil means slog.Default().
	Logger *slog.Logger
	// Hooks are optional callbacks for events.
	Hooks Hooks
	// Now is the clock; nil means time.Now. Tests inject their own.
	Now func() time.Time

	// openFile opens the log's segment files; nil means os.OpenFile. The
	// power-loss test sets it (export_test.go).
	openFile func(name string, flag int, perm os.FileMode) (wal.File, error)
}

func (o *Options) withDefaults() (Options, error) {
	var opts Options
	if o != nil {
		opts = *o
	}
	opts.Retry = opts.Retry.withDefaults()
	if opts.MaxDeliveries <= 0 {
		opts.MaxDeliveries = 100
	}
	if opts.MaxPerDestination <= 0 {
		opts.MaxPerDestination = 20
	}
	if opts.MaxRcptsPerTransaction <= 0 {
		opts.MaxRcptsPerTransaction = 50
	}
	for k, l := range opts.PerDestination {
		if l.MaxConcurrency < 0 || l.MaxRcptsPerTransaction < 0 || l.Rate < 0 || math.IsNaN(l.Rate) || math.IsInf(l.Rate, 0) {
			return opts, fmt.Errorf("queue: PerDestination[%q]: negative or invalid limit", k)
		}
	}
	if opts.Destination == nil {
		opts.Destination = resilmail.Domain
	}
	if opts.MinFreeBytes == 0 {
		opts.MinFreeBytes = 256 << 20
	}
	if opts.MaxMessageSize <= 0 {
		opts.MaxMessageSize = 64 << 20
	}
	if opts.DedupWindow == 0 {
		opts.DedupWindow = 24 * time.Hour
	}
	if opts.DedupMax <= 0 {
		opts.DedupMax = 1_000_000
	}
	if opts.MaybeDelivered < MaybeRetry || opts.MaybeDelivered > MaybeAssumeDelivered {
		return opts, fmt.Errorf("queue: unknown MaybeDelivered policy %d", opts.MaybeDelivered)
	}
	if opts.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		opts.Hostname = h
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return opts, nil
}

// An Event reports something that happened to a message, for [Hooks].
type Event struct {
	Kind EventKind
	ID   string // message id
	Rcpt string // recipient, for per-recipient events
	Host string // next hop, when known
	Err  error  // the failure, for deferred, failed and maybe-delivered
	Time time.Time
}

// EventKind names an [Event].
type EventKind string

// The events a queue reports.
const (
	EventEnqueued       EventKind = "enqueued"
	EventDelivered      EventKind = "delivered"
	EventDeferred       EventKind = "deferred"
	EventFailed         EventKind = "failed"
	EventMaybeDelivered EventKind = "maybe_delivered"
	EventExpired        EventKind = "expired"
	EventCorrupt        EventKind = "corrupt"
	EventRemoved        EventKind = "removed"
)

// Hooks are optional callbacks. They are called synchronously from the
// queue's goroutines, without the queue's lock held, and must be quick.
type Hooks struct {
	// Event is called for every Event; nil means none.
	Event func(Event)
}
