package failover

import (
	"fmt"
	"time"
)

// Timers are the durations that automatic failover depends on. Their zero
// fields take defaults derived from TTL; [Timers.Check] verifies the
// invariants that keep a holder from writing after another node may have
// taken over, and every constructor that takes Timers calls it.
//
// The invariants (as Patroni's loop_wait + 2*retry_timeout <= ttl and
// client-go's lease > renew > retry):
//
//	RequestTimeout < Renew
//	HealthTimeout <= Renew
//	Renew + 2*RequestTimeout + Margin <= TTL
//
// that is: after one failed renewal, a second attempt still completes
// before the holder's validity (TTL - Margin after its last successful
// renewal was sent) runs out; and the margin absorbs clock-rate
// differences and the time to stop writing.
type Timers struct {
	// TTL is the lease's time to live: how long after its holder stops
	// renewing another node can take over. etcd counts it in whole
	// seconds. Zero means 5 s.
	TTL time.Duration
	// Renew is the interval between renewals. Zero means TTL/5.
	Renew time.Duration
	// RequestTimeout bounds one call to the lease store. Zero means
	// Renew/2.
	RequestTimeout time.Duration
	// Margin is how long before the lease can expire on the store the
	// holder considers it lost. Zero means TTL/10.
	Margin time.Duration
	// HealthTimeout bounds a node's check of its own health (and a
	// standby's lag check) in the election loop. Zero means Renew/2.
	HealthTimeout time.Duration
}

// withDefaults returns t with zero fields set.
func (t Timers) withDefaults() Timers {
	if t.TTL == 0 {
		t.TTL = 5 * time.Second
	}
	if t.Renew == 0 {
		t.Renew = t.TTL / 5
	}
	if t.RequestTimeout == 0 {
		t.RequestTimeout = t.Renew / 2
	}
	if t.Margin == 0 {
		t.Margin = t.TTL / 10
	}
	if t.HealthTimeout == 0 {
		t.HealthTimeout = t.Renew / 2
	}
	return t
}

// Check returns t with defaults filled in, or an error wrapping [ErrTimers]
// that names the rule t breaks.
func (t Timers) Check() (Timers, error) {
	t = t.withDefaults()
	switch {
	case t.TTL < time.Second || t.TTL%time.Second != 0:
		return t, fmt.Errorf("%w: TTL %v must be a whole number of seconds, at least 1s (etcd counts leases in seconds)", ErrTimers, t.TTL)
	case t.Renew <= 0 || t.RequestTimeout <= 0 || t.Margin <= 0 || t.HealthTimeout <= 0:
		return t, fmt.Errorf("%w: durations must be positive: %+v", ErrTimers, t)
	case t.RequestTimeout >= t.Renew:
		return t, fmt.Errorf("%w: RequestTimeout %v must be shorter than Renew %v", ErrTimers, t.RequestTimeout, t.Renew)
	case t.HealthTimeout > t.Renew:
		return t, fmt.Errorf("%w: HealthTimeout %v must not exceed Renew %v", ErrTimers, t.HealthTimeout, t.Renew)
	case t.Renew+2*t.RequestTimeout+t.Margin > t.TTL:
		return t, fmt.Errorf("%w: Renew %v + 2*RequestTimeout %v + Margin %v exceeds TTL %v: the lease could expire before its holder notices",
			ErrTimers, t.Renew, t.RequestTimeout, t.Margin, t.TTL)
	}
	return t, nil
}
