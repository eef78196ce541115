package mxpool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/testclock"
)

// dnsTestServer is a recursive DNS server on 127.0.0.1 (UDP and TCP, same
// port) answering from a zone the test writes. It follows CNAMEs in its
// zone as a recursive server would, answers NXDOMAIN for names that have no
// records, and puts the zone's SOA (if any) in negative answers.
type dnsTestServer struct {
	addr string

	mu       sync.Mutex
	rrs      []dns.RR
	soa      *dns.SOA
	rcode    map[string]int                 // name → rcode to answer
	truncate map[string]bool                // name → answer over UDP with TC set
	raw      map[string]func(*dns.Msg)      // name → writes the answer itself
	block    map[string]chan struct{}       // name → wait for the channel first
	queries  map[string]int                 // "name/TYPE" → count
	udpSizes []uint16                       // EDNS0 sizes seen, 0 without OPT
	hook     func(q dns.Question, tcp bool) // called for every query
	udp, tcp atomic.Int64
}

// dnsTestStart starts a server with the zone given in master-file lines.
func dnsTestStart(t testing.TB, zone ...string) *dnsTestServer {
	t.Helper()
	s := &dnsTestServer{
		rcode:    map[string]int{},
		truncate: map[string]bool{},
		raw:      map[string]func(*dns.Msg){},
		block:    map[string]chan struct{}{},
		queries:  map[string]int{},
	}
	s.add(t, zone...)
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	for range 20 {
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
	}
	require.NoError(t, err, "no port free for both UDP and TCP")
	s.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: ln, Handler: s}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.ShutdownContext(ctx)
		})
	}
	return s
}

// add adds records in master-file format; an SOA becomes the zone's SOA.
func (s *dnsTestServer) add(t testing.TB, lines ...string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		require.NoError(t, err, l)
		if soa, ok := rr.(*dns.SOA); ok {
			s.soa = soa
			continue
		}
		s.rrs = append(s.rrs, rr)
	}
}

