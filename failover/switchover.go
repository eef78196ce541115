package failover

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/resilmail/resilmail"
)

// A Position is how far a node's store is: the epoch and sequence number of
// the last change it holds (for a standby, the primary's numbering), and
// the history it belongs to when the replication layer names one.
type Position struct {
	History string          `json:"history,omitempty"`
	Epoch   resilmail.Epoch `json:"epoch"`
	Seq     uint64          `json:"seq"`
}

// String formats the position as history/epoch/seq.
func (p Position) String() string {
	if p.History == "" {
		return fmt.Sprintf("%d/%d", p.Epoch, p.Seq)
	}
	return fmt.Sprintf("%s/%d/%d", p.History, p.Epoch, p.Seq)
}

// Behind returns how many changes p lags primary (zero when it does not).
func (p Position) Behind(primary Position) uint64 {
	if p.Seq >= primary.Seq {
		return 0
	}
	return primary.Seq - p.Seq
}

// A Member is one mailbox-server node as a [Switchover] drives it. Each
// method is idempotent (a retry after a timeout is safe) and returns once
// its effect is durable; a switchover calls them one at a time.
type Member interface {
	// Name names the node (in logs and as the primary others follow).
	Name() string
	// Drain makes the node stop accepting writes (LMTP answers 4xx or is
	// proxied, IMAP writes wait or fail) and returns once no write is in
	// flight, with resume, which accepts writes again.
	Drain(ctx context.Context) (resume func(context.Context) error, err error)
	// Position returns the node's position.
	Position(ctx context.Context) (Position, error)
	// WaitCaughtUp returns once the node holds everything up to pos.
	WaitCaughtUp(ctx context.Context, pos Position) error
	// Promote makes the node primary at epoch, raised durably before its
	// first write.
	Promote(ctx context.Context, epoch resilmail.Epoch) error
	// Demote makes the node read-only (fenced), raising its epoch to
	// epoch if that is higher; its streams end. A switchover passes the
	// node's own epoch, a rollback a higher one.
	Demote(ctx context.Context, epoch resilmail.Epoch) error
	// Follow makes a demoted node replicate from primary.
	Follow(ctx context.Context, primary string) error
}

// The steps of a switchover, in order, then the rollback steps.
const (
	StepCheck    = "check"     // both positions read, lag within bound
	StepDrain    = "drain"     // the primary stops accepting writes
	StepPosition = "position"  // the drained primary's final position
	StepCatchUp  = "catch-up"  // the target holds everything
	StepEpoch    = "epoch"     // the new epoch chosen (a lease's token)
	StepDemote   = "demote"    // the old primary is read-only
	StepPromote  = "promote"   // the target is primary at the new epoch
	StepResume   = "resume"    // the new primary accepts writes
	StepFollow   = "follow"    // the old primary replicates from the new one
	StepRollback = "rollback:" // prefix of the steps that undo a failure
)

// A Step is one logged step of a switchover.
type Step struct {
	Name  string        `json:"name"`
	Start time.Time     `json:"start"`
	Took  time.Duration `json:"took"`
	Err   string        `json:"err,omitempty"`
}

// A Report tells what a switchover did.
type Report struct {
	From, To string
	// Epoch is the new primary's epoch (or, when rolled back, the epoch
	// the old primary kept or was raised to).
	Epoch resilmail.Epoch
	// Position is the old primary's final position, which the target
	// reached.
	Position Position
	// Lag is how many changes the target lagged when the switchover
	// started.
	Lag uint64
	// Steps are in the order they ran, rollback steps included.
	Steps []Step
	// WriteWindow is how long writes were refused: from the start of the
	// drain to the new (or restored) primary accepting them.
	WriteWindow time.Duration
	// RolledBack says the switchover failed and the old primary serves
	// again (or, if the rollback failed too, Err says what is left).
	RolledBack bool
	Err        error
}

// SwitchoverOptions configure a [Switchover]. The zero value is usable.
type SwitchoverOptions struct {
	// StepTimeout bounds each step but the catch-up. Zero means 10 s.
	StepTimeout time.Duration
	// CatchUpTimeout bounds the wait for the target to catch up, while
	// writes are refused. Zero means 30 s.
	CatchUpTimeout time.Duration
	// MaxLag refuses to start (before anything is drained) when the target
	// lags more than this many changes, so that the window without writes
	// stays short and a failback waits until the old primary has caught
	// up. Zero means 1000.
	MaxLag uint64
	// Epoch chooses the new epoch, at least min (one above both nodes'),
	// for example from a lease's fencing token. Nil means min.
	Epoch func(ctx context.Context, min resilmail.Epoch) (resilmail.Epoch, error)
	// OnStep is called after each step (for status pages and tests).
	OnStep func(Step)
	// Logger receives a line per step. Nil means slog.Default().
	Logger *slog.Logger
}

