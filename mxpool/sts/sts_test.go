package sts

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
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/testclock"
)

// ---- test doubles ----

// stsFakeResolver answers TXT questions from a map; names absent from it
// have no records (NXDOMAIN).
type stsFakeResolver struct {
	mu      sync.Mutex
	txt     map[string][]string
	fail    map[string]error
	lookups chan string // when not nil, receives every name looked up
}

func newSTSFakeResolver() *stsFakeResolver {
	return &stsFakeResolver{txt: map[string][]string{}, fail: map[string]error{}}
}

func (r *stsFakeResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	r.mu.Lock()
	txt, ok := r.txt[name]
	err := r.fail[name]
	ch := r.lookups
	r.mu.Unlock()
	if ch != nil {
		ch <- name
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, nil // NXDOMAIN: no records
	}
	return append([]string(nil), txt...), nil
}

// stsLookupError is the fake resolver's temporary failure.
type stsLookupError struct{ name string }

func (e *stsLookupError) Error() string { return "dns: TXT " + e.name + ": temporary DNS failure" }

// setID publishes "v=STSv1; id=<id>" for domain; an empty id removes the
// record.
func (r *stsFakeResolver) setID(domain, id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if id == "" {
		delete(r.txt, "_mta-sts."+domain)
		return
	}
	r.txt["_mta-sts."+domain] = []string{"v=spf1 -all", "v=STSv1; id=" + id}
}

func (r *stsFakeResolver) setTXT(domain string, txt ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.txt["_mta-sts."+domain] = txt
}

// setTempFail makes lookups for domain's record fail temporarily (or work
// again with on false).
func (r *stsFakeResolver) setTempFail(domain string, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	name := "_mta-sts." + domain
	if on {
		r.fail[name] = &stsLookupError{name: name}
	} else {
		delete(r.fail, name)
	}
}

// stsCA is a throw-away certificate authority.
type stsCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newSTSCA(t testing.TB) *stsCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mxpool test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &stsCA{cert: cert, key: key, pool: pool}
}

// leaf issues a server certificate for names.
func (ca *stsCA) leaf(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// stsReply is what the test policy server answers for one host.
type stsReply struct {
	status   int    // 0 means 200
	ctype    string // "" means text/plain; charset=utf-8
	body     string
	location string // for redirects
	length   bool   // send Content-Length explicitly
}

// stsServer is an HTTPS server on loopback serving policies by Host.
type stsServer struct {
	srv      *httptest.Server
	requests atomic.Int64
	// redirected counts requests to /elsewhere, the target of redirects.
	redirected atomic.Int64
	hook       func() // when set, called by the handler before answering

	mu      sync.Mutex
	replies map[string]stsReply
}

// newSTSServer starts an HTTPS server with a certificate for the
// "mta-sts." names of domains, issued by ca.
func newSTSServer(t testing.TB, ca *stsCA, domains ...string) *stsServer {
	t.Helper()
	s := &stsServer{replies: map[string]stsReply{}}
	names := make([]string, len(domains))
	for i, d := range domains {
		names[i] = "mta-sts." + d
	}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, names...)}}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *stsServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/elsewhere" {
		s.redirected.Add(1)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, stsPolicyText(Enforce, 86400, "mx.example.com"))
		return
	}
	s.requests.Add(1)
	if s.hook != nil {
		s.hook()
	}
	host, _, _ := net.SplitHostPort(r.Host)
	if host == "" {
		host = r.Host
	}
	s.mu.Lock()
	rep, ok := s.replies[host]
	s.mu.Unlock()
	if !ok || r.URL.Path != "/.well-known/mta-sts.txt" {
		http.NotFound(w, r)
		return
	}
	ct := rep.ctype
	if ct == "" {
		ct = "text/plain; charset=utf-8"
	}
	w.Header().Set("Content-Type", ct)
	if rep.location != "" {
		w.Header().Set("Location", rep.location)
	}
	if rep.length {
		w.Header().Set("Content-Length", fmt.Sprint(len(rep.body)))
	}
	status := rep.status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	// Two writes with a flush between: without an explicit length the
	// body goes chunked, so only the reader's limit can stop it.
	half := len(rep.body) / 2
	w.Write([]byte(rep.body[:half]))
	w.(http.Flusher).Flush()
	w.Write([]byte(rep.body[half:]))
}

// set makes the server answer rep for domain's policy.
func (s *stsServer) set(domain string, rep stsReply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replies["mta-sts."+domain] = rep
}

