package sts

// MTA-STS (RFC 8461): parsing of the "_mta-sts" TXT record and of the policy
// file, and the MTASTS fetcher with its cache.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/sync/singleflight"

	"github.com/resilmail/resilmail/internal/domainname"
	"github.com/resilmail/resilmail/internal/durable"
)

// Mode is the mode of an MTA-STS policy (RFC 8461 §5).
type Mode string

// The modes a policy may have.
const (
	// Enforce: deliver only to MX hosts that match the policy, over
	// TLS with a certificate valid for the host name.
	Enforce Mode = "enforce"
	// Testing: deliver as without a policy, but report failures.
	Testing Mode = "testing"
	// None: the domain has withdrawn its policy.
	None Mode = "none"
)

// MaxPolicyAge is the largest max_age a policy may declare: one year (RFC 8461
// §3.2).
const MaxPolicyAge = 31557600 * time.Second

// MaxPolicySize is the largest policy file accepted, the limit RFC 8461
// §3.3 suggests.
const MaxPolicySize = 64 << 10

// An Policy is a parsed MTA-STS policy. A policy returned by
// [MTASTS.Policy] is shared and must not be modified.
type Policy struct {
	Mode Mode
	// MX holds the policy's mx patterns in lower case, in the order given,
	// without duplicates: a host name, or "*." and a name for any host one
	// label below it.
	MX []string
	// MaxAge is the max_age the policy declares.
	MaxAge time.Duration

	// ID is the id of the TXT record the policy was fetched under; empty
	// from ParsePolicy.
	ID string
	// Expires is when the cached policy stops applying: the fetch time plus
	// MaxAge, capped by Options.MaxAge. Zero from ParsePolicy.
	Expires time.Time
}

// Match reports whether host, an MX host name in A-label (ASCII) form,
// matches one of the policy's mx patterns (RFC 8461 §4.1). Case is ignored,
// as is a trailing dot. A wildcard pattern "*.example.com" matches exactly
// one label more: "mx.example.com", but neither "example.com" nor
// "a.mx.example.com".
func (p *Policy) Match(host string) bool {
	host = strings.TrimSuffix(host, ".")
	if host == "" || strings.IndexByte(host, '*') >= 0 {
		return false
	}
	for _, pat := range p.MX {
		if rest, ok := strings.CutPrefix(pat, "*."); ok {
			i := strings.IndexByte(host, '.')
			if i > 0 && strings.EqualFold(host[i+1:], rest) {
				return true
			}
		} else if strings.EqualFold(host, pat) {
			return true
		}
	}
	return false
}

// String returns the policy in the policy file format, LF-terminated; it
// parses back to the same Mode, MX and MaxAge.
func (p *Policy) String() string {
	var b strings.Builder
	b.WriteString("version: STSv1\nmode: ")
	b.WriteString(string(p.Mode))
	b.WriteByte('\n')
	for _, mx := range p.MX {
		b.WriteString("mx: ")
		b.WriteString(mx)
		b.WriteByte('\n')
	}
	b.WriteString("max_age: ")
	b.WriteString(strconv.FormatInt(int64(p.MaxAge/time.Second), 10))
	b.WriteByte('\n')
	return b.String()
}

func stsSyntaxf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrSyntax}, args...)...)
}

