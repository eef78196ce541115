package backup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail"
)

// Summary reports what a backup run did.
type Summary struct {
	// Full is set when the run read the store's whole state (the first
	// run, a store of another history, or a journal that no longer
	// reaches back to the backup's position); Reason says why.
	Full   bool   `json:"full"`
	Reason string `json:"reason,omitempty"`
	// From and To are the positions of the store's journal the run
	// started and ended at.
	From uint64 `json:"from"`
	To   uint64 `json:"to"`
	// Changes counts the changes read from the journal, by kind below.
	Changes        int `json:"changes"`
	Appends        int `json:"appends"`
	Expunges       int `json:"expunges"`
	FlagChanges    int `json:"flag_changes"`
	MailboxChanges int `json:"mailbox_changes"`
	// NewBodies is the number of bodies stored by this run, BodyBytes
	// their size and StoredBytes what they take in the repository
	// (compressed and, if so configured, encrypted).
	NewBodies   int   `json:"new_bodies"`
	BodyBytes   int64 `json:"body_bytes"`
	StoredBytes int64 `json:"stored_bytes"`
	// Reused counts appended messages whose body the repository held
	// already (a copy, a message delivered to several users).
	Reused int `json:"reused"`
	// Lost counts messages whose body the store could not give: expunged
	// before the backup read it (see [Holder]) or corrupt in the store
	// (Corrupt counts those, which are also logged). A later run retries
	// the bodies of the messages still there.
	Lost    int `json:"lost"`
	Corrupt int `json:"corrupt"`
	// Repaired counts bodies missing from the repository that this run
	// read again.
	Repaired int `json:"repaired"`
	// Snapshot is the snapshot the run wrote, if any.
	Snapshot string `json:"snapshot,omitempty"`
	// Messages and Deleted count the messages in the snapshot: live, and
	// deleted but kept for retention.
	Messages int `json:"messages"`
	Deleted  int `json:"deleted"`
	// Took is the run's duration.
	Took time.Duration `json:"took"`
}

// changesBatch is how many changes a run reads at once.
const changesBatch = 5000

// segmentMax is the most changes one segment holds.
const segmentMax = 50000

// runner is the state of a backup run or of Follow.
type runner struct {
	r       *Repo
	src     Source
	st      *state
	lineage uint32
	history string
	sum     Summary
	pending []resilmail.Change // applied, not yet in a segment
	pack    packWriter
	lastSeg time.Time
	// dirty is set when changes were applied since the last snapshot.
	dirty bool
	// progressTotal is the number of bodies the run expects to store.
	progressTotal int64
}

// Backup runs one backup of src and writes a snapshot: the first run reads
// the whole state; later runs read the changes of the store's journal
// since the last run (and so cost in proportion to the changes), storing
// the bodies the repository lacks, then the changes, then the snapshot,
// each only after what it refers to is durable. A run that fails or is
// killed leaves a repository whose snapshots are all complete, and the
// next run continues from the last changes written. It takes the
// repository's lock ([ErrLocked] while another run holds it).
func (r *Repo) Backup(ctx context.Context, src Source) (Summary, error) {
	start := r.opts.Now()
	lctx, lk, err := r.lock(ctx, "backup")
	if err != nil {
		return Summary{}, err
	}
	run, err := r.newRunner(lctx, src)
	if run != nil {
		defer run.pack.wait()
	}
	if err == nil {
		err = run.catchUp(lctx)
	}
	if err == nil && (run.dirty || !run.sum.Full) {
		err = run.snapshot(lctx)
	}
	if lerr := lk.unlock(); err == nil && lerr != nil {
		err = lerr
	}
	run.sum.Took = r.opts.Now().Sub(start)
	if err != nil {
		return run.sum, err
	}
	r.log.Info("backup: run done", "full", run.sum.Full, "from", run.sum.From, "to", run.sum.To, "changes", run.sum.Changes,
		"new_bodies", run.sum.NewBodies, "stored_bytes", run.sum.StoredBytes, "lost", run.sum.Lost, "snapshot", run.sum.Snapshot, "took", run.sum.Took)
	return run.sum, nil
}

