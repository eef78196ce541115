package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"golang.org/x/crypto/bcrypt"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

const (
	testSecret = "secondary test secret"
	// opsPass is the operator's password in the tests' -admin-passwd.
	opsPass = "operator's own password"
)

// secretFile writes secret to a file only its owner reads.
func secretFile(t testing.TB, secret string) string {
	path := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(path, []byte(secret+"\n"), 0o600))
	return path
}

// adminFile writes a passwd-file of two operators: admin ({PLAIN}) and
// ops ({BLF-CRYPT}), both with opsPass.
func adminFile(t testing.TB) string {
	hash, err := bcrypt.GenerateFromPassword([]byte(opsPass), bcrypt.MinCost)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "ops.passwd")
	require.NoError(t, os.WriteFile(path, []byte("admin:{PLAIN}"+opsPass+"\nops:{BLF-CRYPT}"+string(hash)+"\n"), 0o600))
	return path
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// primary is a primary store served as examples/primary serves it: the
// stream at /replicate/.
func primary(t *testing.T) (*store.Store, string) {
	t.Helper()
	st, err := store.Open(t.TempDir(), &store.Options{Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	p, err := replicate.NewPrimary(st, &replicate.PrimaryOptions{Secret: []byte(testSecret), Heartbeat: 50 * time.Millisecond, Logger: quiet})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/replicate/", http.StripPrefix("/replicate", p.Handler()))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return st, srv.URL
}

// startSecondary runs the command in this process until the test ends or
// stop is called, and returns its HTTP base URL.
func startSecondary(t *testing.T, dir, primaryURL string, args ...string) (base string, stop func()) {
	t.Helper()
	args = append([]string{"-secret-file", secretFile(t, testSecret), "-admin-passwd", adminFile(t), "-primary", primaryURL,
		"-http", "127.0.0.1:0", "-name", "mail2", "-dir", dir}, args...)
	c, err := parseFlags(args, func(string) string { return "" })
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, quiet, ready) }()
	var a net.Addr
	select {
	case a = <-ready:
	case err := <-done:
		t.Fatalf("secondary did not start: %v", err)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			require.NoError(t, <-done)
		}
	}
	t.Cleanup(stop)
	return "http://" + a.String(), stop
}

func getStatus(t *testing.T, base string) statusReport {
	t.Helper()
	resp, err := http.Get(base + "/status")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var s statusReport
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&s))
	return s
}

// waitApplied waits until the secondary has applied everything the
// primary's store holds.
func waitApplied(t *testing.T, base string, src *store.Store) {
	t.Helper()
	require.Eventually(t, func() bool { return getStatus(t, base).Applied >= src.Position() },
		10*time.Second, 10*time.Millisecond, "status %+v, primary at %d", getStatus(t, base), src.Position())
}

