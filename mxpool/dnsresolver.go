package mxpool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/singleflight"
)

// Defaults of [DNSOptions].
const (
	dnsDefaultTimeout     = 2 * time.Second
	dnsDefaultAttempts    = 2
	dnsDefaultCacheSize   = 10000
	dnsDefaultMaxTTL      = time.Hour
	dnsDefaultNegativeTTL = time.Minute
	dnsDefaultUDPSize     = 1232
)

// dnsMaxChain bounds the CNAME chain followed inside one answer.
const dnsMaxChain = 16

// errDNSInvalidName is the cause of the DNSError for a name that cannot be
// asked in the DNS.
var errDNSInvalidName = errors.New("invalid domain name")

// DNSStats counts what a [DNSResolver] did since it was created.
type DNSStats struct {
	Lookups      uint64 // lookups, by Lookup or by a Planner reading the cache
	CacheHits    uint64 // lookups answered from the cache
	Queries      uint64 // queries sent to servers, over UDP or TCP
	TCPQueries   uint64 // queries repeated over TCP after a truncated answer
	TempFailures uint64 // lookups that failed temporarily
	InFlight     int64  // lookups now waiting for an answer from a server
	CacheEntries int    // answers now in the cache, some maybe expired
}

// DNSResolver is a [Resolver] that asks recursive DNS servers directly, so it
// can tell NXDOMAIN from NODATA from a failure, and caches answers.
//
// A query goes over UDP with EDNS0 and is repeated over TCP when the answer
// is truncated. A server that times out, fails (SERVFAIL), refuses or
// answers nonsense is skipped for the next; after Attempts rounds over all
// servers the lookup fails with a [DNSError] whose Temporary is set.
// NXDOMAIN gives a DNSError with NotFound; NOERROR without records of the
// type asked gives an empty Result (NODATA). CNAME records in the answer are
// followed: Result.CNAME is the last name of the chain and the records are
// that name's only. A CNAME loop is a temporary failure, as a recursive
// server would answer SERVFAIL.
//
// Answers are cached for the smallest TTL of the records used, capped by
// MaxTTL. NXDOMAIN and NODATA answers are cached too, for the TTL that
// RFC 2308 §5 gives them: the smaller of the SOA record's TTL and its
// MINIMUM field, or NegativeTTL without an SOA. Temporary failures are not
// cached. Names are case-insensitive and may end with a dot; names in
// results are lower case without the trailing dot, except a null MX
// target, which stays ".".
//
// Concurrent lookups of the same name and type share one query. The shared
// query is not canceled when the caller that started it gives up: it ends
// within its own time budget (Attempts × servers × Timeout, twice that with
// TCP retries), in a goroutine the resolver starts for it. A caller whose
// context is done returns at once with a temporary DNSError wrapping the
// context's error.
//
// A DNSResolver is safe for concurrent use. It holds no connection between
// queries and needs no closing.
type DNSResolver struct {
	servers  []string
	timeout  time.Duration
	attempts int
	maxTTL   time.Duration
	negTTL   time.Duration
	udpSize  uint16
	now      func() time.Time

	flight singleflight.Group
	cache  dnsCache

	lookups, hits, queries, tcpQueries, tempFailures atomic.Uint64
	inFlight                                         atomic.Int64
}

var _ Resolver = (*DNSResolver)(nil)