// Follow backs src up continuously until ctx is done: it reads the
// journal as changes become durable, stores new bodies at once (so that a
// message delivered and deleted between two snapshots is kept), writes
// what it read every Options.FlushEvery and a snapshot every
// Options.SnapshotEvery. On cancellation it reads what the journal holds
// by then, writes it and returns nil: after a clean stop, the repository
// holds every change the store made durable before it. It holds the
// repository's lock throughout.
func (r *Repo) Follow(ctx context.Context, src Source) error {
	lctx, lk, err := r.lock(ctx, "follow")
	if err != nil {
		return err
	}
	err = r.follow(lctx, src)
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = nil
	}
	if lerr := lk.unlock(); err == nil && lerr != nil {
		err = lerr
	}
	return err
}

func (r *Repo) follow(ctx context.Context, src Source) error {
	run, err := r.newRunner(ctx, src)
	if run != nil {
		defer run.pack.wait()
	}
	if err == nil {
		err = run.followLoop(ctx)
	}
	if ctx.Err() != nil && run != nil && run.st != nil {
		// Stopped: read what the journal holds by now (the stop may come
		// before the loop has read the last changes: a store lost after
		// a clean stop must not lose them from its backup too), and write
		// it (every change applied has its bodies read), so that nothing
		// waits for the next start.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if cerr := run.catchUp(fctx); cerr != nil {
			r.log.Warn("backup: reading the journal before stopping; writing what was read", "pos", run.st.pos, "err", cerr)
		}
		if ferr := run.flush(fctx); ferr != nil {
			return fmt.Errorf("backup: writing what was read before stopping: %w", ferr)
		}
		return nil
	}
	return err
}

func (run *runner) followLoop(ctx context.Context) error {
	r := run.r
	if err := run.catchUp(ctx); err != nil {
		return err
	}
	if run.dirty || !run.sum.Full {
		if err := run.snapshot(ctx); err != nil {
			return err
		}
	}
	lastSnap := r.opts.Now()
	for {
		// Wait for changes, but no longer than the next flush or snapshot.
		wait := r.opts.SnapshotEvery - r.opts.Now().Sub(lastSnap)
		if len(run.pending) > 0 || run.pack.len() > 0 {
			wait = min(wait, r.opts.FlushEvery-r.opts.Now().Sub(run.lastSeg))
		}
		if wait > 0 {
			wctx, cancel := context.WithTimeout(ctx, wait)
			_, werr := run.src.Wait(wctx, run.st.pos)
			cancel()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if werr != nil && !errors.Is(werr, context.DeadlineExceeded) {
				return fmt.Errorf("backup: waiting for changes: %w", werr)
			}
		}
		if err := run.catchUp(ctx); err != nil {
			return err
		}
		now := r.opts.Now()
		if now.Sub(lastSnap) >= r.opts.SnapshotEvery {
			if err := run.snapshot(ctx); err != nil {
				return err
			}
			lastSnap = now
		} else if (len(run.pending) > 0 || run.pack.len() > 0) && now.Sub(run.lastSeg) >= r.opts.FlushEvery {
			if err := run.flush(ctx); err != nil {
				return err
			}
		}
	}
}

