package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// notice returns the dumped message that is a delivery status notification.
func notice(t *testing.T, msgs []string) string {
	t.Helper()
	for _, m := range msgs {
		if strings.Contains(m, "report-type=delivery-status") {
			return m
		}
	}
	t.Fatalf("no notification among %d messages", len(msgs))
	return ""
}

func TestSuccessNoticeWhenTheNextHopHasNoDSN(t *testing.T) {
	sink, dir := dumpSink(t, "-N") // smtp-sink -N: no DSN announced
	relay := startRelayWith(t, config{next: sink.addr, dir: t.TempDir()})
	// swaks (20201014) has no DSN option: the ORCPT parameter takes the
	// ">" swaks puts after the address.
	out, ok := swaksAt(t, relay, "--from", "sender@example.net", "--to", "bob@elsewhere.example> NOTIFY=SUCCESS ORCPT=rfc822;bob@elsewhere.example",
		"--header", "Subject: tell me")
	require.True(t, ok, out)
	assert.Contains(t, out, "RCPT TO:<bob@elsewhere.example> NOTIFY=SUCCESS")
	msgs := dumped(t, dir, 2) // the message, then the notice to its sender
	n := notice(t, msgs)
	assert.Contains(t, n, "X-Rcpt-Args: <sender@example.net>")
	assert.Contains(t, n, "Action: relayed")
	assert.Contains(t, n, "Status: 2.0.0")
	assert.Contains(t, n, "Final-Recipient: rfc822; bob@elsewhere.example")
	assert.Contains(t, n, "Subject: tell me", "the original's header comes back")
}

func TestNoSuccessNoticeWhenTheNextHopHasDSN(t *testing.T) {
	sink, dir := dumpSink(t) // smtp-sink announces DSN: it got NOTIFY and reports itself
	web := freePort(t)
	relay := startRelayWith(t, config{next: sink.addr, dir: t.TempDir(), httpAddr: web})
	out, ok := swaksAt(t, relay, "--from", "sender@example.net", "--to", "bob@elsewhere.example> NOTIFY=SUCCESS ORCPT=rfc822;bob@elsewhere.example")
	require.True(t, ok, out)
	msgs := dumped(t, dir, 1)
	assert.Contains(t, msgs[0], "NOTIFY=SUCCESS", "passed on to the next hop")
	// Once the queue is empty, whatever notice it owed was sent.
	m := metricsWhen(t, web, "resilmail_queue_delivered_total 1\n", "resilmail_queue_bytes 0\n")
	assert.Contains(t, m, "resilmail_queue_notifications_total 0\n")
}

// metricsWhen polls /metrics on web until it holds every one of want, and
// returns it.
func metricsWhen(t *testing.T, web string, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + web + "/metrics")
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		all := true
		for _, w := range want {
			all = all && strings.Contains(string(b), w)
		}
		if all {
			return string(b)
		}
		require.True(t, time.Now().Before(deadline), "metrics never showed %q:\n%s", want, b)
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEightBitBodyToANextHopWithout8BITMIMEBounces(t *testing.T) {
	sink, dir := dumpSink(t, "-8") // smtp-sink -8: no 8BITMIME announced
	relay := startRelayWith(t, config{next: sink.addr, dir: t.TempDir()})
	// As for NOTIFY, ENVID takes the ">" swaks adds to BODY's address.
	out, ok := swaksAt(t, relay, "--from", "sender@example.net> BODY=8BITMIME ENVID=eight", "--to", "bob@elsewhere.example",
		"--header", "Subject: eight bits", "--body", "d\xc3\xa9j\xc3\xa0 vu")
	require.True(t, ok, out)
	msgs := dumped(t, dir, 1) // only the bounce: the message itself never left
	n := notice(t, msgs)
	assert.Contains(t, n, "X-Rcpt-Args: <sender@example.net>")
	assert.Contains(t, n, "Action: failed")
	assert.Contains(t, n, "Status: 5.6.3")
	assert.Contains(t, n, "8-bit body and the server does not offer 8BITMIME")
	assert.Contains(t, n, "Original-Envelope-Id: eight>")
}
