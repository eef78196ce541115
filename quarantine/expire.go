package quarantine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/resilmail/resilmail"
)

// ExpireStats reports what one expiry run did.
type ExpireStats struct {
	// Removed counts entries removed for age, with their metadata.
	Removed int
	// OverQuota counts recipients expired to bring their owners under quota.
	OverQuota int
	// Bodies counts body files removed.
	Bodies int
}

// expireBatch is how many entries one index transaction removes.
const expireBatch = 2000

// Expire removes the entries older than Options.MaxAge, and expires the
// oldest held entries of every recipient over its quota. The time index is
// ordered, so the cost grows with what expires, not with the store's size.
func (s *Store) Expire(ctx context.Context) (ExpireStats, error) {
	var st ExpireStats
	if s.closed.Load() {
		return st, ErrClosed
	}
	cutoff := s.now().Add(-s.opts.MaxAge)
	for {
		n, orphans, err := s.expireAgeOnce(cutoff)
		if err != nil {
			return st, err
		}
		st.Removed += n
		st.Bodies += s.removeBodies(orphans)
		if n < expireBatch {
			break
		}
		if err := ctx.Err(); err != nil {
			return st, err
		}
	}
	n, orphans, err := s.expireQuota(ctx)
	st.OverQuota += n
	st.Bodies += s.removeBodies(orphans)
	s.counters.expired.Add(uint64(st.Removed + st.OverQuota))
	if st.Removed+st.OverQuota > 0 {
		s.log.Info("quarantine: expired", "removed", st.Removed, "over_quota", st.OverQuota, "bodies", st.Bodies)
	}
	return st, err
}

// expireAgeOnce removes up to expireBatch entries older than cutoff, oldest
// first, in one transaction.
func (s *Store) expireAgeOnce(cutoff time.Time) (int, []resilmail.Digest, error) {
	var (
		n       int
		orphans []resilmail.Digest
	)
	bound := timeKey(cutoff, "") // keys of older entries sort before it
	err := s.db.Update(func(tx *bbolt.Tx) error {
		n, orphans = 0, nil
		var ids []string
		c := tx.Bucket(bTime).Cursor()
		for k, _ := c.First(); k != nil && bytes.Compare(k, bound) < 0 && len(ids) < expireBatch; k, _ = c.Next() {
			ids = append(ids, string(k[8:]))
		}
		for _, id := range ids {
			e, err := s.loadLocked(tx, id)
			if err != nil {
				if errors.Is(err, ErrNotFound) {
					continue
				}
				return err
			}
			orphan, err := s.removeLocked(tx, &e)
			if err != nil {
				return err
			}
			if !orphan.IsZero() {
				orphans = append(orphans, orphan)
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, nil, fmt.Errorf("quarantine: expire: %w", err)
	}
	return n, orphans, nil
}

// expireQuota expires the oldest held entries of each recipient over quota.
func (s *Store) expireQuota(ctx context.Context) (int, []resilmail.Digest, error) {
	var rcpts []string
	_ = s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bOverQuota).ForEach(func(k, _ []byte) error {
			rcpts = append(rcpts, string(k))
			return nil
		})
	})
	var (
		total   int
		orphans []resilmail.Digest
	)
	for _, rcpt := range rcpts {
		if ctx.Err() != nil {
			return total, orphans, ctx.Err()
		}
		now := s.now()
		err := s.db.Update(func(tx *bbolt.Tx) error {
			prefix := append([]byte(rcpt), 0)
			c := tx.Bucket(bRcpt).Cursor()
			// The oldest entries of the recipient come first in its range.
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
				n, size := decodePair(tx.Bucket(bUsage).Get([]byte(rcpt)))
				if !s.overQuota(n, size) {
					break
				}
				id := string(k[len(prefix)+8:])
				e, err := s.loadLocked(tx, id)
				if err != nil {
					continue
				}
				i := slices.IndexFunc(e.Recipients, func(r RecipientState) bool { return strings.EqualFold(r.Addr, rcpt) })
				if i < 0 || e.Recipients[i].Status != Held {
					continue
				}
				if s.isLocked(id) {
					continue // an action is under way; the next run sees it
				}
				orphan, err := s.setStatusLocked(tx, &e, i, Expired, "", now)
				if err != nil {
					return err
				}
				if !orphan.IsZero() {
					orphans = append(orphans, orphan)
				}
				if err := s.saveLocked(tx, &e); err != nil {
					return err
				}
				if err := s.auditLocked(tx, AuditRecord{Time: now, Action: "expire", Entry: id, Rcpts: []string{e.Recipients[i].Addr}, Detail: "over quota"}); err != nil {
					return err
				}
				total++
			}
			return tx.Bucket(bOverQuota).Delete([]byte(rcpt))
		})
		if err != nil {
			return total, orphans, fmt.Errorf("quarantine: expire quota of %s: %w", rcpt, err)
		}
	}
	return total, orphans, nil
}

// isLocked reports whether an action holds entry id's lock.
func (s *Store) isLocked(id string) bool {
	s.locksMu.Lock()
	defer s.locksMu.Unlock()
	return s.locks[id] != nil
}

func (s *Store) removeBodies(ds []resilmail.Digest) int {
	for _, d := range ds {
		s.removeBody(d)
	}
	return len(ds)
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Run expires entries every Options.ExpireEvery and finishes releases left
// in flight (at once on start, after a crash, and then on every round). On
// start it also removes the body files a crash left behind: written, but
// never referenced because the index transaction did not commit. It
// returns nil when ctx is cancelled.
func (s *Store) Run(ctx context.Context) error {
	t := time.NewTicker(s.opts.ExpireEvery)
	defer t.Stop()
	if n, err := s.sweepOrphans(ctx); err != nil && ctx.Err() == nil {
		s.log.Error("quarantine: sweeping unreferenced body files failed", "err", err)
	} else if n > 0 {
		s.log.Warn("quarantine: removed body files no entry refers to (left by a crash)", "files", n)
	}
	for {
		s.retryReleases(ctx)
		if _, err := s.Expire(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("quarantine: expiry failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// sweepOrphans removes, folder by folder, the body files the index does not
// reference and temporary files left by a crash. A folder is swept under
// bodyMu held exclusively, so no body being stored is taken for an orphan.
func (s *Store) sweepOrphans(ctx context.Context) (int, error) {
	root := filepath.Join(s.dir, "bodies")
	dirs, err := os.ReadDir(root)
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		n, err := s.sweepFolder(filepath.Join(root, d.Name()))
		removed += n
		if err != nil {
			return removed, err
		}
	}
	return removed, nil
}

func (s *Store) sweepFolder(dir string) (int, error) {
	s.bodyMu.Lock()
	defer s.bodyMu.Unlock()
	files, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var orphans []string
	err = s.db.View(func(tx *bbolt.Tx) error {
		refs := tx.Bucket(bBodies)
		for _, f := range files {
			name := f.Name()
			if strings.HasPrefix(name, ".tmp-") {
				orphans = append(orphans, name)
				continue
			}
			d, err := resilmail.ParseDigest(name)
			if err != nil {
				continue // not ours: left alone
			}
			if refs.Get(d[:]) == nil {
				orphans = append(orphans, name)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, name := range orphans {
		if err := removeIfExists(filepath.Join(dir, name)); err != nil {
			return 0, err
		}
	}
	return len(orphans), nil
}
