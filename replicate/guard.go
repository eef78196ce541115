package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/resilmail/resilmail"
)

// NewExpungeGuard returns a function the replica calls with every change
// before applying it; it says hold (with a reason for the log and the
// operator) for a logical disaster about to be copied blindly:
//
//   - an expunge of more than MaxShare (default 50 %) of a mailbox holding
//     at least MinMessages (default 20) messages;
//   - a mailbox delete removing at least MinMessages messages;
//   - a user delete removing at least MinMessages messages in all;
//   - a flag removal or replacement (a mass flag wipe) on more than
//     MaxShare of a mailbox holding at least MinMessages messages;
//   - a rename over an existing mailbox that holds messages (the rename
//     removes it).
//
// Every other change passes, as does a destructive change of a user or
// mailbox the replica does not have (it removes nothing). The guard reads
// replica's state, so it must be called before the change is applied. It
// is safe for concurrent use.
func NewExpungeGuard(replica Inventory, opts *ExpungeGuardOptions) func(ctx context.Context, c resilmail.Change) (hold bool, reason string) {
	var o ExpungeGuardOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxShare <= 0 {
		o.MaxShare = DefaultGuardShare
	}
	if o.MinMessages <= 0 {
		o.MinMessages = DefaultGuardMinMessages
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	verdict := func(ctx context.Context, c *resilmail.Change) (bool, string, error) {
		switch c.Kind {
		case resilmail.ChangeExpunge, resilmail.ChangeMailboxDelete, resilmail.ChangeUserDelete, resilmail.ChangeMailboxRename:
		case resilmail.ChangeFlags:
			if c.FlagOp == resilmail.FlagsAdd {
				return false, "", nil
			}
		default:
			return false, "", nil
		}
		list, err := replica.Mailboxes(ctx, c.User)
		if errors.Is(err, ErrNotFound) {
			return false, "", nil
		}
		if err != nil {
			return false, "", err
		}
		if c.Kind == resilmail.ChangeUserDelete {
			n := 0
			for i := range list {
				n += list[i].Messages
			}
			if n >= o.MinMessages {
				return true, fmt.Sprintf("user delete of %q removes %d messages (%d mailboxes)", c.User, n, len(list)), nil
			}
			return false, "", nil
		}
		var mb *MailboxState
		for i := range list {
			if list[i].ID == c.MailboxID {
				mb = &list[i]
			}
		}
		if c.Kind == resilmail.ChangeMailboxRename {
			// A rename over an existing mailbox removes that mailbox.
			for i := range list {
				if other := &list[i]; other.Name == c.NewName && other.ID != c.MailboxID && other.Messages > 0 {
					return true, fmt.Sprintf("rename of %s/%s over %s removes its %d messages", c.User, c.Mailbox, other.Name, other.Messages), nil
				}
			}
			return false, "", nil
		}
		if mb == nil {
			return false, "", nil
		}
		if c.Kind == resilmail.ChangeMailboxDelete {
			if mb.Messages >= o.MinMessages {
				return true, fmt.Sprintf("mailbox delete of %s/%s removes %d messages", c.User, mb.Name, mb.Messages), nil
			}
			return false, "", nil
		}
		removed := int(min(c.UIDs.Len(), uint64(mb.Messages)))
		if c.Kind == resilmail.ChangeFlags {
			if mass(removed, mb.Messages, o.MaxShare, o.MinMessages) {
				return true, fmt.Sprintf("flag %s on %d of the %d messages of %s/%s (more than %.0f %%)", c.FlagOp, removed, mb.Messages, c.User, mb.Name, 100*o.MaxShare), nil
			}
			return false, "", nil
		}
		if mass(removed, mb.Messages, o.MaxShare, o.MinMessages) {
			return true, fmt.Sprintf("expunge of %d of the %d messages of %s/%s (more than %.0f %%)", removed, mb.Messages, c.User, mb.Name, 100*o.MaxShare), nil
		}
		return false, "", nil
	}
	return func(ctx context.Context, c resilmail.Change) (bool, string) {
		hold, reason, err := verdict(ctx, &c)
		if err != nil {
			if o.FailOpen {
				o.Logger.Warn("replicate: guard cannot read the replica; letting the change through", "change", c.String(), "err", err)
				return false, ""
			}
			hold, reason = true, fmt.Sprintf("cannot read the replica's state to check a %s: %v", c.Kind, err)
		}
		if hold {
			o.Logger.Warn("replicate: guard holds a destructive change", "change", c.String(), "user", c.User, "reason", reason)
		}
		return hold, reason
	}
}
