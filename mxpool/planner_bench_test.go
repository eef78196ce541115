package mxpool

import (
	"context"
	"net/netip"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkPlanCached measures Plan when every answer comes from memory: a
// DNSResolver whose cache is warm (its loopback server is asked only while
// warming up) and a StaticResolver. The domain has three MX hosts, two of
// equal preference, each with an IPv4 and an IPv6 address.
func BenchmarkPlanCached(b *testing.B) {
	const domain = "example.org"
	mxs := []struct {
		pref uint16
		host string
		v4   string
		v6   string
	}{
		{10, "mx1.example.org", "192.0.2.1", "2001:db8::1"},
		{10, "mx2.example.org", "192.0.2.2", "2001:db8::2"},
		{20, "mx3.example.org", "192.0.2.3", "2001:db8::3"},
	}

	static := new(StaticResolver)
	zone := []string{dnsTestSOA}
	for _, mx := range mxs {
		static.AddMX(domain, mx.pref, mx.host)
		static.AddAddr(mx.host, netip.MustParseAddr(mx.v4), netip.MustParseAddr(mx.v6))
		zone = append(zone,
			domain+". 3600 IN MX "+strconv.Itoa(int(mx.pref))+" "+mx.host+".",
			mx.host+". 3600 IN A "+mx.v4,
			mx.host+". 3600 IN AAAA "+mx.v6,
		)
	}
	srv := dnsTestStart(b, zone...)
	dnsr, err := NewDNSResolver(&DNSOptions{Servers: []string{srv.addr}})
	require.NoError(b, err)

	for _, bc := range []struct {
		name string
		r    Resolver
	}{
		{"DNSResolver", dnsr},
		{"StaticResolver", static},
	} {
		b.Run(bc.name, func(b *testing.B) {
			// The MXs' documentation addresses may be this machine's own
			// (192.0.2.2 is, on some test machines): this measures planning,
			// not self-detection.
			p, err := NewPlanner(bc.r, &PlannerOptions{NoInterfaceAddrs: true})
			require.NoError(b, err)
			ctx := context.Background()
			plan, err := p.Plan(ctx, domain) // warms the cache
			require.NoError(b, err)
			require.Len(b, plan.Hops, 3)
			queries := srv.total()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Plan(ctx, domain); err != nil {
					b.Fatal(err)
				}
			}
			if srv.total() != queries {
				b.Fatalf("the DNS server was asked %d times while the cache was warm", srv.total()-queries)
			}
		})
	}
}
