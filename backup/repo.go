package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail"
)

// repoFormat and repoVersion are the repository's config format and
// version; Open refuses another version with ErrFormat.
const (
	repoFormat  = "resilmail-backup"
	repoVersion = 1
)

const (
	configName      = "config"
	packsPrefix     = "packs/"
	indexPrefix     = "index/"
	changesPrefix   = "changes/"
	snapshotsPrefix = "snapshots/"
	lockName        = "lock"
)

// config is the repository's one plain-text object.
type config struct {
	Format     string `json:"format"`
	Version    int    `json:"version"`
	ID         string `json:"id"`
	Created    string `json:"created"`
	Encryption string `json:"encryption"`          // "none" or "aes-256-gcm"
	KeyCheck   string `json:"key_check,omitempty"` // HMAC of the derived key
}

// Repo is a backup repository on a [Target]. Create it with [Open]; its
// methods are safe for concurrent use, and the operations that write
// (Backup, Follow, Prune) take the repository's lock.
type Repo struct {
	t    Target
	opts Options
	log  *slog.Logger
	c    *codec
	id   string

	mu    sync.Mutex
	index map[resilmail.Digest]location
	packs map[string]*packInfo

	// refreshMu serialises refreshIndex; gen counts its runs.
	refreshMu sync.Mutex
	gen       uint64
}

// location is where a body is stored: see indexEntry.
type location struct {
	pack   string // pack id
	off    int64
	length int64
	inner  int64
	size   int64
}

type packInfo struct {
	id      string
	size    int64 // bytes of the pack
	entries []indexEntry
}

