package quarantine

import "errors"

// Sentinel errors. Errors returned by the package wrap one of these where
// one applies; test with errors.Is.
var (
	// ErrNotFound is returned for an entry id the store does not hold.
	// It is also returned for an entry the caller may not see, so that ids
	// cannot be probed.
	ErrNotFound = errors.New("quarantine: no such entry")
	// ErrForbidden is returned when the caller may not do what it asked,
	// e.g. list another user's recipient.
	ErrForbidden = errors.New("quarantine: not allowed")
	// ErrInvalid is returned for a malformed entry, id, query or batch.
	ErrInvalid = errors.New("quarantine: invalid input")
	// ErrConflict is returned when an entry id arrives again with different
	// content (another digest).
	ErrConflict = errors.New("quarantine: entry id already used for another message")
	// ErrNoBody is returned when a body is asked for and the entry has
	// none: a reject recorded before DATA, or an entry no recipient holds
	// any more (its body went with the last release, deletion or expiry).
	ErrNoBody = errors.New("quarantine: entry has no body")
	// ErrCorrupt is returned (wrapping a *resilmail.CorruptError) when a
	// stored body does not match its digest. The body is never served.
	ErrCorrupt = errors.New("quarantine: stored body is corrupt")
	// ErrFull is returned by Put for a new entry while the store holds
	// Options.MaxEntries: the cap that keeps a flood of rejects (a
	// directory-harvest attack) from filling the disk.
	ErrFull = errors.New("quarantine: store full")
	// ErrTooLarge is returned when a body is over Options.MaxSize.
	ErrTooLarge = errors.New("quarantine: message too large")
	// ErrClosed is returned by a Store, Outbox or Shipper after Close.
	ErrClosed = errors.New("quarantine: closed")
	// ErrUnavailable is returned when the Authorizer could not decide (for
	// example its directory is down): nothing is shown or done; try again.
	ErrUnavailable = errors.New("quarantine: access cannot be decided now")
	// ErrBadToken is returned for a release link that is forged, expired
	// or damaged.
	ErrBadToken = errors.New("quarantine: bad or expired release link")
)
