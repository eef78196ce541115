package replicate

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail"
)

// A Report is what [Compare] found: every difference of the replica from
// the primary, which [Repair] removes. Its slices are sorted by user, then
// mailbox name, then UID.
type Report struct {
	Started  time.Time     // when the comparison started
	Duration time.Duration // how long it took
	// Users, Mailboxes and Messages count what the primary holds among
	// the users compared.
	Users, Mailboxes, Messages int
	// DigestCalls counts the range digests asked of both sides, Listed the
	// message states listed: the comparison's cost beyond the mailbox
	// lists.
	DigestCalls, Listed int64

	UserDiffs    []UserDiff    // users missing, extra, or with other subscriptions
	MailboxDiffs []MailboxDiff // mailboxes missing, extra or different
	// Failed are the users that could not be compared (see Compare's
	// error); the report says nothing of them.
	Failed []string
}

// Equal reports whether the comparison found no difference.
func (r *Report) Equal() bool { return len(r.UserDiffs) == 0 && len(r.MailboxDiffs) == 0 }

// Differences counts the differences found: users missing or extra,
// subscriptions, mailboxes missing or extra, renames, UIDVALIDITY changes
// and differing messages.
func (r *Report) Differences() int {
	n := 0
	for _, u := range r.UserDiffs {
		if u.Missing || u.Extra {
			n++
		}
		n += len(u.MissingSubscriptions) + len(u.ExtraSubscriptions)
	}
	for _, m := range r.MailboxDiffs {
		switch {
		case m.Kind != MailboxChanged:
			n++
		case m.UIDValidityDiffers:
			n++
		default:
			if m.Renamed {
				n++
			}
			n += len(m.Messages)
			if len(m.Messages) == 0 && !m.Renamed {
				n++ // status differs only (UIDNEXT, HIGHESTMODSEQ)
			}
		}
	}
	return n
}

// String lists the differences, one per line, by user and mailbox name
// (mailbox ids are left out).
func (r *Report) String() string {
	var b strings.Builder
	for _, u := range r.UserDiffs {
		switch {
		case u.Missing:
			fmt.Fprintf(&b, "user %s: missing\n", u.User)
		case u.Extra:
			fmt.Fprintf(&b, "user %s: extra (%d messages)\n", u.User, u.Messages)
		}
		for _, s := range u.MissingSubscriptions {
			fmt.Fprintf(&b, "user %s: subscription %q missing\n", u.User, s)
		}
		for _, s := range u.ExtraSubscriptions {
			fmt.Fprintf(&b, "user %s: subscription %q extra\n", u.User, s)
		}
	}
	for _, m := range r.MailboxDiffs {
		name := m.Name()
		switch {
		case m.Kind == MailboxMissing:
			fmt.Fprintf(&b, "%s/%s: missing (%d messages)\n", m.User, name, m.Primary.Messages)
		case m.Kind == MailboxExtra:
			fmt.Fprintf(&b, "%s/%s: extra (%d messages)\n", m.User, name, m.Replica.Messages)
		case m.UIDValidityDiffers:
			fmt.Fprintf(&b, "%s/%s: UIDVALIDITY %d, the primary's %d\n", m.User, name, m.Replica.UIDValidity, m.Primary.UIDValidity)
		default:
			if m.Renamed {
				fmt.Fprintf(&b, "%s/%s: named %q on the replica\n", m.User, name, m.Replica.Name)
			}
			for _, d := range m.Messages {
				fmt.Fprintf(&b, "%s/%s: UID %d %s\n", m.User, name, d.UID, d.Kind)
			}
			if len(m.Messages) == 0 && !m.Renamed {
				fmt.Fprintf(&b, "%s/%s: status differs (UIDNEXT %d/%d, HIGHESTMODSEQ %d/%d)\n", m.User, name,
					m.Replica.UIDNext, m.Primary.UIDNext, m.Replica.HighestModSeq, m.Primary.HighestModSeq)
			}
		}
	}
	return b.String()
}

// A UserDiff is a user missing on the replica, extra on it, or with other
// subscriptions.
type UserDiff struct {
	User    string
	Missing bool // the primary has the user, the replica not
	Extra   bool // the replica has the user, the primary not
	// Messages is how many messages the replica holds for an extra user:
	// what deleting it removes.
	Messages int
	// MissingSubscriptions are names the primary's user subscribes to and
	// the replica's not; ExtraSubscriptions the other way round.
	MissingSubscriptions, ExtraSubscriptions []string
}