// newRunner loads the newest state and, when there is none or the journal
// cannot continue it, reads the store's whole state.
func (r *Repo) newRunner(ctx context.Context, src Source) (*runner, error) {
	run := &runner{r: r, src: src, lastSeg: r.opts.Now()}
	run.pack.r = r
	if h, ok := src.(Historian); ok {
		run.history = h.HistoryName()
	}
	v, err := r.load(ctx, time.Time{})
	if err != nil {
		return run, err
	}
	reason := ""
	switch {
	case v == nil:
		reason = "first run"
	case v.st.history != run.history:
		reason = fmt.Sprintf("the store's history is %q, the backup followed %q", run.history, v.st.history)
	case src.OldestPosition() > v.st.pos+1:
		reason = fmt.Sprintf("the store's journal starts at %d, after the backup's position %d", src.OldestPosition(), v.st.pos)
	}
	if reason == "" {
		run.st, run.lineage = v.st, v.lineage
		run.sum.From, run.sum.To = v.st.pos, v.st.pos
		return run, nil
	}
	var old *state
	if v != nil {
		old = v.st
	}
	if err := run.full(ctx, old, reason); err != nil {
		return run, err
	}
	return run, nil
}

// maxLineage returns the highest lineage in the repository.
func (r *Repo) maxLineage(ctx context.Context) (uint32, error) {
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return 0, err
	}
	segs, err := r.segments(ctx)
	if err != nil {
		return 0, err
	}
	var m uint32
	for _, s := range snaps {
		m = max(m, s.Lineage)
	}
	for _, s := range segs {
		m = max(m, s.lineage)
	}
	return m, nil
}

// full reads the store's whole state, stores the bodies the repository
// lacks and writes a snapshot that starts a new lineage. old, if not nil,
// is the state the backup had: what it holds that the store no longer
// has is recorded as deleted now.
func (run *runner) full(ctx context.Context, old *state, reason string) error {
	r := run.r
	r.log.Info("backup: reading the store's whole state", "reason", reason)
	run.sum.Full, run.sum.Reason = true, reason
	var changes []resilmail.Change
	pos, err := run.src.FullState(ctx, func(c resilmail.Change) error {
		changes = append(changes, c)
		return nil
	})
	if err != nil {
		return fmt.Errorf("backup: reading the store's state: %w", err)
	}
	st := newState()
	for i := range changes {
		st.apply(&changes[i])
	}
	st.pos, st.history = pos, run.history
	if old != nil {
		run.sum.From = old.pos
		mergeGone(old, st, unixNano(r.opts.Now()))
	}
	lin, err := r.maxLineage(ctx)
	if err != nil {
		return err
	}
	run.st, run.lineage = st, lin+1
	run.sum.To = pos
	run.sum.Changes = len(changes)
	if err := run.storeBodies(ctx, changes); err != nil {
		return err
	}
	return run.snapshot(ctx)
}

// mergeGone adds to st what old holds and st does not (a full read after
// the journal was lost): messages, mailboxes and users the store no longer
// has are recorded as deleted at now; deleted ones keep their times.
func mergeGone(old, st *state, now int64) {
	for id, ob := range old.boxes {
		nb := st.boxes[id]
		if nb == nil {
			cb := *ob
			cb.msgs = slices.Clone(ob.msgs)
			st.boxes[id] = &cb
			st.deleteBox(&cb, now)
			continue
		}
		added := false
		for _, om := range ob.msgs {
			if nm := nb.get(om.uid); nm != nil {
				nm.added = om.added
				continue
			}
			if om.deleted == 0 {
				om.deleted = now
			}
			nb.msgs = append(nb.msgs, om)
			nb.uidNext = max(nb.uidNext, om.uid+1)
			added = true
		}
		if added {
			slices.SortFunc(nb.msgs, func(a, b msgEntry) int { return int(int64(a.uid) - int64(b.uid)) })
		}
		nb.created = ob.created
	}
	for name, ou := range old.users {
		if st.users[name] == nil {
			cu := *ou
			if cu.deleted == 0 {
				cu.deleted = now
			}
			st.users[name] = &cu
		}
	}
}

