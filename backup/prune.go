package backup

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
)

// PruneSummary reports what Prune removed.
type PruneSummary struct {
	SnapshotsKept    int           `json:"snapshots_kept"`
	SnapshotsRemoved int           `json:"snapshots_removed"`
	SegmentsRemoved  int           `json:"segments_removed"`
	PacksRemoved     int           `json:"packs_removed"`
	PacksRewritten   int           `json:"packs_rewritten"`
	BodiesRemoved    int           `json:"bodies_removed"`
	BytesFreed       int64         `json:"bytes_freed"`
	Took             time.Duration `json:"took"`
}

// repackThreshold is the share of a pack's bytes that must be unneeded
// before Prune rewrites it (below it the pack is kept as it is).
const repackThreshold = 0.3

// Prune removes what retention no longer keeps: snapshots beyond the
// newest Options.KeepSnapshots, the
// change segments only they needed, and the bodies no kept snapshot or
// segment refers to (a pack holding only such bodies is deleted, one
// where they take more than 30% of the bytes is rewritten without them).
// Deleted messages themselves leave the snapshots written more than
// Options.Retention after their deletion.
//
// Prune is safe to kill at any instant: it removes snapshots first, then
// the segments and bodies only they needed; it writes a rewritten pack and
// its index before it deletes the old index and then the old pack; so
// every kept snapshot always finds what it refers to, and what a killed
// Prune left is removed by the next. It takes the repository's lock.
func (r *Repo) Prune(ctx context.Context) (PruneSummary, error) {
	start := r.opts.Now()
	lctx, lk, err := r.lock(ctx, "prune")
	if err != nil {
		return PruneSummary{}, err
	}
	sum, err := r.prune(lctx)
	if lerr := lk.unlock(); err == nil && lerr != nil {
		err = lerr
	}
	sum.Took = r.opts.Now().Sub(start)
	if err == nil {
		r.log.Info("backup: prune done", "snapshots_removed", sum.SnapshotsRemoved, "segments_removed", sum.SegmentsRemoved,
			"packs_removed", sum.PacksRemoved, "packs_rewritten", sum.PacksRewritten, "bytes_freed", sum.BytesFreed, "took", sum.Took)
	}
	return sum, err
}

func (r *Repo) deleteBlob(ctx context.Context, name string) error {
	r.opts.Hooks.call(r.opts.Hooks.BeforeDelete, name)
	if err := r.t.Delete(ctx, name); err != nil {
		return fmt.Errorf("backup: prune: %w", err)
	}
	return nil
}

func (r *Repo) prune(ctx context.Context) (PruneSummary, error) {
	var sum PruneSummary
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return sum, err
	}
	var keep, drop []Snapshot
	for i, s := range snaps {
		if i >= len(snaps)-r.opts.KeepSnapshots {
			keep = append(keep, s)
		} else {
			drop = append(drop, s)
		}
	}
	sum.SnapshotsKept = len(keep)
	// The oldest kept position of each lineage: segments ending at or
	// before it are not needed.
	oldest := map[uint32]uint64{}
	for _, s := range keep {
		if p, ok := oldest[s.Lineage]; !ok || s.Position < p {
			oldest[s.Lineage] = s.Position
		}
	}
	segs, err := r.segments(ctx)
	if err != nil {
		return sum, err
	}
	var keepSegs, dropSegs []segment
	for _, sg := range segs {
		if p, ok := oldest[sg.lineage]; ok && sg.last > p {
			keepSegs = append(keepSegs, sg)
		} else {
			dropSegs = append(dropSegs, sg)
		}
	}
	// What the kept snapshots and segments need.
	live := make(map[resilmail.Digest]bool)
	for _, s := range keep {
		st, err := r.readSnapshot(ctx, s.Name)
		if err != nil {
			return sum, fmt.Errorf("backup: prune needs every kept snapshot: %w", err)
		}
		st.digests(func(d resilmail.Digest) { live[d] = true })
	}
	for _, sg := range keepSegs {
		_, changes, err := r.readSegment(ctx, sg.name)
		if err != nil {
			return sum, fmt.Errorf("backup: prune needs every kept change segment: %w", err)
		}
		for i := range changes {
			if hasBody(&changes[i]) {
				live[changes[i].Digest] = true
			}
		}
	}
	r.progress("prune", 0, int64(len(drop)+len(dropSegs)), 0)
	// Snapshots first, then what only they needed.
	for _, s := range drop {
		if err := r.deleteBlob(ctx, s.Name); err != nil {
			return sum, err
		}
		sum.SnapshotsRemoved++
		sum.BytesFreed += s.Size
	}
	for _, sg := range dropSegs {
		if err := r.deleteBlob(ctx, sg.name); err != nil {
			return sum, err
		}
		sum.SegmentsRemoved++
		sum.BytesFreed += sg.size
	}
	if err := r.prunePacks(ctx, live, &sum); err != nil {
		return sum, err
	}
	if f, ok := r.t.(*Folder); ok {
		if n, err := f.Clean(); err != nil {
			r.log.Warn("backup: removing temporary files", "err", err)
		} else if n > 0 {
			r.log.Info("backup: removed temporary files a crash left", "files", n)
		}
	}
	return sum, nil
}

