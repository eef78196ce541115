package quarantine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/bbolt"

	"github.com/resilmail/resilmail"
)

// Result reports what an action did.
type Result struct {
	// Entry is the entry after the action, as the caller may see it.
	Entry Entry `json:"entry"`
	// Changed lists the recipients whose status the action changed; an
	// empty list means there was nothing to do (already released, say).
	Changed []string `json:"changed"`
}

// ErrNoDeliverer is returned by Release when the store has no Deliverer.
var ErrNoDeliverer = errors.New("quarantine: no Deliverer to release through")

// Release re-injects entry id, unchanged, to the recipients rcpts (nil: every
// held recipient in who's scope) through Options.Deliverer, exactly once:
//
//   - The recipients are first marked releasing, durably, under a release id
//     (the entry id and a sequence number) that becomes the envelope id.
//   - The message is then handed to the Deliverer. When it takes it they are
//     marked released. When it fails for good they are held again and the
//     error is returned. When it fails temporarily, or the process stops,
//     they stay releasing and [Store.Run] tries again with the same envelope
//     id, which a queue treats as a repeat and ignores if it already has it.
//   - A recipient that is already releasing or released is left alone, so a
//     second request, concurrent or not, delivers nothing.
//
// Recipients outside the scope are ErrForbidden, and so is a virus entry
// for a caller who is not an administrator; an entry without a body is
// ErrNoBody. Every change is written to the entry's audit trail.
func (s *Store) Release(ctx context.Context, who, id string, rcpts []string) (Result, error) {
	sc, err := s.scope(ctx, who)
	if err != nil {
		return Result{}, err
	}
	return s.releaseAs(ctx, who, sc, id, rcpts)
}

// selfReleasable reports whether a recipient may release an entry of kind
// k to themselves (by the API or a release link). A virus verdict is not
// second-guessed by the person it was aimed at: only an administrator (a
// scope with a domain or everything) releases it.
func selfReleasable(k Kind) bool { return k != KindVirus }

// releaseAs is Release on behalf of actor (a user, or a release link) with
// the scope sc already decided.
func (s *Store) releaseAs(ctx context.Context, actor string, sc Scope, id string, rcpts []string) (Result, error) {
	if s.opts.Deliverer == nil {
		return Result{}, ErrNoDeliverer
	}
	if !ValidID(id) {
		return Result{}, fmt.Errorf("%w: bad entry id %q", ErrInvalid, id)
	}
	unlock := s.lockEntry(id)
	defer unlock()

	var (
		e         Entry
		changed   []string
		releaseID string
	)
	now := s.now()
	err := s.db.Update(func(tx *bbolt.Tx) error {
		var err error
		changed, releaseID = nil, ""
		if e, err = s.loadLocked(tx, id); err != nil {
			return err
		}
		if !selfReleasable(e.Reason.Kind) && !sc.admin() {
			return fmt.Errorf("%w: %s is a %s entry; only an administrator releases it", ErrForbidden, id, e.Reason.Kind)
		}
		idx, err := targets(&e, sc, rcpts, Held)
		if err != nil {
			return err
		}
		if len(idx) == 0 {
			return nil
		}
		if !e.HasBody() {
			return fmt.Errorf("%w: %s was rejected before its body arrived", ErrNoBody, id)
		}
		releaseID = nextReleaseID(&e)
		for _, i := range idx {
			r := &e.Recipients[i]
			r.Status, r.Changed, r.By, r.ReleaseID = Releasing, now, actor, releaseID
			changed = append(changed, r.Addr)
		}
		if err := s.saveLocked(tx, &e); err != nil {
			return err
		}
		if err := tx.Bucket(bReleasing).Put([]byte(id), nil); err != nil {
			return err
		}
		return s.auditLocked(tx, AuditRecord{Time: now, Who: actor, Action: "release", Entry: id, Rcpts: changed, Detail: "envelope " + releaseID})
	})
	if err != nil {
		return Result{}, s.actionErr("release", actor, id, err)
	}
	if releaseID != "" {
		s.log.Info("quarantine: releasing", "entry", id, "who", actor, "rcpt", strings.Join(changed, ","), "msg_id", releaseID)
		e, err = s.deliverLocked(ctx, id)
	}
	v, _ := redact(e, sc)
	return Result{Entry: v, Changed: changed}, err
}