// A MailboxDiffKind says how a mailbox differs.
type MailboxDiffKind uint8

// The kinds of [MailboxDiff].
const (
	// MailboxMissing: the primary has the mailbox id, the replica not.
	MailboxMissing MailboxDiffKind = iota + 1
	// MailboxExtra: the replica has the mailbox id, the primary not.
	MailboxExtra
	// MailboxChanged: both have it, with another name, UIDVALIDITY,
	// status or messages.
	MailboxChanged
)

// String returns "missing", "extra" or "changed".
func (k MailboxDiffKind) String() string {
	switch k {
	case MailboxMissing:
		return "missing"
	case MailboxExtra:
		return "extra"
	case MailboxChanged:
		return "changed"
	}
	return fmt.Sprintf("MailboxDiffKind(%d)", uint8(k))
}

// A MailboxDiff is one mailbox that differs, matched by id (never by name).
type MailboxDiff struct {
	User    string
	ID      resilmail.MailboxID
	Kind    MailboxDiffKind
	Primary *MailboxState // nil for an extra mailbox
	Replica *MailboxState // nil for a missing mailbox
	// Renamed is set when the replica has the mailbox under another name.
	Renamed bool
	// UIDValidityDiffers is set when the replica's mailbox is another
	// incarnation: its messages are not compared, and repair replaces it.
	UIDValidityDiffers bool
	// Messages are the messages that differ, in UID order (MailboxChanged
	// with the same UIDVALIDITY).
	Messages []MessageDiff
}

// Name returns the mailbox's name on the primary, or on the replica for an
// extra mailbox.
func (d *MailboxDiff) Name() string {
	if d.Primary != nil {
		return d.Primary.Name
	}
	return d.Replica.Name
}

// A MessageDiffKind says how a message differs.
type MessageDiffKind uint8

// The kinds of [MessageDiff].
const (
	// MessageMissing: the primary has the UID, the replica not.
	MessageMissing MessageDiffKind = iota + 1
	// MessageExtra: the replica has the UID, the primary not.
	MessageExtra
	// MessageBodyDiffers: the UID names another body on each side.
	MessageBodyDiffers
	// MessageMetaDiffers: same body, other flags, mod-sequence, size or
	// internal date.
	MessageMetaDiffers
	// MessageCorrupt: the replica's copy of the body is damaged; repair
	// stores the primary's again.
	MessageCorrupt
	// MessagePrimaryCorrupt: the primary's copy of the body is damaged.
	// Repair cannot help (replication is one-way); it is reported and
	// logged for the operator, who restores it from the replica or a
	// backup.
	MessagePrimaryCorrupt
)

// String returns the kind's name, e.g. "missing".
func (k MessageDiffKind) String() string {
	switch k {
	case MessageMissing:
		return "missing"
	case MessageExtra:
		return "extra"
	case MessageBodyDiffers:
		return "body differs"
	case MessageMetaDiffers:
		return "flags differ"
	case MessageCorrupt:
		return "body corrupt on the replica"
	case MessagePrimaryCorrupt:
		return "body corrupt on the primary"
	}
	return fmt.Sprintf("MessageDiffKind(%d)", uint8(k))
}

// A MessageDiff is one message that differs.
type MessageDiff struct {
	UID     uint32
	Kind    MessageDiffKind
	Primary *MessageState // nil if the primary lacks the UID
	Replica *MessageState // nil if the replica lacks the UID
}

