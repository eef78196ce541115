package imapstore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/loginguard"
	"github.com/resilmail/resilmail/replicate/store"
)

// testCert returns a self-signed certificate for host.
func testCert(t testing.TB, host string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP(host)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// outsideIP returns an address of this machine that is not loopback, so
// that a connection to it is not from loopback.
func outsideIP(t testing.TB) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	require.NoError(t, err)
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	t.Fatal("this machine has no IPv4 address besides loopback: the test needs one to connect from off loopback")
	return ""
}

// TestPasswordsOnlyOverTLSOffLoopback: a client that is not on loopback
// sees LOGINDISABLED and cannot log in until STARTTLS.
func TestPasswordsOnlyOverTLSOffLoopback(t *testing.T) {
	ip := outsideIP(t)
	st, err := store.Open(t.TempDir(), &store.Options{Logger: quiet})
	require.NoError(t, err)
	defer st.Close()
	srv, err := New(st, users{"alice": "pw"}, &Options{Logger: quiet,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{testCert(t, ip)}},
		Guard:     loginguard.New(&loginguard.Options{Delay: time.Millisecond, Logger: quiet})})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	require.NoError(t, err)
	go srv.Serve(ln)
	defer srv.Close()

	c, err := imapclient.DialInsecure(ln.Addr().String(), nil)
	require.NoError(t, err)
	defer c.Close()
	caps, err := c.Capability().Wait()
	require.NoError(t, err)
	assert.True(t, caps.Has(imap.CapLoginDisabled), "LOGINDISABLED in clear off loopback")
	assert.True(t, caps.Has(imap.CapStartTLS))
	assert.Error(t, c.Login("alice", "pw").Wait(), "a password in clear off loopback")

	tc, err := imapclient.DialStartTLS(ln.Addr().String(), &imapclient.Options{TLSConfig: &tls.Config{InsecureSkipVerify: true}})
	require.NoError(t, err)
	defer tc.Close()
	require.NoError(t, tc.Login("alice", "pw").Wait(), "after STARTTLS")
}
