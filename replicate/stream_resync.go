package replicate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/resilmail/resilmail"
)

// How a replica brings itself back in step with its primary, by comparing
// with the primary's inventory (served next to its stream) and repairing,
// when the stream cannot resume (the primary's journal no longer reaches
// back far enough, or the replica followed another history) and when a
// change contradicts the replica's state (another UIDVALIDITY, a mailbox
// id taken): the cases Cyrus answers with a full sync of the user.

// canRepair reports whether the target can be compared and repaired.
func (r *Replica) canRepair() (RepairTarget, bool) {
	rt, ok := r.t.(RepairTarget)
	return rt, ok
}

// authTransport adds the stream's bearer token to every request.
type authTransport struct {
	base   http.RoundTripper
	header string
}

func (t authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", t.header)
	return t.base.RoundTrip(req)
}

// primaryInventory is the primary's inventory, reached next to its stream
// with the stream's credentials.
func (r *Replica) primaryInventory() (*RemoteInventory, error) {
	return NewRemoteInventory(r.base+"/inventory", &RemoteInventoryOptions{Client: r.authClient()})
}

// primaryPosition asks the primary for its position and its epoch (that
// of the change there, or a later one).
func (r *Replica) primaryPosition(ctx context.Context) (uint64, resilmail.Epoch, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := r.request(ctx, "GET", "/position", nil)
	if err != nil {
		return 0, 0, fmt.Errorf("replicate: asking the primary's position: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, statusError("asking the primary's position", resp)
	}
	var p positionResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&p); err != nil {
		return 0, 0, fmt.Errorf("replicate: the primary's position: %w", err)
	}
	return p.Position, p.Epoch, nil
}

// repairUsers compares users (all of them if nil) with the primary and
// repairs the differences. Removals over the repair options' share are
// held, logged and counted; the scheduled comparison (a [Comparer]) is
// where an operator confirms them.
func (r *Replica) repairUsers(ctx context.Context, rt RepairTarget, users []string) error {
	_, err := r.repairUsersWith(ctx, rt, users, r.opts.Repair)
	return err
}

// repairUsersWith is repairUsers with repair options opts (nil: the
// defaults); it returns the removals the repair held.
func (r *Replica) repairUsersWith(ctx context.Context, rt RepairTarget, users []string, opts *RepairOptions) ([]HeldRemoval, error) {
	inv, err := r.primaryInventory()
	if err != nil {
		return nil, err
	}
	rep, err := Compare(ctx, inv, rt, &CompareOptions{Users: users, Logger: r.log})
	if err != nil {
		// Even a partial report is not repaired: the full sync resumes
		// the stream only once every user is in step.
		return nil, fmt.Errorf("replicate: comparing with the primary: %w", err)
	}
	var ro RepairOptions
	if opts != nil {
		ro = *opts
	}
	if ro.Logger == nil {
		ro.Logger = r.log
	}
	res, err := Repair(ctx, rep, inv, r.body, rt, &ro)
	r.mu.Lock()
	r.stats.Repairs++
	r.stats.RepairsHeld += uint64(len(res.Held))
	r.mu.Unlock()
	for _, h := range res.Held {
		r.log.Warn("replicate: repair left a large removal for an operator to confirm", "replica", r.opts.Name,
			"kind", h.Kind, "user", h.User, "mailbox", h.Mailbox, "messages", h.Messages, "of", h.Of)
	}
	if err != nil {
		return res.Held, fmt.Errorf("replicate: repairing from the primary: %w", err)
	}
	r.log.Info("replicate: repaired from the primary", "replica", r.opts.Name, "users", len(users),
		"differences", rep.Differences(), "changes", res.Changes, "held", len(res.Held))
	return res.Held, nil
}

