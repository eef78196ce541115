package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/dnstest"
	"github.com/resilmail/resilmail/internal/rspamdtest"
	"github.com/resilmail/resilmail/internal/secret"
	"github.com/resilmail/resilmail/quarantine"
)

func TestMain(m *testing.M) { rspamdtest.Main(m) }

// gtube is the Generic Test for Unsolicited Bulk Email: rspamd rejects it.
const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// The parity corpus: rspamd (packaged rules, no network) scores clean
// about 0, borderline about 3.7 (HTML only, no Date, no Message-ID), and
// rejects GTUBE.
func corpusMessage(id, text string) string {
	return "From: Sender <sender@example.net>\r\nTo: Alice <alice@example.org>\r\nSubject: a note\r\n" +
		"Date: Mon, 07 Dec 2026 17:00:00 +0000\r\nMessage-ID: <" + id + "@example.net>\r\n\r\n" + text + "\r\n"
}

const borderline = "From: sender@example.net\r\nTo: alice@example.org\r\nSubject: offer\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n" +
	"<html><body><p>Special offer</p><img src=\"http://192.0.2.7/x.gif\"></body></html>\r\n"

// parityPolicy: example.org quarantines what rspamd would reject (250 to
// the sender), strict.test rejects it (550), refuse.test keeps it and
// refuses (550), low.test quarantines from score 3.
const parityPolicy = `{"domains": {
  "example.org": {"recipients": ["alice", "bob"]},
  "strict.test": {"accept_all": true, "spam_action": "reject"},
  "refuse.test": {"accept_all": true, "spam_action": "quarantine-refuse"},
  "low.test": {"accept_all": true, "spam_threshold": 3}
 },
 "max_message_size": 300000,
 "scanner": {"name": "rspamd", "version": "%s"}}`

// exchange is one SMTP transaction: its recipients and message, and what
// an MX answered (queue ids removed).
type exchange struct {
	name  string
	rcpts []string
	msg   string
}

var queueID = regexp.MustCompile(`queued as \S+`)

// transact sends ex to addr with go-smtp's client and returns the replies:
// one per RCPT, then DATA's end (or "-" when no RCPT was accepted).
func transact(t *testing.T, addr string, ex exchange) []string {
	t.Helper()
	c, err := smtp.Dial(addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("client.example.net"))
	require.NoError(t, c.Mail("sender@example.net", nil))
	reply := func(err error, ok string) string {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
		}
		if err != nil {
			return err.Error()
		}
		return ok
	}
	var out []string
	accepted := 0
	for _, r := range ex.rcpts {
		err := c.Rcpt(r, nil)
		out = append(out, reply(err, "250"))
		if err == nil {
			accepted++
		}
	}
	if accepted == 0 {
		return append(out, "-")
	}
	w, err := c.Data()
	require.NoError(t, err)
	_, err = io.WriteString(w, ex.msg)
	require.NoError(t, err)
	resp, err := w.CloseWithResponse()
	ok := ""
	if resp != nil {
		ok = "250 " + queueID.ReplaceAllString(resp.StatusText, "queued as ID")
	}
	return append(out, reply(err, ok))
}

