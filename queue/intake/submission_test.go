package intake_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/loginguard"
	"github.com/resilmail/resilmail/queue/intake"
)

// users is an Authenticator over a map.
func users(m map[string]string) intake.Authenticator {
	return intake.AuthenticatorFunc(func(user, password string) error {
		if p, ok := m[user]; ok && p == password {
			return nil
		}
		return errors.New("bad login")
	})
}

// countingGuard is a LoginGuard that counts failures and refuses after max,
// without sleeping.
type countingGuard struct {
	mu       sync.Mutex
	failures int
	conns    []net.Conn
}

func (g *countingGuard) Login(_ context.Context, conn net.Conn, user string, check func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.conns = append(g.conns, conn)
	err := check()
	if err != nil {
		g.failures++
	}
	return err
}

func (g *countingGuard) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.failures
}

// serveSubmission runs a submission Backend behind a Listener that offers
// STARTTLS.
func serveSubmission(t *testing.T, sub *intake.Submission) (string, *capture) {
	return serveSubmissionWith(t, sub, nil)
}

// serveSubmissionWith is serveSubmission with a Backend that tune
// adjusts.
func serveSubmissionWith(t *testing.T, sub *intake.Submission, tune func(*intake.Backend)) (string, *capture) {
	t.Helper()
	cfg, _, _ := testCert(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	cap := &capture{}
	be := &intake.Backend{Queue: cap, Logger: quiet, Hostname: "submit.test", Submission: sub}
	if tune != nil {
		tune(be)
	}
	srv := smtp.NewServer(be)
	srv.Domain = "submit.test"
	srv.AllowInsecureAuth = true // the Backend refuses AUTH outside TLS itself
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := intake.NewListener(ln, &intake.ListenerOptions{Logger: quiet, TLSConfig: cfg, ErrorDelay: 1})
	l.Configure(srv)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), cap
}

// startTLS upgrades a raw session.
func (s *session) startTLS() {
	s.t.Helper()
	s.send("EHLO client.test")
	s.lines()
	require.Regexp(s.t, `^220 `, s.cmd("STARTTLS"))
	tc := tls.Client(s.c, &tls.Config{InsecureSkipVerify: true})
	require.NoError(s.t, tc.Handshake())
	s.c, s.r = tc, bufio.NewReader(tc)
}

func plain(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + password))
}

