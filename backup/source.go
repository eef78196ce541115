package backup

import (
	"context"
	"io"
	"time"

	"github.com/resilmail/resilmail"
)

// A Source is the mailbox store a backup reads: its change journal, its
// bodies and, for a first run or when the journal no longer reaches back to
// the backup's position, its whole state. replicate/store's *Store
// implements it (without this package importing replicate). A Source is
// safe for concurrent use.
type Source interface {
	// Changes returns the durable changes after position after, in
	// order, at most about limit of them (whole batches), or none when
	// there is none yet. Positions are consecutive from 1. It returns an
	// error when after is older than the oldest change kept (see
	// OldestPosition) or beyond the end of the journal.
	Changes(ctx context.Context, after uint64, limit int) ([]resilmail.Change, error)
	// Wait blocks until there is a durable change after position after
	// and returns the position of the last durable change, or returns
	// ctx's error.
	Wait(ctx context.Context, after uint64) (uint64, error)
	// OldestPosition returns the oldest position Changes can resume from:
	// Changes(ctx, after, n) works for after >= OldestPosition()-1.
	OldestPosition() uint64
	// Body returns the body named d after checking that it hashes to d.
	// A body that fails its check is an error wrapping a
	// *resilmail.CorruptError; a body no message references any more is
	// another error.
	Body(ctx context.Context, d resilmail.Digest) ([]byte, error)
	// FullState calls fn with the whole state, as changes that build it
	// (users, subscriptions, mailboxes with their ids, UIDVALIDITY and
	// HIGHESTMODSEQ in ModSeq, messages as appends, and a
	// ChangeReserve of UIDNEXT-1 where UIDNEXT is above the last
	// message), all at one durable position, which it returns.
	FullState(ctx context.Context, fn func(resilmail.Change) error) (uint64, error)
}

// A Historian is a Source that names its history: a store that is not the
// one a backup followed (another primary, a store rebuilt or replaced) has
// another history id, and the backup then reads the whole state again and
// starts a new lineage instead of applying changes of another journal
// from a position that means nothing there. replicate/store's *Store is
// one (its history id in hex). A Source that is not a Historian is taken
// to be the store the backup followed. A repository whose last snapshot
// was taken of a Source that named no history reads the whole state once
// when its Source starts naming one.
type Historian interface {
	HistoryName() string
}

// A Holder is a Source that keeps its journal and bodies from a position
// on for a named reader (a retention hold), so that a backup that runs
// once a night still finds every change and body after its position.
// A backup holds the store at its position under the name
// "backup-<first 12 digits of the repository's id>" (replicate/store's
// Store.Hold; Store.Release frees what a repository no longer in use
// holds). Every run renews the hold (with its snapshot); replicate/store
// drops a hold not renewed for its Options.HoldMaxAge (30 days by
// default), with a warning in its log and a count in its Stats, so that a
// repository that stopped running does not pin the store's journal and
// expunged bodies forever; a run after that reads the whole state again.
// Without a hold, a message that arrives and is expunged between
// two runs may be gone before the backup reads its body (counted as Lost),
// and a journal compacted past the position makes the backup read the
// whole state again.
type Holder interface {
	Hold(ctx context.Context, name string, pos uint64) error
}

// A Destination is a mailbox store a restore writes into. replicate/store's
// *Store implements it. It is safe for concurrent use.
type Destination interface {
	// RestoreChanges applies changes that rebuild mailboxes, keeping their
	// UIDs, UIDVALIDITY and mailbox ids, with bodies from body (an error
	// wrapping fs.ErrNotExist from body: no body, the UID is recorded as
	// used and expunged). A mailbox name held by another mailbox is an
	// error.
	RestoreChanges(ctx context.Context, changes []resilmail.Change, body func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error)) error
	// EnsureMailbox creates the user and the mailbox if they are missing.
	EnsureMailbox(ctx context.Context, user, mailbox string) error
	// ContainsBody reports whether the mailbox holds a message with the
	// body d.
	ContainsBody(ctx context.Context, user, mailbox string, d resilmail.Digest) (bool, error)
	// Append adds a message with a new UID.
	Append(ctx context.Context, user, mailbox string, flags []string, internalDate time.Time, body io.Reader) (uint32, error)
}

// A Loader is a [Destination] that fills an empty store with a whole state
// at once (replicate/store's *Store does): a restore keeping UIDs into an
// empty store uses it, and falls back to RestoreChanges when Load returns
// an error wrapping [fs.ErrExist] (the store is not empty).
//
// Load takes the changes that build the state (as [Source.FullState]
// gives them: users, subscriptions, mailboxes, appends in ascending UID
// order per mailbox, reserves) and calls feed, which calls put once per
// body the appends refer to, from as many goroutines as it likes; put
// checks the body against its digest and does not keep it after it
// returns (the caller reuses the memory). Load makes nothing visible unless
// it returns nil: a load that fails or is killed leaves the store empty.
type Loader interface {
	Load(ctx context.Context, changes []resilmail.Change, feed func(ctx context.Context, put func(d resilmail.Digest, body []byte) error) error) error
}
