package pool

// The pool's shared inbound policy: what it contains, its normal form, its
// canonical digest, the authenticated snapshot and delta formats, and the
// recipient check that every MX of the pool answers identically.

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/domainname"
	"github.com/resilmail/resilmail/mxpool"
)

// SnapshotFormat is the version of the policy wire and disk format that this
// package writes and the only one it reads. A snapshot, delta or stored file
// with any other "format" is refused with [ErrPolicyFormat].
//
// Format 2 is JSON. A snapshot is
//
//	{"format":2,"kind":"snapshot","version":V,"digest":"<hex>","pool":"<name>",
//	 "key":"<key id>","issued":<unix ns>,"sig":"<hex>","policy":{...}}
//
// and a delta, the changes that turn version "from" into version "version",
//
//	{"format":2,"kind":"delta","from":F,"version":V,"digest":"<hex>",
//	 "pool":"<name>","key":"<key id>","issued":<unix ns>,"sig":"<hex>",
//	 "changes":[...]}
//
// where digest is the [Policy.Digest] of the resulting policy and pool,
// key, issued and sig are its [Seal]: sig is the publisher's ed25519
// signature of
//
//	M = "resilmail/mxpool seal\x00" || uint32(format) || uint8(len(pool)) || pool
//	    || uint8(len(key)) || key || int64(issued) || uint64(V) || digest
//
// (big-endian; key is the [KeyID] of the public key, issued nanoseconds
// since 1970). A delta carries exactly the seal of the snapshot it
// produces: the changes themselves are not signed, the result is, because
// the follower recomputes its digest before using it. Unknown JSON fields
// are refused. Format 1 authenticated with an HMAC of the shared secret
// instead, which every follower could forge, and had no issue time.
const SnapshotFormat = 2

// Limits on a policy's content. They bound the work a malformed or hostile
// snapshot can cause and follow RFC 5321 §4.5.3.1.
const (
	// MaxLocalLen is the longest local part, in octets, as received.
	MaxLocalLen = 64
	// MaxDomainLen is the longest domain, in octets of its A-label form.
	MaxDomainLen = 253
	// MaxAddressLen is the longest address (local@domain), in octets as
	// received.
	MaxAddressLen = 254
	// MaxAliasTargets is the most targets one alias may have.
	MaxAliasTargets = 1000
)

// polMinSecret is the shortest secret accepted for the bearer tokens
// followers present.
const polMinSecret = 16

// SpamAction says what the MX does with a message that is spam for its
// domain (see [DomainPolicy.IsSpam]).
type SpamAction string

// The spam actions. [Policy.Normalize] turns the empty SpamAction into
// SpamQuarantine.
const (
	SpamQuarantine       SpamAction = "quarantine"        // keep it in quarantine, tell the sender 250
	SpamQuarantineRefuse SpamAction = "quarantine-refuse" // keep it in quarantine, tell the sender 550 5.7.1
	SpamReject           SpamAction = "reject"            // refuse it at end of data with 550 5.7.1, keep nothing
	SpamDeliver          SpamAction = "deliver"           // tag it (X-Spam headers) and deliver it
	SpamAccept           SpamAction = "accept"            // deliver it as it is
)

// Refuses reports whether a spam message for a domain with action a gets a
// 5xx reply (reject, quarantine-refuse) rather than 250.
func (a SpamAction) Refuses() bool { return a == SpamReject || a == SpamQuarantineRefuse }

// ScannerProfile names the content scanner every MX of the pool must run
// and the rules it applies, so that a parity check (and each MX, on every
// verdict) can tell that all of them judge mail alike.
type ScannerProfile struct {
	// Name is the scanner's name as its verdicts report it ("rspamd").
	Name string `json:"name"`
	// Version is the scanner's version, or a prefix of it at a dot ("3.4"
	// matches 3.4 and 3.4.1); empty means any version.
	Version string `json:"version,omitempty"`
	// Settings names the scanner's rule set to apply (rspamd's settings
	// id); empty means its defaults.
	Settings string `json:"settings,omitempty"`
}

// Matches reports whether a verdict's scanner, named as "name version"
// ("rspamd 3.4"), is the one the profile asks for.
func (sp *ScannerProfile) Matches(scanner string) bool {
	if sp == nil {
		return true
	}
	name, version, _ := strings.Cut(scanner, " ")
	if name != sp.Name {
		return false
	}
	return sp.Version == "" || version == sp.Version || strings.HasPrefix(version, sp.Version+".")
}

// String returns "name version [settings]".
func (sp *ScannerProfile) String() string {
	if sp == nil {
		return ""
	}
	s := sp.Name
	if sp.Version != "" {
		s += " " + sp.Version
	}
	if sp.Settings != "" {
		s += " [" + sp.Settings + "]"
	}
	return s
}

func sameScanner(a, b *ScannerProfile) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

func (sp *ScannerProfile) validate() error {
	if sp == nil {
		return nil
	}
	for _, f := range []string{sp.Name, sp.Version, sp.Settings} {
		if len(f) > 64 || strings.IndexFunc(f, func(r rune) bool { return r <= ' ' || r >= 0x7f }) >= 0 {
			return fmt.Errorf("pool: scanner profile field %q: at most 64 printable ASCII characters without spaces", f)
		}
	}
	if sp.Name == "" {
		return errors.New("pool: scanner profile without a name")
	}
	return nil
}

// Policy is the inbound policy that every MX of a pool applies: which
// domains it accepts mail for, which recipients and aliases exist in each,
// spam handling per domain, the message size limit, and routes.
//
// A Policy is plain data. Build or edit it freely, then call
// [Policy.Normalize]; every Policy held by a [Snapshot], a [Publisher] or a
// [Follower] is in normal form and must not be modified. [Policy.Check] and
// [Policy.Digest] expect normal form.
type Policy struct {
	// Domains maps each accepted domain, in normal form its lower-case
	// A-label (IDNA, RFC 5890), to its policy. A domain not listed is not
	// accepted (relay denied). Normalize converts U-labels and upper case.
	Domains map[string]*DomainPolicy `json:"domains"`
	// MaxMessageSize is the largest message accepted, in octets; zero means
	// no limit.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`
	// Routes are the pool's next hops for inbound delivery (for instance
	// the pool's domains to the active mail server over LMTP). In normal
	// form they are sorted by Domain, at most one per Domain.
	Routes []mxpool.Route `json:"routes,omitempty"`
	// Scanner, if set, is the content scanner every MX must run: a verdict
	// from another scanner or version is no verdict (the MX answers as
	// when its scanner is down).
	Scanner *ScannerProfile `json:"scanner,omitempty"`
}

// DomainPolicy is the part of a [Policy] for one domain.
//
// Local parts are compared case-insensitively: normal form is
// strings.ToLower of the local part (simple Unicode lower-casing, no
// Unicode normalisation), so "Bob" and "bob" are one recipient and
// SMTPUTF8 local parts such as "Jörg" work. Quoted local parts are unquoted
// first ("\"bob\"" is "bob"). A local part may not contain white space,
// control characters, '@', '"', '\\', '<' or '>'.
type DomainPolicy struct {
	// AcceptAll accepts every local part of the domain (a catch-all).
	// Aliases still resolve. A catch-all MX is a source of backscatter;
	// list recipients instead when you can.
	AcceptAll bool `json:"accept_all,omitempty"`
	// Recipients lists the valid local parts. In normal form they are
	// lower case, sorted and unique. "postmaster" is always accepted
	// (RFC 5321 §4.5.1) and need not be listed.
	Recipients []string `json:"recipients,omitempty"`
	// Aliases maps a local part to the addresses mail for it goes to. In
	// normal form keys are lower case, targets are normalised addresses,
	// sorted and unique, and no key is also a recipient.
	Aliases map[string][]string `json:"aliases,omitempty"`
	// Subaddress lists the characters that separate a local part from a
	// tag ("+" makes bob+lists an address of bob); empty: no subaddressing.
	// ASCII punctuation other than '@', '"' and '\\'; sorted and unique in
	// normal form.
	Subaddress string `json:"subaddress,omitempty"`
	// SpamThreshold is the spam score at or above which SpamAction applies;
	// zero means the scanner's own judgement decides: a message it would
	// reject is spam (see [DomainPolicy.IsSpam]).
	SpamThreshold float64 `json:"spam_threshold,omitempty"`
	// SpamAction is what happens to spam; empty means SpamQuarantine.
	SpamAction SpamAction `json:"spam_action,omitempty"`
}