// A switchover runs once; fields are written by its goroutine only, but
// OnStep may read Report from another.
type switchover struct {
	opts     SwitchoverOptions
	log      *slog.Logger
	from, to Member
	mu       sync.Mutex
	rep      Report
}

// Switchover moves the primary role from the primary from to the standby
// to, in order: check both positions (the target must lag at most MaxLag,
// and follow from's history when both name one: the check waits up to
// StepTimeout for it to join, before anything is drained),
// drain from, read its final position, wait until to holds it, choose the
// new epoch, demote from (read-only at its own epoch), promote to at the
// new epoch, and make from follow to.
// Each step is logged and reported. A step that fails or times out rolls
// back to the last safe state: from serves again (promoted at a higher
// epoch if it was already demoted, after fencing a half-promoted to), and
// the error wraps [ErrSwitchover]. A failure of the last step (follow)
// leaves to primary and is reported without rollback.
//
// Failback is the same call in the other direction: until the old
// primary has joined the new one's history (within StepTimeout) and lags
// at most MaxLag, it is refused with [ErrNotEligible] before anything is
// drained; retry it.
func Switchover(ctx context.Context, from, to Member, opts *SwitchoverOptions) (Report, error) {
	if opts == nil {
		opts = &SwitchoverOptions{}
	}
	s := &switchover{opts: *opts, from: from, to: to, log: opts.Logger}
	if s.opts.StepTimeout == 0 {
		s.opts.StepTimeout = 10 * time.Second
	}
	if s.opts.CatchUpTimeout == 0 {
		s.opts.CatchUpTimeout = 30 * time.Second
	}
	if s.opts.MaxLag == 0 {
		s.opts.MaxLag = 1000
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.rep = Report{From: from.Name(), To: to.Name()}
	err := s.run(ctx)
	s.rep.Err = err
	return s.rep, err
}

// step runs f under the step timeout (or d when not zero) and records it.
func (s *switchover) step(ctx context.Context, name string, d time.Duration, f func(ctx context.Context) error) error {
	if d == 0 {
		d = s.opts.StepTimeout
	}
	sctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	st := Step{Name: name, Start: time.Now()}
	err := f(sctx)
	st.Took = time.Since(st.Start)
	if err != nil {
		st.Err = err.Error()
		s.log.Error("failover: switchover step failed", "from", s.rep.From, "to", s.rep.To, "step", name, "took", st.Took, "err", err)
	} else {
		s.log.Info("failover: switchover step", "from", s.rep.From, "to", s.rep.To, "step", name, "took", st.Took)
	}
	s.mu.Lock()
	s.rep.Steps = append(s.rep.Steps, st)
	s.mu.Unlock()
	if s.opts.OnStep != nil {
		s.opts.OnStep(st)
	}
	return err
}

func (s *switchover) run(ctx context.Context) error {
	var fromPos, toPos Position
	err := s.step(ctx, StepCheck, 0, func(ctx context.Context) error {
		for {
			var err error
			if fromPos, err = s.from.Position(ctx); err != nil {
				return fmt.Errorf("position of %s: %w", s.rep.From, err)
			}
			if toPos, err = s.to.Position(ctx); err != nil {
				return fmt.Errorf("position of %s: %w", s.rep.To, err)
			}
			if fromPos.History == "" || toPos.History == "" || toPos.History == fromPos.History {
				break
			}
			// A node that has not joined the primary's history yet (a
			// standby just started, an old primary still aligning with
			// the new one) may need the primary to take a write to join
			// it, which a drained primary refuses: it could not catch up
			// while writes wait. Nothing is drained yet: wait for it.
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w: %s follows history %s, not %s's %s: it has not joined it in %v", ErrNotEligible, s.rep.To, toPos.History, s.rep.From, fromPos.History, s.opts.StepTimeout)
			case <-time.After(5 * time.Millisecond): // polls the positions
			}
		}
		s.rep.Lag = toPos.Behind(fromPos)
		if s.rep.Lag > s.opts.MaxLag {
			return fmt.Errorf("%w: %s lags %s by %d changes (at most %d): wait until it has caught up", ErrNotEligible, s.rep.To, s.rep.From, s.rep.Lag, s.opts.MaxLag)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w at %s: %w", ErrSwitchover, StepCheck, err)
	}

	drained := time.Now()
	var resume func(context.Context) error
	fail := func(step string, err error, demoted bool) error {
		rerr := s.rollback(ctx, resume, demoted, max(fromPos.Epoch, toPos.Epoch, s.rep.Epoch))
		s.rep.WriteWindow = time.Since(drained)
		err = fmt.Errorf("%w at %s: %w", ErrSwitchover, step, err)
		if rerr != nil {
			err = fmt.Errorf("%w; rollback failed too: %w", err, rerr)
		}
		return err
	}
	if err := s.step(ctx, StepDrain, 0, func(ctx context.Context) (err error) {
		resume, err = s.from.Drain(ctx)
		return err
	}); err != nil {
		return fail(StepDrain, err, false)
	}
	if err := s.step(ctx, StepPosition, 0, func(ctx context.Context) (err error) {
		s.rep.Position, err = s.from.Position(ctx)
		return err
	}); err != nil {
		return fail(StepPosition, err, false)
	}
	if err := s.step(ctx, StepCatchUp, s.opts.CatchUpTimeout, func(ctx context.Context) error {
		return s.to.WaitCaughtUp(ctx, s.rep.Position)
	}); err != nil {
		return fail(StepCatchUp, err, false)
	}
	if err := s.step(ctx, StepEpoch, 0, func(ctx context.Context) error {
		minEpoch := max(fromPos.Epoch, toPos.Epoch, s.rep.Position.Epoch) + 1
		e := minEpoch
		if s.opts.Epoch != nil {
			var err error
			if e, err = s.opts.Epoch(ctx, minEpoch); err != nil {
				return err
			}
			if e < minEpoch {
				return fmt.Errorf("epoch %d chosen is below %d", e, minEpoch)
			}
		}
		s.rep.Epoch = e
		return nil
	}); err != nil {
		return fail(StepEpoch, err, false)
	}
	// The old primary is made read-only at its own epoch, not the new one:
	// its stream carries the epoch to the target, whose store would then
	// refuse a promotion to an epoch it has seen. It learns the new epoch
	// when it follows the new primary.
	if err := s.step(ctx, StepDemote, 0, func(ctx context.Context) error {
		return s.from.Demote(ctx, max(fromPos.Epoch, s.rep.Position.Epoch))
	}); err != nil {
		return fail(StepDemote, err, true)
	}
	if err := s.step(ctx, StepPromote, 0, func(ctx context.Context) error {
		return s.to.Promote(ctx, s.rep.Epoch)
	}); err != nil {
		return fail(StepPromote, err, true)
	}
	s.rep.WriteWindow = time.Since(drained)
	if err := s.step(ctx, StepFollow, 0, func(ctx context.Context) error {
		return s.from.Follow(ctx, s.rep.To)
	}); err != nil {
		return fmt.Errorf("failover: switched to %s at epoch %d, but %s does not follow it yet: %w", s.rep.To, s.rep.Epoch, s.rep.From, err)
	}
	return nil
}

// rollback returns to the last safe state: the old primary serving. When
// it was demoted already, the target may be half promoted: the target is
// demoted and the old primary promoted, both at an epoch above every one
// used.
func (s *switchover) rollback(ctx context.Context, resume func(context.Context) error, demoted bool, epoch resilmail.Epoch) error {
	ctx = context.WithoutCancel(ctx)
	s.rep.RolledBack = true
	s.rep.Epoch = epoch
	if demoted {
		fence, restore := epoch+1, epoch+2
		// Best effort: if the target cannot be reached, the higher epoch
		// of the old primary fences it anyway.
		s.step(ctx, StepRollback+StepDemote, 0, func(ctx context.Context) error { return s.to.Demote(ctx, fence) })
		if err := s.step(ctx, StepRollback+StepPromote, 0, func(ctx context.Context) error { return s.from.Promote(ctx, restore) }); err != nil {
			return err
		}
		s.rep.Epoch = restore
	}
	if resume != nil {
		return s.step(ctx, StepRollback+StepResume, 0, resume)
	}
	return nil
}
