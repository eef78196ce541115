package replicate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"

	"github.com/resilmail/resilmail"
)

// A HeldKind says what a held removal would have done.
type HeldKind string

// The kinds of [HeldRemoval].
const (
	HeldUserDelete    HeldKind = "user-delete"    // delete an extra user
	HeldMailboxDelete HeldKind = "mailbox-delete" // delete an extra mailbox
	HeldExpunge       HeldKind = "expunge"        // expunge extra messages
	// HeldReplace: replace the replica's mailbox by the primary's (another
	// UIDVALIDITY: another incarnation of the mailbox), losing Messages of
	// its messages. Always held when the replica's mailbox holds messages.
	HeldReplace HeldKind = "replace"
	// HeldOrphan: expunge messages only the replica has (UIDs the primary
	// never gave, or under which the primary holds another body, which
	// then takes their place). Always held: they are what an old primary
	// acknowledged and never passed on, for the operator to bring back.
	HeldOrphan HeldKind = "orphan"
)

// A HeldRemoval is a removal that [Repair] left alone: one that takes more
// than RepairOptions.MaxRemoveShare of a mailbox or user (a logical
// disaster on the primary, a client deleting everything, must not be
// copied blindly), and any that removes messages only the replica has
// (HeldOrphan, HeldReplace of a mailbox with messages, and HeldUserDelete
// or HeldMailboxDelete of a user or mailbox the primary does not have that
// holds messages). Pass it back in
// RepairOptions.Confirmed to carry it out.
type HeldRemoval struct {
	Kind      HeldKind            `json:"kind"`
	User      string              `json:"user"`
	MailboxID resilmail.MailboxID `json:"mailbox_id,omitzero"` // zero for a user
	Mailbox   string              `json:"mailbox,omitempty"`   // the replica's name
	Messages  int                 `json:"messages"`            // messages it removes
	Of        int                 `json:"of"`                  // messages the mailbox or user holds
	// UIDs are the replica's messages an orphan removal takes (HeldOrphan
	// only), for the operator to look at.
	UIDs resilmail.UIDSet `json:"uids,omitempty"`
}

func (h HeldRemoval) covers(x HeldRemoval) bool {
	if h.Kind != x.Kind || h.User != x.User || h.MailboxID != x.MailboxID || x.Messages > h.Messages {
		return false
	}
	for u := range x.UIDs.All() {
		if !h.UIDs.Contains(u) {
			return false // an orphan the operator has not seen
		}
	}
	return true
}

// RepairResult counts what [Repair] did.
type RepairResult struct {
	UsersCreated, UsersDeleted          int
	MailboxesCreated, MailboxesDeleted  int
	MailboxesRenamed, MailboxesReplaced int
	Appended, Expunged, FlagsSet        int // messages
	BodiesRestored                      int // damaged bodies stored again
	Subscriptions                       int // subscriptions added or removed
	Changes                             int // changes applied
	// Held are the removals left alone (see [HeldRemoval]).
	Held []HeldRemoval
	// Unrepairable are differences repair cannot remove, such as a body
	// damaged on the primary.
	Unrepairable []string
}

// A RepairTarget is the replica [Repair] reads and writes.
type RepairTarget interface {
	Inventory
	Target
}