// ParseRecord parses the text of one "_mta-sts.<domain>" TXT record (its
// strings joined without spaces) as RFC 8461 §3.1 defines it, e.g.
// "v=STSv1; id=20160831085700Z", and returns its id: 1 to 32 ASCII letters
// and digits. The record must begin with "v=STSv1"; fields are separated by
// ";" with optional white space; unknown fields are ignored (their syntax is
// still checked); of several id fields the first counts. A record that does
// not begin with "v=STSv1" gives an error wrapping ErrNotRecord, any other
// defect one wrapping ErrSyntax.
func ParseRecord(txt string) (id string, err error) {
	const version = "v=STSv1"
	rest, ok := strings.CutPrefix(txt, version)
	if !ok || rest != "" && rest[0] != ';' && rest[0] != ' ' && rest[0] != '\t' {
		return "", ErrNotRecord
	}
	for i := 0; i < len(txt); i++ {
		if txt[i] >= 0x80 || txt[i] < 0x20 && txt[i] != '\t' || txt[i] == 0x7f {
			return "", stsSyntaxf("record: byte %#x at offset %d is not printable US-ASCII", txt[i], i)
		}
	}
	found := false
	for {
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			break
		}
		if rest[0] != ';' {
			return "", stsSyntaxf("record: expected \";\" before %q", rest)
		}
		rest = strings.TrimLeft(rest[1:], " \t")
		if rest == "" {
			break // a trailing delimiter is allowed
		}
		end := strings.IndexAny(rest, "; \t")
		if end < 0 {
			end = len(rest)
		}
		field := rest[:end]
		rest = rest[end:]
		name, value, ok := strings.Cut(field, "=")
		if !ok || field == "" {
			return "", stsSyntaxf("record: field %q is not name=value", field)
		}
		if !stsValidFieldName(name) {
			return "", stsSyntaxf("record: invalid field name %q", name)
		}
		if value == "" || strings.ContainsRune(value, '=') {
			return "", stsSyntaxf("record: field %q has an invalid value", field)
		}
		if name == "id" && !found {
			if len(value) > 32 || !stsAlnum(value) {
				return "", stsSyntaxf("record: id %q is not 1 to 32 letters and digits", value)
			}
			id, found = value, true
		}
	}
	if !found {
		return "", stsSyntaxf("record: no id field")
	}
	return id, nil
}

// stsValidFieldName reports whether s is a field name as RFC 8461 allows
// for extensions: a letter or digit, then up to 31 letters, digits, "_",
// "-" or ".".
func stsValidFieldName(s string) bool {
	if s == "" || len(s) > 32 || !stsIsAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !stsIsAlnum(c) && c != '_' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

func stsIsAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func stsAlnum(s string) bool {
	for i := 0; i < len(s); i++ {
		if !stsIsAlnum(s[i]) {
			return false
		}
	}
	return s != ""
}

// ParsePolicy parses a policy file as RFC 8461 §3.2 defines it: lines
// "key: value" ended by LF or CRLF (the last one optionally unterminated).
// Keys and the values of version and mode are case-sensitive. version must
// be "STSv1"; mode "enforce", "testing" or "none"; max_age 1 to 10 digits, at
// most 31557600; each mx line holds one pattern, a domain name in A-label
// form optionally preceded by "*." (a wildcard only as the whole leftmost
// label). version, mode and max_age are required, and at least one mx
// unless mode is none. Of duplicated keys other than mx the first counts;
// unknown keys are ignored (their syntax is still checked). Blank lines
// are ignored. Errors wrap ErrSyntax and give the line number.
func ParsePolicy(text []byte) (*Policy, error) {
	if !utf8.Valid(text) {
		return nil, stsSyntaxf("policy is not valid UTF-8")
	}
	p := &Policy{}
	var haveVersion, haveMode, haveMaxAge bool
	seenMX := make(map[string]struct{})
	s := string(text)
	for n := 1; s != ""; n++ {
		line, rest, _ := strings.Cut(s, "\n")
		s = rest
		line = strings.TrimSuffix(line, "\r")
		if strings.Trim(line, " \t") == "" {
			continue
		}
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, stsSyntaxf("policy line %d: no \":\"", n)
		}
		if !stsValidFieldName(key) {
			return nil, stsSyntaxf("policy line %d: invalid key %q", n, key)
		}
		value = strings.Trim(value, " \t")
		if value == "" {
			return nil, stsSyntaxf("policy line %d: %s has no value", n, key)
		}
		for _, r := range value {
			if r < 0x20 || r == 0x7f {
				return nil, stsSyntaxf("policy line %d: %s: control character %q in value", n, key, r)
			}
		}
		switch key {
		case "version":
			if haveVersion {
				continue
			}
			haveVersion = true
			if value != "STSv1" {
				return nil, stsSyntaxf("policy line %d: unsupported version %q, want STSv1", n, value)
			}
		case "mode":
			if haveMode {
				continue
			}
			haveMode = true
			switch m := Mode(value); m {
			case Enforce, Testing, None:
				p.Mode = m
			default:
				return nil, stsSyntaxf("policy line %d: mode %q is not enforce, testing or none", n, value)
			}
		case "max_age":
			if haveMaxAge {
				continue
			}
			haveMaxAge = true
			if len(value) > 10 || !stsDigits(value) {
				return nil, stsSyntaxf("policy line %d: max_age %q is not 1 to 10 digits", n, value)
			}
			secs, _ := strconv.ParseInt(value, 10, 64) // 10 digits fit
			if secs > int64(MaxPolicyAge/time.Second) {
				return nil, stsSyntaxf("policy line %d: max_age %d exceeds %d", n, secs, int64(MaxPolicyAge/time.Second))
			}
			p.MaxAge = time.Duration(secs) * time.Second
		case "mx":
			pat := strings.ToLower(value)
			if err := stsValidPattern(pat); err != nil {
				return nil, stsSyntaxf("policy line %d: mx %q: %v", n, value, err)
			}
			if _, dup := seenMX[pat]; !dup {
				seenMX[pat] = struct{}{}
				p.MX = append(p.MX, pat)
			}
		}
	}
	switch {
	case !haveVersion:
		return nil, stsSyntaxf("policy has no version")
	case !haveMode:
		return nil, stsSyntaxf("policy has no mode")
	case !haveMaxAge:
		return nil, stsSyntaxf("policy has no max_age")
	case len(p.MX) == 0 && p.Mode != None:
		return nil, stsSyntaxf("policy in mode %s has no mx", p.Mode)
	}
	return p, nil
}

func stsDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// stsValidPattern checks a lower-case mx pattern: ["*."] Domain.
func stsValidPattern(pat string) error {
	name := strings.TrimPrefix(pat, "*.")
	if strings.IndexByte(name, '*') >= 0 {
		return errors.New("a wildcard may only be the whole leftmost label")
	}
	return domainname.CheckName(name)
}

// stsDomain returns domain, given in A-label form, in the canonical form
// used as cache key: lower case, without a trailing dot, checked by
// internal/domainname.
func stsDomain(domain string) (string, error) {
	d := strings.ToLower(strings.TrimSuffix(domain, "."))
	if err := domainname.CheckName(d); err != nil {
		return "", fmt.Errorf("sts: MTA-STS: domain %q: %w", domain, err)
	}
	return d, nil
}

// MTASTS learns the MTA-STS policies of recipient domains (RFC 8461 §3, §5)
// and caches them. It is safe for concurrent use.
//
// [MTASTS.Policy] looks up the "_mta-sts" TXT record on each call. A
// cached, unexpired policy with the record's id is returned without a
// fetch; otherwise the policy is fetched from
// https://mta-sts.<domain>/.well-known/mta-sts.txt and cached for its
// max_age (capped by Options.MaxAge). A policy past half its lifetime,
// or older than a day, is fetched again before it expires. While a cached
// policy is unexpired it stays in force when the record disappears, when
// the lookup fails and when a fetch fails; only a newly fetched policy,
// mode none included, replaces it.
//
// The only goroutine MTASTS starts runs one fetch shared by the callers
// that wait for it. It runs to the end of the fetch (bounded by
// Options.FetchTimeout) even when every caller has given up, so that
// the result is cached, and then exits.
type MTASTS struct {
	resolver     TXTResolver
	client       http.Client
	dir          string
	maxAge       time.Duration
	fetchTimeout time.Duration
	retryAfter   time.Duration
	now          func() time.Time
	log          *slog.Logger

	flight singleflight.Group

	lookups, hits, fetches, fetchErrors, staleUses atomic.Uint64

	mu      sync.Mutex
	entries map[string]*stsEntry  // by domain
	failed  map[string]stsFailure // by domain: the last failed fetch
}

type stsEntry struct {
	policy  *Policy // ID and Expires set
	fetched time.Time
	refresh time.Time // fetch again from then on, keeping this one if that fails
}

type stsFailure struct {
	id    string
	until time.Time
	err   error
}