// client returns an HTTP client that trusts pool and sends every
// connection to mta-sts.<anything>:443 to the server.
func (s *stsServer) client(t testing.TB, pool *x509.CertPool) *http.Client {
	addr := s.srv.Listener.Addr().String()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(a)
			if err != nil || port != "443" || !strings.HasPrefix(host, "mta-sts.") {
				return nil, fmt.Errorf("test transport: dial %s refused", a)
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func stsPolicyText(mode Mode, maxAge int, mx ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: STSv1\r\nmode: %s\r\n", mode)
	for _, m := range mx {
		fmt.Fprintf(&b, "mx: %s\r\n", m)
	}
	fmt.Fprintf(&b, "max_age: %d\r\n", maxAge)
	return b.String()
}

func stsTestLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// stsEnv is a resolver, clock, CA and policy server wired to an MTASTS.
type stsEnv struct {
	res   *stsFakeResolver
	clock *testclock.Clock
	ca    *stsCA
	srv   *stsServer
	opts  Options
}

func newSTSEnv(t testing.TB, domains ...string) *stsEnv {
	t.Helper()
	e := &stsEnv{res: newSTSFakeResolver(), clock: testclock.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)), ca: newSTSCA(t)}
	e.srv = newSTSServer(t, e.ca, domains...)
	e.opts = Options{
		HTTPClient:   e.srv.client(t, e.ca.pool),
		Now:          e.clock.Now,
		Logger:       stsTestLogger(t),
		FetchTimeout: 10 * time.Second,
	}
	return e
}

func (e *stsEnv) new(t testing.TB) *MTASTS {
	t.Helper()
	m, err := Open(e.res, &e.opts)
	require.NoError(t, err)
	return m
}

// publish serves a policy for domain under id.
func (e *stsEnv) publish(domain, id string, mode Mode, maxAge int, mx ...string) {
	e.res.setID(domain, id)
	e.srv.set(domain, stsReply{body: stsPolicyText(mode, maxAge, mx...)})
}

func stsCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// ---- parsing ----

func TestParseSTSRecord(t *testing.T) {
	tests := []struct {
		txt  string
		id   string
		want error // nil, ErrNotRecord or ErrSyntax
	}{
		{"v=STSv1; id=20160831085700Z;", "20160831085700Z", nil},
		{"v=STSv1;id=abc", "abc", nil},
		{"v=STSv1 ;\tid=abc ; ", "abc", nil},
		{"v=STSv1; ext=foo; id=abc; other-x.y_z=~!", "abc", nil},
		{"v=STSv1; id=first; id=second", "first", nil},
		{"v=STSv1; id=" + strings.Repeat("a", 32), strings.Repeat("a", 32), nil},

		{"v=spf1 -all", "", ErrNotRecord},
		{"", "", ErrNotRecord},
		{"v=STSv10; id=abc", "", ErrNotRecord},
		{"V=STSv1; id=abc", "", ErrNotRecord}, // case-sensitive
		{" v=STSv1; id=abc", "", ErrNotRecord},

		{"v=STSv1", "", ErrSyntax},                                // no id
		{"v=STSv1;", "", ErrSyntax},                               // no id
		{"v=STSv1; ext=1", "", ErrSyntax},                         // no id
		{"v=STSv1; id=", "", ErrSyntax},                           // empty id
		{"v=STSv1; id=" + strings.Repeat("a", 33), "", ErrSyntax}, // too long
		{"v=STSv1; id=abc-def", "", ErrSyntax},                    // not alphanumeric
		{"v=STSv1; id=abc def", "", ErrSyntax},                    // space inside
		{"v=STSv1;; id=abc", "", ErrSyntax},                       // empty field
		{"v=STSv1; id=abc; =x", "", ErrSyntax},                    // no name
		{"v=STSv1; id=abc; _x=1", "", ErrSyntax},                  // name starts badly
		{"v=STSv1; id=abc; x=a=b", "", ErrSyntax},                 // "=" in value
		{"v=STSv1; id=abc; novalue", "", ErrSyntax},               // not name=value
		{"v=STSv1 id=abc", "", ErrSyntax},                         // no ";"
		{"v=STSv1; id=abc; x=\x01", "", ErrSyntax},                // control char
		{"v=STSv1; id=abc; x=é", "", ErrSyntax},                   // not ASCII
	}
	for _, tt := range tests {
		t.Run(tt.txt, func(t *testing.T) {
			id, err := ParseRecord(tt.txt)
			if tt.want == nil {
				require.NoError(t, err)
				assert.Equal(t, tt.id, id)
				return
			}
			assert.ErrorIs(t, err, tt.want)
			assert.Empty(t, id)
		})
	}
}

