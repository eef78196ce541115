package mxpool

import (
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// CircuitState is the state of one host's circuit.
type CircuitState string

// The states of a circuit.
const (
	// CircuitClosed: the host is used.
	CircuitClosed CircuitState = "closed"
	// CircuitOpen: the host failed repeatedly and is skipped without a
	// connection attempt until its backoff ends.
	CircuitOpen CircuitState = "open"
	// CircuitHalfOpen: the backoff ended; one delivery probes the host
	// while the others still skip it.
	CircuitHalfOpen CircuitState = "half-open"
)

// HostHealth is what a [Health] knows about one host.
type HostHealth struct {
	Host        string
	State       CircuitState
	Failures    int       // consecutive failures
	LastError   string    // the last failure
	LastFailure time.Time // zero if none
	LastSuccess time.Time // zero if none
	OpenUntil   time.Time // while open: when a probe is allowed
}

// Health remembers, per next-hop host, how its recent connections went,
// shared by every delivery, so that a dead MX is skipped without a
// connection attempt (a circuit breaker). After Failures consecutive
// failures a host's circuit opens for a backoff that doubles from
// MinBackoff to MaxBackoff; then one delivery at a time probes it, and
// the first success closes the circuit. It is safe for concurrent use.
//
// What counts as a failure is the caller's choice: [Deliverer] counts a
// refused or timed-out connection, a broken session, a TLS failure and a
// 421 or other refusal of the whole session, never a reply about one
// recipient or one message.
type Health struct {
	opts  HealthOptions
	log   *slog.Logger
	mu    sync.Mutex
	hosts map[string]*hostState
}

type hostState struct {
	HostHealth
	backoff time.Duration
	probing time.Time // when the current probe started; zero if none
}

// NewHealth returns an empty Health.
func NewHealth(opts *HealthOptions) *Health {
	var o HealthOptions
	if opts != nil {
		o = *opts
	}
	if o.Failures <= 0 {
		o.Failures = 2
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 30 * time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 10 * time.Minute
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = 2 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Health{opts: o, log: o.Logger, hosts: map[string]*hostState{}}
}

func healthKey(host string) string { return strings.ToLower(strings.TrimSuffix(host, ".")) }

// Allow reports whether a delivery may try host now: always while its
// circuit is closed; never while it is open; and, once the backoff has
// ended, for exactly one caller at a time (the probe), which must report
// its result with Success or Failure.
func (h *Health) Allow(host string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.hosts[healthKey(host)]
	if s == nil || s.State == CircuitClosed {
		return true
	}
	now := h.opts.Now()
	if now.Before(s.OpenUntil) {
		return false
	}
	if !s.probing.IsZero() && now.Sub(s.probing) < h.opts.ProbeTimeout {
		return false
	}
	s.State = CircuitHalfOpen
	s.probing = now
	return true
}

// Success records that a session with host worked; it closes the host's
// circuit.
func (h *Health) Success(host string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := healthKey(host)
	s := h.hosts[k]
	if s == nil {
		s = &hostState{HostHealth: HostHealth{Host: k, State: CircuitClosed}}
		h.hosts[k] = s
	}
	if s.State != CircuitClosed {
		h.log.Info("mxpool: host is back, circuit closed", "host", k, "after_failures", s.Failures)
	}
	s.State, s.Failures, s.backoff, s.probing, s.OpenUntil = CircuitClosed, 0, 0, time.Time{}, time.Time{}
	s.LastSuccess = h.opts.Now()
}

// Failure records that a session with host failed with err. It opens the
// circuit after HealthOptions.Failures consecutive failures, and reopens
// it, with a doubled backoff, when a probe fails.
func (h *Health) Failure(host string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := healthKey(host)
	s := h.hosts[k]
	if s == nil {
		s = &hostState{HostHealth: HostHealth{Host: k, State: CircuitClosed}}
		h.hosts[k] = s
	}
	now := h.opts.Now()
	s.Failures++
	s.LastFailure = now
	if err != nil {
		s.LastError = err.Error()
	}
	switch {
	case s.State == CircuitOpen:
		return // a delivery that started before the circuit opened
	case s.State == CircuitHalfOpen:
		s.backoff = min(2*s.backoff, h.opts.MaxBackoff)
	case s.Failures >= h.opts.Failures:
		s.backoff = h.opts.MinBackoff
	default:
		return
	}
	s.State, s.OpenUntil, s.probing = CircuitOpen, now.Add(s.backoff), time.Time{}
	h.log.Warn("mxpool: host failing, circuit open", "host", k, "failures", s.Failures, "retry_in", s.backoff, "err", s.LastError)
}

// Host returns what is known about host; a host never seen is closed.
func (h *Health) Host(host string) HostHealth {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := healthKey(host)
	if s := h.hosts[k]; s != nil {
		return s.HostHealth
	}
	return HostHealth{Host: k, State: CircuitClosed}
}

// Stats returns every known host, sorted by name, for a status page.
func (h *Health) Stats() []HostHealth {
	h.mu.Lock()
	out := make([]HostHealth, 0, len(h.hosts))
	for _, s := range h.hosts {
		out = append(out, s.HostHealth)
	}
	h.mu.Unlock()
	slices.SortFunc(out, func(a, b HostHealth) int { return strings.Compare(a.Host, b.Host) })
	return out
}
