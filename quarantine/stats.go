package quarantine

import (
	"sync/atomic"

	"go.etcd.io/bbolt"
)

// Stats is a snapshot of a store's state and activity since Open.
type Stats struct {
	// Entries is the number of entries held (any status); Bodies and
	// BodyBytes count the distinct stored bodies.
	Entries   int64
	Bodies    int64
	BodyBytes int64
	// Releasing is the number of entries with a release in flight.
	Releasing int

	// Since Open: entries stored, repeats of entries already stored,
	// recipients released, deleted and expired, and corrupt bodies met.
	Stored     uint64
	Duplicates uint64
	Released   uint64
	Deleted    uint64
	Expired    uint64
	Corrupt    uint64
}

type counters struct {
	stored, duplicates, released, deleted, expired, corrupt atomic.Uint64
}

// Stats returns the store's counters. It reads a few counters from the
// index and does not scan it.
func (s *Store) Stats() Stats {
	st := Stats{
		Stored:     s.counters.stored.Load(),
		Duplicates: s.counters.duplicates.Load(),
		Released:   s.counters.released.Load(),
		Deleted:    s.counters.deleted.Load(),
		Expired:    s.counters.expired.Load(),
		Corrupt:    s.counters.corrupt.Load(),
	}
	if s.closed.Load() {
		return st
	}
	_ = s.db.View(func(tx *bbolt.Tx) error {
		st.Entries = counter(tx, kEntries)
		st.Bodies = counter(tx, kBodies)
		st.BodyBytes = counter(tx, kBodyBytes)
		st.Releasing = tx.Bucket(bReleasing).Stats().KeyN
		return nil
	})
	return st
}