// NewDNSResolver returns a resolver configured by opts. When opts gives no
// Servers it reads the nameservers from ResolvConf; it does no other I/O.
// It fails on a malformed server address or a negative option.
func NewDNSResolver(opts *DNSOptions) (*DNSResolver, error) {
	var o DNSOptions
	if opts != nil {
		o = *opts
	}
	if o.Timeout < 0 || o.Attempts < 0 || o.MaxTTL < 0 || o.NegativeTTL < 0 {
		return nil, errors.New("mxpool: DNSOptions: negative Timeout, Attempts, MaxTTL or NegativeTTL")
	}
	r := &DNSResolver{
		timeout:  dnsOr(o.Timeout, dnsDefaultTimeout),
		attempts: dnsOr(o.Attempts, dnsDefaultAttempts),
		maxTTL:   dnsOr(o.MaxTTL, dnsDefaultMaxTTL),
		negTTL:   dnsOr(o.NegativeTTL, dnsDefaultNegativeTTL),
		udpSize:  dnsOr(o.UDPSize, dnsDefaultUDPSize),
		now:      o.Now,
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.udpSize < dns.MinMsgSize {
		r.udpSize = dns.MinMsgSize
	}
	r.cache.max = dnsOr(o.CacheSize, dnsDefaultCacheSize)
	for _, s := range o.Servers {
		addr, err := dnsServerAddr(s)
		if err != nil {
			return nil, err
		}
		r.servers = append(r.servers, addr)
	}
	if len(r.servers) == 0 {
		r.servers = dnsServersFromFile(dnsOr(o.ResolvConf, "/etc/resolv.conf"))
	}
	return r, nil
}

func dnsOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// dnsServerAddr checks a server address and adds port 53 to a bare IP.
func dnsServerAddr(s string) (string, error) {
	if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return net.JoinHostPort(a.String(), "53"), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || port == "" {
		return "", fmt.Errorf("mxpool: DNS server %q: want host:port", s)
	}
	return s, nil
}

// dnsServersFromFile returns the nameservers of a resolv.conf file, or
// 127.0.0.1:53.
func dnsServersFromFile(path string) []string {
	cfg, err := dns.ClientConfigFromFile(path)
	if err != nil || len(cfg.Servers) == 0 {
		return []string{"127.0.0.1:53"}
	}
	servers := make([]string, 0, len(cfg.Servers))
	for _, s := range cfg.Servers {
		servers = append(servers, net.JoinHostPort(s, cfg.Port))
	}
	return servers
}

// Servers returns the addresses of the servers asked, in order.
func (r *DNSResolver) Servers() []string {
	return append([]string(nil), r.servers...)
}

// Stats returns the resolver's counters.
func (r *DNSResolver) Stats() DNSStats {
	return DNSStats{
		Lookups:      r.lookups.Load(),
		CacheHits:    r.hits.Load(),
		Queries:      r.queries.Load(),
		TCPQueries:   r.tcpQueries.Load(),
		TempFailures: r.tempFailures.Load(),
		InFlight:     r.inFlight.Load(),
		CacheEntries: r.cache.len(),
	}
}

// dnsAnswer is the outcome of one lookup as cached and shared.
type dnsAnswer struct {
	res Result
	err *DNSError
}

// Lookup asks for name's records of type t. See [DNSResolver] for what the
// answer means.
func (r *DNSResolver) Lookup(ctx context.Context, name string, t Type) (Result, error) {
	r.lookups.Add(1)
	qname, ok := dnsCanonical(name)
	if !ok {
		return Result{}, &DNSError{Name: name, Type: t, NotFound: true, Err: errDNSInvalidName}
	}
	key := dnsCacheKey{name: qname, t: t}
	if a, ok := r.cache.get(key, r.now()); ok {
		r.hits.Add(1)
		return a.result()
	}
	return r.lookupNetwork(ctx, key)
}

// lookupCached answers from the cache only; ok is false when the answer
// is not there. The Planner uses it to avoid starting goroutines for lookups that
// cannot block.
func (r *DNSResolver) lookupCached(_ context.Context, name string, t Type) (Result, bool, error) {
	qname, ok := dnsCanonical(name)
	if !ok {
		return Result{}, false, nil
	}
	a, ok := r.cache.get(dnsCacheKey{name: qname, t: t}, r.now())
	if !ok {
		return Result{}, false, nil
	}
	r.lookups.Add(1)
	r.hits.Add(1)
	res, err := a.result()
	return res, true, err
}

// lookupNetwork asks the servers, sharing the query with concurrent
// lookups of the same key.
func (r *DNSResolver) lookupNetwork(ctx context.Context, key dnsCacheKey) (Result, error) {
	qname, t := key.name, key.t
	if err := ctx.Err(); err != nil {
		r.tempFailures.Add(1)
		return Result{}, &DNSError{Name: qname, Type: t, Temporary: true, Err: err}
	}
	ch := r.flight.DoChan(qname+"/"+t.String(), func() (any, error) {
		a := r.resolve(context.WithoutCancel(ctx), qname, t)
		if a.err == nil || !a.err.Temporary {
			r.cache.put(key, a, r.now())
		}
		return a, nil
	})
	r.inFlight.Add(1)
	defer r.inFlight.Add(-1)
	select {
	case <-ctx.Done():
		r.tempFailures.Add(1)
		return Result{}, &DNSError{Name: qname, Type: t, Temporary: true, Err: ctx.Err()}
	case v := <-ch:
		a := v.Val.(dnsAnswer)
		if a.err != nil && a.err.Temporary {
			r.tempFailures.Add(1)
		}
		return a.result()
	}
}

// result returns a copy of the answer that the caller may modify.
func (a dnsAnswer) result() (Result, error) {
	if a.err != nil {
		e := *a.err
		return Result{}, &e
	}
	res := a.res
	res.MX = append([]MX(nil), res.MX...)
	res.Addrs = append([]netip.Addr(nil), res.Addrs...)
	res.TXT = append([]string(nil), res.TXT...)
	return res, nil
}

// dnsCanonical returns name in lower case without its trailing dot, and
// whether it can be asked in the DNS at all.
func dnsCanonical(name string) (string, bool) {
	if name != "." {
		name = strings.TrimSuffix(name, ".")
	}
	if name == "" || len(name) > 253 {
		return "", false
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return "", false
	}
	return strings.ToLower(name), true
}

// dnsResultName turns a name from an answer into the form results use.
func dnsResultName(s string) string {
	if s == "." || s == "" {
		return "."
	}
	return strings.ToLower(strings.TrimSuffix(s, "."))
}

// dnsSameName reports whether the owner name of a record (fully qualified)
// is name (canonical form).
func dnsSameName(owner, name string) bool {
	if name != "." {
		owner = strings.TrimSuffix(owner, ".")
	}
	return strings.EqualFold(owner, name)
}

// resolve asks the servers in turn, Attempts rounds, and interprets the
// first definite answer.
func (r *DNSResolver) resolve(ctx context.Context, qname string, t Type) dnsAnswer {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(qname), uint16(t))
	m.RecursionDesired = true
	m.SetEdns0(r.udpSize, false)
	var last error
	for range r.attempts {
		for _, srv := range r.servers {
			if err := ctx.Err(); err != nil {
				return dnsAnswer{err: &DNSError{Name: qname, Type: t, Temporary: true, Err: err}}
			}
			m.Id = dns.Id()
			resp, err := r.exchange(ctx, m, srv)
			if err != nil {
				last = fmt.Errorf("%s: %w", srv, err)
				continue
			}
			switch resp.Rcode {
			case dns.RcodeSuccess:
				return r.answer(qname, t, resp)
			case dns.RcodeNameError:
				ttl := r.negativeTTL(resp, 0, false)
				return dnsAnswer{
					res: Result{TTL: ttl},
					err: &DNSError{Name: qname, Type: t, NotFound: true},
				}
			default:
				last = fmt.Errorf("%s: %s", srv, dns.RcodeToString[resp.Rcode])
			}
		}
	}
	return dnsAnswer{err: &DNSError{Name: qname, Type: t, Temporary: true, Err: last}}
}

