package store

import (
	"context"
	"errors"
	"time"
)

// Run does the store's background work until ctx is done: it writes a
// checkpoint and compacts the journal every Options.CheckpointEvery
// changes or Options.CheckpointBytes of journal (fsyncing the body files
// written since the last one), scrubs every body every
// Options.ScrubInterval, and drops the retention holds not renewed for
// Options.HoldMaxAge ([Store.ExpireHolds], every hour). It returns
// nil when ctx is done, [ErrClosed] when the store is closed, and owns no
// goroutine once it has returned. The store works without it, only its
// journal grows and partial reads go unchecked.
func (s *Store) Run(ctx context.Context) error {
	var scrub <-chan time.Time
	if s.opts.ScrubInterval > 0 {
		t := time.NewTicker(s.opts.ScrubInterval)
		defer t.Stop()
		scrub = t.C
	}
	holds := time.NewTicker(holdCheckEvery)
	defer holds.Stop()
	for {
		s.mu.Lock()
		pos, ckpt, closed, advanced, since := s.applied, s.ckptSeq, s.closed, s.durableCh, s.journalSince
		s.mu.Unlock()
		if closed {
			return ErrClosed
		}
		if pos-ckpt >= s.opts.CheckpointEvery || since >= s.opts.CheckpointBytes {
			if err := s.Compact(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if errors.Is(err, ErrClosed) {
					return err
				}
				s.log.Error("store: checkpoint failed", "err", err)
			} else {
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-scrub:
			if _, err := s.Scrub(ctx); err != nil && ctx.Err() == nil {
				if errors.Is(err, ErrClosed) {
					return err
				}
				s.log.Error("store: scrub failed", "err", err)
			}
		case <-holds.C:
			if _, err := s.ExpireHolds(ctx); err != nil && ctx.Err() == nil {
				if errors.Is(err, ErrClosed) {
					return err
				}
				s.log.Error("store: expiring retention holds failed", "err", err)
			}
		case <-advanced: // the journal grew (or the store closed): look again
		}
	}
}
