package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/resilmail/resilmail"
)

// ComparerStats describe a [Comparer]'s runs.
type ComparerStats struct {
	Runs        int           // runs finished, with or without error
	LastRun     time.Time     // when the last run started
	LastRunTook time.Duration // how long it took
	LastError   string        // the last run's error, "" if none
	// Differences found, Repaired (changes applied) and Held (removals
	// left for confirmation) by the last run.
	Differences, Repaired, Held int
	// PrimaryRestored counts the bodies damaged on the primary that the
	// last run restored there from the replica (RestorePrimary).
	PrimaryRestored int
	// TotalDifferences, TotalRepaired and TotalPrimaryRestored add up
	// every run's.
	TotalDifferences, TotalRepaired, TotalPrimaryRestored int
	// LastHeld lists the last run's held removals, to confirm.
	LastHeld []HeldRemoval
}

// A Comparer compares a replica with its primary on demand ([Comparer.RunOnce])
// or every Interval ([Comparer.Run]) and repairs what differs, unless
// ReportOnly. It is safe for concurrent use; runs do not overlap.
type Comparer struct {
	primary Inventory
	body    BodyFunc
	replica RepairTarget
	opts    ComparerOptions

	run sync.Mutex // one run at a time

	mu    sync.Mutex
	stats ComparerStats
}

// NewComparer returns a Comparer of replica with primary that fetches the
// bodies repairs need through body. It starts nothing.
func NewComparer(primary Inventory, body BodyFunc, replica RepairTarget, opts *ComparerOptions) (*Comparer, error) {
	var o ComparerOptions
	if opts != nil {
		o = *opts
	}
	if primary == nil || replica == nil {
		return nil, errors.New("replicate: NewComparer needs a primary and a replica")
	}
	if o.Interval < 0 {
		return nil, errors.New("replicate: negative comparison interval")
	}
	if o.Interval == 0 {
		o.Interval = time.Hour
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	co, ro := CompareOptions{}, RepairOptions{}
	if o.Compare != nil {
		co = *o.Compare
	}
	if o.Repair != nil {
		ro = *o.Repair
	}
	if co.Logger == nil {
		co.Logger = o.Logger
	}
	if ro.Logger == nil {
		ro.Logger = o.Logger
	}
	if co.Now == nil {
		co.Now = o.Now
	}
	if ro.Now == nil {
		ro.Now = o.Now
	}
	o.Compare, o.Repair = &co, &ro
	return &Comparer{primary: primary, body: body, replica: replica, opts: o}, nil
}

// RunOnce compares now and, unless ReportOnly, repairs. confirmed are held
// removals the operator confirms for this run (added to
// RepairOptions.Confirmed).
func (c *Comparer) RunOnce(ctx context.Context, confirmed ...HeldRemoval) (*Report, RepairResult, error) {
	c.run.Lock()
	defer c.run.Unlock()
	start := c.opts.Now()
	rep, err := Compare(ctx, c.primary, c.replica, c.opts.Compare)
	var res RepairResult
	if rep != nil && !rep.Equal() && !c.opts.ReportOnly {
		// The users compared are repaired even if others failed.
		ro := *c.opts.Repair
		ro.Confirmed = append(append([]HeldRemoval(nil), ro.Confirmed...), confirmed...)
		var rerr error
		res, rerr = Repair(ctx, rep, c.primary, c.body, c.replica, &ro)
		err = errors.Join(err, rerr)
	}
	restored := 0
	if rep != nil && c.opts.RestorePrimary != nil && !c.opts.ReportOnly {
		for _, d := range primaryCorrupt(rep) {
			if rerr := c.opts.RestorePrimary(ctx, d); rerr != nil {
				err = errors.Join(err, fmt.Errorf("replicate: restoring body %s on the primary: %w", d, rerr))
				continue
			}
			restored++
		}
	}
	took := c.opts.Now().Sub(start)
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.stats
	s.Runs++
	s.LastRun, s.LastRunTook, s.LastError = start, took, ""
	if err != nil {
		s.LastError = err.Error()
	}
	s.Differences, s.Repaired, s.Held, s.LastHeld = 0, res.Changes, len(res.Held), res.Held
	if rep != nil {
		s.Differences = rep.Differences()
	}
	s.PrimaryRestored = restored
	s.TotalDifferences += s.Differences
	s.TotalRepaired += s.Repaired
	s.TotalPrimaryRestored += restored
	c.opts.Logger.Info("replicate: comparison run", "differences", s.Differences, "repaired", s.Repaired, "held", s.Held, "primary_restored", restored,
		"report_only", c.opts.ReportOnly, "duration", took, "err", err)
	return rep, res, err
}

// primaryCorrupt returns the digests of the bodies the report found
// damaged on the primary, each once.
func primaryCorrupt(rep *Report) []resilmail.Digest {
	var out []resilmail.Digest
	for _, md := range rep.MailboxDiffs {
		for _, m := range md.Messages {
			if m.Kind == MessagePrimaryCorrupt && m.Primary != nil && !slices.Contains(out, m.Primary.Digest) {
				out = append(out, m.Primary.Digest)
			}
		}
	}
	return out
}

// Run runs a comparison at once and then Interval after the end of each,
// until ctx is done; it returns nil then. A run's error is logged and kept
// in Stats, and the next run happens as planned.
func (c *Comparer) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, _, err := c.RunOnce(ctx); err != nil && ctx.Err() == nil {
			c.opts.Logger.Warn("replicate: comparison run failed", "err", err)
		}
		t.Reset(c.opts.Interval)
	}
}

// Stats returns what the runs did so far.
func (c *Comparer) Stats() ComparerStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.LastHeld = append([]HeldRemoval(nil), s.LastHeld...)
	return s
}
