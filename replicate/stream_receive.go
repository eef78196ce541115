package replicate

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/wal"
)

// A ParkedChange is a change whose body the primary could not serve: its
// user's lane waits at it, retrying, while other users go on.
type ParkedChange struct {
	Change resilmail.Change
	// Err is the last error fetching the body.
	Err string
	// Since is when the lane first failed on it; Attempts how often.
	Since    time.Time
	Attempts int
}

// Parked returns the changes parked for a body the primary cannot serve,
// in journal order.
func (r *Replica) Parked() []ParkedChange {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ps []ParkedChange
	for _, l := range r.lanes {
		if l.parked != nil {
			ps = append(ps, *l.parked)
		}
	}
	slices.SortFunc(ps, func(a, b ParkedChange) int {
		switch {
		case a.Change.Seq < b.Change.Seq:
			return -1
		case a.Change.Seq > b.Change.Seq:
			return 1
		}
		return 0
	})
	return ps
}

// park records that l waits at change c for a body the primary cannot
// serve, and returns how long to wait before the next attempt (doubling
// up to ReplicaOptions.MaxBackoff).
func (r *Replica) park(l *lane, c resilmail.Change, err error) time.Duration {
	r.mu.Lock()
	first := l.parked == nil || l.parked.Change.Seq != c.Seq
	if first {
		l.parked = &ParkedChange{Change: c, Since: time.Now()}
		r.stats.ParkedTotal++
	}
	l.parked.Err = err.Error()
	l.parked.Attempts++
	n := l.parked.Attempts
	r.stats.LastError, r.stats.LastErrorTime = err.Error(), time.Now()
	r.mu.Unlock()
	if first {
		r.log.Error("replicate: change parked: the primary cannot serve its body; this user waits, the others go on",
			"replica", r.opts.Name, "user", l.user, "seq", c.Seq, "digest", c.Digest, "err", err)
	}
	return min(100*time.Millisecond<<min(n, 10), r.opts.MaxBackoff)
}

// unpark clears l's parked change once it applied (or was dropped).
func (r *Replica) unparkLocked(l *lane) {
	if l.parked == nil {
		return
	}
	r.log.Info("replicate: parked change applied", "replica", r.opts.Name, "user", l.user,
		"seq", l.parked.Change.Seq, "attempts", l.parked.Attempts)
	l.parked = nil
}

// bodyRefused returns the error for an answer to a body request that is
// not the body: ErrNotFound only when the primary says not_found, else an
// error wrapping ErrBodyUnavailable.
func bodyRefused(what string, resp *http.Response) error {
	err := statusError(what, resp)
	if errors.Is(err, ErrNotFound) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrBodyUnavailable, err)
}

// pinFromTarget keeps in the inbox a copy of body d that the target holds,
// read back and verified, so that the change that needs it can be applied
// whatever other users' expunges remove meanwhile. It reports whether it
// did; false means the target cannot read it (and the caller fetches it).
func (r *Replica) pinFromTarget(ctx context.Context, inbox *wal.Log, d resilmail.Digest) (bool, error) {
	br, ok := r.t.(BodyReader)
	if !ok {
		return false, nil
	}
	b, err := br.Body(ctx, d)
	if err != nil || resilmail.DigestOf(b) != d {
		return false, nil
	}
	added, err := r.appendBody(inbox, d, b)
	if err != nil {
		return false, err
	}
	if added {
		r.mu.Lock()
		r.stats.BodiesPinned++
		r.mu.Unlock()
	}
	return true, nil
}
