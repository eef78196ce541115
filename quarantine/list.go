package quarantine

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/resilmail/resilmail"
)

// A Query selects entries. Every field is optional; the fields given must
// all match. Listings are newest first.
type Query struct {
	// Rcpt, Domain and Sender match a recipient, a recipient's domain and
	// the sender (case-insensitive; "<>" or "" with NullSender for the
	// null sender).
	Rcpt, Domain, Sender string
	// NullSender selects entries from the null reverse-path (bounces).
	NullSender bool
	// Kind matches Reason.Kind.
	Kind Kind
	// Status matches entries where a recipient in scope (and matching
	// Rcpt or Domain, if given) has this status.
	Status Status
	// Since and Until bound Entry.Time: Since <= Time < Until. Zero means
	// unbounded.
	Since, Until time.Time
	// Limit is the page size. Zero means 50; at most 1000.
	Limit int
	// Cursor continues a listing where the previous page ended (its
	// Page.Next). Empty means from the newest entry.
	Cursor string
}

// A Page is one page of a listing, newest first.
type Page struct {
	Entries []Entry `json:"entries"`
	// Next is the cursor of the next page; empty when there is none.
	Next string `json:"next,omitempty"`
}

// maxScan bounds the index keys one List call reads: a selective filter over
// a large store returns a short page (and a Next cursor) instead of
// scanning everything at once.
const maxScan = 100_000

// List returns a page of the entries matching q that who may see, each with
// only the recipients in who's scope. Asking for a recipient or domain
// outside the scope is ErrForbidden. Cursors are stable: entries stored
// after the first page appear on no later page, and none is skipped.
func (s *Store) List(ctx context.Context, who string, q Query) (Page, error) {
	sc, err := s.scope(ctx, who)
	if err != nil {
		return Page{}, err
	}
	return s.list(ctx, sc, q)
}

// stream is one index range to read: a bucket and a key prefix.
type stream struct {
	bucket []byte
	prefix []byte
	c      *bbolt.Cursor
	key    []byte // current key, nil when done
}

func (s *Store) list(ctx context.Context, sc Scope, q Query) (Page, error) {
	if s.closed.Load() {
		return Page{}, ErrClosed
	}
	q, err := normalQuery(q)
	if err != nil {
		return Page{}, err
	}
	streams, err := planStreams(sc, q)
	if err != nil {
		return Page{}, err
	}
	// Keys are read backwards from upper (excluded): the cursor, Until,
	// or the end of the range.
	upper := []byte{0xff}
	if q.Cursor != "" {
		upper, err = base64.RawURLEncoding.DecodeString(q.Cursor)
		if err != nil || len(upper) < 9 || !ValidID(string(upper[8:])) {
			return Page{}, fmt.Errorf("%w: bad cursor", ErrInvalid)
		}
	}
	if !q.Until.IsZero() {
		if u := timeKey(q.Until, ""); bytes.Compare(u, upper) < 0 {
			upper = u
		}
	}
	var lower []byte // keys below it are older than Since
	if !q.Since.IsZero() {
		lower = timeKey(q.Since, "")
	}

	var (
		page    Page
		lastKey []byte // the time key of the last entry read
	)
	err = s.db.View(func(tx *bbolt.Tx) error {
		for _, st := range streams {
			st.c = tx.Bucket(st.bucket).Cursor()
			k, _ := st.c.Seek(append(append([]byte(nil), st.prefix...), upper...))
			if k == nil {
				k, _ = st.c.Last()
			} else {
				k, _ = st.c.Prev()
			}
			st.key = within(k, st.prefix)
		}
		scanned := 0
		for {
			// The stream whose current key is newest goes first.
			var best *stream
			for _, st := range streams {
				if st.key != nil && (best == nil || bytes.Compare(st.key[len(st.prefix):], best.key[len(best.prefix):]) > 0) {
					best = st
				}
			}
			if best == nil {
				return nil
			}
			tk := append([]byte(nil), best.key[len(best.prefix):]...)
			k, _ := best.c.Prev()
			best.key = within(k, best.prefix)
			if lower != nil && bytes.Compare(tk, lower) < 0 {
				best.key = nil // every later key of this stream is older
				continue
			}
			if bytes.Equal(tk, lastKey) {
				continue // the same entry through another stream
			}
			if len(page.Entries) == q.Limit || scanned == maxScan {
				page.Next = base64.RawURLEncoding.EncodeToString(lastKey)
				return nil
			}
			scanned++
			if scanned%1024 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			lastKey = tk
			e, err := s.loadLocked(tx, string(tk[8:]))
			if err != nil {
				continue // reported by loadLocked; the listing goes on
			}
			if v, ok := match(e, sc, q); ok {
				page.Entries = append(page.Entries, v)
			}
		}
	})
	if err != nil {
		return Page{}, err
	}
	return page, nil
}

