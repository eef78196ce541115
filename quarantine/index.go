package quarantine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/resilmail/resilmail"
)

// The index (index.db, bbolt). Every listing index maps a key of
// "prefix NUL timekey" to nothing, where timekey is the entry's time (big
// endian nanoseconds, so byte order is time order) followed by its id.
// New entries land at the end of each range, which bbolt appends to
// cheaply; listings read the ranges backwards, newest first:
//
//	entries    id → entry (JSON)
//	time       timekey
//	rcpt       recipient NUL timekey   (lower case)
//	domain     domain NUL timekey      (each recipient domain once)
//	sender     sender NUL timekey      (lower case; "" for <>)
//	kind       kind NUL timekey
//	bodies     digest → reference count (uvarint) and size (uvarint)
//	usage      recipient → held entries (uvarint) and bytes (uvarint)
//	overquota  recipient → nothing: recipients to check on expiry
//	releasing  id → nothing: entries with a release in flight
//	audit      id NUL sequence → audit record (JSON)
//	meta       "version", "entries", "bodies", "body_bytes" → counters
var (
	bMeta      = []byte("meta")
	bEntries   = []byte("entries")
	bTime      = []byte("time")
	bRcpt      = []byte("rcpt")
	bDomain    = []byte("domain")
	bSender    = []byte("sender")
	bKind      = []byte("kind")
	bBodies    = []byte("bodies")
	bUsage     = []byte("usage")
	bOverQuota = []byte("overquota")
	bReleasing = []byte("releasing")
	bAudit     = []byte("audit")

	allBuckets = [][]byte{bMeta, bEntries, bTime, bRcpt, bDomain, bSender, bKind, bBodies, bUsage, bOverQuota, bReleasing, bAudit}

	kVersion   = []byte("version")
	kEntries   = []byte("entries")
	kBodies    = []byte("bodies")
	kBodyBytes = []byte("body_bytes")
)

// timeKey returns the part of an index key that orders entries by time:
// the time and the id.
func timeKey(t time.Time, id string) []byte {
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	return append(k, id...)
}

func indexKey(prefix string, tk []byte) []byte {
	k := make([]byte, 0, len(prefix)+1+len(tk))
	k = append(k, prefix...)
	k = append(k, 0)
	return append(k, tk...)
}

// indexKeys lists the keys of e in each listing bucket.
func indexKeys(e *Entry) map[string][][]byte {
	tk := timeKey(e.Time, e.ID)
	keys := map[string][][]byte{
		string(bTime):   {tk},
		string(bSender): {indexKey(strings.ToLower(e.Envelope.From), tk)},
		string(bKind):   {indexKey(string(e.Reason.Kind), tk)},
	}
	seen := make(map[string]bool)
	for _, r := range e.Recipients {
		a := strings.ToLower(r.Addr)
		if seen[a] {
			continue
		}
		seen[a] = true
		keys[string(bRcpt)] = append(keys[string(bRcpt)], indexKey(a, tk))
		d := resilmail.Domain(a)
		if !seen["@"+d] {
			seen["@"+d] = true
			keys[string(bDomain)] = append(keys[string(bDomain)], indexKey(d, tk))
		}
	}
	return keys
}

func (s *Store) loadLocked(tx *bbolt.Tx, id string) (Entry, error) {
	var e Entry
	v := tx.Bucket(bEntries).Get([]byte(id))
	if v == nil {
		return e, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err := unmarshalEntry(v, &e); err != nil {
		s.log.Error("quarantine: corrupt index record", "entry", id, "err", err)
		return e, err
	}
	return e, nil
}

func (s *Store) saveLocked(tx *bbolt.Tx, e *Entry) error {
	v, err := marshalEntry(e)
	if err != nil {
		return err
	}
	return tx.Bucket(bEntries).Put([]byte(e.ID), v)
}

// insertLocked adds a new entry with its index keys, body reference and
// usage. It reports dup when the id is already stored with the same digest,
// and returns ErrConflict when it is stored with another.
func (s *Store) insertLocked(tx *bbolt.Tx, e *Entry) (dup bool, err error) {
	if old := tx.Bucket(bEntries).Get([]byte(e.ID)); old != nil {
		var o Entry
		if err := unmarshalEntry(old, &o); err != nil {
			return false, err
		}
		if o.Digest != e.Digest {
			return false, fmt.Errorf("%w: %s", ErrConflict, e.ID)
		}
		return true, nil
	}
	if err := s.saveLocked(tx, e); err != nil {
		return false, err
	}
	for bucket, keys := range indexKeys(e) {
		b := tx.Bucket([]byte(bucket))
		for _, k := range keys {
			if err := b.Put(k, nil); err != nil {
				return false, err
			}
		}
	}
	if err := addCounter(tx, kEntries, 1); err != nil {
		return false, err
	}
	if live(e) {
		if err := s.refBodyLocked(tx, e, +1); err != nil {
			return false, err
		}
	}
	for _, r := range e.Recipients {
		if holds(r.Status) {
			if err := s.usageLocked(tx, r.Addr, +1, e.Size); err != nil {
				return false, err
			}
		}
	}
	return false, nil
}

// removeLocked deletes an entry with its index keys, audit trail, body
// reference and usage. It returns the digest of a body left unreferenced
// (zero if none), which the caller removes after the commit.
func (s *Store) removeLocked(tx *bbolt.Tx, e *Entry) (resilmail.Digest, error) {
	var orphan resilmail.Digest
	for bucket, keys := range indexKeys(e) {
		b := tx.Bucket([]byte(bucket))
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return orphan, err
			}
		}
	}
	for _, r := range e.Recipients {
		if holds(r.Status) {
			if err := s.usageLocked(tx, r.Addr, -1, -e.Size); err != nil {
				return orphan, err
			}
		}
	}
	if live(e) {
		if err := s.refBodyLocked(tx, e, -1); err != nil {
			return orphan, err
		}
		if tx.Bucket(bBodies).Get(e.Digest[:]) == nil {
			orphan = e.Digest
		}
	}
	if err := tx.Bucket(bReleasing).Delete([]byte(e.ID)); err != nil {
		return orphan, err
	}
	ac := tx.Bucket(bAudit).Cursor()
	prefix := append([]byte(e.ID), 0)
	for k, _ := ac.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = ac.Seek(prefix) {
		if err := ac.Delete(); err != nil {
			return orphan, err
		}
	}
	if err := tx.Bucket(bEntries).Delete([]byte(e.ID)); err != nil {
		return orphan, err
	}
	return orphan, addCounter(tx, kEntries, -1)
}

