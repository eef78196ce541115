package mxpool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/idna"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/domainname"
)

func plannerTestAddrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

// plannerTestZone is a zone with a few MX hosts that have addresses.
func plannerTestZone() *StaticResolver {
	r := new(StaticResolver)
	r.AddAddr("mx1.example.org", plannerTestAddrs("192.0.2.1", "2001:db8::1", "192.0.2.11", "2001:db8::11")...)
	r.AddAddr("mx2.example.org", plannerTestAddrs("192.0.2.2")...)
	r.AddAddr("mx3.example.org", plannerTestAddrs("2001:db8::3")...)
	r.AddAddr("mx4.example.org", plannerTestAddrs("192.0.2.4")...)
	return r
}

// plannerTestNew makes a planner that does not count this machine's
// addresses as its own: the test zones use TEST-NET addresses, which a
// test machine may have.
func plannerTestNew(t testing.TB, r Resolver, opts *PlannerOptions) *Planner {
	t.Helper()
	var o PlannerOptions
	if opts != nil {
		o = *opts
	}
	o.NoInterfaceAddrs = true
	p, err := NewPlanner(r, &o)
	require.NoError(t, err)
	return p
}

func plannerTestHosts(hops []Hop) []string {
	var hosts []string
	for _, h := range hops {
		hosts = append(hosts, h.Host)
	}
	return hosts
}

// plannerTestFailure checks that err is the DeliveryError Plan must return.
func plannerTestFailure(t *testing.T, err error, code int, enhanced string, permanent bool) *resilmail.DeliveryError {
	t.Helper()
	var de *resilmail.DeliveryError
	require.ErrorAs(t, err, &de)
	assert.Equal(t, "dns", de.Command)
	assert.Equal(t, code, de.Code)
	assert.Equal(t, enhanced, de.EnhancedCode)
	assert.Equal(t, permanent, de.Permanent)
	assert.Empty(t, de.Recipient)
	return de
}