// exchange sends m to one server over UDP, and again over TCP when the
// answer is truncated, and checks that the answer is for m's question.
func (r *DNSResolver) exchange(ctx context.Context, m *dns.Msg, srv string) (*dns.Msg, error) {
	c := dns.Client{Net: "udp", Timeout: r.timeout, UDPSize: r.udpSize}
	r.queries.Add(1)
	resp, _, err := c.ExchangeContext(ctx, m, srv)
	if resp != nil && resp.Truncated {
		r.queries.Add(1)
		r.tcpQueries.Add(1)
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, m, srv)
	}
	if err != nil {
		return nil, err
	}
	q := m.Question[0]
	if !resp.Response || len(resp.Question) != 1 || resp.Question[0].Qtype != q.Qtype ||
		!strings.EqualFold(resp.Question[0].Name, q.Name) {
		return nil, errors.New("answer does not match the question")
	}
	return resp, nil
}

// answer interprets a NOERROR response: the records of the type asked for
// the last name of the CNAME chain that starts at qname.
func (r *DNSResolver) answer(qname string, t Type, resp *dns.Msg) dnsAnswer {
	var res Result
	minTTL := ^uint32(0)
	name := qname
	for hops := 0; ; hops++ {
		found := false
		for _, rr := range resp.Answer {
			h := rr.Header()
			if h.Class != dns.ClassINET || !dnsSameName(h.Name, name) {
				continue
			}
			switch v := rr.(type) {
			case *dns.MX:
				if t != TypeMX {
					continue
				}
				res.MX = append(res.MX, MX{Host: dnsResultName(v.Mx), Pref: v.Preference})
			case *dns.A:
				a, ok := netip.AddrFromSlice(v.A.To4())
				if t != TypeA || !ok {
					continue
				}
				res.Addrs = append(res.Addrs, a)
			case *dns.AAAA:
				a, ok := netip.AddrFromSlice(v.AAAA.To16())
				if t != TypeAAAA || !ok {
					continue
				}
				res.Addrs = append(res.Addrs, a)
			case *dns.TXT:
				if t != TypeTXT {
					continue
				}
				res.TXT = append(res.TXT, strings.Join(v.Txt, ""))
			default:
				continue
			}
			found = true
			minTTL = min(minTTL, h.Ttl)
		}
		if found {
			break
		}
		target := ""
		for _, rr := range resp.Answer {
			if c, ok := rr.(*dns.CNAME); ok && c.Hdr.Class == dns.ClassINET && dnsSameName(c.Hdr.Name, name) {
				target = dnsResultName(c.Target)
				minTTL = min(minTTL, c.Hdr.Ttl)
				break
			}
		}
		if target == "" {
			break
		}
		if target == qname || target == res.CNAME || hops >= dnsMaxChain {
			return dnsAnswer{err: &DNSError{Name: qname, Type: t, Temporary: true,
				Err: fmt.Errorf("CNAME loop or chain longer than %d at %s", dnsMaxChain, target)}}
		}
		name = target
		res.CNAME = target
	}
	if len(res.MX) == 0 && len(res.Addrs) == 0 && len(res.TXT) == 0 {
		res.TTL = r.negativeTTL(resp, minTTL, res.CNAME != "")
		return dnsAnswer{res: res}
	}
	res.TTL = min(time.Duration(minTTL)*time.Second, r.maxTTL)
	return dnsAnswer{res: res}
}

