package pool

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/bearer"
	"github.com/resilmail/resilmail/internal/durable"
)

// The files of a publisher's or a follower's folder. A follower's
// snapshot.json is a valid publisher snapshot.json: copying one into an
// empty folder rebuilds a publisher that lost its own.
const (
	polSnapshotFile = "snapshot.json"
	polHistoryFile  = "history.json"
	polKeyFile      = "signing.key" // the publisher's private key, PKCS #8 in PEM
)

// PublisherStatus describes a [Publisher] at one instant.
type PublisherStatus struct {
	// Version and Digest identify the current snapshot; zero before the
	// first Update.
	Version uint64
	Digest  resilmail.Digest
	// UpdatedAt is when the current version was published (or loaded).
	UpdatedAt time.Time
	// HistoryFrom is the oldest version a follower may run and still be
	// sent deltas rather than the full snapshot; HistoryLen is the number
	// of versions kept.
	HistoryFrom uint64
	HistoryLen  int
	// Followers are the followers heard from, most recent first.
	Followers []FollowerSeen
}

// FollowerSeen is what a publisher knows of one follower from its requests.
type FollowerSeen struct {
	// Name is the name the follower gave (FollowerOptions.Name), or its
	// network address without the port.
	Name string
	// Addr is the remote address of its last request.
	Addr string
	// Version is the version it ran at its last request.
	Version uint64
	// LastSeen is the time of its last request.
	LastSeen time.Time
}

// Publisher is the one node of a pool that owns the policy. It keeps the
// current snapshot and a bounded history of deltas in a folder, serves
// them to followers over HTTP (it is an http.Handler), and answers
// recipient checks for the node it runs on.
//
// Durability: Update returns only after the new snapshot is on stable
// storage, so the version a follower has seen is never lost and versions
// never go backwards across restarts. The delta history is written after
// the snapshot; a history that does not end at the snapshot's version is
// dropped when the folder is opened, and followers then fetch the full
// snapshot once.
//
// # HTTP
//
// GET <url>?since=<version>&wait=<duration>[&have=<digest>][&node=<name>]
// answers, once the request is authenticated (see AuthMode; otherwise 401):
//
//   - 200 with a snapshot or delta (see SnapshotFormat) when the current
//     version is above since: a delta from since when the history still
//     holds it and it is smaller than the snapshot, the full snapshot
//     otherwise (always for since=0);
//   - after waiting up to wait (capped by MaxWait) for a newer version when
//     since is current: 200 as above as soon as one is published, or 304
//     when the wait ends;
//   - 409 when since is above the current version, or equal with another
//     digest (have): the follower holds versions this publisher never made,
//     typically because the publisher lost its folder;
//   - 503 once the Publisher is closed, 400 for bad parameters.
//
// Every response carries "Mxpool-Version: <current version>" and, once
// there is a policy, "Mxpool-Seal: <its seal>" (pool, version, digest,
// key, issued and sig as URL query parameters), sealed again whenever the
// last seal is older than ResealEvery: a 304 proves the publisher alive at
// the seal's issue time. Before the
// first Update there is nothing to serve: requests wait, then get 304.
type Publisher struct {
	dir    string
	token  string
	pool   string
	opts   PublisherOptions
	log    *slog.Logger
	unlock func() error

	sem  chan struct{} // serialises Update; held by Close to wait for one
	done chan struct{} // closed by Close

	cur      atomic.Pointer[Snapshot]
	reserved uint64 // highest version ever assigned; guarded by sem

	mu        sync.Mutex
	key       ed25519.PrivateKey
	full      []byte         // cur encoded
	history   []pubHistEntry // contiguous, ending at cur.Version
	histBytes int64          // sum of the entries' sizes
	changed   chan struct{}  // closed and replaced when cur changes
	updatedAt time.Time      // when cur was published
	seen      map[string]*FollowerSeen
	closed    bool
}

// pubHistEntry holds the changes from version From to version To.
type pubHistEntry struct {
	From    uint64            `json:"from"`
	To      uint64            `json:"to"`
	Changes []json.RawMessage `json:"changes"`
	size    int64
}

// pubHistFile is the format of history.json.
type pubHistFile struct {
	Format  int            `json:"format"`
	Version uint64         `json:"version"`
	Deltas  []pubHistEntry `json:"deltas"`
}

