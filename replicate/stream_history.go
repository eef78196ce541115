package replicate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/bearer"
)

// How a replica and a primary agree on where the replica resumes, across
// primaries: the replica says the last position it holds, as (history,
// epoch, seq) of the journal it followed (or of its own journal if it was
// a primary itself); the primary answers with the stream when its journal
// holds that position with that epoch, or with a [Divergence] that says
// up to where their histories agree and where the replica resumes. The
// rules are raft's (term, index) check with Kafka's leader-epoch table:
//
//   - the primary's own history: the replica agrees with it up to the end
//     of the replica's epoch in the primary's epoch table; changes after
//     that came from another writer of the same history (a copied
//     folder): orphans;
//   - a history the primary continued (it was promoted after applying
//     that history up to position Until): a replica at Until resumes
//     without a comparison after the primary's change at the promotion;
//     one beyond Until holds orphans, one before it a comparison;
//   - another history: a comparison (full sync), nothing known to be
//     orphaned;
//   - a replica that has seen a higher epoch than the primary's: the
//     primary is fenced and demotes itself.

// A HistorySource is a Source that knows the history of its journal:
// replicate/store's Store is one. A [Primary] of a HistorySource checks
// every resuming replica's position against it.
type HistorySource interface {
	Source
	// History is the id of the source's journal.
	History() HistoryID
	// Epochs is the epoch-start table of the journal, ascending.
	Epochs() []EpochStart
	// Predecessors are the histories the journal continued.
	Predecessors() []Predecessor
}

// A HistoryTarget is a Target that records which history its upstream
// positions follow and can be reset to another: replicate/store's Store is
// one. A [Replica] of a HistoryTarget tells the primary its position with
// its history and finishes a resync on its own.
type HistoryTarget interface {
	Target
	// History is the id of the target's own journal.
	History() HistoryID
	// Head is the position of the last durable change of the target's
	// own journal: where an old primary rejoining as a replica stands.
	Head() Position
	// UpstreamHistory is the history the upstream positions belong to
	// (zero if none recorded).
	UpstreamHistory() HistoryID
	// HasUpstreamPositions reports whether the target has applied any
	// change of a primary since its positions were last reset.
	HasUpstreamPositions() bool
	// AdoptUpstream records h as the upstream history when none is.
	AdoptUpstream(ctx context.Context, h HistoryID) error
	// ResetUpstream makes every upstream position pos of history h.
	ResetUpstream(ctx context.Context, h HistoryID, pos uint64) error
}

// A Demoter is a Source that a [Primary] makes refuse local writes,
// durably, when it learns of a higher epoch (seen) or is demoted
// ([Primary.Demote]): replicate/store's Store is one.
type Demoter interface {
	Demote(ctx context.Context, seen resilmail.Epoch) error
}

// historyHeader carries the primary's history id on every stream.
const historyHeader = "Resilmail-History"

// A Divergence is a primary's answer (409, code "diverged") to a replica
// whose position it does not hold.
type Divergence struct {
	Error string `json:"error"`
	Code  string `json:"code"`
	// History, Epoch and Position are the primary's.
	History  HistoryID       `json:"history"`
	Epoch    resilmail.Epoch `json:"epoch"`
	Position uint64          `json:"position"`
	// Claim is the replica's position as it said it.
	Claim Position `json:"claim"`
	// Known reports whether the primary knows the claim's history (its
	// own or one it continued); Agreed is then the last position of
	// that history the primary holds too: the replica's changes after it
	// are orphans.
	Known  bool   `json:"known"`
	Agreed uint64 `json:"agreed"`
	// Resume, when ResumeKnown, is the primary's position whose state
	// equals the claim's history at Agreed: a replica that holds nothing
	// after Agreed resumes after it without a comparison.
	ResumeKnown bool   `json:"resume_known"`
	Resume      uint64 `json:"resume"`
}

// divergedError carries a Divergence.
type divergedError struct{ d Divergence }

func (e *divergedError) Error() string {
	return fmt.Sprintf("replicate: the primary (history %s, position %d, epoch %d) and this replica (at %s) diverge: %s",
		e.d.History, e.d.Position, e.d.Epoch, e.d.Claim, e.d.Error)
}

func (e *divergedError) Unwrap() error { return ErrDiverged }

// claimFromQuery reads a replica's claim: history, epoch (and after, the
// seq). ok is false when the replica names no history (an older replica,
// or one that has not learned its primary's history yet).
func claimFromQuery(q url.Values, after uint64) (Position, bool, error) {
	hs := q.Get("history")
	if hs == "" {
		return Position{}, false, nil
	}
	h, err := ParseHistoryID(hs)
	if err != nil {
		return Position{}, false, err
	}
	e, err := strconv.ParseUint(q.Get("epoch"), 10, 64)
	if err != nil {
		return Position{}, false, fmt.Errorf("parameter epoch: %w", err)
	}
	return Position{History: h, Epoch: resilmail.Epoch(e), Seq: after}, true, nil
}

