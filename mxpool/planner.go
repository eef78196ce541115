package mxpool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/domainname"
)

// The ports a Hop has when its name gives none.
const (
	plannerSMTPPort = 25
	plannerLMTPPort = 24
)

// plannerDefaultCNAMEHops is the default of PlannerOptions.MaxCNAMEHops.
const plannerDefaultCNAMEHops = 8

// plannerParallel bounds the address lookups one Plan runs at once.
const plannerParallel = 8

// HopSource says where a [Hop] came from.
type HopSource uint8

const (
	// HopMX is a host named by one of the domain's MX records.
	HopMX HopSource = iota + 1
	// HopImplicitMX is the domain itself, which has no MX records: the
	// implicit MX of preference 0 of RFC 5321 §5.1.
	HopImplicitMX
	// HopRoute is a host of the [Route] for the domain.
	HopRoute
	// HopFallback is one of PlannerOptions.FallbackRelay.
	HopFallback
)

// String returns the source's name, such as "mx" or "implicit-mx".
func (s HopSource) String() string {
	switch s {
	case HopMX:
		return "mx"
	case HopImplicitMX:
		return "implicit-mx"
	case HopRoute:
		return "route"
	case HopFallback:
		return "fallback"
	}
	return "HopSource(" + strconv.Itoa(int(s)) + ")"
}

// Hop is one next hop of a [Plan]: a host and the addresses to reach it at.
type Hop struct {
	// Host is the host's name in lower-case A-label form without the
	// trailing dot, or an IP address in its canonical text form when the
	// MX record, route or relay named an address.
	Host string
	// Port is the TCP port: 25 for an MX, the port a route or relay names,
	// else 25, or 24 for an LMTP route.
	Port int
	// Pref is the MX preference (0 for the implicit MX, routes and relays).
	Pref uint16
	// Addrs are the host's addresses, never empty: IPv4 and IPv6
	// alternating, IPv4 first, each family in the order the resolver gave,
	// so that a client trying the first few reaches both families.
	Addrs []netip.Addr
	// Source says whether the hop is an MX, the implicit MX, a route or a
	// fallback relay.
	Source HopSource
	// LMTP is set when the hop is reached with LMTP (a route with LMTP).
	LMTP bool
}

// AddrPorts returns the hop's addresses with its port, in order.
func (h Hop) AddrPorts() []netip.AddrPort {
	aps := make([]netip.AddrPort, len(h.Addrs))
	for i, a := range h.Addrs {
		aps[i] = netip.AddrPortFrom(a, uint16(h.Port))
	}
	return aps
}

// Plan says where the mail for one domain goes.
type Plan struct {
	// Domain is the recipient domain in lower-case A-label form without
	// the trailing dot.
	Domain string
	// Hops are the hosts to try, best first; never empty. MX hosts are
	// ordered by preference, and hosts of equal preference are in a new
	// random order in every Plan. A route's hosts are in the route's order.
	Hops []Hop
	// Fallback are the fallback relays that have an address, to try after
	// every hop failed temporarily. It is empty for a routed domain and for
	// a domain this node is an MX of.
	Fallback []Hop
}

