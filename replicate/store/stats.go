package store

import "time"

type counters struct {
	changes, badRecords, missingChanges       uint64
	bodyWrites, bodyShared, bodyFsyncs        uint64
	bodyReads, bodiesRemoved                  uint64
	bodySyncs, bodiesRestored                 uint64
	corruptFound, corruptReceived, repaired   uint64
	scrubs, scrubbed, checkpoints             uint64
	applied, skipped, fenced, conflicts, gone uint64
	orphansKept                               uint64
	holdsExpired, holdsOverCap                uint64
	lastScrub                                 time.Time
}

// Stats is a snapshot of a store's state and counters, like sql.DBStats.
// Counters count since Open.
type Stats struct {
	Users     int   // users
	Mailboxes int   // mailboxes
	Messages  int   // messages
	Bodies    int   // distinct bodies stored
	BodyBytes int64 // bytes in them

	Epoch         uint64 // the highest epoch seen; local changes carry it
	Seq           uint64 // the last change in the journal
	DurableSeq    uint64 // the last change known to be on stable storage
	OldestSeq     uint64 // the oldest change Changes can still return
	CheckpointSeq uint64 // the last change in the checkpoint
	ReadOnly      bool   // local writes are refused
	Holds         int    // retention holds (Store.Hold, Store.HoldJournal)
	HoldsExpired  uint64 // holds dropped for not being renewed (Options.HoldMaxAge)
	HoldsOverCap  uint64 // holds dropped because the bodies they kept exceeded Options.HoldBodyBytes
	Tombstones    int    // expunged messages whose bodies holds keep
	Role          Role   // the durable role (primary, standby, fenced)
	OrphansKept   uint64 // orphans of other nodes kept as new messages (KeepOrphan)

	Changes         uint64 // changes written
	Fsyncs          uint64 // fsyncs: journal, body files and their folders (at checkpoints)
	JournalFsyncs   uint64 // fsyncs of the journal alone
	JournalSegments int    // journal segment files
	JournalBytes    int64  // bytes in them
	BodyWrites      uint64 // bodies written (into the journal and as a file)
	BodySyncs       uint64 // body files fsynced by checkpoints, off the hot path
	BodiesRestored  uint64 // body files rewritten from the journal at Open
	BodyShared      uint64 // appends that shared a body already stored
	BodyReads       uint64 // verified full reads of bodies
	BodiesRemoved   uint64 // body files removed once unreferenced
	Packs           int    // body packs (written by Load) in use
	PackedBodies    int    // bodies read from them
	PackBytes       int64  // bytes of those packs
	PackLiveBytes   int64  // bytes of the bodies in them the store needs (a scrub rewrites a pack under half)
	Checkpoints     uint64 // checkpoints written

	CorruptBodies   int       // bodies now marked corrupt (never served)
	CorruptFound    uint64    // bodies found corrupt by reads or scrubs
	CorruptReceived uint64    // bodies refused by Apply for a wrong digest
	Repaired        uint64    // corrupt bodies replaced by a good copy
	Scrubs          uint64    // scrubs run
	Scrubbed        uint64    // bodies re-hashed by them
	LastScrub       time.Time // when the last scrub ended

	Applied   uint64 // changes applied from a primary
	Skipped   uint64 // changes from a primary skipped as already applied
	Fenced    uint64 // changes refused for an old epoch
	Conflicts uint64 // changes refused as conflicting
	Gone      uint64 // appends applied as expunged: the primary no longer had the body

	TornBytes      int64  // journal bytes truncated from a torn tail at Open
	CorruptRegions int    // damaged journal regions skipped at Open
	BadRecords     uint64 // unreadable journal records skipped (Salvage)
	MissingChanges uint64 // changes lost to journal damage (Salvage)
}

// Stats returns the store's state and counters.
func (s *Store) Stats() Stats {
	ws := s.wal.Stats()
	s.packs.mu.RLock()
	packs, packed := len(s.packs.live), len(s.packs.locs)
	var packBytes, packLive int64
	for _, pl := range s.packs.live {
		packBytes += pl.size
		packLive += pl.bytes
	}
	s.packs.mu.RUnlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{
		Packs: packs, PackedBodies: packed, PackBytes: packBytes, PackLiveBytes: packLive,
		Users: len(s.users), Mailboxes: len(s.byID), Messages: s.messages, Bodies: len(s.refs), BodyBytes: s.bodyBytes,
		Epoch: uint64(s.epoch), Seq: s.applied, DurableSeq: s.durable, OldestSeq: s.oldestLocked(), CheckpointSeq: s.ckptSeq,
		ReadOnly: s.meta.Role != RolePrimary, Role: s.meta.Role, Holds: len(s.ret.holds), HoldsExpired: s.c.holdsExpired, HoldsOverCap: s.c.holdsOverCap, Tombstones: len(s.ret.tombs),
		Changes: s.c.changes, Fsyncs: ws.Syncs + s.c.bodyFsyncs, JournalFsyncs: ws.Syncs,
		JournalSegments: ws.Segments, JournalBytes: ws.Bytes,
		BodyWrites: s.c.bodyWrites, BodyShared: s.c.bodyShared, BodyReads: s.c.bodyReads, BodiesRemoved: s.c.bodiesRemoved,
		BodySyncs: s.c.bodySyncs, BodiesRestored: s.c.bodiesRestored,
		Checkpoints: s.c.checkpoints, OrphansKept: s.c.orphansKept,
		CorruptBodies: len(s.corrupt), CorruptFound: s.c.corruptFound, CorruptReceived: s.c.corruptReceived, Repaired: s.c.repaired,
		Scrubs: s.c.scrubs, Scrubbed: s.c.scrubbed, LastScrub: s.c.lastScrub,
		Applied: s.c.applied, Skipped: s.c.skipped, Fenced: s.c.fenced, Conflicts: s.c.conflicts, Gone: s.c.gone,
		TornBytes: ws.TornBytes, CorruptRegions: ws.CorruptRegions, BadRecords: s.c.badRecords, MissingChanges: s.c.missingChanges,
	}
}
