package store

import (
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"

	"golang.org/x/sync/singleflight"

	"github.com/resilmail/resilmail"
)

// Partial body reads and a cache of what is derived from a body (an IMAP
// ENVELOPE and BODYSTRUCTURE), so that serving a 30 MiB message or its
// structure never loads it whole, and a structure is parsed once per body,
// not on every FETCH.

// A BodyReader reads a stored body in part, from its file (or its pack), without loading
// it whole. ReadAt does not verify the digest (the background
// [Store.Scrub] covers partial reads); [BodyReader.Verified] does, for a
// read of the whole body. Close it when done. It keeps the file open, so a
// body expunged meanwhile can still be read to the end.
type BodyReader struct {
	s      *Store
	f      *os.File
	sr     *io.SectionReader // the body in f (its own file, or its part of a pack)
	d      resilmail.Digest
	size   int64
	closed bool
}

// OpenBody opens the body named d, which a message of the store references,
// for partial reads. A body marked corrupt is refused with [ErrCorrupt]; a
// missing file is marked corrupt and refused; a digest no message
// references is [ErrNotFound].
func (s *Store) OpenBody(ctx context.Context, d resilmail.Digest) (*BodyReader, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	defer s.ops.Done()
	if err := s.checkServable(d); err != nil {
		return nil, err
	}
	f, off, size, err := s.openStored(d)
	if err != nil {
		_, err = s.markCorrupt(d, fmt.Sprintf("open: %v", err))
		return nil, err
	}
	return &BodyReader{s: s, f: f, sr: io.NewSectionReader(f, off, size), d: d, size: size}, nil
}

// Size returns the body's size in bytes.
func (r *BodyReader) Size() int64 { return r.size }

// Digest returns the body's name.
func (r *BodyReader) Digest() resilmail.Digest { return r.d }

// ReadAt reads len(p) bytes of the body at off, as io.ReaderAt.
func (r *BodyReader) ReadAt(p []byte, off int64) (int, error) { return r.sr.ReadAt(p, off) }

// Section returns a reader of n bytes of the body from off (clipped to the
// body).
func (r *BodyReader) Section(off, n int64) *io.SectionReader {
	off = min(max(off, 0), r.size)
	return io.NewSectionReader(r.sr, off, min(max(n, 0), r.size-off))
}

// Verified returns a reader of the whole body that hashes it as it goes:
// at the end it returns io.EOF only if the bytes hash to the body's
// digest, and otherwise an error wrapping [ErrCorrupt] (the body is then
// marked corrupt and moved aside, as [Store.Body] does). A caller that
// streams the body to a client must treat that error as fatal to the
// transfer (close the connection), so that the client never takes damaged
// bytes for good ones.
func (r *BodyReader) Verified() io.Reader {
	return &verifiedReader{r: r, sr: io.NewSectionReader(r.sr, 0, r.size), h: sha256.New()}
}

// Close closes the body's file; it is idempotent.
func (r *BodyReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	return r.f.Close()
}

type verifiedReader struct {
	r   *BodyReader
	sr  *io.SectionReader
	h   hash.Hash
	n   int64
	err error
}

// Read reads the body, returning at its end io.EOF or ErrCorrupt.
func (v *verifiedReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.sr.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if errors.Is(err, io.EOF) {
		if got := resilmail.Digest(v.h.Sum(nil)); got != v.r.d || v.n != v.r.size {
			_, cerr := v.r.s.markCorrupt(v.r.d, "streamed read does not hash to its digest")
			if cerr == nil {
				// A good copy replaced the file meanwhile; what was
				// streamed is still not the body.
				cerr = corruptErr(v.r.d, got, "streamed read")
			}
			v.err = cerr
			return n, cerr
		}
		v.r.s.mu.Lock()
		v.r.s.c.bodyReads++
		v.r.s.mu.Unlock()
	}
	if err != nil {
		v.err = err
	}
	return n, err
}