func TestParseSTSPolicy(t *testing.T) {
	valid := []struct {
		name   string
		text   string
		mode   Mode
		mx     []string
		maxAge time.Duration
	}{
		{"rfc example CRLF", "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n",
			Enforce, []string{"mail.example.com", "*.example.net", "backupmx.example.com"}, 604800 * time.Second},
		{"LF, no final newline, any order", "mx: MX.Example.COM\nmax_age: 86400\nmode: testing\nversion: STSv1",
			Testing, []string{"mx.example.com"}, 86400 * time.Second},
		{"white space around values", "version:STSv1 \nmode:\t enforce\t\nmx:  a.example\nmax_age: 0\n",
			Enforce, []string{"a.example"}, 0},
		{"unknown keys ignored", "version: STSv1\nmode: enforce\nfoo.bar-baz_1: anything goes, even ünïcode\nmx: a.example\nmax_age: 31557600\n",
			Enforce, []string{"a.example"}, 31557600 * time.Second},
		{"first of duplicated keys counts", "version: STSv1\nmode: testing\nmode: enforce\nmax_age: 10\nmax_age: bogus\nversion: STSv2\nmx: a.example\n",
			Testing, []string{"a.example"}, 10 * time.Second},
		{"duplicate mx kept once", "version: STSv1\nmode: enforce\nmx: a.example\nmx: A.example\nmx: b.example\nmax_age: 1\n",
			Enforce, []string{"a.example", "b.example"}, time.Second},
		{"mode none needs no mx", "version: STSv1\nmode: none\nmax_age: 86400\n",
			None, nil, 86400 * time.Second},
		{"blank lines ignored", "\nversion: STSv1\r\n\r\nmode: enforce\n  \nmx: a.example\nmax_age: 5\n\n",
			Enforce, []string{"a.example"}, 5 * time.Second},
		{"leading zeros", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 0000000042\n",
			Enforce, []string{"a.example"}, 42 * time.Second},
	}
	for _, tt := range valid {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(tt.text))
			require.NoError(t, err)
			assert.Equal(t, tt.mode, p.Mode)
			assert.Equal(t, tt.mx, p.MX)
			assert.Equal(t, tt.maxAge, p.MaxAge)
		})
	}

	const head = "version: STSv1\nmode: enforce\nmax_age: 86400\n"
	invalid := []struct {
		name, text, msg string
	}{
		{"empty", "", "no version"},
		{"no version", "mode: enforce\nmx: a.example\nmax_age: 1\n", "no version"},
		{"wrong version", "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", `unsupported version "STSv2"`},
		{"version case", "version: stsv1\nmode: enforce\nmx: a.example\nmax_age: 1\n", "unsupported version"},
		{"no mode", "version: STSv1\nmx: a.example\nmax_age: 1\n", "no mode"},
		{"bad mode", "version: STSv1\nmode: report\nmx: a.example\nmax_age: 1\n", `line 2: mode "report"`},
		{"mode case", "version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", "mode"},
		{"key case", "version: STSv1\nMode: enforce\nmx: a.example\nmax_age: 1\n", "no mode"},
		{"no max_age", "version: STSv1\nmode: enforce\nmx: a.example\n", "no max_age"},
		{"max_age too big", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", "exceeds 31557600"},
		{"max_age 11 digits", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 00000000001\n", "1 to 10 digits"},
		{"max_age negative", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "1 to 10 digits"},
		{"max_age not a number", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1d\n", "1 to 10 digits"},
		{"no mx in enforce", head, "has no mx"},
		{"no mx in testing", "version: STSv1\nmode: testing\nmax_age: 1\n", "has no mx"},
		{"wildcard not whole label", head + "mx: *mail.example.com\n", "wildcard"},
		{"wildcard not leftmost", head + "mx: mail.*.example.com\n", "wildcard"},
		{"double wildcard", head + "mx: *.*.example.com\n", "wildcard"},
		{"lone wildcard", head + "mx: *\n", "wildcard"},
		{"trailing dot", head + "mx: mail.example.com.\n", "empty label"},
		{"leading dot (draft syntax)", head + "mx: .example.com\n", "empty label"},
		{"hyphen", head + "mx: -mail.example.com\n", "hyphen"},
		{"underscore", head + "mx: mail_1.example.com\n", "invalid character"},
		{"U-label", head + "mx: mail.bücher.example\n", "A-label"},
		{"long label", head + "mx: " + strings.Repeat("a", 64) + ".example\n", "longer than 63"},
		{"two patterns on a line", head + "mx: a.example b.example\n", "invalid character"},
		{"no colon", head + "mx a.example\n", `line 4: no ":"`},
		{"bad key", head + "m x: a.example\n", "invalid key"},
		{"leading white space", " version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n", "line 1: invalid key"},
		{"empty value", head + "mx:\n", "mx has no value"},
		{"bare CR in line", "version: STSv1\rmode: enforce\nmx: a.example\nmax_age: 1\n", "control character"},
		{"control character", head + "mx: a.example\nx-ext: a\x00b\n", "control character"},
		{"invalid UTF-8", head + "mx: a.example\nx-ext: \xff\n", "UTF-8"},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(tt.text))
			require.Error(t, err)
			assert.Nil(t, p)
			assert.ErrorIs(t, err, ErrSyntax)
			assert.Contains(t, err.Error(), tt.msg)
		})
	}
}

