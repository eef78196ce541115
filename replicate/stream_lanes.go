package replicate

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/resilmail/resilmail"
)

// maxApplyBatch is the most changes a lane applies in one Target.Apply.
const maxApplyBatch = 256

// laneIdle is how long a lane with nothing to apply keeps its goroutine:
// a replica of many users holds goroutines only for those active lately.
var laneIdle = time.Minute

// A HeldChange is a change the replica's Hold function stopped: its user's
// lane waits at it until [Replica.Confirm].
type HeldChange struct {
	Change resilmail.Change
	Reason string
	Since  time.Time
}

// lane applies the changes of one user, in order.
type lane struct {
	user   string
	queue  []resilmail.Change // received, not applied; guarded by Replica.mu
	last   uint64             // highest position queued
	wake   chan struct{}
	held   *HeldChange
	parked *ParkedChange
}

// enqueueLocked queues a durable change for its user's lane; seg is the
// inbox segment of its record.
func (r *Replica) enqueueLocked(c resilmail.Change, seg uint64) {
	l := r.lanes[c.User]
	if l == nil {
		l = &lane{user: c.User, wake: make(chan struct{}, 1)}
		r.lanes[c.User] = l
		if r.laneCtx != nil {
			r.startLaneLocked(l)
		}
	}
	if c.Seq <= l.last {
		return
	}
	l.last = c.Seq
	l.queue = append(l.queue, c)
	if bp, ok := r.bodies[c.Digest]; ok && c.Kind == resilmail.ChangeAppend {
		seg = min(seg, bp.Seg)
	}
	r.unapplied[c.Seq] = seg
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// startLanes starts a goroutine per lane, now and for every lane created
// later, until ctx is done.
func (r *Replica) startLanes(ctx context.Context, wg *sync.WaitGroup) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.laneCtx, r.laneWG = ctx, wg
	for _, l := range r.lanes {
		r.startLaneLocked(l)
	}
}

func (r *Replica) startLaneLocked(l *lane) {
	ctx := r.laneCtx
	r.laneWG.Go(func() { r.runLane(ctx, l) })
}

func (r *Replica) openGateLocked() {
	close(r.gate)
	r.gate = make(chan struct{})
}

// takeLocked returns the changes at the head of l that can be applied
// together: of one epoch, at most maxApplyBatch.
func (r *Replica) takeLocked(l *lane, singles bool) []resilmail.Change {
	n := 0
	for n < len(l.queue) && n < maxApplyBatch && l.queue[n].Epoch == l.queue[0].Epoch {
		n++
		if singles {
			break
		}
	}
	return slices.Clone(l.queue[:n])
}

// blockedLocked reports whether another lane still has an earlier change
// of a lower epoch than batch, which the target would refuse after batch
// raised its epoch. A held lane blocks too: its change was made before the
// promotion and must still apply once confirmed. Only batches that raise
// the epoch wait, so a held change stalls other users only across a
// promotion.
func (r *Replica) blockedLocked(l *lane, batch []resilmail.Change) bool {
	e, s := batch[0].Epoch, batch[len(batch)-1].Seq
	for _, o := range r.lanes {
		if o != l && len(o.queue) > 0 && o.queue[0].Seq < s && o.queue[0].Epoch < e {
			return true
		}
	}
	return false
}