// IsSpam reports whether a message with this score, which the scanner
// itself would (scannerRejects) or would not reject, is spam for the
// domain: a score at or above SpamThreshold, or, with no threshold, the
// scanner's reject. A nil DomainPolicy (postmaster without a domain) uses
// the scanner's judgement.
func (d *DomainPolicy) IsSpam(score float64, scannerRejects bool) bool {
	if d == nil || d.SpamThreshold == 0 {
		return scannerRejects
	}
	return score >= d.SpamThreshold
}

// Clone returns a deep copy of p.
func (p *Policy) Clone() *Policy {
	if p == nil {
		return nil
	}
	c := &Policy{MaxMessageSize: p.MaxMessageSize, Routes: slices.Clone(p.Routes)}
	if p.Scanner != nil {
		sp := *p.Scanner
		c.Scanner = &sp
	}
	if p.Domains != nil {
		c.Domains = make(map[string]*DomainPolicy, len(p.Domains))
		for name, dp := range p.Domains {
			c.Domains[name] = dp.Clone()
		}
	}
	return c
}

// Clone returns a deep copy of d.
func (d *DomainPolicy) Clone() *DomainPolicy {
	if d == nil {
		return nil
	}
	c := *d
	c.Recipients = slices.Clone(d.Recipients)
	if d.Aliases != nil {
		c.Aliases = make(map[string][]string, len(d.Aliases))
		for k, v := range d.Aliases {
			c.Aliases[k] = slices.Clone(v)
		}
	}
	return &c
}

// Normalize puts p in normal form in place: domain names become lower-case
// A-labels, local parts lower case, alias targets normalised addresses,
// lists sorted and de-duplicated, an empty SpamAction SpamQuarantine. It
// returns an error, and leaves p partly normalised, when p holds something
// invalid: a bad domain or local part, two spellings of one domain, an
// alias that is also a recipient, a negative size, an unknown spam action.
func (p *Policy) Normalize() error {
	if p.MaxMessageSize < 0 {
		return fmt.Errorf("pool: negative message size limit %d", p.MaxMessageSize)
	}
	if err := p.Scanner.validate(); err != nil {
		return err
	}
	for i := range p.Routes {
		r := &p.Routes[i]
		if r.Domain != "*" {
			d, err := polDomainToASCII(r.Domain)
			if err != nil {
				return fmt.Errorf("pool: route: %w", err)
			}
			r.Domain = d
		}
		if err := polCheckRouteHost(r.Host); err != nil {
			return err
		}
	}
	slices.SortStableFunc(p.Routes, func(a, b mxpool.Route) int { return strings.Compare(a.Domain, b.Domain) })
	for i := 1; i < len(p.Routes); i++ {
		if p.Routes[i].Domain == p.Routes[i-1].Domain {
			return fmt.Errorf("pool: two routes for %q", p.Routes[i].Domain)
		}
	}
	doms := make(map[string]*DomainPolicy, len(p.Domains))
	for _, name := range slices.Sorted(maps.Keys(p.Domains)) {
		dp := p.Domains[name]
		a, err := polDomainToASCII(name)
		if err != nil {
			return fmt.Errorf("pool: %w", err)
		}
		if dp == nil {
			return fmt.Errorf("pool: domain %q has no policy", name)
		}
		if _, dup := doms[a]; dup {
			return fmt.Errorf("pool: domain %q listed twice", a)
		}
		if err := dp.polNormalize(a); err != nil {
			return err
		}
		doms[a] = dp
	}
	p.Domains = doms
	return nil
}

func (d *DomainPolicy) polNormalize(domain string) error {
	recips := make([]string, 0, len(d.Recipients))
	for _, l := range d.Recipients {
		n, err := polNormLocal(l)
		if err != nil {
			return fmt.Errorf("pool: domain %q: recipient: %w", domain, err)
		}
		recips = append(recips, n)
	}
	slices.Sort(recips)
	d.Recipients = slices.Compact(recips)
	if len(d.Recipients) == 0 {
		d.Recipients = nil
	}
	if len(d.Aliases) > 0 {
		al := make(map[string][]string, len(d.Aliases))
		for _, k := range slices.Sorted(maps.Keys(d.Aliases)) {
			n, err := polNormLocal(k)
			if err != nil {
				return fmt.Errorf("pool: domain %q: alias: %w", domain, err)
			}
			if _, dup := al[n]; dup {
				return fmt.Errorf("pool: domain %q: alias %q listed twice", domain, n)
			}
			if _, found := slices.BinarySearch(d.Recipients, n); found {
				return fmt.Errorf("pool: domain %q: %q is both a recipient and an alias", domain, n)
			}
			ts, err := polNormTargets(d.Aliases[k])
			if err != nil {
				return fmt.Errorf("pool: domain %q: alias %q: %w", domain, n, err)
			}
			al[n] = ts
		}
		d.Aliases = al
	} else {
		d.Aliases = nil
	}
	sub := []byte(d.Subaddress)
	for _, c := range sub {
		if !polSubaddressChar(c) {
			return fmt.Errorf("pool: domain %q: %q cannot separate a subaddress", domain, c)
		}
	}
	slices.Sort(sub)
	d.Subaddress = string(slices.Compact(sub))
	if math.IsNaN(d.SpamThreshold) || math.IsInf(d.SpamThreshold, 0) || d.SpamThreshold < 0 {
		return fmt.Errorf("pool: domain %q: bad spam threshold %v", domain, d.SpamThreshold)
	}
	if d.SpamThreshold == 0 {
		d.SpamThreshold = 0 // -0 becomes +0
	}
	if d.SpamAction == "" {
		d.SpamAction = SpamQuarantine
	}
	if !polKnownSpamAction(d.SpamAction) {
		return fmt.Errorf("pool: domain %q: unknown spam action %q", domain, d.SpamAction)
	}
	return nil
}

