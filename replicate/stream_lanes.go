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
	user  string
	queue []resilmail.Change // received, not applied; guarded by Replica.mu
	last  uint64             // highest position queued
	wake  chan struct{}
	// held is the delayed change the lane waits for: its head needs it
	// first (see stream_delay.go); nil while the lane goes on.
	held   *HeldChange
	parked *ParkedChange
	// delayed are the destructive changes set aside until confirmed, in
	// journal order; guarded by Replica.mu.
	delayed []delayed
}

// enqueueLocked queues a durable change for its user's lane; seg is the
// inbox segment of its record.
func (r *Replica) enqueueLocked(c resilmail.Change, seg uint64) {
	l := r.laneLocked(c.User)
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

// laneLocked returns user's lane, creating (and starting) it.
func (r *Replica) laneLocked(user string) *lane {
	l := r.lanes[user]
	if l == nil {
		l = &lane{user: user, wake: make(chan struct{}, 1)}
		r.lanes[user] = l
		if r.laneCtx != nil {
			r.startLaneLocked(l)
		}
	}
	return l
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
	filled := false
	for _, c := range l.queue[:n] {
		delete(r.unapplied, c.Seq)
		if _, ok := r.missing[c.Seq]; ok {
			delete(r.missing, c.Seq)
			filled = true
		}
	}
	if filled {
		// The primary learns that these are replicated now.
		select {
		case r.ackNow <- struct{}{}:
		default:
		}
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
		dc, confirmed := l.nextConfirmedLocked()
		r.mu.Unlock()
		if confirmed {
			if err := r.applyDelayed(ctx, l, dc); err != nil && ctx.Err() == nil {
				r.noteError(err, &r.stats.ApplyErrors)
				r.log.Error("replicate: applying a confirmed change failed, retrying", "replica", r.opts.Name, "err", err, "backoff", backoff)
				sleepCtx(ctx, backoff)
				backoff = min(2*backoff, r.opts.MaxBackoff)
			}
			continue
		}
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
	if len(l.queue) > 0 || l.held != nil || l.parked != nil || len(l.delayed) > 0 || r.lanes[l.user] != l {
		return false
	}
	delete(r.lanes, l.user)
	return true
}

// hold returns the changes at the head of batch that can be applied now:
// those before the first one that needs a delayed change first, or that
// Hold holds. A held change at the head is delayed (set aside, durably)
// and the lane goes on with the next; a change at the head that needs a
// delayed one makes the lane wait until that is confirmed. ok is false
// when nothing is to be applied this round.
func (r *Replica) hold(ctx context.Context, l *lane, batch []resilmail.Change) ([]resilmail.Change, bool) {
	for i := range batch {
		c := &batch[i]
		r.mu.Lock()
		confirmed := r.confirmed[l.user] >= c.Seq // confirmed before a restart, by an older replica
		dep := l.dependsLocked(c)
		r.mu.Unlock()
		if dep != nil {
			if i > 0 {
				return batch[:i], true
			}
			r.waitFor(ctx, l, dep)
			return nil, false
		}
		if confirmed {
			continue
		}
		if i > 0 && removes(c) {
			// Hold judges a change against the replica's state: apply
			// what comes before it first, or a mailbox filled earlier in
			// this batch looks empty (or missing) to it.
			return batch[:i], true
		}
		held, reason := r.opts.Hold(ctx, *c)
		if !held {
			continue
		}
		if i > 0 {
			return batch[:i], true
		}
		if err := r.delay(l, *c, reason); err != nil {
			r.log.Error("replicate: delaying a change failed, retrying", "replica", r.opts.Name, "err", err)
			sleepCtx(ctx, time.Second)
		}
		return nil, false
	}
	return batch, true
}

// removes reports whether c can remove messages, mailboxes or flags: the
// changes Hold must judge with every earlier change of the user applied.
func removes(c *resilmail.Change) bool {
	switch c.Kind {
	case resilmail.ChangeExpunge, resilmail.ChangeMailboxDelete, resilmail.ChangeUserDelete, resilmail.ChangeMailboxRename:
		return true
	case resilmail.ChangeFlags:
		return c.FlagOp != resilmail.FlagsAdd
	}
	return false
}

// waitFor makes l wait until the delayed change d is confirmed (and
// applied) or ctx is done.
func (r *Replica) waitFor(ctx context.Context, l *lane, d *delayed) {
	r.mu.Lock()
	seq := d.Change.Seq
	hc := d.HeldChange
	l.held = &hc
	r.openGateLocked()
	r.mu.Unlock()
	r.log.Warn("replicate: change waits for a delayed change to be confirmed", "replica", r.opts.Name, "user", l.user,
		"waits_for", seq)
	for {
		r.mu.Lock()
		pending := false
		for _, x := range l.delayed {
			if x.Change.Seq == seq && !x.confirmed {
				pending = true
			}
		}
		if !pending || ctx.Err() != nil {
			l.held = nil
			r.openGateLocked()
		}
		r.mu.Unlock()
		if !pending || ctx.Err() != nil {
			return
		}
		select {
		case <-l.wake:
		case <-ctx.Done():
		}
	}
}

// Held returns the changes delayed until Confirm, in journal order.
func (r *Replica) Held() []HeldChange {
	r.mu.Lock()
	defer r.mu.Unlock()
	var hs []HeldChange
	for _, l := range r.lanes {
		for _, d := range l.delayed {
			if !d.confirmed {
				hs = append(hs, d.HeldChange)
			}
		}
	}
	slices.SortFunc(hs, func(a, b HeldChange) int { return cmp.Compare(a.Change.Seq, b.Change.Seq) })
	return hs
}

// Confirm lets the delayed change seq of user be applied. The
// confirmation is durable in the inbox: after a restart the change is
// applied, not held again. It is an error if that change is not delayed.
func (r *Replica) Confirm(user string, seq uint64) error {
	r.mu.Lock()
	l := r.lanes[user]
	var d *delayed
	if l != nil {
		for i := range l.delayed {
			if l.delayed[i].Change.Seq == seq {
				d = &l.delayed[i]
			}
		}
	}
	if d == nil {
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
	for i := range l.delayed {
		if l.delayed[i].Change.Seq == seq {
			l.delayed[i].confirmed = true
		}
	}
	r.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	r.log.Info("replicate: held change confirmed", "replica", r.opts.Name, "user", user, "seq", seq)
	return nil
}

// Discard drops the delayed destructive change seq of user instead of
// applying it: an operator's decision that the change (a mass expunge, a
// mailbox or user delete of the old primary) was a mistake. It is
// recorded durably before Discard returns, logged and counted
// (ReplicaStats.Discarded); the user's changes that waited for it apply
// without it. A confirmed change is being applied and cannot be
// discarded. On a replica that still follows its primary, the replica
// then keeps what the primary removed until a comparison proposes the
// removal again (held like any removal the guard would hold); after a
// promotion the discarded change is simply never made.
func (r *Replica) Discard(user string, seq uint64) error {
	r.mu.Lock()
	l := r.lanes[user]
	var d *delayed
	if l != nil {
		for i := range l.delayed {
			if l.delayed[i].Change.Seq == seq {
				d = &l.delayed[i]
			}
		}
	}
	if d == nil {
		r.mu.Unlock()
		return fmt.Errorf("replicate: no held change %d for user %q", seq, user)
	}
	if d.confirmed {
		r.mu.Unlock()
		return fmt.Errorf("replicate: held change %d of %q is confirmed and being applied; it cannot be discarded", seq, user)
	}
	c, reason := d.Change, d.Reason
	inbox := r.inbox
	r.mu.Unlock()
	if inbox == nil {
		return errors.New("replicate: replica not running")
	}
	if _, err := inbox.AppendSync(uvarintRecord(recDiscard, seq, user)); err != nil {
		r.noteError(err, &r.stats.InboxErrors)
		return fmt.Errorf("replicate: recording the discard: %w", err)
	}
	r.mu.Lock()
	for i := range l.delayed {
		if l.delayed[i].Change.Seq == seq {
			l.delayed = append(l.delayed[:i], l.delayed[i+1:]...)
			break
		}
	}
	delete(r.unapplied, seq)
	r.stats.Discarded++
	r.openGateLocked()
	r.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	r.log.Warn("replicate: held change discarded by the operator; it will not be applied", "replica", r.opts.Name,
		"user", user, "seq", seq, "kind", c.Kind, "mailbox", c.Mailbox, "reason", reason)
	return nil
}