// doneLocked removes the first n changes of l as applied (or dropped).
func (r *Replica) doneLocked(l *lane, n int) {
	for _, c := range l.queue[:n] {
		delete(r.unapplied, c.Seq)
	}
	l.queue = slices.Delete(l.queue, 0, n)
	r.openGateLocked()
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// runLane applies l's changes until ctx is done.
func (r *Replica) runLane(ctx context.Context, l *lane) {
	backoff := 100 * time.Millisecond
	singles := false
	for ctx.Err() == nil {
		r.mu.Lock()
		batch := r.takeLocked(l, singles)
		gate := r.gate
		blocked := len(batch) > 0 && r.blockedLocked(l, batch)
		r.mu.Unlock()
		if len(batch) == 0 || blocked {
			idle := time.NewTimer(laneIdle)
			select {
			case <-l.wake:
			case <-gate:
			case <-ctx.Done():
			case <-idle.C:
				if r.retire(l) {
					return
				}
			}
			idle.Stop()
			continue
		}
		if d := r.opts.ApplyDelay; d > 0 {
			if wait := time.Until(batch[0].Time.Add(d)); wait > 0 {
				sleepCtx(ctx, min(wait, time.Second))
				continue
			}
			now := time.Now()
			for i, c := range batch {
				if c.Time.Add(d).After(now) {
					batch = batch[:i]
					break
				}
			}
		}
		if r.opts.Hold != nil {
			var ok bool
			if batch, ok = r.hold(ctx, l, batch); !ok {
				continue
			}
		}
		err := r.t.Apply(ctx, batch, r.body)
		switch {
		case err == nil:
			r.mu.Lock()
			r.doneLocked(l, len(batch))
			r.unparkLocked(l)
			r.mu.Unlock()
			backoff, singles = 100*time.Millisecond, false
		case ctx.Err() != nil:
			return
		case len(batch) > 1:
			// Find the failing change: the ones before it are applied
			// and will be skipped.
			singles = true
		case errors.Is(err, ErrBodyUnavailable):
			// Only this user waits for the body; the others go on.
			sleepCtx(ctx, r.park(l, batch[0], err))
		case errors.Is(err, ErrConflict):
			if r.repairConflict(ctx, l, batch[0], err) {
				backoff = 100 * time.Millisecond
			} else {
				sleepCtx(ctx, backoff)
				backoff = min(2*backoff, r.opts.MaxBackoff)
			}
			singles = false
		case errors.Is(err, ErrFenced):
			err = fmt.Errorf("replicate: dropping change %d of %q: %w", batch[0].Seq, l.user, err)
			r.noteError(err, &r.stats.Fenced)
			r.log.Error("replicate: change from a demoted primary dropped", "replica", r.opts.Name, "err", err)
			r.mu.Lock()
			r.doneLocked(l, 1)
			r.mu.Unlock()
			singles = false
		default:
			err = fmt.Errorf("replicate: applying change %d of %q: %w", batch[0].Seq, l.user, err)
			r.noteError(err, &r.stats.ApplyErrors)
			r.log.Error("replicate: apply failed, retrying", "replica", r.opts.Name, "err", err, "backoff", backoff)
			sleepCtx(ctx, backoff)
			backoff = min(2*backoff, r.opts.MaxBackoff)
		}
	}
}

// repairConflict handles change c of l that contradicts the target's
// state: it compares l's user with the primary and repairs it, which
// brings the user to the primary's present state (that change included),
// then drops the change. It reports whether the lane goes on; if the
// repair fails, the lane tries the change again later.
func (r *Replica) repairConflict(ctx context.Context, l *lane, c resilmail.Change, cerr error) bool {
	cerr = fmt.Errorf("replicate: change %d of %q: %w", c.Seq, l.user, cerr)
	r.noteError(cerr, &r.stats.Conflicts)
	rt, ok := r.canRepair()
	if !ok {
		r.log.Error("replicate: change conflicts with the replica and the target cannot be repaired, retrying",
			"replica", r.opts.Name, "err", cerr)
		return false
	}
	r.log.Warn("replicate: change conflicts with the replica, repairing the user from the primary",
		"replica", r.opts.Name, "err", cerr)
	if err := r.repairUsers(ctx, rt, []string{l.user}); err != nil {
		r.noteError(err, &r.stats.ApplyErrors)
		r.log.Error("replicate: repairing a conflicting user failed, retrying", "replica", r.opts.Name, "user", l.user, "err", err)
		return false
	}
	r.mu.Lock()
	r.doneLocked(l, 1)
	r.mu.Unlock()
	return true
}

// retire removes l if it has nothing to apply and holds nothing; a change
// for its user later starts a new lane.
func (r *Replica) retire(l *lane) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(l.queue) > 0 || l.held != nil || l.parked != nil || r.lanes[l.user] != l {
		return false
	}
	delete(r.lanes, l.user)
	return true
}

// hold asks Hold about the changes of batch not yet confirmed and returns
// those before the first held one; if that is the first, it waits for
// Confirm and returns ok false.
func (r *Replica) hold(ctx context.Context, l *lane, batch []resilmail.Change) ([]resilmail.Change, bool) {
	for i, c := range batch {
		r.mu.Lock()
		confirmed := r.confirmed[l.user] >= c.Seq
		r.mu.Unlock()
		if confirmed {
			continue
		}
		held, reason := r.opts.Hold(ctx, c)
		if !held {
			continue
		}
		if i > 0 {
			return batch[:i], true
		}
		r.mu.Lock()
		l.held = &HeldChange{Change: c, Reason: reason, Since: time.Now()}
		r.openGateLocked()
		r.mu.Unlock()
		r.log.Warn("replicate: change held until confirmed", "replica", r.opts.Name, "user", l.user,
			"seq", c.Seq, "kind", c.Kind, "reason", reason)
		for {
			r.mu.Lock()
			confirmed := r.confirmed[l.user] >= c.Seq
			if confirmed || ctx.Err() != nil {
				l.held = nil
				r.openGateLocked()
			}
			r.mu.Unlock()
			if confirmed || ctx.Err() != nil {
				return nil, false
			}
			select {
			case <-l.wake:
			case <-ctx.Done():
			}
		}
	}
	return batch, true
}

// Held returns the changes held until Confirm, in journal order.
func (r *Replica) Held() []HeldChange {
	r.mu.Lock()
	defer r.mu.Unlock()
	var hs []HeldChange
	for _, l := range r.lanes {
		if l.held != nil {
			hs = append(hs, *l.held)
		}
	}
	slices.SortFunc(hs, func(a, b HeldChange) int { return cmp.Compare(a.Change.Seq, b.Change.Seq) })
	return hs
}

// Confirm lets the held change seq of user be applied. The confirmation is
// durable in the inbox: after a restart the change is not held again. It
// is an error if that change is not held.
func (r *Replica) Confirm(user string, seq uint64) error {
	r.mu.Lock()
	l := r.lanes[user]
	if l == nil || l.held == nil || l.held.Change.Seq != seq {
		r.mu.Unlock()
		return fmt.Errorf("replicate: no held change %d for user %q", seq, user)
	}
	inbox := r.inbox
	r.mu.Unlock()
	if inbox == nil {
		return errors.New("replicate: replica not running")
	}
	if _, err := inbox.AppendSync(uvarintRecord(recConfirm, seq, user)); err != nil {
		r.noteError(err, &r.stats.InboxErrors)
		return fmt.Errorf("replicate: recording the confirmation: %w", err)
	}
	r.mu.Lock()
	r.confirmed[user] = max(r.confirmed[user], seq)
	r.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	r.log.Info("replicate: held change confirmed", "replica", r.opts.Name, "user", user, "seq", seq)
	return nil
}