func polNormTargets(ts []string) ([]string, error) {
	if len(ts) == 0 {
		return nil, errors.New("no targets")
	}
	if len(ts) > MaxAliasTargets {
		return nil, fmt.Errorf("%d targets, more than %d", len(ts), MaxAliasTargets)
	}
	out := make([]string, 0, len(ts))
	for _, t := range ts {
		n, err := polNormAddress(t)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func polKnownSpamAction(a SpamAction) bool {
	return a == SpamQuarantine || a == SpamQuarantineRefuse || a == SpamReject || a == SpamDeliver || a == SpamAccept
}

// polSubaddressChar reports whether c may separate a subaddress: the
// punctuation of RFC 5322 atext, and '.'.
func polSubaddressChar(c byte) bool {
	return strings.IndexByte("!#$%&'*+-./=?^_`{|}~", c) >= 0
}

// polCheckRouteHost checks a Route's Host: printable ASCII without spaces.
func polCheckRouteHost(h string) error {
	if h == "" || len(h) > 1024 {
		return fmt.Errorf("pool: route host %q is empty or too long", h)
	}
	for i := 0; i < len(h); i++ {
		if h[i] <= ' ' || h[i] >= 0x7f {
			return fmt.Errorf("pool: route host %q has a forbidden character", h)
		}
	}
	return nil
}

// Names: local parts, addresses, domains (IDNA).

// polNormLocal returns the normal form of a local part as received: quotes
// removed, lower case. It refuses an empty local part, one longer than
// MaxLocalLen octets, invalid UTF-8 and forbidden characters.
func polNormLocal(l string) (string, error) {
	if len(l) > MaxLocalLen {
		return "", fmt.Errorf("local part longer than %d octets", MaxLocalLen)
	}
	if len(l) >= 2 && l[0] == '"' && l[len(l)-1] == '"' {
		var b strings.Builder
		for i := 1; i < len(l)-1; i++ {
			c := l[i]
			if c == '\\' && i+1 < len(l)-1 {
				i++
				c = l[i]
			} else if c == '\\' || c == '"' {
				return "", errors.New("badly quoted local part")
			}
			b.WriteByte(c)
		}
		l = b.String()
	}
	if l == "" {
		return "", errors.New("empty local part")
	}
	if err := polCheckLocalChars(l); err != nil {
		return "", err
	}
	return strings.ToLower(l), nil
}

func polCheckLocalChars(l string) error {
	ascii := true
	for i := 0; i < len(l); i++ {
		c := l[i]
		if c >= utf8.RuneSelf {
			ascii = false
			break
		}
		if c <= ' ' || c == 0x7f || c == '@' || c == '"' || c == '\\' || c == '<' || c == '>' {
			return fmt.Errorf("local part has a forbidden character %q", c)
		}
	}
	if ascii {
		return nil
	}
	for _, r := range l {
		switch {
		case r == utf8.RuneError:
			return errors.New("local part is not valid UTF-8")
		case r <= ' ' || r == 0x7f || r == '@' || r == '"' || r == '\\' || r == '<' || r == '>',
			unicode.IsSpace(r), unicode.IsControl(r), unicode.Is(unicode.Cs, r), unicode.Is(unicode.Co, r):
			return fmt.Errorf("local part has a forbidden character %q", r)
		}
	}
	return nil
}

// polValidLocal reports whether l is a local part in normal form. Lower
// casing can lengthen a local part, hence the bound of three times
// MaxLocalLen.
func polValidLocal(l string) bool {
	return l != "" && len(l) <= 3*MaxLocalLen && polCheckLocalChars(l) == nil && strings.ToLower(l) == l
}

// polNormAddress returns the normal form local@a-label of an address.
func polNormAddress(a string) (string, error) {
	l, d, err := polSplitAddress(a)
	if err != nil {
		return "", err
	}
	return l + "@" + d, nil
}

// polSplitAddress normalises an address and returns its local part and
// domain. A domain literal ("[192.0.2.1]") is refused.
func polSplitAddress(a string) (local, domain string, err error) {
	if len(a) > MaxAddressLen {
		return "", "", fmt.Errorf("address longer than %d octets", MaxAddressLen)
	}
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return "", "", fmt.Errorf("address %q is not local@domain", a)
	}
	local, err = polNormLocal(a[:at])
	if err != nil {
		return "", "", err
	}
	domain, err = polDomainToASCII(a[at+1:])
	if err != nil {
		return "", "", err
	}
	return local, domain, nil
}

func polValidAddress(a string) bool {
	at := strings.LastIndexByte(a, '@')
	return at > 0 && polValidLocal(a[:at]) && polValidDomain(a[at+1:])
}

// polValidDomain reports whether d is a domain in normal form.
func polValidDomain(d string) bool {
	n, err := polDomainToASCII(d)
	return err == nil && n == d
}

// polDomainToASCII returns the normal form of a domain name as the planner
// computes it: lower case, A-labels for non-ASCII labels (IDNA lookup
// rules, UTS #46 mapping), length limits checked. Unlike the planner it
// refuses a trailing dot, which an address may not have.
func polDomainToASCII(d string) (string, error) {
	if d == "" {
		return "", errors.New("empty domain")
	}
	if strings.HasSuffix(d, ".") {
		return "", fmt.Errorf("domain %q: trailing dot", d)
	}
	a, err := domainname.ToASCII(d)
	if err != nil {
		return "", fmt.Errorf("domain %q: %w", d, err)
	}
	return a, nil
}

// Normal form checks for decoded input.

// polValidate checks that p is in normal form, as a snapshot from a
// publisher must be. It is cheaper than normalising a copy and comparing.
func polValidate(p *Policy) error {
	if p.MaxMessageSize < 0 {
		return fmt.Errorf("%w: negative message size limit", ErrPolicyMalformed)
	}
	if err := p.Scanner.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrPolicyMalformed, err)
	}
	if err := polValidateRoutes(p.Routes); err != nil {
		return err
	}
	for name, dp := range p.Domains {
		if !polValidDomain(name) {
			return fmt.Errorf("%w: domain %q is not in normal form", ErrPolicyMalformed, name)
		}
		if dp == nil {
			return fmt.Errorf("%w: domain %q has no policy", ErrPolicyMalformed, name)
		}
		if err := polValidateSettings(name, polSettingsOf(dp)); err != nil {
			return err
		}
		if err := polValidateLocals(name, dp.Recipients); err != nil {
			return err
		}
		for k, ts := range dp.Aliases {
			if !polValidLocal(k) {
				return fmt.Errorf("%w: domain %q: alias %q is not in normal form", ErrPolicyMalformed, name, k)
			}
			if _, found := slices.BinarySearch(dp.Recipients, k); found {
				return fmt.Errorf("%w: domain %q: %q is both a recipient and an alias", ErrPolicyMalformed, name, k)
			}
			if err := polValidateTargets(ts); err != nil {
				return fmt.Errorf("%w: domain %q: alias %q: %v", ErrPolicyMalformed, name, k, err)
			}
		}
	}
	return nil
}

func polValidateRoutes(rs []mxpool.Route) error {
	for i, r := range rs {
		if r.Domain != "*" && !polValidDomain(r.Domain) {
			return fmt.Errorf("%w: route domain %q is not in normal form", ErrPolicyMalformed, r.Domain)
		}
		if err := polCheckRouteHost(r.Host); err != nil {
			return fmt.Errorf("%w: %v", ErrPolicyMalformed, err)
		}
		if i > 0 && rs[i-1].Domain >= r.Domain {
			return fmt.Errorf("%w: routes out of order or repeated at %q", ErrPolicyMalformed, r.Domain)
		}
	}
	return nil
}

// polValidateLocals checks a sorted, unique list of normal local parts.
func polValidateLocals(domain string, ls []string) error {
	for i, l := range ls {
		if !polValidLocal(l) {
			return fmt.Errorf("%w: domain %q: recipient %q is not in normal form", ErrPolicyMalformed, domain, l)
		}
		if i > 0 && ls[i-1] >= l {
			return fmt.Errorf("%w: domain %q: recipients out of order or repeated at %q", ErrPolicyMalformed, domain, l)
		}
	}
	return nil
}

func polValidateTargets(ts []string) error {
	if len(ts) == 0 || len(ts) > MaxAliasTargets {
		return fmt.Errorf("%d targets", len(ts))
	}
	for i, t := range ts {
		if !polValidAddress(t) {
			return fmt.Errorf("target %q is not in normal form", t)
		}
		if i > 0 && ts[i-1] >= t {
			return fmt.Errorf("targets out of order or repeated at %q", t)
		}
	}
	return nil
}

// polSettings are a domain's settings other than its recipients and aliases.
type polSettings struct {
	AcceptAll     bool       `json:"accept_all,omitempty"`
	Subaddress    string     `json:"subaddress,omitempty"`
	SpamThreshold float64    `json:"spam_threshold,omitempty"`
	SpamAction    SpamAction `json:"spam_action"`
}