// within returns k if it has prefix, else nil.
func within(k, prefix []byte) []byte {
	if k == nil || !bytes.HasPrefix(k, prefix) {
		return nil
	}
	return k
}

func normalQuery(q Query) (Query, error) {
	q.Rcpt = strings.ToLower(strings.TrimSpace(q.Rcpt))
	q.Domain = strings.ToLower(strings.TrimSpace(q.Domain))
	q.Sender = strings.ToLower(strings.TrimSpace(q.Sender))
	if q.Sender == "<>" {
		q.Sender, q.NullSender = "", true
	}
	if q.Status != "" && !q.Status.valid() {
		return q, fmt.Errorf("%w: unknown status %q", ErrInvalid, q.Status)
	}
	if q.Rcpt != "" && resilmail.CheckAddress(q.Rcpt) != nil {
		return q, fmt.Errorf("%w: bad recipient %q", ErrInvalid, q.Rcpt)
	}
	if strings.ContainsAny(q.Domain+q.Sender+string(q.Kind), "\x00") {
		return q, fmt.Errorf("%w: NUL in query", ErrInvalid)
	}
	switch {
	case q.Limit == 0:
		q.Limit = 50
	case q.Limit < 0:
		return q, fmt.Errorf("%w: negative limit", ErrInvalid)
	case q.Limit > 1000:
		q.Limit = 1000
	}
	return q, nil
}

// planStreams chooses the index ranges that hold every entry q and sc can
// select, as narrow as possible.
func planStreams(sc Scope, q Query) ([]*stream, error) {
	one := func(b []byte, p string) []*stream {
		return []*stream{{bucket: b, prefix: append([]byte(p), 0)}}
	}
	if q.Rcpt != "" {
		if !sc.Allows(q.Rcpt) {
			return nil, fmt.Errorf("%w: recipient %s", ErrForbidden, q.Rcpt)
		}
		return one(bRcpt, q.Rcpt), nil
	}
	if sc.All {
		switch {
		case q.Domain != "":
			return one(bDomain, q.Domain), nil
		case q.Sender != "" || q.NullSender:
			return one(bSender, q.Sender), nil
		case q.Kind != "":
			return one(bKind, string(q.Kind)), nil
		}
		return []*stream{{bucket: bTime}}, nil
	}
	var out []*stream
	for _, d := range sc.Domains {
		if q.Domain == "" || q.Domain == d {
			out = append(out, one(bDomain, d)...)
		}
	}
	for _, a := range sc.Addrs {
		if q.Domain == "" || q.Domain == resilmail.Domain(a) {
			out = append(out, one(bRcpt, a)...)
		}
	}
	if len(out) == 0 {
		if q.Domain != "" {
			return nil, fmt.Errorf("%w: domain %s", ErrForbidden, q.Domain)
		}
		return nil, ErrForbidden
	}
	return out, nil
}

// match applies the filters of q that the index did not, and the scope.
func match(e Entry, sc Scope, q Query) (Entry, bool) {
	v, ok := redact(e, sc)
	if !ok {
		return v, false
	}
	if q.Kind != "" && v.Reason.Kind != q.Kind {
		return v, false
	}
	if (q.Sender != "" || q.NullSender) && strings.ToLower(v.Envelope.From) != q.Sender {
		return v, false
	}
	if q.Rcpt == "" && q.Domain == "" && q.Status == "" {
		return v, true
	}
	for _, r := range v.Recipients {
		a := strings.ToLower(r.Addr)
		if (q.Rcpt == "" || a == q.Rcpt) &&
			(q.Domain == "" || resilmail.Domain(a) == q.Domain) &&
			(q.Status == "" || r.Status == q.Status) {
			return v, true
		}
	}
	return v, false
}