func TestPlanMX(t *testing.T) {
	r := plannerTestZone()
	r.AddMX("example.org", 20, "mx2.example.org")
	r.AddMX("example.org", 10, "MX1.example.org.")
	r.AddMX("example.org", 30, "mx3.example.org")
	p := plannerTestNew(t, r, nil)

	plan, err := p.Plan(context.Background(), "Example.ORG.")
	require.NoError(t, err)
	assert.Equal(t, &Plan{
		Domain: "example.org",
		Hops: []Hop{
			{Host: "mx1.example.org", Port: 25, Pref: 10, Source: HopMX,
				Addrs: plannerTestAddrs("192.0.2.1", "2001:db8::1", "192.0.2.11", "2001:db8::11")},
			{Host: "mx2.example.org", Port: 25, Pref: 20, Source: HopMX, Addrs: plannerTestAddrs("192.0.2.2")},
			{Host: "mx3.example.org", Port: 25, Pref: 30, Source: HopMX, Addrs: plannerTestAddrs("2001:db8::3")},
		},
	}, plan)
	assert.Equal(t, []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:25")}, plan.Hops[1].AddrPorts())
}

func TestPlanAddressOrderAlternatesFamilies(t *testing.T) {
	assert.Equal(t,
		plannerTestAddrs("192.0.2.1", "2001:db8::1", "192.0.2.2", "2001:db8::2", "2001:db8::3"),
		plannerInterleave(nil, plannerTestAddrs("192.0.2.1", "192.0.2.2"), plannerTestAddrs("2001:db8::1", "2001:db8::2", "2001:db8::3")))
	assert.Equal(t,
		plannerTestAddrs("192.0.2.1", "192.0.2.2", "192.0.2.3"),
		plannerInterleave(nil, plannerTestAddrs("192.0.2.1", "192.0.2.2", "::ffff:192.0.2.3"), nil))
}

// TestPlanShufflesEqualPreferenceUniformly checks that each order of a group
// of three MX hosts of equal preference comes out equally often, while the
// hosts of other preferences stay in place. A shuffle that leaves the last
// host of a group alone (the bug the anchor found in holster's mxresolv)
// produces only two of the six orders and fails.
func TestPlanShufflesEqualPreferenceUniformly(t *testing.T) {
	r := plannerTestZone()
	r.AddMX("example.org", 5, "mx4.example.org")
	r.AddMX("example.org", 10, "mx1.example.org")
	r.AddMX("example.org", 10, "mx2.example.org")
	r.AddMX("example.org", 10, "mx3.example.org")
	rng := rand.New(rand.NewPCG(1, 2))
	p := plannerTestNew(t, r, &PlannerOptions{Rand: rng.IntN})

	const trials = 3000
	counts := map[string]int{}
	for range trials {
		plan, err := p.Plan(context.Background(), "example.org")
		require.NoError(t, err)
		hosts := plannerTestHosts(plan.Hops)
		require.Equal(t, "mx4.example.org", hosts[0], "the better preference stays first")
		counts[strings.Join(hosts[1:], " ")]++
	}
	require.Len(t, counts, 6, "every order of the group occurs: %v", counts)
	// Pearson's chi-square with 5 degrees of freedom; 20.5 is the 0.1%
	// critical value. The seed is fixed, so this is deterministic.
	expected := float64(trials) / 6
	chi2 := 0.0
	for _, c := range counts {
		d := float64(c) - expected
		chi2 += d * d / expected
	}
	assert.Less(t, chi2, 20.5, "orders are not uniform: %v", counts)
}

func TestPlanShufflesGroupAtEnd(t *testing.T) {
	// {a:10, b:20, c:20}: the group at the end of the list must move too.
	r := plannerTestZone()
	r.AddMX("example.org", 10, "mx1.example.org")
	r.AddMX("example.org", 20, "mx2.example.org")
	r.AddMX("example.org", 20, "mx3.example.org")
	p := plannerTestNew(t, r, &PlannerOptions{Rand: rand.New(rand.NewPCG(3, 4)).IntN})
	counts := map[string]int{}
	for range 1000 {
		plan, err := p.Plan(context.Background(), "example.org")
		require.NoError(t, err)
		counts[strings.Join(plannerTestHosts(plan.Hops), " ")]++
	}
	assert.Len(t, counts, 2, "%v", counts)
	for order, c := range counts {
		assert.True(t, strings.HasPrefix(order, "mx1.example.org "), order)
		assert.InDelta(t, 500, c, 100, order)
	}
}

func TestPlanUsesInjectedRand(t *testing.T) {
	r := plannerTestZone()
	for _, h := range []string{"mx1", "mx2", "mx3"} {
		r.AddMX("example.org", 10, h+".example.org")
	}
	r.AddMX("distinct.example.org", 10, "mx1.example.org")
	r.AddMX("distinct.example.org", 20, "mx2.example.org")
	var calls atomic.Int64
	p := plannerTestNew(t, r, &PlannerOptions{Rand: func(n int) int { calls.Add(1); return n - 1 }})
	plan, err := p.Plan(context.Background(), "example.org")
	require.NoError(t, err)
	assert.Equal(t, int64(2), calls.Load(), "one call per swap of Fisher–Yates over 3 hosts")
	assert.Len(t, plan.Hops, 3)

	calls.Store(0)
	_, err = p.Plan(context.Background(), "distinct.example.org")
	require.NoError(t, err)
	assert.Zero(t, calls.Load(), "no randomness without equal preferences")
}

func TestPlanImplicitMX(t *testing.T) {
	r := new(StaticResolver)
	r.AddAddr("example.org", plannerTestAddrs("192.0.2.1", "2001:db8::1")...)
	r.SetCNAME("alias.example.net", "example.org")
	r.AddTXT("noaddr.example.org", "no MX, no address")
	r.AddMX("withmx.example.org", 10, "gone.example.org")
	r.AddAddr("withmx.example.org", plannerTestAddrs("192.0.2.99")...)
	p := plannerTestNew(t, r, nil)
	ctx := context.Background()

	plan, err := p.Plan(ctx, "example.org")
	require.NoError(t, err)
	assert.Equal(t, []Hop{{Host: "example.org", Port: 25, Pref: 0, Source: HopImplicitMX,
		Addrs: plannerTestAddrs("192.0.2.1", "2001:db8::1")}}, plan.Hops)

	plan, err = p.Plan(ctx, "alias.example.net")
	require.NoError(t, err)
	assert.Equal(t, "alias.example.net", plan.Domain)
	require.Len(t, plan.Hops, 1)
	assert.Equal(t, "example.org", plan.Hops[0].Host, "the implicit MX is the canonical name")
	assert.Equal(t, HopImplicitMX, plan.Hops[0].Source)

	_, err = p.Plan(ctx, "noaddr.example.org")
	de := plannerTestFailure(t, err, 554, "5.4.4", true)
	assert.ErrorIs(t, de, ErrPlanNoHost)

	// MX records exist (their host does not): never the domain's own A.
	_, err = p.Plan(ctx, "withmx.example.org")
	plannerTestFailure(t, err, 554, "5.4.4", true)
}

func TestPlanDNSFailures(t *testing.T) {
	r := plannerTestZone()
	r.SetTemporaryFailure("tempfail.example.org", TypeMX)
	r.AddMX("nullmx.example.org", 0, ".")
	r.AddMX("mixed.example.org", 0, ".")
	r.AddMX("mixed.example.org", 10, "mx2.example.org")
	r.AddMX("dead.example.org", 10, "gone.example.org")
	r.AddMX("dead.example.org", 20, "noaddr.example.org")
	r.AddTXT("noaddr.example.org", "exists")
	r.AddMX("flaky.example.org", 10, "gone.example.org")
	r.AddMX("flaky.example.org", 20, "flaky-mx.example.org")
	r.SetTemporaryFailure("flaky-mx.example.org", TypeA)
	r.AddAddr("flaky-mx.example.org", plannerTestAddrs("2001:db8::5")...)
	r.AddMX("flaky4.example.org", 10, "v4only.example.org")
	r.SetTemporaryFailure("v4only.example.org", TypeA)
	r.AddAddr("v4only.example.org", plannerTestAddrs("192.0.2.5")...)
	p := plannerTestNew(t, r, nil)
	ctx := context.Background()

	_, err := p.Plan(ctx, "nxdomain.example.org")
	de := plannerTestFailure(t, err, 550, "5.1.2", true)
	var dnsErr *DNSError
	require.ErrorAs(t, de, &dnsErr)
	assert.True(t, dnsErr.NotFound)

	_, err = p.Plan(ctx, "tempfail.example.org")
	de = plannerTestFailure(t, err, 451, "4.4.3", false)
	require.ErrorAs(t, de, &dnsErr)
	assert.True(t, dnsErr.Temporary)

	_, err = p.Plan(ctx, "nullmx.example.org")
	de = plannerTestFailure(t, err, 556, "5.1.10", true)
	assert.ErrorIs(t, de, ErrPlanNullMX)

	plan, err := p.Plan(ctx, "mixed.example.org")
	require.NoError(t, err, `a "." among other MX records is just unusable`)
	assert.Equal(t, []string{"mx2.example.org"}, plannerTestHosts(plan.Hops))

	_, err = p.Plan(ctx, "dead.example.org")
	de = plannerTestFailure(t, err, 554, "5.4.4", true)
	assert.ErrorIs(t, de, ErrPlanNoHost)

	plan, err = p.Plan(ctx, "flaky.example.org")
	require.NoError(t, err, "one family failing does not make the host unusable")
	assert.Equal(t, plannerTestAddrs("2001:db8::5"), plan.Hops[0].Addrs)

	_, err = p.Plan(ctx, "flaky4.example.org")
	de = plannerTestFailure(t, err, 451, "4.4.3", false)
	assert.ErrorIs(t, de, ErrPlanNoHost)
	require.ErrorAs(t, de, &dnsErr)
	assert.True(t, dnsErr.Temporary)
}

func TestPlanSkipsHostsWithoutAddress(t *testing.T) {
	r := plannerTestZone()
	r.AddMX("example.org", 10, "gone.example.org")
	r.AddMX("example.org", 20, "txtonly.example.org")
	r.AddMX("example.org", 30, "mx2.example.org")
	r.AddMX("example.org", 40, "MX2.example.org") // the same host again
	r.AddTXT("txtonly.example.org", "no address")
	p := plannerTestNew(t, r, nil)
	plan, err := p.Plan(context.Background(), "example.org")
	require.NoError(t, err)
	require.Len(t, plan.Hops, 1)
	assert.Equal(t, "mx2.example.org", plan.Hops[0].Host)
	assert.Equal(t, uint16(30), plan.Hops[0].Pref, "a host listed twice keeps its best preference")
}

func TestPlanIPLiteralMX(t *testing.T) {
	r := new(StaticResolver)
	r.AddMX("example.org", 10, "192.0.2.7")
	r.AddMX("example.org", 20, "[2001:DB8::7]")
	counting := &plannerTestCounting{r: r}
	p := plannerTestNew(t, counting, nil)
	plan, err := p.Plan(context.Background(), "example.org")
	require.NoError(t, err)
	assert.Equal(t, []Hop{
		{Host: "192.0.2.7", Port: 25, Pref: 10, Source: HopMX, Addrs: plannerTestAddrs("192.0.2.7")},
		{Host: "2001:db8::7", Port: 25, Pref: 20, Source: HopMX, Addrs: plannerTestAddrs("2001:db8::7")},
	}, plan.Hops)
	assert.Equal(t, int64(1), counting.n.Load(), "an address is not looked up")
}

func TestPlanSelf(t *testing.T) {
	r := plannerTestZone()
	r.AddAddr("self.example.org", plannerTestAddrs("192.0.2.100")...)
	r.AddMX("secondary.example.org", 10, "mx1.example.org")
	r.AddMX("secondary.example.org", 20, "self.example.org")
	r.AddMX("secondary.example.org", 20, "mx2.example.org")
	r.AddMX("secondary.example.org", 30, "mx3.example.org")
	r.AddMX("secondary.example.org", 40, "self.example.org")
	r.AddMX("primary.example.org", 10, "self.example.org")
	r.AddMX("primary.example.org", 10, "mx1.example.org")
	r.AddMX("primary.example.org", 20, "mx2.example.org")
	r.AddMX("other.example.org", 10, "mx4.example.org")
	p := plannerTestNew(t, r, &PlannerOptions{
		Self:          []string{"SELF.example.org."},
		FallbackRelay: []string{"192.0.2.250"},
	})
	ctx := context.Background()

	plan, err := p.Plan(ctx, "secondary.example.org")
	require.NoError(t, err)
	assert.Equal(t, []string{"mx1.example.org"}, plannerTestHosts(plan.Hops),
		"only MXs better than this node's best are left")
	assert.Empty(t, plan.Fallback, "no fallback relay for a domain this node is an MX of")

	for _, d := range []string{"primary.example.org", "self.example.org"} {
		_, err = p.Plan(ctx, d)
		de := plannerTestFailure(t, err, 554, "5.4.6", true)
		assert.ErrorIs(t, de, ErrPlanLoopsBack)
		assert.Equal(t, "mail for "+d+" loops back to myself", de.Message)
	}

	plan, err = p.Plan(ctx, "other.example.org")
	require.NoError(t, err)
	assert.Equal(t, []string{"mx4.example.org"}, plannerTestHosts(plan.Hops))
	assert.Equal(t, []Hop{{Host: "192.0.2.250", Port: 25, Source: HopFallback, Addrs: plannerTestAddrs("192.0.2.250")}},
		plan.Fallback)
}

func TestPlanSelfAddrs(t *testing.T) {
	// An MX that this node is under another name, or an IP literal, or
	// one that resolves to an address of this machine, once made mail
	// loop: self-detection went by name only.
	r := plannerTestZone()
	r.AddAddr("alias-of-me.example.net", plannerTestAddrs("192.0.2.100")...)
	r.AddAddr("lo.example.net", plannerTestAddrs("127.0.0.1")...)
	r.AddMX("secondary.example.org", 10, "mx1.example.org")
	r.AddMX("secondary.example.org", 20, "alias-of-me.example.net")
	r.AddMX("secondary.example.org", 30, "mx4.example.org")
	r.AddMX("literal.example.org", 10, "[192.0.2.100]")
	r.AddMX("literal.example.org", 20, "mx4.example.org")
	r.AddMX("local.example.org", 10, "lo.example.net")
	r.AddAddr("implicit.example.org", plannerTestAddrs("192.0.2.100")...)
	p, err := NewPlanner(r, &PlannerOptions{
		SelfAddrs:     plannerTestAddrs("192.0.2.100"),
		FallbackRelay: []string{"192.0.2.250"},
	})
	require.NoError(t, err)
	ctx := context.Background()
	plan, err := p.Plan(ctx, "secondary.example.org")
	require.NoError(t, err)
	assert.Equal(t, []string{"mx1.example.org"}, plannerTestHosts(plan.Hops), "only MXs better than this node are left")
	assert.Empty(t, plan.Fallback, "no fallback relay for a domain this node is an MX of")

	for _, d := range []string{"literal.example.org", "local.example.org", "implicit.example.org"} {
		_, err = p.Plan(ctx, d)
		de := plannerTestFailure(t, err, 554, "5.4.6", true)
		assert.ErrorIs(t, de, ErrPlanLoopsBack, d)
	}

	// Loopback counts as this node only with the interface addresses.
	q := plannerTestNew(t, r, nil)
	plan, err = q.Plan(ctx, "local.example.org")
	require.NoError(t, err)
	assert.Equal(t, []string{"lo.example.net"}, plannerTestHosts(plan.Hops))
}

func TestPlanSelfInterfaceAddrs(t *testing.T) {
	// By default this machine's own interface addresses are this node's.
	var mine netip.Addr
	addrs, err := net.InterfaceAddrs()
	require.NoError(t, err)
	for _, a := range addrs {
		if pfx, err := netip.ParsePrefix(a.String()); err == nil && !pfx.Addr().IsLoopback() {
			mine = pfx.Addr()
			break
		}
	}
	if !mine.IsValid() {
		mine = netip.MustParseAddr("127.0.0.1") // a machine with loopback only
	}
	r := plannerTestZone()
	r.AddAddr("me.example.net", mine)
	r.AddMX("example.org", 10, "mx1.example.org")
	r.AddMX("example.org", 20, "me.example.net")
	p, err := NewPlanner(r, nil)
	require.NoError(t, err)
	plan, err := p.Plan(context.Background(), "example.org")
	require.NoError(t, err)
	assert.Equal(t, []string{"mx1.example.org"}, plannerTestHosts(plan.Hops), "%v is this machine's", mine)
}

func TestPlanRoutes(t *testing.T) {
	r := plannerTestZone()
	r.AddMX("example.org", 10, "mx1.example.org")
	r.AddAddr("relay.example.net", plannerTestAddrs("192.0.2.60")...)
	r.AddAddr("smart.example.net", plannerTestAddrs("192.0.2.70", "2001:db8::70")...)
	counting := &plannerTestCounting{r: r}
	p := plannerTestNew(t, counting, &PlannerOptions{
		Routes: []Route{
			{Domain: "pool.example.org", Host: "192.0.2.10, [2001:db8::10]:2424,mx2.example.org:2525", LMTP: true},
			{Domain: "bücher.example", Host: "[relay.example.net]"},
			{Domain: "broken.example.org", Host: "gone.example.org"},
			{Domain: "*", Host: "smart.example.net:587"},
		},
		FallbackRelay: []string{"relay.example.net"},
	})
	ctx := context.Background()

	plan, err := p.Plan(ctx, "pool.example.org")
	require.NoError(t, err)
	assert.Equal(t, &Plan{Domain: "pool.example.org", Hops: []Hop{
		{Host: "192.0.2.10", Port: 24, Source: HopRoute, LMTP: true, Addrs: plannerTestAddrs("192.0.2.10")},
		{Host: "2001:db8::10", Port: 2424, Source: HopRoute, LMTP: true, Addrs: plannerTestAddrs("2001:db8::10")},
		{Host: "mx2.example.org", Port: 2525, Source: HopRoute, LMTP: true, Addrs: plannerTestAddrs("192.0.2.2")},
	}}, plan, "route hosts in order; no fallback for a route")

	plan, err = p.Plan(ctx, "BÜCHER.example")
	require.NoError(t, err)
	assert.Equal(t, "xn--bcher-kva.example", plan.Domain)
	assert.Equal(t, []Hop{{Host: "relay.example.net", Port: 25, Source: HopRoute, Addrs: plannerTestAddrs("192.0.2.60")}}, plan.Hops)

	before := counting.n.Load()
	plan, err = p.Plan(ctx, "example.org")
	require.NoError(t, err)
	assert.Equal(t, []Hop{{Host: "smart.example.net", Port: 587, Source: HopRoute,
		Addrs: plannerTestAddrs("192.0.2.70", "2001:db8::70")}}, plan.Hops, `"*" is the smart host`)
	assert.Empty(t, plan.Fallback)
	assert.Equal(t, []string{"smart.example.net/A", "smart.example.net/AAAA"}, counting.since(before),
		"a route replaces the MX lookup")

	_, err = p.Plan(ctx, "broken.example.org")
	de := plannerTestFailure(t, err, 451, "4.4.4", false)
	assert.ErrorIs(t, de, ErrPlanNoHost)
}

func TestPlanFallbackRelay(t *testing.T) {
	r := plannerTestZone()
	r.AddMX("example.org", 10, "mx1.example.org")
	r.AddAddr("relay.example.net", plannerTestAddrs("192.0.2.60")...)
	p := plannerTestNew(t, r, &PlannerOptions{FallbackRelay: []string{"relay.example.net:2525", "gone.example.net", "[2001:db8::61]"}})
	plan, err := p.Plan(context.Background(), "example.org")
	require.NoError(t, err)
	assert.Equal(t, []string{"mx1.example.org"}, plannerTestHosts(plan.Hops))
	assert.Equal(t, []Hop{
		{Host: "relay.example.net", Port: 2525, Source: HopFallback, Addrs: plannerTestAddrs("192.0.2.60")},
		{Host: "2001:db8::61", Port: 25, Source: HopFallback, Addrs: plannerTestAddrs("2001:db8::61")},
	}, plan.Fallback, "relays without address are left out")
}

// plannerTestCounting counts and records the lookups it passes on.
type plannerTestCounting struct {
	r  Resolver
	n  atomic.Int64
	mu sync.Mutex
	qs []string
}

func (c *plannerTestCounting) Lookup(ctx context.Context, name string, t Type) (Result, error) {
	c.n.Add(1)
	c.mu.Lock()
	c.qs = append(c.qs, name+"/"+t.String())
	c.mu.Unlock()
	return c.r.Lookup(ctx, name, t)
}

// since returns the lookups after the first n, sorted.
func (c *plannerTestCounting) since(n int64) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	qs := slices.Clone(c.qs[n:])
	slices.Sort(qs)
	return qs
}