// holds reports whether a recipient in status st still needs the body.
func holds(st Status) bool { return st == Held || st == Releasing }

// live reports whether e has a body some recipient still needs.
func live(e *Entry) bool {
	if !e.HasBody() {
		return false
	}
	for _, r := range e.Recipients {
		if holds(r.Status) {
			return true
		}
	}
	return false
}

// setStatusLocked moves recipient i of e to st, keeping usage and the body
// reference right, and saves e. It returns the digest of a body left
// unreferenced (zero if none).
func (s *Store) setStatusLocked(tx *bbolt.Tx, e *Entry, i int, st Status, by string, now time.Time) (resilmail.Digest, error) {
	var orphan resilmail.Digest
	r := &e.Recipients[i]
	wasLive := live(e)
	if holds(r.Status) && !holds(st) {
		if err := s.usageLocked(tx, r.Addr, -1, -e.Size); err != nil {
			return orphan, err
		}
	}
	r.Status, r.Changed, r.By = st, now, by
	if wasLive && !live(e) {
		if err := s.refBodyLocked(tx, e, -1); err != nil {
			return orphan, err
		}
		if tx.Bucket(bBodies).Get(e.Digest[:]) == nil {
			orphan = e.Digest
		}
	}
	return orphan, nil
}

// refBodyLocked changes the reference count of e's body by delta.
func (s *Store) refBodyLocked(tx *bbolt.Tx, e *Entry, delta int64) error {
	b := tx.Bucket(bBodies)
	refs, size := decodePair(b.Get(e.Digest[:]))
	refs += delta
	if refs < 0 {
		return fmt.Errorf("quarantine: body %s: negative reference count", e.Digest)
	}
	if refs == 0 {
		if err := addCounter(tx, kBodies, -1); err != nil {
			return err
		}
		if err := addCounter(tx, kBodyBytes, -e.Size); err != nil {
			return err
		}
		return b.Delete(e.Digest[:])
	}
	if refs == 1 && delta > 0 {
		size = e.Size
		if err := addCounter(tx, kBodies, 1); err != nil {
			return err
		}
		if err := addCounter(tx, kBodyBytes, e.Size); err != nil {
			return err
		}
	}
	return b.Put(e.Digest[:], encodePair(refs, size))
}

// usageLocked changes what recipient rcpt holds, and marks it for a quota
// check when it goes over.
func (s *Store) usageLocked(tx *bbolt.Tx, rcpt string, count, bytes int64) error {
	b := tx.Bucket(bUsage)
	k := []byte(strings.ToLower(rcpt))
	n, sz := decodePair(b.Get(k))
	n, sz = n+count, sz+bytes
	if n <= 0 {
		return b.Delete(k)
	}
	if err := b.Put(k, encodePair(n, sz)); err != nil {
		return err
	}
	if count > 0 && s.overQuota(n, sz) {
		return tx.Bucket(bOverQuota).Put(k, nil)
	}
	return nil
}

func (s *Store) overQuota(n, size int64) bool {
	return (s.opts.QuotaCount > 0 && n > int64(s.opts.QuotaCount)) ||
		(s.opts.QuotaBytes > 0 && size > s.opts.QuotaBytes)
}

func encodePair(a, b int64) []byte {
	buf := make([]byte, 0, 2*binary.MaxVarintLen64)
	buf = binary.AppendVarint(buf, a)
	return binary.AppendVarint(buf, b)
}

func decodePair(v []byte) (a, b int64) {
	a, n := binary.Varint(v)
	if n <= 0 {
		return 0, 0
	}
	b, m := binary.Varint(v[n:])
	if m <= 0 {
		return a, 0
	}
	return a, b
}

func addCounter(tx *bbolt.Tx, k []byte, delta int64) error {
	m := tx.Bucket(bMeta)
	v, _ := binary.Varint(m.Get(k))
	return m.Put(k, binary.AppendVarint(nil, v+delta))
}

func counter(tx *bbolt.Tx, k []byte) int64 {
	v, _ := binary.Varint(tx.Bucket(bMeta).Get(k))
	return v
}
