package pool

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func polQuiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// pubOpen opens a publisher in dir that the test closes.
func pubOpen(t testing.TB, dir string, opts *PublisherOptions) *Publisher {
	t.Helper()
	if opts == nil {
		opts = &PublisherOptions{}
	}
	if opts.Logger == nil {
		opts.Logger = polQuiet()
	}
	if opts.SigningKey == nil {
		opts.SigningKey = polTestKey
	}
	p, err := OpenPublisher(dir, polTestSecret, opts)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// pubServe serves p on a loopback HTTP server that the test closes.
func pubServe(t testing.TB, p *Publisher) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(p)
	t.Cleanup(func() {
		p.Close() // ends long polls so that srv.Close does not wait for them
		srv.Close()
	})
	return srv
}

// pubGet makes one authenticated request with the given query.
func pubGet(t testing.TB, client *http.Client, base, token, query string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"?"+query, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

func pubKind(t testing.TB, body []byte) string {
	t.Helper()
	var m struct {
		Kind string `json:"kind"`
		From uint64 `json:"from"`
	}
	require.NoError(t, json.Unmarshal(body, &m))
	return m.Kind
}

func TestPublisherUpdate(t *testing.T) {
	ctx := context.Background()
	p := pubOpen(t, t.TempDir(), nil)
	assert.Nil(t, p.Snapshot())
	assert.Equal(t, 451, p.Check("alice@example.org").Code, "no policy yet: defer")

	v, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	assert.Equal(t, uint64(1), v)
	assert.Equal(t, ActionAccept, p.Check("ALICE@example.org").Action)
	assert.Equal(t, uint64(1), p.Check("ALICE@example.org").Version)

	v, err = p.Update(ctx, func(q *Policy) error { return q.AddRecipient("dan@example.org") })
	require.NoError(t, err)
	assert.Equal(t, uint64(2), v)
	assert.Equal(t, ActionAccept, p.Check("dan@example.org").Action)

	// No change: no new version.
	v, err = p.Update(ctx, func(q *Policy) error { return q.AddRecipient("dan@example.org") })
	require.NoError(t, err)
	assert.Equal(t, uint64(2), v)

	// fn's error and invalid results abandon the update.
	boom := errors.New("boom")
	v, err = p.Update(ctx, func(q *Policy) error { q.Domains = nil; return boom })
	assert.ErrorIs(t, err, boom)
	assert.Equal(t, uint64(2), v)
	_, err = p.Update(ctx, func(q *Policy) error { q.MaxMessageSize = -1; return nil })
	assert.Error(t, err)
	assert.Equal(t, uint64(2), p.Snapshot().Version)
	assert.Equal(t, int64(50<<20), p.Snapshot().Policy.MaxMessageSize)

	// The stored snapshot verifies.
	data, err := os.ReadFile(filepath.Join(p.dir, polSnapshotFile))
	require.NoError(t, err)
	s, err := DecodeSnapshot(data, polTestTrust)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), s.Version)

	// A cancelled context does not wait for the lock.
	p.sem <- struct{}{}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = p.Update(cctx, func(*Policy) error { return nil })
	assert.ErrorIs(t, err, context.Canceled)
	<-p.sem

	require.NoError(t, p.Close())
	require.NoError(t, p.Close())
	_, err = p.Update(ctx, func(*Policy) error { return nil })
	assert.ErrorIs(t, err, ErrPublisherClosed)
}

func TestPublisherRestartKeepsVersion(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	p := pubOpen(t, dir, nil)
	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	for _, a := range []string{"d1@example.org", "d2@example.org"} {
		_, err = p.Update(ctx, func(q *Policy) error { return q.AddRecipient(a) })
		require.NoError(t, err)
	}
	before := p.Status()
	require.Equal(t, uint64(3), before.Version)
	require.Equal(t, 2, before.HistoryLen)

	_, err = OpenPublisher(dir, polTestSecret, &PublisherOptions{Logger: polQuiet()})
	require.Error(t, err, "the folder is locked")
	require.NoError(t, p.Close())

	p = pubOpen(t, dir, nil)
	after := p.Status()
	assert.Equal(t, before.Version, after.Version)
	assert.Equal(t, before.Digest, after.Digest)
	assert.Equal(t, 2, after.HistoryLen, "the delta history survives")
	assert.Equal(t, uint64(1), after.HistoryFrom)
	v, err := p.Update(ctx, func(q *Policy) error { return q.AddRecipient("d3@example.org") })
	require.NoError(t, err)
	assert.Equal(t, uint64(4), v, "versions continue after a restart")

	// A history that does not reach the snapshot is dropped, not trusted.
	require.NoError(t, p.Close())
	hist, err := os.ReadFile(filepath.Join(dir, polHistoryFile))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, polHistoryFile), []byte(strings.Replace(string(hist), `"version":4`, `"version":3`, 1)), 0o600))
	p = pubOpen(t, dir, nil)
	assert.Equal(t, 0, p.Status().HistoryLen)
	assert.Equal(t, uint64(4), p.Status().Version)
}

