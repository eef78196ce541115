package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSafeDefaults(t *testing.T) {
	c, err := parseFlags(nil)
	require.NoError(t, err)
	assert.Equal(t, "relay-queue", c.dir, "a persistent queue folder, not a temporary one")
	assert.Equal(t, "127.0.0.0/8,::1/128", c.mynetworks, "only loopback may relay anywhere")
	assert.Empty(t, c.relayDomains)
	_, err = parseFlags([]string{"-tls-cert", "cert.pem"})
	assert.ErrorContains(t, err, "-tls-key")
}

func TestNoOpenRelay(t *testing.T) {
	sink := startSink(t)
	relay := startRelayWith(t, config{next: sink.addr, dir: t.TempDir(), relayDomains: "example.org", mynetworks: "none"})
	out, ok := swaksTo(t, relay, "someone@elsewhere.example")
	assert.False(t, ok)
	assert.Contains(t, out, "<** 554 5.7.1 relay access denied")
	out, ok = swaksTo(t, relay, "alice@example.org")
	assert.True(t, ok, "a -relay-domains domain is accepted: %s", out)
	waitCount(t, sink, 1)

	// A client of -mynetworks relays anywhere (outbound smart host).
	trusted := startRelayWith(t, config{next: sink.addr, dir: t.TempDir()})
	out, ok = swaksTo(t, trusted, "someone@elsewhere.example")
	assert.True(t, ok, "loopback is in the default -mynetworks: %s", out)
	waitCount(t, sink, 2)
}

// certFiles writes a self-signed certificate for relay.test and its key,
// and returns the two files.
func certFiles(t *testing.T) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay.test"}, DNSNames: []string{"relay.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	require.NoError(t, err)
	kd, err := x509.MarshalECPrivateKey(k)
	require.NoError(t, err)
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600))
	return cert, key
}

func TestStartTLSWithCertificateFlags(t *testing.T) {
	cf, kf := certFiles(t)
	sink := startSink(t)
	relay := startRelayWith(t, config{next: sink.addr, dir: t.TempDir(), tlsCert: cf, tlsKey: kf})
	host, port, _ := net.SplitHostPort(relay)
	out, err := exec.Command("swaks", "--server", host, "--port", port, "--tls", "--from", "sender@example.net", "--to", "rcpt@example.com").CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "TLS started")
	assert.Regexp(t, `<~  250 2\.0\.0 OK: queued as`, string(out))
	waitCount(t, sink, 1)
}