// Compare compares replica with primary and reports every difference.
//
// Users are matched by name and mailboxes by id. A mailbox whose state
// (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, message count, size and digest) is
// equal on both sides is equal and costs nothing more; for one that
// differs, Compare bisects the UID range with range digests (one per side
// and level, the other half follows by XOR) down to ranges of at most
// LeafSize messages, and lists only those: the cost grows with the number
// of differences times the logarithm of the mailbox size. Mailboxes with a
// damaged body (MailboxState.Corrupt) are listed to find it.
//
// The stores may be written meanwhile, and the replica may be applying
// the primary's stream. Compare reads the replica before the primary at
// every step (mailbox lists, subscriptions, message listings), so that
// what it sees on the replica was on the primary first: a change made
// during the comparison may show as the replica lagging (and vanishes on
// the next comparison, or is repaired harmlessly), never as the replica
// holding what the primary never had. [Repair] compares each user again
// before it changes anything.
//
// A user that cannot be compared (a read fails) does not stop the others:
// Compare then returns the report of the users it compared, with the
// others in Report.Failed, and an error naming why each failed; only when
// every user failed, or listing the users did, is the report nil.
func Compare(ctx context.Context, primary, replica Inventory, opts *CompareOptions) (*Report, error) {
	o := opts.withDefaults()
	c := &comparer{p: primary, r: replica, opts: o}
	rep := &Report{Started: o.Now()}
	users := o.Users
	if users == nil {
		pu, err := primary.Users(ctx)
		if err != nil {
			return nil, fmt.Errorf("replicate: compare: primary's users: %w", err)
		}
		ru, err := replica.Users(ctx)
		if err != nil {
			return nil, fmt.Errorf("replicate: compare: replica's users: %w", err)
		}
		users = append(slices.Clone(pu), ru...)
	} else {
		users = slices.Clone(users)
	}
	slices.Sort(users)
	users = slices.Compact(users)

	var (
		mu   sync.Mutex
		errs []error
		g    errgroup.Group
	)
	g.SetLimit(o.Parallelism)
	for _, u := range users {
		g.Go(func() error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			ud, mds, stats, err := c.user(ctx, u)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				// The other users are compared all the same.
				errs = append(errs, fmt.Errorf("replicate: compare user %q: %w", u, err))
				rep.Failed = append(rep.Failed, u)
				return nil
			}
			if ud != nil {
				rep.UserDiffs = append(rep.UserDiffs, *ud)
			}
			rep.MailboxDiffs = append(rep.MailboxDiffs, mds...)
			if stats.present {
				rep.Users++
			}
			rep.Mailboxes += stats.mailboxes
			rep.Messages += stats.messages
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	slices.Sort(rep.Failed)
	slices.SortFunc(rep.UserDiffs, func(a, b UserDiff) int { return strings.Compare(a.User, b.User) })
	slices.SortFunc(rep.MailboxDiffs, func(a, b MailboxDiff) int {
		if c := strings.Compare(a.User, b.User); c != 0 {
			return c
		}
		if c := strings.Compare(a.Name(), b.Name()); c != 0 {
			return c
		}
		return strings.Compare(a.ID.String(), b.ID.String())
	})
	rep.DigestCalls, rep.Listed = c.digestCalls.Load(), c.listed.Load()
	rep.Duration = o.Now().Sub(rep.Started)
	err := errors.Join(errs...)
	if len(rep.Failed) > 0 && len(rep.Failed) == len(users) {
		return nil, err
	}
	o.Logger.Info("replicate: comparison done", "users", rep.Users, "mailboxes", rep.Mailboxes, "messages", rep.Messages,
		"differences", rep.Differences(), "digest_calls", rep.DigestCalls, "listed", rep.Listed, "failed", len(rep.Failed),
		"duration", rep.Duration, "err", err)
	return rep, err
}

type comparer struct {
	p, r        Inventory
	opts        CompareOptions
	digestCalls atomic.Int64
	listed      atomic.Int64
}

type userStats struct {
	present   bool
	mailboxes int
	messages  int
}

// mailboxes returns inv's mailboxes of user, or nil (and no error) if inv
// has no such user.
func mailboxesOf(ctx context.Context, inv Inventory, user string) ([]MailboxState, bool, error) {
	l, err := inv.Mailboxes(ctx, user)
	if errors.Is(err, ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return l, true, nil
}

func subscriptionsOf(ctx context.Context, inv Inventory, user string) ([]string, error) {
	l, err := inv.Subscriptions(ctx, user)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	return l, err
}

// user compares one user. It reads the replica before the primary, at
// every step: what the replica holds then was on the primary first, so a
// change replicated during the comparison can make the replica look
// behind, never ahead.
func (c *comparer) user(ctx context.Context, user string) (*UserDiff, []MailboxDiff, userStats, error) {
	var st userStats
	rl, rok, err := mailboxesOf(ctx, c.r, user)
	if err != nil {
		return nil, nil, st, fmt.Errorf("replica: %w", err)
	}
	pl, pok, err := mailboxesOf(ctx, c.p, user)
	if err != nil {
		return nil, nil, st, fmt.Errorf("primary: %w", err)
	}
	st.present = pok
	st.mailboxes = len(pl)
	for i := range pl {
		st.messages += pl[i].Messages
	}
	ud := &UserDiff{User: user, Missing: pok && !rok, Extra: rok && !pok}
	if ud.Extra {
		for i := range rl {
			ud.Messages += rl[i].Messages
		}
		return ud, nil, st, nil
	}
	if !pok {
		return nil, nil, st, nil
	}
	var rs []string
	if rok {
		if rs, err = subscriptionsOf(ctx, c.r, user); err != nil {
			return nil, nil, st, fmt.Errorf("replica's subscriptions: %w", err)
		}
	}
	ps, err := subscriptionsOf(ctx, c.p, user)
	if err != nil {
		return nil, nil, st, fmt.Errorf("primary's subscriptions: %w", err)
	}
	ud.MissingSubscriptions, ud.ExtraSubscriptions = setDiff(ps, rs), setDiff(rs, ps)
	if !ud.Missing && len(ud.MissingSubscriptions) == 0 && len(ud.ExtraSubscriptions) == 0 {
		ud = nil
	}

	byID := make(map[resilmail.MailboxID]*MailboxState, len(rl))
	for i := range rl {
		byID[rl[i].ID] = &rl[i]
	}
	var diffs []MailboxDiff
	for i := range pl {
		p := &pl[i]
		r := byID[p.ID]
		if r == nil {
			diffs = append(diffs, MailboxDiff{User: user, ID: p.ID, Kind: MailboxMissing, Primary: p})
			continue
		}
		delete(byID, p.ID)
		d := MailboxDiff{User: user, ID: p.ID, Kind: MailboxChanged, Primary: p, Replica: r, Renamed: p.Name != r.Name}
		switch {
		case p.UIDValidity != r.UIDValidity:
			d.UIDValidityDiffers = true
		case p.sameContent(r) && p.Corrupt == 0 && r.Corrupt == 0:
		default:
			msgs, err := c.mailbox(ctx, user, p, r)
			if err != nil {
				return nil, nil, st, fmt.Errorf("mailbox %q: %w", p.Name, err)
			}
			d.Messages = msgs
		}
		if d.Renamed || d.UIDValidityDiffers || len(d.Messages) > 0 || !p.sameContent(r) {
			diffs = append(diffs, d)
		}
	}
	for _, r := range byID {
		diffs = append(diffs, MailboxDiff{User: user, ID: r.ID, Kind: MailboxExtra, Replica: r})
	}
	return ud, diffs, st, nil
}

// setDiff returns the elements of sorted a that are not in sorted b.
func setDiff(a, b []string) []string {
	var out []string
	for _, s := range a {
		if _, ok := slices.BinarySearch(b, s); !ok {
			out = append(out, s)
		}
	}
	return out
}

type rangeSum struct {
	d SetDigest
	n int
}

// mailbox finds the messages that differ in a mailbox with the same id and
// UIDVALIDITY on both sides.
func (c *comparer) mailbox(ctx context.Context, user string, p, r *MailboxState) ([]MessageDiff, error) {
	var diffs []MessageDiff
	if p.Digest != r.Digest || p.Messages != r.Messages {
		hi := max(p.UIDNext, r.UIDNext)
		if hi <= 1 {
			hi = math.MaxUint32 // no trustworthy UIDNEXT: search everything
		} else {
			hi--
		}
		// The whole range's sums are the mailboxes' (messages above UIDNEXT
		// cannot exist); bisection starts from them.
		if err := c.bisect(ctx, user, p.ID, 1, hi, rangeSum{p.Digest, p.Messages}, rangeSum{r.Digest, r.Messages}, &diffs); err != nil {
			return nil, err
		}
	}
	if r.Corrupt > 0 || p.Corrupt > 0 {
		seen := make(map[uint32]bool, len(diffs))
		for _, d := range diffs {
			seen[d.UID] = true
		}
		for _, side := range []struct {
			inv  Inventory
			n    int
			kind MessageDiffKind
		}{{c.r, r.Corrupt, MessageCorrupt}, {c.p, p.Corrupt, MessagePrimaryCorrupt}} {
			if side.n == 0 {
				continue
			}
			msgs, err := c.list(ctx, side.inv, user, p.ID, 1, math.MaxUint32)
			if err != nil {
				return nil, err
			}
			for i := range msgs {
				if m := &msgs[i]; m.Corrupt && !seen[m.UID] {
					d := MessageDiff{UID: m.UID, Kind: side.kind, Replica: m}
					if side.kind == MessagePrimaryCorrupt {
						d.Replica, d.Primary = nil, m
					}
					diffs = append(diffs, d)
				}
			}
		}
		slices.SortStableFunc(diffs, func(a, b MessageDiff) int { return int(int64(a.UID) - int64(b.UID)) })
	}
	return diffs, nil
}

// bisect finds the differences within [lo, hi], whose sums on each side
// are p and r.
func (c *comparer) bisect(ctx context.Context, user string, id resilmail.MailboxID, lo, hi uint32, p, r rangeSum, diffs *[]MessageDiff) error {
	if p == r {
		return nil
	}
	if p.n+r.n <= c.opts.LeafSize || lo == hi {
		return c.leaf(ctx, user, id, lo, hi, diffs)
	}
	mid := lo + (hi-lo)/2
	var pl, rl rangeSum
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		pl.d, pl.n, err = c.p.DigestRange(gctx, user, id, lo, mid)
		if err != nil {
			err = fmt.Errorf("primary: %w", err)
		}
		return err
	})
	g.Go(func() (err error) {
		rl.d, rl.n, err = c.r.DigestRange(gctx, user, id, lo, mid)
		if err != nil {
			err = fmt.Errorf("replica: %w", err)
		}
		return err
	})
	c.digestCalls.Add(2)
	if err := g.Wait(); err != nil {
		return err
	}
	if pl.n > p.n || rl.n > r.n {
		// The mailbox changed during the comparison: list what is left.
		return c.leaf(ctx, user, id, lo, hi, diffs)
	}
	if err := c.bisect(ctx, user, id, lo, mid, pl, rl, diffs); err != nil {
		return err
	}
	return c.bisect(ctx, user, id, mid+1, hi, rangeSum{p.d.Xor(pl.d), p.n - pl.n}, rangeSum{r.d.Xor(rl.d), r.n - rl.n}, diffs)
}