func randomID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Open opens the repository on t, creating it when t holds none (with
// encryption when opts.Key is set), and loads its index of bodies (one
// read per pack index). It refuses an unknown format version
// ([ErrFormat]), an encrypted repository without a key or with another key
// ([ErrWrongKey]), and a key for a repository that is not encrypted.
func Open(ctx context.Context, t Target, opts *Options) (*Repo, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &Repo{t: t, opts: o, log: o.Logger, index: make(map[resilmail.Digest]location), packs: make(map[string]*packInfo)}
	b, err := t.Get(ctx, configName, 0, -1)
	var cfg config
	switch {
	case errors.Is(err, ErrNotExist):
		cfg = config{Format: repoFormat, Version: repoVersion, ID: randomID(), Created: o.Now().UTC().Format(time.RFC3339), Encryption: "none"}
		if o.Key != nil {
			cfg.Encryption = "aes-256-gcm"
		}
		if r.c, err = newCodec(o.Key, cfg.ID, zstd.SpeedDefault); err != nil {
			return nil, err
		}
		cfg.KeyCheck = r.c.check
		data, _ := json.MarshalIndent(cfg, "", "  ")
		if err := t.PutIfAbsent(ctx, configName, append(data, '\n')); err != nil {
			if errors.Is(err, ErrExists) {
				return Open(ctx, t, opts) // created meanwhile
			}
			return nil, fmt.Errorf("backup: creating the repository: %w", err)
		}
		r.log.Info("backup: repository created", "id", cfg.ID, "encryption", cfg.Encryption)
	case err != nil:
		return nil, fmt.Errorf("backup: reading the repository's config: %w", err)
	default:
		if err := json.Unmarshal(b, &cfg); err != nil || cfg.Format != repoFormat {
			return nil, fmt.Errorf("%w: the target's config is not a %s repository's", ErrFormat, repoFormat)
		}
		if cfg.Version != repoVersion {
			return nil, fmt.Errorf("%w: repository version %d, this build reads %d", ErrFormat, cfg.Version, repoVersion)
		}
		switch {
		case cfg.Encryption == "aes-256-gcm" && o.Key == nil:
			return nil, fmt.Errorf("%w: the repository is encrypted; give its key", ErrWrongKey)
		case cfg.Encryption == "none" && o.Key != nil:
			return nil, fmt.Errorf("%w: the repository is not encrypted; give no key", ErrWrongKey)
		case cfg.Encryption != "none" && cfg.Encryption != "aes-256-gcm":
			return nil, fmt.Errorf("%w: encryption %q", ErrFormat, cfg.Encryption)
		}
		if r.c, err = newCodec(o.Key, cfg.ID, zstd.SpeedDefault); err != nil {
			return nil, err
		}
		if r.c.check != cfg.KeyCheck {
			return nil, fmt.Errorf("%w: the key does not open repository %s", ErrWrongKey, cfg.ID)
		}
	}
	r.id = cfg.ID
	if err := r.loadIndex(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// ID returns the repository's id.
func (r *Repo) ID() string { return r.id }

// Target returns the target the repository is on.
func (r *Repo) Target() Target { return r.t }

// loadIndex reads every pack index. A pack without an index is left alone
// (a run that crashed before writing it; Prune removes it).
func (r *Repo) loadIndex(ctx context.Context) error {
	idx, err := r.t.List(ctx, indexPrefix)
	if err != nil {
		return err
	}
	packs, err := r.t.List(ctx, packsPrefix)
	if err != nil {
		return err
	}
	sizes := make(map[string]int64, len(packs))
	for _, p := range packs {
		sizes[strings.TrimPrefix(p.Name, packsPrefix)] = p.Size
	}
	var mu sync.Mutex
	r.index = make(map[resilmail.Digest]location, 1024*len(idx)) // a pack of 32 MiB holds thousands of bodies
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Parallelism)
	for _, bi := range idx {
		id := strings.TrimPrefix(bi.Name, indexPrefix)
		g.Go(func() error {
			entries, err := r.readIndex(gctx, id)
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			size, ok := sizes[id]
			if !ok {
				r.log.Warn("backup: an index names a pack that is missing", "pack", id)
				return nil
			}
			r.addPackLocked(&packInfo{id: id, size: size, entries: entries})
			return nil
		})
	}
	return g.Wait()
}

func (r *Repo) readIndex(ctx context.Context, id string) ([]indexEntry, error) {
	b, err := r.t.Get(ctx, indexPrefix+id, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("backup: index %s: %w", id, err)
	}
	p, err := r.c.open(kindIndex, b)
	if err != nil {
		return nil, fmt.Errorf("backup: index %s: %w", id, err)
	}
	entries, err := decodeIndex(p)
	if err != nil {
		return nil, fmt.Errorf("backup: index %s: %w", id, err)
	}
	return entries, nil
}

func (r *Repo) addPackLocked(p *packInfo) {
	r.packs[p.id] = p
	for _, e := range p.entries {
		if _, ok := r.index[e.digest]; !ok {
			r.index[e.digest] = location{pack: p.id, off: e.off, length: e.length, inner: e.inner, size: e.size}
		}
	}
}

// rebuildIndexLocked builds the index of bodies from the packs again,
// after packs are removed.
func (r *Repo) rebuildIndexLocked() {
	clear(r.index)
	ids := make([]string, 0, len(r.packs))
	for id := range r.packs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		p := r.packs[id]
		for _, e := range p.entries {
			if _, ok := r.index[e.digest]; !ok {
				r.index[e.digest] = location{pack: p.id, off: e.off, length: e.length, inner: e.inner, size: e.size}
			}
		}
	}
}

// has reports whether the repository stores the body d.
func (r *Repo) has(d resilmail.Digest) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.index[d]
	return ok
}

// readBody returns the body d, checked against its digest. cache, if not
// nil, keeps decompressed frames for a restore that reads many bodies. A
// body whose pack is gone (a Prune, of this process or another, rewrote
// or removed it since the index was read) is looked up again in the
// index read afresh, up to readRetries times.
func (r *Repo) readBody(ctx context.Context, d resilmail.Digest, cache *frameCache) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		gen := r.indexGen()
		b, err := r.readBodyOnce(ctx, d, cache)
		if err == nil || !errors.Is(err, ErrNotExist) || attempt == readRetries {
			return b, err
		}
		r.log.Info("backup: a pack was removed while reading (a prune); reading the index again", "digest", d.String(), "err", err)
		if err := r.refreshIndex(ctx, gen); err != nil {
			return nil, err
		}
	}
}

