package backup

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
)

// VerifyOptions say how much Verify reads.
type VerifyOptions struct {
	// Part and Of, when Of is above 1, read the bodies of only the packs
	// whose rank (by id) is Part modulo Of: running parts 0 to Of-1 on
	// successive nights reads the whole repository once in Of nights.
	// Everything else (manifests, segments, indexes, that every body a
	// snapshot needs is stored) is checked on every run.
	Part, Of int
}

// VerifyReport reports what Verify checked and found.
type VerifyReport struct {
	Snapshots int   `json:"snapshots"`
	Segments  int   `json:"segments"`
	Packs     int   `json:"packs"`
	PacksRead int   `json:"packs_read"`
	Bodies    int   `json:"bodies"` // bodies read and checked
	BytesRead int64 `json:"bytes_read"`
	// Problems lists what is wrong, each naming the blob (and the message)
	// affected; empty when the repository verifies.
	Problems []string      `json:"problems,omitempty"`
	Took     time.Duration `json:"took"`
}

// maxProblems bounds the problems a report lists one by one.
const maxProblems = 100

func (v *VerifyReport) problem(format string, args ...any) {
	if len(v.Problems) < maxProblems {
		v.Problems = append(v.Problems, fmt.Sprintf(format, args...))
	} else if len(v.Problems) == maxProblems {
		v.Problems = append(v.Problems, "... and more")
	}
}

// Verify checks the repository: every snapshot manifest, change segment and
// pack index decodes; every body that a snapshot or a segment refers to
// is stored; and every body of the packs it reads (all, or a part; see
// [VerifyOptions]) opens and hashes to its digest. It returns the report
// and, when it found problems, an error wrapping [ErrCorrupt]. It takes no
// lock and changes nothing.
func (r *Repo) Verify(ctx context.Context, opts VerifyOptions) (VerifyReport, error) {
	start := r.opts.Now()
	var rep VerifyReport
	if opts.Of > 1 && (opts.Part < 0 || opts.Part >= opts.Of) {
		return rep, fmt.Errorf("backup: verify part %d of %d", opts.Part, opts.Of)
	}
	// Indexes as they are now.
	idx, err := r.t.List(ctx, indexPrefix)
	if err != nil {
		return rep, err
	}
	packList, err := r.t.List(ctx, packsPrefix)
	if err != nil {
		return rep, err
	}
	sizes := map[string]int64{}
	for _, p := range packList {
		sizes[strings.TrimPrefix(p.Name, packsPrefix)] = p.Size
	}
	stored := map[resilmail.Digest]bool{}
	var packs []*packInfo
	for _, bi := range idx {
		id := strings.TrimPrefix(bi.Name, indexPrefix)
		entries, err := r.readIndex(ctx, id)
		if err != nil {
			rep.problem("%v", err)
			continue
		}
		size, ok := sizes[id]
		if !ok {
			// A run killed between writing the index and the pack (they
			// are written at once) leaves this; nothing refers to its
			// bodies unless a snapshot or segment below says so, and
			// Prune removes it.
			r.log.Warn("backup: verify: an index without its pack", "pack", id, "bodies", len(entries))
			continue
		}
		end := int64(0)
		for _, e := range entries {
			end = max(end, e.off+e.length)
		}
		if end > size {
			rep.problem("pack %s has %d bytes, its index needs %d", id, size, end)
			continue
		}
		for _, e := range entries {
			stored[e.digest] = true
		}
		packs = append(packs, &packInfo{id: id, size: size, entries: entries})
	}
	rep.Packs = len(packs)
	// Every snapshot and segment, and the bodies they need.
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return rep, err
	}
	for _, s := range snaps {
		st, err := r.readSnapshot(ctx, s.Name)
		if err != nil {
			rep.problem("%v", err)
			continue
		}
		rep.Snapshots++
		for _, b := range st.sortedBoxes() {
			for i := range b.msgs {
				m := &b.msgs[i]
				if !m.noBody && !stored[m.digest] {
					rep.problem("snapshot %s: the body %s of %s/%s UID %d is missing", s.Name, m.digest, b.user, b.name, m.uid)
				}
			}
		}
	}
	segs, err := r.segments(ctx)
	if err != nil {
		return rep, err
	}
	for _, sg := range segs {
		_, changes, err := r.readSegment(ctx, sg.name)
		if err != nil {
			rep.problem("%v", err)
			continue
		}
		rep.Segments++
		if len(changes) == 0 || changes[0].Seq != sg.first || changes[len(changes)-1].Seq != sg.last {
			rep.problem("%s: its changes do not match its name", sg.name)
		}
		for i := range changes {
			c := &changes[i]
			if hasBody(c) && !stored[c.Digest] {
				// A body the store could not give (Summary.Lost) is
				// missing by design; it is noted, not a problem, unless a
				// snapshot needs it (checked above).
				r.log.Debug("backup: verify: a segment's append has no stored body", "segment", sg.name, "user", c.User, "mailbox", c.Mailbox, "uid", c.UID)
			}
		}
	}
	// Bodies.
	slices.SortFunc(packs, func(a, b *packInfo) int { return strings.Compare(a.id, b.id) })
	var total int64
	for i := range packs {
		if opts.Of <= 1 || i%opts.Of == opts.Part {
			total++
		}
	}
	for i, p := range packs {
		if opts.Of > 1 && i%opts.Of != opts.Part {
			continue
		}
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		b, err := r.t.Get(ctx, packsPrefix+p.id, 0, -1)
		if err != nil {
			rep.problem("pack %s: %v", p.id, err)
			continue
		}
		rep.PacksRead++
		rep.BytesRead += int64(len(b))
		frames := map[int64][]byte{}
		bad := map[int64]bool{}
		for _, e := range p.entries {
			if bad[e.off] {
				continue
			}
			frame, ok := frames[e.off]
			if !ok {
				frame, err = r.openFrame(p.id, e.off, b[e.off:e.off+e.length])
				if err != nil {
					bad[e.off] = true
					rep.problem("%v", err)
					continue
				}
				frames[e.off] = frame
			}
			if _, err := r.bodyOf(frame, e, p.id); err != nil {
				rep.problem("%v", err)
				continue
			}
			rep.Bodies++
		}
		r.progress("verify", int64(rep.PacksRead), total, rep.BytesRead)
	}
	rep.Took = r.opts.Now().Sub(start)
	if len(rep.Problems) > 0 {
		r.log.Error("backup: verify found problems", "problems", len(rep.Problems), "first", rep.Problems[0])
		return rep, fmt.Errorf("%w: %d problems, the first: %s", ErrCorrupt, len(rep.Problems), rep.Problems[0])
	}
	r.log.Info("backup: verify done", "snapshots", rep.Snapshots, "segments", rep.Segments, "packs_read", rep.PacksRead, "bodies", rep.Bodies, "took", rep.Took)
	return rep, nil
}