// operator sends an operator's request, with credentials if pass is set.
func operator(t *testing.T, method, url, pass string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	if pass != "" {
		req.SetBasicAuth("admin", pass)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

// remoteCompare compares the primary's store with the secondary's
// inventory, as an operator or a status page would.
func remoteCompare(t *testing.T, src *store.Store, base string) *replicate.Report {
	t.Helper()
	inv, err := replicate.NewRemoteInventory(base+"/inventory", &replicate.RemoteInventoryOptions{Secret: []byte(testSecret)})
	require.NoError(t, err)
	rep, err := replicate.Compare(context.Background(), src, inv, &replicate.CompareOptions{Logger: quiet})
	require.NoError(t, err)
	return rep
}

func addN(t *testing.T, st *store.Store, user, mailbox string, n int) {
	t.Helper()
	for i := range n {
		_, err := st.Append(context.Background(), user, mailbox, nil, time.Time{},
			strings.NewReader(fmt.Sprintf("Subject: %s %d\r\n\r\nbody %d of %s\r\n", mailbox, i, i, user)))
		require.NoError(t, err)
	}
}

// TestSecondaryFollowsThePrimary: mail, flags, a new mailbox and a new
// user on the primary reach the secondary, whose inventory (served to
// the secret's token) then equals the primary's; its status and metrics
// say it is in step.
func TestSecondaryFollowsThePrimary(t *testing.T) {
	ctx := context.Background()
	src, url := primary(t)
	require.NoError(t, src.CreateUser(ctx, "alice@example.org"))
	addN(t, src, "alice@example.org", store.Inbox, 5)
	base, _ := startSecondary(t, t.TempDir(), url)

	_, err := src.AddFlags(ctx, "alice@example.org", store.Inbox, resilmail.NewUIDSet(1, 2), []string{`\Seen`})
	require.NoError(t, err)
	_, err = src.CreateMailbox(ctx, "alice@example.org", "Archive")
	require.NoError(t, err)
	_, err = src.Move(ctx, "alice@example.org", store.Inbox, resilmail.NewUIDSet(3), "Archive")
	require.NoError(t, err)
	require.NoError(t, src.CreateUser(ctx, "bob@example.org"))
	addN(t, src, "bob@example.org", store.Inbox, 2)
	waitApplied(t, base, src)
	assert.True(t, remoteCompare(t, src, base).Equal())

	s := getStatus(t, base)
	assert.Equal(t, "secondary", s.Role)
	assert.Equal(t, "mail2", s.Name)
	assert.True(t, s.Connected)
	assert.Equal(t, 7, s.Messages)
	assert.Equal(t, 2, s.Users)
	assert.Zero(t, s.Held)
	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Contains(t, string(m), "resilmail_replica_connected 1")
	assert.Contains(t, string(m), fmt.Sprintf("resilmail_replica_applied_position %d", src.Position()))

	// The inventory wants the secret's token.
	resp, err = http.Get(base + "/inventory/users")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

// TestSecondaryHoldsAMassExpunge: a client expunges most of a mailbox on
// the primary; the secondary keeps the messages, shows the held change to
// the operator (and to no one else), and applies it once confirmed.
func TestSecondaryHoldsAMassExpunge(t *testing.T) {
	ctx := context.Background()
	src, url := primary(t)
	require.NoError(t, src.CreateUser(ctx, "alice@example.org"))
	addN(t, src, "alice@example.org", store.Inbox, 30)
	base, _ := startSecondary(t, t.TempDir(), url)
	waitApplied(t, base, src)

	_, err := src.Expunge(ctx, "alice@example.org", store.Inbox, resilmail.UIDSet{}.AddRange(1, 25))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return getStatus(t, base).Held == 1 }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, 30, getStatus(t, base).Messages, "the messages are still on the secondary")

	code, _ := operator(t, "GET", base+"/held", "", nil)
	assert.Equal(t, http.StatusUnauthorized, code)
	code, _ = operator(t, "GET", base+"/held", "wrong", nil)
	assert.Equal(t, http.StatusUnauthorized, code)
	code, _ = operator(t, "GET", base+"/held", testSecret, nil)
	assert.Equal(t, http.StatusUnauthorized, code, "the replication secret is no operator's password")
	code, b := operator(t, "GET", base+"/held", opsPass, nil)
	require.Equal(t, http.StatusOK, code, "%s", b)
	var held heldReply
	require.NoError(t, json.Unmarshal(b, &held))
	require.Len(t, held.Changes, 1)
	h := held.Changes[0]
	assert.Equal(t, "alice@example.org", h.User)
	assert.Equal(t, "expunge", h.Kind)
	assert.Equal(t, "1:25", h.UIDs)
	assert.NotEmpty(t, h.Reason)

	code, _ = operator(t, "POST", fmt.Sprintf("%s/confirm?user=%s&seq=%d", base, h.User, h.Seq), "", nil)
	assert.Equal(t, http.StatusUnauthorized, code)
	code, b = operator(t, "POST", fmt.Sprintf("%s/confirm?user=%s&seq=%d", base, h.User, h.Seq+1), opsPass, nil)
	assert.Equal(t, http.StatusNotFound, code, "%s", b)
	code, b = operator(t, "POST", fmt.Sprintf("%s/confirm?user=%s&seq=%d", base, h.User, h.Seq), opsPass, nil)
	require.Equal(t, http.StatusOK, code, "%s", b)
	waitApplied(t, base, src)
	assert.Equal(t, 5, getStatus(t, base).Messages)
	assert.True(t, remoteCompare(t, src, base).Equal())
}

// TestSecondaryRepairsOnDemand: the secondary's disk loses a message and
// a mailbox appears that the primary never had while the secondary is
// down; after a restart the operator asks for a comparison, which finds
// and repairs both, and a second finds nothing.
func TestSecondaryRepairsOnDemand(t *testing.T) {
	ctx := context.Background()
	src, url := primary(t)
	require.NoError(t, src.CreateUser(ctx, "alice@example.org"))
	addN(t, src, "alice@example.org", store.Inbox, 8)
	dir := t.TempDir()
	base, stop := startSecondary(t, dir, url, "-compare", "0")
	waitApplied(t, base, src)
	stop()

	// Damage done behind replication's back.
	st, err := store.Open(dir+"/store", &store.Options{Logger: quiet})
	require.NoError(t, err)
	_, err = st.Expunge(ctx, "alice@example.org", store.Inbox, resilmail.NewUIDSet(8))
	require.ErrorIs(t, err, store.ErrReadOnly, "the secondary's store stays read-only after a restart")
	require.NoError(t, st.SetReadOnly(false))
	_, err = st.Expunge(ctx, "alice@example.org", store.Inbox, resilmail.NewUIDSet(8))
	require.NoError(t, err)
	_, err = st.CreateMailbox(ctx, "alice@example.org", "Stray")
	require.NoError(t, err)
	require.NoError(t, st.Close())

	// A store left a writable primary (as examples/primary's promotion
	// leaves it) is not silently demoted by starting the replica on it.
	c, err := parseFlags([]string{"-secret-file", secretFile(t, testSecret), "-primary", url, "-http", "127.0.0.1:0", "-name", "mail2", "-dir", dir},
		func(string) string { return "" })
	require.NoError(t, err)
	require.ErrorContains(t, run(ctx, c, quiet, nil), "is a primary")
	st, err = store.Open(dir+"/store", &store.Options{Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, st.SetReadOnly(true))
	require.NoError(t, st.Close())

	base, _ = startSecondary(t, dir, url, "-compare", "0")
	assert.Equal(t, 2, remoteCompare(t, src, base).Differences())
	code, _ := operator(t, "POST", base+"/compare", "", nil)
	assert.Equal(t, http.StatusUnauthorized, code)
	code, b := operator(t, "POST", base+"/compare", opsPass, nil)
	require.Equal(t, http.StatusOK, code, "%s", b)
	var reply compareReply
	require.NoError(t, json.Unmarshal(b, &reply))
	assert.Equal(t, 2, reply.Differences)
	assert.Equal(t, 1, reply.Repair.MailboxesDeleted)
	assert.Zero(t, reply.Repair.MailboxesReplaced, "a UID lost below UIDNEXT is restored in its place")
	assert.Equal(t, 1, reply.Repair.Appended)
	// The replica's own expunge raised its HIGHESTMODSEQ, which does not
	// go back: equal again once the primary passes it.
	addN(t, src, "alice@example.org", store.Inbox, 1)
	waitApplied(t, base, src)
	assert.True(t, remoteCompare(t, src, base).Equal())

	code, b = operator(t, "POST", base+"/compare", opsPass, map[string]any{"confirm": []replicate.HeldRemoval{}})
	require.Equal(t, http.StatusOK, code, "%s", b)
	require.NoError(t, json.Unmarshal(b, &reply))
	assert.Zero(t, reply.Differences)
	assert.Equal(t, 2, getStatus(t, base).Comparisons)
}

func TestFlags(t *testing.T) {
	env := func(string) string { return "" }
	withSecret := func(k string) string { return map[string]string{"RESILMAIL_SECRET": testSecret}[k] }
	_, err := parseFlags([]string{"-name", "x"}, env)
	assert.ErrorContains(t, err, "no usable secret")
	_, err = parseFlags([]string{"-name", "x", "-secret", testSecret}, withSecret)
	assert.ErrorContains(t, err, "not taken on the command line")
	assert.NotContains(t, err.Error(), testSecret)
	_, err = parseFlags([]string{"-name", "x", "-primary", "mail1:8026"}, withSecret)
	assert.ErrorContains(t, err, "http:// or https://")
	_, err = parseFlags([]string{"-name", "x", "-guard-share", "0"}, withSecret)
	assert.ErrorContains(t, err, "-guard-share")
	c, err := parseFlags([]string{"-name", "x", "-primary", "https://mail1:8026/"}, withSecret)
	require.NoError(t, err)
	assert.Equal(t, "https://mail1:8026", c.primary)
	assert.Equal(t, testSecret, string(c.secret))
	assert.Equal(t, time.Hour, c.compare)
	assert.Equal(t, "resilmail-secondary", c.dir, "mail is kept in a named folder by default, never a temporary one")
	assert.ErrorContains(t, run(context.Background(), config{}, quiet, nil), "-dir is empty")
	c, err = parseFlags([]string{"-name", "x", "-secret-file", secretFile(t, "from a file, long enough")}, env)
	require.NoError(t, err)
	assert.Equal(t, "from a file, long enough", string(c.secret))

	// Plain HTTP between machines only when asked for.
	_, err = parseFlags([]string{"-name", "x", "-primary", "http://mail1:8026"}, withSecret)
	assert.ErrorContains(t, err, "-insecure-http")
	_, err = parseFlags([]string{"-name", "x", "-primary", "http://mail1:8026", "-insecure-http"}, withSecret)
	assert.NoError(t, err)
	_, err = parseFlags([]string{"-name", "x", "-http", "0.0.0.0:8027"}, withSecret)
	assert.ErrorContains(t, err, "-insecure-http")
	_, err = parseFlags([]string{"-name", "x", "-http", "0.0.0.0:8027", "-tls-cert", "c.pem", "-tls-key", "k.pem"}, withSecret)
	assert.NoError(t, err)
	_, err = parseFlags([]string{"-name", "x", "-tls-cert", "c.pem"}, withSecret)
	assert.ErrorContains(t, err, "go together")
}

// TestOperatorNeedsAccounts: without -admin-passwd nobody may use the
// operator's endpoints; with it, a {BLF-CRYPT} account logs in too.
func TestOperatorNeedsAccounts(t *testing.T) {
	_, url := primary(t)
	base, stop := startSecondary(t, t.TempDir(), url)
	req, err := http.NewRequest("GET", base+"/held", nil)
	require.NoError(t, err)
	req.SetBasicAuth("ops", opsPass)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	stop()

	a := runSecondary(t, "-secret-file", secretFile(t, testSecret), "-primary", url, "-http", "127.0.0.1:0", "-name", "mail2", "-dir", t.TempDir())
	code, b := operator(t, "GET", "http://"+a.String()+"/held", testSecret, nil)
	assert.Equal(t, http.StatusForbidden, code)
	assert.Contains(t, string(b), "-admin-passwd")
}

// runSecondary runs the command with args (nothing added) in this
// process until the test ends, and returns its HTTP address.
func runSecondary(t *testing.T, args ...string) net.Addr {
	t.Helper()
	c, err := parseFlags(args, func(string) string { return "" })
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, quiet, ready) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	select {
	case a := <-ready:
		return a
	case err := <-done:
		t.Fatalf("secondary did not start: %v", err)
		return nil
	}
}

// TestServesTLS: with -tls-cert and -tls-key the secondary serves HTTPS
// and HTTP/2, as the primary does.
func TestServesTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, caFile := writeCertificate(t, dir)
	_, url := primary(t)
	a := runSecondary(t, "-secret-file", secretFile(t, testSecret), "-primary", url, "-http", "127.0.0.1:0", "-name", "mail2",
		"-dir", t.TempDir(), "-tls-cert", certFile, "-tls-key", keyFile)
	client, err := httpClient(caFile)
	require.NoError(t, err)
	resp, err := client.Get("https://" + a.String() + "/status")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, 2, resp.ProtoMajor, "HTTP/2")
	resp, err = http.Get("http://" + a.String() + "/status")
	if err == nil {
		resp.Body.Close()
		assert.NotEqual(t, http.StatusOK, resp.StatusCode, "no plain HTTP")
	}
}