func TestSubmissionNeedsTLSForAUTHAndAUTHForMail(t *testing.T) {
	guard := &countingGuard{}
	addr, cap := serveSubmission(t, &intake.Submission{Auth: users(map[string]string{"alice@example.org": "s3cret"}), Guard: guard})

	s := dial(t, addr)
	s.send("EHLO client.test")
	ehlo := strings.Join(s.lines(), "\n")
	assert.Contains(t, ehlo, "STARTTLS")
	assert.NotContains(t, ehlo, "AUTH", "AUTH is not offered in clear")
	assert.Regexp(t, `^538 5\.7\.11 `, s.cmd("AUTH PLAIN "+plain("alice@example.org", "s3cret")), "a good password in clear is still refused")
	assert.Equal(t, 0, len(guard.conns), "the password was never checked")
	assert.Regexp(t, `^530 5\.7\.0 `, s.cmd("MAIL FROM:<alice@example.org>"))
	assert.Regexp(t, `^503 5\.5\.1 `, s.cmd("RCPT TO:<bob@example.net>"))

	s.startTLS()
	s.send("EHLO client.test")
	ehlo = strings.Join(s.lines(), "\n")
	assert.Contains(t, ehlo, "AUTH PLAIN LOGIN")
	assert.Regexp(t, `^530 5\.7\.0 `, s.cmd("MAIL FROM:<alice@example.org>"), "TLS alone does not allow relaying")
	assert.Regexp(t, `^535 5\.7\.8 `, s.cmd("AUTH PLAIN "+plain("alice@example.org", "wrong")))
	assert.Equal(t, 1, guard.count(), "the failure went through the guard")
	assert.Regexp(t, `^535 5\.7\.8 `, s.cmd("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("bob@example.org\x00alice@example.org\x00s3cret"))),
		"alice's password does not let her act as bob")
	assert.Regexp(t, `^235 `, s.cmd("AUTH PLAIN "+plain("alice@example.org", "s3cret")))
	_, isTLS := guard.conns[1].(interface{ NetConn() net.Conn }).NetConn().(*tls.Conn)
	assert.True(t, isTLS, "the guard sees the TLS connection")
	assert.Regexp(t, `^553 5\.7\.1 `, s.cmd("MAIL FROM:<bob@example.org>"), "not alice's address")
	assert.Regexp(t, `^553 5\.7\.1 `, s.cmd("MAIL FROM:<>"))
	assert.Regexp(t, `^250 `, s.cmd("MAIL FROM:<alice+lists@EXAMPLE.org>"))
	assert.Regexp(t, `^250 `, s.cmd("RCPT TO:<anyone@elsewhere.example>"), "an authenticated user relays anywhere")
	assert.Regexp(t, `^354 `, s.cmd("DATA"))
	assert.Regexp(t, `^250 2\.0\.0 OK: queued as `, s.cmd("Subject: hi\r\n\r\nhello\r\n."))
	env, body := cap.last()
	assert.Equal(t, "alice+lists@EXAMPLE.org", env.From)
	assert.Regexp(t, `with ESMTPSA id `, body)
	// The client sent no From, Date or Message-ID: the server adds them
	// (RFC 6409 section 8), below its Received field.
	assert.Regexp(t, `(?s)^Received: .*\r\nFrom: <alice\+lists@EXAMPLE\.org>\r\nDate: [A-Z][a-z][a-z], \d\d [A-Z][a-z][a-z] \d{4} .*\r\nMessage-ID: <`+env.ID+`@submit\.test>\r\nSubject: hi\r\n\r\nhello\r\n$`, body)
	assert.Regexp(t, `^250 `, s.cmd("RSET"))
	assert.Regexp(t, `^250 `, s.cmd("MAIL FROM:<alice@example.org>"), "RSET keeps the login")
}

func TestSubmittedHeaderIsChecked(t *testing.T) {
	addr, cap := serveSubmission(t, &intake.Submission{Auth: users(map[string]string{"alice@example.org": "s3cret"}), Guard: &countingGuard{}})
	s := dial(t, addr)
	s.startTLS()
	s.send("EHLO client.test")
	s.lines()
	require.Regexp(t, `^235 `, s.cmd("AUTH PLAIN "+plain("alice@example.org", "s3cret")))
	send := func(msg string) string {
		require.Regexp(t, `^250 `, s.cmd("MAIL FROM:<alice@example.org>"))
		require.Regexp(t, `^250 `, s.cmd("RCPT TO:<bob@elsewhere.example>"))
		require.Regexp(t, `^354 `, s.cmd("DATA"))
		return s.cmd(msg + "\r\n.")
	}
	for name, c := range map[string]struct{ msg, reply string }{
		"own":             {"From: Alice <alice@example.org>\r\nSubject: ok\r\n\r\nbody", `^250 `},
		"own, encoded":    {"From: =?koi8-r?B?4czJ08E=?= <alice+x@example.org>,\r\n\t<alice@EXAMPLE.ORG>\r\n\r\nbody", `^250 `},
		"someone else's":  {"From: The CEO <ceo@example.org>\r\nSubject: wire money\r\n\r\nbody", `^553 5\.7\.1 header From not owned`},
		"one of two":      {"From: alice@example.org, ceo@example.org\r\n\r\nbody", `^553 5\.7\.1 `},
		"twice":           {"From: alice@example.org\r\nFrom: ceo@example.org\r\n\r\nbody", `^550 5\.6\.0 `},
		"unparsable":      {"From: <<<\r\n\r\nbody", `^550 5\.6\.0 `},
		"no header":       {"just a body line\r\nFrom: alice@example.org\r\n\r\nbody", `^550 5\.6\.0 `},
		"header too long": {"From: alice@example.org\r\n" + strings.Repeat("X-Filler: "+strings.Repeat("x", 990)+"\r\n", 70) + "\r\nbody", `^552 5\.3\.4 `},
	} {
		assert.Regexp(t, c.reply, send(c.msg), name)
		if strings.HasPrefix(c.reply, "^250") {
			_, body := cap.last()
			assert.NotContains(t, body, "\r\nFrom: <alice@example.org>\r\n", "%s: no second From", name)
		}
	}
}

func TestAuthLoginWithInitialResponse(t *testing.T) {
	addr, _ := serveSubmission(t, &intake.Submission{Auth: users(map[string]string{"alice@example.org": "s3cret"}), Guard: &countingGuard{}})
	s := dial(t, addr)
	s.startTLS()
	s.send("EHLO client.test")
	s.lines()
	b64 := func(v string) string { return base64.StdEncoding.EncodeToString([]byte(v)) }
	assert.Equal(t, "334 "+b64("Password:"), s.cmd("AUTH LOGIN "+b64("alice@example.org")))
	assert.Regexp(t, `^235 `, s.cmd(b64("s3cret")))
	assert.Regexp(t, `^503 5\.5\.1 `, s.cmd("AUTH LOGIN"), "once is enough")

	s = dial(t, addr)
	s.startTLS()
	s.send("EHLO client.test")
	s.lines()
	assert.Equal(t, "334 "+b64("Username:"), s.cmd("AUTH LOGIN"))
	assert.Regexp(t, `^501 `, s.cmd("*"), "the client may cancel")
	assert.Regexp(t, `^504 `, s.cmd("AUTH CRAM-MD5"), "only PLAIN and LOGIN")
}

func TestSubmissionWithSwaks(t *testing.T) {
	guard := loginguard.New(&loginguard.Options{Delay: time.Millisecond, MaxFailures: 3, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	addr, cap := serveSubmission(t, &intake.Submission{Auth: users(map[string]string{"alice@example.org": "s3cret"}), Guard: guard})
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		out := swaksArgs(t, addr, "--tls", "--auth", mech, "--auth-user", "alice@example.org", "--auth-password", "s3cret",
			"--from", "alice@example.org", "--to", "bob@elsewhere.example")
		assert.Contains(t, out, "TLS started", mech)
		assert.Regexp(t, `<~  235 `, out, mech)
		assert.Regexp(t, `<~  250 2\.0\.0 OK: queued as`, out, mech)
		env, body := cap.last()
		assert.Equal(t, "bob@elsewhere.example", env.To[0].Addr)
		assert.Equal(t, 1, strings.Count(strings.ToLower(body), "\nmessage-id:"), "swaks's own Message-Id is kept, no second one: %s", body)
		assert.Equal(t, 1, strings.Count(body, "\nDate:"), "swaks's own Date is kept, no second one")
	}

	// Without TLS swaks finds no AUTH to use; without AUTH, no relaying.
	out := swaksArgs(t, addr, "--auth", "PLAIN", "--auth-user", "alice@example.org", "--auth-password", "s3cret",
		"--from", "alice@example.org", "--to", "bob@elsewhere.example")
	assert.Contains(t, out, "Host did not advertise authentication")
	assert.NotContains(t, out, "235 ")
	out = swaksArgs(t, addr, "--tls", "--from", "alice@example.org", "--to", "bob@elsewhere.example")
	assert.Regexp(t, `<.\* 530 5\.7\.0 `, out)

	// Wrong passwords are refused, then the address is refused
	// outright by the guard.
	for i := range 4 {
		out = swaksArgs(t, addr, "--tls", "--auth", "LOGIN", "--auth-user", "alice@example.org", "--auth-password", "guess",
			"--from", "alice@example.org", "--to", "bob@elsewhere.example")
		if i < 3 {
			assert.Regexp(t, `<.\* 535 5\.7\.8 `, out, "attempt %d", i)
		} else {
			assert.Regexp(t, `<.\* 454 4\.7\.0 `, out, "attempt %d", i)
		}
	}
}

func TestScannerAndSenderCheckSeeTheUser(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	addr, _ := serveSubmissionWith(t, &intake.Submission{Auth: users(map[string]string{"alice@example.org": "s3cret"}), Guard: &countingGuard{}},
		func(be *intake.Backend) {
			be.CheckSender = func(_ context.Context, env *intake.ScanEnvelope) error {
				mu.Lock()
				defer mu.Unlock()
				seen = append(seen, "mail:"+env.User)
				return nil
			}
			be.Scanner = intake.ScannerFunc(func(_ context.Context, env *intake.ScanEnvelope, _ []byte) (intake.Verdict, error) {
				mu.Lock()
				defer mu.Unlock()
				seen = append(seen, "data:"+env.User)
				return intake.Verdict{Action: intake.ActionAccept}, nil
			})
		})
	out := swaksArgs(t, addr, "--tls", "--auth", "PLAIN", "--auth-user", "alice@example.org", "--auth-password", "s3cret",
		"--from", "alice@example.org", "--to", "bob@elsewhere.example")
	require.Regexp(t, `<~  250 2\.0\.0 OK: queued as`, out)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"mail:alice@example.org", "data:alice@example.org"}, seen)
}