// targets returns the indexes of the recipients of e an action applies to:
// those named in rcpts (all in scope when nil) whose status is from.
// Naming a recipient the entry does not have, or one outside the scope, is
// an error; an entry with no recipient in scope is ErrNotFound.
func targets(e *Entry, sc Scope, rcpts []string, from Status) ([]int, error) {
	if _, ok := redact(*e, sc); !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, e.ID)
	}
	var idx []int
	if rcpts == nil {
		for i, r := range e.Recipients {
			if sc.Allows(r.Addr) && r.Status == from {
				idx = append(idx, i)
			}
		}
		return idx, nil
	}
	for _, a := range rcpts {
		i := slices.IndexFunc(e.Recipients, func(r RecipientState) bool { return strings.EqualFold(r.Addr, a) })
		switch {
		case i < 0:
			return nil, fmt.Errorf("%w: %s is not a recipient of %s", ErrInvalid, a, e.ID)
		case !sc.Allows(a):
			return nil, fmt.Errorf("%w: recipient %s", ErrForbidden, a)
		case e.Recipients[i].Status == from && !slices.Contains(idx, i):
			idx = append(idx, i)
		}
	}
	return idx, nil
}

// nextReleaseID counts a new release of e and returns its envelope id.
func nextReleaseID(e *Entry) string {
	e.Releases++
	return fmt.Sprintf("%s.r%d", e.ID, e.Releases)
}

// deliverLocked hands every release of entry id still in flight to the
// Deliverer and records the outcome. The caller holds the entry's lock.
func (s *Store) deliverLocked(ctx context.Context, id string) (Entry, error) {
	var e Entry
	if err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		e, err = s.loadLocked(tx, id)
		return err
	}); err != nil {
		return e, err
	}
	// Group the releasing recipients by release id: one envelope each.
	byRelease := make(map[string][]int)
	var order []string
	for i, r := range e.Recipients {
		if r.Status == Releasing {
			if byRelease[r.ReleaseID] == nil {
				order = append(order, r.ReleaseID)
			}
			byRelease[r.ReleaseID] = append(byRelease[r.ReleaseID], i)
		}
	}
	if len(order) == 0 {
		return e, nil
	}
	body, err := s.readBody(e.Digest, id)
	if err != nil {
		return e, err // corrupt or unreadable: the recipients stay releasing, nothing is sent
	}
	var errs []error
	for _, rid := range order {
		env := e.Envelope
		env.ID = rid
		env.To = nil
		var addrs []string
		for _, i := range byRelease[rid] {
			env.To = append(env.To, e.Envelope.To[i])
			addrs = append(addrs, e.Recipients[i].Addr)
		}
		env.Size = int64(len(body))
		derr := s.opts.Deliverer.Deliver(ctx, env, bytes.NewReader(body))
		outcomes := resilmail.Outcomes(addrs, derr)
		e, err = s.recordOutcomes(id, rid, outcomes)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if derr != nil {
			errs = append(errs, fmt.Errorf("quarantine: release %s: %w", rid, derr))
		}
	}
	return e, errors.Join(errs...)
}

// recordOutcomes stores what the Deliverer said of release rid: delivered
// recipients are released, permanently failed ones held again, the others
// stay releasing.
func (s *Store) recordOutcomes(id, rid string, outcomes map[string]*resilmail.DeliveryError) (Entry, error) {
	var e Entry
	var orphan resilmail.Digest
	now := s.now()
	var released, failed []string
	err := s.db.Update(func(tx *bbolt.Tx) error {
		var err error
		released, failed = nil, nil
		if e, err = s.loadLocked(tx, id); err != nil {
			return err
		}
		pending := false
		var detail []string
		for i := range e.Recipients {
			r := &e.Recipients[i]
			if r.Status != Releasing {
				continue
			}
			if r.ReleaseID != rid {
				pending = true
				continue
			}
			de, ok := outcomes[r.Addr]
			switch {
			case !ok:
				pending = true
			case de == nil:
				if orphan, err = s.setStatusLocked(tx, &e, i, Released, r.By, now); err != nil {
					return err
				}
				released = append(released, r.Addr)
			case de.Permanent:
				r.Status, r.Changed, r.ReleaseID = Held, now, ""
				failed = append(failed, r.Addr)
				detail = append(detail, de.Error())
			default:
				pending = true
			}
		}
		if err := s.saveLocked(tx, &e); err != nil {
			return err
		}
		if !pending {
			if err := tx.Bucket(bReleasing).Delete([]byte(id)); err != nil {
				return err
			}
		}
		if len(released) > 0 {
			if err := s.auditLocked(tx, AuditRecord{Time: now, Action: "released", Entry: id, Rcpts: released, Detail: "envelope " + rid}); err != nil {
				return err
			}
		}
		if len(failed) > 0 {
			return s.auditLocked(tx, AuditRecord{Time: now, Action: "release-failed", Entry: id, Rcpts: failed, Detail: strings.Join(detail, "; ")})
		}
		return nil
	})
	if err != nil {
		return e, fmt.Errorf("quarantine: record release of %s: %w", id, err)
	}
	if len(released) > 0 {
		s.counters.released.Add(uint64(len(released)))
		s.log.Info("quarantine: released", "entry", id, "msg_id", rid, "rcpt", strings.Join(released, ","))
	}
	if len(failed) > 0 {
		s.log.Warn("quarantine: release refused, held again", "entry", id, "msg_id", rid, "rcpt", strings.Join(failed, ","))
	}
	s.removeBody(orphan)
	return e, nil
}