// Planner turns a recipient domain into a [Plan]: the ordered hosts to
// deliver its mail to, as RFC 5321 §5.1 and RFC 7505 say.
//
// For a domain with a [Route] the plan is the route's hosts. Otherwise the
// planner asks for the domain's MX records, following CNAMEs, and:
//
//   - orders them by preference, hosts of equal preference at random
//     (a uniform shuffle of each group);
//   - when this node is one of them (PlannerOptions.Self), drops it and
//     every MX of equal or greater preference;
//   - without MX records (NODATA) uses the domain itself as its implicit MX
//     of preference 0; with MX records it never does;
//   - resolves each host's A and AAAA records, accepts an IP address as MX
//     target, and skips a host without addresses;
//   - adds the fallback relays, unless this node is an MX of the domain.
//
// Plan fails with a [*resilmail.DeliveryError] whose Command is "dns", ready
// for a queue: a domain that is invalid or does not exist (NXDOMAIN) fails
// permanently with 5.1.2, a null MX with 556 5.1.10, mail that loops back
// to this node with 554 5.4.6, MX records none of whose hosts have an
// address with 554 5.4.4; a temporary DNS failure fails temporarily with
// 451 4.4.3. Its Err wraps the cause: a [*DNSError], one of the ErrPlan
// errors, or the context's error.
//
// A Planner keeps no state between plans; caching is the resolver's job.
// It is safe for concurrent use. Plan looks up the addresses of several
// hosts at once, in up to 8 goroutines that end before it returns, except
// for answers a DNSResolver has in its cache and a StaticResolver's, which
// it reads in turn without starting any.
type Planner struct {
	resolver Resolver
	self     map[string]struct{}
	selfAddr map[netip.Addr]struct{}
	selfLo   bool // loopback and unspecified addresses are this node's
	routes   map[string]plannerRoute
	wildcard *plannerRoute
	fallback []plannerTarget
	maxHops  int
	log      *slog.Logger

	randMu sync.Mutex
	rand   func(n int) int // nil: rand.IntN, which needs no lock
}

// plannerTarget is a host to resolve: a name, or an address already.
type plannerTarget struct {
	host string
	addr netip.Addr // valid when host is an IP address
	port int
	pref uint16
}

type plannerRoute struct {
	targets []plannerTarget
	lmtp    bool
}

// NewPlanner returns a planner that asks r. It fails on a nil resolver or
// an invalid option: a Self name, route or relay that is not a valid host,
// two routes for one domain, or a negative MaxCNAMEHops.
func NewPlanner(r Resolver, opts *PlannerOptions) (*Planner, error) {
	if r == nil {
		return nil, errors.New("mxpool: NewPlanner: nil Resolver")
	}
	var o PlannerOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxCNAMEHops < 0 {
		return nil, errors.New("mxpool: PlannerOptions: negative MaxCNAMEHops")
	}
	p := &Planner{
		resolver: r,
		maxHops:  cmp.Or(o.MaxCNAMEHops, plannerDefaultCNAMEHops),
		log:      cmp.Or(o.Logger, slog.Default()),
		rand:     o.Rand,
		self:     make(map[string]struct{}, len(o.Self)),
		routes:   make(map[string]plannerRoute, len(o.Routes)),
	}
	p.selfAddr = make(map[netip.Addr]struct{}, len(o.SelfAddrs))
	for _, a := range o.SelfAddrs {
		p.selfAddr[a.Unmap()] = struct{}{}
	}
	if !o.NoInterfaceAddrs {
		p.selfLo = true
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			p.log.Warn("mxpool: cannot list this machine's addresses; MXs are recognised as this node by name and SelfAddrs only", "err", err)
		}
		for _, a := range addrs {
			if pfx, err := netip.ParsePrefix(a.String()); err == nil {
				p.selfAddr[pfx.Addr().Unmap()] = struct{}{}
			}
		}
	}
	for _, s := range o.Self {
		h, err := domainname.ToASCII(s)
		if err != nil {
			return nil, fmt.Errorf("mxpool: PlannerOptions: Self %q: %w", s, err)
		}
		p.self[h] = struct{}{}
	}
	for _, rt := range o.Routes {
		pr := plannerRoute{lmtp: rt.LMTP}
		port := plannerSMTPPort
		if rt.LMTP {
			port = plannerLMTPPort
		}
		for h := range strings.SplitSeq(rt.Host, ",") {
			t, err := plannerParseTarget(h, port)
			if err != nil {
				return nil, fmt.Errorf("mxpool: PlannerOptions: route for %q: %w", rt.Domain, err)
			}
			pr.targets = append(pr.targets, t)
		}
		if rt.Domain == "*" {
			if p.wildcard != nil {
				return nil, errors.New(`mxpool: PlannerOptions: two routes for "*"`)
			}
			p.wildcard = &pr
			continue
		}
		d, err := domainname.ToASCII(rt.Domain)
		if err != nil {
			return nil, fmt.Errorf("mxpool: PlannerOptions: route domain %q: %w", rt.Domain, err)
		}
		if _, dup := p.routes[d]; dup {
			return nil, fmt.Errorf("mxpool: PlannerOptions: two routes for %q", d)
		}
		p.routes[d] = pr
	}
	for _, h := range o.FallbackRelay {
		t, err := plannerParseTarget(h, plannerSMTPPort)
		if err != nil {
			return nil, fmt.Errorf("mxpool: PlannerOptions: FallbackRelay: %w", err)
		}
		p.fallback = append(p.fallback, t)
	}
	return p, nil
}

