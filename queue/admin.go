package queue

import (
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
)

// State is the state of a queued message as a whole.
type State string

// The message states, for [Filter] and [Info].
const (
	// StateQueued: waiting for its first attempt.
	StateQueued State = "queued"
	// StateDeferred: tried at least once, waiting to be tried again.
	StateDeferred State = "deferred"
	// StateDelivering: an attempt is in flight.
	StateDelivering State = "delivering"
	// StateHeld: held; not delivered until released.
	StateHeld State = "held"
	// StateMaybeDelivered: nothing left to try but recipients held as
	// maybe-delivered (MaybeHold); release to send again, delete to drop.
	// It still gets delay warnings and expires.
	StateMaybeDelivered State = "maybe-delivered"
	// StateCorrupt: its stored body failed its digest; it was moved aside
	// and is never delivered.
	StateCorrupt State = "corrupt"
)

// A Filter selects queued messages for List and the admin operations. Zero
// fields match everything; set fields must all match.
type Filter struct {
	// IDs lists message ids.
	IDs []string
	// Sender matches the reverse-path, case-insensitively; use "<>" for the
	// null sender.
	Sender string
	// Recipient matches any recipient address, case-insensitively.
	Recipient string
	// Domain matches the domain of any recipient.
	Domain string
	// State matches the message state.
	State State
	// OlderThan and YoungerThan bound the time since the message was
	// enqueued.
	OlderThan, YoungerThan time.Duration
}

// Info describes a queued message.
type Info struct {
	ID          string
	Envelope    resilmail.Envelope
	State       State
	Created     time.Time
	NextAttempt time.Time // zero while held, in flight or corrupt
	Attempts    int
	Size        int64
	Digest      resilmail.Digest
	Recipients  []RecipientInfo
	// History lists the last attempts, oldest first (Inspect only).
	History []Attempt
}

// RecipientInfo is the state of one recipient of a queued message.
type RecipientInfo struct {
	Addr  string
	State RcptState
	// Reply is the last SMTP reply or error for this recipient.
	Reply string
	// Host is the next hop of the last attempt.
	Host string
}

// Attempt is one past delivery attempt.
type Attempt struct {
	Time        time.Time
	Destination string
	Results     []RecipientInfo
}

func (q *Queue) stateLocked(m *message) State {
	switch {
	case m.rec.Corrupt:
		return StateCorrupt
	case m.inRound || len(m.rec.Jobs) > 0:
		return StateDelivering
	case m.rec.Held && m.hasMaybe():
		return StateMaybeDelivered
	case m.rec.Held:
		return StateHeld
	case m.hasMaybe() && !m.hasPending():
		return StateMaybeDelivered
	case m.rec.Attempts > 0:
		return StateDeferred
	}
	return StateQueued
}

func (q *Queue) matchLocked(m *message, f *Filter, now time.Time) bool {
	if m.removed || m.synced != nil {
		return false
	}
	if len(f.IDs) > 0 && !slices.Contains(f.IDs, m.id()) {
		return false
	}
	env := &m.rec.Env
	if f.Sender != "" {
		s := env.From
		if s == "" {
			s = "<>"
		}
		if !strings.EqualFold(s, f.Sender) {
			return false
		}
	}
	if f.Recipient != "" && !slices.ContainsFunc(env.To, func(r resilmail.Recipient) bool { return strings.EqualFold(r.Addr, f.Recipient) }) {
		return false
	}
	if f.Domain != "" && !slices.ContainsFunc(env.To, func(r resilmail.Recipient) bool { return resilmail.Domain(r.Addr) == strings.ToLower(f.Domain) }) {
		return false
	}
	if f.State != "" && q.stateLocked(m) != f.State {
		return false
	}
	age := now.Sub(time.Unix(0, m.rec.Created))
	if f.OlderThan > 0 && age < f.OlderThan {
		return false
	}
	if f.YoungerThan > 0 && age >= f.YoungerThan {
		return false
	}
	return true
}

func (q *Queue) infoLocked(m *message, history bool) Info {
	in := Info{
		ID: m.id(), Envelope: m.rec.Env.Clone(), State: q.stateLocked(m),
		Created: time.Unix(0, m.rec.Created), Attempts: m.rec.Attempts,
		Size: m.size, Digest: m.rec.Digest,
	}
	if m.heapIdx >= 0 {
		in.NextAttempt = m.next
	}
	for i, rc := range m.rec.Rcpts {
		in.Recipients = append(in.Recipients, RecipientInfo{Addr: m.rec.Env.To[i].Addr, State: rc.State, Reply: rc.Reply, Host: rc.Host})
	}
	if history {
		for _, h := range m.rec.History {
			a := Attempt{Time: time.Unix(0, h.At), Destination: h.Dest}
			for k, i := range h.Results {
				if i < 0 || i >= len(m.rec.Env.To) || k >= len(h.States) || k >= len(h.Replies) {
					continue
				}
				a.Results = append(a.Results, RecipientInfo{Addr: m.rec.Env.To[i].Addr, State: RcptState(h.States[k]), Reply: h.Replies[k], Host: h.Dest})
			}
			in.History = append(in.History, a)
		}
	}
	return in
}