func TestPublisherRefusesBadStore(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		edit func(string) string
		want error
	}{
		{"tampered", func(s string) string { return strings.Replace(s, `"alice"`, `"alicf"`, 1) }, ErrPolicyDigest},
		{"unknown format", func(s string) string { return strings.Replace(s, `"format":2`, `"format":7`, 1) }, ErrPolicyFormat},
		{"truncated", func(s string) string { return s[:len(s)/2] }, ErrPolicyMalformed},
	} {
		dir := t.TempDir()
		p := pubOpen(t, dir, nil)
		_, err := p.Publish(ctx, polTestPolicy())
		require.NoError(t, err)
		require.NoError(t, p.Close())
		path := filepath.Join(dir, polSnapshotFile)
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(path, []byte(tc.edit(string(data))), 0o600))
		_, err = OpenPublisher(dir, polTestSecret, &PublisherOptions{Logger: polQuiet()})
		assert.ErrorIs(t, err, tc.want, tc.name)
	}
	_, err := OpenPublisher(t.TempDir(), []byte("short"), nil)
	assert.Error(t, err)
}

func TestPublisherTakesANewKeyOrPool(t *testing.T) {
	// Giving a publisher a signing key once made it refuse its own stored
	// snapshot. Its folder is its own: the snapshot is sealed again with
	// the key and pool it now has, and the version goes on.
	ctx := context.Background()
	dir := t.TempDir()
	p := pubOpen(t, dir, nil)
	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	require.NoError(t, p.Close())
	p = pubOpen(t, dir, &PublisherOptions{SigningKey: polOtherKey, Pool: "eu-mx"})
	s := p.Snapshot()
	require.NotNil(t, s)
	assert.Equal(t, uint64(1), s.Version)
	assert.Equal(t, "eu-mx", s.Pool)
	assert.NoError(t, s.Verify(Trust{Pool: "eu-mx", Keys: []ed25519.PublicKey{polOtherKey.Public().(ed25519.PublicKey)}}))
	v, err := p.Update(ctx, func(q *Policy) error { return q.AddRecipient("dan@example.org") })
	require.NoError(t, err)
	assert.Equal(t, uint64(2), v)
}