func TestSTSPolicyMatch(t *testing.T) {
	p := &Policy{Mode: Enforce, MX: []string{"mail.example.com", "*.example.net"}}
	tests := []struct {
		host string
		want bool
	}{
		{"mail.example.com", true},
		{"MAIL.Example.COM", true},
		{"mail.example.com.", true},
		{"other.example.com", false},
		{"example.com", false},
		{"a.mail.example.com", false},
		{"mx1.example.net", true},
		{"MX1.EXAMPLE.NET.", true},
		{"example.net", false},     // wildcard needs one label
		{"a.b.example.net", false}, // and only one
		{".example.net", false},    // empty label
		{"*.example.net", false},   // not a host name
		{"mx1.example.net.evil", false},
		{"mx1example.net", false},
		{"", false},
		{".", false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, p.Match(tt.host), "Match(%q)", tt.host)
	}
}

func TestSTSPolicyStringRoundTrip(t *testing.T) {
	p := &Policy{Mode: Testing, MX: []string{"a.example", "*.b.example"}, MaxAge: 3600 * time.Second}
	q, err := ParsePolicy([]byte(p.String()))
	require.NoError(t, err)
	assert.Equal(t, p, q)
}

// ---- fetching and caching ----

func TestMTASTSFetchAndCacheByID(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.publish("example.com", "id1", Enforce, 86400, "mx1.example.com", "*.example.net")
	m := e.new(t)
	ctx := stsCtx(t)

	p, err := m.Policy(ctx, "Example.COM.")
	require.NoError(t, err)
	require.NotNil(t, p)
	assert.Equal(t, Enforce, p.Mode)
	assert.Equal(t, []string{"mx1.example.com", "*.example.net"}, p.MX)
	assert.Equal(t, "id1", p.ID)
	assert.Equal(t, e.clock.Now().Add(86400*time.Second), p.Expires)
	assert.EqualValues(t, 1, e.srv.requests.Load())

	e.clock.Advance(time.Hour)
	for range 3 {
		q, err := m.Policy(ctx, "example.com")
		require.NoError(t, err)
		assert.Same(t, p, q, "same id: the cached policy")
	}
	assert.EqualValues(t, 1, e.srv.requests.Load(), "same id: no new fetch")
	st := m.Stats()
	assert.Equal(t, 1, st.Cached)
	assert.EqualValues(t, 4, st.Lookups)
	assert.EqualValues(t, 3, st.CacheHits)
	assert.EqualValues(t, 1, st.Fetches)
}

func TestMTASTSIDChangeRefetches(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.publish("example.com", "id1", Enforce, 86400, "old.example.com")
	m := e.new(t)
	ctx := stsCtx(t)
	p, err := m.Policy(ctx, "example.com")
	require.NoError(t, err)
	require.Equal(t, []string{"old.example.com"}, p.MX)

	e.publish("example.com", "id2", Enforce, 86400, "new.example.com")
	p, err = m.Policy(ctx, "example.com")
	require.NoError(t, err)
	assert.Equal(t, "id2", p.ID)
	assert.Equal(t, []string{"new.example.com"}, p.MX)
	assert.EqualValues(t, 2, e.srv.requests.Load())
}

