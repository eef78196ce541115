package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// A Candidate is a node that an [Elector] may make primary. Its methods are
// called from the Elector's goroutine only, one at a time.
type Candidate interface {
	// Eligible returns nil when the node may be primary now, or an error
	// saying why not: a standby lagging the primary beyond its bound, an
	// unhealthy store. The Elector asks it before campaigning, after
	// winning, and every Renew while primary.
	Eligible(ctx context.Context) error
	// Promote makes the node primary with an epoch of at least token,
	// raised durably before the first write. It returns once the node
	// accepts writes.
	Promote(ctx context.Context, token uint64) error
	// Demote stops the node's writes at once: it is called when the term
	// is lost or the node became ineligible, and must finish within ctx.
	Demote(ctx context.Context, reason error) error
}

// CandidateFuncs adapts three functions to the [Candidate] interface; nil
// fields do nothing and return nil.
type CandidateFuncs struct {
	EligibleFunc func(ctx context.Context) error
	PromoteFunc  func(ctx context.Context, token uint64) error
	DemoteFunc   func(ctx context.Context, reason error) error
}

// Eligible calls EligibleFunc.
func (c CandidateFuncs) Eligible(ctx context.Context) error {
	if c.EligibleFunc == nil {
		return nil
	}
	return c.EligibleFunc(ctx)
}

// Promote calls PromoteFunc.
func (c CandidateFuncs) Promote(ctx context.Context, token uint64) error {
	if c.PromoteFunc == nil {
		return nil
	}
	return c.PromoteFunc(ctx, token)
}

// Demote calls DemoteFunc.
func (c CandidateFuncs) Demote(ctx context.Context, reason error) error {
	if c.DemoteFunc == nil {
		return nil
	}
	return c.DemoteFunc(ctx, reason)
}

var _ Candidate = CandidateFuncs{}

// ElectorOptions configure an [Elector]. The zero value is usable.
type ElectorOptions struct {
	// Timers pace the loop; they must be the lease's (zero fields take
	// defaults, and they are checked).
	Timers Timers
	// Logger receives a line per promotion, demotion and refusal. Nil
	// means slog.Default().
	Logger *slog.Logger
}

// ElectorStatus is what an [Elector] is doing.
type ElectorStatus struct {
	// Primary says whether the node holds a term and was promoted.
	Primary bool
	// Token is the current (or last) term's fencing token.
	Token uint64
	// ValidUntil is the current term's validity, zero when not primary.
	ValidUntil time.Time
	// Promotions and Demotions count the role changes it made.
	Promotions, Demotions uint64
	// LastError is the last reason the node was not or stopped being
	// primary.
	LastError string
}

// An Elector makes its node primary while it holds a [Lease], as Patroni
// does with its leader key: a candidate campaigns only while eligible
// (caught up, healthy), is promoted with the term's token as its minimum
// epoch, renews every Renew, and demotes itself as soon as the term is lost
// (it could not renew in time) or it becomes ineligible, then campaigns
// again.
type Elector struct {
	lease  Lease
	node   Candidate
	timers Timers
	log    *slog.Logger

	// kick wakes the loop when Pause or Resume changes paused.
	kick chan struct{}

	mu     sync.Mutex
	status ElectorStatus
	paused string        // why the node does not campaign; empty: it may
	held   chan struct{} // closed when the current hold ends; nil when none
}

// NewElector returns an elector for node under lease. It checks the timers
// and starts nothing; [Elector.Run] does the work.
func NewElector(lease Lease, node Candidate, opts *ElectorOptions) (*Elector, error) {
	if opts == nil {
		opts = &ElectorOptions{}
	}
	t, err := opts.Timers.Check()
	if err != nil {
		return nil, err
	}
	e := &Elector{lease: lease, node: node, timers: t, log: opts.Logger, kick: make(chan struct{}, 1)}
	if e.log == nil {
		e.log = slog.Default()
	}
	return e, nil
}

// Status returns what the elector is doing.
func (e *Elector) Status() ElectorStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.status
}

func (e *Elector) note(f func(s *ElectorStatus)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f(&e.status)
}

// Pause makes the node ineligible, for reason, until [Elector.Resume]: if
// it holds the lease, it is demoted and the term released now (not at the
// next renewal), and Pause returns once that is done or ctx ends; it does
// not campaign meanwhile. A controlled switchover under an [Etcd] lease
// pauses the old primary's elector, so that the lease passes to the
// target, whose elector promotes it.
func (e *Elector) Pause(ctx context.Context, reason string) error {
	if reason == "" {
		reason = "paused"
	}
	e.mu.Lock()
	e.paused = reason
	held := e.held
	e.mu.Unlock()
	e.wake()
	if held == nil {
		return nil
	}
	select {
	case <-held:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("failover: pause: the term is still held: %w", ctx.Err())
	}
}

// Resume lets a paused node campaign again.
func (e *Elector) Resume() {
	e.mu.Lock()
	e.paused = ""
	e.mu.Unlock()
	e.wake()
}