// leaf lists [lo, hi] on both sides, the replica first, and compares
// message by message.
func (c *comparer) leaf(ctx context.Context, user string, id resilmail.MailboxID, lo, hi uint32, diffs *[]MessageDiff) error {
	rm, err := c.list(ctx, c.r, user, id, lo, hi)
	if err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	pm, err := c.list(ctx, c.p, user, id, lo, hi)
	if err != nil {
		return fmt.Errorf("primary: %w", err)
	}
	i, j := 0, 0
	for i < len(pm) || j < len(rm) {
		switch {
		case j == len(rm) || (i < len(pm) && pm[i].UID < rm[j].UID):
			*diffs = append(*diffs, MessageDiff{UID: pm[i].UID, Kind: MessageMissing, Primary: &pm[i]})
			i++
		case i == len(pm) || rm[j].UID < pm[i].UID:
			*diffs = append(*diffs, MessageDiff{UID: rm[j].UID, Kind: MessageExtra, Replica: &rm[j]})
			j++
		default:
			a, b := &pm[i], &rm[j]
			switch {
			case a.Digest != b.Digest:
				*diffs = append(*diffs, MessageDiff{UID: a.UID, Kind: MessageBodyDiffers, Primary: a, Replica: b})
			case !a.sameMeta(b):
				*diffs = append(*diffs, MessageDiff{UID: a.UID, Kind: MessageMetaDiffers, Primary: a, Replica: b})
			}
			i++
			j++
		}
	}
	return nil
}

