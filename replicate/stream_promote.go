package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
)

// A Promoter is a Target that can become a primary: replicate/store's
// Store is one. Promote must raise the target's epoch to e durably
// before it returns, record that it continued the history it followed up
// to position until, and take local writes; it is idempotent.
type Promoter interface {
	Promote(ctx context.Context, e resilmail.Epoch, until uint64) error
}

// A PromoteResult describes a promotion ([Replica.Promote]).
type PromoteResult struct {
	// Epoch is the epoch the target is primary at.
	Epoch resilmail.Epoch
	// Until is the old primary's position the replica had received (and
	// acknowledged) and applied before the target became a primary.
	Until uint64
	// Drained is how many received changes the promotion waited for.
	Drained int
	// Resolved are delayed destructive changes the promotion applied
	// because acknowledged later changes of their users needed them first.
	Resolved []HeldChange
	// Held are the delayed destructive changes left for the operator:
	// not applied; Confirm applies one as a change of the new epoch.
	Held []HeldChange
	// Took is how long the promotion took, from the call until the
	// target was a primary durably.
	Took time.Duration
}

// errPromoting ends the session of a replica being promoted.
var errPromoting = errors.New("replicate: the replica is being promoted")

// Promote makes the replica's target the primary at epoch e: it stops
// following the stream (what arrived but was not kept in the inbox was
// not acknowledged either), applies everything the inbox holds (every
// change it acknowledged), resolves the delayed destructive changes by
// the guard's rule (one that acknowledged later changes of its user wait
// for is applied before them; the others stay delayed, listed in Held,
// for the operator to confirm), and then has the target raise its epoch
// durably, record the history it continued, and take local writes
// ([Promoter]). Run keeps running (it applies confirmed changes) but
// follows no one. Promote needs a running replica; a second call with
// the same epoch returns the first's result, idempotent.
//
// The promotion is durable on the replica's side too (promoted.json in
// its folder, written before the target is promoted): a replica restarted
// over the same folder follows no one and applies the delayed changes
// the operator confirms as changes of the new epoch; a restart between
// the two writes finishes the promotion. A target demoted since (its
// epoch has risen beyond the promotion's, or, if it has an IsPrimary
// method as replicate/store's Store does, it is no longer a primary) makes
// the record moot: the replica forgets it and follows again.
func (r *Replica) Promote(ctx context.Context, e resilmail.Epoch) (PromoteResult, error) {
	start := time.Now()
	pm, ok := r.t.(Promoter)
	if !ok {
		return PromoteResult{}, errors.New("replicate: the target cannot be promoted (it is no Promoter)")
	}
	r.mu.Lock()
	if r.laneCtx == nil {
		r.mu.Unlock()
		return PromoteResult{}, errors.New("replicate: Promote needs a running replica (Run)")
	}
	if r.promoted && r.promotion.Epoch == e {
		res := r.promotion
		r.mu.Unlock()
		return res, nil
	}
	r.promoted = true
	end, done := r.endSession, r.sessionDone
	drained := len(r.unapplied)
	r.mu.Unlock()
	r.log.Warn("replicate: promoting: the stream stops, the inbox is applied", "replica", r.opts.Name, "epoch", uint64(e))
	if end != nil {
		end(errPromoting)
		select {
		case <-done:
		case <-ctx.Done():
			return PromoteResult{}, ctx.Err()
		}
	}
	var resolved []HeldChange
	for {
		if _, err := r.waitLanes(ctx); err != nil {
			return PromoteResult{}, err
		}
		// A lane that waits for a delayed change holds acknowledged
		// changes behind it: the delayed change is applied first.
		r.mu.Lock()
		type wait struct {
			l *lane
			c resilmail.Change
		}
		var waits []wait
		for _, l := range r.lanes {
			if l.held != nil {
				waits = append(waits, wait{l, l.held.Change})
				resolved = append(resolved, *l.held)
			}
		}
		r.mu.Unlock()
		if len(waits) == 0 {
			break
		}
		for _, w := range waits {
			r.log.Warn("replicate: promotion applies a delayed change that acknowledged changes wait for", "replica", r.opts.Name,
				"user", w.l.user, "seq", w.c.Seq, "kind", w.c.Kind)
			if err := r.applyDelayed(ctx, w.l, w.c); err != nil {
				return PromoteResult{}, err
			}
			select {
			case w.l.wake <- struct{}{}:
			default:
			}
		}
	}
	r.mu.Lock()
	until := r.received
	r.mu.Unlock()
	// The replica's side of the promotion is durable before the
	// target's: a restart in between finishes the promotion (Run), and a
	// restart after it does not follow the old primary again.
	if err := r.savePromotion(promotionRecord{Epoch: e, Until: until, At: time.Now().UTC()}); err != nil {
		return PromoteResult{}, err
	}
	if err := pm.Promote(ctx, e, until); err != nil {
		return PromoteResult{}, fmt.Errorf("replicate: promoting the target: %w", err)
	}
	res := PromoteResult{Epoch: e, Until: until, Drained: drained, Resolved: resolved, Held: r.Held(), Took: time.Since(start)}
	r.mu.Lock()
	r.promotion = res
	r.mu.Unlock()
	for _, h := range res.Held {
		r.log.Warn("replicate: a delayed destructive change stays for the operator after the promotion", "replica", r.opts.Name,
			"user", h.Change.User, "seq", h.Change.Seq, "kind", h.Change.Kind, "reason", h.Reason)
	}
	r.log.Warn("replicate: promoted", "replica", r.opts.Name, "epoch", uint64(e), "until", until, "drained", drained,
		"resolved", len(resolved), "held", len(res.Held), "took", res.Took)
	return res, nil
}

