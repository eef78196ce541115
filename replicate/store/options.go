package store

import (
	"log/slog"
	"time"
)

// Options configure a Store. A nil *Options or the zero value gives working
// defaults; each field says what its zero value means.
type Options struct {
	// Logger receives reports of recovery, corruption and compaction; nil
	// means slog.Default(). Bodies are never logged.
	Logger *slog.Logger
	// Now is the clock that stamps changes; nil means time.Now.
	Now func() time.Time
	// MaxMessageSize is the largest body Append and Apply accept; zero
	// means 64 MiB.
	MaxMessageSize int64
	// SegmentSize is the size of a journal segment file; zero means
	// 16 MiB. Compaction removes whole segments. The journal holds every
	// new body, so a segment holds about SegmentSize/size appends; a body
	// larger than a segment gets a segment of its own.
	SegmentSize int64
	// KeepChanges is how many changes compaction keeps in the journal
	// behind the newest, so that replicas and backups that are at most
	// that far behind can resume from it, within KeepBytes; zero means
	// 100 000. Older positions get ErrTooFarBehind.
	KeepChanges uint64
	// KeepBytes bounds the journal that compaction keeps for readers
	// (KeepChanges) behind the checkpoint: since bodies are in the
	// journal, 100 000 changes may be gigabytes. Zero means 1 GiB.
	// Changes after the checkpoint are always kept.
	KeepBytes int64
	// HoldBytes bounds the journal that compaction keeps for retention
	// holds ([Store.Hold], [Store.HoldJournal]) beyond what KeepChanges
	// and KeepBytes keep: a reader whose hold needs more (a replica or a
	// backup gone for long) is let go, and gets ErrTooFarBehind. Zero
	// means 4 GiB.
	HoldBytes int64
	// HoldMaxAge is how long a retention hold ([Store.Hold],
	// [Store.HoldJournal]) lives without being renewed (set again by its
	// reader): a reader gone for longer (a backup repository no longer
	// used, a replica removed) no longer pins the journal and the bodies
	// of expunged messages; its hold is dropped with a warning in the log
	// and counted (Stats.HoldsExpired), and the reader, if it comes back,
	// gets ErrTooFarBehind and compares in full. Zero means 30 days;
	// negative means never.
	HoldMaxAge time.Duration
	// HoldBodyBytes bounds the bodies of removed messages that the holds
	// with bodies ([Store.Hold]) keep (each body counted once, and only
	// when no live message uses it). Before every checkpoint and every
	// hour ([Store.ExpireHolds]), while they exceed it the hold with the
	// lowest position is dropped, logged and counted
	// (Stats.HoldsOverCap): its reader (a backup gone for long, while mail
	// was deleted in bulk) gets ErrTooFarBehind and reads in full, and the
	// bodies only it kept are removed. Between two checks the kept bodies
	// may exceed it by what the removals in between add. Zero means 4 GiB;
	// negative means no cap.
	HoldBodyBytes int64
	// MaxPredecessors is how many histories the store remembers having
	// continued ([Store.Predecessors]): each promotion adds the history
	// it followed, and the oldest beyond this many is forgotten, logged.
	// A replica still on a forgotten history is treated as one of
	// another history: it compares itself with the store in full and
	// repairs (what only it has is held for the operator, not kept as an
	// orphan), instead of resuming or keeping its divergent tail as
	// orphans. Zero means DefaultMaxPredecessors (8); each entry costs
	// about 100 bytes of the HISTORY file.
	MaxPredecessors int
	// CheckpointEvery is how many changes [Store.Run] lets pass before it
	// writes a checkpoint and compacts the journal; zero means 50 000.
	CheckpointEvery uint64
	// CheckpointBytes is how many journal bytes (bodies included)
	// [Store.Run] lets be written before it writes a checkpoint, whichever
	// of it and CheckpointEvery comes first; zero means 256 MiB. It bounds
	// the journal Open replays and the body files a checkpoint fsyncs.
	CheckpointBytes int64
	// ScrubInterval is how often [Store.Run] re-hashes every stored body;
	// zero means 24 hours, negative means never.
	ScrubInterval time.Duration
	// FetchParallelism is how many bodies Apply fetches and stores at
	// once; zero means 8.
	FetchParallelism int
	// Salvage lets Open continue past a damaged journal (changes missing
	// in the middle) instead of refusing to open. What follows the damage
	// is applied where it still makes sense; the store should then be
	// compared with a replica.
	Salvage bool
}

func (o *Options) withDefaults() Options {
	var r Options
	if o != nil {
		r = *o
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.MaxMessageSize <= 0 {
		r.MaxMessageSize = 64 << 20
	}
	if r.SegmentSize <= 0 {
		r.SegmentSize = 16 << 20
	}
	if r.KeepChanges == 0 {
		r.KeepChanges = 100_000
	}
	if r.CheckpointEvery == 0 {
		r.CheckpointEvery = 50_000
	}
	if r.KeepBytes <= 0 {
		r.KeepBytes = 1 << 30
	}
	if r.HoldBytes <= 0 {
		r.HoldBytes = 4 << 30
	}
	if r.CheckpointBytes <= 0 {
		r.CheckpointBytes = 256 << 20
	}
	if r.FetchParallelism <= 0 {
		r.FetchParallelism = 8
	}
	if r.HoldBodyBytes == 0 {
		r.HoldBodyBytes = 4 << 30
	}
	if r.MaxPredecessors <= 0 {
		r.MaxPredecessors = DefaultMaxPredecessors
	}
	if r.HoldMaxAge == 0 {
		r.HoldMaxAge = 30 * 24 * time.Hour
	}
	if r.ScrubInterval == 0 {
		r.ScrubInterval = 24 * time.Hour
	}
	return r
}

// DefaultMaxPredecessors is how many continued histories a store
// remembers by default (Options.MaxPredecessors).
const DefaultMaxPredecessors = 8