// DerivedCacheBytes is the memory the cache of [Store.Derived] may hold,
// by the sizes its compute functions report.
const DerivedCacheBytes = 64 << 20

// derivedCache is an LRU of values derived from bodies, by (digest, key).
type derivedCache struct {
	mu    sync.Mutex
	lru   *list.List // of *derivedEntry, most recent first
	items map[derivedKey]*list.Element
	bytes int64
	hits  uint64
	miss  uint64
	group singleflight.Group
}

type derivedKey struct {
	d   resilmail.Digest
	key string
}

type derivedEntry struct {
	k    derivedKey
	v    any
	size int64
}

// Derived returns the value that compute derives from body d under key
// (one key per kind of value, such as "imap.structure"), computing it at
// most once while it stays cached: concurrent callers for the same body and
// key share one computation, and values are kept in an LRU of
// [DerivedCacheBytes] (by the sizes compute reports). compute reads the
// body through the [BodyReader] it is given (partially, if it can) and
// must treat the value as immutable once returned, as must every caller.
// Errors are not cached.
func (s *Store) Derived(ctx context.Context, d resilmail.Digest, key string, compute func(r *BodyReader) (v any, size int64, err error)) (any, error) {
	c := &s.derived
	k := derivedKey{d, key}
	c.mu.Lock()
	if c.items == nil {
		c.items = make(map[derivedKey]*list.Element)
		c.lru = list.New()
	}
	if el := c.items[k]; el != nil {
		c.lru.MoveToFront(el)
		c.hits++
		v := el.Value.(*derivedEntry).v
		c.mu.Unlock()
		return v, nil
	}
	c.miss++
	c.mu.Unlock()
	v, err, _ := c.group.Do(string(d[:])+key, func() (any, error) {
		r, err := s.OpenBody(ctx, d)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		v, size, err := compute(r)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.putLocked(k, v, size), nil
	})
	return v, err
}

// putLocked caches v under k unless a value is there already, which it
// returns; the least recently used values go beyond DerivedCacheBytes.
func (c *derivedCache) putLocked(k derivedKey, v any, size int64) any {
	if c.items == nil {
		c.items = make(map[derivedKey]*list.Element)
		c.lru = list.New()
	}
	if el := c.items[k]; el != nil {
		return el.Value.(*derivedEntry).v
	}
	size = max(size, 1) + int64(len(k.key)) + 64
	c.items[k] = c.lru.PushFront(&derivedEntry{k: k, v: v, size: size})
	c.bytes += size
	for c.bytes > DerivedCacheBytes && c.lru.Len() > 1 {
		el := c.lru.Back()
		e := el.Value.(*derivedEntry)
		c.lru.Remove(el)
		delete(c.items, e.k)
		c.bytes -= e.size
	}
	return v
}

// PutDerived caches v as what Derived's compute would return for body d
// under key (a cache saved before a restart, say), with its size; a value
// already cached stays. The caller must be sure v is what compute gives:
// bodies never change, so a value saved for a digest stays right.
func (s *Store) PutDerived(d resilmail.Digest, key string, v any, size int64) {
	c := &s.derived
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(derivedKey{d, key}, v, size)
}

// DerivedValues calls fn with every value cached under key, the most
// recently used first, until fn returns false. fn runs with the cache
// locked: it must not call Derived or PutDerived.
func (s *Store) DerivedValues(key string, fn func(d resilmail.Digest, v any) bool) {
	c := &s.derived
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lru == nil {
		return
	}
	for el := c.lru.Front(); el != nil; el = el.Next() {
		e := el.Value.(*derivedEntry)
		if e.k.key == key && !fn(e.k.d, e.v) {
			return
		}
	}
}

// DerivedStats returns the cache's hits, misses and bytes held.
func (s *Store) DerivedStats() (hits, misses uint64, bytes int64) {
	c := &s.derived
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.miss, c.bytes
}