// TestMXsFilterAlike is the parity test of issue 17: a publishing relay
// and two following relays (the third added with one command), scanning
// with the same real rspamd under the same pool policy, answer a corpus
// (GTUBE, clean, borderline, too large for the scanner, too large for the
// pool, mixed-policy recipients, a DMARC-failing forgery) with identical
// SMTP replies and identical quarantine entries, each recorded under the
// MX that decided. Every MX authenticates senders (-authserv-id) against
// the same DNS server on loopback (-dns).
func TestMXsFilterAlike(t *testing.T) {
	rs := rspamdtest.Shared(t)
	dns, err := dnstest.Start(
		`example.net. 60 IN TXT "v=spf1 ip4:127.0.0.1 -all"`,
		`_dmarc.example.net. 60 IN TXT "v=DMARC1; p=reject"`,
		`bank.example. 60 IN TXT "v=spf1 ip4:192.0.2.1 -all"`,
		`_dmarc.bank.example. 60 IN TXT "v=DMARC1; p=reject"`,
	)
	require.NoError(t, err)
	t.Cleanup(func() { dns.Close() })
	const secret = "correct horse battery staple"
	sink := startSink(t)
	policy := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(policy, fmt.Appendf(nil, parityPolicy, "3"), 0o644))
	web := freePort(t)
	pdir := t.TempDir()
	admins, _, _ := credentials(t)
	edges := filepath.Join(t.TempDir(), "edges")
	require.NoError(t, os.WriteFile(edges, []byte("mx2:{PLAIN}"+testEdgePass+"\nmx3:{PLAIN}"+testEdgePass+"\n"), 0o600))
	_, _, ship := credentials(t)
	scan := func(c config) config {
		c.rspamd, c.rspamdController, c.scanFailure, c.scanLimit, c.scanTimeout = rs.URL, rs.Controller, "tempfail", 4096, 30*time.Second
		c.next, c.secret, c.mynetworks = sink.addr, []byte(secret), "none"
		c.dns, c.auth = dns.Addr, senderAuth{authservID: "mx.example.org", onReject: "reject", onQuarantine: "tag"}
		return c
	}
	mxs := map[string]string{
		"mx1": startRelayWith(t, scan(config{hostname: "mx1", dir: pdir, httpAddr: web, policyFile: policy,
			quarantine: t.TempDir(), adminPasswd: admins, quarantineEdges: edges})),
	}
	for _, name := range []string{"mx2", "mx3"} {
		// Adding an MX is one command: relay -follow URL -policy-key KEY -rspamd URL ...
		mxs[name] = startRelayWith(t, scan(config{hostname: name, dir: t.TempDir(), follow: "http://" + web + "/policy", policyKeys: publisherKey(t, pdir),
			quarantineShip: "http://" + web + "/quarantine/ingest", shipSecret: ship}))
	}
	// Every MX has the policy: a clean message is accepted everywhere.
	for name, addr := range mxs {
		deadline := time.Now().Add(30 * time.Second)
		for {
			got := transact(t, addr, exchange{rcpts: []string{"bob@example.org"}, msg: corpusMessage("warmup-"+name, "warm up")})
			if got[len(got)-1] == "250 2.0.0 OK: queued as ID" {
				break
			}
			require.True(t, time.Now().Before(deadline), "%s never took a clean message: %q", name, got)
			time.Sleep(50 * time.Millisecond) // the follower has no policy yet
		}
	}

	big := corpusMessage("big", gtube+"\r\n"+strings.Repeat("a line of filler text to make it large\r\n", 2500)) // ~100 KB: over the scan limit (4 KiB; rspamd looks for GTUBE in small text parts only)
	forgery := strings.Replace(corpusMessage("f1", "Your account is locked: log in at http://192.0.2.9/"), "From: Sender <sender@example.net>", "From: Bank <service@bank.example>", 1)
	huge := corpusMessage("huge", strings.Repeat("a line of filler text to make it large\r\n", 9000)) // ~360 KB: over the pool's limit
	corpus := []exchange{
		{"gtube quarantined", []string{"alice@example.org"}, corpusMessage("g1", gtube)},
		{"gtube rejected", []string{"x@strict.test"}, corpusMessage("g2", gtube)},
		{"gtube kept and refused", []string{"x@refuse.test"}, corpusMessage("g3", gtube)},
		{"clean", []string{"x@strict.test", "y@strict.test"}, corpusMessage("c1", "Lunch at noon?")},
		{"borderline", []string{"alice@example.org", "u@low.test"}, borderline},
		{"over the scan limit", []string{"alice@example.org"}, big},
		{"over the pool's limit", []string{"alice@example.org"}, huge},
		{"mixed policies", []string{"alice@example.org", "x@strict.test", "u@low.test", "y@refuse.test"}, corpusMessage("m1", gtube)},
		{"the deferred one, next", []string{"x@strict.test"}, corpusMessage("m1", gtube)},
		{"unknown recipient", []string{"carol@example.org"}, corpusMessage("u1", "hi")},
		{"forgery quarantined", []string{"alice@example.org"}, forgery},
		{"forgery rejected", []string{"x@strict.test"}, forgery},
	}
	want := map[string][]string{
		"gtube quarantined":      {"250", "250 2.0.0 OK: queued as ID"},
		"gtube rejected":         {"250", "550 5.7.1 Gtube pattern"},
		"gtube kept and refused": {"250", "550 5.7.1 Gtube pattern"},
		"clean":                  {"250", "250", "250 2.0.0 OK: queued as ID"},
		"borderline":             {"250", "250", "250 2.0.0 OK: queued as ID"},
		"over the scan limit":    {"250", "250 2.0.0 OK: queued as ID"},
		"over the pool's limit":  {"250", "552 5.3.4 message too large"},
		"mixed policies": {"250", "452 4.5.3 recipient under another spam policy: send it again in a new transaction", "250",
			"452 4.5.3 recipient under another spam policy: send it again in a new transaction", "250 2.0.0 OK: queued as ID"},
		"the deferred one, next": {"250", "550 5.7.1 Gtube pattern"},
		"forgery quarantined":    {"250", "250 2.0.0 OK: queued as ID"},
		"forgery rejected":       {"250", "550 5.7.1 message refused: the DMARC policy of bank.example says reject"},
	}
	answers := map[string]map[string][]string{}
	for name, addr := range mxs {
		answers[name] = map[string][]string{}
		for _, ex := range corpus {
			answers[name][ex.name] = transact(t, addr, ex)
		}
	}
	for _, ex := range corpus {
		t.Logf("%s: %q", ex.name, answers["mx1"][ex.name])
		if w, ok := want[ex.name]; ok {
			assert.Equal(t, w, answers["mx1"][ex.name], ex.name)
		}
		for _, name := range []string{"mx2", "mx3"} {
			assert.Equal(t, answers["mx1"][ex.name], answers[name][ex.name], "%s answers %q unlike mx1", name, ex.name)
		}
	}

	// Quarantine: per MX, gtube for alice, gtube kept for refuse.test,
	// borderline for low.test, the large gtube for alice, the mixed one
	// for alice and low.test, the forgery for alice (DMARC's reject under
	// example.org's spam_action); and the unknown recipient (at RCPT).
	type evidence struct {
		Rcpts          string
		Kind           quarantine.Kind
		Score          float64
		Threshold      float64
		Symbols        string
		Scanner, Reply string
		Rule           string
		Subject        string
		Body           bool
	}
	var entries []quarantine.Entry
	deadline := time.Now().Add(30 * time.Second)
	for {
		entries = quarantined(t, web, testOperator, testOperatorPass)
		if len(entries) >= 21 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	require.Len(t, entries, 21, "7 entries from each of 3 MXs")
	byNode := map[string][]evidence{}
	for _, e := range entries {
		var rcpts []string
		for _, r := range e.Recipients {
			rcpts = append(rcpts, r.Addr)
		}
		ev := evidence{Rcpts: strings.Join(rcpts, ","), Kind: e.Reason.Kind, Score: e.Reason.Score, Threshold: e.Reason.Threshold,
			Symbols: strings.Join(e.Reason.Symbols, ","), Scanner: e.Reason.Scanner, Reply: e.Reason.Reply,
			Rule: regexp.MustCompile(`policy v\d+`).ReplaceAllString(e.Reason.Rule, "policy vN"), Subject: e.Subject, Body: e.HasBody()}
		byNode[e.Node] = append(byNode[e.Node], ev)
	}
	for node := range byNode {
		slices.SortFunc(byNode[node], func(a, b evidence) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
	}
	require.Len(t, byNode["mx1"], 7, "%+v", byNode)
	assert.Equal(t, byNode["mx1"], byNode["mx2"])
	assert.Equal(t, byNode["mx1"], byNode["mx3"])
	spam := 0
	for _, ev := range byNode["mx1"] {
		if ev.Kind != quarantine.KindSpam {
			continue
		}
		spam++
		assert.True(t, ev.Body, "%+v", ev)
		assert.Contains(t, ev.Rule, "spam_action")
		if ev.Scanner == "resilmail auth" {
			assert.Equal(t, evidence{Rcpts: "alice@example.org", Kind: quarantine.KindSpam, Symbols: "DMARC_POLICY_REJECT", Scanner: "resilmail auth",
				Reply: "250 2.0.0 kept in quarantine", Rule: "spam_action quarantine (policy vN)", Subject: "a note", Body: true}, ev)
			continue
		}
		assert.Regexp(t, `^rspamd 3\.`, ev.Scanner)
		assert.NotEmpty(t, ev.Symbols)
		assert.Contains(t, ev.Rule, "spam_action")
		if ev.Rcpts == "x@refuse.test" || ev.Rcpts == "y@refuse.test" {
			assert.Equal(t, "550 5.7.1 Gtube pattern", ev.Reply)
		} else {
			assert.Equal(t, "250 2.0.0 kept in quarantine", ev.Reply)
		}
		if strings.Contains(ev.Symbols, "GTUBE") {
			continue
		}
		assert.Equal(t, "u@low.test", ev.Rcpts, "only low.test holds the borderline message")
		assert.Equal(t, 3.0, ev.Threshold)
	}
	assert.Equal(t, 6, spam)
	// Delivered per MX: the warm-up, clean, borderline (for alice).
	waitCount(t, sink, 9)

	// The pool changes its scanner profile to a version no MX runs: every
	// MX stops trusting its verdicts and defers (451), none accepts
	// unjudged mail.
	require.NoError(t, os.WriteFile(policy, fmt.Appendf(nil, parityPolicy, "9"), 0o644))
	for name, addr := range mxs {
		deadline := time.Now().Add(30 * time.Second)
		for {
			got := transact(t, addr, exchange{rcpts: []string{"bob@example.org"}, msg: corpusMessage("after-"+name, "again")})
			if got[1] == "451 4.7.1 content scanner unavailable, try again later" {
				break
			}
			require.Equal(t, "250 2.0.0 OK: queued as ID", got[1], name)
			require.True(t, time.Now().Before(deadline), "%s still trusts a scanner the pool no longer names", name)
			time.Sleep(50 * time.Millisecond)
		}
	}
	code, body := getMetrics(t, "http://"+web+"/metrics")
	require.Equal(t, http.StatusOK, code)
	assert.Regexp(t, `(?m)^resilmail_scan_total [1-9]`, body)
	assert.Regexp(t, `(?m)^resilmail_scan_profile_mismatch_total [1-9]`, body)
	assert.Regexp(t, `(?m)^resilmail_scan_recipient_actions\{action="quarantine",mx="mx1"\} [1-9]`, body)
	assert.Regexp(t, `(?m)^resilmail_scan_verdicts_total\{action="reject",mx="mx1"\} [1-9]`, body)
	assert.Regexp(t, `(?m)^resilmail_scan_latency_p99_seconds [0-9.e-]+$`, body)
}

func getMetrics(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// TestScannerDown: rspamd unreachable means 451 4.7.1 by default, and 250
// tagged unchecked with -scan-failure accept.
func TestScannerDown(t *testing.T) {
	sink := startSink(t)
	dead := "http://" + freePort(t)
	for _, c := range []struct{ failure, want string }{
		{"tempfail", "451 4.7.1 content scanner unavailable, try again later"},
		{"accept", "250 2.0.0 OK: queued as ID"},
	} {
		addr := startRelayWith(t, config{next: sink.addr, dir: t.TempDir(), relayDomains: "example.org", mynetworks: "none",
			rspamd: dead, scanFailure: c.failure, scanLimit: 1 << 20, scanTimeout: 5 * time.Second})
		got := transact(t, addr, exchange{rcpts: []string{"alice@example.org"}, msg: corpusMessage("d-"+c.failure, "hi")})
		assert.Equal(t, c.want, got[1], c.failure)
	}
	waitCount(t, sink, 1)
}

// TestReleasedFalsePositiveIsLearnedAsHam: an operator releases a message
// the pool's policy quarantined; it is delivered, and rspamd's controller
// (-rspamd-controller) is taught it as ham.
func TestReleasedFalsePositiveIsLearnedAsHam(t *testing.T) {
	rs := rspamdtest.Shared(t)
	learned := make(chan string, 4)
	ctrl := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path != "/learnham" || r.Header.Get("Password") != "controller-password-1" {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		learned <- string(b)
		io.WriteString(w, `{"success":true}`)
	}))
	t.Cleanup(ctrl.Close)
	pwFile := filepath.Join(t.TempDir(), "rspamd.pw")
	require.NoError(t, os.WriteFile(pwFile, []byte("controller-password-1\n"), 0o600))
	sink := startSink(t)
	policy := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(policy, fmt.Appendf(nil, parityPolicy, "3"), 0o644))
	web := freePort(t)
	admins, edges, _ := credentials(t)
	addr := startRelayWith(t, config{hostname: "mx1", next: sink.addr, dir: t.TempDir(), httpAddr: web, policyFile: policy, secret: []byte("correct horse battery staple"),
		mynetworks: "none", quarantine: t.TempDir(), adminPasswd: admins, quarantineEdges: edges,
		rspamd: rs.URL, rspamdController: ctrl.URL, rspamdPassword: secret.Source{File: pwFile, Env: "RESILMAIL_RSPAMD_PASSWORD_UNSET"}, scanFailure: "tempfail", scanLimit: 1 << 20, scanTimeout: 30 * time.Second})

	got := transact(t, addr, exchange{rcpts: []string{"u@low.test"}, msg: borderline})
	require.Equal(t, "250 2.0.0 OK: queued as ID", got[1])
	entries := quarantined(t, web, testOperator, testOperatorPass)
	require.Len(t, entries, 1)
	assert.Equal(t, quarantine.KindSpam, entries[0].Reason.Kind)

	req, err := http.NewRequest(http.MethodPost, "http://"+web+"/quarantine/api/entries/"+entries[0].ID+"/release", strings.NewReader(`{}`))
	require.NoError(t, err)
	req.SetBasicAuth(testOperator, testOperatorPass)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	select {
	case msg := <-learned:
		assert.Contains(t, msg, "Special offer", "the released message itself")
		assert.Contains(t, msg, "X-Spam-Flag: YES")
	case <-time.After(30 * time.Second):
		t.Fatal("the released false positive was never taught to rspamd")
	}
	waitCount(t, sink, 1)
	_, m := getMetrics(t, "http://"+web+"/metrics")
	assert.Regexp(t, `(?m)^resilmail_scan_learned_ham_total 1$`, m)
}