func (e *Elector) wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// Run campaigns, holds and gives up the lease until ctx ends; then it
// demotes the node if it is primary, releases the term and returns nil.
func (e *Elector) Run(ctx context.Context) error {
	wait := func() bool {
		t := time.NewTimer(e.timers.Renew)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-e.kick:
			return true
		}
	}
	for ctx.Err() == nil {
		if err := e.eligible(ctx); err != nil {
			e.refuse(err)
			if !wait() {
				break
			}
			continue
		}
		term, err := e.acquire(ctx)
		if err != nil {
			if ctx.Err() == nil {
				e.refuse(err)
				wait()
			}
			continue
		}
		e.hold(ctx, term)
	}
	return nil
}

func (e *Elector) refuse(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.status.LastError != err.Error() {
		e.log.Info("failover: not primary", "err", err)
	}
	e.status.LastError = err.Error()
}

func (e *Elector) eligible(ctx context.Context) error {
	e.mu.Lock()
	paused := e.paused
	e.mu.Unlock()
	if paused != "" {
		return fmt.Errorf("%w: %s", ErrNotEligible, paused)
	}
	hctx, cancel := context.WithTimeout(ctx, e.timers.HealthTimeout)
	defer cancel()
	if err := e.node.Eligible(hctx); err != nil {
		return fmt.Errorf("%w: %w", ErrNotEligible, err)
	}
	return nil
}

// acquire campaigns while the node stays eligible.
func (e *Elector) acquire(ctx context.Context) (Term, error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(e.timers.Renew)
		defer t.Stop()
		for {
			select {
			case <-actx.Done():
				return
			case <-e.kick:
				if err := e.eligible(actx); err != nil && actx.Err() == nil {
					cancel(err)
					return
				}
			case <-t.C:
				if err := e.eligible(actx); err != nil && actx.Err() == nil {
					cancel(err)
					return
				}
			}
		}
	}()
	term, err := e.lease.Acquire(actx)
	cancel(nil)
	wg.Wait()
	if err != nil {
		if cause := context.Cause(actx); cause != nil && !errors.Is(cause, context.Canceled) {
			return nil, cause
		}
		return nil, err
	}
	return term, nil
}

// hold promotes the node under term and keeps it primary while the term
// lasts and the node stays eligible.
func (e *Elector) hold(ctx context.Context, term Term) {
	held := make(chan struct{})
	e.mu.Lock()
	e.held = held
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.held = nil
		e.mu.Unlock()
		close(held)
	}()
	release := func(reason error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.timers.RequestTimeout)
		defer cancel()
		if err := term.Release(rctx); err != nil {
			e.log.Warn("failover: release failed (the lease expires by itself)", "token", term.Token(), "err", err)
		}
		e.note(func(s *ElectorStatus) {
			s.Primary, s.ValidUntil = false, time.Time{}
			if reason != nil {
				s.LastError = reason.Error()
			}
		})
	}
	if err := e.eligible(ctx); err != nil {
		release(err)
		return
	}
	until, err := term.KeepAlive(ctx)
	if err != nil {
		release(err)
		return
	}
	pctx, cancel := context.WithDeadline(ctx, until)
	err = e.node.Promote(pctx, term.Token())
	cancel()
	if err != nil {
		e.log.Error("failover: promotion failed", "token", term.Token(), "err", err)
		e.demote(ctx, err)
		release(err)
		return
	}
	e.log.Info("failover: promoted", "token", term.Token())
	e.note(func(s *ElectorStatus) {
		s.Primary, s.Token, s.ValidUntil, s.LastError = true, term.Token(), until, ""
		s.Promotions++
	})
	tick := time.NewTicker(e.timers.Renew)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			e.demote(ctx, ctx.Err())
			release(nil)
			return
		case <-term.Lost():
			err := fmt.Errorf("%w: term %d", ErrLeaseLost, term.Token())
			e.demote(ctx, err)
			release(err)
			return
		case <-e.kick:
			if err := e.eligible(ctx); err != nil {
				e.demote(ctx, err)
				release(err)
				return
			}
		case <-tick.C:
			if err := e.eligible(ctx); err != nil {
				e.demote(ctx, err)
				release(err)
				return
			}
			until, err := term.KeepAlive(ctx)
			if err != nil {
				e.log.Warn("failover: renewal failed", "token", term.Token(), "err", err)
				continue // Lost tells when it is over
			}
			e.note(func(s *ElectorStatus) { s.ValidUntil = until })
		}
	}
}

func (e *Elector) demote(ctx context.Context, reason error) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.timers.Margin)
	defer cancel()
	if err := e.node.Demote(dctx, reason); err != nil {
		e.log.Error("failover: demotion failed", "err", err, "reason", reason)
	} else {
		e.log.Warn("failover: demoted", "reason", reason)
	}
	e.note(func(s *ElectorStatus) { s.Demotions++ })
}