// pubWireDelta is a delta as the publisher writes it (see SnapshotFormat):
// polWire with the changes already encoded.
type pubWireDelta struct {
	Format  int               `json:"format"`
	Kind    string            `json:"kind"`
	From    uint64            `json:"from"`
	Version uint64            `json:"version"`
	Digest  string            `json:"digest"`
	Pool    string            `json:"pool"`
	Key     string            `json:"key"`
	Issued  int64             `json:"issued"`
	Sig     string            `json:"sig"`
	Changes []json.RawMessage `json:"changes"`
}

// pubMaxSeen bounds the followers remembered.
const pubMaxSeen = 1024

// OpenPublisher opens, creating it if needed, the publisher folder dir and
// loads its current snapshot, delta history and signing key (making the
// key if there is none: see PublisherOptions.SigningKey). secret (at least
// 16 bytes) derives the bearer token followers present; it does not
// authenticate the policy, the signing key does. The folder is locked
// against a second Publisher.
//
// A stored snapshot of an unknown format, or one whose content does not
// match its digest, is refused with an error wrapping ErrPolicyFormat,
// ErrPolicyMalformed or ErrPolicyDigest: starting afresh at version 0
// would make every follower refuse the new versions. Replace it with a
// follower's snapshot.json to recover. Its seal is not checked (the folder
// is the publisher's own): it is sealed again with the current key, so a
// new key or pool name takes effect at once.
func OpenPublisher(dir string, secret []byte, opts *PublisherOptions) (*Publisher, error) {
	if len(secret) < polMinSecret {
		return nil, fmt.Errorf("pool: secret shorter than %d bytes", polMinSecret)
	}
	p := &Publisher{
		dir:     dir,
		token:   polToken(secret),
		sem:     make(chan struct{}, 1),
		done:    make(chan struct{}),
		changed: make(chan struct{}),
		seen:    map[string]*FollowerSeen{},
	}
	if opts != nil {
		p.opts = *opts
	}
	if p.opts.Auth > AuthTokenOrClientCert {
		return nil, fmt.Errorf("pool: unknown AuthMode %d", p.opts.Auth)
	}
	if p.opts.SigningKey != nil && len(p.opts.SigningKey) != ed25519.PrivateKeySize {
		return nil, errors.New("pool: SigningKey is not an ed25519 private key")
	}
	if p.pool = p.opts.Pool; p.pool == "" {
		p.pool = DefaultPool
	}
	if err := checkPoolName(p.pool); err != nil {
		return nil, err
	}
	if p.opts.ResealEvery <= 0 {
		p.opts.ResealEvery = 30 * time.Second
	}
	if p.log = p.opts.Logger; p.log == nil {
		p.log = slog.Default()
	}
	if p.opts.MaxWait <= 0 {
		p.opts.MaxWait = 60 * time.Second
	}
	if p.opts.MaxHistory == 0 {
		p.opts.MaxHistory = 1000
	}
	if p.opts.MaxHistoryBytes <= 0 {
		p.opts.MaxHistoryBytes = 8 << 20
	}
	if p.opts.Now == nil {
		p.opts.Now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pool: publisher folder: %w", err)
	}
	unlock, err := durable.Lock(dir)
	if err != nil {
		return nil, err
	}
	p.unlock = unlock
	if p.key = p.opts.SigningKey; p.key == nil {
		if p.key, err = pubLoadKey(dir); err != nil {
			unlock()
			return nil, err
		}
	}
	if err := p.pubLoad(); err != nil {
		unlock()
		return nil, err
	}
	p.log.Info("pool: publisher open", "pool", p.pool, "key", KeyID(p.key.Public().(ed25519.PublicKey)))
	return p, nil
}

// pubLoadKey reads the folder's signing key, making and storing one if
// there is none.
func pubLoadKey(dir string) (ed25519.PrivateKey, error) {
	path := filepath.Join(dir, polKeyFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		return key, pubStoreKey(dir, key)
	}
	if err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("pool: %s: not a PEM private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pool: %s: %w", path, err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("pool: %s: not an ed25519 key", path)
	}
	return key, nil
}

// pubStoreKey writes key as the folder's signing key, durably.
func pubStoreKey(dir string, key ed25519.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := durable.WriteFile(durable.OS, filepath.Join(dir, polKeyFile), data, 0o600); err != nil {
		return fmt.Errorf("pool: store the signing key: %w", err)
	}
	return nil
}

// PublicKey returns the public half of the key the publisher seals with:
// what every follower needs in its [Trust].
func (p *Publisher) PublicKey() ed25519.PublicKey {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.key.Public().(ed25519.PublicKey)
}

