package failover

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Manual is the default [Lease]: the operator decides. Acquire blocks until
// the operator calls [Manual.Grant] with a token (normally the epoch that
// the promotion will use), and the term lasts until [Manual.Revoke] or
// Release. Nothing expires by itself: with a manual lease, a node that is
// cut off stays primary until told otherwise, and fencing rests on the
// epochs alone (a promoted standby raises the epoch; the stores refuse the
// old primary's changes).
type Manual struct {
	mu      sync.Mutex
	last    uint64
	granted chan struct{} // closed by Grant; replaced by Revoke
	term    *manualTerm
}

var _ Lease = (*Manual)(nil)

// NewManual returns a manual lease that nobody holds, whose next token
// must exceed last.
func NewManual(last uint64) *Manual {
	return &Manual{last: last, granted: make(chan struct{})}
}

// Grant hands the lease to this node with token, which must be greater
// than every token granted before; Acquire returns its term.
func (m *Manual) Grant(token uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if token <= m.last {
		return fmt.Errorf("%w: token %d is not above %d", ErrTransition, token, m.last)
	}
	if m.term != nil {
		m.term.release()
	}
	m.last = token
	m.term = &manualTerm{token: token, lost: make(chan struct{})}
	close(m.granted)
	return nil
}

// Revoke ends the current term, if any: its Lost is closed.
func (m *Manual) Revoke() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.revokeLocked()
}

func (m *Manual) revokeLocked() {
	if m.term != nil {
		m.term.release()
		m.term = nil
		m.granted = make(chan struct{})
	}
}

// Acquire waits for Grant.
func (m *Manual) Acquire(ctx context.Context) (Term, error) {
	for {
		m.mu.Lock()
		t, ch := m.term, m.granted
		m.mu.Unlock()
		if t != nil {
			return managedTerm{t, m}, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

type manualTerm struct {
	token uint64
	once  sync.Once
	lost  chan struct{}
}

func (t *manualTerm) release() { t.once.Do(func() { close(t.lost) }) }

type managedTerm struct {
	*manualTerm
	m *Manual
}

func (t managedTerm) Token() uint64         { return t.token }
func (t managedTerm) Lost() <-chan struct{} { return t.lost }

// KeepAlive reports the term valid for a day, or lost once revoked.
func (t managedTerm) KeepAlive(context.Context) (time.Time, error) {
	select {
	case <-t.lost:
		return time.Time{}, fmt.Errorf("%w: manual term %d revoked", ErrLeaseLost, t.token)
	default:
		return time.Now().Add(24 * time.Hour), nil
	}
}

func (t managedTerm) Release(context.Context) error {
	t.m.mu.Lock()
	defer t.m.mu.Unlock()
	if t.m.term == t.manualTerm {
		t.m.revokeLocked()
	}
	t.release()
	return nil
}
