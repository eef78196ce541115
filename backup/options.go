package backup

import (
	"fmt"
	"log/slog"
	"time"
)

// Options configure a [Repo]. The zero value (or nil) gives working
// defaults; each field says what zero means.
type Options struct {
	// Key, if not nil, encrypts a new repository and opens an encrypted
	// one (see [ReadKeyFile]); an encrypted repository cannot be opened
	// without it ([ErrWrongKey]). Nil: no encryption.
	Key []byte
	// Logger receives the log lines; nil means slog.Default().
	Logger *slog.Logger
	// Retention is how long a deleted message is kept after its deletion
	// (counted from the time of the expunge in the store's journal); zero
	// means 7 days.
	Retention time.Duration
	// KeepSnapshots is how many of the newest snapshots Prune keeps (on
	// top of what Retention keeps); zero means 7.
	KeepSnapshots int
	// PackSize is the size of the bodies (before compression) at which a
	// pack is closed and written; zero means 32 MiB.
	PackSize int
	// FlushEvery is how often Follow writes what it has read (bodies, then
	// the changes); zero means 10 seconds.
	FlushEvery time.Duration
	// SnapshotEvery is how often Follow writes a snapshot; zero means 24
	// hours.
	SnapshotEvery time.Duration
	// LockTTL is how long the lock stays valid without being refreshed;
	// a lock older than that (its holder crashed) is taken over. A lock of
	// a process of this host that no longer runs is taken over at once.
	// Zero means 10 minutes.
	LockTTL time.Duration
	// Parallelism is how many bodies are read or written at once; zero
	// means 8.
	Parallelism int
	// Progress, if not nil, is called as long operations advance, from
	// one goroutine at a time.
	Progress func(Progress)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Hooks, if not nil, are called at points of a run (for tests and
	// crash tests).
	Hooks *Hooks
}

// Hooks are called at points of the work, from the goroutine doing it.
type Hooks struct {
	// AfterPack is called once a pack and its index are durable.
	AfterPack func(name string)
	// AfterChanges is called once a segment of changes is durable.
	AfterChanges func(name string)
	// BeforeDelete is called before Prune deletes a blob.
	BeforeDelete func(name string)
}

// Progress reports the advance of a long operation.
type Progress struct {
	Phase string // "backup", "restore", "verify", "prune"
	Done  int64  // items done (messages, bodies, packs)
	Total int64  // items in all; 0 when not known
	Bytes int64  // bytes done
}

func (o *Options) withDefaults() (Options, error) {
	var r Options
	if o != nil {
		r = *o
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	if r.Retention == 0 {
		r.Retention = 7 * 24 * time.Hour
	}
	if r.KeepSnapshots == 0 {
		r.KeepSnapshots = 7
	}
	if r.PackSize == 0 {
		r.PackSize = 32 << 20
	}
	if r.FlushEvery == 0 {
		r.FlushEvery = 10 * time.Second
	}
	if r.SnapshotEvery == 0 {
		r.SnapshotEvery = 24 * time.Hour
	}
	if r.LockTTL == 0 {
		r.LockTTL = 10 * time.Minute
	}
	if r.Parallelism == 0 {
		r.Parallelism = 8
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Hooks == nil {
		r.Hooks = &Hooks{}
	}
	switch {
	case r.Retention < 0, r.KeepSnapshots < 1, r.PackSize < 1<<10, r.FlushEvery < 0, r.SnapshotEvery < 0, r.LockTTL < time.Second, r.Parallelism < 1:
		return r, fmt.Errorf("backup: invalid options (retention %v, keep %d snapshots, pack size %d, lock TTL %v, parallelism %d)",
			r.Retention, r.KeepSnapshots, r.PackSize, r.LockTTL, r.Parallelism)
	}
	if r.Key != nil && len(r.Key) < MinKeyLen {
		return r, fmt.Errorf("backup: key of %d bytes, fewer than %d", len(r.Key), MinKeyLen)
	}
	return r, nil
}