func TestMTASTSMaxAgeExpiry(t *testing.T) {
	t.Run("max_age", func(t *testing.T) {
		e := newSTSEnv(t, "example.com")
		e.publish("example.com", "id1", Enforce, 600, "mx.example.com")
		m := e.new(t)
		ctx := stsCtx(t)
		_, err := m.Policy(ctx, "example.com")
		require.NoError(t, err)
		e.clock.Advance(299 * time.Second) // before refresh (half of 600 s)
		_, err = m.Policy(ctx, "example.com")
		require.NoError(t, err)
		assert.EqualValues(t, 1, e.srv.requests.Load())

		// The policy server goes away and the policy expires: no policy.
		e.srv.set("example.com", stsReply{status: http.StatusInternalServerError})
		e.clock.Advance(302 * time.Second)
		p, err := m.Policy(ctx, "example.com")
		assert.Nil(t, p, "expired policy must not apply")
		var se *Error
		require.ErrorAs(t, err, &se)
		assert.EqualValues(t, 2, e.srv.requests.Load())
		assert.Empty(t, m.Cached())
	})
	t.Run("cap", func(t *testing.T) {
		e := newSTSEnv(t, "example.com")
		e.opts.MaxAge = time.Hour
		e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
		m := e.new(t)
		ctx := stsCtx(t)
		p, err := m.Policy(ctx, "example.com")
		require.NoError(t, err)
		assert.Equal(t, e.clock.Now().Add(time.Hour), p.Expires)
		e.clock.Advance(time.Hour)
		_, err = m.Policy(ctx, "example.com")
		require.NoError(t, err)
		assert.EqualValues(t, 2, e.srv.requests.Load(), "fetched again once the cap is reached")
	})
	t.Run("zero", func(t *testing.T) {
		e := newSTSEnv(t, "example.com")
		e.publish("example.com", "id1", Enforce, 0, "mx.example.com")
		m := e.new(t)
		ctx := stsCtx(t)
		for range 2 {
			p, err := m.Policy(ctx, "example.com")
			require.NoError(t, err)
			require.NotNil(t, p, "a policy with max_age 0 applies to the delivery that fetched it")
		}
		assert.EqualValues(t, 2, e.srv.requests.Load(), "but is not cached")
	})
}

func TestMTASTSRefreshBeforeExpiry(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.publish("example.com", "id1", Enforce, 4*86400, "mx.example.com")
	m := e.new(t)
	ctx := stsCtx(t)
	first, err := m.Policy(ctx, "example.com")
	require.NoError(t, err)

	// After a day the same id is fetched again, extending the lifetime.
	e.clock.Advance(24 * time.Hour)
	p, err := m.Policy(ctx, "example.com")
	require.NoError(t, err)
	assert.EqualValues(t, 2, e.srv.requests.Load())
	assert.Equal(t, e.clock.Now().Add(4*86400*time.Second), p.Expires)

	// A failed refresh keeps the policy in force.
	e.srv.set("example.com", stsReply{status: http.StatusServiceUnavailable})
	e.clock.Advance(24 * time.Hour)
	q, err := m.Policy(ctx, "example.com")
	require.NoError(t, err)
	assert.Same(t, p, q)
	assert.NotSame(t, first, q)
	assert.EqualValues(t, 3, e.srv.requests.Load())
}

func TestMTASTSRecordRemovedCacheStillApplies(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.publish("example.com", "id1", Enforce, 3600, "mx.example.com")
	m := e.new(t)
	ctx := stsCtx(t)
	p, err := m.Policy(ctx, "example.com")
	require.NoError(t, err)

	e.res.setID("example.com", "") // NXDOMAIN
	e.clock.Advance(30 * time.Minute)
	q, err := m.Policy(ctx, "example.com")
	require.NoError(t, err)
	assert.Same(t, p, q, "record gone, unexpired policy still enforced")

	e.res.setTXT("example.com", "v=STSv1; id=bad!") // invalid record
	q, err = m.Policy(ctx, "example.com")
	require.NoError(t, err)
	assert.Same(t, p, q, "invalid record, unexpired policy still enforced")

	e.res.setID("example.com", "")
	e.clock.Advance(31 * time.Minute)
	q, err = m.Policy(ctx, "example.com")
	require.NoError(t, err)
	assert.Nil(t, q, "after expiry the domain has no policy")
	assert.EqualValues(t, 1, e.srv.requests.Load())
}

func TestMTASTSFailureUsesCache(t *testing.T) {
	t.Run("fetch fails after id change", func(t *testing.T) {
		e := newSTSEnv(t, "example.com")
		var logs stsLogBuffer
		e.opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
		m := e.new(t)
		ctx := stsCtx(t)
		p, err := m.Policy(ctx, "example.com")
		require.NoError(t, err)

		e.res.setID("example.com", "id2")
		e.srv.set("example.com", stsReply{status: http.StatusInternalServerError})
		q, err := m.Policy(ctx, "example.com")
		require.NoError(t, err)
		assert.Same(t, p, q)
		assert.EqualValues(t, 1, m.Stats().StaleUses)
		assert.Contains(t, logs.String(), "policy fetch failed, cached policy still applies")
		assert.Contains(t, logs.String(), "sts_id=id2")
	})
	t.Run("lookup fails", func(t *testing.T) {
		e := newSTSEnv(t, "example.com")
		e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
		m := e.new(t)
		ctx := stsCtx(t)
		p, err := m.Policy(ctx, "example.com")
		require.NoError(t, err)

		e.res.setTempFail("example.com", true)
		e.clock.Advance(time.Hour)
		q, err := m.Policy(ctx, "example.com")
		require.NoError(t, err)
		assert.Same(t, p, q, "a temporary DNS failure never drops a cached policy")
		assert.Len(t, m.Cached(), 1)
		e.res.setTempFail("example.com", false)
		q, err = m.Policy(ctx, "example.com")
		require.NoError(t, err)
		assert.Same(t, p, q, "and the policy is still cached afterwards")
		assert.EqualValues(t, 1, e.srv.requests.Load())
	})
}