// checkClaim decides whether the stream can resume at claim. It returns
// nil to go on, or the Divergence to answer with; fenced reports that the
// replica has seen a newer epoch than this primary's.
func checkClaim(src HistorySource, claim Position) (d *Divergence, fenced bool) {
	pos, ep, own := src.Position(), src.Epoch(), src.History()
	div := func(msg string) *Divergence {
		return &Divergence{Error: msg, Code: "diverged", History: own, Epoch: ep, Position: pos, Claim: claim}
	}
	if claim.Epoch > ep {
		return div(fmt.Sprintf("the replica has seen epoch %d, this primary has %d: it is fenced", claim.Epoch, ep)), true
	}
	if claim.Seq == 0 {
		return nil, false
	}
	if claim.History == own {
		agreed := EpochEnd(src.Epochs(), claim.Epoch, pos)
		if claim.Seq <= agreed {
			return nil, false
		}
		d := div(fmt.Sprintf("this journal holds epoch %d up to %d, the replica is at %d", claim.Epoch, agreed, claim.Seq))
		d.Known, d.Agreed, d.ResumeKnown, d.Resume = true, agreed, true, agreed
		return d, false
	}
	preds := src.Predecessors()
	for i := len(preds) - 1; i >= 0; i-- {
		p := preds[i]
		if p.History != claim.History {
			continue
		}
		d := div(fmt.Sprintf("this primary continued history %s from its position %d (epoch %d) at its own %d", p.History, p.Until, p.Epoch, p.Seq))
		d.Known, d.Agreed = true, min(claim.Seq, p.Until)
		if claim.Seq >= p.Until && claim.Epoch >= p.Epoch {
			d.ResumeKnown, d.Resume = true, p.Seq
		}
		return d, false
	}
	return div(fmt.Sprintf("history %s is unknown to this primary", claim.History)), false
}

// fence records that a replica has seen epoch e, higher than this
// primary's: Await fails with ErrFenced from then on, the Source is
// demoted if it can be (local writes refused, durably), and every stream
// ends with a "fenced" error frame.
func (p *Primary) fence(e resilmail.Epoch, who string) {
	mine := p.src.Epoch()
	p.mu.Lock()
	if e <= mine || e <= p.fencedBy {
		p.mu.Unlock()
		return
	}
	p.fencedBy = e
	p.mu.Unlock()
	p.log.Error("replicate: a replica has seen a newer epoch: this primary is fenced and demotes itself",
		"replica", who, "epoch", e, "mine", mine)
	if dm, ok := p.src.(Demoter); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := dm.Demote(ctx, e); err != nil {
			p.log.Error("replicate: demoting the fenced primary's store", "err", err)
		}
		cancel()
	}
	p.endStreams(fmt.Sprintf("fenced: a replica has seen epoch %d, this primary has %d", e, mine))
}

// Demote makes this primary stop: its Source refuses local writes,
// durably, if it is a [Demoter] (seen is the newest epoch known, zero if
// none), Await fails with ErrFenced, and every stream ends with a clean
// "shutting down" error frame; a replica that reconnects is refused until
// the node is promoted again (a new Primary). It is idempotent.
func (p *Primary) Demote(ctx context.Context, seen resilmail.Epoch) error {
	p.mu.Lock()
	p.fencedBy = max(p.fencedBy, seen, p.src.Epoch()+1)
	p.mu.Unlock()
	var err error
	if dm, ok := p.src.(Demoter); ok {
		err = dm.Demote(ctx, seen)
	}
	p.endStreams("shutting down: this primary was demoted")
	p.log.Warn("replicate: primary demoted", "epoch", p.src.Epoch(), "seen", seen, "err", err)
	return err
}

// endStreams ends every stream with an error frame saying why; streams
// opened later are refused with it.
func (p *Primary) endStreams(why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended != "" {
		return
	}
	p.ended = why
	close(p.stopStreams)
}

func (p *Primary) streamsEnded() bool {
	select {
	case <-p.stopStreams:
		return true
	default:
		return false
	}
}

// refuseEnded answers a request for a stream of a demoted primary.
func (p *Primary) refuseEnded(w http.ResponseWriter) bool {
	p.mu.Lock()
	why := p.ended
	p.mu.Unlock()
	if why == "" {
		return false
	}
	writeError(w, http.StatusServiceUnavailable, "fenced", why)
	return true
}

// A claimKind says what a replica's claim of its position names.
type claimKind int

