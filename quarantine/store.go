package quarantine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
)

// formatVersion is the version of the store's on-disk format.
const formatVersion = "1"

// Store is a quarantine store: entries in an embedded index (bbolt), bodies
// in files named by their SHA-256. It is safe for concurrent use.
type Store struct {
	dir  string
	auth Authorizer
	opts Options
	log  *slog.Logger
	db   *bbolt.DB

	// bodyMu orders body files against their removal: writers of a body
	// hold it shared from writing the file until the index commits; the
	// removal of an unreferenced body holds it exclusively.
	bodyMu sync.RWMutex

	// locks serialises actions on one entry (release, delete).
	locksMu sync.Mutex
	locks   map[string]*entryLock

	counters counters

	closeOnce sync.Once
	closed    atomic.Bool
	unlock    func() error
}

type entryLock struct {
	mu   sync.Mutex
	refs int
}

// Open opens the store in dir, creating it if needed. auth decides what each
// caller may see; it is consulted on every read and action. Open refuses a
// store written in an unknown format version, and a folder another process
// has open.
func Open(dir string, auth Authorizer, opts *Options) (*Store, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if auth == nil {
		return nil, errors.New("quarantine: nil Authorizer")
	}
	if err := os.MkdirAll(filepath.Join(dir, "bodies"), 0o750); err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	unlock, err := durable.Lock(dir)
	if err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	db, err := bbolt.Open(filepath.Join(dir, "index.db"), 0o640, &bbolt.Options{
		Timeout:        time.Second,
		NoFreelistSync: true,
		FreelistType:   bbolt.FreelistMapType,
	})
	if err != nil {
		_ = unlock()
		return nil, fmt.Errorf("quarantine: open index: %w", err)
	}
	// Concurrent Puts share a commit (Batch); a lone one waits at most
	// this long for company.
	db.MaxBatchDelay = time.Millisecond
	s := &Store{dir: dir, auth: auth, opts: o, log: o.Logger, db: db, locks: make(map[string]*entryLock), unlock: unlock}
	if err := db.Update(s.initBuckets); err != nil {
		_ = db.Close()
		_ = unlock()
		return nil, err
	}
	return s, nil
}

func (s *Store) initBuckets(tx *bbolt.Tx) error {
	for _, name := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("quarantine: create bucket %s: %w", name, err)
		}
	}
	meta := tx.Bucket(bMeta)
	switch v := meta.Get(kVersion); {
	case v == nil:
		if err := meta.Put(kVersion, []byte(formatVersion)); err != nil {
			return err
		}
	case string(v) != formatVersion:
		return fmt.Errorf("quarantine: store format version %q, this program knows %q", v, formatVersion)
	}
	return s.initReports(tx)
}

// Close closes the store. It waits for nothing in flight to be lost: every
// method that returned nil had already made its change durable. It is
// idempotent.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		err = s.db.Close()
		if uerr := s.unlock(); err == nil {
			err = uerr
		}
	})
	return err
}

func (s *Store) now() time.Time { return s.opts.Now() }

// Item is one entry of a batch with its body: nil for an entry recorded
// before the body arrived (metadata only).
type Item struct {
	Entry Entry
	Body  []byte
}

// Put stores e with its body (nil: metadata only) and returns once both are
// on stable storage. Digest and Size are computed when zero, and checked
// otherwise. Put is idempotent by e.ID: storing an id again with the same
// digest does nothing and returns nil; with another digest it returns
// ErrConflict.
func (s *Store) Put(ctx context.Context, e Entry, body io.Reader) error {
	it := Item{Entry: e}
	if body != nil {
		b, err := io.ReadAll(io.LimitReader(body, s.opts.MaxSize+1))
		if err != nil {
			return fmt.Errorf("quarantine: read body of %s: %w", e.ID, err)
		}
		it.Body = b
		if it.Body == nil {
			it.Body = []byte{}
		}
	}
	return s.PutBatch(ctx, []Item{it})[0]
}