// Repair removes the differences of report from replica: it builds
// changes with Seq zero (applied by content, not as journal entries) from
// the primary's state and applies them with replica's Target.Apply, which
// fetches the bodies it lacks through body and verifies them.
//
// The replica may be following the primary's stream meanwhile, and the
// report may be old: Repair compares each user of the report again, as
// [Compare] does (the replica read before the primary), and acts on what
// it finds then. A difference that is only the replica lagging is
// repaired the way the stream would have: changes the stream brings
// later are skipped by Apply as already there.
//
// Per user, in order: a missing user is created, an extra one deleted;
// subscriptions are added and removed; extra mailboxes are deleted;
// renamed ones renamed (through a temporary name when names are swapped);
// missing ones created with the primary's id and UIDVALIDITY and filled
// with the primary's UIDs, flags, dates and mod-sequences; changed ones
// patched, UID by UID: messages the primary expunged are expunged, missing
// ones appended (or restored, below the replica's UIDNEXT, with
// [resilmail.ChangeRestore]), flags set (a message whose flags changed on
// the replica itself is restored with the primary's), damaged bodies
// stored again, and
// UIDNEXT and HIGHESTMODSEQ raised with [resilmail.ChangeReserve]. A
// mailbox is replaced (deleted and created again from the primary) only
// when its UIDVALIDITY differs: it is another incarnation.
//
// Messages only the replica has (a UID at or above the primary's UIDNEXT,
// or one under which the primary holds another body) are never removed
// unconfirmed: they are held as [HeldOrphan], listed by UID, and so are the
// replacement of a mailbox holding messages and the delete of a user or
// mailbox holding messages that the primary does not have (it may have
// lost it rather than deleted it: the inventory does not tell), unless
// RepairOptions.MaxRemoveShare is 1 or more. Other removals of more than
// RepairOptions.MaxRemoveShare of a mailbox (or user) with at least
// MinHeldMessages messages are held too. Held removals are left alone and
// returned in RepairResult.Held until the operator confirms them.
// Differences Repair cannot remove (a body damaged on the primary, a
// replica ahead of the primary's UIDNEXT or HIGHESTMODSEQ) are
// logged and listed in RepairResult.Unrepairable. Repair carries on past a
// user or mailbox it cannot repair and returns the errors joined; the
// report should then be made again.
func Repair(ctx context.Context, report *Report, primary Inventory, body BodyFunc, replica RepairTarget, opts *RepairOptions) (RepairResult, error) {
	o := opts.withDefaults()
	rp := &repairer{p: primary, r: replica, opts: o, log: o.Logger}
	rp.cmp = &comparer{p: primary, r: replica, opts: (&CompareOptions{Logger: o.Logger, Now: o.Now}).withDefaults()}
	rp.epoch = o.Epoch
	if rp.epoch == 0 {
		rp.epoch = replica.Epoch()
	}
	rp.body = func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error) {
		if body == nil {
			return nil, fmt.Errorf("replicate: repair needs body %s and has no BodyFunc", d)
		}
		return body(ctx, d)
	}
	var users []string
	for i := range report.UserDiffs {
		users = append(users, report.UserDiffs[i].User)
	}
	for i := range report.MailboxDiffs {
		users = append(users, report.MailboxDiffs[i].User)
	}
	slices.Sort(users)
	users = slices.Compact(users)
	var errs []error
	for _, u := range users {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		errs = append(errs, rp.user(ctx, u))
	}
	err := errors.Join(errs...)
	o.Logger.Info("replicate: repair done", "changes", rp.res.Changes, "appended", rp.res.Appended, "expunged", rp.res.Expunged,
		"flags", rp.res.FlagsSet, "mailboxes_created", rp.res.MailboxesCreated, "mailboxes_deleted", rp.res.MailboxesDeleted,
		"mailboxes_replaced", rp.res.MailboxesReplaced, "held", len(rp.res.Held), "err", err)
	return rp.res, err
}

// user compares user again and repairs what differs now.
func (rp *repairer) user(ctx context.Context, u string) error {
	ud, mds, _, err := rp.cmp.user(ctx, u)
	if err != nil {
		return fmt.Errorf("replicate: repair user %q: comparing again: %w", u, err)
	}
	if ud != nil {
		if err := rp.userLevel(ctx, ud); err != nil {
			return fmt.Errorf("replicate: repair user %q: %w", u, err)
		}
		if ud.Extra {
			return nil
		}
	}
	if len(mds) == 0 {
		return nil
	}
	diffs := make([]*MailboxDiff, len(mds))
	for i := range mds {
		diffs[i] = &mds[i]
	}
	return rp.mailboxes(ctx, u, diffs)
}

type repairer struct {
	cmp   *comparer
	p     Inventory
	r     RepairTarget
	body  BodyFunc
	opts  RepairOptions
	log   *slog.Logger
	epoch resilmail.Epoch
	res   RepairResult
}

// mass reports whether removing removed of total messages is a mass
// removal: more than share of them, from at least min.
func mass(removed, total int, share float64, least int) bool {
	return removed > 0 && total >= least && float64(removed) > share*float64(total)
}