// Rotate makes key the publisher's signing key: it is stored in the folder
// (unless PublisherOptions.SigningKey was given) and the current version is
// sealed with it at once. Followers must already trust the new public key
// (see [Trust]); those that do go on without a pause, those that do not
// refuse the new seals and turn stale.
func (p *Publisher) Rotate(ctx context.Context, key ed25519.PrivateKey) error {
	if len(key) != ed25519.PrivateKeySize {
		return errors.New("pool: Rotate: not an ed25519 private key")
	}
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-p.done:
		return ErrPublisherClosed
	}
	defer func() { <-p.sem }()
	if p.opts.SigningKey == nil {
		if err := pubStoreKey(p.dir, key); err != nil {
			return err
		}
	}
	p.mu.Lock()
	p.key = key
	p.pubResealLocked(true)
	p.mu.Unlock()
	p.log.Warn("pool: signing key replaced", "key", KeyID(key.Public().(ed25519.PublicKey)))
	return nil
}

// pubResealLocked seals the current version again, now, when its seal is
// older than ResealEvery, or made with another key, or when force is set.
func (p *Publisher) pubResealLocked(force bool) {
	cur := p.cur.Load()
	if cur == nil {
		return
	}
	now := p.opts.Now()
	if !force && now.Sub(cur.Issued) < p.opts.ResealEvery && cur.KeyID == KeyID(p.key.Public().(ed25519.PublicKey)) {
		return
	}
	next := cur.resealed(sealWith(p.pool, cur.Version, cur.Digest, p.key, now))
	full, err := next.Encode()
	if err != nil {
		p.log.Error("pool: encode policy", "err", err)
		return
	}
	p.cur.Store(next)
	p.full = full
}

// pubCurrent returns the current snapshot, sealed within ResealEvery, and
// its encoding.
func (p *Publisher) pubCurrent() (*Snapshot, []byte, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pubResealLocked(false)
	return p.cur.Load(), p.full, p.changed
}

func (p *Publisher) pubLoad() error {
	path := filepath.Join(p.dir, polSnapshotFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		p.updatedAt = p.opts.Now()
		return nil
	}
	if err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	w, err := polDecodeWire(data)
	var snap *Snapshot
	if err == nil {
		snap, err = polSnapshotFromWire(w, nil)
	}
	if err != nil {
		p.log.Error("pool: stored policy refused", "path", path, "err", err)
		return fmt.Errorf("%s: %w", path, err)
	}
	p.cur.Store(snap)
	p.pubResealLocked(true)
	p.reserved = snap.Version
	if st, err := os.Stat(path); err == nil {
		p.updatedAt = st.ModTime()
	}
	hpath := filepath.Join(p.dir, polHistoryFile)
	hdata, err := os.ReadFile(hpath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	hist, err := pubDecodeHistory(hdata, snap.Version)
	if errors.Is(err, ErrPolicyFormat) {
		return fmt.Errorf("%s: %w", hpath, err)
	}
	if err != nil {
		// The history is an optimisation: without it followers fetch
		// the full snapshot once.
		p.log.Warn("pool: delta history dropped", "path", hpath, "err", err)
		return nil
	}
	p.history = hist
	for _, e := range hist {
		p.histBytes += e.size
	}
	p.pubTrimLocked()
	return nil
}

// pubDecodeHistory decodes history.json and checks that its deltas are
// well formed and chain up to version.
func pubDecodeHistory(data []byte, version uint64) ([]pubHistEntry, error) {
	var head struct {
		Format *int `json:"format"`
	}
	if err := json.Unmarshal(data, &head); err != nil || head.Format == nil {
		return nil, fmt.Errorf("%w: history is not a JSON object with a format", ErrPolicyMalformed)
	}
	if *head.Format != SnapshotFormat {
		return nil, fmt.Errorf("%w: history format %d, this build reads format %d", ErrPolicyFormat, *head.Format, SnapshotFormat)
	}
	var f pubHistFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicyMalformed, err)
	}
	if f.Version != version {
		return nil, fmt.Errorf("%w: history ends at version %d, snapshot is version %d", ErrPolicyMalformed, f.Version, version)
	}
	for i := range f.Deltas {
		e := &f.Deltas[i]
		if e.From >= e.To || len(e.Changes) == 0 || i > 0 && f.Deltas[i-1].To != e.From {
			return nil, fmt.Errorf("%w: history entry %d->%d out of sequence", ErrPolicyMalformed, e.From, e.To)
		}
		for _, raw := range e.Changes {
			var c polChange
			d := json.NewDecoder(bytes.NewReader(raw))
			d.DisallowUnknownFields()
			if err := d.Decode(&c); err != nil {
				return nil, fmt.Errorf("%w: history entry %d->%d: %v", ErrPolicyMalformed, e.From, e.To, err)
			}
			if err := c.validate(); err != nil {
				return nil, err
			}
			e.size += int64(len(raw))
		}
	}
	if n := len(f.Deltas); n > 0 && f.Deltas[n-1].To != version {
		return nil, fmt.Errorf("%w: history does not reach version %d", ErrPolicyMalformed, version)
	}
	return f.Deltas, nil
}

