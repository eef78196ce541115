package quarantine

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// shClientCert makes a CA and a client certificate it signed.
func shClientCert(t *testing.T) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pool CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "mx2"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return pool, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestShipOverTLSWithClientCertificate(t *testing.T) {
	pool, cert := shClientCert(t)
	st := shStore(t)
	rec := shRecord(st)
	var proto atomic.Int32
	h := newIngestHandler(rec, st.opts.MaxSize, &IngestOptions{Logger: shLogger(), Authenticate: func(r *http.Request) error {
		proto.Store(int32(r.ProtoMajor))
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			return errors.New("no verified client certificate")
		}
		return nil
	}})
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven}
	srv.StartTLS()
	defer srv.Close()

	// Without a certificate: refused, and the entry stays.
	o := shOutbox(t, t.TempDir(), nil)
	require.NoError(t, o.Add(context.Background(), shEntry("t1"), bytes.NewReader(shBody("t1", 500))))
	noCert, nev := shShipper(t, o, srv.URL, &ShipperOptions{HTTPClient: srv.Client()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- noCert.Run(ctx) }()
	nev.waitFor(t, "a refusal", func() bool { return nev.failures() > 0 })
	cancel()
	require.NoError(t, <-done)
	assert.Contains(t, noCert.Stats().LastError.Error(), "credentials")
	assert.Equal(t, 1, o.Stats().Pending)

	// With one: shipped over HTTP/2.
	tr := srv.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
	client := &http.Client{Transport: tr}
	s, ev := shShipper(t, o, srv.URL, &ShipperOptions{HTTPClient: client})
	shRun(t, s)
	rec.wait(t, []string{"t1"}, 10*time.Second)
	ev.waitFor(t, "outbox empty", func() bool { return o.Stats().Pending == 0 })
	assert.Equal(t, int32(2), proto.Load())
}

// TestShipperCountsAFailureBeforeReportingIt: when OnBatch reports a failed
// exchange, Stats already holds its error (it was counted after the hook,
// so a caller told of the failure could find no error).
func TestShipperCountsAFailureBeforeReportingIt(t *testing.T) {
	o := shOutbox(t, t.TempDir(), nil)
	require.NoError(t, o.Add(context.Background(), shEntry("t1"), bytes.NewReader(shBody("t1", 100))))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "busy", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	var s *Shipper
	seen := make(chan error, 1)
	s, err := NewShipper(o, srv.URL, &ShipperOptions{Secret: shSecret, Logger: shLogger(),
		MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		OnBatch: func(ev ShipEvent) {
			if ev.Err != nil {
				select {
				case seen <- s.Stats().LastError:
				default:
				}
			}
		}})
	require.NoError(t, err)
	shRun(t, s)
	select {
	case got := <-seen:
		assert.Error(t, got, "the failure OnBatch reports is in Stats")
	case <-time.After(20 * time.Second):
		t.Fatal("no failed exchange reported")
	}
}