// hold reports whether h must be held, and records it if so: a mass
// removal, or any removal of messages only the replica has (HeldOrphan,
// HeldReplace), and any delete of a whole user or mailbox that holds
// messages (HeldUserDelete, HeldMailboxDelete), that the operator has not
// confirmed (unless MaxRemoveShare is 1 or more: the operator's "the
// primary is right"). A user or mailbox only the replica has may be one the primary
// deleted or one the primary lost (a rebuilt or restored primary, an old
// primary's orphans): the inventory does not tell which, so the replica's
// messages are kept until the operator says.
func (rp *repairer) hold(h HeldRemoval) bool {
	whole := (h.Kind == HeldUserDelete || h.Kind == HeldMailboxDelete) && rp.opts.MaxRemoveShare < 1
	always := (whole || h.Kind == HeldOrphan || h.Kind == HeldReplace || rp.opts.HoldAllRemovals) && h.Messages > 0
	if !always && !mass(h.Messages, h.Of, rp.opts.MaxRemoveShare, rp.opts.MinHeldMessages) {
		return false
	}
	for _, c := range rp.opts.Confirmed {
		if c.covers(h) {
			rp.log.Warn("replicate: repair: confirmed removal", "kind", h.Kind, "user", h.User, "mailbox", h.Mailbox, "messages", h.Messages, "of", h.Of)
			return false
		}
	}
	rp.log.Warn("replicate: repair: removal held until confirmed", "kind", h.Kind, "user", h.User, "mailbox", h.Mailbox, "messages", h.Messages, "of", h.Of)
	rp.res.Held = append(rp.res.Held, h)
	return true
}

func (rp *repairer) change(kind resilmail.ChangeKind, user string) resilmail.Change {
	return resilmail.Change{Epoch: rp.epoch, Kind: kind, Time: rp.opts.Now().UTC(), User: user}
}

// apply applies changes in batches.
func (rp *repairer) apply(ctx context.Context, changes []resilmail.Change) error {
	for len(changes) > 0 {
		n := min(len(changes), rp.opts.BatchSize)
		if err := rp.r.Apply(ctx, changes[:n], rp.body); err != nil {
			return err
		}
		rp.res.Changes += n
		changes = changes[n:]
	}
	return nil
}

func (rp *repairer) userLevel(ctx context.Context, ud *UserDiff) error {
	var cs []resilmail.Change
	switch {
	case ud.Extra:
		if rp.hold(HeldRemoval{Kind: HeldUserDelete, User: ud.User, Messages: ud.Messages, Of: ud.Messages}) {
			return nil
		}
		if err := rp.apply(ctx, []resilmail.Change{rp.change(resilmail.ChangeUserDelete, ud.User)}); err != nil {
			return err
		}
		rp.res.UsersDeleted++
		rp.log.Info("replicate: repair: deleted extra user", "user", ud.User, "messages", ud.Messages)
		return nil
	case ud.Missing:
		cs = append(cs, rp.change(resilmail.ChangeUserCreate, ud.User))
	}
	for _, s := range ud.MissingSubscriptions {
		c := rp.change(resilmail.ChangeSubscribe, ud.User)
		c.Mailbox = s
		cs = append(cs, c)
	}
	for _, s := range ud.ExtraSubscriptions {
		c := rp.change(resilmail.ChangeUnsubscribe, ud.User)
		c.Mailbox = s
		cs = append(cs, c)
	}
	if err := rp.apply(ctx, cs); err != nil {
		return err
	}
	if ud.Missing {
		rp.res.UsersCreated++
	}
	rp.res.Subscriptions += len(ud.MissingSubscriptions) + len(ud.ExtraSubscriptions)
	return nil
}

// plan is what repair does to one changed mailbox.
type plan struct {
	d       *MailboxDiff
	replace bool
	why     string
	lost    int // messages a replacement or expunge removes
}