// Snapshot returns the current snapshot, or nil before the first Update.
// It must not be modified.
func (p *Publisher) Snapshot() *Snapshot { return p.cur.Load() }

// Check answers for rcpt with the current policy, which on the publisher
// is never stale; see [Policy.Check]. Before the first Update every
// recipient is deferred.
func (p *Publisher) Check(rcpt string) Verdict { return p.cur.Load().Check(rcpt) }

var _ Checker = (*Publisher)(nil)

// Publish replaces the whole policy with pol (which it does not modify);
// see [Publisher.Update].
func (p *Publisher) Publish(ctx context.Context, pol *Policy) (uint64, error) {
	return p.Update(ctx, func(q *Policy) error {
		*q = Policy{}
		if pol != nil {
			*q = *pol.Clone()
		}
		if q.Domains == nil {
			q.Domains = map[string]*DomainPolicy{}
		}
		return nil
	})
}

// Update changes the policy: fn receives a normalised deep copy of the
// current policy (an empty one before the first Update), edits it and
// returns nil to publish it or an error to abandon it. Update copies the
// result (so fn may keep what it put in) and normalises it; when it equals
// the current policy nothing is published and the current version is
// returned. Otherwise it stores the new snapshot durably, with the next
// version number, wakes every long-polling follower, and returns the new
// version.
//
// Updates are serialised: ctx bounds the wait for another one to finish.
// fn must not call Update. The error is fn's, a normalisation error, a
// storage error (the version is not published; the next Update uses a
// higher number), ctx's, or ErrPublisherClosed.
func (p *Publisher) Update(ctx context.Context, fn func(*Policy) error) (uint64, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-p.done:
		return 0, ErrPublisherClosed
	}
	defer func() { <-p.sem }()
	select {
	case <-p.done:
		return 0, ErrPublisherClosed
	default:
	}
	cur := p.cur.Load()
	var base *Policy
	var curVersion uint64
	if cur != nil {
		base, curVersion = cur.Policy, cur.Version
	}
	work := base.Clone()
	if work == nil {
		work = &Policy{Domains: map[string]*DomainPolicy{}}
	}
	if err := fn(work); err != nil {
		return curVersion, err
	}
	// fn may have stored values it still holds into work: the snapshot
	// gets a copy of its own, immutable from here on.
	work = work.Clone()
	if err := work.Normalize(); err != nil {
		return curVersion, err
	}
	digest := work.Digest()
	if cur != nil && digest == cur.Digest {
		return curVersion, nil
	}
	p.reserved++
	version := p.reserved
	p.mu.Lock()
	key := p.key
	p.mu.Unlock()
	snap := &Snapshot{Seal: sealWith(p.pool, version, digest, key, p.opts.Now()), Policy: work}
	full, err := snap.Encode()
	if err != nil {
		return curVersion, fmt.Errorf("pool: encode policy: %w", err)
	}
	if err := durable.WriteFile(durable.OS, filepath.Join(p.dir, polSnapshotFile), full, 0o600); err != nil {
		p.log.Error("pool: policy not published: cannot store it", "version", version, "err", err)
		return curVersion, fmt.Errorf("pool: store policy version %d: %w", version, err)
	}
	entry, nchanges := p.pubDelta(base, work, curVersion, version, digest)

	p.mu.Lock()
	if entry == nil {
		p.history, p.histBytes = nil, 0
	} else {
		p.history = append(p.history, *entry)
		p.histBytes += entry.size
		p.pubTrimLocked()
	}
	p.full = full
	p.cur.Store(snap)
	p.updatedAt = p.opts.Now()
	close(p.changed)
	p.changed = make(chan struct{})
	hist := pubHistFile{Format: SnapshotFormat, Version: version, Deltas: slices.Clone(p.history)}
	p.mu.Unlock()

	p.log.Info("pool: policy published", "version", version, "digest", digest.String(), "changes", nchanges)
	if data, err := json.Marshal(hist); err != nil {
		p.log.Error("pool: encode delta history", "err", err)
	} else if err := durable.WriteFile(durable.OS, filepath.Join(p.dir, polHistoryFile), data, 0o600); err != nil {
		p.log.Error("pool: delta history not stored; followers behind will fetch the full snapshot after a restart", "err", err)
	}
	return version, nil
}