func polSettingsOf(d *DomainPolicy) polSettings {
	return polSettings{AcceptAll: d.AcceptAll, Subaddress: d.Subaddress, SpamThreshold: d.SpamThreshold, SpamAction: d.SpamAction}
}

func (s polSettings) apply(d *DomainPolicy) {
	d.AcceptAll, d.Subaddress, d.SpamThreshold, d.SpamAction = s.AcceptAll, s.Subaddress, s.SpamThreshold, s.SpamAction
}

func polValidateSettings(domain string, s polSettings) error {
	for i := 0; i < len(s.Subaddress); i++ {
		if !polSubaddressChar(s.Subaddress[i]) || i > 0 && s.Subaddress[i-1] >= s.Subaddress[i] {
			return fmt.Errorf("%w: domain %q: subaddress separators %q not in normal form", ErrPolicyMalformed, domain, s.Subaddress)
		}
	}
	if math.IsNaN(s.SpamThreshold) || math.IsInf(s.SpamThreshold, 0) || s.SpamThreshold < 0 || math.Signbit(s.SpamThreshold) {
		return fmt.Errorf("%w: domain %q: bad spam threshold", ErrPolicyMalformed, domain)
	}
	if !polKnownSpamAction(s.SpamAction) {
		return fmt.Errorf("%w: domain %q: unknown spam action %q", ErrPolicyMalformed, domain, s.SpamAction)
	}
	return nil
}

// Digest: the canonical encoding.

// Digest returns the SHA-256 of p's canonical encoding; p must be in normal
// form. Two policies in normal form have the same Digest exactly when they
// have the same content, on every node and with every version of this
// package that writes the same [SnapshotFormat].
//
// The canonical encoding is the string "resilmail/mxpool policy 1\n" then,
// with u(x) a uvarint, s(x) = u(len(x)) || x and b(x) one byte 0 or 1:
//
//	u(MaxMessageSize) u(len(Routes)) { s(Domain) s(Host) b(LMTP) }
//	u(len(Domains)) for each domain in byte order:
//	  s(name) b(AcceptAll) s(Subaddress) uint64be(float bits of SpamThreshold)
//	  s(SpamAction) u(len(Recipients)) { s(local) }
//	  u(len(Aliases)) for each alias in byte order: s(local) u(len(targets)) { s(target) }
//	then, only when Scanner is set: s("scanner") s(Name) s(Version) s(Settings)
//
// (the encoding without a scanner is self-delimiting, so the suffix keeps
// the digests of policies without one as they were).
func (p *Policy) Digest() resilmail.Digest {
	h := sha256.New()
	w := bufio.NewWriterSize(h, 64<<10)
	var buf [binary.MaxVarintLen64]byte
	u := func(x uint64) { w.Write(buf[:binary.PutUvarint(buf[:], x)]) }
	s := func(x string) { u(uint64(len(x))); w.WriteString(x) }
	bit := func(x bool) {
		if x {
			w.WriteByte(1)
		} else {
			w.WriteByte(0)
		}
	}
	w.WriteString("resilmail/mxpool policy 1\n")
	if p == nil {
		p = &Policy{}
	}
	u(uint64(p.MaxMessageSize))
	u(uint64(len(p.Routes)))
	for _, r := range p.Routes {
		s(r.Domain)
		s(r.Host)
		bit(r.LMTP)
	}
	u(uint64(len(p.Domains)))
	for _, name := range slices.Sorted(maps.Keys(p.Domains)) {
		d := p.Domains[name]
		if d == nil {
			d = &DomainPolicy{}
		}
		s(name)
		bit(d.AcceptAll)
		s(d.Subaddress)
		var f [8]byte
		binary.BigEndian.PutUint64(f[:], math.Float64bits(d.SpamThreshold))
		w.Write(f[:])
		s(string(d.SpamAction))
		u(uint64(len(d.Recipients)))
		for _, l := range d.Recipients {
			s(l)
		}
		u(uint64(len(d.Aliases)))
		for _, k := range slices.Sorted(maps.Keys(d.Aliases)) {
			s(k)
			u(uint64(len(d.Aliases[k])))
			for _, t := range d.Aliases[k] {
				s(t)
			}
		}
	}
	if sp := p.Scanner; sp != nil {
		s("scanner")
		s(sp.Name)
		s(sp.Version)
		s(sp.Settings)
	}
	w.Flush()
	var dg resilmail.Digest
	h.Sum(dg[:0])
	return dg
}

// Snapshots.

// Snapshot is one version of a pool's policy with its publisher's [Seal]
// (whose Version and Digest are the snapshot's). A Snapshot and its
// Policy are immutable once made: share them freely, modify neither.
type Snapshot struct {
	Seal
	// Policy is the policy, in normal form.
	Policy *Policy
}

// NewSnapshot makes version version of the policy p in the pool pool,
// sealed with key at issued. It normalises a copy of p and leaves p alone.
func NewSnapshot(p *Policy, version uint64, pool string, key ed25519.PrivateKey, issued time.Time) (*Snapshot, error) {
	if version == 0 {
		return nil, errors.New("pool: snapshot version 0")
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("pool: the signing key is not an ed25519 private key")
	}
	if err := checkPoolName(pool); err != nil {
		return nil, err
	}
	c := p.Clone()
	if c == nil {
		c = &Policy{}
	}
	if err := c.Normalize(); err != nil {
		return nil, err
	}
	return &Snapshot{Seal: sealWith(pool, version, c.Digest(), key, issued), Policy: c}, nil
}

// resealed returns s with seal, which must be of the same version and
// digest.
func (s *Snapshot) resealed(seal Seal) *Snapshot {
	return &Snapshot{Seal: seal, Policy: s.Policy}
}

// Verify checks that s is authentic and intact: its seal verifies with
// trust, and its Policy is in normal form and hashes to its Digest.
func (s *Snapshot) Verify(trust Trust) error {
	if err := trust.verify(&s.Seal); err != nil {
		return err
	}
	return s.verifyContent()
}

// verifyContent checks that s's Policy is in normal form and hashes to its
// Digest.
func (s *Snapshot) verifyContent() error {
	if s.Policy == nil {
		return fmt.Errorf("%w: no policy", ErrPolicyMalformed)
	}
	if err := polValidate(s.Policy); err != nil {
		return err
	}
	if d := s.Policy.Digest(); d != s.Digest {
		return fmt.Errorf("%w: version %d declares %s, content hashes to %s", ErrPolicyDigest, s.Version, s.Digest, d)
	}
	return nil
}

// polWire is the JSON form of a snapshot or a delta (see SnapshotFormat).
type polWire struct {
	Format  int         `json:"format"`
	Kind    string      `json:"kind"`
	From    uint64      `json:"from,omitempty"`
	Version uint64      `json:"version"`
	Digest  string      `json:"digest"`
	Pool    string      `json:"pool"`
	Key     string      `json:"key"`
	Issued  int64       `json:"issued"`
	Sig     string      `json:"sig"`
	Policy  *Policy     `json:"policy,omitempty"`
	Changes []polChange `json:"changes,omitempty"`
}

const (
	polKindSnapshot = "snapshot"
	polKindDelta    = "delta"
)

