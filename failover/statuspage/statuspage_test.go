package statuspage

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeNode serves a /status document and /metrics text as the example
// programs do; either may be empty (404).
func fakeNode(t *testing.T, status, metrics string) *httptest.Server {
	mux := http.NewServeMux()
	if status != "" {
		mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, status) })
	}
	if metrics != "" {
		mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, metrics) })
	}
	s := httptest.NewUnstartedServer(mux)
	t.Cleanup(s.Close)
	return s
}

// selfSigned returns a certificate for 127.0.0.1 that expires at notAfter.
func selfSigned(t *testing.T, notAfter time.Time) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "primary"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type fixture struct {
	poller *Poller
	page   *httptest.Server
}

func newFixture(t *testing.T) fixture {
	cert := selfSigned(t, time.Now().Add(10*24*time.Hour+time.Hour))
	primary := fakeNode(t, `{"role":"primary","epoch":7,"position":1200,"replicas":[{"name":"b","lag_changes":3,"lag_seconds":0.4}]}`, "# HELP x\n")
	primary.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	primary.StartTLS()
	secondary := fakeNode(t, `{"role":"standby","name":"b","epoch":7,"applied":1197,"primary_position":1200}`, "")
	secondary.Start()
	applied := time.Now().Add(-90 * time.Second).UTC().Format(time.RFC3339Nano)
	relay := fakeNode(t, "", `# HELP resilmail_queue_messages Queued messages by state.
# TYPE resilmail_queue_messages gauge
resilmail_queue_messages{state="queued"} 4
resilmail_queue_messages{state="deferred"} 2
resilmail_queue_oldest_age_seconds 125.5
resilmail_quarantine_outbox_entries 9
`)
	relay.Start()
	relay2 := fakeNode(t, fmt.Sprintf(`{"role":"relay","queue_messages":0,"policy_version":12,"policy_applied_at":%q,"quarantine_outbox":0}`, applied), "")
	relay2.Start()
	down, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	downURL := "http://" + down.Addr().String()
	down.Close()

	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pool.AddCert(leaf)
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	p, err := NewPoller([]Node{
		{Name: "a", URL: primary.URL}, {Name: "b", URL: secondary.URL},
		{Name: "mx1", URL: relay.URL}, {Name: "mx2", URL: relay2.URL}, {Name: "c", URL: downURL},
	}, &Options{Interval: time.Second, Client: client, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	p.PollOnce(context.Background())
	page := httptest.NewServer(Handler(p))
	t.Cleanup(page.Close)
	return fixture{p, page}
}

func TestReportJSON(t *testing.T) {
	f := newFixture(t)
	resp, err := http.Get(f.page.URL + "/status.json")
	require.NoError(t, err)
	defer resp.Body.Close()
	var r Report
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&r))
	require.Len(t, r.Nodes, 5)
	assert.Equal(t, 1, r.Primaries)
	a, b, mx1, mx2, c := r.Nodes[0], r.Nodes[1], r.Nodes[2], r.Nodes[3], r.Nodes[4]

	assert.True(t, a.Reachable)
	assert.Equal(t, "primary", a.Role)
	assert.Equal(t, uint64(7), *a.Epoch)
	assert.Equal(t, uint64(3), *a.LagChanges)
	require.NotNil(t, a.CertNotAfter)
	assert.InDelta(t, 10*24, time.Until(*a.CertNotAfter).Hours(), 2)

	assert.Equal(t, "standby", b.Role)
	assert.Equal(t, uint64(3), *b.LagChanges, "primary_position - applied")
	assert.Nil(t, b.CertNotAfter)

	assert.True(t, mx1.Reachable, "a node with only /metrics is reachable")
	assert.Equal(t, uint64(6), *mx1.QueueMessages, "summed over states")
	assert.Equal(t, 125.5, *mx1.QueueOldest)
	assert.Equal(t, uint64(9), *mx1.OutboxBacklog)
	assert.Nil(t, mx1.PolicyVersion, "not reported: unknown, not zero")

	assert.Equal(t, uint64(12), *mx2.PolicyVersion)
	assert.InDelta(t, 90, *mx2.PolicyAge, 5)

	assert.False(t, c.Reachable)
	assert.NotEmpty(t, c.Error)
	assert.False(t, c.Since.IsZero(), "down since the first poll")

	// Reachability changes are dated.
	before := c.Since
	f.poller.PollOnce(context.Background())
	assert.True(t, before.Equal(f.poller.Report().Nodes[4].Since), "still down: same since")
}

const chromiumPath = "/usr/bin/chromium"

func TestPageInChromium(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("this test needs Chromium (Debian package chromium): %v", err)
	}
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()), chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("blink-settings", "scriptEnabled=false"), chromedp.WindowSize(1400, 700))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()

	require.NoError(t, chromedp.Do(bctx, chromedp.Navigate(f.page.URL+"/"), chromedp.WaitVisible(chromedp.CSS(`#nodes`))))
	banner, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(`#banner`)))
	require.NoError(t, err)
	assert.Equal(t, "One primary: mail flows.", banner)

	row := func(n string) string {
		s, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(`tr[data-node="`+n+`"]`)))
		require.NoError(t, err)
		return s
	}
	assert.Regexp(t, `primary\s+7\s+up since \d+ s ago\s+3 changes, 0 s`, row("a"))
	assert.Regexp(t, `expires in 10 days`, row("a"))
	assert.Regexp(t, `standby\s+7`, row("b"))
	assert.Regexp(t, `6\s+2 min`, row("mx1"))
	assert.Regexp(t, `v12 1 min old`, row("mx2"))
	assert.Regexp(t, `DOWN since \d+ s ago`, row("c"))

	colour := func(sel, prop string) string {
		v, err := chromedp.Run(bctx, chromedp.Evaluate[string](fmt.Sprintf(`getComputedStyle(document.querySelector(%q)).%s`, sel, prop)))
		require.NoError(t, err)
		return v
	}
	assert.Equal(t, "rgb(31, 143, 58)", colour(`tr[data-node="a"] .role`, "backgroundColor"), "primary in green")
	assert.Equal(t, "rgb(37, 99, 201)", colour(`tr[data-node="b"] .role`, "backgroundColor"), "standby in blue")
	assert.Equal(t, "rgb(253, 236, 236)", colour(`tr[data-node="c"] td`, "backgroundColor"), "a down node's row in red")
	assert.Equal(t, "rgb(163, 98, 0)", colour(`tr[data-node="a"] td:last-child`, "color"), "a certificate expiring within 14 days in amber")

	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	shot := filepath.Join(t.ArtifactDir(), "status.png")
	require.NoError(t, os.WriteFile(shot, png, 0o644))
	t.Logf("screenshot: %s", shot)
}