// pubDelta returns the history entry from version from (policy base) to
// version to (policy work, whose digest is digest), or nil when there is
// none to keep.
func (p *Publisher) pubDelta(base, work *Policy, from, to uint64, digest resilmail.Digest) (*pubHistEntry, int) {
	if base == nil || p.opts.MaxHistory < 0 {
		return nil, 0
	}
	changes := polDiff(base, work)
	// The followers check the result's digest anyway; checking here
	// keeps a wrong delta from reaching them at all.
	if chk, err := polApply(base, changes); err != nil || chk.Digest() != digest {
		p.log.Error("pool: delta self-check failed; followers will fetch the full snapshot", "from", from, "to", to, "err", err)
		return nil, len(changes)
	}
	e := &pubHistEntry{From: from, To: to}
	for i := range changes {
		raw, err := json.Marshal(&changes[i])
		if err != nil {
			p.log.Error("pool: encode delta", "err", err)
			return nil, len(changes)
		}
		e.Changes = append(e.Changes, raw)
		e.size += int64(len(raw))
	}
	return e, len(changes)
}

// pubTrimLocked drops the oldest deltas beyond the history's bounds.
func (p *Publisher) pubTrimLocked() {
	drop := 0
	for drop < len(p.history) && (len(p.history)-drop > max(p.opts.MaxHistory, 0) || p.histBytes > p.opts.MaxHistoryBytes) {
		p.histBytes -= p.history[drop].size
		drop++
	}
	if drop > 0 {
		p.history = slices.Clone(p.history[drop:])
	}
}

// Status returns the publisher's current state.
func (p *Publisher) Status() PublisherStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := PublisherStatus{UpdatedAt: p.updatedAt, HistoryLen: len(p.history)}
	if cur := p.cur.Load(); cur != nil {
		st.Version, st.Digest = cur.Version, cur.Digest
		st.HistoryFrom = cur.Version
	}
	if len(p.history) > 0 {
		st.HistoryFrom = p.history[0].From
	}
	for _, s := range p.seen {
		st.Followers = append(st.Followers, *s)
	}
	slices.SortFunc(st.Followers, func(a, b FollowerSeen) int { return b.LastSeen.Compare(a.LastSeen) })
	return st
}

// Close ends every long poll in progress (they answer 503), waits for an
// Update in progress, and releases the folder. The caller still shuts down
// its http.Server. Close is idempotent.
func (p *Publisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	p.sem <- struct{}{} // wait for an Update in progress; none starts after done
	return p.unlock()
}

// polToken returns the bearer token that followers present: the hex HMAC
// of a fixed string under the pool's secret.
func polToken(secret []byte) string {
	return bearer.Token(secret, "resilmail/mxpool http token 1")
}