func TestPublisherKeepsItsOwnKey(t *testing.T) {
	// Without SigningKey the publisher makes a key on first open, keeps it
	// (mode 600) and uses the same after a restart.
	dir := t.TempDir()
	p, err := OpenPublisher(dir, polTestSecret, &PublisherOptions{Logger: polQuiet()})
	require.NoError(t, err)
	pub := p.PublicKey()
	_, err = p.Publish(context.Background(), polTestPolicy())
	require.NoError(t, err)
	require.NoError(t, p.Close())
	st, err := os.Stat(filepath.Join(dir, polKeyFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	p, err = OpenPublisher(dir, polTestSecret, &PublisherOptions{Logger: polQuiet()})
	require.NoError(t, err)
	defer p.Close()
	assert.Equal(t, pub, p.PublicKey())
	assert.NoError(t, p.Snapshot().Verify(Trust{Keys: []ed25519.PublicKey{pub}}))
	assert.ErrorIs(t, p.Snapshot().Verify(polTestTrust), ErrPolicyAuth)
}

func TestPublisherHTTP(t *testing.T) {
	ctx := context.Background()
	p := pubOpen(t, t.TempDir(), &PublisherOptions{MaxHistory: 3})
	srv := pubServe(t, p)
	token := polToken(polTestSecret)
	c := srv.Client()

	// Nothing published yet: wait=0 answers 304 at once.
	resp, _ := pubGet(t, c, srv.URL, token, "since=0")
	assert.Equal(t, http.StatusNotModified, resp.StatusCode)
	assert.Equal(t, "0", resp.Header.Get("Mxpool-Version"))

	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	for i := range 5 {
		_, err = p.Update(ctx, func(q *Policy) error { return q.AddRecipient("n" + string(rune('0'+i)) + "@example.org") })
		require.NoError(t, err)
	}
	cur := p.Snapshot()
	require.Equal(t, uint64(6), cur.Version)

	// Authentication.
	for _, tok := range []string{"", "wrong", polToken([]byte("another-pool-secret-0123"))} {
		resp, _ := pubGet(t, c, srv.URL, tok, "since=0")
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "token %q", tok)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	req.Header.Set("Authorization", "Basic "+token)
	resp, err = c.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	// Full snapshot for since=0.
	resp, body := pubGet(t, c, srv.URL, token, "since=0")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "6", resp.Header.Get("Mxpool-Version"))
	s, err := DecodeSnapshot(body, polTestTrust)
	require.NoError(t, err)
	assert.Equal(t, cur.Digest, s.Digest)

	// A delta while the history reaches back (3 versions: 3->6).
	for _, since := range []uint64{3, 5} {
		resp, body = pubGet(t, c, srv.URL, token, "since="+strconv.FormatUint(since, 10))
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "delta", pubKind(t, body), "since=%d", since)
		d, err := polDecodeDelta(body)
		require.NoError(t, err)
		base := polSnapshotAt(t, since)
		got, err := polApplyDelta(base, d, polTestTrust)
		require.NoError(t, err)
		assert.Equal(t, cur.Digest, got.Digest)
	}
	// Older than the history: the full snapshot.
	resp, body = pubGet(t, c, srv.URL, token, "since=2")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "snapshot", pubKind(t, body))

	// Current: 304 after the wait.
	start := time.Now()
	resp, _ = pubGet(t, c, srv.URL, token, "since=6&wait=50ms")
	assert.Equal(t, http.StatusNotModified, resp.StatusCode)
	assert.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)

	// A follower ahead of the publisher, or at its version with other content.
	resp, _ = pubGet(t, c, srv.URL, token, "since=7")
	assert.Equal(t, http.StatusConflict, resp.StatusCode)
	resp, _ = pubGet(t, c, srv.URL, token, "since=6&have="+strings.Repeat("ab", 32))
	assert.Equal(t, http.StatusConflict, resp.StatusCode)
	resp, _ = pubGet(t, c, srv.URL, token, "since=6&have="+cur.Digest.String())
	assert.Equal(t, http.StatusNotModified, resp.StatusCode)

	// Bad requests.
	for _, q := range []string{"since=x", "since=-1", "wait=forever"} {
		resp, _ = pubGet(t, c, srv.URL, token, q)
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, q)
	}
	resp, err = c.Post(srv.URL, "text/plain", nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	// Followers are recorded by name.
	pubGet(t, c, srv.URL, token, "since=6&node=relay-b")
	st := p.Status()
	require.NotEmpty(t, st.Followers)
	assert.Equal(t, "relay-b", st.Followers[0].Name)
	assert.Equal(t, uint64(6), st.Followers[0].Version)

	// Without history every answer is the full snapshot.
	q := pubOpen(t, t.TempDir(), &PublisherOptions{MaxHistory: -1})
	qsrv := pubServe(t, q)
	_, err = q.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	_, err = q.Update(ctx, func(p *Policy) error { return p.AddRecipient("x@example.org") })
	require.NoError(t, err)
	_, body = pubGet(t, qsrv.Client(), qsrv.URL, token, "since=1")
	assert.Equal(t, "snapshot", pubKind(t, body))
}

// polSnapshotAt rebuilds the snapshot of an older version of
// TestPublisherHTTP's publisher: version 1 is polTestPolicy, and each later
// version adds one recipient, n0, n1, ...
func polSnapshotAt(t testing.TB, version uint64) *Snapshot {
	t.Helper()
	pol := polMustNormalize(t, polTestPolicy())
	for i := uint64(0); i+1 < version; i++ {
		require.NoError(t, pol.AddRecipient("n"+string(rune('0'+i))+"@example.org"))
	}
	s, err := NewSnapshot(pol, version, DefaultPool, polTestKey, time.Now())
	require.NoError(t, err)
	return s
}