// prunePacks deletes or rewrites the packs that hold unneeded bodies, and
// deletes packs without an index and indexes without a pack (written by a
// run killed between the two).
func (r *Repo) prunePacks(ctx context.Context, live map[resilmail.Digest]bool, sum *PruneSummary) error {
	list, err := r.t.List(ctx, packsPrefix)
	if err != nil {
		return err
	}
	r.mu.Lock()
	packs := make([]*packInfo, 0, len(r.packs))
	for _, p := range r.packs {
		packs = append(packs, p)
	}
	known := make(map[string]bool, len(r.packs))
	for id := range r.packs {
		known[id] = true
	}
	r.mu.Unlock()
	present := make(map[string]bool, len(list))
	for _, bi := range list {
		present[strings.TrimPrefix(bi.Name, packsPrefix)] = true
	}
	// Indexes whose pack is missing (a run killed between the two).
	idx, err := r.t.List(ctx, indexPrefix)
	if err != nil {
		return err
	}
	for _, bi := range idx {
		if !present[strings.TrimPrefix(bi.Name, indexPrefix)] {
			if err := r.deleteBlob(ctx, bi.Name); err != nil {
				return err
			}
		}
	}
	for _, bi := range list {
		if id := strings.TrimPrefix(bi.Name, packsPrefix); !known[id] {
			if err := r.deleteBlob(ctx, bi.Name); err != nil {
				return err
			}
			sum.PacksRemoved++
			sum.BytesFreed += bi.Size
		}
	}
	slices.SortFunc(packs, func(a, b *packInfo) int { return strings.Compare(a.id, b.id) })
	seen := make(map[resilmail.Digest]bool) // a body kept in one pack is not kept in another
	for _, p := range packs {
		var keepEntries []indexEntry
		var deadBytes, rawBytes int64
		for _, e := range p.entries {
			rawBytes += e.size
			if live[e.digest] && !seen[e.digest] {
				keepEntries = append(keepEntries, e)
				seen[e.digest] = true
			} else {
				deadBytes += e.size
			}
		}
		switch {
		case len(keepEntries) == len(p.entries):
			continue
		case len(keepEntries) == 0:
			if err := r.dropPack(ctx, p); err != nil {
				return err
			}
			sum.PacksRemoved++
			sum.BodiesRemoved += len(p.entries)
			sum.BytesFreed += p.size
		case float64(deadBytes) > repackThreshold*float64(rawBytes):
			n, err := r.repack(ctx, p, keepEntries)
			if err != nil {
				return err
			}
			sum.PacksRewritten++
			sum.BodiesRemoved += len(p.entries) - len(keepEntries)
			sum.BytesFreed += p.size - n
		}
	}
	return nil
}

// dropPack deletes a pack's index, then the pack.
func (r *Repo) dropPack(ctx context.Context, p *packInfo) error {
	r.mu.Lock()
	delete(r.packs, p.id)
	r.rebuildIndexLocked()
	r.mu.Unlock()
	if err := r.deleteBlob(ctx, indexPrefix+p.id); err != nil {
		return err
	}
	return r.deleteBlob(ctx, packsPrefix+p.id)
}

// repack writes the kept bodies of p into a new pack, its index, and only
// then deletes p. It returns the size of the new pack.
func (r *Repo) repack(ctx context.Context, p *packInfo, keep []indexEntry) (int64, error) {
	old, err := r.t.Get(ctx, packsPrefix+p.id, 0, -1)
	if err != nil {
		return 0, fmt.Errorf("backup: prune: reading pack %s: %w", p.id, err)
	}
	w := packWriter{r: r}
	frames := map[int64][]byte{}
	for _, e := range keep {
		frame, ok := frames[e.off]
		if !ok {
			if e.off < 0 || e.length < 0 || e.off+e.length > int64(len(old)) {
				return 0, fmt.Errorf("%w: pack %s is shorter than its index says", ErrCorrupt, p.id)
			}
			if frame, err = r.openFrame(p.id, e.off, old[e.off:e.off+e.length]); err != nil {
				return 0, fmt.Errorf("backup: prune: %w", err)
			}
			frames[e.off] = frame
		}
		b, err := r.bodyOf(frame, e, p.id)
		if err != nil {
			return 0, fmt.Errorf("backup: prune: %w", err)
		}
		w.add(e.digest, b)
	}
	n, err := w.flush(ctx)
	if err != nil {
		return 0, err
	}
	return n, r.dropPack(ctx, p)
}
