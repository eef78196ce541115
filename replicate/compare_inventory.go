package replicate

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
)

// An Inventory is what a store shows of itself so that two stores can be
// compared ([Compare]) and one repaired from the other ([Repair]): its users,
// their mailboxes with a digest each, subscriptions, and for one mailbox the
// combined digest of a UID range or the metadata of its messages.
// [replicate/store.Store] implements it; [NewRemoteInventory] reaches one
// over HTTP ([InventoryHandler]).
//
// An Inventory is safe for concurrent use. Every method reads a consistent
// state of what it returns (one mailbox, one user's list), but successive
// calls may see writes made in between: a comparison of a store being
// written may report differences that are only in flight, and comparing
// again settles them. A user or mailbox that does not exist is an error
// wrapping [ErrNotFound]; any other error means the answer is unknown.
type Inventory interface {
	// Users returns the names of the users, sorted.
	Users(ctx context.Context) ([]string, error)
	// Mailboxes returns the state of every mailbox of user, sorted by
	// name.
	Mailboxes(ctx context.Context, user string) ([]MailboxState, error)
	// Subscriptions returns the names user subscribes to, sorted.
	Subscriptions(ctx context.Context, user string) ([]string, error)
	// DigestRange returns the combined digest and the number of the
	// messages of the mailbox id of user whose UIDs are between lo and hi,
	// both included. Equal digests and counts mean equal messages in the
	// range. Its cost grows with the number of messages in the range.
	DigestRange(ctx context.Context, user string, id resilmail.MailboxID, lo, hi uint32) (SetDigest, int, error)
	// MessageRange returns the metadata of the messages of the mailbox id
	// of user whose UIDs are between lo and hi, both included, in
	// ascending UID order, at most limit of them (the first ones); a
	// caller that gets limit messages continues after the last UID.
	MessageRange(ctx context.Context, user string, id resilmail.MailboxID, lo, hi uint32, limit int) ([]MessageState, error)
}

// A SetDigest is the combined hash of a set of messages: the XOR of a
// 128-bit hash per message over its UID, mod-sequence, body digest, size,
// internal date and flags. It does not depend on order; the zero SetDigest
// is the empty set. Two sets with the same SetDigest and the same number of
// messages are equal, short of a 128-bit collision.
type SetDigest [16]byte

// String returns d as 32 lower-case hexadecimal digits.
func (d SetDigest) String() string { return hex.EncodeToString(d[:]) }

// MarshalText encodes d as by [SetDigest.String].
func (d SetDigest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText decodes d from 32 hexadecimal digits.
func (d *SetDigest) UnmarshalText(b []byte) error {
	if len(b) != 2*len(d) {
		return fmt.Errorf("replicate: set digest %q is not %d hex digits", b, 2*len(d))
	}
	var x SetDigest
	if _, err := hex.Decode(x[:], b); err != nil {
		return fmt.Errorf("replicate: set digest: %w", err)
	}
	*d = x
	return nil
}

// Xor returns the digest of the union of the disjoint sets d and e, or of
// d without e when e is a subset of d.
func (d SetDigest) Xor(e SetDigest) SetDigest {
	for i := range d {
		d[i] ^= e[i]
	}
	return d
}

// MailboxState describes one mailbox for comparison. Two mailboxes with
// equal ID, UIDValidity, UIDNext, HighestModSeq, Messages and Digest hold
// the same messages with the same metadata.
type MailboxState struct {
	ID            resilmail.MailboxID `json:"id"`            // stable across renames
	Name          string              `json:"name"`          // canonical name
	UIDValidity   uint32              `json:"uidvalidity"`   // IMAP UIDVALIDITY
	UIDNext       uint32              `json:"uidnext"`       // every UID given is below it
	HighestModSeq uint64              `json:"highestmodseq"` // RFC 7162 HIGHESTMODSEQ
	Messages      int                 `json:"messages"`      // number of messages
	Size          int64               `json:"size"`          // bytes of all messages
	Digest        SetDigest           `json:"digest"`        // of every message
	// Corrupt counts the messages whose body the store found damaged
	// (missing or not matching its digest) and will not serve until a good
	// copy is stored; the digest does not show them.
	Corrupt int `json:"corrupt,omitempty"`
}

// sameContent reports whether a and b hold the same messages with the same
// metadata (they may still differ in name).
func (a *MailboxState) sameContent(b *MailboxState) bool {
	return a.ID == b.ID && a.UIDValidity == b.UIDValidity && a.UIDNext == b.UIDNext &&
		a.HighestModSeq == b.HighestModSeq && a.Messages == b.Messages && a.Size == b.Size && a.Digest == b.Digest
}

// MessageState is one message's metadata, as an [Inventory] lists it.
type MessageState struct {
	UID          uint32           `json:"uid"`
	ModSeq       uint64           `json:"modseq"`
	Digest       resilmail.Digest `json:"digest"` // SHA-256 of the body
	Size         int64            `json:"size"`
	InternalDate time.Time        `json:"date,omitzero"` // UTC; zero if unknown
	Flags        []string         `json:"flags,omitempty"`
	// Corrupt is set when the store found the body damaged.
	Corrupt bool `json:"corrupt,omitempty"`
}

// sameMeta reports whether a and b have the same metadata besides the body.
func (a *MessageState) sameMeta(b *MessageState) bool {
	if a.ModSeq != b.ModSeq || a.Size != b.Size || !a.InternalDate.Equal(b.InternalDate) || len(a.Flags) != len(b.Flags) {
		return false
	}
	for i := range a.Flags {
		if !strings.EqualFold(a.Flags[i], b.Flags[i]) {
			return false
		}
	}
	return true
}