// plannerTestHopper answers like an authoritative server whose CNAME
// targets are elsewhere: one alias per answer, without the target's records.
type plannerTestHopper struct {
	cname map[string]string
	zone  *StaticResolver
}

func (h *plannerTestHopper) Lookup(ctx context.Context, name string, t Type) (Result, error) {
	if target, ok := h.cname[name]; ok {
		return Result{CNAME: target}, nil
	}
	return h.zone.Lookup(ctx, name, t)
}

func TestPlanCNAMEHops(t *testing.T) {
	zone := plannerTestZone()
	zone.AddMX("target.example.org", 10, "mx1.example.org")
	zone.AddAddr("host-target.example.org", plannerTestAddrs("192.0.2.77")...)
	h := &plannerTestHopper{zone: zone, cname: map[string]string{
		"a1.example.org":    "a2.example.org",
		"a2.example.org":    "a3.example.org",
		"a3.example.org":    "target.example.org.",
		"l1.example.org":    "l2.example.org",
		"l2.example.org":    "l1.example.org",
		"host1.example.org": "host-target.example.org",
	}}
	zone.AddMX("hostalias.example.org", 10, "host1.example.org")
	ctx := context.Background()

	p := plannerTestNew(t, h, &PlannerOptions{MaxCNAMEHops: 3})
	plan, err := p.Plan(ctx, "a1.example.org")
	require.NoError(t, err)
	assert.Equal(t, "a1.example.org", plan.Domain)
	assert.Equal(t, []string{"mx1.example.org"}, plannerTestHosts(plan.Hops))

	plan, err = p.Plan(ctx, "hostalias.example.org")
	require.NoError(t, err, "an MX host that is an alias is followed too")
	assert.Equal(t, plannerTestAddrs("192.0.2.77"), plan.Hops[0].Addrs)

	p = plannerTestNew(t, h, &PlannerOptions{MaxCNAMEHops: 2})
	_, err = p.Plan(ctx, "a1.example.org")
	de := plannerTestFailure(t, err, 451, "4.4.3", false)
	assert.ErrorIs(t, de, ErrPlanCNAMELoop)

	counting := &plannerTestCounting{r: h}
	p = plannerTestNew(t, counting, &PlannerOptions{MaxCNAMEHops: 50})
	_, err = p.Plan(ctx, "l1.example.org")
	de = plannerTestFailure(t, err, 451, "4.4.3", false)
	assert.ErrorIs(t, de, ErrPlanCNAMELoop)
	assert.Equal(t, int64(2), counting.n.Load(), "the loop is found when a name comes again, long before the hop limit")
}