func (rp *repairer) mailboxes(ctx context.Context, user string, diffs []*MailboxDiff) error {
	var errs []error
	fail := func(d *MailboxDiff, err error) {
		rp.log.Error("replicate: repair of mailbox failed", "user", user, "mailbox", d.Name(), "mailbox_id", d.ID.String(), "err", err)
		errs = append(errs, fmt.Errorf("replicate: repair %s/%s: %w", user, d.Name(), err))
	}
	// Decide, then delete what goes: extra mailboxes and the replica's
	// copies of the ones replaced.
	var plans []*plan
	names := make(map[string]resilmail.MailboxID) // the replica's names now
	for _, d := range diffs {
		if d.Replica != nil {
			names[d.Replica.Name] = d.ID
		}
	}
	for _, d := range diffs {
		switch d.Kind {
		case MailboxExtra:
			if rp.hold(HeldRemoval{Kind: HeldMailboxDelete, User: user, MailboxID: d.ID, Mailbox: d.Replica.Name, Messages: d.Replica.Messages, Of: d.Replica.Messages}) {
				continue
			}
			c := rp.change(resilmail.ChangeMailboxDelete, user)
			c.Mailbox, c.MailboxID = d.Replica.Name, d.ID
			if err := rp.apply(ctx, []resilmail.Change{c}); err != nil {
				fail(d, err)
				continue
			}
			delete(names, d.Replica.Name)
			rp.res.MailboxesDeleted++
			rp.log.Info("replicate: repair: deleted extra mailbox", "user", user, "mailbox", d.Replica.Name, "messages", d.Replica.Messages)
		case MailboxMissing:
			plans = append(plans, &plan{d: d})
		case MailboxChanged:
			pl := rp.planChanged(d)
			if pl.replace {
				if rp.hold(HeldRemoval{Kind: HeldReplace, User: user, MailboxID: d.ID, Mailbox: d.Replica.Name, Messages: pl.lost, Of: d.Replica.Messages}) {
					continue
				}
				rp.log.Warn("replicate: repair: replacing the replica's mailbox by the primary's (the primary wins)",
					"user", user, "mailbox", d.Replica.Name, "mailbox_id", d.ID.String(), "why", pl.why, "messages_lost", pl.lost,
					"uidvalidity", d.Replica.UIDValidity, "primary_uidvalidity", d.Primary.UIDValidity)
				c := rp.change(resilmail.ChangeMailboxDelete, user)
				c.Mailbox, c.MailboxID = d.Replica.Name, d.ID
				if err := rp.apply(ctx, []resilmail.Change{c}); err != nil {
					fail(d, err)
					continue
				}
				delete(names, d.Replica.Name)
			}
			plans = append(plans, pl)
		}
	}
	// Rename, through a temporary name when the new name is taken (a swap).
	var second []*plan
	for _, pl := range plans {
		d := pl.d
		if pl.replace || d.Kind != MailboxChanged || !d.Renamed {
			continue
		}
		to := d.Primary.Name
		if holder, taken := names[to]; taken && holder != d.ID {
			to = "resilmail-repair-" + d.ID.String()
			second = append(second, pl)
		}
		if err := rp.rename(ctx, user, d, d.Replica.Name, to); err != nil {
			fail(d, err)
			pl.d = nil
			continue
		}
		delete(names, d.Replica.Name)
		names[to] = d.ID
	}
	for _, pl := range second {
		if pl.d == nil {
			continue
		}
		if err := rp.rename(ctx, user, pl.d, "resilmail-repair-"+pl.d.ID.String(), pl.d.Primary.Name); err != nil {
			fail(pl.d, err)
			pl.d = nil
		}
	}
	// Create, replace and patch.
	for _, pl := range plans {
		if pl.d == nil {
			continue
		}
		if holder, taken := names[pl.d.Primary.Name]; taken && holder != pl.d.ID && (pl.d.Kind == MailboxMissing || pl.replace) {
			// The replica's mailbox of that name stays until its held
			// removal is confirmed; so does the difference.
			why := fmt.Sprintf("%s/%s not created: the replica's mailbox %s holds the name and its removal is held",
				user, pl.d.Primary.Name, holder)
			rp.log.Warn("replicate: repair: "+why, "user", user, "mailbox", pl.d.Primary.Name)
			rp.res.Unrepairable = append(rp.res.Unrepairable, why)
			continue
		}
		var err error
		if pl.d.Kind == MailboxMissing || pl.replace {
			err = rp.fill(ctx, user, pl.d)
		} else {
			err = rp.patch(ctx, user, pl)
		}
		if err != nil {
			fail(pl.d, err)
		}
	}
	return errors.Join(errs...)
}