func (r *Repo) readBodyOnce(ctx context.Context, d resilmail.Digest, cache *frameCache) ([]byte, error) {
	r.mu.Lock()
	loc, ok := r.index[d]
	r.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: body %s is not in the repository", ErrNotExist, d)
	}
	var frame []byte
	var err error
	if cache != nil {
		frame, err = cache.get(loc.pack, loc.off, func() ([]byte, error) { return r.readFrame(ctx, loc.pack, loc.off, loc.length) })
	} else {
		frame, err = r.readFrame(ctx, loc.pack, loc.off, loc.length)
	}
	if err != nil {
		return nil, err
	}
	return r.bodyOf(frame, indexEntry{digest: d, inner: loc.inner, size: loc.size}, loc.pack)
}

// readRetries is how many times a read that found a pack or a manifest
// removed by a concurrent Prune is tried again.
const readRetries = 3

// indexGen returns the generation of the index: refreshIndex moves it on.
func (r *Repo) indexGen() uint64 {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	return r.gen
}

// refreshIndex reads the packs' indexes again (only those it does not
// know, and forgets packs that are gone), unless another caller did so
// since generation gen.
func (r *Repo) refreshIndex(ctx context.Context, gen uint64) error {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	if r.gen != gen {
		return nil
	}
	idx, err := r.t.List(ctx, indexPrefix)
	if err != nil {
		return err
	}
	packs, err := r.t.List(ctx, packsPrefix)
	if err != nil {
		return err
	}
	sizes := make(map[string]int64, len(packs))
	for _, p := range packs {
		sizes[strings.TrimPrefix(p.Name, packsPrefix)] = p.Size
	}
	r.mu.Lock()
	var fresh []string
	for _, bi := range idx {
		id := strings.TrimPrefix(bi.Name, indexPrefix)
		if _, ok := sizes[id]; ok && r.packs[id] == nil {
			fresh = append(fresh, id)
		}
	}
	r.mu.Unlock()
	added := make([]*packInfo, 0, len(fresh))
	for _, id := range fresh {
		entries, err := r.readIndex(ctx, id)
		if errors.Is(err, ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return err
		}
		added = append(added, &packInfo{id: id, size: sizes[id], entries: entries})
	}
	r.mu.Lock()
	for id := range r.packs {
		if _, ok := sizes[id]; !ok {
			delete(r.packs, id)
		}
	}
	for _, p := range added {
		r.packs[p.id] = p
	}
	r.rebuildIndexLocked()
	r.mu.Unlock()
	r.gen++
	return nil
}

// readFrame reads and opens the frame at off in a pack.
func (r *Repo) readFrame(ctx context.Context, pack string, off, length int64) ([]byte, error) {
	return r.readFrameInto(ctx, pack, off, length, nil)
}

// readFrameInto is readFrame decoding into dst's memory when it is large
// enough.
func (r *Repo) readFrameInto(ctx context.Context, pack string, off, length int64, dst []byte) ([]byte, error) {
	sealed, err := r.t.Get(ctx, packsPrefix+pack, off, length)
	if err != nil {
		return nil, fmt.Errorf("backup: pack %s: %w", pack, err)
	}
	b, err := r.c.openInto(kindBody, sealed, dst)
	if err != nil {
		return nil, fmt.Errorf("backup: pack %s at %d: %w", pack, off, err)
	}
	return b, nil
}

func (r *Repo) openFrame(pack string, off int64, sealed []byte) ([]byte, error) {
	b, err := r.c.open(kindBody, sealed)
	if err != nil {
		return nil, fmt.Errorf("backup: pack %s at %d: %w", pack, off, err)
	}
	return b, nil
}

// bodyOf cuts the body e out of its frame and checks its digest.
func (r *Repo) bodyOf(frame []byte, e indexEntry, pack string) ([]byte, error) {
	b, err := cutBody(frame, e, pack)
	if err != nil {
		return nil, err
	}
	if got := resilmail.DigestOf(b); got != e.digest {
		return nil, fmt.Errorf("%w: body in pack %s: %w", ErrCorrupt, pack, &resilmail.CorruptError{Want: e.digest, Got: got, Where: "pack " + pack})
	}
	return b, nil
}