// TestWithThePrimaryCommand runs the pair as an operator does between
// machines: the primary command (built from examples/primary) serving
// HTTPS with a certificate of a private CA and waiting for one replica,
// this secondary following it over HTTP/2 and TLS (-ca), and swaks
// delivering over LMTP. The 250 comes once the secondary has the message,
// and the primary's status names the secondary.
func TestWithThePrimaryCommand(t *testing.T) {
	dir := t.TempDir()
	bin := dir + "/primary"
	out, err := exec.Command("go", "build", "-o", bin, "../primary").CombinedOutput()
	require.NoError(t, err, "%s", out)
	certFile, keyFile, caFile := writeCertificate(t, dir)
	// Port 0: the addresses come from the primary's "serving" line (a
	// port found free here and bound later by the child could be taken
	// in between by any connection on the machine).
	cmd := exec.Command(bin, "-dir", t.TempDir(), "-lmtp", "127.0.0.1:0", "-http", "127.0.0.1:0", "-tls-cert", certFile, "-tls-key", keyFile,
		"-users", "alice@example.org", "-ack", "all", "-replicas", "mail2", "-ack-timeout", "10s")
	cmd.Env = append(os.Environ(), "RESILMAIL_SECRET="+testSecret)
	// mail2's own secret, as the operator gets it.
	pr := exec.Command(bin, "-replica-secret", "mail2")
	pr.Env = cmd.Env
	own, err := pr.Output()
	require.NoError(t, err)
	ownFile := secretFile(t, strings.TrimSpace(string(own)))
	lmtpAddr, httpAddr := startServing(t, cmd)

	// Without the CA, the primary's certificate is refused.
	base, stop := startSecondary(t, t.TempDir(), "https://"+httpAddr, "-secret-file", ownFile)
	require.Eventually(t, func() bool { return strings.Contains(getStatus(t, base).LastError, "certificate") },
		20*time.Second, 20*time.Millisecond)
	stop()

	// With the primary's own secret, mail2 cannot act as mail2: -ack all
	// would otherwise take its acknowledgements.
	base, stop = startSecondary(t, t.TempDir(), "https://"+httpAddr, "-ca", caFile)
	require.Eventually(t, func() bool { return strings.Contains(getStatus(t, base).LastError, "403") },
		20*time.Second, 20*time.Millisecond)
	stop()

	base, _ = startSecondary(t, t.TempDir(), "https://"+httpAddr, "-ca", caFile, "-secret-file", ownFile)
	require.Eventually(t, func() bool { return getStatus(t, base).Connected }, 20*time.Second, 20*time.Millisecond)

	host, port, _ := net.SplitHostPort(lmtpAddr)
	tr, _ := exec.Command("swaks", "--protocol", "LMTP", "--server", host, "--port", port,
		"--from", "sender@example.net", "--to", "alice@example.org",
		"--header", "Subject: the pair", "--body", "to the primary and its secondary").CombinedOutput()
	require.Contains(t, string(tr), "<-  250 2.0.0 <alice@example.org> OK", "%s", tr)
	require.Eventually(t, func() bool { return getStatus(t, base).Messages == 1 }, 10*time.Second, 10*time.Millisecond)

	client, err := httpClient(caFile)
	require.NoError(t, err)
	resp, err := client.Get("https://" + httpAddr + "/status")
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, 2, resp.ProtoMajor, "HTTP/2")
	var ps struct {
		Messages int `json:"messages"`
		Replicas []struct {
			Name      string `json:"name"`
			Connected bool   `json:"connected"`
		} `json:"replicas"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&ps))
	assert.Equal(t, 1, ps.Messages)
	require.Len(t, ps.Replicas, 1)
	assert.Equal(t, "mail2", ps.Replicas[0].Name)
	assert.True(t, ps.Replicas[0].Connected)
}

// writeCertificate writes a private CA's certificate and a server
// certificate it signs for 127.0.0.1, with the server's key, as PEM files.
func writeCertificate(t *testing.T, dir string) (certFile, keyFile, caFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "resilmail test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "mail1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	write := func(name, typ string, b []byte) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600))
		return path
	}
	return write("cert.pem", "CERTIFICATE", der), write("key.pem", "PRIVATE KEY", keyDER), write("ca.pem", "CERTIFICATE", caDER)
}

// startServing starts the primary command cmd and returns the LMTP and
// HTTP addresses its "primary: serving" line names; its log goes on to
// the test's.
func startServing(t *testing.T, cmd *exec.Cmd) (lmtpAddr, httpAddr string) {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})
	serving := make(chan [2]string, 1)
	var logged strings.Builder
	var mu sync.Mutex
	go func() {
		defer close(serving)
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			logged.WriteString(line + "\n")
			mu.Unlock()
			if sent || !strings.Contains(line, "primary: serving") {
				continue
			}
			sent = true
			var a [2]string
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, "lmtp="); ok {
					a[0] = v
				} else if v, ok := strings.CutPrefix(f, "http="); ok {
					a[1] = v[strings.Index(v, "://")+3:]
				}
			}
			serving <- a
		}
	}()
	select {
	case a, ok := <-serving:
		if ok {
			return a[0], a[1]
		}
	case <-time.After(60 * time.Second):
	}
	mu.Lock()
	defer mu.Unlock()
	t.Fatalf("the primary did not start serving:\n%s", logged.String())
	return "", ""
}
