package main

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/queue/intake"
)

// dumpSink runs smtp-sink writing every message it accepts to a file of its
// own folder, and returns the folder.
func dumpSink(t *testing.T, flags ...string) (*smtpSink, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "relay-sink-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o777)) // smtp-sink writes as nobody
	s := &smtpSink{addr: freePort(t)}
	s.cmd = exec.Command("/usr/sbin/smtp-sink", append(append([]string{"-u", "nobody", "-d", filepath.Join(dir, "%M%S.")}, flags...), s.addr, "1024")...)
	require.NoError(t, s.cmd.Start(), "smtp-sink comes with the postfix package (.ci/run installs it)")
	t.Cleanup(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
	waitDial(t, s.addr)
	return s, dir
}

// dumped waits for n messages in an smtp-sink dump folder and returns them
// with CRLF line ends.
func dumped(t *testing.T, dir string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		files, err := os.ReadDir(dir)
		require.NoError(t, err)
		if len(files) >= n {
			var out []string
			for _, f := range files {
				b, err := os.ReadFile(filepath.Join(dir, f.Name()))
				require.NoError(t, err)
				if !strings.HasSuffix(string(b), "\n") {
					goto wait // still being written
				}
				out = append(out, strings.ReplaceAll(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n", "\r\n"))
			}
			return out
		}
	wait:
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink dumped %d messages, want %d", len(files), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writeKey writes key as PKCS#8 PEM with mode perm.
func writeKey(t *testing.T, key crypto.Signer, perm os.FileMode) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	f := filepath.Join(t.TempDir(), "dkim.pem")
	require.NoError(t, os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	require.NoError(t, os.Chmod(f, perm))
	return f
}

// submissionConfig is a relay with a submission listener for
// alice@example.org, signing with key.
func submissionConfig(t *testing.T, next string, key crypto.Signer) config {
	t.Helper()
	cert, tlsKey := certFiles(t)
	users := filepath.Join(t.TempDir(), "users")
	require.NoError(t, os.WriteFile(users, []byte("alice@example.org:{PLAIN}alice-password\n"), 0o600))
	c := config{next: next, dir: t.TempDir(), mynetworks: "none", tlsCert: cert, tlsKey: tlsKey,
		submission: freePort(t), passwdFile: users, loginDelay: time.Millisecond}
	if key != nil {
		c.dkimKey, c.dkimSelector, c.dkimDomain = writeKey(t, key, 0o600), "sel", "example.org"
	}
	return c
}

// swaksAt runs swaks against addr and returns its transcript and whether
// it succeeded.
func swaksAt(t *testing.T, addr string, args ...string) (string, bool) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("swaks", append([]string{"--server", host, "--port", port, "--helo", "client.example.net"}, args...)...).CombinedOutput()
	return string(out), err == nil
}

var aliceAuth = []string{"--tls", "--auth", "PLAIN", "--auth-user", "alice@example.org", "--auth-password", "alice-password"}

func TestSubmissionListener(t *testing.T) {
	sink, dir := dumpSink(t)
	c := submissionConfig(t, sink.addr, nil)
	mx := startRelayWith(t, c)

	// Authenticated inside TLS: relayed anywhere.
	out, ok := swaksAt(t, c.submission, append(aliceAuth, "--from", "alice@example.org", "--to", "bob@elsewhere.example", "--header", "Subject: submitted")...)
	require.True(t, ok, out)
	assert.Contains(t, out, "TLS started")
	assert.Regexp(t, `<~  235 `, out)
	msgs := dumped(t, dir, 1)
	assert.Contains(t, msgs[0], "Subject: submitted")
	assert.Contains(t, msgs[0], "with ESMTPSA id ")

	// AUTH is not offered before TLS, so it cannot happen there.
	out, ok = swaksAt(t, c.submission, "--auth", "PLAIN", "--auth-user", "alice@example.org", "--auth-password", "alice-password",
		"--from", "alice@example.org", "--to", "bob@elsewhere.example")
	assert.False(t, ok)
	assert.Contains(t, out, "Host did not advertise authentication")

	// No relaying without AUTH: not on the submission port, even in TLS
	// and from loopback, and not on the MX port outside -mynetworks.
	out, ok = swaksAt(t, c.submission, "--tls", "--from", "alice@example.org", "--to", "bob@elsewhere.example")
	assert.False(t, ok)
	assert.Regexp(t, `<~\* 530 5\.7\.0 `, out)
	out, ok = swaksAt(t, mx, "--from", "alice@example.org", "--to", "bob@elsewhere.example")
	assert.False(t, ok)
	assert.Contains(t, out, "<** 554 5.7.1 relay access denied")

	// Another user's address, and a wrong password.
	out, ok = swaksAt(t, c.submission, append(aliceAuth, "--from", "bob@example.org", "--to", "carol@elsewhere.example")...)
	assert.False(t, ok)
	assert.Regexp(t, `<~\* 553 5\.7\.1 `, out)
	out, ok = swaksAt(t, c.submission, "--tls", "--auth", "LOGIN", "--auth-user", "alice@example.org", "--auth-password", "guess",
		"--from", "alice@example.org", "--to", "bob@elsewhere.example")
	assert.False(t, ok)
	assert.Regexp(t, `<~\* 535 5\.7\.8 `, out)

	// The passwd-file is read again when it changes.
	require.NoError(t, os.WriteFile(c.passwdFile, []byte("alice@example.org:{PLAIN}new-password-of-alice\n"), 0o600))
	require.NoError(t, os.Chtimes(c.passwdFile, time.Now().Add(time.Minute), time.Now().Add(time.Minute)))
	out, ok = swaksAt(t, c.submission, append(aliceAuth, "--from", "alice@example.org", "--to", "bob@elsewhere.example")...)
	assert.False(t, ok, "the old password no longer works: %s", out)
	out, ok = swaksAt(t, c.submission, "--tls", "--auth", "LOGIN", "--auth-user", "alice@example.org", "--auth-password", "new-password-of-alice",
		"--from", "alice@example.org", "--to", "bob@elsewhere.example")
	assert.True(t, ok, out)
	dumped(t, dir, 2)
}

// lookupKey answers the DKIM query for sel._domainkey.example.org.
func lookupKey(t *testing.T, key crypto.Signer) func(string) ([]string, error) {
	rec, err := intake.DKIMRecord(key)
	require.NoError(t, err)
	return func(name string) ([]string, error) {
		if name == "sel._domainkey.example.org" {
			return []string{rec}, nil
		}
		return nil, errors.New("no such record")
	}
}

func TestSubmittedMailLeavesDKIMSigned(t *testing.T) {
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	for name, key := range map[string]crypto.Signer{"ed25519": ed, "rsa": rk} {
		t.Run(name, func(t *testing.T) {
			sink, dir := dumpSink(t)
			c := submissionConfig(t, sink.addr, key)
			startRelayWith(t, c)
			out, ok := swaksAt(t, c.submission, append(aliceAuth, "--from", "alice@example.org", "--to", "bob@elsewhere.example",
				"--header", "Subject: signed", "--body", "signed body\r\nwith two lines")...)
			require.True(t, ok, out)
			msg := dumped(t, dir, 1)[0]
			vs, err := dkim.VerifyWithOptions(strings.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookupKey(t, key)})
			require.NoError(t, err)
			require.Len(t, vs, 1, "one signature: %s", msg)
			assert.NoError(t, vs[0].Err, "the signature verifies after the relay hop: %s", msg)
			assert.Equal(t, "example.org", vs[0].Domain)
		})
	}
}

func TestSubmissionFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		err  string
	}{
		{[]string{"-submission", ":587", "-tls-cert", "c", "-tls-key", "k"}, "-passwd"},
		{[]string{"-submission", ":587", "-passwd", "users"}, "-tls-cert"},
		{[]string{"-passwd", "users"}, "-submission"},
		{[]string{"-submission", ":587", "-passwd", "u", "-tls-cert", "c", "-tls-key", "k", "-dkim-key", "k.pem"}, "go together"},
	} {
		_, err := parseFlags(c.args)
		assert.ErrorContains(t, err, c.err, "%q", c.args)
	}
	c, err := parseFlags(nil)
	require.NoError(t, err)
	assert.Empty(t, c.submission, "no submission listener unless asked for")

	// A key other users may read is refused, and the key never shows.
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	cfg := submissionConfig(t, freePort(t), ed)
	require.NoError(t, os.Chmod(cfg.dkimKey, 0o644))
	cfg.listen, cfg.hostname, cfg.mynetworks = "127.0.0.1:0", "relay.test", ""
	err = run(context.Background(), cfg, slog.New(slog.DiscardHandler), nil)
	assert.ErrorContains(t, err, "chmod 600")
	require.NoError(t, os.WriteFile(cfg.dkimKey, []byte("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n"), 0o600))
	require.NoError(t, os.Chmod(cfg.dkimKey, 0o600))
	err = run(context.Background(), cfg, slog.New(slog.DiscardHandler), nil)
	assert.ErrorIs(t, err, intake.ErrDKIMKey)
	assert.NotContains(t, err.Error(), "c2VjcmV0")
}
