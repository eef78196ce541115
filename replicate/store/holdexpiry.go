package store

import (
	"context"
	"time"
)

// holdCheckEvery is how often [Store.Run] looks for expired holds.
const holdCheckEvery = time.Hour

// ExpireHolds drops the retention holds not renewed for
// Options.HoldMaxAge (a reader that stopped following: a backup
// repository no longer used, a replica removed), so that what they kept
// goes: the journal at the next checkpoint, the bodies of expunged
// messages at once. Each is logged as a warning and counted
// (Stats.HoldsExpired). Then, while the bodies of removed messages kept
// for the holds exceed Options.HoldBodyBytes, it drops the hold with
// bodies at the lowest position (logged, Stats.HoldsOverCap). It returns
// the names dropped. [Store.Run] calls it every hour and before every
// checkpoint.
func (s *Store) ExpireHolds(ctx context.Context) ([]string, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.ops.Done()
	s.ckptMu.Lock()
	defer s.ckptMu.Unlock()
	return s.expireHoldsCkptLocked()
}

// expireHoldsCkptLocked is ExpireHolds with s.ckptMu held: it drops the
// holds too old (Options.HoldMaxAge) and then those over the body cap
// (Options.HoldBodyBytes, see capHoldBodiesLocked).
func (s *Store) expireHoldsCkptLocked() ([]string, error) {
	now := s.opts.Now()
	s.mu.Lock()
	var gone []Hold
	if s.opts.HoldMaxAge >= 0 {
		for name, h := range s.ret.holds {
			if now.Sub(h.Renewed) > s.opts.HoldMaxAge {
				gone = append(gone, h)
				delete(s.ret.holds, name)
			}
		}
		s.c.holdsExpired += uint64(len(gone))
		if len(gone) > 0 {
			s.pruneTombsLocked()
		}
	}
	aged := len(gone)
	capped, kept := s.capHoldBodiesLocked()
	gone = append(gone, capped...)
	if len(gone) == 0 {
		s.mu.Unlock()
		return nil, nil
	}
	buf := s.encodeRetentionLocked(s.ckptSeq)
	s.mu.Unlock()
	names := make([]string, 0, len(gone))
	for i, h := range gone {
		names = append(names, h.Name)
		if i < aged {
			s.log.Warn("store: retention hold expired: its reader has not renewed it within HoldMaxAge; the journal and bodies it kept are let go, and the reader will have to read in full",
				"hold", h.Name, "position", h.Position, "bodies", h.Bodies, "renewed", h.Renewed, "max_age", s.opts.HoldMaxAge)
		} else {
			s.log.Warn("store: retention hold dropped: the bodies of removed messages kept for the holds exceed HoldBodyBytes; the oldest hold is let go, and its reader will have to read in full",
				"hold", h.Name, "position", h.Position, "kept_bytes", kept, "hold_body_bytes", s.opts.HoldBodyBytes)
		}
	}
	// Dropped in memory already: a crash before this write keeps the
	// holds on disk, and the next check drops them again.
	return names, s.writeRetention(buf)
}
