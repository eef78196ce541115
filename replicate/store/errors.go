package store

import (
	"errors"
	"fmt"

	"github.com/resilmail/resilmail/replicate"
)

var (
	// ErrClosed is returned by operations on a closed Store.
	ErrClosed = errors.New("store: closed")
	// ErrNotFound is returned for a user, mailbox, message or body that
	// does not exist.
	// It is replicate.ErrNotFound.
	ErrNotFound = replicate.ErrNotFound
	// ErrExists is returned when creating a user or mailbox, or renaming a
	// mailbox, onto a name that is taken.
	ErrExists = errors.New("store: already exists")
	// ErrInvalidName is returned for a user or mailbox name that breaks the
	// naming rules (see [ValidateUser] and [ValidateMailbox]).
	ErrInvalidName = errors.New("store: invalid name")
	// ErrInvalidFlag is returned for a flag or keyword that is not a valid
	// IMAP flag, or a system flag that cannot be stored (\Recent).
	ErrInvalidFlag = errors.New("store: invalid flag")
	// ErrTooLarge is returned by Append for a body over
	// Options.MaxMessageSize.
	ErrTooLarge = errors.New("store: message too large")
	// ErrFenced is returned when a write carries an epoch lower than the
	// highest the store has seen: the writer is an old primary.
	// It is replicate.ErrFenced.
	ErrFenced = replicate.ErrFenced
	// ErrReadOnly is returned by local writes while the store is read-only
	// (a replica; see [Store.SetReadOnly]).
	ErrReadOnly = errors.New("store: read-only")
	// ErrTooFarBehind is returned by Changes for a position older than the
	// oldest change the journal still holds; the reader must fall back to a
	// full comparison.
	// It is replicate.ErrTooFarBehind.
	ErrTooFarBehind = replicate.ErrTooFarBehind
	// ErrPosition is returned by Changes for a position beyond the end of
	// the journal: the reader followed another history (another primary).
	// It is replicate.ErrPosition.
	ErrPosition = replicate.ErrPosition
	// ErrConflict is returned by Apply for a change that contradicts the
	// store's state (same UID with another body, a mailbox name held by
	// another mailbox id, another UIDVALIDITY): replication must fall back
	// to a full comparison of the mailbox.
	// It is replicate.ErrConflict.
	ErrConflict = replicate.ErrConflict
	// ErrCorrupt wraps a *resilmail.CorruptError for a body that does not
	// match its digest (or is missing); such a body is never served or
	// shipped. It also reports damaged index files at Open.
	ErrCorrupt = errors.New("store: corrupt")
	// ErrFormat is returned by Open for data written in an unknown format
	// version.
	ErrFormat = errors.New("store: unknown format")
	// ErrStorage wraps a failed write or fsync. The store refuses every
	// later write until it is closed and reopened, which recovers what
	// reached the disk.
	ErrStorage = errors.New("store: storage failed")
)

func storageErr(err error) error {
	if errors.Is(err, ErrStorage) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrStorage, err)
}
