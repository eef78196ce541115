package failover

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTimersCheck(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		name string
		in   Timers
		rule string // "" when valid
	}{
		{"defaults", Timers{}, ""},
		{"ttl 2s", Timers{TTL: 2 * s}, ""},
		{"fraction of second", Timers{TTL: 1500 * time.Millisecond}, "whole number"},
		{"request not below renew", Timers{TTL: 5 * s, Renew: s, RequestTimeout: s}, "RequestTimeout"},
		{"health above renew", Timers{TTL: 5 * s, Renew: s, HealthTimeout: 2 * s}, "HealthTimeout"},
		{"renew too slow", Timers{TTL: 2 * s, Renew: 1500 * time.Millisecond}, "exceeds TTL"},
		{"margin too big", Timers{TTL: 2 * s, Margin: 1500 * time.Millisecond}, "exceeds TTL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := tc.in.Check()
			if tc.rule == "" {
				require.NoError(t, err)
				assert.LessOrEqual(t, out.Renew+2*out.RequestTimeout+out.Margin, out.TTL)
				return
			}
			require.ErrorIs(t, err, ErrTimers)
			assert.Contains(t, err.Error(), tc.rule)
		})
	}
	_, err := NewElector(NewManual(0), CandidateFuncs{}, &ElectorOptions{Timers: Timers{TTL: 2 * s, Renew: 1900 * time.Millisecond}})
	require.ErrorIs(t, err, ErrTimers, "constructors check the timers at start")
}