// Open returns an MTASTS that looks records up with r. When opts.Dir
// is set it creates the folder if needed and loads the policies cached
// there: this is Open's only I/O. A cache file of unknown format
// version makes it fail with an error wrapping ErrCacheVersion; a
// damaged file is renamed aside (suffix ".corrupt") and logged.
func Open(r TXTResolver, opts *Options) (*MTASTS, error) {
	if r == nil {
		return nil, errors.New("sts: Open: nil TXTResolver")
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	m := &MTASTS{
		resolver:     r,
		dir:          o.Dir,
		maxAge:       o.MaxAge,
		fetchTimeout: o.FetchTimeout,
		retryAfter:   o.RetryAfter,
		now:          o.Now,
		log:          o.Logger,
		entries:      make(map[string]*stsEntry),
		failed:       make(map[string]stsFailure),
	}
	for _, f := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"MaxAge", &m.maxAge, MaxPolicyAge},
		{"FetchTimeout", &m.fetchTimeout, time.Minute},
		{"RetryAfter", &m.retryAfter, 5 * time.Minute},
	} {
		if *f.v < 0 {
			return nil, fmt.Errorf("sts: negative Options.%s", f.name)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if o.HTTPClient != nil {
		m.client = *o.HTTPClient
	}
	m.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	if m.now == nil {
		m.now = time.Now
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	if m.dir != "" {
		if err := m.stsLoad(); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Policy returns the MTA-STS policy that applies to mail for domain (in
// A-label form), or nil, nil when the domain has none: no "_mta-sts" TXT
// record, several, or an invalid one, and no cached policy. A policy in
// mode none is returned as such. When the policy cannot be learnt and no
// unexpired policy is cached the error is an *Error (temporary; RFC 8461
// says to deliver as without a policy). Concurrent calls for one domain
// share one fetch. Policy returns ctx's error when ctx is done first.
func (m *MTASTS) Policy(ctx context.Context, domain string) (*Policy, error) {
	d, err := stsDomain(domain)
	if err != nil {
		return nil, err
	}
	m.lookups.Add(1)
	txt, lerr := m.resolver.LookupTXT(ctx, "_mta-sts."+d)
	now := m.now()
	cached := m.stsCached(d, now)
	if lerr != nil {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if cached != nil {
			m.staleUses.Add(1)
			m.log.Warn("mta-sts: record lookup failed, cached policy still applies",
				"domain", d, "sts_id", cached.policy.ID, "expires", cached.policy.Expires, "err", lerr)
			return cached.policy, nil
		}
		return nil, &Error{Domain: d, Op: "lookup", Err: lerr}
	}
	id, n, rerr := stsPickRecord(txt)
	if n != 1 || rerr != nil {
		if n > 1 {
			m.log.Warn("mta-sts: several records, ignored", "domain", d, "records", n)
		} else if rerr != nil {
			m.log.Warn("mta-sts: invalid record, ignored", "domain", d, "err", rerr)
		}
		if cached != nil {
			m.hits.Add(1)
			m.log.Debug("mta-sts: no usable record, cached policy still applies",
				"domain", d, "sts_id", cached.policy.ID, "expires", cached.policy.Expires)
			return cached.policy, nil
		}
		m.stsForgetExpired(d, now)
		return nil, nil
	}
	if cached != nil && cached.policy.ID == id && now.Before(cached.refresh) {
		m.hits.Add(1)
		return cached.policy, nil
	}
	fctx := context.WithoutCancel(ctx)
	ch := m.flight.DoChan(d+" "+id, func() (any, error) { return m.stsFetchAndStore(fctx, d, id) })
	var r singleflight.Result
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case r = <-ch:
	}
	if r.Err != nil {
		if cached != nil {
			m.staleUses.Add(1)
			m.log.Debug("mta-sts: no fresh policy, cached policy still applies",
				"domain", d, "sts_id", id, "cached_id", cached.policy.ID, "expires", cached.policy.Expires, "err", r.Err)
			return cached.policy, nil
		}
		return nil, &Error{Domain: d, Op: "fetch", ID: id, Err: r.Err}
	}
	return r.Val.(*stsEntry).policy, nil
}

// stsPickRecord applies RFC 8461 §3.1 to the TXT records at "_mta-sts":
// records not beginning with "v=STSv1" are discarded, and n counts the
// others. Only when n is 1 and err is nil is id usable.
func stsPickRecord(txts []string) (id string, n int, err error) {
	for _, txt := range txts {
		rid, rerr := ParseRecord(txt)
		if errors.Is(rerr, ErrNotRecord) {
			continue
		}
		n++
		id, err = rid, rerr
	}
	return id, n, err
}

// stsCached returns the unexpired cached entry of d, or nil.
func (m *MTASTS) stsCached(d string, now time.Time) *stsEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[d]
	if e == nil || !now.Before(e.policy.Expires) {
		return nil
	}
	return e
}

// stsForgetExpired drops an expired policy of d from memory and disk.
func (m *MTASTS) stsForgetExpired(d string, now time.Time) {
	m.mu.Lock()
	e := m.entries[d]
	if e == nil || now.Before(e.policy.Expires) {
		m.mu.Unlock()
		return
	}
	delete(m.entries, d)
	m.mu.Unlock()
	if m.dir != "" {
		if err := os.Remove(m.stsPath(d)); err != nil && !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("mta-sts: removing expired cache file", "domain", d, "err", err)
		}
	}
}

// stsFetchAndStore runs inside the singleflight of (d, id): it fetches the
// policy published under id, unless another flight has just done so or
// failed to, and caches and persists it.
func (m *MTASTS) stsFetchAndStore(ctx context.Context, d, id string) (*stsEntry, error) {
	now := m.now()
	m.mu.Lock()
	if e := m.entries[d]; e != nil && e.policy.ID == id && now.Before(e.refresh) && now.Before(e.policy.Expires) {
		m.mu.Unlock()
		return e, nil
	}
	if f, ok := m.failed[d]; ok && f.id == id && now.Before(f.until) {
		m.mu.Unlock()
		return nil, f.err
	}
	m.mu.Unlock()

	m.fetches.Add(1)
	text, p, err := m.stsFetch(ctx, d)
	now = m.now()
	if err != nil {
		m.fetchErrors.Add(1)
		m.mu.Lock()
		m.failed[d] = stsFailure{id: id, until: now.Add(m.retryAfter), err: err}
		cached := m.entries[d]
		m.mu.Unlock()
		if cached != nil && now.Before(cached.policy.Expires) {
			m.log.Warn("mta-sts: policy fetch failed, cached policy still applies",
				"domain", d, "sts_id", id, "cached_id", cached.policy.ID, "expires", cached.policy.Expires,
				"retry_in", m.retryAfter, "err", err)
		} else {
			m.log.Warn("mta-sts: policy fetch failed, no cached policy", "domain", d, "sts_id", id,
				"retry_in", m.retryAfter, "err", err)
		}
		return nil, err
	}
	e := stsNewEntry(p, id, now, m.maxAge)
	if m.dir != "" && e.policy.Expires.After(now) {
		if err := m.stsWrite(d, e, text); err != nil {
			m.log.Error("mta-sts: persisting policy failed; it applies until restart", "domain", d, "sts_id", id, "err", err)
		}
	}
	m.mu.Lock()
	m.entries[d] = e
	delete(m.failed, d)
	m.mu.Unlock()
	m.log.Info("mta-sts: policy fetched", "domain", d, "sts_id", id, "mode", p.Mode, "expires", e.policy.Expires)
	return e, nil
}

// stsNewEntry sets the policy's id and expiry for a fetch at fetched.
func stsNewEntry(p *Policy, id string, fetched time.Time, maxAge time.Duration) *stsEntry {
	life := min(p.MaxAge, maxAge)
	p.ID = id
	p.Expires = fetched.Add(life)
	return &stsEntry{policy: p, fetched: fetched, refresh: fetched.Add(min(life/2, 24*time.Hour))}
}

// stsFetch fetches and parses d's policy file.
func (m *MTASTS) stsFetch(ctx context.Context, d string) ([]byte, *Policy, error) {
	ctx, cancel := context.WithTimeout(ctx, m.fetchTimeout)
	defer cancel()
	url := "https://mta-sts." + d + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := m.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return nil, nil, fmt.Errorf("%w: %s to %q, not followed", ErrRedirect, resp.Status, resp.Header.Get("Location"))
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("%w: %s", ErrStatus, resp.Status)
	}
	ct := resp.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "text/plain" {
		return nil, nil, fmt.Errorf("%w: Content-Type %q", ErrMediaType, ct)
	}
	if resp.ContentLength > MaxPolicySize {
		return nil, nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, resp.ContentLength, MaxPolicySize)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicySize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", url, err)
	}
	if len(body) > MaxPolicySize {
		return nil, nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, MaxPolicySize)
	}
	p, err := ParsePolicy(body)
	if err != nil {
		return nil, nil, err
	}
	return body, p, nil
}