func TestSendAsSelf(t *testing.T) {
	for _, c := range []struct {
		user, from string
		ok         bool
	}{
		{"alice@example.org", "alice@example.org", true},
		{"alice@example.org", "alice@Example.ORG", true},
		{"alice@example.org", "alice+x@example.org", true},
		{"alice@example.org", "Alice@example.org", false},
		{"alice@example.org", "alicex@example.org", false},
		{"alice@example.org", "alice@example.net", false},
		{"alice@example.org", "bob+alice@example.org", false},
		{"alice@example.org", "", false},
		{"alice", "alice@example.org", false},
		{"alice@example.org", "alice@example.org@evil.example", false},
	} {
		assert.Equal(t, c.ok, intake.SendAsSelf(c.user, c.from), "%s as %q", c.user, c.from)
	}
}

// dkimKeys returns an ed25519 and an RSA key.
func dkimKeys(t testing.TB) map[string]crypto.Signer {
	t.Helper()
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	return map[string]crypto.Signer{"ed25519": ed, "rsa": rk}
}

// verify checks a message's DKIM signatures with go-msgauth against the
// record of key published at sel._domainkey.example.org.
func verify(t *testing.T, msg string, key crypto.Signer) []*dkim.Verification {
	t.Helper()
	rec, err := intake.DKIMRecord(key)
	require.NoError(t, err)
	vs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		if name == "sel._domainkey.example.org" {
			return []string{rec}, nil
		}
		return nil, errors.New("no such record")
	}})
	require.NoError(t, err)
	return vs
}