// plannerParseTarget parses "host", "host:port", "[host]", "[host]:port",
// an IP address or "[IPv6]:port".
func plannerParseTarget(s string, defPort int) (plannerTarget, error) {
	s = strings.TrimSpace(s)
	t := plannerTarget{port: defPort}
	if s == "" {
		return t, errors.New("empty host")
	}
	host := s
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil {
		t.host, t.addr = a.String(), a
		return t, nil
	}
	if strings.Contains(s, ":") {
		h, port, err := net.SplitHostPort(s)
		if err != nil {
			return t, fmt.Errorf("host %q: %w", s, err)
		}
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return t, fmt.Errorf("host %q: invalid port", s)
		}
		host, t.port = h, n
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if a, err := netip.ParseAddr(host); err == nil {
		t.host, t.addr = a.String(), a
		return t, nil
	}
	h, err := domainname.ToASCII(host)
	if err != nil {
		return t, fmt.Errorf("host %q: %w", s, err)
	}
	t.host = h
	return t, nil
}

// Plan returns where the mail for domain goes, or a *resilmail.DeliveryError
// saying why it cannot go anywhere, now or ever. See [Planner].
func (p *Planner) Plan(ctx context.Context, domain string) (*Plan, error) {
	d, err := domainname.ToASCII(domain)
	if err != nil {
		return nil, plannerFail(553, "5.1.2", true, fmt.Sprintf("invalid domain %.100q", domain),
			fmt.Errorf("%w: %w", ErrPlanBadDomain, err))
	}
	if rt, ok := p.routes[d]; ok {
		return p.planRoute(ctx, d, rt)
	}
	if p.wildcard != nil {
		return p.planRoute(ctx, d, *p.wildcard)
	}

	res, canon, err := p.follow(ctx, d, TypeMX)
	if err != nil {
		return nil, p.lookupFail(d, err)
	}
	if len(res.MX) == 1 && (res.MX[0].Host == "." || res.MX[0].Host == "") {
		return nil, plannerFail(556, "5.1.10", true,
			fmt.Sprintf("domain %s accepts no mail (null MX)", d), ErrPlanNullMX)
	}
	source := HopMX
	targets := make([]plannerTarget, 0, max(len(res.MX), 1))
	if len(res.MX) == 0 {
		source = HopImplicitMX
		targets = append(targets, plannerTarget{host: canon, port: plannerSMTPPort})
	}
	for _, mx := range res.MX {
		t, ok := plannerMXTarget(mx)
		if !ok {
			p.log.Debug("mxpool: skipping invalid MX host", "domain", d, "host", mx.Host)
			continue
		}
		targets = append(targets, t)
	}
	p.order(targets)
	targets = plannerDedup(targets)

	isMX := false
	for _, t := range targets {
		if _, ok := p.self[t.host]; ok {
			// targets are sorted: t is this node's best MX record.
			targets = slices.DeleteFunc(targets, func(u plannerTarget) bool { return u.pref >= t.pref })
			isMX = true
			break
		}
	}
	if isMX && len(targets) == 0 {
		return nil, plannerFail(554, "5.4.6", true,
			fmt.Sprintf("mail for %s loops back to myself", d), ErrPlanLoopsBack)
	}

	hops, temp, lastErr := p.resolve(ctx, d, targets, source, false)
	for _, h := range hops {
		if p.isSelfAddr(h.Addrs) {
			// hops are sorted: h is this node's best MX record.
			p.log.Debug("mxpool: an MX is this node by its address", "domain", d, "host", h.Host)
			hops = slices.DeleteFunc(hops, func(u Hop) bool { return u.Pref >= h.Pref })
			isMX = true
			break
		}
	}
	if isMX && len(hops) == 0 && temp == nil {
		return nil, plannerFail(554, "5.4.6", true,
			fmt.Sprintf("mail for %s loops back to myself", d), ErrPlanLoopsBack)
	}
	if len(hops) == 0 {
		what := "MX host"
		if source == HopImplicitMX {
			what = "address"
		}
		if temp != nil {
			return nil, plannerFail(451, "4.4.3", false,
				fmt.Sprintf("no usable %s for %s: address lookup failed temporarily", what, d),
				fmt.Errorf("%w: %w", ErrPlanNoHost, temp))
		}
		cause := ErrPlanNoHost
		if lastErr != nil {
			cause = fmt.Errorf("%w: %w", ErrPlanNoHost, lastErr)
		}
		return nil, plannerFail(554, "5.4.4", true,
			fmt.Sprintf("no usable %s for %s: no address", what, d), cause)
	}
	plan := &Plan{Domain: d, Hops: hops}
	if !isMX && len(p.fallback) > 0 {
		plan.Fallback, _, _ = p.resolve(ctx, d, p.fallback, HopFallback, false)
	}
	return plan, nil
}

