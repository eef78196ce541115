package replicate

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/resilmail/resilmail"
)

// How a replica delays destructive changes instead of holding its lane.
//
// A change that the replica's Hold function holds (a mass expunge, a
// mailbox or user delete, a mass flag wipe, a rename over an existing
// mailbox) is set aside: it is kept durably in the inbox (a 'd' record)
// and the user's later changes go on applying, except those that need the
// delayed change first:
//
//   - after a delayed user delete, every change of that user;
//   - after a delayed mailbox delete, changes of that mailbox and the
//     creation of (or a rename to) its name;
//   - after a delayed rename, changes of that mailbox and the creation of
//     (or a rename to) its old name.
//
// The lane waits at such a change until the delayed one is confirmed
// ([Replica.Confirm]). A confirmed change is applied by content (Seq zero,
// at the target's epoch if that is higher: after a promotion it is the
// new primary's change), and a 'x' record marks it done. [Replica.Promote]
// applies a delayed change that acknowledged later changes wait for (they
// must not be lost), and leaves the others delayed for the operator.

// A delayed change of a lane.
type delayed struct {
	HeldChange
	confirmed bool
}

// dependsLocked returns the delayed change of l that c must follow, if
// any.
func (l *lane) dependsLocked(c *resilmail.Change) *delayed {
	for i := range l.delayed {
		d := &l.delayed[i]
		dc := &d.Change
		switch dc.Kind {
		case resilmail.ChangeUserDelete:
			return d
		case resilmail.ChangeMailboxDelete, resilmail.ChangeMailboxRename:
			if c.MailboxID == dc.MailboxID && !c.MailboxID.IsZero() {
				return d
			}
			freed := dc.Mailbox // the name the delayed change frees
			if (c.Kind == resilmail.ChangeMailboxCreate && c.Mailbox == freed) ||
				(c.Kind == resilmail.ChangeMailboxRename && c.NewName == freed) {
				return d
			}
		}
	}
	return nil
}

// delayedRecord encodes a 'd' record: the reason, then the change.
func delayedRecord(c *resilmail.Change, reason string) ([]byte, error) {
	enc, err := c.MarshalBinary()
	if err != nil {
		return nil, err
	}
	b := binary.AppendUvarint([]byte{recDelayed}, uint64(len(reason)))
	b = append(b, reason...)
	return append(b, enc...), nil
}

func decodeDelayed(data []byte) (resilmail.Change, string, error) {
	var c resilmail.Change
	n, k := binary.Uvarint(data)
	if k <= 0 || n > uint64(len(data)-k) {
		return c, "", errors.New("replicate: bad delayed record")
	}
	reason := string(data[k : k+int(n)])
	err := c.UnmarshalBinary(data[k+int(n):])
	return c, reason, err
}

// delay sets c, the head of l's queue, aside until it is confirmed,
// durably.
func (r *Replica) delay(l *lane, c resilmail.Change, reason string) error {
	r.mu.Lock()
	inbox := r.inbox
	r.mu.Unlock()
	if inbox == nil {
		return errors.New("replicate: inbox not open")
	}
	rec, err := delayedRecord(&c, reason)
	if err != nil {
		return err
	}
	if _, err := inbox.AppendSync(rec); err != nil {
		r.noteError(err, &r.stats.InboxErrors)
		return fmt.Errorf("replicate: inbox: %w", err)
	}
	r.mu.Lock()
	if len(l.queue) > 0 && l.queue[0].Seq == c.Seq {
		l.queue = l.queue[1:] // its unapplied entry stays: the inbox keeps its record
	}
	l.delayed = append(l.delayed, delayed{HeldChange: HeldChange{Change: c, Reason: reason, Since: time.Now()}})
	r.openGateLocked()
	r.mu.Unlock()
	r.log.Warn("replicate: destructive change delayed until confirmed; the user's later changes go on", "replica", r.opts.Name,
		"user", l.user, "seq", c.Seq, "kind", c.Kind, "reason", reason)
	return nil
}

// nextConfirmedLocked returns the first delayed change of l that is
// confirmed.
func (l *lane) nextConfirmedLocked() (resilmail.Change, bool) {
	for _, d := range l.delayed {
		if d.confirmed {
			return d.Change, true
		}
	}
	return resilmail.Change{}, false
}

// applyDelayed applies a delayed change of l by content, and marks it
// done durably. A change that now conflicts with the target's state (the
// primary went on meanwhile) makes the replica repair the user from its
// primary instead.
func (r *Replica) applyDelayed(ctx context.Context, l *lane, c resilmail.Change) error {
	ac := c
	ac.Seq = 0
	ac.Epoch = max(ac.Epoch, r.t.Epoch())
	err := r.t.Apply(ctx, []resilmail.Change{ac}, r.body)
	if errors.Is(err, ErrConflict) && !r.isPromoted() {
		if rt, ok := r.canRepair(); ok {
			err = r.repairUsers(ctx, rt, []string{l.user})
		}
	}
	if err != nil {
		return fmt.Errorf("replicate: applying delayed change %d of %q: %w", c.Seq, l.user, err)
	}
	r.mu.Lock()
	inbox := r.inbox
	r.mu.Unlock()
	if inbox != nil {
		if _, err := inbox.AppendSync(uvarintRecord(recDelayDone, c.Seq, l.user)); err != nil {
			r.noteError(err, &r.stats.InboxErrors)
			return fmt.Errorf("replicate: inbox: %w", err)
		}
	}
	r.mu.Lock()
	for i := range l.delayed {
		if l.delayed[i].Change.Seq == c.Seq {
			l.delayed = append(l.delayed[:i], l.delayed[i+1:]...)
			break
		}
	}
	delete(r.unapplied, c.Seq)
	r.openGateLocked()
	r.mu.Unlock()
	r.log.Info("replicate: delayed change applied", "replica", r.opts.Name, "user", l.user, "seq", c.Seq, "kind", c.Kind)
	return nil
}

// restoreDelayedLocked puts back the delayed changes an inbox holds into
// their lanes, in journal order.
func (r *Replica) restoreDelayedLocked(st *inboxState) {
	seqs := make([]uint64, 0, len(st.delayed))
	for seq := range st.delayed {
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	for _, seq := range seqs {
		d := st.delayed[seq]
		l := r.laneLocked(d.c.User)
		if slices.ContainsFunc(l.delayed, func(x delayed) bool { return x.Change.Seq == seq }) {
			continue
		}
		l.delayed = append(l.delayed, delayed{HeldChange: HeldChange{Change: d.c, Reason: d.reason, Since: time.Now()},
			confirmed: st.confirmedSeq[seq]})
		r.unapplied[seq] = d.seg
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}