// CacheEntry describes one cached policy, for status pages.
type CacheEntry struct {
	Domain  string    // the policy domain
	ID      string    // the id of the record the policy was fetched under
	Mode    Mode      // enforce, testing or none
	MX      []string  // the mx patterns
	Fetched time.Time // when the policy was last fetched
	Expires time.Time // when it stops applying unless fetched again
}

// Cached lists the unexpired cached policies, sorted by domain.
func (m *MTASTS) Cached() []CacheEntry {
	now := m.now()
	m.mu.Lock()
	out := make([]CacheEntry, 0, len(m.entries))
	for d, e := range m.entries {
		if !now.Before(e.policy.Expires) {
			continue
		}
		out = append(out, CacheEntry{
			Domain:  d,
			ID:      e.policy.ID,
			Mode:    e.policy.Mode,
			MX:      slices.Clone(e.policy.MX),
			Fetched: e.fetched,
			Expires: e.policy.Expires,
		})
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b CacheEntry) int { return strings.Compare(a.Domain, b.Domain) })
	return out
}

// Stats counts an MTASTS's work since it was made.
type Stats struct {
	Cached      int    // unexpired cached policies
	Lookups     uint64 // Policy calls that looked up a TXT record
	CacheHits   uint64 // calls answered from the cache without a fetch
	Fetches     uint64 // policy fetches started
	FetchErrors uint64 // of which failed
	StaleUses   uint64 // calls answered from the cache because a lookup or fetch failed
}

