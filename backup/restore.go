package backup

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail"
)

// A Selection says which messages, as of when, a restore or a listing
// takes.
type Selection struct {
	// Snapshot names the snapshot to read (see [Repo.Snapshots]); empty
	// means the newest state the repository holds, or the state at At.
	Snapshot string `json:"snapshot,omitempty"`
	// At, if not zero, is the point in time to read: the newest snapshot
	// taken at or before it plus the changes after it up to At.
	At time.Time `json:"at,omitzero"`
	// User, Mailbox and UID narrow the selection to one user, one of its
	// mailboxes (by name) and one message; empty or zero takes all.
	User    string `json:"user,omitempty"`
	Mailbox string `json:"mailbox,omitempty"`
	UID     uint32 `json:"uid,omitempty"`
	// DeletedFrom and DeletedTo, if either is set, select instead the
	// messages deleted in that interval (both included; a zero bound is
	// open) among those the newest state keeps for retention.
	DeletedFrom time.Time `json:"deleted_from,omitzero"`
	DeletedTo   time.Time `json:"deleted_to,omitzero"`
}

func (s *Selection) deletedRange() bool { return !s.DeletedFrom.IsZero() || !s.DeletedTo.IsZero() }

// MessageInfo describes a message of the repository.
type MessageInfo struct {
	User         string              `json:"user"`
	Mailbox      string              `json:"mailbox"`
	MailboxID    resilmail.MailboxID `json:"mailbox_id"`
	UIDValidity  uint32              `json:"uidvalidity"`
	UID          uint32              `json:"uid"`
	ModSeq       uint64              `json:"modseq"`
	Digest       resilmail.Digest    `json:"digest"`
	Size         int64               `json:"size"`
	Flags        []string            `json:"flags,omitempty"`
	InternalDate time.Time           `json:"internal_date,omitzero"`
	Added        time.Time           `json:"added,omitzero"`
	// Deleted is when the message was expunged (or its mailbox or user
	// deleted); zero for a message that exists.
	Deleted time.Time `json:"deleted,omitzero"`
	// NoBody is set when the repository does not hold the body.
	NoBody bool `json:"no_body,omitempty"`
}

func timeOf(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// selectState reads the state a selection names. A manifest removed
// between listing and reading (a concurrent Prune) makes it list again, up
// to readRetries times.
func (r *Repo) selectState(ctx context.Context, sel Selection) (*state, error) {
	for attempt := 0; ; attempt++ {
		st, err := r.selectStateOnce(ctx, sel)
		if err == nil || !errors.Is(err, ErrNotExist) || attempt == readRetries {
			return st, err
		}
		r.log.Info("backup: a manifest was removed while reading (a prune); reading again", "err", err)
	}
}

func (r *Repo) selectStateOnce(ctx context.Context, sel Selection) (*state, error) {
	if sel.Snapshot != "" {
		if !strings.HasPrefix(sel.Snapshot, snapshotsPrefix) {
			sel.Snapshot = snapshotsPrefix + sel.Snapshot
		}
		st, err := r.readSnapshot(ctx, sel.Snapshot)
		if errors.Is(err, ErrNotExist) {
			return nil, fmt.Errorf("%w: no snapshot %s", ErrNotCovered, sel.Snapshot)
		}
		return st, err
	}
	at := sel.At
	if sel.deletedRange() {
		at = time.Time{}
	}
	v, err := r.load(ctx, at)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("%w: the repository holds no snapshot", ErrNotCovered)
	}
	return v.st, nil
}

// Messages returns the messages a selection takes, by user, mailbox and
// UID: the messages that existed at the selected time (with one UID
// selected, also that message if it was deleted and is kept), or those
// deleted in the selected interval.
func (r *Repo) Messages(ctx context.Context, sel Selection) ([]MessageInfo, error) {
	st, err := r.selectState(ctx, sel)
	if err != nil {
		return nil, err
	}
	return r.messages(st, sel), nil
}

