package queue

import (
	"errors"
	"fmt"
)

var (
	// ErrClosed is returned by operations on a closed Queue.
	ErrClosed = errors.New("queue: closed")
	// ErrNotFound is returned for an id that is not queued.
	ErrNotFound = errors.New("queue: no such message")
	// ErrFull is returned by Enqueue when admission control refuses a new
	// message (too many messages, too many bytes, too little disk). It is
	// temporary: an SMTP server answers 452.
	ErrFull = errors.New("queue: full")
	// ErrTooLarge is returned by Enqueue for a message over MaxMessageSize.
	// It is permanent: an SMTP server answers 552.
	ErrTooLarge = errors.New("queue: message too large")
	// ErrInvalid is returned by Enqueue for an envelope that fails
	// validation. It is permanent.
	ErrInvalid = errors.New("queue: invalid envelope")
	// ErrConflict is returned by Enqueue for an id that is queued, or was
	// finished within the DedupWindow, with other content (another
	// digest): a caller reusing ids by mistake is
	// told so instead of being acknowledged and dropped as a duplicate.
	// It is permanent.
	ErrConflict = errors.New("queue: id already queued with other content")
	// ErrRunning is returned by Run when the queue is already running.
	ErrRunning = errors.New("queue: already running")
	// ErrStorage wraps a failure of the queue's storage (a failed write or
	// fsync). It is temporary for the sender (SMTP 451); the queue refuses
	// new messages until it is reopened.
	ErrStorage = errors.New("queue: storage failed")
)

func storageErr(err error) error {
	return fmt.Errorf("%w: %w", ErrStorage, err)
}