// defaultFullSync is the FullSync of a replica whose target can be
// repaired: it waits until the lanes have applied what the inbox holds
// (so that no old change lands after the repair), notes the primary's
// position, compares every user whose lane is not held and repairs, and
// returns that position. Changes after it that the repair already
// reflects are skipped or repaired again when they conflict.
func (r *Replica) defaultFullSync(ctx context.Context) (uint64, error) {
	rt, ok := r.canRepair()
	if !ok {
		return 0, errors.New("the target cannot be compared and repaired (it is no RepairTarget) and no FullSync is configured")
	}
	held, err := r.waitLanes(ctx)
	if err != nil {
		return 0, err
	}
	pos, _, err := r.primaryPosition(ctx)
	if err != nil {
		return 0, err
	}
	var users []string // nil: all
	if len(held) > 0 {
		inv, err := r.primaryInventory()
		if err != nil {
			return 0, err
		}
		theirs, err := inv.Users(ctx)
		if err != nil {
			return 0, fmt.Errorf("replicate: listing the primary's users: %w", err)
		}
		mine, err := rt.Users(ctx)
		if err != nil {
			return 0, fmt.Errorf("replicate: listing the replica's users: %w", err)
		}
		for _, u := range slices.Concat(theirs, mine) {
			if !slices.Contains(held, u) && !slices.Contains(users, u) {
				users = append(users, u)
			}
		}
		r.log.Warn("replicate: full sync leaves the users with held changes alone", "replica", r.opts.Name, "users", held)
		if len(users) == 0 {
			return pos, nil
		}
	}
	if err := r.repairUsers(ctx, rt, users); err != nil {
		return 0, err
	}
	return pos, r.checkHistory(ctx, rt, pos)
}

// checkHistory refuses to resume after pos when the target applied a
// user's changes beyond it: they came from another history (a primary
// that was replaced), and the target would skip the primary's changes up
// to its own position for that user.
func (r *Replica) checkHistory(ctx context.Context, rt RepairTarget, pos uint64) error {
	users, err := rt.Users(ctx)
	if err != nil {
		return fmt.Errorf("replicate: listing the replica's users: %w", err)
	}
	for _, u := range users {
		if up := rt.UpstreamPosition(u); up > pos {
			return fmt.Errorf("replicate: user %q has changes applied up to position %d of another history, beyond the primary's %d: "+
				"the replica cannot follow this primary without its positions reset", u, up, pos)
		}
	}
	return nil
}

// waitLanes waits until every lane has applied its queue or is held, and
// returns the users of the held ones.
func (r *Replica) waitLanes(ctx context.Context) ([]string, error) {
	for {
		r.mu.Lock()
		var held []string
		busy := false
		for _, l := range r.lanes {
			switch {
			case l.held != nil:
				held = append(held, l.user)
			case len(l.queue) > 0 && !r.blockedLocked(l, l.queue[:1]):
				busy = true
			}
		}
		gate := r.gate
		r.mu.Unlock()
		if !busy {
			return held, nil
		}
		select {
		case <-gate:
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Comparer returns a [Comparer] of the replica's target with its primary,
// through the inventory the primary serves next to its stream and with
// the stream's credentials; the bodies repairs need come from the inbox or
// the primary, verified. It runs alongside the stream: a difference only
// in flight is repaired by one of them and found equal by the other.
// The target must be a [RepairTarget] (replicate/store's Store is).
// opts.Repair nil means the replica's ReplicaOptions.Repair.
func (r *Replica) Comparer(opts *ComparerOptions) (*Comparer, error) {
	rt, ok := r.canRepair()
	if !ok {
		return nil, errors.New("replicate: the replica's target cannot be compared and repaired (it is no RepairTarget)")
	}
	inv, err := r.primaryInventory()
	if err != nil {
		return nil, err
	}
	var o ComparerOptions
	if opts != nil {
		o = *opts
	}
	if o.Repair == nil {
		o.Repair = r.opts.Repair
	}
	if o.Logger == nil {
		o.Logger = r.log
	}
	if o.RestorePrimary == nil {
		if br, ok := r.t.(BodyReader); ok {
			o.RestorePrimary = func(ctx context.Context, d resilmail.Digest) error { return r.restorePrimary(ctx, br, d) }
		}
	}
	return NewComparer(inv, r.body, rt, &o)
}

// restorePrimary sends the primary the target's copy of a body the primary
// holds damaged; the target verifies what it reads, and the primary
// verifies what it receives.
func (r *Replica) restorePrimary(ctx context.Context, br BodyReader, d resilmail.Digest) error {
	b, err := br.Body(ctx, d)
	if err != nil {
		return fmt.Errorf("the replica's copy: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := r.request(ctx, "PUT", "/body/"+d.String()+"?replica="+url.QueryEscape(r.opts.Name), bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return statusError("restoring a body on the primary", resp)
	}
	r.log.Warn("replicate: restored a body the primary holds damaged", "replica", r.opts.Name, "digest", d)
	return nil
}
