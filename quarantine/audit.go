package quarantine

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// An AuditRecord is one line of an entry's audit trail: who did what to
// which recipients, and when. Who is empty for the store's own actions
// (expiry, the outcome of a release).
type AuditRecord struct {
	Time   time.Time `json:"time"`
	Who    string    `json:"who,omitempty"`
	Action string    `json:"action"` // release, released, release-failed, delete, expire
	Entry  string    `json:"entry"`
	Rcpts  []string  `json:"rcpts,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

func (s *Store) auditLocked(tx *bbolt.Tx, r AuditRecord) error {
	b := tx.Bucket(bAudit)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	k := append([]byte(r.Entry), 0)
	k = binary.BigEndian.AppendUint64(k, seq)
	return b.Put(k, v)
}

// Audit returns the audit trail of entry id, oldest first, if who may see
// the entry. Records about recipients outside who's scope are left out.
func (s *Store) Audit(ctx context.Context, who, id string) ([]AuditRecord, error) {
	sc, err := s.scope(ctx, who)
	if err != nil {
		return nil, err
	}
	if _, err := s.get(sc, id); err != nil {
		return nil, err
	}
	var out []AuditRecord
	err = s.db.View(func(tx *bbolt.Tx) error {
		prefix := append([]byte(id), 0)
		c := tx.Bucket(bAudit).Cursor()
		for k, v := c.Seek(prefix); k != nil && len(k) == len(prefix)+8 && string(k[:len(prefix)]) == string(prefix); k, v = c.Next() {
			var r AuditRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("quarantine: corrupt audit record of %s: %w", id, err)
			}
			if !sc.All {
				var in []string
				for _, a := range r.Rcpts {
					if sc.Allows(a) {
						in = append(in, a)
					}
				}
				if len(in) == 0 {
					continue
				}
				r.Rcpts = in
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}