// promotedFile records a replica's promotion in its folder.
const promotedFile = "promoted.json"

// promotionRecord is promotedFile's content.
type promotionRecord struct {
	Epoch resilmail.Epoch `json:"epoch"`
	Until uint64          `json:"until"`
	At    time.Time       `json:"at"`
}

func (r *Replica) savePromotion(rec promotionRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(durable.OS, filepath.Join(r.dir, promotedFile), b, 0o640); err != nil {
		return fmt.Errorf("replicate: recording the promotion: %w", err)
	}
	return nil
}

// loadPromotion restores a promotion recorded in the replica's folder
// before the replica opens its inbox (Run), and finishes it if the target
// was not promoted yet; it forgets one the target's epoch has passed.
func (r *Replica) loadPromotion(ctx context.Context) error {
	path := filepath.Join(r.dir, promotedFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("replicate: reading the promotion record: %w", err)
	}
	var rec promotionRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.Epoch == 0 {
		return fmt.Errorf("replicate: the promotion record %s is damaged (%v): the operator decides whether this replica is a primary", path, err)
	}
	pt, reports := r.t.(interface{ IsPrimary() bool })
	switch cur := r.t.Epoch(); {
	case cur > rec.Epoch || cur == rec.Epoch && reports && !pt.IsPrimary():
		r.log.Warn("replicate: the target was demoted since this replica's promotion; it follows again", "replica", r.opts.Name,
			"promoted", uint64(rec.Epoch), "epoch", uint64(cur))
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("replicate: forgetting the promotion: %w", err)
		}
		return durable.SyncDir(r.dir)
	case cur < rec.Epoch:
		pm, ok := r.t.(Promoter)
		if !ok {
			return errors.New("replicate: the target cannot be promoted (it is no Promoter)")
		}
		r.log.Warn("replicate: finishing a promotion a restart interrupted", "replica", r.opts.Name, "epoch", uint64(rec.Epoch))
		if err := pm.Promote(ctx, rec.Epoch, rec.Until); err != nil {
			return fmt.Errorf("replicate: finishing the promotion: %w", err)
		}
	}
	r.mu.Lock()
	r.promoted = true
	r.promotion = PromoteResult{Epoch: rec.Epoch, Until: rec.Until}
	r.mu.Unlock()
	return nil
}