// Stats returns the counters.
func (m *MTASTS) Stats() Stats {
	now := m.now()
	m.mu.Lock()
	n := 0
	for _, e := range m.entries {
		if now.Before(e.policy.Expires) {
			n++
		}
	}
	m.mu.Unlock()
	return Stats{
		Cached:      n,
		Lookups:     m.lookups.Load(),
		CacheHits:   m.hits.Load(),
		Fetches:     m.fetches.Load(),
		FetchErrors: m.fetchErrors.Load(),
		StaleUses:   m.staleUses.Load(),
	}
}

// The cache folder holds one file per domain, named "<domain>.sts":
//
//	mxpool-mta-sts <version> <body length> <CRC-32C of body, 8 hex digits>\n
//	<body: JSON stsFile>
//
// The policy is kept as fetched and parsed again on load.
const (
	stsFileMagic   = "mxpool-mta-sts"
	stsFileVersion = 1
	stsFileSuffix  = ".sts"
	stsFileMax     = 1 << 20
)

var stsCRC = crc32.MakeTable(crc32.Castagnoli)

type stsFile struct {
	Domain  string    `json:"domain"`
	ID      string    `json:"id"`
	Fetched time.Time `json:"fetched"`
	Expires time.Time `json:"expires"`
	Policy  string    `json:"policy"`
}

func (m *MTASTS) stsPath(d string) string { return filepath.Join(m.dir, d+stsFileSuffix) }

