package main

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/failover"
)

// TestProxyTrust: with -proxy-trust, the LMTP port takes connections from
// the trusted proxy only with a valid PROXY v2 header (a standby's client
// proxy sends one) and refuses them without.
func TestProxyTrust(t *testing.T) {
	a := startPrimary(t, "-users", "alice@example.org", "-proxy-trust", "127.0.0.1")
	p := failover.NewProxy(failover.Backend{Addr: a.lmtp.String(), SendProxy: true}, &failover.ProxyOptions{Logger: quiet})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go p.Serve(ln)
	t.Cleanup(func() { p.Close() })

	out := swaks(t, ln.Addr().String(), "through the proxy", "alice@example.org")
	assert.Contains(t, out, "250 ", "delivered through the proxy: %s", out)

	out = swaks(t, a.lmtp.String(), "straight, without a header", "alice@example.org")
	assert.NotContains(t, out, "<~  250 ", "a trusted source without a header is refused: %s", out)
	assert.False(t, strings.Contains(out, "Ok: queued"), out)
}

func TestParsePrefixes(t *testing.T) {
	got, err := parsePrefixes("127.0.0.1, 10.1.2.3/8,::1")
	require.NoError(t, err)
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}, got)
	_, err = parsePrefixes("mail.example.org")
	assert.Error(t, err)
	_, err = parseFlags([]string{"-secret-file", secretFile(t), "-proxy-trust", "nope"}, func(string) string { return "" })
	assert.ErrorContains(t, err, "-proxy-trust")
}