func (r *Repo) messages(st *state, sel Selection) []MessageInfo {
	var out []MessageInfo
	from, to := unixNano(sel.DeletedFrom), unixNano(sel.DeletedTo)
	for _, b := range st.sortedBoxes() {
		if sel.User != "" && b.user != sel.User || sel.Mailbox != "" && b.name != sel.Mailbox {
			continue
		}
		for i := range b.msgs {
			m := &b.msgs[i]
			if sel.UID != 0 && m.uid != sel.UID {
				continue
			}
			switch {
			case sel.deletedRange():
				if m.deleted == 0 || from != 0 && m.deleted < from || to != 0 && m.deleted > to {
					continue
				}
			case m.deleted != 0 && sel.UID == 0:
				continue
			}
			out = append(out, MessageInfo{
				User: b.user, Mailbox: b.name, MailboxID: b.id, UIDValidity: b.uidValidity, UID: m.uid, ModSeq: m.modseq,
				Digest: m.digest, Size: m.size, Flags: m.flags, InternalDate: timeOf(m.date), Added: timeOf(m.added),
				Deleted: timeOf(m.deleted), NoBody: !r.has(m.digest),
			})
		}
	}
	return out
}

// RestoreOptions say how a restore writes.
type RestoreOptions struct {
	// KeepUIDs restores whole mailboxes with their mailbox ids,
	// UIDVALIDITY, UIDs, UIDNEXT and mod-sequences (so that clients
	// re-download nothing): for a store that lost them, such as a new
	// server rebuilt from the backup. A mailbox whose name the
	// destination holds with another mailbox id is refused. Without it,
	// messages are added as new messages (new UIDs) into mailboxes of the
	// same names, created if needed, skipping those the mailbox holds
	// already (same body): nothing is ever overwritten.
	KeepUIDs bool
}

// RestoreSummary reports what a restore did.
type RestoreSummary struct {
	Mailboxes int           `json:"mailboxes"`
	Messages  int           `json:"messages"` // restored
	Present   int           `json:"present"`  // skipped: the mailbox holds them
	NoBody    int           `json:"no_body"`  // skipped: the repository lacks the body
	Bytes     int64         `json:"bytes"`    // of the restored bodies
	Took      time.Duration `json:"took"`
}

// Restore writes the messages sel takes into dst (see [RestoreOptions]).
// Every body is checked against its digest before it is written; a body
// missing from the repository is reported and skipped. It takes no lock:
// a restore can run while a backup writes or a Prune (of this process or
// another) removes: a pack or manifest removed under it (a body moved to a
// rewritten pack) is looked up again in the repository as it is now. A
// restore keeping UIDs into an empty [Loader] loads it at once.
func (r *Repo) Restore(ctx context.Context, dst Destination, sel Selection, opts RestoreOptions) (RestoreSummary, error) {
	start := r.opts.Now()
	st, err := r.selectState(ctx, sel)
	if err != nil {
		return RestoreSummary{}, err
	}
	msgs := r.messages(st, sel)
	var sum RestoreSummary
	if opts.KeepUIDs {
		if sel.UID != 0 || sel.deletedRange() {
			return sum, errors.New("backup: keeping UIDs restores whole mailboxes; select no UID and no deletion interval")
		}
		err = r.restoreKeep(ctx, dst, st, sel, msgs, &sum)
	} else {
		err = r.restoreNew(ctx, dst, msgs, &sum)
	}
	sum.Took = r.opts.Now().Sub(start)
	if err == nil {
		r.log.Info("backup: restore done", "mailboxes", sum.Mailboxes, "messages", sum.Messages, "present", sum.Present, "no_body", sum.NoBody, "took", sum.Took)
	}
	return sum, err
}

func (r *Repo) progress(phase string, done, total, bytes int64) {
	if r.opts.Progress != nil {
		r.opts.Progress(Progress{Phase: phase, Done: done, Total: total, Bytes: bytes})
	}
}