// listPage is how many message states one MessageRange call asks for.
const listPage = 1000

// list returns every message of [lo, hi] of inv, page by page.
func (c *comparer) list(ctx context.Context, inv Inventory, user string, id resilmail.MailboxID, lo, hi uint32) ([]MessageState, error) {
	out, err := listMessages(ctx, inv, user, id, lo, hi)
	c.listed.Add(int64(len(out)))
	return out, err
}

// listMessages returns every message of [lo, hi] of inv, page by page,
// checking that the pages are in ascending UID order within the range.
func listMessages(ctx context.Context, inv Inventory, user string, id resilmail.MailboxID, lo, hi uint32) ([]MessageState, error) {
	var out []MessageState
	for lo <= hi {
		page, err := inv.MessageRange(ctx, user, id, lo, hi, listPage)
		if err != nil {
			return out, err
		}
		for k := range page {
			if page[k].UID < lo || page[k].UID > hi || (k > 0 && page[k].UID <= page[k-1].UID) {
				return out, fmt.Errorf("%w: message range [%d, %d] returned UID %d out of order", ErrBadInventory, lo, hi, page[k].UID)
			}
		}
		if len(page) > listPage {
			return out, fmt.Errorf("%w: message range returned %d messages, more than the %d asked", ErrBadInventory, len(page), listPage)
		}
		out = append(out, page...)
		if len(page) < listPage || page[len(page)-1].UID == hi {
			break
		}
		lo = page[len(page)-1].UID + 1
	}
	return out, nil
}