func TestSubmittedMailIsDKIMSigned(t *testing.T) {
	for name, key := range dkimKeys(t) {
		t.Run(name, func(t *testing.T) {
			spool := t.TempDir()
			addr, cap := serveSubmission(t, &intake.Submission{
				Auth: users(map[string]string{"alice@example.org": "s3cret"}), Guard: &countingGuard{},
				Signer:   &intake.DKIMSigner{Domain: "example.org", Selector: "sel", Key: key},
				SpoolDir: spool,
			})
			for _, size := range []int{10, 600 << 10} { // in memory, and spooled
				bodyFile := filepath.Join(t.TempDir(), "body")
				require.NoError(t, os.WriteFile(bodyFile, []byte(strings.Repeat("a line of the body, long enough\r\n", size/33+1)), 0o600))
				out := swaksArgs(t, addr, "--tls", "--auth", "PLAIN", "--auth-user", "alice@example.org", "--auth-password", "s3cret",
					"--from", "alice@example.org", "--to", "bob@elsewhere.example", "--header", "Subject: signed", "--body", bodyFile)
				require.Regexp(t, `<~  250 2\.0\.0 OK: queued as`, out)
				_, msg := cap.last()
				require.Contains(t, msg, "\r\nDKIM-Signature: ")
				assert.True(t, strings.HasPrefix(msg, "Received: "), "our Received header stays on top")
				vs := verify(t, msg, key)
				require.Len(t, vs, 1)
				assert.NoError(t, vs[0].Err, "size %d", size)
				assert.Equal(t, "example.org", vs[0].Domain)
				entries, err := os.ReadDir(spool)
				require.NoError(t, err)
				assert.Empty(t, entries, "the spool file is removed")

				// A change on the way breaks it: the verification can fail.
				tampered := strings.Replace(msg, "Subject: signed", "Subject: changed", 1)
				vs = verify(t, tampered, key)
				require.Len(t, vs, 1)
				assert.Error(t, vs[0].Err)
			}
		})
	}
}

func TestParseDKIMKey(t *testing.T) {
	keys := dkimKeys(t)
	for name, key := range keys {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		require.NoError(t, err)
		got, err := intake.ParseDKIMKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		require.NoError(t, err, name)
		assert.Equal(t, key.Public(), got.Public(), name)
	}
	rk := keys["rsa"].(*rsa.PrivateKey)
	got, err := intake.ParseDKIMKey(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)}))
	require.NoError(t, err)
	assert.Equal(t, rk.Public(), got.Public())

	t.Setenv("GODEBUG", "rsa1024min=0")
	small, err := rsa.GenerateKey(rand.Reader, 512)
	require.NoError(t, err)
	for name, data := range map[string][]byte{
		"empty":     nil,
		"not pem":   []byte("hello"),
		"cert":      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}),
		"garbage":   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("secret-bytes")}),
		"small rsa": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(small)}),
	} {
		_, err := intake.ParseDKIMKey(data)
		assert.ErrorIs(t, err, intake.ErrDKIMKey, name)
		if err != nil {
			assert.NotContains(t, err.Error(), "secret-bytes", name)
		}
	}
}