const (
	// claimNone: no history (a target that records none, or positions
	// recorded before histories were): the stream resumes by seq alone.
	claimNone claimKind = iota
	// claimUpstream: a position of the history the target follows.
	claimUpstream
	// claimOwn: the head of the target's own journal (a former primary,
	// or a new replica).
	claimOwn
)

// claim returns the position the replica tells the primary it holds.
func (r *Replica) claim() (Position, claimKind) {
	r.mu.Lock()
	received, ep := r.received, r.receivedEpoch
	r.mu.Unlock()
	ht, ok := r.t.(HistoryTarget)
	if !ok {
		return Position{Seq: received}, claimNone
	}
	if up := ht.UpstreamHistory(); !up.IsZero() {
		if ep == 0 {
			ep = r.t.Epoch()
		}
		return Position{History: up, Epoch: ep, Seq: received}, claimUpstream
	}
	if ht.HasUpstreamPositions() {
		return Position{Seq: received}, claimNone
	}
	return ht.Head(), claimOwn
}

// streamStatusError turns the answer to a stream request that is not a
// stream into an error; a 409 with a Divergence into a *divergedError.
func streamStatusError(resp *http.Response) error {
	if resp.StatusCode == http.StatusConflict {
		var d Divergence
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &d) == nil && d.Code == "diverged" {
			if d.Claim.Epoch > d.Epoch {
				return fmt.Errorf("%w: the primary has epoch %d, this replica has seen %d", ErrFenced, d.Epoch, d.Claim.Epoch)
			}
			return &divergedError{d: d}
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
	}
	return statusError("stream", resp)
}

// settleHistory records the primary's history once its stream accepted
// the replica's position: a target that recorded none adopts it, and a
// former primary (or a new replica) whose own head the primary accepted
// (its own history, or an empty one) follows it from there.
func (r *Replica) settleHistory(ctx context.Context, resp *http.Response, claim Position, kind claimKind) error {
	ht, ok := r.t.(HistoryTarget)
	hs := resp.Header.Get(historyHeader)
	if !ok || hs == "" || kind == claimUpstream {
		return nil
	}
	h, err := ParseHistoryID(hs)
	if err != nil {
		return fmt.Errorf("replicate: the primary's history: %w", err)
	}
	if kind == claimNone {
		return ht.AdoptUpstream(ctx, h)
	}
	if _, err := r.waitLanes(ctx); err != nil {
		return err
	}
	if err := ht.ResetUpstream(ctx, h, claim.Seq); err != nil {
		return err
	}
	return r.resyncInbox(claim.Seq, 0)
}