// restoreKeep rebuilds the selected mailboxes with their UIDs: at once
// when dst is a [Loader] and empty, mailbox by mailbox otherwise.
func (r *Repo) restoreKeep(ctx context.Context, dst Destination, st *state, sel Selection, msgs []MessageInfo, sum *RestoreSummary) error {
	if l, ok := dst.(Loader); ok {
		err := r.restoreLoad(ctx, l, st, sel, msgs, sum)
		if !errors.Is(err, fs.ErrExist) {
			return err
		}
		r.log.Info("backup: the destination is not empty; restoring mailbox by mailbox", "why", err)
		*sum = RestoreSummary{}
	}
	plan := keepPlan(st, sel, msgs, r.opts.Now().UTC(), false)
	cache := newFrameCache(256)
	var done, bytesDone atomic.Int64
	total := int64(len(msgs))
	body := func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error) {
		b, err := r.readBody(ctx, d, cache)
		if err != nil {
			return nil, err
		}
		bytesDone.Add(int64(len(b)))
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	for _, p := range plan {
		changes := p.changes
		for len(changes) > 0 {
			n := min(len(changes), 2000)
			if err := dst.RestoreChanges(ctx, changes[:n], body); err != nil {
				return fmt.Errorf("backup: restoring %s/%s: %w", p.box.user, p.box.name, err)
			}
			for _, c := range changes[:n] {
				if c.Kind == resilmail.ChangeAppend {
					done.Add(1)
				}
			}
			changes = changes[n:]
			r.progress("restore", done.Load(), total, bytesDone.Load())
		}
		sum.Mailboxes++
		sum.NoBody += p.noBody
	}
	sum.Messages = int(done.Load()) - sum.NoBody
	sum.Bytes = bytesDone.Load()
	return nil
}

// boxPlan is the changes that rebuild one mailbox (preceded, for the
// first mailbox of a user, by the user and its subscriptions).
type boxPlan struct {
	box     *boxEntry
	changes []resilmail.Change
	noBody  int // messages whose body the repository lacks
}

// keepPlan returns the changes that rebuild the selected mailboxes with
// their ids, UIDVALIDITY, UIDs, UIDNEXT and HIGHESTMODSEQ, mailbox by
// mailbox. With skipNoBody, a message whose body the repository lacks is
// left out (its UID stays given: UIDNEXT is kept); otherwise its append is
// there, for the destination to record as expunged.
func keepPlan(st *state, sel Selection, msgs []MessageInfo, now time.Time, skipNoBody bool) []boxPlan {
	byBox := make(map[resilmail.MailboxID][]MessageInfo)
	var boxes []*boxEntry
	for _, m := range msgs {
		if byBox[m.MailboxID] == nil {
			boxes = append(boxes, st.boxes[m.MailboxID])
		}
		byBox[m.MailboxID] = append(byBox[m.MailboxID], m)
	}
	// The selection's mailboxes without messages too.
	for _, b := range st.sortedBoxes() {
		if b.deleted != 0 || byBox[b.id] != nil || sel.User != "" && b.user != sel.User || sel.Mailbox != "" && b.name != sel.Mailbox {
			continue
		}
		boxes = append(boxes, b)
		byBox[b.id] = []MessageInfo{}
	}
	users := map[string]bool{}
	plan := make([]boxPlan, 0, len(boxes))
	for _, b := range boxes {
		var changes []resilmail.Change
		ch := func(kind resilmail.ChangeKind) resilmail.Change {
			return resilmail.Change{Kind: kind, Epoch: st.epoch, Time: now, User: b.user}
		}
		if !users[b.user] {
			users[b.user] = true
			changes = append(changes, ch(resilmail.ChangeUserCreate))
			if u := st.users[b.user]; u != nil {
				for _, s := range u.subs {
					c := ch(resilmail.ChangeSubscribe)
					c.Mailbox = s
					changes = append(changes, c)
				}
			}
		}
		c := ch(resilmail.ChangeMailboxCreate)
		c.Mailbox, c.MailboxID, c.UIDValidity, c.ModSeq = b.name, b.id, b.uidValidity, b.highest
		changes = append(changes, c)
		var last uint32
		noBody := 0
		for _, m := range byBox[b.id] {
			if m.NoBody {
				noBody++
				if skipNoBody {
					continue
				}
			}
			a := ch(resilmail.ChangeAppend)
			a.Mailbox, a.MailboxID, a.UIDValidity = b.name, b.id, b.uidValidity
			a.UID, a.Digest, a.Size, a.ModSeq, a.Flags, a.InternalDate = m.UID, m.Digest, m.Size, m.ModSeq, m.Flags, m.InternalDate
			changes = append(changes, a)
			last = m.UID
		}
		if b.uidNext > last+1 || b.highest > 0 {
			// UIDNEXT above the last message (its UIDs were given, the
			// messages expunged since) and HIGHESTMODSEQ.
			x := ch(resilmail.ChangeReserve)
			x.Mailbox, x.MailboxID, x.UIDValidity = b.name, b.id, b.uidValidity
			x.UID, x.ModSeq = b.uidNext-1, b.highest
			if x.UID > 0 {
				changes = append(changes, x)
			}
		}
		plan = append(plan, boxPlan{box: b, changes: changes, noBody: noBody})
	}
	return plan
}