func TestMTASTSFailureWithoutCache(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.res.setID("example.com", "id1")
	e.srv.set("example.com", stsReply{status: http.StatusInternalServerError})
	m := e.new(t)
	ctx := stsCtx(t)

	p, err := m.Policy(ctx, "example.com")
	assert.Nil(t, p)
	var se *Error
	require.ErrorAs(t, err, &se)
	assert.True(t, se.Temporary())
	assert.Equal(t, "fetch", se.Op)
	assert.Equal(t, "id1", se.ID)
	assert.ErrorIs(t, err, ErrStatus)

	// No new fetch of the same id for RetryAfter (five minutes).
	e.srv.set("example.com", stsReply{body: stsPolicyText(Enforce, 86400, "mx.example.com")})
	e.clock.Advance(4 * time.Minute)
	_, err = m.Policy(ctx, "example.com")
	require.ErrorAs(t, err, &se)
	assert.EqualValues(t, 1, e.srv.requests.Load())

	// A new id is fetched at once.
	e.res.setID("example.com", "id2")
	p, err = m.Policy(ctx, "example.com")
	require.NoError(t, err)
	assert.Equal(t, "id2", p.ID)
	assert.EqualValues(t, 2, e.srv.requests.Load())

	// Lookup failure without a cache.
	e.res.setTempFail("example.org", true)
	p, err = m.Policy(ctx, "example.org")
	assert.Nil(t, p)
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "lookup", se.Op)
	var le *stsLookupError
	assert.ErrorAs(t, err, &le)
}

func TestMTASTSRetryAfterElapses(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.res.setID("example.com", "id1")
	e.srv.set("example.com", stsReply{status: http.StatusNotFound})
	m := e.new(t)
	ctx := stsCtx(t)
	_, err := m.Policy(ctx, "example.com")
	require.Error(t, err)
	e.srv.set("example.com", stsReply{body: stsPolicyText(Testing, 86400, "mx.example.com")})
	e.clock.Advance(5 * time.Minute)
	p, err := m.Policy(ctx, "example.com")
	require.NoError(t, err)
	assert.Equal(t, Testing, p.Mode)
	assert.EqualValues(t, 2, e.srv.requests.Load())
}

func TestMTASTSNoPolicy(t *testing.T) {
	tests := []struct {
		name string
		txt  []string // nil: NXDOMAIN
	}{
		{"nxdomain", nil},
		{"nodata", []string{}},
		{"other records only", []string{"v=spf1 -all", "hello"}},
		{"two records", []string{"v=STSv1; id=a", "v=STSv1; id=b"}},
		{"invalid record", []string{"v=STSv1; id=a-b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newSTSEnv(t, "example.com")
			e.srv.set("example.com", stsReply{body: stsPolicyText(Enforce, 86400, "mx.example.com")})
			if tt.txt != nil {
				e.res.setTXT("example.com", tt.txt...)
			}
			m := e.new(t)
			p, err := m.Policy(stsCtx(t), "example.com")
			require.NoError(t, err)
			assert.Nil(t, p)
			assert.EqualValues(t, 0, e.srv.requests.Load(), "no fetch without exactly one valid record")
		})
	}
}

func TestMTASTSModeNoneReplacesPolicy(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
	m := e.new(t)
	ctx := stsCtx(t)
	_, err := m.Policy(ctx, "example.com")
	require.NoError(t, err)

	e.publish("example.com", "id2", None, 86400)
	p, err := m.Policy(ctx, "example.com")
	require.NoError(t, err)
	assert.Equal(t, None, p.Mode)

	e.res.setID("example.com", "") // record removed after the withdrawal
	p, err = m.Policy(ctx, "example.com")
	require.NoError(t, err)
	assert.Equal(t, None, p.Mode, "the old enforce policy must not come back")
}