// cutBody cuts the body e out of its frame, unchecked.
func cutBody(frame []byte, e indexEntry, pack string) ([]byte, error) {
	if e.inner < 0 || e.size < 0 || e.inner+e.size > int64(len(frame)) {
		return nil, fmt.Errorf("%w: body %s beyond the end of its frame in pack %s", ErrCorrupt, e.digest, pack)
	}
	return frame[e.inner : e.inner+e.size : e.inner+e.size], nil
}

// frameCache keeps the last frames read, decompressed; concurrent readers
// of one frame share one read.
type frameCache struct {
	mu     sync.Mutex
	order  []frameKey
	frames map[frameKey]*cachedFrame
	max    int
}

type frameKey struct {
	pack string
	off  int64
}

type cachedFrame struct {
	once sync.Once
	b    []byte
	err  error
}

func newFrameCache(n int) *frameCache {
	return &frameCache{frames: make(map[frameKey]*cachedFrame), max: n}
}

func (c *frameCache) get(pack string, off int64, read func() ([]byte, error)) ([]byte, error) {
	k := frameKey{pack, off}
	c.mu.Lock()
	f := c.frames[k]
	if f == nil {
		f = &cachedFrame{}
		c.frames[k] = f
		c.order = append(c.order, k)
		if len(c.order) > c.max {
			delete(c.frames, c.order[0])
			c.order = c.order[1:]
		}
	}
	c.mu.Unlock()
	f.once.Do(func() { f.b, f.err = read() })
	return f.b, f.err
}

// A Snapshot is a state of the backed-up store kept in the repository.
type Snapshot struct {
	// Name identifies the snapshot.
	Name string `json:"name"`
	// Time is when it was taken.
	Time time.Time `json:"time"`
	// Position is the position of the store's journal it holds.
	Position uint64 `json:"position"`
	// Lineage counts the full reads of the store: incremental changes
	// continue the snapshot of their lineage.
	Lineage uint32 `json:"lineage"`
	// Size is the size of its manifest in the repository.
	Size int64 `json:"size"`
}

func snapshotName(t time.Time, lineage uint32, pos uint64) string {
	return fmt.Sprintf("%s%016x-%08x-%016x", snapshotsPrefix, t.UnixNano(), lineage, pos)
}

func parseSnapshotName(bi BlobInfo) (Snapshot, bool) {
	parts := strings.Split(strings.TrimPrefix(bi.Name, snapshotsPrefix), "-")
	if !strings.HasPrefix(bi.Name, snapshotsPrefix) || len(parts) != 3 {
		return Snapshot{}, false
	}
	ns, err1 := strconv.ParseUint(parts[0], 16, 64)
	lin, err2 := strconv.ParseUint(parts[1], 16, 32)
	pos, err3 := strconv.ParseUint(parts[2], 16, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return Snapshot{}, false
	}
	return Snapshot{Name: bi.Name, Time: time.Unix(0, int64(ns)).UTC(), Lineage: uint32(lin), Position: pos, Size: bi.Size}, true
}

// Snapshots returns the repository's snapshots, oldest first.
func (r *Repo) Snapshots(ctx context.Context) ([]Snapshot, error) {
	list, err := r.t.List(ctx, snapshotsPrefix)
	if err != nil {
		return nil, err
	}
	var out []Snapshot
	for _, bi := range list {
		if s, ok := parseSnapshotName(bi); ok {
			out = append(out, s)
		} else {
			r.log.Warn("backup: ignoring a blob with a bad snapshot name", "name", bi.Name)
		}
	}
	slices.SortFunc(out, func(a, b Snapshot) int { return a.Time.Compare(b.Time) })
	return out, nil
}

// segment is a stored run of changes of one lineage.
type segment struct {
	name        string
	lineage     uint32
	first, last uint64
	size        int64
}

func segmentName(lineage uint32, first, last uint64) string {
	return fmt.Sprintf("%s%08x-%016x-%016x", changesPrefix, lineage, first, last)
}