// restoreLoad rebuilds the selected mailboxes into an empty store with one
// Load: the frames holding the bodies are read, opened and cut in
// parallel (Options.Parallelism), each once, and every body goes straight
// to the store.
func (r *Repo) restoreLoad(ctx context.Context, dst Loader, st *state, sel Selection, msgs []MessageInfo, sum *RestoreSummary) error {
	plan := keepPlan(st, sel, msgs, r.opts.Now().UTC(), true)
	var changes []resilmail.Change
	var s RestoreSummary
	need := make(map[resilmail.Digest]bool)
	for _, p := range plan {
		changes = append(changes, p.changes...)
		s.Mailboxes++
		s.NoBody += p.noBody
		for i := range p.changes {
			if c := &p.changes[i]; c.Kind == resilmail.ChangeAppend {
				s.Messages++
				need[c.Digest] = true
			}
		}
	}
	total := int64(s.Messages)
	var loaded, bytesDone atomic.Int64
	counts := make(map[resilmail.Digest]int64, len(need)) // messages per body, for the progress
	for _, c := range changes {
		if c.Kind == resilmail.ChangeAppend {
			counts[c.Digest]++
		}
	}
	err := dst.Load(ctx, changes, func(ctx context.Context, put func(resilmail.Digest, []byte) error) error {
		return r.eachBody(ctx, need, func(d resilmail.Digest, b []byte) error {
			if err := put(d, b); err != nil {
				return fmt.Errorf("backup: restoring body %s: %w", d, err)
			}
			r.progress("restore", loaded.Add(counts[d]), total, bytesDone.Add(int64(len(b))*counts[d]))
			return nil
		})
	})
	if err != nil {
		return err
	}
	s.Bytes = bytesDone.Load()
	*sum = s
	return nil
}

