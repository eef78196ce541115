package mxpool

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/mxpool/sts"
)

func TestStaticResolverAnswers(t *testing.T) {
	var r StaticResolver // the zero value is ready
	ctx := context.Background()
	r.AddMX("Example.org.", 20, "MX2.example.org.")
	r.AddMX("example.org", 10, "mx1.example.org")
	r.AddAddr("mx1.example.org", netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1"),
		netip.MustParseAddr("::ffff:192.0.2.2"))
	r.AddTXT("example.org", "v=spf1 -all")
	r.AddMX("nomail.example.org", 0, ".")

	tests := []struct {
		name string
		t    Type
		want Result
	}{
		{"example.org", TypeMX, Result{MX: []MX{{"mx2.example.org", 20}, {"mx1.example.org", 10}}}},
		{"EXAMPLE.ORG.", TypeTXT, Result{TXT: []string{"v=spf1 -all"}}},
		{"mx1.example.org", TypeA, Result{Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}}},
		{"mx1.example.org", TypeAAAA, Result{Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::1")}}},
		{"nomail.example.org", TypeMX, Result{MX: []MX{{".", 0}}}},
		{"example.org", TypeA, Result{}},      // records, none of the type: NODATA
		{"mx1.example.org", TypeMX, Result{}}, // likewise
	}
	for _, tt := range tests {
		t.Run(tt.name+"/"+tt.t.String(), func(t *testing.T) {
			got, err := r.Lookup(ctx, tt.name, tt.t)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}

	_, err := r.Lookup(ctx, "nope.example.org", TypeMX)
	var de *DNSError
	require.ErrorAs(t, err, &de)
	assert.True(t, de.NotFound, "a name without records does not exist")
	assert.False(t, de.Temporary)

	got, err := r.Lookup(ctx, "example.org", TypeMX)
	require.NoError(t, err)
	got.MX[0].Host = "changed"
	again, err := r.Lookup(ctx, "example.org", TypeMX)
	require.NoError(t, err)
	assert.Equal(t, "mx2.example.org", again.MX[0].Host, "results are copies")
}

func TestStaticResolverCNAME(t *testing.T) {
	var r StaticResolver
	ctx := context.Background()
	r.SetCNAME("alias.example.org", "Mid.example.org.")
	r.SetCNAME("mid.example.org", "target.example.org")
	r.AddMX("target.example.org", 10, "mx.example.org")
	r.SetCNAME("dangling.example.org", "gone.example.org")
	r.SetCNAME("loop1.example.org", "loop2.example.org")
	r.SetCNAME("loop2.example.org", "loop1.example.org")
	r.SetCNAME("self.example.org", "self.example.org")

	res, err := r.Lookup(ctx, "alias.example.org", TypeMX)
	require.NoError(t, err)
	assert.Equal(t, Result{CNAME: "target.example.org", MX: []MX{{"mx.example.org", 10}}}, res)

	res, err = r.Lookup(ctx, "alias.example.org", TypeA)
	require.NoError(t, err)
	assert.Equal(t, Result{CNAME: "target.example.org"}, res, "NODATA at the target")

	_, err = r.Lookup(ctx, "dangling.example.org", TypeMX)
	var de *DNSError
	require.ErrorAs(t, err, &de)
	assert.True(t, de.NotFound, "an alias of a name that does not exist")

	for _, name := range []string{"loop1.example.org", "self.example.org"} {
		_, err = r.Lookup(ctx, name, TypeMX)
		require.ErrorAs(t, err, &de)
		assert.True(t, de.Temporary, "%s: a CNAME loop fails temporarily", name)
	}

	for i := range 20 {
		r.SetCNAME(fmt.Sprintf("c%d.example.org", i), fmt.Sprintf("c%d.example.org", i+1))
	}
	r.AddAddr("c20.example.org", netip.MustParseAddr("192.0.2.1"))
	_, err = r.Lookup(ctx, "c0.example.org", TypeA)
	require.ErrorAs(t, err, &de)
	assert.True(t, de.Temporary, "a chain longer than 16 fails temporarily")
	res, err = r.Lookup(ctx, "c10.example.org", TypeA)
	require.NoError(t, err)
	assert.Equal(t, "c20.example.org", res.CNAME)
}

func TestStaticResolverFailures(t *testing.T) {
	var r StaticResolver
	ctx := context.Background()
	r.AddMX("example.org", 10, "mx.example.org")
	r.AddAddr("example.org", netip.MustParseAddr("192.0.2.1"))

	r.SetTemporaryFailure("example.org", TypeMX)
	_, err := r.Lookup(ctx, "example.org", TypeMX)
	var de *DNSError
	require.ErrorAs(t, err, &de)
	assert.True(t, de.Temporary)
	_, err = r.Lookup(ctx, "example.org", TypeA)
	assert.NoError(t, err, "only the types given fail")

	r.SetTemporaryFailure("broken.example.org")
	for _, typ := range []Type{TypeMX, TypeA, TypeAAAA, TypeTXT} {
		_, err = r.Lookup(ctx, "broken.example.org", typ)
		require.ErrorAs(t, err, &de)
		assert.True(t, de.Temporary, "every type fails, even for a name without records")
	}

	r.SetCNAME("alias.example.org", "example.org")
	_, err = r.Lookup(ctx, "alias.example.org", TypeMX)
	require.ErrorAs(t, err, &de)
	assert.True(t, de.Temporary, "the failure of a CNAME target")

	r.ClearTemporaryFailure("example.org")
	res, err := r.Lookup(ctx, "example.org", TypeMX)
	require.NoError(t, err)
	assert.Len(t, res.MX, 1)

	r.ClearTemporaryFailure("broken.example.org")
	_, err = r.Lookup(ctx, "broken.example.org", TypeMX)
	require.ErrorAs(t, err, &de)
	assert.True(t, de.NotFound, "without the failure the name has no records")

	r.Remove("example.org")
	_, err = r.Lookup(ctx, "example.org", TypeMX)
	require.ErrorAs(t, err, &de)
	assert.True(t, de.NotFound)

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	r.AddAddr("up.example.org", netip.MustParseAddr("192.0.2.1"))
	_, err = r.Lookup(cctx, "up.example.org", TypeA)
	require.ErrorAs(t, err, &de)
	assert.True(t, de.Temporary)
	assert.ErrorIs(t, err, context.Canceled)
}

func TestStaticResolverConcurrent(t *testing.T) {
	var r StaticResolver
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				name := fmt.Sprintf("h%d.example.org", j%10)
				r.AddAddr(name, netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}))
				if j%7 == 0 {
					r.Remove(name)
				}
			}
		})
		wg.Go(func() {
			for j := range 200 {
				res, err := r.Lookup(context.Background(), fmt.Sprintf("h%d.example.org", j%10), TypeA)
				if err == nil {
					for _, a := range res.Addrs {
						assert.True(t, a.Is4())
					}
				}
			}
		})
	}
	wg.Wait()
}

func TestLookupTXTForMTASTS(t *testing.T) {
	// MTA-STS reads a name that does not exist as one without records,
	// and a failure to get an answer as an error.
	var z StaticResolver
	z.AddTXT("_mta-sts.example.com", "v=STSv1; id=1")
	ctx := context.Background()
	for name, r := range map[string]sts.TXTResolver{"StaticResolver": &z, "TXT": TXT(&z)} {
		txt, err := r.LookupTXT(ctx, "_mta-sts.example.com")
		require.NoError(t, err, name)
		assert.Equal(t, []string{"v=STSv1; id=1"}, txt, name)
		txt, err = r.LookupTXT(ctx, "_mta-sts.nowhere.example")
		assert.NoError(t, err, "%s: NXDOMAIN is no record", name)
		assert.Empty(t, txt, name)
	}
	z.SetTemporaryFailure("_mta-sts.example.com", TypeTXT)
	_, err := TXT(&z).LookupTXT(ctx, "_mta-sts.example.com")
	var de *DNSError
	assert.ErrorAs(t, err, &de, "a temporary failure is an error")
}
