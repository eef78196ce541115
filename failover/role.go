package failover

import (
	"fmt"

	"github.com/resilmail/resilmail"
)

// A Role is what a mailbox-server node does.
type Role uint8

// The roles. The zero Role is invalid.
const (
	// RoleStandby: follows the primary, refuses client writes.
	RoleStandby Role = iota + 1
	// RolePrimary: accepts writes, stamped with the node's epoch.
	RolePrimary
	// RoleFenced: was primary, stopped writing because it lost its lease
	// or heard of a higher epoch; it may hold changes that were never
	// replicated, and writes nothing until it rejoins as a standby.
	RoleFenced
)

var roleNames = [...]string{RoleStandby: "standby", RolePrimary: "primary", RoleFenced: "fenced"}

// String returns "standby", "primary" or "fenced".
func (r Role) String() string {
	if int(r) < len(roleNames) && roleNames[r] != "" {
		return roleNames[r]
	}
	return fmt.Sprintf("role(%d)", r)
}

// MarshalText encodes the role by name.
func (r Role) MarshalText() ([]byte, error) {
	if r.String()[0] == 'r' {
		return nil, fmt.Errorf("failover: invalid role %d", r)
	}
	return []byte(r.String()), nil
}

// UnmarshalText decodes a role name.
func (r *Role) UnmarshalText(b []byte) error {
	for i, n := range roleNames {
		if n != "" && n == string(b) {
			*r = Role(i)
			return nil
		}
	}
	return fmt.Errorf("failover: unknown role %q", b)
}

// State is a node's role and epoch: pure data, changed only by
// [State.Next]. It is not kept by this package: a node's durable role and
// epoch are its store's (replicate/store's Role and Epoch, changed by
// Promote and Demote), and State is the view of them that a node
// reports and reasons about.
type State struct {
	Role  Role            `json:"role"`
	Epoch resilmail.Epoch `json:"epoch"`
	// Primary names the node this one follows (standby) or itself
	// (primary); empty when unknown.
	Primary string `json:"primary,omitempty"`
}

// An EventKind says what happened to a node.
type EventKind uint8

// The events that change a [State].
const (
	// EventPromote: become primary with Event.Epoch (above the node's).
	EventPromote EventKind = iota + 1
	// EventDemote: a primary (or fenced node) hands over in an orderly way
	// and becomes a standby of Event.Primary at Event.Epoch.
	EventDemote
	// EventFence: a primary stops writing (its lease is lost); its epoch
	// stays.
	EventFence
	// EventObserve: the node heard of Event.Epoch from Event.Primary. A
	// primary that hears a higher epoch is fenced; a standby follows it.
	EventObserve
	// EventRejoin: a fenced node, its unreplicated tail put aside as
	// orphans, becomes a standby of Event.Primary at Event.Epoch.
	EventRejoin
)

var eventNames = [...]string{EventPromote: "promote", EventDemote: "demote", EventFence: "fence", EventObserve: "observe", EventRejoin: "rejoin"}

// String names the event kind.
func (k EventKind) String() string {
	if int(k) < len(eventNames) && eventNames[k] != "" {
		return eventNames[k]
	}
	return fmt.Sprintf("event(%d)", k)
}

// An Event is an input to [State.Next].
type Event struct {
	Kind    EventKind
	Epoch   resilmail.Epoch
	Primary string
}

// Next returns the state after e, or an error wrapping [ErrTransition]
// when e is not allowed in s (s is then unchanged). It is pure: the caller
// makes the new state durable before acting on it (as etcd's raft hands
// its Ready to the application). Repeating the event that led to s is
// allowed and returns s, so that a role change retried after a crash is
// idempotent.
func (s State) Next(e Event) (State, error) {
	bad := func(why string) (State, error) {
		return s, fmt.Errorf("%w: %s in %s at epoch %d: %s", ErrTransition, e.Kind, s.Role, s.Epoch, why)
	}
	switch e.Kind {
	case EventPromote:
		if s.Role == RolePrimary && s.Epoch == e.Epoch {
			return s, nil
		}
		if s.Role == RoleFenced {
			return bad("a fenced node rejoins as a standby first")
		}
		if e.Epoch <= s.Epoch {
			return bad(fmt.Sprintf("epoch %d is not above %d", e.Epoch, s.Epoch))
		}
		return State{Role: RolePrimary, Epoch: e.Epoch, Primary: e.Primary}, nil
	case EventDemote, EventRejoin:
		if e.Kind == EventRejoin && s.Role == RolePrimary {
			return bad("a primary demotes, it does not rejoin")
		}
		if e.Kind == EventDemote && s.Role == RoleStandby && s.Epoch == e.Epoch && s.Primary == e.Primary {
			return s, nil
		}
		if e.Epoch < s.Epoch || (e.Epoch == s.Epoch && s.Role == RolePrimary && e.Primary != s.Primary) {
			return bad(fmt.Sprintf("epoch %d is older than the node's", e.Epoch))
		}
		return State{Role: RoleStandby, Epoch: e.Epoch, Primary: e.Primary}, nil
	case EventFence:
		switch s.Role {
		case RolePrimary:
			return State{Role: RoleFenced, Epoch: s.Epoch, Primary: s.Primary}, nil
		default:
			return s, nil
		}
	case EventObserve:
		if e.Epoch <= s.Epoch {
			return s, nil
		}
		if s.Role == RolePrimary || s.Role == RoleFenced {
			return State{Role: RoleFenced, Epoch: s.Epoch, Primary: e.Primary}, nil
		}
		return State{Role: RoleStandby, Epoch: e.Epoch, Primary: e.Primary}, nil
	}
	return bad("unknown event")
}

// Writable reports whether a node in s accepts writes.
func (s State) Writable() bool { return s.Role == RolePrimary }