// resyncInbox records in the inbox that the target is in step with the
// primary's journal up to pos (of the history it now follows), and drops
// what the lanes still queue: changes of the history followed before.
func (r *Replica) resyncInbox(pos uint64, e resilmail.Epoch) error {
	r.mu.Lock()
	inbox := r.inbox
	r.mu.Unlock()
	if inbox == nil {
		return errors.New("replicate: inbox not open")
	}
	if _, err := inbox.AppendSync(uvarintRecord(recResync, pos, "")); err != nil {
		r.noteError(fmt.Errorf("inbox: %w", err), &r.stats.InboxErrors)
		return fmt.Errorf("replicate: inbox: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	dropped := 0
	for _, l := range r.lanes {
		for _, c := range l.queue {
			delete(r.unapplied, c.Seq)
		}
		dropped += len(l.queue)
		l.queue, l.last = nil, 0
	}
	clear(r.unapplied)
	clear(r.confirmed)
	r.received, r.receivedEpoch = pos, e
	r.openGateLocked()
	if dropped > 0 {
		r.log.Warn("replicate: changes of the history followed before dropped after aligning with the primary", "replica", r.opts.Name, "changes", dropped)
	}
	return nil
}

// rejoin aligns the target with a primary whose history parts from the
// replica's at d: it applies what the inbox holds, re-delivers into the
// primary the orphans (what the target holds after the point where the
// histories agree; see KeepOrphans) before anything is removed, then
// either resumes where the primary continued the replica's history (a
// replica that holds nothing beyond it) or compares with the primary and
// repairs, and resets the upstream positions to the primary's history: a
// resync that finishes on its own. When its journal no longer reaches
// back to the point where the histories agree, the orphans cannot be
// listed: the repair then holds every removal for the operator
// (RepairOptions.HoldAllRemovals), so that none is lost unseen.
func (r *Replica) rejoin(ctx context.Context, d Divergence) error {
	ht, ok := r.t.(HistoryTarget)
	if !ok {
		return errors.New("replicate: the target records no history and cannot rejoin")
	}
	start := time.Now()
	r.log.Warn("replicate: this replica's history parts from the primary's; aligning", "replica", r.opts.Name,
		"claim", d.Claim.String(), "primary_history", d.History.String(), "primary_position", d.Position,
		"known", d.Known, "agreed", d.Agreed, "resume_known", d.ResumeKnown, "resume", d.Resume, "why", d.Error)
	held, err := r.waitLanes(ctx)
	if err != nil {
		return err
	}
	orphansKept := false // an unknown history: nothing can be told an orphan; removals are held as usual
	unlisted := false    // orphans exist that the journal can no longer list: every removal is held
	if d.Known && d.Claim.Seq > d.Agreed {
		os, ok1 := r.t.(OrphanSource)
		br, ok2 := r.t.(BodyReader)
		if !ok1 || !ok2 {
			orphansKept = false
		} else {
			reason := fmt.Sprintf("acknowledged by a node of history %s after position %d, which its new primary (history %s) never received",
				d.Claim.History, d.Agreed, d.History)
			list, err := os.Orphans(ctx, d.Claim.History, d.Agreed, reason)
			switch {
			case errors.Is(err, ErrTooFarBehind):
				r.log.Error("replicate: the journal no longer tells which messages are orphans; the repair holds every removal for the operator (RepairOptions.HoldAllRemovals)",
					"replica", r.opts.Name, "err", err)
				orphansKept, unlisted = false, true
			case err != nil:
				return fmt.Errorf("replicate: listing orphans: %w", err)
			default:
				kept, kerr := KeepOrphans(ctx, list, br, RemoteOrphanSink(r.base, r.authClient(), r.opts.Name), r.opts.OrphanMailbox, r.log)
				if err := r.recordOrphans(kept); err != nil {
					return err
				}
				if kerr != nil {
					return kerr
				}
				orphansKept = true
				r.log.Warn("replicate: orphans re-delivered into the primary", "replica", r.opts.Name, "orphans", len(kept))
			}
		}
	} else if d.Known {
		orphansKept = true
	}
	// The UIDs and mod-sequences this node gave are never given again by
	// the primary.
	if inv, ok := r.t.(Inventory); ok {
		hws, err := highWaters(ctx, inv)
		if err != nil {
			return fmt.Errorf("replicate: reading the replica's mailboxes: %w", err)
		}
		if len(hws) > 0 {
			if _, err := r.postHighWaters(ctx, hws); err != nil {
				return err
			}
		}
	}
	var (
		resume uint64
		// resumeEpoch is the epoch claimed at resume: zero (the
		// target's) where the primary continued this replica's history,
		// else the primary's, which may be above the target's (a node
		// fenced at its own epoch when its lease was lost): claimed with
		// the target's, a position past the promotion would be refused,
		// and the replica would compare and repair again, for ever.
		resumeEpoch resilmail.Epoch
	)
	if d.ResumeKnown && d.Claim.Seq == d.Agreed && len(held) == 0 {
		resume = d.Resume
	} else {
		rt, ok := r.canRepair()
		if !ok {
			return errors.New("replicate: the target cannot be compared and repaired (it is no RepairTarget)")
		}
		if resume, resumeEpoch, err = r.primaryPosition(ctx); err != nil {
			return err
		}
		var ro RepairOptions
		if r.opts.Repair != nil {
			ro = *r.opts.Repair
		}
		ro.HoldAllRemovals = ro.HoldAllRemovals || unlisted
		held, err := r.repairUsersWith(ctx, rt, nil, &ro)
		if err != nil {
			return err
		}
		if len(held) > 0 && orphansKept {
			// What only this node holds is kept on the primary by now
			// (its orphans) or was removed there after the histories
			// parted: the removals the repair held are confirmed.
			r.log.Warn("replicate: the orphans are kept on the primary; confirming the removals the repair held", "replica", r.opts.Name,
				"removals", len(held))
			ro.Confirmed = append(ro.Confirmed, held...)
			if _, err := r.repairUsersWith(ctx, rt, nil, &ro); err != nil {
				return err
			}
		}
	}
	if err := ht.ResetUpstream(ctx, d.History, resume); err != nil {
		return err
	}
	if err := r.resyncInbox(resume, resumeEpoch); err != nil {
		return err
	}
	r.mu.Lock()
	r.stats.Rejoins++
	r.mu.Unlock()
	r.log.Warn("replicate: aligned with the primary's history", "replica", r.opts.Name, "history", d.History.String(),
		"resume_after", resume, "took", time.Since(start))
	return nil
}

// authClient returns an HTTP client that carries the stream's
// credentials.
func (r *Replica) authClient() *http.Client {
	c := *r.client
	c.Timeout = time.Minute
	if len(r.opts.Secret) > 0 {
		base := c.Transport
		if base == nil {
			base = http.DefaultTransport
		}
		c.Transport = authTransport{base: base, header: bearer.Header(r.token)}
	}
	return &c
}

func (r *Replica) isPromoted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.promoted
}