// isSelfAddr reports whether one of addrs is this node's.
func (p *Planner) isSelfAddr(addrs []netip.Addr) bool {
	for _, a := range addrs {
		a = a.Unmap()
		if p.selfLo && (a.IsLoopback() || a.IsUnspecified()) {
			return true
		}
		if _, ok := p.selfAddr[a]; ok {
			return true
		}
	}
	return false
}

// planRoute plans a routed domain.
func (p *Planner) planRoute(ctx context.Context, d string, rt plannerRoute) (*Plan, error) {
	hops, temp, lastErr := p.resolve(ctx, d, rt.targets, HopRoute, rt.lmtp)
	if len(hops) == 0 {
		code := "4.4.4"
		cause := cmp.Or(temp, lastErr)
		if temp != nil {
			code = "4.4.3"
		}
		err := ErrPlanNoHost
		if cause != nil {
			err = fmt.Errorf("%w: %w", ErrPlanNoHost, cause)
		}
		return nil, plannerFail(451, code, false,
			fmt.Sprintf("no usable host in the route for %s", d), err)
	}
	return &Plan{Domain: d, Hops: hops}, nil
}

// plannerFail makes the DeliveryError of a planning failure.
func plannerFail(code int, enhanced string, permanent bool, msg string, err error) *resilmail.DeliveryError {
	return &resilmail.DeliveryError{
		Command:      "dns",
		Code:         code,
		EnhancedCode: enhanced,
		Message:      msg,
		Permanent:    permanent,
		Err:          err,
	}
}

// lookupFail turns the failure of the MX lookup of d into a DeliveryError.
func (p *Planner) lookupFail(d string, err error) error {
	var de *DNSError
	switch {
	case errors.As(err, &de) && de.NotFound:
		return plannerFail(550, "5.1.2", true, fmt.Sprintf("no such domain %s", d), err)
	case errors.Is(err, ErrPlanCNAMELoop):
		return plannerFail(451, "4.4.3", false, fmt.Sprintf("CNAME loop or chain too long for %s", d), err)
	}
	return plannerFail(451, "4.4.3", false, fmt.Sprintf("temporary DNS failure looking up the MX of %s", d), err)
}