func TestPlanInvalidDomain(t *testing.T) {
	counting := &plannerTestCounting{r: new(StaticResolver)}
	p := plannerTestNew(t, counting, nil)
	for _, d := range []string{
		"", ".", "..", "a..b", ".example.org", "exa mple.org", "user@example.org", "example_org.net",
		"-example.org", "example-.org", strings.Repeat("a", 64) + ".org",
		strings.Repeat("abcdefghi.", 25) + "orgx", // 254 octets
		"192.0.2.1", "[192.0.2.1]", "example.123", "xn--a.org", "ab--cd.org", "\xff.org",
		strings.Repeat("a", 5000),
	} {
		_, err := p.Plan(context.Background(), d)
		de := plannerTestFailure(t, err, 553, "5.1.2", true)
		assert.ErrorIs(t, de, ErrPlanBadDomain, "%q", d)
	}
	assert.Zero(t, counting.n.Load(), "an invalid domain is not looked up")
}

func TestPlanDomainNormalization(t *testing.T) {
	for in, want := range map[string]string{
		"example.org":                          "example.org",
		"Example.ORG.":                         "example.org",
		"bücher.example":                       "xn--bcher-kva.example",
		"BÜCHER.Example.":                      "xn--bcher-kva.example",
		"xn--bcher-kva.example":                "xn--bcher-kva.example",
		"例え。テスト":                               "xn--r8jz45g.xn--zckzah",
		"ｅｘａｍｐｌｅ.org":                          "example.org",
		strings.Repeat("a", 63) + ".org":       strings.Repeat("a", 63) + ".org",
		"localhost":                            "localhost",
		"a-b.c0.org":                           "a-b.c0.org",
		strings.Repeat("abcdefgh.", 27) + "or": strings.Repeat("abcdefgh.", 27) + "or", // 245
	} {
		got, err := domainname.ToASCII(in)
		if assert.NoError(t, err, in) {
			assert.Equal(t, want, got, in)
		}
	}
}

