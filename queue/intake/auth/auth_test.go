package auth_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/dnstest"
	"github.com/resilmail/resilmail/queue/intake"
	"github.com/resilmail/resilmail/queue/intake/auth"
	"github.com/resilmail/resilmail/queue/intake/intaketest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// world is the DNS the tests see: example.net signs and publishes SPF for
// 127.0.0.1 and p=reject; bank.example publishes p=reject and sends from
// elsewhere; news.example publishes p=quarantine; null.example a null MX.
type world struct {
	dns *dnstest.Server
	key ed25519.PrivateKey
}

func newWorld(t testing.TB) *world {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	p := base64.StdEncoding.EncodeToString(pub)
	d := startDNS(t,
		`example.net. 60 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`example.net. 60 IN MX 10 mx.example.net.`,
		`_dmarc.example.net. 60 IN TXT "v=DMARC1; p=reject"`,
		`sel._domainkey.example.net. 60 IN TXT "v=DKIM1; k=ed25519; p=`+p+`"`,
		`bank.example. 60 IN TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`_dmarc.bank.example. 60 IN TXT "v=DMARC1; p=reject; sp=quarantine"`,
		`mail.bank.example. 60 IN A 192.0.2.1`,
		`news.example. 60 IN TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`_dmarc.news.example. 60 IN TXT "v=DMARC1; p=quarantine"`,
		`null.example. 60 IN MX 0 .`,
		`broken.example. 60 IN TXT "v=spf1 include:down.example -all"`,
		`_dmarc.broken.example. 60 IN TXT "v=DMARC1; p=reject"`,
	)
	d.Fail("down.example")
	d.Fail("dnsdown.example")
	d.Fail("_dmarc.dnsdown.example")
	return &world{dns: d, key: key}
}

// sign returns msg with a DKIM signature of example.net.
func (w *world) sign(t testing.TB, msg string) string {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, dkim.Sign(&b, strings.NewReader(msg), &dkim.SignOptions{Domain: "example.net", Selector: "sel", Signer: w.key,
		HeaderKeys: []string{"From", "To", "Subject", "Date", "Message-ID"}}))
	return b.String()
}

func (w *world) auth(t testing.TB, opts auth.Options) *auth.Authenticator {
	t.Helper()
	opts.AuthServID = "mx.example.org"
	opts.Resolver = w.dns.Resolver()
	opts.Logger = quiet
	a, err := auth.New(&opts)
	require.NoError(t, err)
	return a
}

// mx serves an intake.Backend authenticating with a (and then scanning
// with inner, if set) on loopback.
func mx(t *testing.T, a *auth.Authenticator, inner intake.Scanner, tune func(*intake.Backend)) (string, *intaketest.Recorder) {
	t.Helper()
	rec := &intaketest.Recorder{}
	be := &intake.Backend{Queue: rec, Scanner: intake.WrapScanner(inner, a.Middleware()), CheckSender: a.CheckSender,
		Hostname: "mx.example.org", Logger: quiet}
	if inner == nil {
		be.Scanner = a.Scanner()
	}
	if tune != nil {
		tune(be)
	}
	return intaketest.Serve(t, be), rec
}

// swaks sends msg (a whole message, header and body) from sender with the
// real swaks and returns its transcript and whether it got a 250.
func swaks(t *testing.T, addr, sender, msg string) (string, bool) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("swaks", "--server", host, "--port", port, "--helo", "client.example.net",
		"--from", sender, "--to", "alice@example.org", "--data", "-", "--timeout", "30")
	cmd.Stdin = strings.NewReader(strings.ReplaceAll(msg, "\r\n", "\n"))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errorsAs(err, &ee) {
		require.NoError(t, err, "swaks is needed (apt-get install swaks)")
	}
	return string(out), err == nil
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}

func message(from, subject string, extra ...string) string {
	h := "From: " + from + "\r\nTo: alice@example.org\r\nSubject: " + subject + "\r\nDate: Mon, 07 Dec 2026 18:00:00 +0000\r\nMessage-ID: <" + subject + "@test>\r\n"
	for _, e := range extra {
		h += e + "\r\n"
	}
	return h + "\r\nHello Alice.\r\n"
}

// authResults returns the Authentication-Results fields of msg, unfolded.
func authResults(msg string) []string {
	head, _, _ := strings.Cut(msg, "\r\n\r\n")
	head = strings.ReplaceAll(strings.ReplaceAll(head, "\r\n\t", " "), "\r\n ", " ")
	var out []string
	for _, l := range strings.Split(head, "\r\n") {
		if name, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(name, "Authentication-Results") {
			out = append(out, strings.TrimSpace(v))
		}
	}
	return out
}

func TestAuthenticationResultsWithSwaks(t *testing.T) {
	w := newWorld(t)
	addr, rec := mx(t, w.auth(t, auth.Options{}), nil, nil)
	msg := w.sign(t, message("Sender <sender@example.net>", "signed",
		"Authentication-Results: mx.example.org; dkim=pass header.d=bank.example; dmarc=pass header.from=bank.example",
		"Authentication-Results: MX.EXAMPLE.ORG (forged, with a comment) 1; spf=pass",
		"Authentication-Results: other.example; spf=fail smtp.mailfrom=example.net"))
	out, ok := swaks(t, addr, "sender@example.net", msg)
	require.True(t, ok, out)
	got := rec.Bodies()
	require.Len(t, got, 1)
	ars := authResults(got[0])
	require.Len(t, ars, 2, "ours added, both forged ones gone, the other id's kept: %q", ars)
	assert.Regexp(t, `^mx\.example\.org; spf=pass smtp\.helo=client\.example\.net smtp\.mailfrom=sender@example\.net; `+
		`dkim=pass header\.d=example\.net header\.i=@example\.net; dmarc=pass header\.from=example\.net$`, ars[0])
	assert.Equal(t, "other.example; spf=fail smtp.mailfrom=example.net", ars[1])
	i := strings.Index(got[0], "\r\nAuthentication-Results: mx.example.org;")
	assert.True(t, strings.HasPrefix(got[0], "Received: ") && i > 0 && i < strings.Index(got[0], "\r\nDKIM-Signature:"),
		"ours is at the top, under our Received: %s", got[0])
}

func TestDMARC(t *testing.T) {
	w := newWorld(t)
	forged := message("Bank <service@bank.example>", "forged")
	for _, tc := range []struct {
		name   string
		opts   auth.Options
		sender string
		msg    string
		reply  string // the start of the reply to DATA
		dmarc  string // the dmarc= result in the header, when kept
		spam   bool   // tagged as spam
	}{
		{"p=reject fails: refused", auth.Options{}, "someone@example.net", forged, "550 5.7.1 message refused: the DMARC policy of bank.example says reject", "", false},
		{"p=reject fails, policy says tag", auth.Options{OnReject: auth.Tag}, "someone@example.net", forged, "250", "fail", true},
		{"p=reject fails, policy says accept", auth.Options{OnReject: auth.Accept}, "someone@example.net", forged, "250", "fail", false},
		{"p=quarantine fails: tagged by default", auth.Options{}, "someone@example.net", message("news@news.example", "news"), "250", "fail", true},
		{"sp= applies to a subdomain", auth.Options{}, "someone@example.net", message("x@mail.bank.example", "sub"), "250", "fail", true},
		{"SPF-aligned pass", auth.Options{}, "bounce@example.net", message("sender@example.net", "spf"), "250", "pass", false},
		{"relaxed SPF alignment with a subdomain", auth.Options{}, "bounce@example.net", message("sender@mail.example.net", "relaxed"), "250", "pass", false},
		{"no DMARC record", auth.Options{}, "someone@example.net", message("x@nodmarc.example", "none"), "250", "none", false},
		{"SPF temperror under p=reject: 451, not 550", auth.Options{}, "x@broken.example", message("x@broken.example", "temp"), "451 4.7.1", "", false},
		{"DMARC record unreadable: temperror, delivered", auth.Options{}, "someone@example.net", message("x@dnsdown.example", "tmp"), "250", "temperror", false},
		{"two From fields: permerror", auth.Options{}, "someone@example.net", message("a@bank.example", "two", "From: b@bank.example"), "250", "permerror", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, rec := mx(t, w.auth(t, tc.opts), nil, nil)
			reply := sendRaw(t, addr, tc.sender, tc.msg)
			require.True(t, strings.HasPrefix(reply, tc.reply), "reply %q, want %q", reply, tc.reply)
			if tc.dmarc == "" {
				assert.Empty(t, rec.Bodies())
				return
			}
			got := rec.Bodies()
			require.Len(t, got, 1)
			ars := authResults(got[0])
			require.NotEmpty(t, ars)
			assert.Contains(t, ars[0], "dmarc="+tc.dmarc+" ")
			assert.Equal(t, tc.spam, strings.Contains(got[0], "X-Spam-Flag: YES"), got[0])
		})
	}
	t.Run("p=reject fails, policy says quarantine", func(t *testing.T) {
		var (
			mu   sync.Mutex
			kept []intake.Verdict
		)
		addr, rec := mx(t, w.auth(t, auth.Options{OnReject: auth.Quarantine}), nil, func(be *intake.Backend) {
			be.Quarantine = func(_ context.Context, _ resilmail.Envelope, v intake.Verdict, body io.Reader) error {
				b, _ := io.ReadAll(body)
				mu.Lock()
				defer mu.Unlock()
				kept = append(kept, v)
				assert.Contains(t, string(b), "dmarc=fail")
				return nil
			}
		})
		assert.Regexp(t, `^250 `, sendRaw(t, addr, "someone@example.net", forged))
		assert.Empty(t, rec.Bodies())
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, kept, 1)
		assert.Equal(t, intake.ActionQuarantine, kept[0].Action)
		assert.Equal(t, []string{"DMARC_POLICY_REJECT"}, kept[0].Symbols)
	})
	t.Run("pct=0 is never sampled: reject becomes quarantine", func(t *testing.T) {
		w2 := newWorld(t)
		require.NoError(t, w2.dns.Add(`_dmarc.pct.example. 60 IN TXT "v=DMARC1; p=reject; pct=0"`))
		addr, rec := mx(t, w2.auth(t, auth.Options{OnQuarantine: auth.Tag}), nil, nil)
		assert.Regexp(t, `^250 `, sendRaw(t, addr, "someone@example.net", message("x@pct.example", "pct")))
		require.Len(t, rec.Bodies(), 1)
		assert.Contains(t, rec.Bodies()[0], "X-Spam-Flag: YES")
	})
}

func TestDKIMBrokenSignature(t *testing.T) {
	w := newWorld(t)
	addr, rec := mx(t, w.auth(t, auth.Options{}), nil, nil)
	msg := strings.Replace(w.sign(t, message("sender@example.net", "changed")), "Hello Alice.", "Hello Mallory.", 1)
	// SPF passes for example.net from 127.0.0.1, so DMARC still passes.
	assert.Regexp(t, `^250 `, sendRaw(t, addr, "sender@example.net", msg))
	require.Len(t, rec.Bodies(), 1)
	ars := authResults(rec.Bodies()[0])
	assert.Contains(t, ars[0], "dkim=fail reason=")
	assert.Contains(t, ars[0], "dmarc=pass")
}

func TestNullMXSenderWithSwaks(t *testing.T) {
	w := newWorld(t)
	addr, rec := mx(t, w.auth(t, auth.Options{}), nil, nil)
	out, ok := swaks(t, addr, "someone@null.example", message("someone@null.example", "null"))
	assert.False(t, ok)
	assert.Contains(t, out, "<** 550 5.7.27 sender address domain null.example accepts no mail (null MX)")
	assert.Empty(t, rec.Bodies())

	out, ok = swaks(t, addr, "someone@dnsdown.example", w.sign(t, message("sender@example.net", "dnsdown")))
	assert.True(t, ok, "a DNS failure refuses nobody: %s", out)
	out, ok = swaks(t, addr, "<>", w.sign(t, message("sender@example.net", "bounce")))
	assert.True(t, ok, "the null sender is not checked: %s", out)
	assert.Contains(t, out, "-> MAIL FROM:<>\n")
	assert.Len(t, rec.Bodies(), 2)
}

// withInner checks that the scanner behind the middleware sees the message
// as it will be kept, and that its verdict and edits are merged.
func TestMiddlewareWithAContentScanner(t *testing.T) {
	w := newWorld(t)
	var (
		mu   sync.Mutex
		seen string
	)
	inner := intake.ScannerFunc(func(_ context.Context, _ *intake.ScanEnvelope, body []byte) (intake.Verdict, error) {
		mu.Lock()
		defer mu.Unlock()
		seen = string(body)
		// Change the 1st Authentication-Results: after the middleware's
		// edits that is ours.
		return intake.Verdict{Action: intake.ActionTag, Score: 7, Edits: []intake.HeaderEdit{{Op: intake.HeaderAppend, Name: "X-Scanned", Value: "yes"}}}, nil
	})
	addr, rec := mx(t, w.auth(t, auth.Options{}), inner, nil)
	msg := message("sender@example.net", "both", "Authentication-Results: mx.example.org; dmarc=pass")
	assert.Regexp(t, `^250 `, sendRaw(t, addr, "sender@example.net", msg))
	mu.Lock()
	assert.Len(t, authResults(seen), 1)
	assert.Contains(t, authResults(seen)[0], "spf=pass")
	mu.Unlock()
	got := rec.Bodies()
	require.Len(t, got, 1)
	assert.Len(t, authResults(got[0]), 1)
	assert.Contains(t, got[0], "\r\nX-Scanned: yes\r\n")
	assert.Contains(t, got[0], "X-Spam-Status: Yes, score=7.00")

	addr, rec = mx(t, w.auth(t, auth.Options{}), intake.ScannerFunc(func(context.Context, *intake.ScanEnvelope, []byte) (intake.Verdict, error) {
		t.Error("the content scanner is not asked about a message DMARC refuses")
		return intake.Verdict{}, nil
	}), nil)
	assert.Regexp(t, `^550 5\.7\.1 `, sendRaw(t, addr, "someone@example.net", message("x@bank.example", "refused")))
	assert.Empty(t, rec.Bodies())
}

func TestNewRefusesBadOptions(t *testing.T) {
	for _, o := range []auth.Options{{}, {AuthServID: "mx example"}, {AuthServID: "mx;x"},
		{AuthServID: "mx", OnReject: "bounce"}, {AuthServID: "mx", Timeout: -time.Second}} {
		_, err := auth.New(&o)
		assert.Error(t, err, "%+v", o)
	}
	_, err := auth.ParseDisposition("Quarantine")
	assert.NoError(t, err)
	_, err = auth.ParseDisposition("drop")
	assert.Error(t, err)
}

// TestContentScannerDown checks that a forged Authentication-Results field
// never passes, even when the content scanner is down and the Backend
// accepts unchecked mail.
func TestContentScannerDown(t *testing.T) {
	w := newWorld(t)
	down := intake.ScannerFunc(func(context.Context, *intake.ScanEnvelope, []byte) (intake.Verdict, error) {
		return intake.Verdict{}, errors.New("connection refused")
	})
	msg := message("sender@example.net", "down", "Authentication-Results: mx.example.org; dmarc=pass header.from=bank.example")
	addr, rec := mx(t, w.auth(t, auth.Options{}), down, nil)
	assert.Regexp(t, `^451 4\.7\.1 `, sendRaw(t, addr, "sender@example.net", msg))
	assert.Empty(t, rec.Bodies())

	addr, rec = mx(t, w.auth(t, auth.Options{}), down, func(be *intake.Backend) { be.ScanFailure = intake.ScanFailAcceptTag })
	assert.Regexp(t, `^250 `, sendRaw(t, addr, "sender@example.net", msg))
	got := rec.Bodies()
	require.Len(t, got, 1)
	assert.Contains(t, got[0], "X-Spam-Status: No, unchecked")
	ars := authResults(got[0])
	require.Len(t, ars, 1, "the forged field is gone: %q", ars)
	assert.Contains(t, ars[0], "spf=pass")
	assert.NotContains(t, ars[0], "bank.example")
}