func TestPublisherLongPollWakes(t *testing.T) {
	ctx := context.Background()
	p := pubOpen(t, t.TempDir(), nil)
	srv := pubServe(t, p)
	_, err := p.Publish(ctx, polTestPolicy())
	require.NoError(t, err)
	token := polToken(polTestSecret)

	type answer struct {
		code int
		at   time.Time
		kind string
	}
	got := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"?since=1&wait=20s&node=waiter", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := srv.Client().Do(req)
		if err != nil {
			got <- answer{}
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var m struct{ Kind string }
		json.Unmarshal(body, &m)
		got <- answer{resp.StatusCode, time.Now(), m.Kind}
	}()
	// Wait until the request is in the publisher (it records followers
	// before it waits).
	require.Eventually(t, func() bool { return len(p.Status().Followers) == 1 }, 5*time.Second, time.Millisecond)
	start := time.Now()
	_, err = p.Update(ctx, func(q *Policy) error { return q.AddRecipient("dan@example.org") })
	require.NoError(t, err)
	select {
	case a := <-got:
		require.Equal(t, http.StatusOK, a.code)
		assert.Equal(t, "delta", a.kind)
		lag := a.at.Sub(start)
		t.Logf("long poll answered %v after the update started", lag)
		// Milliseconds on an idle machine; the bound only has to be far
		// below the 20 s wait, and survive a loaded test machine.
		assert.Less(t, lag, 2*time.Second)
	case <-time.After(5 * time.Second):
		t.Fatal("the long poll did not wake on Update")
	}
}

func TestPublisherCloseEndsLongPolls(t *testing.T) {
	p := pubOpen(t, t.TempDir(), nil)
	srv := pubServe(t, p)
	_, err := p.Publish(context.Background(), polTestPolicy())
	require.NoError(t, err)
	got := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"?since=1&wait=30s", nil)
		req.Header.Set("Authorization", "Bearer "+polToken(polTestSecret))
		resp, err := srv.Client().Do(req)
		if err != nil {
			got <- 0
			return
		}
		resp.Body.Close()
		got <- resp.StatusCode
	}()
	require.Eventually(t, func() bool { return len(p.Status().Followers) == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, p.Close())
	select {
	case code := <-got:
		assert.Equal(t, http.StatusServiceUnavailable, code)
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the long poll")
	}
}

// pubCerts makes a CA, a server certificate for 127.0.0.1 and a client
// certificate signed by the CA.
func pubCerts(t testing.TB) (ca *x509.CertPool, server, client tls.Certificate) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return k
	}
	caKey := key()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pool CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	ca = x509.NewCertPool()
	ca.AddCert(caCert)
	leaf := func(serial int64, usage x509.ExtKeyUsage) tls.Certificate {
		k := key()
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "node"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature,
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		require.NoError(t, err)
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	return ca, leaf(2, x509.ExtKeyUsageServerAuth), leaf(3, x509.ExtKeyUsageClientAuth)
}

func TestPublisherClientCertAuth(t *testing.T) {
	ca, serverCert, clientCert := pubCerts(t)
	for _, mode := range []AuthMode{AuthClientCert, AuthTokenOrClientCert} {
		p := pubOpen(t, t.TempDir(), &PublisherOptions{Auth: mode})
		_, err := p.Publish(context.Background(), polTestPolicy())
		require.NoError(t, err)
		srv := httptest.NewUnstartedServer(p)
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: ca, ClientAuth: tls.VerifyClientCertIfGiven}
		srv.StartTLS()
		t.Cleanup(func() { p.Close(); srv.Close() })
		client := func(certs ...tls.Certificate) *http.Client {
			return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca, Certificates: certs}}}
		}
		resp, _ := pubGet(t, client(clientCert), srv.URL, "", "since=0")
		assert.Equal(t, http.StatusOK, resp.StatusCode, "mode %d with a client certificate", mode)
		resp, _ = pubGet(t, client(), srv.URL, "", "since=0")
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "mode %d without anything", mode)
		resp, _ = pubGet(t, client(), srv.URL, polToken(polTestSecret), "since=0")
		want := http.StatusUnauthorized
		if mode == AuthTokenOrClientCert {
			want = http.StatusOK
		}
		assert.Equal(t, want, resp.StatusCode, "mode %d with the token only", mode)
	}
}