// stsWrite persists e, whose policy text is text, durably.
func (m *MTASTS) stsWrite(d string, e *stsEntry, text []byte) error {
	body, err := json.Marshal(stsFile{
		Domain:  d,
		ID:      e.policy.ID,
		Fetched: e.fetched.UTC(),
		Expires: e.policy.Expires.UTC(),
		Policy:  string(text),
	})
	if err != nil {
		return err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %d %d %08x\n", stsFileMagic, stsFileVersion, len(body), crc32.Checksum(body, stsCRC))
	b.Write(body)
	return durable.WriteFile(durable.OS, m.stsPath(d), b.Bytes(), 0o644)
}

// errSTSCorrupt marks a cache file that cannot be read back.
var errSTSCorrupt = errors.New("damaged cache file")

// stsDecodeFile decodes a cache file's content.
func stsDecodeFile(data []byte) (stsFile, *Policy, error) {
	var f stsFile
	header, body, ok := bytes.Cut(data, []byte{'\n'})
	fields := strings.Fields(string(header))
	if !ok || len(fields) != 4 || fields[0] != stsFileMagic {
		return f, nil, fmt.Errorf("%w: bad header", errSTSCorrupt)
	}
	version, err := strconv.Atoi(fields[1])
	if err != nil {
		return f, nil, fmt.Errorf("%w: bad version %q", errSTSCorrupt, fields[1])
	}
	if version != stsFileVersion {
		return f, nil, fmt.Errorf("%w: version %d, this code reads %d", ErrCacheVersion, version, stsFileVersion)
	}
	n, err1 := strconv.Atoi(fields[2])
	sum, err2 := strconv.ParseUint(fields[3], 16, 32)
	if err1 != nil || err2 != nil || n != len(body) || uint32(sum) != crc32.Checksum(body, stsCRC) {
		return f, nil, fmt.Errorf("%w: length or checksum mismatch", errSTSCorrupt)
	}
	if err := json.Unmarshal(body, &f); err != nil {
		return f, nil, fmt.Errorf("%w: %v", errSTSCorrupt, err)
	}
	p, err := ParsePolicy([]byte(f.Policy))
	if err != nil {
		return f, nil, fmt.Errorf("%w: %v", errSTSCorrupt, err)
	}
	if _, err := ParseRecord("v=STSv1; id=" + f.ID); err != nil {
		return f, nil, fmt.Errorf("%w: id %q", errSTSCorrupt, f.ID)
	}
	return f, p, nil
}

// stsLoad creates the cache folder if needed and loads its policies.
func (m *MTASTS) stsLoad() error {
	if err := os.MkdirAll(m.dir, 0o755); err != nil {
		return fmt.Errorf("sts: MTA-STS cache: %w", err)
	}
	des, err := os.ReadDir(m.dir)
	if err != nil {
		return fmt.Errorf("sts: MTA-STS cache: %w", err)
	}
	now := m.now()
	for _, de := range des {
		name := de.Name()
		d, ok := strings.CutSuffix(name, stsFileSuffix)
		if !ok || strings.HasPrefix(name, ".") || !de.Type().IsRegular() {
			continue
		}
		path := filepath.Join(m.dir, name)
		data, err := stsReadFile(path)
		if err != nil {
			return fmt.Errorf("sts: MTA-STS cache: %w", err)
		}
		f, p, err := stsDecodeFile(data)
		if err == nil && f.Domain != d {
			err = fmt.Errorf("%w: holds domain %q", errSTSCorrupt, f.Domain)
		}
		if errors.Is(err, ErrCacheVersion) {
			return fmt.Errorf("%w: %s: %v", ErrCacheVersion, path, err)
		}
		if err != nil {
			aside := path + ".corrupt"
			m.log.Error("mta-sts: damaged cache file renamed aside", "file", path, "renamed", aside, "err", err)
			if rerr := os.Rename(path, aside); rerr != nil {
				return fmt.Errorf("sts: MTA-STS cache: %s: %v; renaming it aside: %w", path, err, rerr)
			}
			continue
		}
		e := stsNewEntry(p, f.ID, f.Fetched, m.maxAge)
		if f.Expires.Before(e.policy.Expires) {
			e.policy.Expires = f.Expires
		}
		if !now.Before(e.policy.Expires) {
			if err := os.Remove(path); err != nil {
				m.log.Warn("mta-sts: removing expired cache file", "file", path, "err", err)
			}
			continue
		}
		m.entries[d] = e
	}
	return nil
}

func stsReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, stsFileMax))
}