// ServeHTTP serves the policy to followers; see [Publisher] for the
// protocol.
func (p *Publisher) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case <-p.done:
		http.Error(w, "publisher closed", http.StatusServiceUnavailable)
		return
	default:
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if ok, why := p.pubAuthorized(r); !ok {
		p.log.Warn("pool: policy request refused", "remote", r.RemoteAddr, "reason", why)
		w.Header().Set("WWW-Authenticate", `Bearer realm="mxpool"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	q := r.URL.Query()
	var since uint64
	if s := q.Get("since"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			http.Error(w, "bad since", http.StatusBadRequest)
			return
		}
		since = v
	}
	var wait time.Duration
	if s := q.Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			http.Error(w, "bad wait", http.StatusBadRequest)
			return
		}
		wait = min(max(d, 0), p.opts.MaxWait)
	}
	have := q.Get("have")
	p.pubSaw(q.Get("node"), r.RemoteAddr, since)

	var timer <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timer = t.C
	}
	for {
		cur, full, changed := p.pubCurrent()
		var version uint64
		if cur != nil {
			version = cur.Version
			w.Header().Set(sealHeader, cur.Seal.header())
		}
		w.Header().Set("Mxpool-Version", strconv.FormatUint(version, 10))
		w.Header().Set("Cache-Control", "no-store")
		switch {
		case since > version || cur != nil && since == version && have != "" && have != cur.Digest.String():
			p.log.Warn("pool: follower ahead of the publisher", "remote", r.RemoteAddr, "node", q.Get("node"), "since", since, "version", version)
			http.Error(w, fmt.Sprintf("follower at version %d (%s) but publisher at %d: the follower holds versions this publisher never made", since, have, version), http.StatusConflict)
			return
		case since < version:
			p.pubSend(w, cur, full, since)
			return
		case timer == nil: // wait=0: answer at once
			w.WriteHeader(http.StatusNotModified)
			return
		}
		select {
		case <-changed:
		case <-timer:
			// The seal set before the wait may be as old as the wait:
			// send the one in force now.
			if cur, _, _ := p.pubCurrent(); cur != nil {
				w.Header().Set(sealHeader, cur.Seal.header())
			}
			w.WriteHeader(http.StatusNotModified)
			return
		case <-r.Context().Done():
			return
		case <-p.done:
			http.Error(w, "publisher closed", http.StatusServiceUnavailable)
			return
		}
	}
}

// pubAuthorized applies the AuthMode to r.
func (p *Publisher) pubAuthorized(r *http.Request) (bool, string) {
	cert := r.TLS != nil && len(r.TLS.VerifiedChains) > 0
	tok := bearer.Check(r, p.token) == nil
	switch p.opts.Auth {
	case AuthClientCert:
		return cert, "no verified client certificate"
	case AuthTokenOrClientCert:
		return cert || tok, "no valid token and no verified client certificate"
	default:
		return tok, "no valid bearer token"
	}
}

// pubSaw records a follower's request.
func (p *Publisher) pubSaw(node, remote string, since uint64) {
	name := node
	if len(name) > 64 {
		name = name[:64]
	}
	name = strings.Map(func(r rune) rune {
		if r <= ' ' || r >= 0x7f {
			return -1
		}
		return r
	}, name)
	if name == "" {
		name = remote
		if h, _, err := net.SplitHostPort(remote); err == nil {
			name = h
		}
	}
	now := p.opts.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.seen[name]; ok {
		s.Addr, s.Version, s.LastSeen = remote, since, now
		return
	}
	if len(p.seen) >= pubMaxSeen {
		var oldest string
		for k, s := range p.seen {
			if oldest == "" || s.LastSeen.Before(p.seen[oldest].LastSeen) {
				oldest = k
			}
		}
		delete(p.seen, oldest)
	}
	p.seen[name] = &FollowerSeen{Name: name, Addr: remote, Version: since, LastSeen: now}
}

// pubSend writes the changes since version since: a delta when the
// history holds them and it is smaller, else the full snapshot.
func (p *Publisher) pubSend(w http.ResponseWriter, cur *Snapshot, full []byte, since uint64) {
	p.mu.Lock()
	hist := p.history
	p.mu.Unlock()
	body := full
	if since > 0 {
		if d := pubDeltaSince(cur, hist, since, int64(len(full))); d != nil {
			body = d
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

// pubDeltaSince encodes the delta from since to cur out of hist, or
// returns nil when hist does not reach back to since or the delta would be
// larger than limit.
func pubDeltaSince(cur *Snapshot, hist []pubHistEntry, since uint64, limit int64) []byte {
	i, found := slices.BinarySearchFunc(hist, since, func(e pubHistEntry, v uint64) int {
		switch {
		case e.From < v:
			return -1
		case e.From > v:
			return 1
		}
		return 0
	})
	if !found {
		return nil
	}
	var size int64
	var changes []json.RawMessage
	for _, e := range hist[i:] {
		size += e.size
		if size > limit {
			return nil
		}
		changes = append(changes, e.Changes...)
	}
	d := pubWireDelta{
		Format:  SnapshotFormat,
		Kind:    polKindDelta,
		From:    since,
		Version: cur.Version,
		Digest:  cur.Digest.String(),
		Pool:    cur.Pool,
		Key:     cur.KeyID,
		Issued:  cur.Issued.UnixNano(),
		Sig:     hex.EncodeToString(cur.Signature),
		Changes: changes,
	}
	data, err := json.Marshal(d)
	if err != nil {
		return nil
	}
	return data
}