// List returns the messages that f selects, oldest first.
func (q *Queue) List(f Filter) []Info {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.opts.Now()
	var out []Info
	for _, m := range q.msgs {
		if q.matchLocked(m, &f, now) {
			out = append(out, q.infoLocked(m, false))
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Inspect returns one message with its recent attempts and their replies.
func (q *Queue) Inspect(id string) (Info, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	m := q.msgs[id]
	if m == nil || m.synced != nil {
		return Info{}, ErrNotFound
	}
	return q.infoLocked(m, true), nil
}

// each applies fn to every message f selects and syncs the log; it returns
// how many fn changed.
func (q *Queue) each(f Filter, fn func(m *message, now time.Time) (bool, error)) (int, error) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return 0, ErrClosed
	}
	now := q.opts.Now()
	n := 0
	var firstErr error
	for _, m := range q.msgs {
		if !q.matchLocked(m, &f, now) {
			continue
		}
		changed, err := fn(m, now)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		if changed {
			n++
		}
	}
	q.mu.Unlock()
	if err := q.wal.Sync(); err != nil && firstErr == nil {
		firstErr = storageErr(err)
	}
	q.poke()
	return n, firstErr
}

// Hold stops delivery of the selected messages until Release. An attempt
// already in flight finishes. A held message is a pause, not a store: its
// sender still gets the delay warnings, and when the message's lifetime
// runs out its recipients fail (4.4.7) with a DSN saying that the
// postmaster held it.
func (q *Queue) Hold(f Filter) (int, error) {
	return q.each(f, func(m *message, now time.Time) (bool, error) {
		if m.rec.Held {
			return false, nil
		}
		if err := q.appendLocked(m, &updRec{ID: m.id(), Held: ptr(true)}); err != nil {
			return false, err
		}
		m.next = q.waitDeadlineLocked(m)
		q.scheduleLocked(m)
		q.log.Info("queue: held", "msg_id", m.id())
		return true, nil
	})
}

// Release resumes delivery of held messages now, and of recipients held as
// maybe-delivered: they are sent again, the operator having decided that a
// possible duplicate is better than a possible loss.
func (q *Queue) Release(f Filter) (int, error) {
	return q.each(f, func(m *message, now time.Time) (bool, error) {
		if !m.rec.Held && !m.hasMaybe() {
			return false, nil
		}
		u := &updRec{ID: m.id()}
		if m.rec.Held {
			u.Held = ptr(false)
		}
		for i, rc := range m.rec.Rcpts {
			if rc.State == MaybeDelivered {
				rc.State = Pending
				u.Rcpts = append(u.Rcpts, rcptChange{I: i, rcptRec: rc})
			}
		}
		if err := q.appendLocked(m, u); err != nil {
			return false, err
		}
		m.next = now
		q.finalizeLocked(m)
		q.log.Info("queue: released", "msg_id", m.id())
		return true, nil
	})
}

// Retry schedules the selected messages that are waiting for a retry for an
// attempt now. Held messages stay held. The operator's word also lifts the
// slow-down of their destinations (as Postfix's flush forgets dead
// destinations): a destination that fails again is slowed down again.
func (q *Queue) Retry(f Filter) (int, error) {
	return q.each(f, func(m *message, now time.Time) (bool, error) {
		if m.heapIdx < 0 {
			return false, nil
		}
		for i, rc := range m.rec.Rcpts {
			if rc.State != Pending {
				continue
			}
			if d := q.dests[q.opts.Destination(m.rec.Env.To[i].Addr)]; d != nil && now.Before(d.paused) {
				d.paused = time.Time{}
				q.log.Info("queue: destination slow-down lifted by retry", "dest", d.key)
			}
		}
		m.next = now
		q.scheduleLocked(m)
		return true, nil
	})
}

// Delete removes the selected messages without notifying anyone. A message
// with an attempt in flight is removed when the attempt ends.
func (q *Queue) Delete(f Filter) (int, error) {
	return q.each(f, func(m *message, now time.Time) (bool, error) {
		if m.doom != "" {
			return false, nil
		}
		m.doom = "deleted"
		q.log.Info("queue: deleted by operator", "msg_id", m.id())
		if m.heapIdx >= 0 {
			q.scheduleLocked(m)
		}
		q.finalizeLocked(m)
		return true, nil
	})
}

// Bounce fails the pending and maybe-delivered recipients of the selected
// messages now, with reason, and notifies their senders as for any
// permanent failure.
func (q *Queue) Bounce(f Filter, reason string) (int, error) {
	if reason == "" {
		reason = "bounced by the postmaster"
	}
	return q.each(f, func(m *message, now time.Time) (bool, error) {
		if m.inRound || len(m.rec.Jobs) > 0 {
			return false, nil // retry when the attempt has ended
		}
		u := &updRec{ID: m.id(), Held: ptr(false)}
		for i, rc := range m.rec.Rcpts {
			if rc.State != Pending && rc.State != MaybeDelivered {
				continue
			}
			nrc := rcptRec{State: Failed, Reply: "550 5.0.0 " + reason, Host: rc.Host, Code: "5.0.0", Perm: true}
			nrc.Notified = !q.wantsFailureNotice(m, i)
			u.Rcpts = append(u.Rcpts, rcptChange{I: i, rcptRec: nrc})
			q.counters.failed++
		}
		if len(u.Rcpts) == 0 {
			return false, nil
		}
		if err := q.appendLocked(m, u); err != nil {
			return false, err
		}
		q.log.Info("queue: bounced by operator", "msg_id", m.id(), "reason", reason)
		q.afterRoundLocked(m)
		return true, nil
	})
}
