package failover

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStateNext(t *testing.T) {
	standby := State{Role: RoleStandby, Epoch: 3, Primary: "a"}
	primary := State{Role: RolePrimary, Epoch: 4, Primary: "b"}
	fenced := State{Role: RoleFenced, Epoch: 4, Primary: "b"}
	for _, tc := range []struct {
		name string
		from State
		ev   Event
		want State
		bad  bool
	}{
		{"promote with higher epoch", standby, Event{Kind: EventPromote, Epoch: 4, Primary: "b"}, primary, false},
		{"promote again is idempotent", primary, Event{Kind: EventPromote, Epoch: 4, Primary: "b"}, primary, false},
		{"promote with same epoch", standby, Event{Kind: EventPromote, Epoch: 3}, standby, true},
		{"promote with older epoch", primary, Event{Kind: EventPromote, Epoch: 2}, primary, true},
		{"fenced cannot promote", fenced, Event{Kind: EventPromote, Epoch: 9}, fenced, true},
		{"demote to a newer primary", primary, Event{Kind: EventDemote, Epoch: 5, Primary: "a"}, State{RoleStandby, 5, "a"}, false},
		{"demote with an old epoch", primary, Event{Kind: EventDemote, Epoch: 3, Primary: "a"}, primary, true},
		{"demote at own epoch to another", primary, Event{Kind: EventDemote, Epoch: 4, Primary: "a"}, primary, true},
		{"demote again is idempotent", State{RoleStandby, 5, "a"}, Event{Kind: EventDemote, Epoch: 5, Primary: "a"}, State{RoleStandby, 5, "a"}, false},
		{"fence a primary", primary, Event{Kind: EventFence}, fenced, false},
		{"fence a standby does nothing", standby, Event{Kind: EventFence}, standby, false},
		{"primary hears a higher epoch", primary, Event{Kind: EventObserve, Epoch: 7, Primary: "a"}, State{RoleFenced, 4, "a"}, false},
		{"primary hears an older epoch", primary, Event{Kind: EventObserve, Epoch: 2, Primary: "a"}, primary, false},
		{"standby follows a higher epoch", standby, Event{Kind: EventObserve, Epoch: 7, Primary: "c"}, State{RoleStandby, 7, "c"}, false},
		{"fenced rejoins", fenced, Event{Kind: EventRejoin, Epoch: 7, Primary: "a"}, State{RoleStandby, 7, "a"}, false},
		{"primary cannot rejoin", primary, Event{Kind: EventRejoin, Epoch: 7, Primary: "a"}, primary, true},
		{"unknown event", standby, Event{Kind: 99}, standby, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.from.Next(tc.ev)
			if tc.bad {
				require.ErrorIs(t, err, ErrTransition)
			} else {
				require.NoError(t, err)
			}
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.want.Role == RolePrimary, got.Writable())
		})
	}
}