func TestPlanContextCanceled(t *testing.T) {
	r := plannerTestZone()
	r.AddMX("example.org", 10, "mx1.example.org")
	p := plannerTestNew(t, r, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := p.Plan(ctx, "example.org")
	plannerTestFailure(t, err, 451, "4.4.3", false)
	assert.ErrorIs(t, err, context.Canceled)
}

func TestNewPlannerErrors(t *testing.T) {
	r := new(StaticResolver)
	_, err := NewPlanner(nil, nil)
	assert.Error(t, err)
	for _, o := range []PlannerOptions{
		{Self: []string{"not a host"}},
		{Routes: []Route{{Domain: "example.org", Host: ""}}},
		{Routes: []Route{{Domain: "example.org", Host: "a.example.org,"}}},
		{Routes: []Route{{Domain: "example.org", Host: "a.example.org:0"}}},
		{Routes: []Route{{Domain: "example.org", Host: "a.example.org:x"}}},
		{Routes: []Route{{Domain: "bad domain", Host: "a.example.org"}}},
		{Routes: []Route{{Domain: "example.org", Host: "a.example.org"}, {Domain: "EXAMPLE.org", Host: "b.example.org"}}},
		{Routes: []Route{{Domain: "*", Host: "a.example.org"}, {Domain: "*", Host: "b.example.org"}}},
		{FallbackRelay: []string{"a b"}},
		{MaxCNAMEHops: -1},
	} {
		_, err := NewPlanner(r, &o)
		assert.Error(t, err, "%+v", o)
	}
}

func TestHopSourceString(t *testing.T) {
	for s, want := range map[HopSource]string{HopMX: "mx", HopImplicitMX: "implicit-mx", HopRoute: "route",
		HopFallback: "fallback", 0: "HopSource(0)"} {
		assert.Equal(t, want, s.String())
	}
}

// TestPlanOverDNSResolver runs the planner over a DNSResolver over a DNS
// server on loopback, and checks that a second plan costs no query.
func TestPlanOverDNSResolver(t *testing.T) {
	srv := dnsTestStart(t,
		dnsTestSOA,
		"example.org. 300 IN CNAME mail-example.example.net.",
		"mail-example.example.net. 300 IN MX 10 mx1.example.org.",
		"mail-example.example.net. 300 IN MX 20 mx2.example.org.",
		"mail-example.example.net. 300 IN MX 20 mx3.example.org.",
		"mx1.example.org. 300 IN A 192.0.2.1",
		"mx1.example.org. 300 IN AAAA 2001:db8::1",
		"mx2.example.org. 300 IN CNAME real-mx2.example.org.",
		"real-mx2.example.org. 300 IN A 192.0.2.2",
		"mx3.example.org. 300 IN TXT \"no address\"",
		"nomx.example.org. 300 IN AAAA 2001:db8::99",
		"null.example.org. 300 IN MX 0 .",
	)
	r := dnsTestResolver(t, nil, srv.addr)
	p := plannerTestNew(t, r, nil)
	ctx := dnsTestCtx(t)

	plan, err := p.Plan(ctx, "Example.org")
	require.NoError(t, err)
	assert.Equal(t, &Plan{Domain: "example.org", Hops: []Hop{
		{Host: "mx1.example.org", Port: 25, Pref: 10, Source: HopMX, Addrs: plannerTestAddrs("192.0.2.1", "2001:db8::1")},
		{Host: "mx2.example.org", Port: 25, Pref: 20, Source: HopMX, Addrs: plannerTestAddrs("192.0.2.2")},
	}}, plan)

	queries := srv.total()
	_, err = p.Plan(ctx, "example.org")
	require.NoError(t, err)
	assert.Equal(t, queries, srv.total(), "the second plan is answered from the cache")

	plan, err = p.Plan(ctx, "nomx.example.org")
	require.NoError(t, err)
	assert.Equal(t, []Hop{{Host: "nomx.example.org", Port: 25, Source: HopImplicitMX, Addrs: plannerTestAddrs("2001:db8::99")}}, plan.Hops)

	_, err = p.Plan(ctx, "nx.example.org")
	plannerTestFailure(t, err, 550, "5.1.2", true)
	_, err = p.Plan(ctx, "null.example.org")
	plannerTestFailure(t, err, 556, "5.1.10", true)
	srv.set(func(s *dnsTestServer) { s.rcode["down.example.org."] = 2 })
	_, err = p.Plan(ctx, "down.example.org")
	plannerTestFailure(t, err, 451, "4.4.3", false)
}

func TestPlanConcurrent(t *testing.T) {
	r := plannerTestZone()
	for _, h := range []string{"mx1", "mx2", "mx3", "mx4"} {
		r.AddMX("example.org", 10, h+".example.org")
	}
	p := plannerTestNew(t, r, &PlannerOptions{Rand: rand.New(rand.NewPCG(5, 6)).IntN})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				plan, err := p.Plan(context.Background(), "example.org")
				if assert.NoError(t, err) {
					assert.Len(t, plan.Hops, 4)
				}
			}
		})
	}
	wg.Wait()
}