// follow asks for name's records of type t. When the resolver answers with
// a CNAME but without records, it asks again for the target, at most
// MaxCNAMEHops times. It returns the last name of the chain.
func (p *Planner) follow(ctx context.Context, name string, t Type) (Result, string, error) {
	cur := name
	var seenBuf [plannerDefaultCNAMEHops + 1]string
	seen := append(seenBuf[:0], name)
	for hops := 0; ; hops++ {
		res, err := p.resolver.Lookup(ctx, cur, t)
		if err != nil {
			return res, cur, err
		}
		if res.CNAME == "" {
			return res, cur, nil
		}
		next := plannerHostName(res.CNAME)
		if plannerComplete(res) || next == cur {
			return res, next, nil
		}
		if slices.Contains(seen, next) || hops >= p.maxHops {
			return Result{}, cur, &DNSError{Name: name, Type: t, Temporary: true,
				Err: fmt.Errorf("%w at %s", ErrPlanCNAMELoop, next)}
		}
		seen = append(seen, next)
		cur = next
	}
}

// plannerHostName is a host name from an answer in the form hops use.
func plannerHostName(s string) string {
	if s == "." {
		return s
	}
	return strings.ToLower(strings.TrimSuffix(s, "."))
}

// plannerMXTarget turns an MX record into a target; false for a null or
// empty target.
func plannerMXTarget(mx MX) (plannerTarget, bool) {
	h := plannerHostName(mx.Host)
	if h == "." || h == "" {
		return plannerTarget{}, false
	}
	t := plannerTarget{host: h, port: plannerSMTPPort, pref: mx.Pref}
	if lit := strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"); plannerMaybeIP(lit) {
		if a, err := netip.ParseAddr(lit); err == nil {
			t.host, t.addr = a.String(), a
		}
	}
	return t, true
}

// plannerMaybeIP reports whether s may be an IP address: it has a colon,
// or only digits and dots. It spares ParseAddr, which allocates its error,
// for the host names of every plan.
func plannerMaybeIP(s string) bool {
	if strings.Contains(s, ":") {
		return true
	}
	for i := 0; i < len(s); i++ {
		if (s[i] < '0' || s[i] > '9') && s[i] != '.' {
			return false
		}
	}
	return s != ""
}

// order sorts targets by preference and shuffles each group of equal
// preference uniformly (Fisher–Yates over the whole group, last element
// included).
func (p *Planner) order(targets []plannerTarget) {
	slices.SortFunc(targets, func(a, b plannerTarget) int { return cmp.Compare(a.pref, b.pref) })
	intn := rand.IntN
	if p.rand != nil {
		p.randMu.Lock()
		defer p.randMu.Unlock()
		intn = p.rand
	}
	for i := 0; i < len(targets); {
		j := i + 1
		for j < len(targets) && targets[j].pref == targets[i].pref {
			j++
		}
		g := targets[i:j]
		for k := len(g) - 1; k > 0; k-- {
			r := intn(k + 1)
			g[k], g[r] = g[r], g[k]
		}
		i = j
	}
}

// plannerDedup keeps the first (best) occurrence of each host.
func plannerDedup(targets []plannerTarget) []plannerTarget {
	for i := 1; i < len(targets); i++ {
		for j := 0; j < i; j++ {
			if targets[j].host == targets[i].host {
				targets = slices.Delete(targets, i, i+1)
				i--
				break
			}
		}
	}
	return targets
}

// plannerLookup is one address lookup of a plan.
type plannerLookup struct {
	host string
	t    Type
	res  Result
	err  error
}

