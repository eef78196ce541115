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
// (Stats.HoldsExpired). It returns the names dropped. [Store.Run] calls
// it every hour and before every checkpoint.
func (s *Store) ExpireHolds(ctx context.Context) ([]string, error) {
	if s.opts.HoldMaxAge < 0 {
		return nil, nil
	}
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.ops.Done()
	s.ckptMu.Lock()
	defer s.ckptMu.Unlock()
	return s.expireHoldsCkptLocked()
}

// expireHoldsCkptLocked is ExpireHolds with s.ckptMu held.
func (s *Store) expireHoldsCkptLocked() ([]string, error) {
	if s.opts.HoldMaxAge < 0 {
		return nil, nil
	}
	now := s.opts.Now()
	s.mu.Lock()
	var gone []Hold
	for name, h := range s.ret.holds {
		if now.Sub(h.Renewed) > s.opts.HoldMaxAge {
			gone = append(gone, h)
			delete(s.ret.holds, name)
		}
	}
	if len(gone) == 0 {
		s.mu.Unlock()
		return nil, nil
	}
	s.c.holdsExpired += uint64(len(gone))
	s.pruneTombsLocked()
	buf := s.encodeRetentionLocked(s.ckptSeq)
	s.mu.Unlock()
	names := make([]string, 0, len(gone))
	for _, h := range gone {
		names = append(names, h.Name)
		s.log.Warn("store: retention hold expired: its reader has not renewed it within HoldMaxAge; the journal and bodies it kept are let go, and the reader will have to read in full",
			"hold", h.Name, "position", h.Position, "bodies", h.Bodies, "renewed", h.Renewed, "max_age", s.opts.HoldMaxAge)
	}
	// Dropped in memory already: a crash before this write keeps the
	// holds on disk, and the next check drops them again.
	return names, s.writeRetention(buf)
}
