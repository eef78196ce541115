package pop3

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/loginguard"
	"github.com/resilmail/resilmail/replicate/store"
)

// TestPasswordsOnlyOverTLSOffLoopback: off loopback, CAPA offers STLS but
// neither USER nor SASL, USER is refused, and after STLS the login works;
// commands pipelined after STLS are refused.
func TestPasswordsOnlyOverTLSOffLoopback(t *testing.T) {
	var ip string
	addrs, err := net.InterfaceAddrs()
	require.NoError(t, err)
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			ip = ipn.IP.String()
			break
		}
	}
	require.NotEmpty(t, ip, "the test needs an IPv4 address besides loopback to connect from off loopback")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)

	st, err := store.Open(t.TempDir(), &store.Options{Logger: quiet})
	require.NoError(t, err)
	defer st.Close()
	srv, err := New(st, users{"alice": "pw"}, &Options{Logger: quiet,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		Guard:     loginguard.New(&loginguard.Options{Delay: time.Millisecond, Logger: quiet})})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	require.NoError(t, err)
	go srv.Serve(ln)
	defer srv.Close()

	c := dial(t, ln.Addr().String())
	require.Equal(t, "+OK capabilities follow", c.cmd("CAPA"))
	caps := c.multi()
	assert.Contains(t, caps, "STLS")
	assert.NotContains(t, caps, "USER")
	assert.NotContains(t, caps, "SASL PLAIN")
	assert.Equal(t, "-ERR [AUTH] use STLS before sending a password", c.cmd("USER alice"))
	assert.Equal(t, "-ERR [AUTH] use STLS before sending a password", c.cmd("AUTH PLAIN AGFsaWNlAHB3"))

	require.Equal(t, "+OK begin TLS", c.cmd("STLS"))
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true})
	require.NoError(t, tc.Handshake())
	c.c, c.br = tc, bufio.NewReader(tc)
	assert.Equal(t, "+OK send PASS", c.cmd("USER alice"))
	assert.True(t, strings.HasPrefix(c.cmd("PASS pw"), "+OK"))

	// STLS with a command pipelined behind it is refused (no injection
	// into the TLS session).
	c2 := dial(t, ln.Addr().String())
	_, err = c2.c.Write([]byte("STLS\r\nUSER alice\r\n"))
	require.NoError(t, err)
	assert.Equal(t, "-ERR no pipelining after STLS", c2.line())
}