// eachBody calls fn with every body in need, reading each frame that
// holds them once: frames in parallel (Options.Parallelism), in pack
// order. fn is called concurrently, with bodies not checked against their
// digests (a Loader's put checks them, once), and must not keep a body
// after it returns: the frames are decoded into buffers used again.
func (r *Repo) eachBody(ctx context.Context, need map[resilmail.Digest]bool, fn func(resilmail.Digest, []byte) error) error {
	type frameJob struct {
		pack        string
		off, length int64
		entries     []indexEntry
	}
	jobs := make(map[frameKey]*frameJob)
	r.mu.Lock()
	for d := range need {
		loc, ok := r.index[d]
		if !ok {
			r.mu.Unlock()
			return fmt.Errorf("%w: body %s is not in the repository", ErrNotExist, d)
		}
		k := frameKey{loc.pack, loc.off}
		j := jobs[k]
		if j == nil {
			j = &frameJob{pack: loc.pack, off: loc.off, length: loc.length}
			jobs[k] = j
		}
		j.entries = append(j.entries, indexEntry{digest: d, off: loc.off, length: loc.length, inner: loc.inner, size: loc.size})
	}
	r.mu.Unlock()
	list := make([]*frameJob, 0, len(jobs))
	for _, j := range jobs {
		list = append(list, j)
	}
	slices.SortFunc(list, func(a, b *frameJob) int {
		if c := strings.Compare(a.pack, b.pack); c != 0 {
			return c
		}
		return cmp.Compare(a.off, b.off)
	})
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Parallelism)
	var bufs sync.Pool
	for _, j := range list {
		g.Go(func() error {
			buf, _ := bufs.Get().(*[]byte)
			if buf == nil {
				buf = new([]byte)
			}
			frame, err := r.readFrameInto(gctx, j.pack, j.off, j.length, *buf)
			if err == nil {
				defer func() {
					*buf = frame
					bufs.Put(buf)
				}()
			}
			if errors.Is(err, ErrNotExist) {
				// A prune rewrote or removed the pack since the index was
				// read: each body from where the index says now.
				for _, e := range j.entries {
					b, err := r.readBody(gctx, e.digest, nil)
					if err != nil {
						return err
					}
					if err := fn(e.digest, b); err != nil {
						return err
					}
				}
				return nil
			}
			if err != nil {
				return err
			}
			for _, e := range j.entries {
				b, err := cutBody(frame, e, j.pack)
				if err != nil {
					return err
				}
				if err := fn(e.digest, b); err != nil {
					if ce := (*resilmail.CorruptError)(nil); errors.As(err, &ce) {
						return fmt.Errorf("%w: body in pack %s: %w", ErrCorrupt, j.pack, err)
					}
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// restoreNew adds the selected messages as new messages.
func (r *Repo) restoreNew(ctx context.Context, dst Destination, msgs []MessageInfo, sum *RestoreSummary) error {
	var mu sync.Mutex
	ensured := map[string]bool{}
	ensure := func(ctx context.Context, user, box string) error {
		k := user + "\x00" + box
		mu.Lock()
		ok := ensured[k]
		mu.Unlock()
		if ok {
			return nil
		}
		if err := dst.EnsureMailbox(ctx, user, box); err != nil {
			return err
		}
		mu.Lock()
		if !ensured[k] {
			ensured[k] = true
			sum.Mailboxes++
		}
		mu.Unlock()
		return nil
	}
	var cache *frameCache
	if len(msgs) > 1 {
		cache = newFrameCache(256)
	}
	var done int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Parallelism)
	for _, m := range msgs {
		g.Go(func() error {
			if m.NoBody {
				mu.Lock()
				sum.NoBody++
				mu.Unlock()
				r.log.Warn("backup: the repository lacks the body of a message; not restored", "user", m.User, "mailbox", m.Mailbox, "uid", m.UID, "digest", m.Digest.String())
				return nil
			}
			if err := ensure(gctx, m.User, m.Mailbox); err != nil {
				return fmt.Errorf("backup: restoring into %s/%s: %w", m.User, m.Mailbox, err)
			}
			present, err := dst.ContainsBody(gctx, m.User, m.Mailbox, m.Digest)
			if err != nil {
				return fmt.Errorf("backup: restoring into %s/%s: %w", m.User, m.Mailbox, err)
			}
			if present {
				mu.Lock()
				sum.Present++
				mu.Unlock()
				return nil
			}
			b, err := r.readBody(gctx, m.Digest, cache)
			if err != nil {
				return err
			}
			if _, err := dst.Append(gctx, m.User, m.Mailbox, m.Flags, m.InternalDate, bytes.NewReader(b)); err != nil {
				return fmt.Errorf("backup: restoring UID %d into %s/%s: %w", m.UID, m.User, m.Mailbox, err)
			}
			mu.Lock()
			sum.Messages++
			sum.Bytes += int64(len(b))
			done++
			d, bs := done, sum.Bytes
			mu.Unlock()
			r.progress("restore", d, int64(len(msgs)), bs)
			return nil
		})
	}
	return g.Wait()
}