// PutBatch stores items durably, sharing the fsyncs of the index among them,
// and returns one error per item: nil when the item is stored (or was
// already, with the same digest), otherwise an error wrapping ErrInvalid,
// ErrTooLarge, ErrConflict or a storage error. A storage error fails every
// item not stored.
func (s *Store) PutBatch(ctx context.Context, items []Item) []error {
	errs := make([]error, len(items))
	if s.closed.Load() {
		for i := range errs {
			errs[i] = ErrClosed
		}
		return errs
	}
	prepared := make([]Item, len(items))
	for i, it := range items {
		prepared[i], errs[i] = s.prepare(it)
		if errs[i] != nil {
			s.log.Warn("quarantine: entry refused", "entry", it.Entry.ID, "err", errs[i])
		}
	}

	s.bodyMu.RLock()
	defer s.bodyMu.RUnlock()
	if err := s.writeBodies(ctx, prepared, errs); err != nil {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	var stored, dups int
	// Batch lets concurrent Puts share one commit and its fsync; bbolt may
	// run the function again (alone) when another of the batch fails, so
	// it starts from what the items were before it ran.
	before := slices.Clone(errs)
	err := s.db.Batch(func(tx *bbolt.Tx) error {
		stored, dups = 0, 0
		copy(errs, before)
		held := counter(tx, kEntries)
		for i := range prepared {
			if errs[i] != nil {
				continue
			}
			if s.opts.MaxEntries > 0 && held >= s.opts.MaxEntries && tx.Bucket(bEntries).Get([]byte(prepared[i].Entry.ID)) == nil {
				errs[i] = fmt.Errorf("%w: %d entries held", ErrFull, held)
				continue
			}
			dup, err := s.insertLocked(tx, &prepared[i].Entry)
			if err != nil {
				if errors.Is(err, ErrConflict) {
					errs[i] = err
					continue
				}
				return err
			}
			if dup {
				dups++
			} else {
				stored++
				held++
			}
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("quarantine: store batch: %w", err)
		s.log.Error("quarantine: cannot store batch", "entries", len(items), "err", err)
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	s.counters.stored.Add(uint64(stored))
	s.counters.duplicates.Add(uint64(dups))
	for i := range prepared {
		if errs[i] == nil {
			e := &prepared[i].Entry
			s.log.Debug("quarantine: stored", "entry", e.ID, "msg_id", e.Envelope.ID, "kind", e.Reason.Kind, "size", e.Size)
		}
	}
	return errs
}

// prepare validates an item, fills Digest, Size, Subject and Message-ID,
// and checks the body against the Digest it came with.
func (s *Store) prepare(it Item) (Item, error) {
	e := it.Entry
	e.Recipients = append([]RecipientState(nil), e.Recipients...)
	for i := range e.Recipients {
		r := &e.Recipients[i]
		if r.Status == "" {
			r.Status = Held
		}
		if r.Changed.IsZero() {
			r.Changed = e.Time
		}
	}
	if it.Body != nil {
		if int64(len(it.Body)) > s.opts.MaxSize {
			return it, fmt.Errorf("%w: entry %s: %d bytes, limit %d", ErrTooLarge, e.ID, len(it.Body), s.opts.MaxSize)
		}
		d := resilmail.DigestOf(it.Body)
		if !e.Digest.IsZero() && e.Digest != d {
			return it, fmt.Errorf("%w: entry %s: body does not match digest %s", ErrInvalid, e.ID, e.Digest)
		}
		if e.Size != 0 && e.Size != int64(len(it.Body)) {
			return it, fmt.Errorf("%w: entry %s: body is %d bytes, entry says %d", ErrInvalid, e.ID, len(it.Body), e.Size)
		}
		e.Digest, e.Size = d, int64(len(it.Body))
		if e.Subject == "" && e.MessageID == "" {
			e.Subject, e.MessageID = headerSummary(it.Body)
		}
	} else if !e.Digest.IsZero() {
		return it, fmt.Errorf("%w: entry %s has a digest but no body", ErrInvalid, e.ID)
	}
	if err := e.Validate(); err != nil {
		return it, err
	}
	return Item{Entry: e, Body: it.Body}, nil
}

// bodyPath is where the body named d lives: bodies/a/abcdef... (16
// folders, so that a batch fsyncs at most 17 folders).
func (s *Store) bodyPath(d resilmail.Digest) string {
	h := d.String()
	return filepath.Join(s.dir, "bodies", h[:1], h)
}

// writeBodies writes the bodies of items not already stored, each to a
// temporary file that is fsynced and renamed, then fsyncs the folders. It
// works in parallel, as the disk does its best with several fsyncs in
// flight. The caller holds bodyMu shared.
func (s *Store) writeBodies(ctx context.Context, items []Item, errs []error) error {
	need := make(map[resilmail.Digest][]byte)
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bBodies)
		for i, it := range items {
			if errs[i] != nil || it.Body == nil {
				continue
			}
			if b.Get(it.Entry.Digest[:]) != nil {
				continue // referenced, so on disk
			}
			need[it.Entry.Digest] = it.Body
		}
		return nil
	})
	if err != nil || len(need) == 0 {
		return err
	}
	work := make(chan resilmail.Digest, len(need))
	for d := range need {
		work <- d
	}
	close(work)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		dirs     = make(map[string]bool)
	)
	for range min(8, len(need)) {
		wg.Go(func() {
			for d := range work {
				if ctx.Err() != nil {
					continue
				}
				p := s.bodyPath(d)
				err := os.MkdirAll(filepath.Dir(p), 0o750)
				if err == nil {
					err = writeFileSync(p, need[d])
				}
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				dirs[filepath.Dir(p)] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		return fmt.Errorf("quarantine: write body: %w", firstErr)
	}
	dirs[filepath.Join(s.dir, "bodies")] = true
	work2 := make(chan string, len(dirs))
	for d := range dirs {
		work2 <- d
	}
	close(work2)
	for range min(8, len(dirs)) {
		wg.Go(func() {
			for d := range work2 {
				if err := durable.SyncDir(d); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("quarantine: sync body folder: %w", firstErr)
	}
	return nil
}

// writeFileSync writes data to path through a temporary file that is fsynced
// and renamed; the caller fsyncs the folder.
func writeFileSync(path string, data []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// readBody reads the body named d and verifies it. A body that does not
// match is reported (log, counter) and never returned.
func (s *Store) readBody(d resilmail.Digest, id string) ([]byte, error) {
	p := s.bodyPath(d)
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			s.counters.corrupt.Add(1)
			s.log.Error("quarantine: body file missing", "entry", id, "digest", d.String())
			return nil, fmt.Errorf("%w: entry %s: body %s is missing", ErrCorrupt, id, d)
		}
		return nil, fmt.Errorf("quarantine: read body of %s: %w", id, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, s.opts.MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("quarantine: read body of %s: %w", id, err)
	}
	if got := sha256.Sum256(b); got != d {
		s.counters.corrupt.Add(1)
		s.log.Error("quarantine: corrupt body", "entry", id, "digest", d.String(), "file", p)
		return nil, fmt.Errorf("%w: entry %s: %w", ErrCorrupt, id, &resilmail.CorruptError{Want: d, Got: got, Where: p})
	}
	return b, nil
}

// Get returns entry id as who may see it: with only the recipients in the
// caller's scope. An entry outside the scope is ErrNotFound.
func (s *Store) Get(ctx context.Context, who, id string) (Entry, error) {
	sc, err := s.scope(ctx, who)
	if err != nil {
		return Entry{}, err
	}
	return s.get(sc, id)
}

func (s *Store) get(sc Scope, id string) (Entry, error) {
	if !ValidID(id) {
		return Entry{}, fmt.Errorf("%w: bad entry id %q", ErrInvalid, id)
	}
	var e Entry
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		e, err = s.loadLocked(tx, id)
		return err
	})
	if err != nil {
		return Entry{}, err
	}
	v, ok := redact(e, sc)
	if !ok {
		return Entry{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return v, nil
}

// Body returns the body of entry id, verified against its digest, if who
// may see the entry. A corrupt body is never returned: the error wraps
// ErrCorrupt.
//
// An entry whose body was never stored (a reject before DATA), or that no
// recipient holds any more (released, deleted or expired for all of them,
// so the body went with its last holder), is ErrNoBody.
func (s *Store) Body(ctx context.Context, who, id string) ([]byte, error) {
	sc, err := s.scope(ctx, who)
	if err != nil {
		return nil, err
	}
	e, err := s.get(Scope{All: true}, id)
	if err != nil {
		return nil, err
	}
	if _, ok := redact(e, sc); !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if !e.HasBody() {
		return nil, fmt.Errorf("%w: %s", ErrNoBody, id)
	}
	if !live(&e) {
		return nil, fmt.Errorf("%w: %s is no longer held by any recipient", ErrNoBody, id)
	}
	return s.readBody(e.Digest, e.ID)
}

// scope asks the Authorizer what who may see.
func (s *Store) scope(ctx context.Context, who string) (Scope, error) {
	if s.closed.Load() {
		return Scope{}, ErrClosed
	}
	sc, err := s.auth.Scope(ctx, who)
	if err != nil {
		if errors.Is(err, ErrForbidden) {
			return Scope{}, err
		}
		s.log.Warn("quarantine: the Authorizer could not decide", "who", who, "err", err)
		return Scope{}, fmt.Errorf("%w: %s: %v", ErrUnavailable, who, err)
	}
	return sc.normal(), nil
}

// redact returns e with only the recipients sc covers, and whether any is.
func redact(e Entry, sc Scope) (Entry, bool) {
	if sc.All {
		return e, true
	}
	var rs []RecipientState
	var to []resilmail.Recipient
	for i, r := range e.Recipients {
		if sc.Allows(r.Addr) {
			rs = append(rs, r)
			to = append(to, e.Envelope.To[i])
		}
	}
	if len(rs) == 0 {
		return Entry{}, false
	}
	e.Recipients, e.Envelope.To = rs, to
	return e, true
}

// lockEntry serialises actions on one entry; call the returned function to
// unlock.
func (s *Store) lockEntry(id string) func() {
	s.locksMu.Lock()
	l := s.locks[id]
	if l == nil {
		l = &entryLock{}
		s.locks[id] = l
	}
	l.refs++
	s.locksMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		s.locksMu.Lock()
		if l.refs--; l.refs == 0 {
			delete(s.locks, id)
		}
		s.locksMu.Unlock()
	}
}

// headerSummary returns the Subject and Message-ID of a message, read from
// its header only (at most 64 KiB), decoded per RFC 2047 when possible.
func headerSummary(body []byte) (subject, msgID string) {
	h := body
	if i := bytes.Index(h, []byte("\r\n\r\n")); i >= 0 {
		h = h[:i+2]
	} else if i := bytes.Index(h, []byte("\n\n")); i >= 0 {
		h = h[:i+1]
	}
	if len(h) > 64<<10 {
		h = h[:64<<10]
	}
	var cur *string
	for _, line := range strings.Split(string(h), "\n") {
		line = strings.TrimRight(line, "\r")
		if line != "" && (line[0] == ' ' || line[0] == '\t') {
			if cur != nil {
				*cur += " " + strings.TrimSpace(line)
			}
			continue
		}
		cur = nil
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch {
		case strings.EqualFold(name, "Subject") && subject == "":
			subject = strings.TrimSpace(value)
			cur = &subject
		case strings.EqualFold(name, "Message-ID") && msgID == "":
			msgID = strings.TrimSpace(value)
			cur = &msgID
		}
	}
	if d, err := new(mime.WordDecoder).DecodeHeader(subject); err == nil {
		subject = d
	}
	return truncate(subject, 998), truncate(msgID, 998)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }

// marshalEntry and unmarshalEntry are the index's encoding of an entry.
func marshalEntry(e *Entry) ([]byte, error) { return json.Marshal(e) }

func unmarshalEntry(b []byte, e *Entry) error {
	if err := json.Unmarshal(b, e); err != nil {
		return fmt.Errorf("quarantine: corrupt index record: %w", err)
	}
	return nil
}
