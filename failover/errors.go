package failover

import "errors"

var (
	// ErrLeaseLost is returned (wrapped) by [Term.KeepAlive] when the term
	// is over for good: the lease expired, was taken, or was released.
	ErrLeaseLost = errors.New("failover: lease lost")
	// ErrTimers is returned (wrapped, with the rule broken) when a
	// [Timers] value is inconsistent: a lease could expire before its
	// holder notices.
	ErrTimers = errors.New("failover: inconsistent timers")
	// ErrTransition is returned (wrapped) when a role change is not allowed
	// from the current state, such as promoting with an epoch that is not
	// higher than the node's.
	ErrTransition = errors.New("failover: role change not allowed")
	// ErrNotEligible is returned (wrapped) when a node may not become
	// primary now: it lags the primary beyond the bound, or is unhealthy.
	ErrNotEligible = errors.New("failover: node not eligible")
	// ErrClosed is returned by operations on a closed value.
	ErrClosed = errors.New("failover: closed")
	// ErrSwitchover is returned (wrapped, with the step that failed) when a
	// switchover did not complete and was rolled back.
	ErrSwitchover = errors.New("failover: switchover failed")
)
