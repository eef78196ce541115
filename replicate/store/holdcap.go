package store

import "github.com/resilmail/resilmail"

// holdBodyBytesLocked returns the bytes of the bodies that only the
// tombstones keep (no live message uses them), each body counted once.
func (s *Store) holdBodyBytesLocked() int64 {
	var n int64
	seen := make(map[resilmail.Digest]bool)
	for i := range s.ret.tombs {
		t := &s.ret.tombs[i]
		if seen[t.Digest] || s.refs[t.Digest] > 0 {
			continue
		}
		seen[t.Digest] = true
		n += t.Size
	}
	return n
}

// capHoldBodiesLocked drops the holds with bodies, lowest position first,
// while the bodies kept only for them exceed Options.HoldBodyBytes, and
// returns them with the bytes then kept. A dropped hold is gone as an
// expired one is: its reader gets ErrTooFarBehind and reads in full,
// knowing that it did not see every removed message's body, rather than
// finding tombstones without bodies. They are counted in
// Stats.HoldsOverCap.
func (s *Store) capHoldBodiesLocked() ([]Hold, int64) {
	if s.opts.HoldBodyBytes < 0 {
		return nil, 0
	}
	kept := s.holdBodyBytesLocked()
	var gone []Hold
	for kept > s.opts.HoldBodyBytes {
		var low *Hold
		for _, h := range s.ret.holds {
			if h.Bodies && (low == nil || h.Position < low.Position) {
				low = &h
			}
		}
		if low == nil {
			break
		}
		gone = append(gone, *low)
		delete(s.ret.holds, low.Name)
		s.pruneTombsLocked()
		kept = s.holdBodyBytesLocked()
	}
	s.c.holdsOverCap += uint64(len(gone))
	return gone, kept
}