func (s *dnsTestServer) set(f func(s *dnsTestServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// count returns how many queries for name and type the server received.
func (s *dnsTestServer) count(name string, t uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[dns.Fqdn(name)+"/"+dns.TypeToString[t]]
}

func (s *dnsTestServer) total() int {
	return int(s.udp.Load() + s.tcp.Load())
}

// ServeDNS answers one query.
func (s *dnsTestServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	if tcp {
		s.tcp.Add(1)
	} else {
		s.udp.Add(1)
	}
	s.mu.Lock()
	s.queries[name+"/"+dns.TypeToString[q.Qtype]]++
	size := uint16(0)
	if opt := r.IsEdns0(); opt != nil {
		size = opt.UDPSize()
	}
	s.udpSizes = append(s.udpSizes, size)
	hook, block := s.hook, s.block[name]
	s.mu.Unlock()
	if hook != nil {
		hook(q, tcp)
	}
	if block != nil {
		<-block
	}

	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.raw[name] != nil:
		s.raw[name](m)
	case s.rcode[name] != 0:
		m.Rcode = s.rcode[name]
	case s.truncate[name] && !tcp:
		m.Truncated = true
	default:
		s.answerLocked(m, name, q.Qtype)
	}
	_ = w.WriteMsg(m)
}

// answerLocked fills m as a recursive server would.
func (s *dnsTestServer) answerLocked(m *dns.Msg, name string, qtype uint16) {
	for range 10 {
		exists, cname := false, ""
		for _, rr := range s.rrs {
			h := rr.Header()
			if !strings.EqualFold(h.Name, name) {
				continue
			}
			exists = true
			if h.Rrtype == qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
			if c, ok := rr.(*dns.CNAME); ok {
				cname = c.Target
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
		}
		switch {
		case !exists:
			m.Rcode = dns.RcodeNameError
		case cname != "" && qtype != dns.TypeCNAME:
			name = strings.ToLower(cname)
			continue
		}
		break
	}
	if len(m.Answer) == 0 || m.Rcode == dns.RcodeNameError {
		if s.soa != nil {
			m.Ns = append(m.Ns, dns.Copy(s.soa))
		}
	}
}

// dnsTestSilent returns the address of a UDP socket that never answers.
func dnsTestSilent(t testing.TB) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

// dnsTestResolver returns a resolver asking servers once each. Its timeout
// is long enough for a loaded machine: tests that wait for a timeout set
// their own.
func dnsTestResolver(t testing.TB, clock *testclock.Clock, servers ...string) *DNSResolver {
	t.Helper()
	opts := &DNSOptions{Servers: servers, Timeout: 2 * time.Second, Attempts: 1}
	if clock != nil {
		opts.Now = clock.Now
	}
	r, err := NewDNSResolver(opts)
	require.NoError(t, err)
	return r
}

func dnsTestCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

const dnsTestSOA = "example.org. 3600 IN SOA ns.example.org. host.example.org. 1 7200 3600 1209600 30"

func TestDNSResolverAnswers(t *testing.T) {
	srv := dnsTestStart(t,
		dnsTestSOA,
		"example.org. 300 IN MX 10 MX1.Example.ORG.",
		"example.org. 300 IN MX 20 mx2.example.org.",
		"example.org. 300 IN TXT \"v=spf1 \" \"-all\"",
		"example.org. 300 IN TXT \"second\"",
		"mx1.example.org. 300 IN A 192.0.2.1",
		"mx1.example.org. 300 IN A 192.0.2.2",
		"mx1.example.org. 300 IN AAAA 2001:db8::1",
		"nomail.example.org. 300 IN MX 0 .",
	)
	r := dnsTestResolver(t, nil, srv.addr)
	ctx := dnsTestCtx(t)

	tests := []struct {
		name string
		t    Type
		want Result
	}{
		{"example.org", TypeMX, Result{MX: []MX{{"mx1.example.org", 10}, {"mx2.example.org", 20}}, TTL: 300 * time.Second}},
		{"Example.ORG.", TypeTXT, Result{TXT: []string{"v=spf1 -all", "second"}, TTL: 300 * time.Second}},
		{"mx1.example.org", TypeA, Result{Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}, TTL: 300 * time.Second}},
		{"mx1.example.org", TypeAAAA, Result{Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::1")}, TTL: 300 * time.Second}},
		{"nomail.example.org", TypeMX, Result{MX: []MX{{".", 0}}, TTL: 300 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/"+tt.t.String(), func(t *testing.T) {
			got, err := r.Lookup(ctx, tt.name, tt.t)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, size := range srv.udpSizes {
		assert.Equal(t, uint16(1232), size, "every query carries EDNS0 with the default size")
	}
}

func TestDNSResolverNotFoundNoDataFailure(t *testing.T) {
	srv := dnsTestStart(t,
		dnsTestSOA,
		"example.org. 300 IN A 192.0.2.1",
		"servfail.example.org. 300 IN A 192.0.2.1",
		"refused.example.org. 300 IN A 192.0.2.1",
	)
	srv.set(func(s *dnsTestServer) {
		s.rcode["servfail.example.org."] = dns.RcodeServerFailure
		s.rcode["refused.example.org."] = dns.RcodeRefused
	})
	r := dnsTestResolver(t, nil, srv.addr)
	ctx := dnsTestCtx(t)

	t.Run("NXDOMAIN", func(t *testing.T) {
		_, err := r.Lookup(ctx, "nope.example.org", TypeMX)
		var de *DNSError
		require.ErrorAs(t, err, &de)
		assert.True(t, de.NotFound)
		assert.False(t, de.Temporary)
		assert.Equal(t, "nope.example.org", de.Name)
		assert.Equal(t, TypeMX, de.Type)
	})
	t.Run("NODATA", func(t *testing.T) {
		res, err := r.Lookup(ctx, "example.org", TypeMX)
		require.NoError(t, err)
		assert.Empty(t, res.MX)
		assert.Empty(t, res.CNAME)
		assert.Equal(t, 30*time.Second, res.TTL, "negative TTL is min(SOA TTL, SOA MINIMUM)")
	})
	for _, name := range []string{"servfail.example.org", "refused.example.org"} {
		t.Run(name, func(t *testing.T) {
			for i := range 2 {
				_, err := r.Lookup(ctx, name, TypeA)
				var de *DNSError
				require.ErrorAs(t, err, &de)
				assert.True(t, de.Temporary)
				assert.False(t, de.NotFound)
				assert.Equal(t, i+1, srv.count(name, dns.TypeA), "temporary failures are not cached")
			}
		})
	}
	t.Run("invalid name", func(t *testing.T) {
		before := srv.total()
		_, err := r.Lookup(ctx, "a..b", TypeA)
		var de *DNSError
		require.ErrorAs(t, err, &de)
		assert.True(t, de.NotFound)
		assert.Equal(t, before, srv.total(), "an invalid name is not asked")
	})
	assert.Equal(t, uint64(4), r.Stats().TempFailures)
}

func TestDNSResolverCNAME(t *testing.T) {
	srv := dnsTestStart(t,
		dnsTestSOA,
		"alias.example.org. 300 IN CNAME Mid.Example.org.",
		"mid.example.org. 60 IN CNAME target.example.org.",
		"target.example.org. 300 IN MX 10 mx.example.org.",
		"target.example.org. 300 IN A 192.0.2.9",
		"noaddr.example.org. 300 IN CNAME target.example.org.",
	)
	srv.set(func(s *dnsTestServer) {
		// An answer with records of other names mixed in: only the chain's
		// last name counts.
		s.raw["decoy.example.org."] = func(m *dns.Msg) {
			for _, l := range []string{
				"decoy.example.org. 300 IN CNAME real.example.org.",
				"other.example.org. 300 IN MX 1 evil.example.net.",
				"real.example.org. 300 IN MX 5 good.example.org.",
			} {
				rr, _ := dns.NewRR(l)
				m.Answer = append(m.Answer, rr)
			}
		}
		s.raw["loop.example.org."] = func(m *dns.Msg) {
			for _, l := range []string{
				"loop.example.org. 300 IN CNAME loop2.example.org.",
				"loop2.example.org. 300 IN CNAME loop.example.org.",
			} {
				rr, _ := dns.NewRR(l)
				m.Answer = append(m.Answer, rr)
			}
		}
	})
	r := dnsTestResolver(t, nil, srv.addr)
	ctx := dnsTestCtx(t)

	res, err := r.Lookup(ctx, "alias.example.org", TypeMX)
	require.NoError(t, err)
	assert.Equal(t, "target.example.org", res.CNAME)
	assert.Equal(t, []MX{{"mx.example.org", 10}}, res.MX)
	assert.Equal(t, 60*time.Second, res.TTL, "TTL is the smallest of the chain")

	res, err = r.Lookup(ctx, "noaddr.example.org", TypeAAAA)
	require.NoError(t, err, "an alias whose target has no AAAA is NODATA")
	assert.Equal(t, "target.example.org", res.CNAME)
	assert.Empty(t, res.Addrs)

	res, err = r.Lookup(ctx, "decoy.example.org", TypeMX)
	require.NoError(t, err)
	assert.Equal(t, "real.example.org", res.CNAME)
	assert.Equal(t, []MX{{"good.example.org", 5}}, res.MX)

	_, err = r.Lookup(ctx, "loop.example.org", TypeMX)
	var de *DNSError
	require.ErrorAs(t, err, &de)
	assert.True(t, de.Temporary, "a CNAME loop is a temporary failure")
}

func TestDNSResolverTruncatedRetriesOverTCP(t *testing.T) {
	srv := dnsTestStart(t, "big.example.org. 300 IN TXT \"full answer\"")
	srv.set(func(s *dnsTestServer) { s.truncate["big.example.org."] = true })
	r := dnsTestResolver(t, nil, srv.addr)

	res, err := r.Lookup(dnsTestCtx(t), "big.example.org", TypeTXT)
	require.NoError(t, err)
	assert.Equal(t, []string{"full answer"}, res.TXT)
	assert.Equal(t, int64(1), srv.udp.Load())
	assert.Equal(t, int64(1), srv.tcp.Load(), "the truncated UDP answer is asked again over TCP")
	assert.Equal(t, uint64(1), r.Stats().TCPQueries)
}

func TestDNSResolverCache(t *testing.T) {
	srv := dnsTestStart(t,
		dnsTestSOA,
		"example.org. 300 IN MX 10 mx.example.org.",
		"capped.example.org. 86400 IN A 192.0.2.1",
		"zero.example.org. 0 IN A 192.0.2.1",
	)
	clock := testclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	r, err := NewDNSResolver(&DNSOptions{Servers: []string{srv.addr}, Timeout: time.Second, Now: clock.Now, MaxTTL: time.Hour})
	require.NoError(t, err)
	ctx := dnsTestCtx(t)

	lookup := func(name string, typ Type) Result {
		t.Helper()
		res, err := r.Lookup(ctx, name, typ)
		require.NoError(t, err)
		return res
	}

	first := lookup("example.org", TypeMX)
	assert.Equal(t, 300*time.Second, first.TTL)
	first.MX[0].Host = "mutated" // the caller owns its copy

	clock.Advance(299 * time.Second)
	got := lookup("EXAMPLE.org.", TypeMX)
	assert.Equal(t, 1, srv.count("example.org", dns.TypeMX), "answered from the cache, case-insensitively")
	assert.Equal(t, []MX{{"mx.example.org", 10}}, got.MX)
	assert.Equal(t, time.Second, got.TTL, "the cache reports the remaining TTL")

	clock.Advance(time.Second)
	lookup("example.org", TypeMX)
	assert.Equal(t, 2, srv.count("example.org", dns.TypeMX), "asked again once the TTL has passed")

	lookup("capped.example.org", TypeA)
	clock.Advance(time.Hour - time.Second)
	lookup("capped.example.org", TypeA)
	assert.Equal(t, 1, srv.count("capped.example.org", dns.TypeA))
	clock.Advance(time.Second)
	lookup("capped.example.org", TypeA)
	assert.Equal(t, 2, srv.count("capped.example.org", dns.TypeA), "TTL capped by MaxTTL")

	lookup("zero.example.org", TypeA)
	lookup("zero.example.org", TypeA)
	assert.Equal(t, 2, srv.count("zero.example.org", dns.TypeA), "a zero TTL is not cached")

	st := r.Stats()
	assert.Equal(t, uint64(8), st.Lookups)
	assert.Equal(t, uint64(2), st.CacheHits)
	assert.Equal(t, uint64(6), st.Queries)
}

func TestDNSResolverNegativeCache(t *testing.T) {
	for _, withSOA := range []bool{true, false} {
		t.Run(fmt.Sprintf("SOA=%v", withSOA), func(t *testing.T) {
			srv := dnsTestStart(t, "example.org. 300 IN A 192.0.2.1")
			want := 10 * time.Second // NegativeTTL
			if withSOA {
				srv.add(t, dnsTestSOA)
				want = 30 * time.Second // SOA MINIMUM, smaller than its TTL
			}
			clock := testclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			r, err := NewDNSResolver(&DNSOptions{Servers: []string{srv.addr}, Timeout: time.Second, Now: clock.Now, NegativeTTL: 10 * time.Second})
			require.NoError(t, err)
			ctx := dnsTestCtx(t)

			res, err := r.Lookup(ctx, "example.org", TypeMX)
			require.NoError(t, err)
			assert.Equal(t, want, res.TTL)
			_, err = r.Lookup(ctx, "nx.example.org", TypeA)
			require.Error(t, err)

			clock.Advance(want - time.Second)
			_, err = r.Lookup(ctx, "example.org", TypeMX)
			require.NoError(t, err)
			_, err = r.Lookup(ctx, "nx.example.org", TypeA)
			var de *DNSError
			require.ErrorAs(t, err, &de)
			assert.True(t, de.NotFound, "cached NXDOMAIN is still NXDOMAIN")
			assert.Equal(t, 1, srv.count("example.org", dns.TypeMX), "NODATA cached")
			assert.Equal(t, 1, srv.count("nx.example.org", dns.TypeA), "NXDOMAIN cached")

			clock.Advance(time.Second)
			_, _ = r.Lookup(ctx, "example.org", TypeMX)
			_, _ = r.Lookup(ctx, "nx.example.org", TypeA)
			assert.Equal(t, 2, srv.count("example.org", dns.TypeMX))
			assert.Equal(t, 2, srv.count("nx.example.org", dns.TypeA))
		})
	}
}

func TestDNSResolverFailover(t *testing.T) {
	good := dnsTestStart(t, "example.org. 300 IN A 192.0.2.1")
	bad := dnsTestStart(t, "example.org. 300 IN A 192.0.2.66")
	bad.set(func(s *dnsTestServer) { s.rcode["example.org."] = dns.RcodeServerFailure })
	silent := dnsTestSilent(t)
	want := []netip.Addr{netip.MustParseAddr("192.0.2.1")}

	t.Run("timeout", func(t *testing.T) {
		r, err := NewDNSResolver(&DNSOptions{Servers: []string{silent, good.addr}, Timeout: 500 * time.Millisecond, Attempts: 1})
		require.NoError(t, err)
		start := time.Now()
		res, err := r.Lookup(dnsTestCtx(t), "example.org", TypeA)
		require.NoError(t, err)
		assert.Equal(t, want, res.Addrs)
		assert.GreaterOrEqual(t, time.Since(start), 500*time.Millisecond, "the silent server was asked first")
		assert.Less(t, time.Since(start), 3*time.Second)
	})
	t.Run("SERVFAIL", func(t *testing.T) {
		r := dnsTestResolver(t, nil, bad.addr, good.addr)
		res, err := r.Lookup(dnsTestCtx(t), "example.org", TypeA)
		require.NoError(t, err)
		assert.Equal(t, want, res.Addrs)
		assert.Equal(t, 1, bad.count("example.org", dns.TypeA))
	})
	t.Run("all fail", func(t *testing.T) {
		before := bad.count("example.org", dns.TypeA)
		r, err := NewDNSResolver(&DNSOptions{Servers: []string{bad.addr, silent}, Timeout: 100 * time.Millisecond, Attempts: 2})
		require.NoError(t, err)
		start := time.Now()
		_, err = r.Lookup(dnsTestCtx(t), "example.org", TypeA)
		var de *DNSError
		require.ErrorAs(t, err, &de)
		assert.True(t, de.Temporary)
		assert.Less(t, time.Since(start), 2*time.Second)
		assert.Equal(t, before+2, bad.count("example.org", dns.TypeA), "Attempts rounds over the servers")
	})
}

func TestDNSResolverContextDone(t *testing.T) {
	r, err := NewDNSResolver(&DNSOptions{Servers: []string{dnsTestSilent(t)}, Timeout: 5 * time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = r.Lookup(ctx, "example.org", TypeA)
	var de *DNSError
	require.ErrorAs(t, err, &de)
	assert.True(t, de.Temporary)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 2*time.Second, "returns when the context is done, not after Timeout")

	_, err = r.Lookup(ctx, "example.org", TypeA)
	assert.ErrorIs(t, err, context.DeadlineExceeded, "a done context fails at once")
}

func TestDNSResolverSharesConcurrentLookups(t *testing.T) {
	// TTL 0: nothing is cached, so only the shared query can explain a
	// single query.
	srv := dnsTestStart(t, "example.org. 0 IN A 192.0.2.1")
	release := make(chan struct{})
	srv.set(func(s *dnsTestServer) { s.block["example.org."] = release })
	r, err := NewDNSResolver(&DNSOptions{Servers: []string{srv.addr}, Timeout: 10 * time.Second})
	require.NoError(t, err)
	ctx := dnsTestCtx(t)

	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	results := make([]Result, n)
	for i := range n {
		wg.Go(func() { results[i], errs[i] = r.Lookup(ctx, "Example.org", TypeA) })
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.Stats().InFlight < n && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	require.Equal(t, int64(n), r.Stats().InFlight, "every lookup waits for the one query")
	close(release)
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		assert.Equal(t, []netip.Addr{netip.MustParseAddr("192.0.2.1")}, results[i].Addrs)
	}
	assert.Equal(t, 1, srv.count("example.org", dns.TypeA))
	results[0].Addrs[0] = netip.Addr{}
	assert.True(t, results[1].Addrs[0].IsValid(), "callers of a shared query get their own copies")
}

func TestDNSResolverCacheBounded(t *testing.T) {
	srv := dnsTestStart(t, "a.example.org. 300 IN A 192.0.2.1", "b.example.org. 300 IN A 192.0.2.2", "c.example.org. 300 IN A 192.0.2.3")
	r, err := NewDNSResolver(&DNSOptions{Servers: []string{srv.addr}, CacheSize: 2})
	require.NoError(t, err)
	for _, n := range []string{"a", "b", "c", "a", "b", "c"} {
		_, err := r.Lookup(dnsTestCtx(t), n+".example.org", TypeA)
		require.NoError(t, err)
		assert.LessOrEqual(t, r.Stats().CacheEntries, 2)
	}

	off, err := NewDNSResolver(&DNSOptions{Servers: []string{srv.addr}, CacheSize: -1})
	require.NoError(t, err)
	for range 2 {
		_, err := off.Lookup(dnsTestCtx(t), "a.example.org", TypeA)
		require.NoError(t, err)
	}
	assert.Equal(t, uint64(0), off.Stats().CacheHits)
	assert.Equal(t, 0, off.Stats().CacheEntries)
}

func TestNewDNSResolverOptions(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "resolv.conf")
	require.NoError(t, os.WriteFile(conf, []byte("search example.org\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"), 0o600))

	r, err := NewDNSResolver(&DNSOptions{ResolvConf: conf})
	require.NoError(t, err)
	assert.Equal(t, []string{"192.0.2.53:53", "[2001:db8::53]:53"}, r.Servers())

	r, err = NewDNSResolver(&DNSOptions{ResolvConf: filepath.Join(dir, "missing")})
	require.NoError(t, err)
	assert.Equal(t, []string{"127.0.0.1:53"}, r.Servers())

	r, err = NewDNSResolver(&DNSOptions{Servers: []string{"192.0.2.1", "[2001:db8::1]", "ns.example.org:5353"}})
	require.NoError(t, err)
	assert.Equal(t, []string{"192.0.2.1:53", "[2001:db8::1]:53", "ns.example.org:5353"}, r.Servers())

	for _, bad := range []*DNSOptions{
		{Servers: []string{"ns.example.org"}},
		{Servers: []string{":53"}},
		{Timeout: -1},
		{Attempts: -1},
		{MaxTTL: -time.Second},
		{NegativeTTL: -time.Second},
	} {
		_, err := NewDNSResolver(bad)
		assert.Error(t, err, "%+v", bad)
	}
}

func TestDNSErrorMessage(t *testing.T) {
	e := &DNSError{Name: "example.org", Type: TypeMX, Temporary: true, Err: errors.New("SERVFAIL")}
	assert.Equal(t, "dns: MX example.org: temporary DNS failure: SERVFAIL", e.Error())
}