// FuzzPlanDomain checks that any string given as a domain either plans
// with a valid, normalised domain or fails permanently as invalid, and
// never panics.
//
// Its seeds are in testdata/fuzz/FuzzPlanDomain.
func FuzzPlanDomain(f *testing.F) {
	p, err := NewPlanner(new(StaticResolver), &PlannerOptions{Routes: []Route{{Domain: "*", Host: "192.0.2.1"}}})
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, s string) {
		plan, err := p.Plan(context.Background(), s)
		if err != nil {
			var de *resilmail.DeliveryError
			require.ErrorAs(t, err, &de)
			require.True(t, de.Permanent)
			require.Equal(t, "5.1.2", de.EnhancedCode)
			require.ErrorIs(t, err, ErrPlanBadDomain)
			return
		}
		d := plan.Domain
		require.NoError(t, domainname.CheckName(d), "%q gave %q", s, d)
		require.True(t, utf8.ValidString(d))
		require.LessOrEqual(t, len(d), 253)
		again, err := domainname.ToASCII(d)
		require.NoError(t, err)
		require.Equal(t, d, again, "normalisation is idempotent")

		trimmed := strings.TrimSuffix(s, ".")
		if domainname.PlainLDH(trimmed) {
			viaIDNA, err := idna.Lookup.ToASCII(trimmed)
			require.NoError(t, err, "the fast path accepts only what IDNA accepts: %q", s)
			require.Equal(t, viaIDNA, d, "the fast path gives what IDNA gives")
		}
	})
}

func ExamplePlanner_Plan() {
	zone := new(StaticResolver)
	zone.AddMX("example.org", 10, "mx1.example.org")
	zone.AddMX("example.org", 20, "mx2.example.org")
	zone.AddAddr("mx1.example.org", netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8::1"))
	zone.AddAddr("mx2.example.org", netip.MustParseAddr("198.51.100.2"))
	zone.AddMX("nomail.example.org", 0, ".")

	p, err := NewPlanner(zone, nil)
	if err != nil {
		panic(err)
	}
	plan, err := p.Plan(context.Background(), "Example.ORG")
	if err != nil {
		panic(err)
	}
	for _, hop := range plan.Hops {
		fmt.Println(hop.Source, hop.Pref, hop.Host, hop.AddrPorts())
	}

	_, err = p.Plan(context.Background(), "nomail.example.org")
	var de *resilmail.DeliveryError
	if errors.As(err, &de) {
		fmt.Println(de.Permanent, de.Reply())
	}
	// Output:
	// mx 10 mx1.example.org [198.51.100.1:25 [2001:db8::1]:25]
	// mx 20 mx2.example.org [198.51.100.2:25]
	// true 556 5.1.10 domain nomail.example.org accepts no mail (null MX)
}