// catchUp reads and stores every change the store has after the
// backup's position.
func (run *runner) catchUp(ctx context.Context) error {
	for {
		changes, err := run.src.Changes(ctx, run.st.pos, changesBatch)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if oldest := run.src.OldestPosition(); oldest > run.st.pos+1 {
				// Compacted under our feet: write what we have, then read
				// the whole state.
				if err := run.flush(ctx); err != nil {
					return err
				}
				return run.full(ctx, run.st, fmt.Sprintf("the store's journal starts at %d, after the backup's position %d", oldest, run.st.pos))
			}
			return fmt.Errorf("backup: reading the store's journal after %d: %w", run.st.pos, err)
		}
		if len(changes) == 0 {
			return nil
		}
		if changes[0].Seq != run.st.pos+1 {
			return fmt.Errorf("backup: the store's journal gave change %d after %d", changes[0].Seq, run.st.pos)
		}
		if err := run.storeBodies(ctx, changes); err != nil {
			return err
		}
		for i := range changes {
			c := &changes[i]
			run.st.apply(c)
			switch c.Kind {
			case resilmail.ChangeAppend, resilmail.ChangeRestore:
				run.sum.Appends++
			case resilmail.ChangeExpunge:
				run.sum.Expunges++
			case resilmail.ChangeFlags:
				run.sum.FlagChanges++
			default:
				run.sum.MailboxChanges++
			}
		}
		run.sum.Changes += len(changes)
		run.sum.To = run.st.pos
		run.dirty = true
		run.pending = append(run.pending, changes...)
		if len(run.pending) >= segmentMax {
			if err := run.flush(ctx); err != nil {
				return err
			}
		}
	}
}

// hasBody reports whether a change adds a message with a body.
func hasBody(c *resilmail.Change) bool {
	return c.Kind == resilmail.ChangeAppend || c.Kind == resilmail.ChangeRestore
}

// storeBodies reads, compresses, seals and packs the bodies of the appends
// among changes that the repository lacks, in parallel.
func (run *runner) storeBodies(ctx context.Context, changes []resilmail.Change) error {
	var need []resilmail.Digest
	seen := make(map[resilmail.Digest]bool)
	where := make(map[resilmail.Digest]*resilmail.Change)
	for i := range changes {
		c := &changes[i]
		if !hasBody(c) || seen[c.Digest] {
			continue
		}
		seen[c.Digest] = true
		if run.r.has(c.Digest) || run.pack.has(c.Digest) {
			run.sum.Reused++
			continue
		}
		need = append(need, c.Digest)
		where[c.Digest] = c
	}
	run.progressTotal = int64(run.sum.NewBodies + len(need))
	return run.fetch(ctx, need, func(d resilmail.Digest, err error) {
		c := where[d]
		run.sum.Lost++
		var ce *resilmail.CorruptError
		if errors.As(err, &ce) {
			run.sum.Corrupt++
			run.r.log.Error("backup: the store's copy of a body is corrupt; not backed up", "digest", d.String(), "user", c.User, "mailbox", c.Mailbox, "uid", c.UID, "err", err)
			return
		}
		run.r.log.Warn("backup: the store no longer gives a body (expunged before the backup read it?)", "digest", d.String(), "user", c.User, "mailbox", c.Mailbox, "uid", c.UID, "err", err)
	})
}