func TestMilterAndRspamdExcludeEachOther(t *testing.T) {
	c := config{next: "127.0.0.1:1", dir: t.TempDir(), listen: "127.0.0.1:0", relayDomains: "example.org",
		rspamd: "http://127.0.0.1:11333", scanFailure: "tempfail", scanLimit: 1 << 20, scanTimeout: time.Second}
	c.auth.milter = "inet:127.0.0.1:11332"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := run(ctx, c, slog.New(slog.DiscardHandler), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "exclude each other")
}

// TestMilterVerdictsFollowThePoolPolicy: with -milter in front of rspamd's
// proxy worker in milter mode (the real one), the milter's reject goes
// through the pool's per-domain policy as -rspamd's verdicts do:
// quarantined with 250 for example.org, 550 for strict.test, kept and
// refused for refuse.test, quarantined for low.test (a threshold cannot
// judge a verdict without a score); a borderline message's score, which
// the milter reports in X-Spamd-Result, is weighed against low.test's
// threshold; each kept with the evidence, under this MX.
func TestMilterVerdictsFollowThePoolPolicy(t *testing.T) {
	rs := rspamdtest.Shared(t)
	sink := startSink(t)
	policy := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(policy, fmt.Appendf(nil, parityPolicy, "3"), 0o644))
	web := freePort(t)
	admins, edges, _ := credentials(t)
	c := config{hostname: "mx1", next: sink.addr, dir: t.TempDir(), httpAddr: web, policyFile: policy, secret: []byte("correct horse battery staple"),
		mynetworks: "none", quarantine: t.TempDir(), adminPasswd: admins, quarantineEdges: edges,
		scanFailure: "tempfail", scanLimit: 1 << 20, scanTimeout: 30 * time.Second}
	c.auth.milter, c.auth.milterName = "inet:"+rs.Milter, "rspamd 3"
	addr := startRelayWith(t, c)

	for _, ex := range []struct {
		rcpt, msg, want string
	}{
		{"alice@example.org", gtube, "250 2.0.0 OK: queued as ID"},
		{"x@strict.test", gtube, "550 5.7.1 Gtube pattern"},
		{"x@refuse.test", gtube, "550 5.7.1 Gtube pattern"},
		{"u@low.test", gtube, "250 2.0.0 OK: queued as ID"},   // a reject without a score is spam whatever the threshold
		{"v@low.test", "", "250 2.0.0 OK: queued as ID"},      // borderline: 3.7 in X-Spamd-Result, over low.test's 3
		{"bob@example.org", "", "250 2.0.0 OK: queued as ID"}, // borderline, under rspamd's own: delivered
	} {
		msg := borderline
		if ex.msg != "" {
			msg = corpusMessage("mg-"+ex.rcpt, ex.msg)
		}
		got := transact(t, addr, exchange{rcpts: []string{ex.rcpt}, msg: msg})
		assert.Equal(t, []string{"250", ex.want}, got, ex.rcpt)
	}
	got := transact(t, addr, exchange{rcpts: []string{"bob@example.org"}, msg: corpusMessage("mc", "Lunch at noon?")})
	assert.Equal(t, []string{"250", "250 2.0.0 OK: queued as ID"}, got, "clean")

	entries := quarantined(t, web, testOperator, testOperatorPass)
	require.Len(t, entries, 4)
	byRcpt := map[string]quarantine.Entry{}
	for _, e := range entries {
		require.Len(t, e.Recipients, 1)
		byRcpt[e.Recipients[0].Addr] = e
	}
	low := byRcpt["v@low.test"]
	assert.True(t, low.Reason.Score >= 3 && low.Reason.Score < 15, "the score rspamd's milter reported: %v", low.Reason.Score)
	assert.Equal(t, 3.0, low.Reason.Threshold)
	assert.Contains(t, low.Reason.Symbols, "MIME_HTML_ONLY")
	for rcpt, reply := range map[string]string{"alice@example.org": "250 2.0.0 kept in quarantine", "x@refuse.test": "550 5.7.1 Gtube pattern",
		"u@low.test": "250 2.0.0 kept in quarantine", "v@low.test": "250 2.0.0 kept in quarantine"} {
		e := byRcpt[rcpt]
		assert.Equal(t, quarantine.KindSpam, e.Reason.Kind, rcpt)
		assert.Equal(t, "rspamd 3", e.Reason.Scanner, rcpt)
		assert.Equal(t, reply, e.Reason.Reply, rcpt)
		assert.Contains(t, e.Reason.Rule, "spam_action", rcpt)
		assert.Equal(t, "mx1", e.Node, rcpt)
		assert.True(t, e.HasBody(), rcpt)
	}
	waitCount(t, sink, 2)
	_, m := getMetrics(t, "http://"+web+"/metrics")
	assert.Regexp(t, `(?m)^resilmail_scan_total 7$`, m)
	assert.Regexp(t, `(?m)^resilmail_scan_recipient_actions\{action="quarantine",mx="mx1"\} 4$`, m)
	assert.Regexp(t, `(?m)^resilmail_scan_recipient_actions\{action="reject",mx="mx1"\} 1$`, m)
	assert.Regexp(t, `(?m)^resilmail_scan_recipient_actions\{action="accept",mx="mx1"\} 2$`, m)
	assert.Regexp(t, `(?m)^resilmail_scan_verdicts_total\{action="reject",mx="mx1"\} 4$`, m)
	assert.Regexp(t, `(?m)^resilmail_scan_verdicts_total\{action="accept",mx="mx1"\} 3$`, m)
	assert.Regexp(t, `(?m)^resilmail_scan_verdicts_total\{action="quarantine",mx="mx1"\} 0$`, m)
}