// Encode returns the wire and disk form of s (see SnapshotFormat): the JSON
// that encoding/json would write for it, produced faster because a large
// pool's snapshot is encoded on every change.
func (s *Snapshot) Encode() ([]byte, error) {
	b := make([]byte, 0, 256+polEncodedSize(s.Policy))
	b = append(b, `{"format":`...)
	b = strconv.AppendInt(b, SnapshotFormat, 10)
	b = append(b, `,"kind":"snapshot","version":`...)
	b = strconv.AppendUint(b, s.Version, 10)
	b = append(b, `,"digest":"`...)
	b = hex.AppendEncode(b, s.Digest[:])
	b = append(b, `","pool":`...)
	b = polAppendString(b, s.Pool)
	b = append(b, `,"key":`...)
	b = polAppendString(b, s.KeyID)
	b = append(b, `,"issued":`...)
	b = strconv.AppendInt(b, s.Issued.UnixNano(), 10)
	b = append(b, `,"sig":"`...)
	b = hex.AppendEncode(b, s.Signature)
	b = append(b, `","policy":`...)
	b, err := polAppendPolicy(b, s.Policy)
	if err != nil {
		return nil, err
	}
	return append(b, '}'), nil
}

// polEncodedSize estimates the size of p's JSON.
func polEncodedSize(p *Policy) int {
	n := 0
	if p != nil {
		for name, d := range p.Domains {
			n += len(name) + 128
			if d != nil {
				for _, l := range d.Recipients {
					n += len(l) + 3
				}
				n += 64 * len(d.Aliases)
			}
		}
	}
	return n
}

// polAppendPolicy appends p's JSON as encoding/json writes it (struct
// fields in order, map keys sorted, omitempty honoured).
func polAppendPolicy(b []byte, p *Policy) ([]byte, error) {
	if p == nil {
		return append(b, "null"...), nil
	}
	b = append(b, `{"domains":`...)
	if p.Domains == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '{')
		for i, name := range slices.Sorted(maps.Keys(p.Domains)) {
			if i > 0 {
				b = append(b, ',')
			}
			b = polAppendString(b, name)
			b = append(b, ':')
			var err error
			if b, err = polAppendDomain(b, p.Domains[name]); err != nil {
				return nil, err
			}
		}
		b = append(b, '}')
	}
	if p.MaxMessageSize != 0 {
		b = append(b, `,"max_message_size":`...)
		b = strconv.AppendInt(b, p.MaxMessageSize, 10)
	}
	if len(p.Routes) > 0 {
		r, err := json.Marshal(p.Routes)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"routes":`...)
		b = append(b, r...)
	}
	if p.Scanner != nil {
		sc, err := json.Marshal(p.Scanner)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"scanner":`...)
		b = append(b, sc...)
	}
	return append(b, '}'), nil
}

func polAppendDomain(b []byte, d *DomainPolicy) ([]byte, error) {
	if d == nil {
		return append(b, "null"...), nil
	}
	b = append(b, '{')
	n := len(b)
	field := func(name string) {
		if len(b) > n {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, `":`...)
	}
	strs := func(ls []string) {
		b = append(b, '[')
		for i, l := range ls {
			if i > 0 {
				b = append(b, ',')
			}
			b = polAppendString(b, l)
		}
		b = append(b, ']')
	}
	if d.AcceptAll {
		field("accept_all")
		b = append(b, "true"...)
	}
	if len(d.Recipients) > 0 {
		field("recipients")
		strs(d.Recipients)
	}
	if len(d.Aliases) > 0 {
		field("aliases")
		b = append(b, '{')
		for i, k := range slices.Sorted(maps.Keys(d.Aliases)) {
			if i > 0 {
				b = append(b, ',')
			}
			b = polAppendString(b, k)
			b = append(b, ':')
			if d.Aliases[k] == nil {
				b = append(b, "null"...)
			} else {
				strs(d.Aliases[k])
			}
		}
		b = append(b, '}')
	}
	if d.Subaddress != "" {
		field("subaddress")
		b = polAppendString(b, d.Subaddress)
	}
	if d.SpamThreshold != 0 {
		f, err := json.Marshal(d.SpamThreshold)
		if err != nil {
			return nil, err
		}
		field("spam_threshold")
		b = append(b, f...)
	}
	if d.SpamAction != "" {
		field("spam_action")
		b = polAppendString(b, string(d.SpamAction))
	}
	return append(b, '}'), nil
}