func (r *Repo) segments(ctx context.Context) ([]segment, error) {
	list, err := r.t.List(ctx, changesPrefix)
	if err != nil {
		return nil, err
	}
	var out []segment
	for _, bi := range list {
		parts := strings.Split(strings.TrimPrefix(bi.Name, changesPrefix), "-")
		if len(parts) != 3 {
			r.log.Warn("backup: ignoring a blob with a bad change segment name", "name", bi.Name)
			continue
		}
		lin, err1 := strconv.ParseUint(parts[0], 16, 32)
		first, err2 := strconv.ParseUint(parts[1], 16, 64)
		last, err3 := strconv.ParseUint(parts[2], 16, 64)
		if err1 != nil || err2 != nil || err3 != nil || first > last {
			r.log.Warn("backup: ignoring a blob with a bad change segment name", "name", bi.Name)
			continue
		}
		out = append(out, segment{name: bi.Name, lineage: uint32(lin), first: first, last: last, size: bi.Size})
	}
	slices.SortFunc(out, func(a, b segment) int {
		if a.lineage != b.lineage {
			return int(a.lineage) - int(b.lineage)
		}
		if a.first != b.first {
			return cmpU64(a.first, b.first)
		}
		return cmpU64(a.last, b.last)
	})
	return out, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (r *Repo) readSnapshot(ctx context.Context, name string) (*state, error) {
	b, err := r.t.Get(ctx, name, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("backup: snapshot %s: %w", name, err)
	}
	p, err := r.c.open(kindSnapshot, b)
	if err != nil {
		return nil, fmt.Errorf("backup: snapshot %s: %w", name, err)
	}
	st, err := decodeManifest(p)
	if err != nil {
		return nil, fmt.Errorf("backup: snapshot %s: %w", name, err)
	}
	return st, nil
}

func (r *Repo) readSegment(ctx context.Context, name string) (string, []resilmail.Change, error) {
	b, err := r.t.Get(ctx, name, 0, -1)
	if err != nil {
		return "", nil, fmt.Errorf("backup: changes %s: %w", name, err)
	}
	p, err := r.c.open(kindChanges, b)
	if err != nil {
		return "", nil, fmt.Errorf("backup: changes %s: %w", name, err)
	}
	h, ch, err := decodeChanges(p)
	if err != nil {
		return "", nil, fmt.Errorf("backup: changes %s: %w", name, err)
	}
	return h, ch, nil
}

// view is a state read from the repository with where it came from.
type view struct {
	st      *state
	snap    Snapshot // the snapshot it starts from
	lineage uint32
	segs    []segment // the segments replayed after it
}

// load returns the state as of at (zero: the newest the repository holds):
// the newest snapshot taken at or before at, then the changes of its
// lineage after it, up to at. It returns a nil view for a repository with
// no snapshot.
func (r *Repo) load(ctx context.Context, at time.Time) (*view, error) {
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	var base *Snapshot
	for i := range snaps {
		if at.IsZero() || !snaps[i].Time.After(at) {
			base = &snaps[i]
		}
	}
	if base == nil {
		if len(snaps) > 0 && !at.IsZero() {
			return nil, fmt.Errorf("%w: the oldest snapshot is of %s, after %s", ErrNotCovered, snaps[0].Time.Format(time.RFC3339), at.Format(time.RFC3339))
		}
		return nil, nil
	}
	st, err := r.readSnapshot(ctx, base.Name)
	if err != nil {
		return nil, err
	}
	v := &view{st: st, snap: *base, lineage: base.Lineage}
	segs, err := r.segments(ctx)
	if err != nil {
		return nil, err
	}
	atNs := unixNano(at)
	for _, sg := range segs {
		if sg.lineage != base.Lineage || sg.last <= st.pos {
			continue
		}
		if sg.first > st.pos+1 {
			return nil, fmt.Errorf("%w: changes %d to %d of lineage %d are missing before %s", ErrCorrupt, st.pos+1, sg.first-1, sg.lineage, sg.name)
		}
		_, changes, err := r.readSegment(ctx, sg.name)
		if err != nil {
			return nil, err
		}
		done := false
		for i := range changes {
			c := &changes[i]
			if c.Seq <= st.pos {
				continue
			}
			if atNs != 0 && unixNano(c.Time) > atNs {
				done = true
				break
			}
			st.apply(c)
		}
		v.segs = append(v.segs, sg)
		if done {
			break
		}
	}
	return v, nil
}

// ErrNotCovered is returned for a point in time or a snapshot the
// repository does not hold.
var ErrNotCovered = errors.New("backup: not covered by the repository")