func TestMTASTSFetchRefused(t *testing.T) {
	valid := stsPolicyText(Enforce, 86400, "mx.example.com")
	// pad returns a valid policy of exactly n bytes.
	pad := func(n int) string {
		s := valid + "x-pad: "
		return s + strings.Repeat("p", n-len(s)-1) + "\n"
	}
	tests := []struct {
		name  string
		rep   stsReply
		check func(t *testing.T, err error)
	}{
		{"redirect", stsReply{status: http.StatusFound, location: "https://mta-sts.example.com/elsewhere", body: valid},
			func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrRedirect) }},
		{"permanent redirect", stsReply{status: http.StatusPermanentRedirect, location: "/elsewhere", body: valid},
			func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrRedirect) }},
		{"text/html", stsReply{ctype: "text/html; charset=utf-8", body: valid},
			func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrMediaType) }},
		{"application/octet-stream", stsReply{ctype: "application/octet-stream", body: valid},
			func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrMediaType) }},
		{"too large, chunked", stsReply{body: pad(MaxPolicySize + 1)},
			func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrTooLarge) }},
		{"too large, Content-Length", stsReply{body: pad(MaxPolicySize + 1), length: true},
			func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrTooLarge) }},
		{"status 404", stsReply{status: http.StatusNotFound, body: valid},
			func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrStatus) }},
		{"status 204", stsReply{status: http.StatusNoContent},
			func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrStatus) }},
		{"invalid policy", stsReply{body: "version: STSv1\nmode: enforce\nmax_age: 1\n"},
			func(t *testing.T, err error) { assert.ErrorIs(t, err, ErrSyntax) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newSTSEnv(t, "example.com")
			e.res.setID("example.com", "id1")
			e.srv.set("example.com", tt.rep)
			m := e.new(t)
			p, err := m.Policy(stsCtx(t), "example.com")
			assert.Nil(t, p)
			var se *Error
			require.ErrorAs(t, err, &se)
			tt.check(t, err)
			assert.EqualValues(t, 1, e.srv.requests.Load())
			assert.EqualValues(t, 0, e.srv.redirected.Load(), "redirect followed")
		})
	}

	t.Run("exactly the size limit", func(t *testing.T) {
		e := newSTSEnv(t, "example.com")
		e.res.setID("example.com", "id1")
		e.srv.set("example.com", stsReply{body: pad(MaxPolicySize), length: true})
		m := e.new(t)
		p, err := m.Policy(stsCtx(t), "example.com")
		require.NoError(t, err)
		assert.Equal(t, Enforce, p.Mode)
	})

	t.Run("certificate not trusted", func(t *testing.T) {
		e := newSTSEnv(t, "example.com")
		e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
		// The server's certificate names the right host, but its issuer
		// is not in the client's roots.
		other := newSTSCA(t)
		e.opts.HTTPClient = e.srv.client(t, other.pool)
		m := e.new(t)
		p, err := m.Policy(stsCtx(t), "example.com")
		assert.Nil(t, p)
		var se *Error
		require.ErrorAs(t, err, &se)
		var ua x509.UnknownAuthorityError
		assert.ErrorAs(t, err, &ua)
	})

	t.Run("certificate for another name", func(t *testing.T) {
		e := newSTSEnv(t, "example.org")
		e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
		m := e.new(t)
		p, err := m.Policy(stsCtx(t), "example.com")
		assert.Nil(t, p)
		var he x509.HostnameError
		assert.ErrorAs(t, err, &he)
	})
}

func TestMTASTSConcurrentCallersShareFetch(t *testing.T) {
	const n = 8
	e := newSTSEnv(t, "example.com")
	e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
	lookups := make(chan string, n)
	e.res.lookups = lookups
	release := make(chan struct{})
	e.srv.hook = func() { <-release }
	m := e.new(t)
	ctx := stsCtx(t)

	var wg sync.WaitGroup
	got := make([]*Policy, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { got[i], errs[i] = m.Policy(ctx, "example.com") })
	}
	// Every caller has looked the record up, found no cached policy and is
	// on its way to the fetch, which is held until now.
	for range n {
		select {
		case <-lookups:
		case <-ctx.Done():
			t.Fatal("callers did not look up the record")
		}
	}
	close(release)
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		assert.Same(t, got[0], got[i])
	}
	assert.EqualValues(t, 1, e.srv.requests.Load(), "one fetch for all callers")
}

func TestMTASTSCallerCancelled(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	e.srv.hook = func() { entered <- struct{}{}; <-release }
	m := e.new(t)
	ctx, cancel := context.WithCancel(stsCtx(t))
	done := make(chan error, 1)
	go func() {
		_, err := m.Policy(ctx, "example.com")
		done <- err
	}()
	<-entered
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled)
	// The fetch itself goes on and its result is cached.
	close(release)
	p, err := m.Policy(stsCtx(t), "example.com")
	require.NoError(t, err)
	assert.Equal(t, "id1", p.ID)
	assert.EqualValues(t, 1, e.srv.requests.Load())
}

// ---- persistence ----