// polAppendString appends s as a JSON string, as encoding/json writes it.
func polAppendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // cannot fail for a string
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// polDecodeWire decodes a snapshot or a delta without checking its meaning.
// It reads the format first, so that a future format is reported as such
// rather than as unknown fields.
func polDecodeWire(data []byte) (*polWire, error) {
	var head struct {
		Format *int `json:"format"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicyMalformed, err)
	}
	if head.Format == nil {
		return nil, fmt.Errorf("%w: no format field", ErrPolicyMalformed)
	}
	if *head.Format == 1 {
		// Format 1's HMAC could be forged by any follower: it is not
		// read, and a follower fetches the policy again.
		return nil, fmt.Errorf("%w: format 1 (authenticated by the shared secret) is no longer read", ErrPolicyMalformed)
	}
	if *head.Format != SnapshotFormat {
		return nil, fmt.Errorf("%w: format %d, this build reads format %d", ErrPolicyFormat, *head.Format, SnapshotFormat)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var w polWire
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicyMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the document", ErrPolicyMalformed)
	}
	return &w, nil
}

// polDecodeSeal decodes w's seal without verifying it.
func polDecodeSeal(w *polWire) (Seal, error) {
	s := Seal{Pool: w.Pool, Version: w.Version, KeyID: w.Key, Issued: time.Unix(0, w.Issued)}
	var err error
	if s.Digest, err = resilmail.ParseDigest(w.Digest); err != nil {
		return s, fmt.Errorf("%w: %v", ErrPolicyMalformed, err)
	}
	if s.Signature, err = hex.DecodeString(w.Sig); err != nil || len(s.Signature) != ed25519.SignatureSize {
		return s, fmt.Errorf("%w: sig is not %d hex-encoded bytes", ErrPolicyMalformed, ed25519.SignatureSize)
	}
	if w.Issued <= 0 {
		return s, fmt.Errorf("%w: no issue time", ErrPolicyMalformed)
	}
	return s, nil
}

// DecodeSnapshot decodes and verifies a snapshot in the form Encode
// writes: the format must be SnapshotFormat ([ErrPolicyFormat]), the
// document well formed and its policy in normal form ([ErrPolicyMalformed]),
// the seal must verify with trust ([ErrPolicyAuth]), and the policy must
// hash to the declared digest ([ErrPolicyDigest]). Whether the version is
// newer than one already held, and the seal recent, is for the caller to
// check.
func DecodeSnapshot(data []byte, trust Trust) (*Snapshot, error) {
	w, err := polDecodeWire(data)
	if err != nil {
		return nil, err
	}
	return polSnapshotFromWire(w, &trust)
}

// polSnapshotFromWire makes the snapshot w holds and verifies it: its seal
// with trust, unless trust is nil, and its content always.
func polSnapshotFromWire(w *polWire, trust *Trust) (*Snapshot, error) {
	if w.Kind != polKindSnapshot {
		return nil, fmt.Errorf("%w: kind %q where a snapshot was expected", ErrPolicyMalformed, w.Kind)
	}
	if w.Version == 0 || w.From != 0 || w.Changes != nil || w.Policy == nil {
		return nil, fmt.Errorf("%w: a snapshot needs a version above 0 and a policy, and no from or changes", ErrPolicyMalformed)
	}
	seal, err := polDecodeSeal(w)
	if err != nil {
		return nil, err
	}
	s := &Snapshot{Seal: seal, Policy: w.Policy}
	if trust != nil {
		err = s.Verify(*trust)
	} else {
		err = s.verifyContent()
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Deltas.

// The operations of a delta.
const (
	polOpSetGlobal        = "set_global"        // MaxMessageSize, Routes and Scanner
	polOpSetDomain        = "set_domain"        // create a domain or change its settings
	polOpRemoveDomain     = "remove_domain"     // with its recipients and aliases
	polOpAddRecipients    = "add_recipients"    // Locals, none present yet
	polOpRemoveRecipients = "remove_recipients" // Locals, all present
	polOpSetAlias         = "set_alias"         // Local -> Targets, added or replaced
	polOpRemoveAlias      = "remove_alias"      // Local, present
)

// polChange is one operation of a delta. Only the fields its Op uses may be
// set.
type polChange struct {
	Op             string          `json:"op"`
	Domain         string          `json:"domain,omitempty"`
	Local          string          `json:"local,omitempty"`
	Locals         []string        `json:"locals,omitempty"`
	Targets        []string        `json:"targets,omitempty"`
	Settings       *polSettings    `json:"settings,omitempty"`
	MaxMessageSize *int64          `json:"max_message_size,omitempty"`
	Routes         []mxpool.Route  `json:"routes,omitempty"`
	Scanner        *ScannerProfile `json:"scanner,omitempty"`
}

// validate checks that c is well formed and names things in normal form.
func (c *polChange) validate() error {
	bad := func(why string) error {
		return fmt.Errorf("%w: change %q: %s", ErrPolicyMalformed, c.Op, why)
	}
	// fields lists which optional fields the op uses: domain, local,
	// locals, targets, settings, global.
	var fields string
	switch c.Op {
	case polOpSetGlobal:
		fields = "global"
	case polOpSetDomain:
		fields = "domain settings"
	case polOpRemoveDomain:
		fields = "domain"
	case polOpAddRecipients, polOpRemoveRecipients:
		fields = "domain locals"
	case polOpSetAlias:
		fields = "domain local targets"
	case polOpRemoveAlias:
		fields = "domain local"
	default:
		return bad("unknown operation")
	}
	uses := strings.Fields(fields)
	use := func(f string) bool { return slices.Contains(uses, f) }
	if use("domain") != (c.Domain != "") || use("local") != (c.Local != "") ||
		use("locals") != (c.Locals != nil) || use("targets") != (c.Targets != nil) ||
		use("settings") != (c.Settings != nil) || use("global") != (c.MaxMessageSize != nil) ||
		!use("global") && (c.Routes != nil || c.Scanner != nil) {
		return bad("fields missing or not allowed")
	}
	if c.Domain != "" && !polValidDomain(c.Domain) {
		return bad(fmt.Sprintf("domain %q is not in normal form", c.Domain))
	}
	switch c.Op {
	case polOpSetGlobal:
		if *c.MaxMessageSize < 0 {
			return bad("negative size limit")
		}
		if err := c.Scanner.validate(); err != nil {
			return bad(err.Error())
		}
		return polValidateRoutes(c.Routes)
	case polOpSetDomain:
		return polValidateSettings(c.Domain, *c.Settings)
	case polOpAddRecipients, polOpRemoveRecipients:
		if len(c.Locals) == 0 {
			return bad("no local parts")
		}
		return polValidateLocals(c.Domain, c.Locals)
	case polOpSetAlias, polOpRemoveAlias:
		if !polValidLocal(c.Local) {
			return bad(fmt.Sprintf("local part %q is not in normal form", c.Local))
		}
		if c.Op == polOpSetAlias {
			if err := polValidateTargets(c.Targets); err != nil {
				return bad(err.Error())
			}
		}
	}
	return nil
}

// polDelta turns the policy of version From into the policy of Seal's
// version and digest.
type polDelta struct {
	From    uint64
	Seal    Seal
	Changes []polChange
}

// polDecodeDelta decodes a delta and checks that it is well formed. Its
// authenticity is checked when it is applied (polApplyDelta).
func polDecodeDelta(data []byte) (*polDelta, error) {
	w, err := polDecodeWire(data)
	if err != nil {
		return nil, err
	}
	return polDeltaFromWire(w)
}

func polDeltaFromWire(w *polWire) (*polDelta, error) {
	if w.Kind != polKindDelta {
		return nil, fmt.Errorf("%w: kind %q where a delta was expected", ErrPolicyMalformed, w.Kind)
	}
	if w.Policy != nil || w.Version <= w.From || len(w.Changes) == 0 {
		return nil, fmt.Errorf("%w: a delta needs from < version, changes and no policy", ErrPolicyMalformed)
	}
	seal, err := polDecodeSeal(w)
	if err != nil {
		return nil, err
	}
	for i := range w.Changes {
		if err := w.Changes[i].validate(); err != nil {
			return nil, err
		}
	}
	return &polDelta{From: w.From, Seal: seal, Changes: w.Changes}, nil
}

// polApplyDelta applies d to base and returns the resulting snapshot after
// checking its seal with trust and its digest. base is not modified.
func polApplyDelta(base *Snapshot, d *polDelta, trust Trust) (*Snapshot, error) {
	if base == nil || d.From != base.Version {
		have := uint64(0)
		if base != nil {
			have = base.Version
		}
		return nil, fmt.Errorf("%w: delta from version %d, policy at version %d", ErrPolicyDelta, d.From, have)
	}
	if err := trust.verify(&d.Seal); err != nil {
		return nil, err
	}
	p, err := polApply(base.Policy, d.Changes)
	if err != nil {
		return nil, err
	}
	if got := p.Digest(); got != d.Seal.Digest {
		return nil, fmt.Errorf("%w: delta %d->%d declares %s, result hashes to %s", ErrPolicyDigest, d.From, d.Seal.Version, d.Seal.Digest, got)
	}
	return &Snapshot{Seal: d.Seal, Policy: p}, nil
}

// polApply returns base with changes applied. base is not modified: what
// changes is copied, the rest is shared (both are immutable).
func polApply(base *Policy, changes []polChange) (*Policy, error) {
	if base == nil {
		base = &Policy{}
	}
	np := &Policy{MaxMessageSize: base.MaxMessageSize, Routes: base.Routes, Scanner: base.Scanner, Domains: maps.Clone(base.Domains)}
	if np.Domains == nil {
		np.Domains = map[string]*DomainPolicy{}
	}
	owned := map[string]bool{}        // domains copied already
	ownedAliases := map[string]bool{} // alias maps copied already
	get := func(c *polChange) (*DomainPolicy, error) {
		dp, ok := np.Domains[c.Domain]
		if !ok {
			return nil, fmt.Errorf("%w: %s: no domain %q", ErrPolicyDelta, c.Op, c.Domain)
		}
		if !owned[c.Domain] {
			cp := *dp
			dp = &cp
			np.Domains[c.Domain] = dp
			owned[c.Domain] = true
		}
		return dp, nil
	}
	for i := range changes {
		c := &changes[i]
		switch c.Op {
		case polOpSetGlobal:
			np.MaxMessageSize = *c.MaxMessageSize
			np.Routes = slices.Clone(c.Routes)
			np.Scanner = nil
			if c.Scanner != nil {
				sp := *c.Scanner
				np.Scanner = &sp
			}
		case polOpSetDomain:
			if _, ok := np.Domains[c.Domain]; !ok {
				np.Domains[c.Domain] = &DomainPolicy{}
				owned[c.Domain], ownedAliases[c.Domain] = true, true
			}
			dp, _ := get(c)
			c.Settings.apply(dp)
		case polOpRemoveDomain:
			if _, ok := np.Domains[c.Domain]; !ok {
				return nil, fmt.Errorf("%w: %s: no domain %q", ErrPolicyDelta, c.Op, c.Domain)
			}
			delete(np.Domains, c.Domain)
			delete(owned, c.Domain)
			delete(ownedAliases, c.Domain)
		case polOpAddRecipients, polOpRemoveRecipients:
			dp, err := get(c)
			if err != nil {
				return nil, err
			}
			merged, err := polMerge(dp.Recipients, c.Locals, c.Op == polOpAddRecipients)
			if err != nil {
				return nil, fmt.Errorf("%w: %s in %q: %v", ErrPolicyDelta, c.Op, c.Domain, err)
			}
			dp.Recipients = merged
		case polOpSetAlias, polOpRemoveAlias:
			dp, err := get(c)
			if err != nil {
				return nil, err
			}
			if !ownedAliases[c.Domain] {
				dp.Aliases = maps.Clone(dp.Aliases)
				ownedAliases[c.Domain] = true
			}
			if c.Op == polOpRemoveAlias {
				if _, ok := dp.Aliases[c.Local]; !ok {
					return nil, fmt.Errorf("%w: %s: no alias %q in %q", ErrPolicyDelta, c.Op, c.Local, c.Domain)
				}
				delete(dp.Aliases, c.Local)
				if len(dp.Aliases) == 0 {
					dp.Aliases = nil
				}
				continue
			}
			if dp.Aliases == nil {
				dp.Aliases = map[string][]string{}
			}
			dp.Aliases[c.Local] = slices.Clone(c.Targets)
		}
	}
	return np, nil
}

// polMerge adds (or removes) the sorted, unique list delta to (from) the
// sorted, unique list base and returns a new list. Adding what is present
// or removing what is absent is an error.
func polMerge(base, delta []string, add bool) ([]string, error) {
	n := len(base) - len(delta)
	if add {
		n = len(base) + len(delta)
	}
	out := make([]string, 0, max(n, 0))
	i, j := 0, 0
	for i < len(base) && j < len(delta) {
		switch strings.Compare(base[i], delta[j]) {
		case -1:
			out = append(out, base[i])
			i++
		case 1:
			if !add {
				return nil, fmt.Errorf("%q is absent", delta[j])
			}
			out = append(out, delta[j])
			j++
		default:
			if add {
				return nil, fmt.Errorf("%q is present", delta[j])
			}
			i++
			j++
		}
	}
	out = append(out, base[i:]...)
	if j < len(delta) {
		if !add {
			return nil, fmt.Errorf("%q is absent", delta[j])
		}
		out = append(out, delta[j:]...)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// polDiff returns the changes that turn old into new; both in normal form,
// old may be nil. Applying them to old with polApply yields a policy with
// new's digest. Within a domain, removals come before additions so that a
// local part can move between recipients and aliases.
func polDiff(old, new *Policy) []polChange {
	if old == nil {
		old = &Policy{}
	}
	var out []polChange
	if old.MaxMessageSize != new.MaxMessageSize || !slices.Equal(old.Routes, new.Routes) || !sameScanner(old.Scanner, new.Scanner) {
		size := new.MaxMessageSize
		c := polChange{Op: polOpSetGlobal, MaxMessageSize: &size, Routes: slices.Clone(new.Routes)}
		if new.Scanner != nil {
			sp := *new.Scanner
			c.Scanner = &sp
		}
		out = append(out, c)
	}
	for _, name := range slices.Sorted(maps.Keys(old.Domains)) {
		if _, ok := new.Domains[name]; !ok {
			out = append(out, polChange{Op: polOpRemoveDomain, Domain: name})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(new.Domains)) {
		n, o := new.Domains[name], old.Domains[name]
		if o == nil || polSettingsOf(o) != polSettingsOf(n) {
			s := polSettingsOf(n)
			out = append(out, polChange{Op: polOpSetDomain, Domain: name, Settings: &s})
		}
		if o == nil {
			o = &DomainPolicy{}
		}
		for _, k := range slices.Sorted(maps.Keys(o.Aliases)) {
			if _, ok := n.Aliases[k]; !ok {
				out = append(out, polChange{Op: polOpRemoveAlias, Domain: name, Local: k})
			}
		}
		removed, added := polSortedDiff(o.Recipients, n.Recipients)
		if len(removed) > 0 {
			out = append(out, polChange{Op: polOpRemoveRecipients, Domain: name, Locals: removed})
		}
		if len(added) > 0 {
			out = append(out, polChange{Op: polOpAddRecipients, Domain: name, Locals: added})
		}
		for _, k := range slices.Sorted(maps.Keys(n.Aliases)) {
			if ot, ok := o.Aliases[k]; !ok || !slices.Equal(ot, n.Aliases[k]) {
				out = append(out, polChange{Op: polOpSetAlias, Domain: name, Local: k, Targets: slices.Clone(n.Aliases[k])})
			}
		}
	}
	return out
}

// polSortedDiff returns what is in a and not in b, and what is in b and not
// in a; both sorted and unique.
func polSortedDiff(a, b []string) (onlyA, onlyB []string) {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch strings.Compare(a[i], b[j]) {
		case -1:
			onlyA = append(onlyA, a[i])
			i++
		case 1:
			onlyB = append(onlyB, b[j])
			j++
		default:
			i++
			j++
		}
	}
	onlyA = append(onlyA, a[i:]...)
	onlyB = append(onlyB, b[j:]...)
	return onlyA, onlyB
}

// Editing helpers.

// AddRecipient adds addr as a recipient of its domain, which p must hold.
// p must be in normal form (as the policy given to [Publisher.Update] is);
// it stays so. Adding a recipient that exists is not an error.
func (p *Policy) AddRecipient(addr string) error {
	local, dp, err := p.polDomainOf(addr)
	if err != nil {
		return err
	}
	if _, ok := dp.Aliases[local]; ok {
		return fmt.Errorf("pool: %q is an alias", addr)
	}
	i, found := slices.BinarySearch(dp.Recipients, local)
	if !found {
		dp.Recipients = slices.Insert(dp.Recipients, i, local)
	}
	return nil
}

// RemoveRecipient removes the recipient addr. p must be in normal form.
// Removing a recipient that does not exist is not an error.
func (p *Policy) RemoveRecipient(addr string) error {
	local, dp, err := p.polDomainOf(addr)
	if err != nil {
		return err
	}
	if i, found := slices.BinarySearch(dp.Recipients, local); found {
		dp.Recipients = slices.Delete(dp.Recipients, i, i+1)
	}
	return nil
}

// SetAlias makes addr an alias for targets, replacing any alias addr was.
// p must be in normal form, and addr must not be a recipient.
func (p *Policy) SetAlias(addr string, targets ...string) error {
	local, dp, err := p.polDomainOf(addr)
	if err != nil {
		return err
	}
	if _, found := slices.BinarySearch(dp.Recipients, local); found {
		return fmt.Errorf("pool: %q is a recipient", addr)
	}
	ts, err := polNormTargets(targets)
	if err != nil {
		return fmt.Errorf("pool: alias %q: %w", addr, err)
	}
	if dp.Aliases == nil {
		dp.Aliases = map[string][]string{}
	}
	dp.Aliases[local] = ts
	return nil
}

// RemoveAlias removes the alias addr, if it exists. p must be in normal
// form.
func (p *Policy) RemoveAlias(addr string) error {
	local, dp, err := p.polDomainOf(addr)
	if err != nil {
		return err
	}
	delete(dp.Aliases, local)
	if len(dp.Aliases) == 0 {
		dp.Aliases = nil
	}
	return nil
}

func (p *Policy) polDomainOf(addr string) (string, *DomainPolicy, error) {
	local, domain, err := polSplitAddress(addr)
	if err != nil {
		return "", nil, fmt.Errorf("pool: %w", err)
	}
	dp := p.Domains[domain]
	if dp == nil {
		return "", nil, fmt.Errorf("pool: no domain %q in the policy", domain)
	}
	return local, dp, nil
}

// Checking recipients.

// Checker answers whether the MX accepts mail for a recipient. Check must
// be safe for concurrent use, must not block, and must give the same
// answer for the same recipient and the same policy version on every node.
// [*Policy], [*Snapshot], [*Publisher] and [*Follower] are Checkers.
type Checker interface {
	Check(rcpt string) Verdict
}

// CheckerFunc adapts a function to a [Checker].
type CheckerFunc func(rcpt string) Verdict

// Check returns f(rcpt).
func (f CheckerFunc) Check(rcpt string) Verdict { return f(rcpt) }

var (
	_ Checker = CheckerFunc(nil)
	_ Checker = (*Policy)(nil)
	_ Checker = (*Snapshot)(nil)
)

// Action is what an MX does with a recipient.
type Action uint8

// The actions of a [Verdict]. The zero Action is no answer.
const (
	ActionAccept Action = iota + 1 // 250: take the mail
	ActionReject                   // 5xx: refuse for good
	ActionDefer                    // 4xx: ask the sender to try later
)

// String returns "accept", "reject" or "defer".
func (a Action) String() string {
	switch a {
	case ActionAccept:
		return "accept"
	case ActionReject:
		return "reject"
	case ActionDefer:
		return "defer"
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// Verdict is the answer to RCPT TO for one recipient: the SMTP reply, and
// for an accepted recipient what the rest of the transaction needs.
type Verdict struct {
	// Action is what to do with the recipient.
	Action Action
	// Code is the SMTP reply code: 250; 550 (unknown recipient or domain),
	// 553 (bad address syntax); 450 (stale policy), 451 (no policy yet).
	Code int
	// EnhancedCode is the RFC 3463 status code, such as "5.1.1".
	EnhancedCode string
	// Reason is the reply text: one line, the same on every node. It may
	// hold the recipient in normal form, which is UTF-8 for an SMTPUTF8
	// local part, never the address as received.
	Reason string
	// Addr is the recipient in normal form (local@a-label), when it parses.
	Addr string
	// Domain is its domain in normal form (A-label), when it parses.
	Domain string
	// Targets are an alias's targets, resolved through the pool's own
	// aliases (up to 8 levels), sorted; nil when the recipient is not an
	// alias. An alias whose targets all loop back has no targets.
	Targets []string
	// SpamThreshold and SpamAction are the domain's, for an accepted
	// recipient.
	SpamThreshold float64
	SpamAction    SpamAction
	// MaxMessageSize is the pool's limit (zero: none), for an accepted
	// recipient.
	MaxMessageSize int64
	// Version is the version of the policy that answered; zero for a
	// Policy that is not part of a Snapshot.
	Version uint64
}

// String returns the SMTP reply line, such as "550 5.1.1 no such recipient".
func (v Verdict) String() string {
	return fmt.Sprintf("%d %s %s", v.Code, v.EnhancedCode, v.Reason)
}

// Check answers for rcpt, an address as given in RCPT TO (angle brackets
// optional), with p taken as up to date. p must be in normal form.
//
// The rules, in order: a missing policy defers (451 4.3.0); bare
// "postmaster" is accepted; an address that does not parse (see
// [DomainPolicy] for local parts, and MaxLocalLen, MaxDomainLen and
// MaxAddressLen) is rejected with 553 5.1.3, or 553 5.1.2 for a bad domain;
// a domain literal or a domain not in p is rejected with 550 5.7.1 (relay
// denied); then postmaster, an alias, a recipient, the same three for the
// local part without its subaddress, and an AcceptAll domain are accepted
// (250 2.1.5); anything else is rejected with 550 5.1.1.
func (p *Policy) Check(rcpt string) Verdict { return polCheck(p, rcpt, 0, false) }

// Check answers for rcpt with s's policy; see [Policy.Check].
func (s *Snapshot) Check(rcpt string) Verdict {
	if s == nil {
		return polCheck(nil, rcpt, 0, false)
	}
	return polCheck(s.Policy, rcpt, s.Version, false)
}

// polCheck implements Check. When stale, the two answers that depend on
// the policy being current, unknown domain and unknown recipient, become
// 450 instead of 550.
func polCheck(p *Policy, rcpt string, version uint64, stale bool) Verdict {
	v := Verdict{Version: version}
	answer := func(a Action, code int, enh, reason string) Verdict {
		v.Action, v.Code, v.EnhancedCode, v.Reason = a, code, enh, reason
		return v
	}
	if p == nil {
		return answer(ActionDefer, 451, "4.3.0", "policy not loaded yet; try again later")
	}
	addr := rcpt
	if len(addr) >= 2 && addr[0] == '<' && addr[len(addr)-1] == '>' {
		addr = addr[1 : len(addr)-1]
	}
	if len(addr) > MaxAddressLen {
		return answer(ActionReject, 553, "5.1.3", "address too long")
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		if strings.EqualFold(addr, "postmaster") {
			v.Addr = "postmaster"
			return answer(ActionAccept, 250, "2.1.5", "recipient ok")
		}
		return answer(ActionReject, 553, "5.1.3", "address is not local@domain")
	}
	local, err := polNormLocal(addr[:at])
	if err != nil {
		return answer(ActionReject, 553, "5.1.3", "bad local part: "+polSafe(err.Error()))
	}
	domIn := addr[at+1:]
	if strings.HasPrefix(domIn, "[") {
		return answer(ActionReject, 550, "5.7.1", "relay access denied: domain literals are not accepted")
	}
	domain, err := polDomainToASCII(domIn)
	if err != nil {
		return answer(ActionReject, 553, "5.1.2", "bad domain: "+polSafe(err.Error()))
	}
	v.Addr, v.Domain = local+"@"+domain, domain
	dp := p.Domains[domain]
	if dp == nil {
		if stale {
			return answer(ActionDefer, 450, "4.7.1", "domain "+domain+" unknown and policy not current; try again later")
		}
		return answer(ActionReject, 550, "5.7.1", "relay access denied: domain "+domain+" is not served here")
	}
	accept := func(targets []string) Verdict {
		v.Targets, v.SpamThreshold, v.SpamAction, v.MaxMessageSize = targets, dp.SpamThreshold, dp.SpamAction, p.MaxMessageSize
		return answer(ActionAccept, 250, "2.1.5", "recipient <"+v.Addr+"> ok")
	}
	try := func(l string) (Verdict, bool) {
		if ts, ok := dp.Aliases[l]; ok {
			return accept(polResolve(p, l+"@"+domain, ts)), true
		}
		if l == "postmaster" {
			return accept(nil), true
		}
		if _, found := slices.BinarySearch(dp.Recipients, l); found {
			return accept(nil), true
		}
		return Verdict{}, false
	}
	if r, ok := try(local); ok {
		return r
	}
	if i := strings.IndexAny(local, dp.Subaddress); dp.Subaddress != "" && i > 0 {
		if r, ok := try(local[:i]); ok {
			return r
		}
	}
	if dp.AcceptAll {
		return accept(nil)
	}
	if stale {
		return answer(ActionDefer, 450, "4.1.1", "recipient <"+v.Addr+"> unknown and policy not current; try again later")
	}
	return answer(ActionReject, 550, "5.1.1", "recipient <"+v.Addr+"> unknown")
}

// polResolve expands an alias's targets through the policy's aliases, up
// to 8 levels, each address once.
func polResolve(p *Policy, self string, targets []string) []string {
	seen := map[string]bool{self: true}
	var out []string
	var walk func(ts []string, depth int)
	walk = func(ts []string, depth int) {
		for _, t := range ts {
			if seen[t] {
				continue
			}
			seen[t] = true
			at := strings.LastIndexByte(t, '@')
			if depth < 8 && at > 0 {
				if dp := p.Domains[t[at+1:]]; dp != nil {
					if next, ok := dp.Aliases[t[:at]]; ok {
						walk(next, depth+1)
						continue
					}
				}
			}
			out = append(out, t)
		}
	}
	walk(targets, 1)
	slices.Sort(out)
	if out == nil {
		out = []string{}
	}
	return out
}

// polSafe keeps a reply text on one line of printable ASCII.
func polSafe(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < ' ' || c >= 0x7f {
			b[i] = '?'
		}
	}
	return string(b)
}