// fetch reads the bodies need from the source, in parallel, and adds them
// to the pack in order; lost is called for each body the source does not
// give.
func (run *runner) fetch(ctx context.Context, need []resilmail.Digest, lost func(resilmail.Digest, error)) error {
	r := run.r
	const window = 256
	type result struct {
		body []byte
		err  error
	}
	for len(need) > 0 {
		n := min(window, len(need))
		batch := need[:n]
		need = need[n:]
		res := make([]result, n)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(r.opts.Parallelism)
		for i, d := range batch {
			g.Go(func() error {
				b, err := run.src.Body(gctx, d)
				if err != nil {
					if gctx.Err() != nil {
						return gctx.Err()
					}
					res[i].err = err
					return nil
				}
				if resilmail.DigestOf(b) != d {
					res[i].err = &resilmail.CorruptError{Want: d, Got: resilmail.DigestOf(b), Where: "the source's body"}
					return nil
				}
				res[i].body = b
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		for i, d := range batch {
			if res[i].err != nil {
				lost(d, res[i].err)
				continue
			}
			run.pack.add(d, res[i].body)
			run.sum.NewBodies++
			run.sum.BodyBytes += int64(len(res[i].body))
			if r.opts.Progress != nil {
				r.opts.Progress(Progress{Phase: "backup", Done: int64(run.sum.NewBodies), Total: run.progressTotal, Bytes: run.sum.BodyBytes})
			}
			if run.pack.len() >= r.opts.PackSize {
				if err := run.flushPack(ctx); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// flushPack writes the open pack.
func (run *runner) flushPack(ctx context.Context) error {
	n, err := run.pack.flush(ctx)
	run.sum.StoredBytes += n
	return err
}

// flush writes the open pack and then the pending changes.
func (run *runner) flush(ctx context.Context) error {
	if err := run.flushPack(ctx); err != nil {
		return err
	}
	run.lastSeg = run.r.opts.Now()
	if len(run.pending) == 0 {
		return nil
	}
	p, err := encodeChanges(run.history, run.pending)
	if err != nil {
		return fmt.Errorf("backup: encoding changes: %w", err)
	}
	name := segmentName(run.lineage, run.pending[0].Seq, run.pending[len(run.pending)-1].Seq)
	if err := run.r.t.Put(ctx, name, run.r.c.seal(kindChanges, p, true)); err != nil {
		return fmt.Errorf("backup: writing changes: %w", err)
	}
	run.pending = run.pending[:0]
	run.r.opts.Hooks.call(run.r.opts.Hooks.AfterChanges, name)
	run.hold(ctx)
	return nil
}

// hold moves the source's retention hold to the backup's position.
func (run *runner) hold(ctx context.Context) {
	h, ok := run.src.(Holder)
	if !ok {
		return
	}
	if err := h.Hold(ctx, "backup-"+run.r.id[:12], run.st.pos); err != nil {
		run.r.log.Warn("backup: moving the store's retention hold", "pos", run.st.pos, "err", err)
	}
}

// snapshot writes what is pending, reads again the bodies of live
// messages the repository lacks, drops what retention no longer keeps and
// writes the snapshot manifest.
func (run *runner) snapshot(ctx context.Context) error {
	r := run.r
	var missing []resilmail.Digest
	seen := make(map[resilmail.Digest]bool)
	for _, b := range run.st.boxes {
		for i := range b.msgs {
			m := &b.msgs[i]
			if m.deleted == 0 && !seen[m.digest] && !r.has(m.digest) && !run.pack.has(m.digest) {
				seen[m.digest] = true
				missing = append(missing, m.digest)
			}
		}
	}
	if len(missing) > 0 {
		before := run.sum.NewBodies
		if err := run.fetch(ctx, missing, func(d resilmail.Digest, err error) {}); err != nil {
			return err
		}
		run.sum.Repaired += run.sum.NewBodies - before
	}
	if err := run.flushPack(ctx); err != nil {
		return err
	}
	now := r.opts.Now()
	run.st.expire(now.UnixNano(), r.opts.Retention)
	for _, b := range run.st.boxes {
		for i := range b.msgs {
			b.msgs[i].noBody = !r.has(b.msgs[i].digest)
		}
	}
	// The last changes and the snapshot are written at once: each is
	// complete without the other (the snapshot holds the state, the
	// changes the detail between snapshots).
	name := snapshotName(now, run.lineage, run.st.pos)
	manifest := r.c.seal(kindSnapshot, encodeManifest(run.st), true)
	var g errgroup.Group
	g.Go(func() error { return run.flush(ctx) })
	g.Go(func() error {
		if err := r.t.Put(ctx, name, manifest); err != nil {
			return fmt.Errorf("backup: writing the snapshot: %w", err)
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return err
	}
	run.sum.Snapshot = name
	run.dirty = false
	run.sum.Messages, run.sum.Deleted, _ = run.st.counts()
	run.hold(ctx)
	return nil
}

func (h *Hooks) call(fn func(string), name string) {
	if fn != nil {
		fn(name)
	}
}

// frameSize is the raw size at which a frame of bodies is closed and
// compressed: bodies are compressed together (messages share headers and
// words) in frames small enough to read one message quickly.
const frameSize = 256 << 10

// packWriter collects bodies into frames, compresses and seals each frame
// on a goroutine of its own (at most Options.Parallelism at once), and
// writes the frames as a pack and then its index.
type packWriter struct {
	r      *Repo
	frame  []byte       // the open frame's content
	open   []indexEntry // its bodies (inner, size, digest)
	frames []*pendingFrame
	raw    int // bytes of bodies in the pack
	in     map[resilmail.Digest]bool
	sem    chan struct{}
}

// pendingFrame is a closed frame being sealed.
type pendingFrame struct {
	entries []indexEntry
	done    chan struct{}
	sealed  []byte
}

// len returns the bytes of bodies in the pack being written.
func (p *packWriter) len() int { return p.raw }

func (p *packWriter) has(d resilmail.Digest) bool { return p.in[d] }

// add adds a body (checked against d by the caller).
func (p *packWriter) add(d resilmail.Digest, body []byte) {
	if p.in == nil {
		p.in = make(map[resilmail.Digest]bool)
	}
	p.open = append(p.open, indexEntry{digest: d, inner: int64(len(p.frame)), size: int64(len(body))})
	p.frame = append(p.frame, body...)
	p.raw += len(body)
	p.in[d] = true
	if len(p.frame) >= frameSize {
		p.closeFrame()
	}
}

func (p *packWriter) closeFrame() {
	if len(p.open) == 0 {
		return
	}
	if p.sem == nil {
		p.sem = make(chan struct{}, p.r.opts.Parallelism)
	}
	f := &pendingFrame{entries: p.open, done: make(chan struct{})}
	content := p.frame
	p.frames = append(p.frames, f)
	p.open, p.frame = nil, nil
	p.sem <- struct{}{}
	go func() {
		defer func() { <-p.sem; close(f.done) }()
		f.sealed = p.r.c.seal(kindBody, content, true)
	}()
}

// wait waits for the frames being sealed (so that no goroutine outlives
// a run).
func (p *packWriter) wait() {
	for _, f := range p.frames {
		<-f.done
	}
}

// flush writes the pack, then its index, and adds it to the repository's
// index. It returns the bytes written.
func (p *packWriter) flush(ctx context.Context) (int64, error) {
	p.closeFrame()
	if len(p.frames) == 0 {
		return 0, nil
	}
	p.wait()
	var buf []byte
	var entries []indexEntry
	for _, f := range p.frames {
		off := int64(len(buf))
		buf = append(buf, f.sealed...)
		for _, e := range f.entries {
			e.off, e.length = off, int64(len(f.sealed))
			entries = append(entries, e)
		}
	}
	// The pack and its index are written at once (sharing the file
	// system's journal commits); nothing refers to them before both are
	// durable, and an index whose pack is missing is skipped at Open.
	id := randomID()
	idx := p.r.c.seal(kindIndex, encodeIndex(entries), true)
	var g errgroup.Group
	g.Go(func() error {
		if err := p.r.t.Put(ctx, packsPrefix+id, buf); err != nil {
			return fmt.Errorf("backup: writing pack: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := p.r.t.Put(ctx, indexPrefix+id, idx); err != nil {
			return fmt.Errorf("backup: writing the index of pack %s: %w", id, err)
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return 0, err
	}
	p.r.mu.Lock()
	p.r.addPackLocked(&packInfo{id: id, size: int64(len(buf)), entries: entries})
	p.r.mu.Unlock()
	p.r.opts.Hooks.call(p.r.opts.Hooks.AfterPack, id)
	p.frames, p.in, p.raw = nil, nil, 0
	return int64(len(buf)), nil
}