// negativeTTL is the TTL of an NXDOMAIN or NODATA answer (RFC 2308 §5),
// no longer than the CNAME records that led to it.
func (r *DNSResolver) negativeTTL(resp *dns.Msg, chainTTL uint32, chained bool) time.Duration {
	ttl := r.negTTL
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			ttl = time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
			break
		}
	}
	if chained {
		ttl = min(ttl, time.Duration(chainTTL)*time.Second)
	}
	return min(ttl, r.maxTTL)
}

type dnsCacheKey struct {
	name string
	t    Type
}

type dnsCacheEntry struct {
	a       dnsAnswer
	expires time.Time
}

// dnsCache holds answers until they expire. When full it drops expired
// entries, or else an arbitrary one (Go's map iteration order is random).
type dnsCache struct {
	max int // <= 0: no caching

	mu sync.RWMutex
	m  map[dnsCacheKey]dnsCacheEntry
}

// dnsEvictScan bounds the entries looked at to find expired ones when the
// cache is full.
const dnsEvictScan = 32

func (c *dnsCache) get(k dnsCacheKey, now time.Time) (dnsAnswer, bool) {
	c.mu.RLock()
	e, ok := c.m[k]
	c.mu.RUnlock()
	if !ok || !now.Before(e.expires) {
		return dnsAnswer{}, false
	}
	a := e.a
	if a.err == nil {
		a.res.TTL = e.expires.Sub(now).Truncate(time.Second)
	}
	return a, true
}

func (c *dnsCache) put(k dnsCacheKey, a dnsAnswer, now time.Time) {
	if c.max <= 0 || a.res.TTL <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[dnsCacheKey]dnsCacheEntry)
	}
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		c.evictLocked(now)
	}
	c.m[k] = dnsCacheEntry{a: a, expires: now.Add(a.res.TTL)}
}

// evictLocked makes room for one entry.
func (c *dnsCache) evictLocked(now time.Time) {
	var victim dnsCacheKey
	seen, dropped := 0, false
	for k, e := range c.m {
		if seen == 0 {
			victim = k
		}
		if !now.Before(e.expires) {
			delete(c.m, k)
			dropped = true
		}
		if seen++; seen >= dnsEvictScan {
			break
		}
	}
	if !dropped {
		delete(c.m, victim)
	}
}

func (c *dnsCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