func (rp *repairer) rename(ctx context.Context, user string, d *MailboxDiff, from, to string) error {
	c := rp.change(resilmail.ChangeMailboxRename, user)
	c.Mailbox, c.NewName, c.MailboxID = from, to, d.ID
	if err := rp.apply(ctx, []resilmail.Change{c}); err != nil {
		return err
	}
	if to == d.Primary.Name {
		rp.res.MailboxesRenamed++
		rp.log.Info("replicate: repair: renamed mailbox", "user", user, "from", d.Replica.Name, "to", to)
	}
	return nil
}

// planChanged decides whether a changed mailbox can be patched or must be
// replaced: only another UIDVALIDITY (another incarnation of the mailbox)
// needs a replacement; every other difference is patched UID by UID.
func (rp *repairer) planChanged(d *MailboxDiff) *plan {
	pl := &plan{d: d}
	if d.UIDValidityDiffers {
		// Every message goes (those with the same body come back under
		// the primary's UIDs).
		pl.replace, pl.why, pl.lost = true, "UIDVALIDITY differs", d.Replica.Messages
	}
	return pl
}

func (rp *repairer) appendChange(user string, p *MailboxState, m *MessageState) resilmail.Change {
	return rp.messageChange(resilmail.ChangeAppend, user, p, m)
}

// messageChange returns an append or a restore of m.
func (rp *repairer) messageChange(kind resilmail.ChangeKind, user string, p *MailboxState, m *MessageState) resilmail.Change {
	c := rp.change(kind, user)
	c.Mailbox, c.MailboxID, c.UIDValidity = p.Name, p.ID, p.UIDValidity
	c.UID, c.Digest, c.Size, c.InternalDate, c.Flags, c.ModSeq = m.UID, m.Digest, m.Size, m.InternalDate, m.Flags, m.ModSeq
	return c
}

// tail returns the change that raises the replica's UIDNEXT (from next)
// and HIGHESTMODSEQ (from highest) to the primary's: a reservation, which
// adds no message.
func (rp *repairer) tail(user string, p *MailboxState, next uint32, highest uint64) []resilmail.Change {
	if (p.UIDNext <= next && p.HighestModSeq <= highest) || p.UIDNext <= 1 || p.UIDNext == math.MaxUint32 {
		return nil
	}
	c := rp.change(resilmail.ChangeReserve, user)
	c.Mailbox, c.MailboxID, c.UIDValidity = p.Name, p.ID, p.UIDValidity
	c.UID, c.ModSeq = p.UIDNext-1, p.HighestModSeq
	return []resilmail.Change{c}
}

// fill creates a mailbox with the primary's id and UIDVALIDITY and copies
// every message of the primary into it.
func (rp *repairer) fill(ctx context.Context, user string, d *MailboxDiff) error {
	p := d.Primary
	c := rp.change(resilmail.ChangeMailboxCreate, user)
	c.Mailbox, c.MailboxID, c.UIDValidity, c.ModSeq = p.Name, p.ID, p.UIDValidity, 1
	cs := []resilmail.Change{c}
	next, highest := uint32(1), uint64(1)
	lo := uint32(1)
	appended := 0
	for {
		page, err := rp.p.MessageRange(ctx, user, p.ID, lo, math.MaxUint32, listPage)
		if err != nil {
			return fmt.Errorf("listing the primary's messages: %w", err)
		}
		for i := range page {
			m := &page[i]
			if m.UID < lo || m.Corrupt {
				if m.Corrupt {
					rp.unrepairable(user, p.Name, m.UID)
				}
				continue
			}
			cs = append(cs, rp.appendChange(user, p, m))
			next, highest = m.UID+1, max(highest, m.ModSeq)
			lo = m.UID + 1
			appended++
		}
		if len(cs) >= rp.opts.BatchSize {
			if err := rp.apply(ctx, cs); err != nil {
				return err
			}
			cs = cs[:0]
		}
		if len(page) < listPage || lo == 0 {
			break
		}
	}
	cs = append(cs, rp.tail(user, p, next, highest)...)
	if err := rp.apply(ctx, cs); err != nil {
		return err
	}
	rp.res.Appended += appended
	if d.Kind == MailboxMissing {
		rp.res.MailboxesCreated++
		rp.log.Info("replicate: repair: created missing mailbox", "user", user, "mailbox", p.Name, "messages", appended)
	} else {
		rp.res.MailboxesReplaced++
	}
	return nil
}

