package replicate

import "log/slog"

// Defaults of [ExpungeGuardOptions].
const (
	// DefaultGuardShare is the share of a mailbox one expunge may remove
	// before the guard holds it: 50 %.
	DefaultGuardShare = 0.5
	// DefaultGuardMinMessages is the smallest mailbox the guard watches
	// and the smallest mailbox or user delete it holds: 20 messages.
	DefaultGuardMinMessages = 20
)

// ExpungeGuardOptions configure [NewExpungeGuard]. A nil pointer or the
// zero value gives the defaults; each field says what its zero value means.
type ExpungeGuardOptions struct {
	// MaxShare is the share of a mailbox's messages one expunge may
	// remove; more is held. Zero means DefaultGuardShare (0.5).
	MaxShare float64
	// MinMessages: an expunge is held only in a mailbox of at least this
	// many messages, and a mailbox or user delete only when it removes at
	// least this many. Zero means DefaultGuardMinMessages (20).
	MinMessages int
	// FailOpen lets a change through when the replica's inventory cannot
	// be read; by default (false) such a destructive change is held.
	FailOpen bool
	// Logger receives a warning per held change; nil means
	// slog.Default().
	Logger *slog.Logger
}