// Delete marks the held recipients rcpts of entry id (nil: every held
// recipient in who's scope) deleted. The body goes once no recipient holds
// it; the metadata stays until the entry expires.
func (s *Store) Delete(ctx context.Context, who, id string, rcpts []string) (Result, error) {
	sc, err := s.scope(ctx, who)
	if err != nil {
		return Result{}, err
	}
	if !ValidID(id) {
		return Result{}, fmt.Errorf("%w: bad entry id %q", ErrInvalid, id)
	}
	unlock := s.lockEntry(id)
	defer unlock()
	var (
		e       Entry
		changed []string
		orphan  resilmail.Digest
	)
	now := s.now()
	err = s.db.Update(func(tx *bbolt.Tx) error {
		var err error
		changed = nil
		if e, err = s.loadLocked(tx, id); err != nil {
			return err
		}
		if !selfReleasable(e.Reason.Kind) && !sc.admin() {
			return fmt.Errorf("%w: %s is a %s entry; only an administrator releases it", ErrForbidden, id, e.Reason.Kind)
		}
		idx, err := targets(&e, sc, rcpts, Held)
		if err != nil || len(idx) == 0 {
			return err
		}
		for _, i := range idx {
			o, err := s.setStatusLocked(tx, &e, i, Deleted, who, now)
			if err != nil {
				return err
			}
			if !o.IsZero() {
				orphan = o
			}
			changed = append(changed, e.Recipients[i].Addr)
		}
		if err := s.saveLocked(tx, &e); err != nil {
			return err
		}
		return s.auditLocked(tx, AuditRecord{Time: now, Who: who, Action: "delete", Entry: id, Rcpts: changed})
	})
	if err != nil {
		return Result{}, s.actionErr("delete", who, id, err)
	}
	if len(changed) > 0 {
		s.counters.deleted.Add(uint64(len(changed)))
		s.log.Info("quarantine: deleted", "entry", id, "who", who, "rcpt", strings.Join(changed, ","))
	}
	s.removeBody(orphan)
	v, _ := redact(e, sc)
	return Result{Entry: v, Changed: changed}, nil
}

// actionErr logs a failed action and returns err.
func (s *Store) actionErr(action, who, id string, err error) error {
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrForbidden) || errors.Is(err, ErrInvalid) {
		s.log.Info("quarantine: action refused", "action", action, "who", who, "entry", id, "err", err)
	} else {
		s.log.Error("quarantine: action failed", "action", action, "who", who, "entry", id, "err", err)
	}
	return err
}

// removeBody deletes the file of a body the index no longer references.
func (s *Store) removeBody(d resilmail.Digest) {
	if d.IsZero() {
		return
	}
	s.bodyMu.Lock()
	defer s.bodyMu.Unlock()
	referenced := false
	_ = s.db.View(func(tx *bbolt.Tx) error {
		referenced = tx.Bucket(bBodies).Get(d[:]) != nil
		return nil
	})
	if referenced {
		return // stored again since
	}
	if err := removeIfExists(s.bodyPath(d)); err != nil {
		s.log.Warn("quarantine: cannot remove body", "digest", d.String(), "err", err)
	}
}

// retryReleases finishes the releases left in flight by an earlier failure
// or crash. It returns the number of entries it tried.
func (s *Store) retryReleases(ctx context.Context) int {
	var ids []string
	_ = s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bReleasing).ForEach(func(k, _ []byte) error {
			ids = append(ids, string(k))
			return nil
		})
	})
	for _, id := range ids {
		if ctx.Err() != nil {
			break
		}
		unlock := s.lockEntry(id)
		_, err := s.deliverLocked(ctx, id)
		unlock()
		if err != nil {
			s.log.Warn("quarantine: release still pending", "entry", id, "err", err)
		}
	}
	return len(ids)
}