func (rp *repairer) unrepairable(user, mailbox string, uid uint32) {
	rp.log.Error("replicate: repair: the primary's body is damaged; restore it from a replica or a backup",
		"user", user, "mailbox", mailbox, "uid", uid)
	rp.res.Unrepairable = append(rp.res.Unrepairable, fmt.Sprintf("%s/%s: UID %d: body corrupt on the primary", user, mailbox, uid))
}

// primaryUIDNext reads the primary's UIDNEXT of mailbox id now, after
// every read of the replica: a UID at or above it is one the primary never
// gave. It returns 0 if the primary no longer has the mailbox.
func (rp *repairer) primaryUIDNext(ctx context.Context, user string, id resilmail.MailboxID) (uint32, error) {
	l, _, err := mailboxesOf(ctx, rp.p, user)
	if err != nil {
		return 0, fmt.Errorf("reading the primary's mailboxes again: %w", err)
	}
	for i := range l {
		if l[i].ID == id {
			return l[i].UIDNext, nil
		}
	}
	return 0, nil
}

// patch removes the message differences of a mailbox that needs no
// replacement, UID by UID.
func (rp *repairer) patch(ctx context.Context, user string, pl *plan) error {
	d := pl.d
	p, r := d.Primary, d.Replica
	var (
		extra    resilmail.UIDSet // expunged on the primary
		orphans  resilmail.UIDSet // only the replica has them
		cs       []resilmail.Change
		appended int
		flags    int
		bodies   int
	)
	for _, m := range d.Messages {
		switch m.Kind {
		case MessageExtra:
			extra = extra.Add(m.UID)
		case MessageBodyDiffers:
			orphans = orphans.Add(m.UID)
		}
	}
	if !extra.IsEmpty() && uint64(extra[len(extra)-1].Stop) >= uint64(p.UIDNext) {
		// Some may be UIDs the primary never gave: ask it again, now that
		// every read of the replica is done.
		next, err := rp.primaryUIDNext(ctx, user, d.ID)
		if err != nil {
			return err
		}
		if next == 0 {
			return nil // deleted on the primary meanwhile: the next comparison sees it
		}
		var expunged resilmail.UIDSet
		for u := range extra.All() {
			if u >= next {
				orphans = orphans.Add(u)
			} else {
				expunged = expunged.Add(u)
			}
		}
		extra = expunged
	}
	expunge := !extra.IsEmpty() && !rp.hold(HeldRemoval{Kind: HeldExpunge, User: user, MailboxID: d.ID, Mailbox: p.Name, Messages: int(extra.Len()), Of: r.Messages})
	if expunge {
		c := rp.change(resilmail.ChangeExpunge, user)
		c.Mailbox, c.MailboxID, c.UIDValidity = p.Name, p.ID, p.UIDValidity
		c.UIDs, c.ModSeq = extra, p.HighestModSeq
		cs = append(cs, c)
	}
	dropOrphans := !orphans.IsEmpty() && !rp.hold(HeldRemoval{Kind: HeldOrphan, User: user, MailboxID: d.ID, Mailbox: p.Name,
		Messages: int(orphans.Len()), Of: r.Messages, UIDs: orphans})
	if dropOrphans {
		rp.log.Warn("replicate: repair: expunging messages only the replica had (confirmed)", "user", user, "mailbox", p.Name, "uids", orphans.String())
		c := rp.change(resilmail.ChangeExpunge, user)
		c.Mailbox, c.MailboxID, c.UIDValidity = p.Name, p.ID, p.UIDValidity
		c.UIDs, c.ModSeq = orphans, max(p.HighestModSeq, r.HighestModSeq)
		cs = append(cs, c)
	}
	next, highest := r.UIDNext, r.HighestModSeq
	if expunge {
		highest = max(highest, p.HighestModSeq)
	}
	for _, m := range d.Messages {
		switch m.Kind {
		case MessageMissing:
			if m.Primary.Corrupt {
				rp.unrepairable(user, p.Name, m.UID)
				continue
			}
			kind := resilmail.ChangeAppend
			if m.UID < r.UIDNext {
				// The replica gave this UID and lost the message: put
				// the primary's back in its place.
				kind = resilmail.ChangeRestore
			}
			cs = append(cs, rp.messageChange(kind, user, p, m.Primary))
			next, highest = max(next, m.UID+1), max(highest, m.Primary.ModSeq)
			appended++
		case MessageBodyDiffers:
			if dropOrphans {
				cs = append(cs, rp.messageChange(resilmail.ChangeRestore, user, p, m.Primary))
				highest = max(highest, m.Primary.ModSeq)
				appended++
			}
		case MessageMetaDiffers:
			a, b := m.Primary, m.Replica
			if b.ModSeq >= a.ModSeq || a.Size != b.Size || !a.InternalDate.Equal(b.InternalDate) {
				// Changed on the replica itself: a flag change cannot go
				// back in mod-sequence, so the message is taken out and
				// put back at once with the primary's metadata (the same
				// body: nothing is lost).
				rp.log.Warn("replicate: repair: the replica's metadata is newer than the primary's; the primary's wins",
					"user", user, "mailbox", p.Name, "uid", m.UID, "modseq", b.ModSeq, "primary_modseq", a.ModSeq)
				x := rp.change(resilmail.ChangeExpunge, user)
				x.Mailbox, x.MailboxID, x.UIDValidity, x.UIDs = p.Name, p.ID, p.UIDValidity, resilmail.NewUIDSet(m.UID)
				cs = append(cs, x, rp.messageChange(resilmail.ChangeRestore, user, p, a))
				flags++
				continue
			}
			c := rp.change(resilmail.ChangeFlags, user)
			c.Mailbox, c.MailboxID, c.UIDValidity = p.Name, p.ID, p.UIDValidity
			c.UIDs, c.FlagOp, c.Flags, c.ModSeq = resilmail.NewUIDSet(m.UID), resilmail.FlagsSet, a.Flags, a.ModSeq
			cs = append(cs, c)
			highest = max(highest, a.ModSeq)
			flags++
		case MessageCorrupt:
			// The same UID and body: the Target skips the message but
			// stores the body again, which repairs it.
			cs = append(cs, rp.appendChange(user, p, m.Replica))
			bodies++
		case MessagePrimaryCorrupt:
			rp.unrepairable(user, p.Name, m.UID)
		}
	}
	if r.UIDNext > p.UIDNext || r.HighestModSeq > p.HighestModSeq {
		// Neither goes back; both heal once the primary passes them.
		why := fmt.Sprintf("%s/%s: the replica is ahead of the primary (UIDNEXT %d/%d, HIGHESTMODSEQ %d/%d) until the primary passes it",
			user, p.Name, r.UIDNext, p.UIDNext, r.HighestModSeq, p.HighestModSeq)
		rp.log.Warn("replicate: repair: "+why, "user", user, "mailbox", p.Name)
		rp.res.Unrepairable = append(rp.res.Unrepairable, why)
	}
	if expunge || extra.IsEmpty() {
		cs = append(cs, rp.tail(user, p, next, highest)...)
	}
	if err := rp.apply(ctx, cs); err != nil {
		return err
	}
	removed := 0
	if expunge {
		removed += int(extra.Len())
	}
	if dropOrphans {
		removed += int(orphans.Len())
	}
	rp.res.Expunged += removed
	rp.res.Appended += appended
	rp.res.FlagsSet += flags
	rp.res.BodiesRestored += bodies
	if len(cs) > 0 {
		rp.log.Info("replicate: repair: patched mailbox", "user", user, "mailbox", p.Name, "appended", appended,
			"expunged", removed, "flags", flags, "bodies", bodies)
	}
	return nil
}

// A BodyReader returns verified bodies, as [Source.Body] does. A replica
// whose Target is also a BodyReader (as replicate/store's Store is) copies
// into its inbox the bodies the Target already holds when a change that
// needs one arrives, so that another user's expunge applied first (users
// apply in parallel) can never take the only copy away before that change
// applies, even when the primary is gone by then.
type BodyReader interface {
	Body(ctx context.Context, d resilmail.Digest) ([]byte, error)
}

// BodiesFrom returns a BodyFunc that reads bodies from src (a [Source] such
// as the primary's store), for [Repair] and Target.Apply.
func BodiesFrom(src BodyReader) BodyFunc {
	return func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error) {
		b, err := src.Body(ctx, d)
		if err != nil {
			return nil, err
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
}