// resolve finds the addresses of targets and returns the hops that have
// some, in order, with the first temporary lookup failure and the last
// other failure.
func (p *Planner) resolve(ctx context.Context, d string, targets []plannerTarget, source HopSource, lmtp bool) (hops []Hop, temp, last error) {
	var jobsBuf [8]plannerLookup
	jobs := jobsBuf[:0]
	for _, t := range targets {
		if !t.addr.IsValid() {
			jobs = append(jobs, plannerLookup{host: t.host, t: TypeA}, plannerLookup{host: t.host, t: TypeAAAA})
		}
	}
	p.lookupAll(ctx, jobs)

	// One array holds the addresses of every hop.
	n := 0
	for _, j := range jobs {
		n += len(j.res.Addrs)
	}
	addrs := make([]netip.Addr, 0, n+len(targets)-len(jobs)/2)
	hops = make([]Hop, 0, len(targets))
	k := 0
	for _, t := range targets {
		hop := Hop{Host: t.host, Port: t.port, Pref: t.pref, Source: source, LMTP: lmtp}
		if t.addr.IsValid() {
			start := len(addrs)
			addrs = append(addrs, t.addr)
			hop.Addrs = addrs[start:len(addrs):len(addrs)]
			hops = append(hops, hop)
			continue
		}
		v4, v6 := &jobs[k], &jobs[k+1]
		k += 2
		for _, j := range []*plannerLookup{v4, v6} {
			if j.err == nil {
				continue
			}
			var de *DNSError
			if errors.As(j.err, &de) && de.NotFound {
				last = j.err
			} else if temp == nil {
				temp = j.err
			}
		}
		start := len(addrs)
		addrs = plannerInterleave(addrs, v4.res.Addrs, v6.res.Addrs)
		hop.Addrs = addrs[start:len(addrs):len(addrs)]
		if len(hop.Addrs) == 0 {
			p.log.Debug("mxpool: skipping host without address", "domain", d, "host", t.host,
				"source", source.String(), "err", cmp.Or(v4.err, v6.err))
			continue
		}
		hops = append(hops, hop)
	}
	return hops, temp, last
}

// plannerCache is implemented by resolvers that can answer some lookups
// from memory without blocking (DNSResolver from its cache, StaticResolver
// always): ok is false when they cannot.
type plannerCache interface {
	lookupCached(ctx context.Context, name string, t Type) (res Result, ok bool, err error)
}

// lookupAll runs the lookups. Those a plannerCache answers from memory run
// in turn; the others run up to plannerParallel at once, the calling
// goroutine taking part. All are done when it returns.
func (p *Planner) lookupAll(ctx context.Context, jobs []plannerLookup) {
	var pending []int
	c, _ := p.resolver.(plannerCache)
	for i := range jobs {
		j := &jobs[i]
		if c != nil {
			res, ok, err := c.lookupCached(ctx, j.host, j.t)
			if ok && (err != nil || plannerComplete(res)) {
				j.res, j.err = res, err
				continue
			}
		}
		pending = append(pending, i)
	}
	if len(pending) == 0 {
		return
	}
	var next atomic.Int64
	work := func() {
		for {
			n := int(next.Add(1) - 1)
			if n >= len(pending) {
				return
			}
			j := &jobs[pending[n]]
			j.res, _, j.err = p.follow(ctx, j.host, j.t)
		}
	}
	var wg sync.WaitGroup
	for range min(len(pending), plannerParallel) - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()
}

// plannerComplete reports whether res needs no further lookup: it is not
// an alias, or it has the alias target's records.
func plannerComplete(res Result) bool {
	return res.CNAME == "" || len(res.MX) > 0 || len(res.Addrs) > 0 || len(res.TXT) > 0
}

// plannerInterleave appends to out IPv4 and IPv6 addresses alternating,
// IPv4 first. Only addresses of the right family are kept from each list.
func plannerInterleave(out, v4, v6 []netip.Addr) []netip.Addr {
	i, j := 0, 0
	for i < len(v4) || j < len(v6) {
		for i < len(v4) && !v4[i].Unmap().Is4() {
			i++
		}
		if i < len(v4) {
			out = append(out, v4[i].Unmap())
			i++
		}
		for j < len(v6) && !(v6[j].Is6() && !v6[j].Is4In6()) {
			j++
		}
		if j < len(v6) {
			out = append(out, v6[j])
			j++
		}
	}
	return out
}