func TestMTASTSPersistence(t *testing.T) {
	e := newSTSEnv(t, "example.com", "example.org")
	e.opts.Dir = filepath.Join(t.TempDir(), "sts")
	e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
	e.publish("example.org", "org1", Testing, 600, "mx.example.org")
	m1 := e.new(t)
	ctx := stsCtx(t)
	p1, err := m1.Policy(ctx, "example.com")
	require.NoError(t, err)
	_, err = m1.Policy(ctx, "example.org")
	require.NoError(t, err)

	names, err := filepath.Glob(filepath.Join(e.opts.Dir, "*"))
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{
		filepath.Join(e.opts.Dir, "example.com.sts"),
		filepath.Join(e.opts.Dir, "example.org.sts"),
	}, names, "one file per domain, no temporary files left")

	// A restarted node cannot reach the policy host, and the record now
	// names a newer policy: the persisted one still applies.
	e.res.setID("example.com", "id2")
	e.srv.srv.Close()
	e.clock.Advance(20 * time.Minute) // example.org's 600 s are over
	m2 := e.new(t)
	p2, err := m2.Policy(ctx, "example.com")
	require.NoError(t, err)
	require.NotNil(t, p2, "restarted node must still enforce")
	assert.Equal(t, p1.ID, p2.ID)
	assert.Equal(t, p1.Mode, p2.Mode)
	assert.Equal(t, p1.MX, p2.MX)
	assert.True(t, p1.Expires.Equal(p2.Expires), "expiry survives: %v vs %v", p1.Expires, p2.Expires)

	cached := m2.Cached()
	require.Len(t, cached, 1, "the expired example.org policy is not loaded")
	assert.Equal(t, "example.com", cached[0].Domain)
	assert.Equal(t, "id1", cached[0].ID)
	assert.Equal(t, Enforce, cached[0].Mode)
	assert.True(t, cached[0].Expires.Equal(p1.Expires))
	_, err = os.Stat(filepath.Join(e.opts.Dir, "example.org.sts"))
	assert.ErrorIs(t, err, os.ErrNotExist, "expired file removed")
}

func TestMTASTSCacheVersionRefused(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.opts.Dir = t.TempDir()
	e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
	_, err := e.new(t).Policy(stsCtx(t), "example.com")
	require.NoError(t, err)

	path := filepath.Join(e.opts.Dir, "example.com.sts")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(data, []byte("mxpool-mta-sts 1 ")))
	future := bytes.Replace(data, []byte("mxpool-mta-sts 1 "), []byte("mxpool-mta-sts 2 "), 1)
	require.NoError(t, os.WriteFile(path, future, 0o644))

	_, err = Open(e.res, &e.opts)
	assert.ErrorIs(t, err, ErrCacheVersion)
	assert.Contains(t, err.Error(), path)
	after, rerr := os.ReadFile(path)
	require.NoError(t, rerr)
	assert.Equal(t, future, after, "file left untouched")
}

func TestMTASTSCorruptCacheRenamedAside(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.opts.Dir = t.TempDir()
	e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
	_, err := e.new(t).Policy(stsCtx(t), "example.com")
	require.NoError(t, err)
	path := filepath.Join(e.opts.Dir, "example.com.sts")
	data, err := os.ReadFile(path)
	require.NoError(t, err)

	tests := map[string][]byte{
		"bit flip":  bytes.Replace(data, []byte("mx.example.com"), []byte("mx.example.con"), 1),
		"truncated": data[:len(data)-5],
		"garbage":   []byte("hello\n"),
		"empty":     {},
	}
	for name, content := range tests {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, os.WriteFile(path, content, 0o644))
			m, err := Open(e.res, &e.opts)
			require.NoError(t, err)
			assert.Empty(t, m.Cached())
			aside, err := os.ReadFile(path + ".corrupt")
			require.NoError(t, err, "damaged file kept aside")
			assert.Equal(t, content, aside)
			_, err = os.Stat(path)
			assert.ErrorIs(t, err, os.ErrNotExist)
			require.NoError(t, os.Remove(path+".corrupt"))
		})
	}
}

func TestOpenMTASTSOptions(t *testing.T) {
	_, err := Open(nil, nil)
	assert.Error(t, err)
	_, err = Open(newSTSFakeResolver(), &Options{MaxAge: -1})
	assert.Error(t, err)
	m, err := Open(newSTSFakeResolver(), nil)
	require.NoError(t, err)
	_, err = m.Policy(stsCtx(t), "bad domain")
	assert.Error(t, err)
	_, err = m.Policy(stsCtx(t), "bücher.example")
	assert.ErrorContains(t, err, "A-label")
}

func TestSTSErrorMessage(t *testing.T) {
	err := &Error{Domain: "example.com", Op: "fetch", ID: "x1", Err: errors.New("boom")}
	assert.Equal(t, "sts: MTA-STS policy of example.com (id x1): boom", err.Error())
}
