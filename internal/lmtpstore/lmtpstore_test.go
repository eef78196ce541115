package lmtpstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/lmtpstore"
	"github.com/resilmail/resilmail/replicate/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// serve runs an LMTP server for be on a loopback port until the test ends.
func serve(tb testing.TB, be *lmtpstore.Backend) string {
	tb.Helper()
	srv := smtp.NewServer(be)
	srv.LMTP = true
	srv.Domain = "mailstore.test"
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func dialLMTP(tb testing.TB, addr string) *smtp.Client {
	tb.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(tb, err)
	return smtp.NewClientLMTP(conn)
}

func openStore(tb testing.TB, users ...string) *store.Store {
	tb.Helper()
	st, err := store.Open(tb.TempDir(), &store.Options{Logger: quiet})
	require.NoError(tb, err)
	tb.Cleanup(func() { st.Close() })
	for _, u := range users {
		require.NoError(tb, st.CreateUser(context.Background(), u))
	}
	return st
}

// swaksLMTP delivers one message with swaks speaking LMTP and returns its
// transcript.
func swaksLMTP(t *testing.T, addr, body string, rcpts ...string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	out, _ := exec.Command("swaks", "--protocol", "LMTP", "--server", host, "--port", port,
		"--from", "sender@example.net", "--to", strings.Join(rcpts, ","),
		"--header", "Subject: lmtp test", "--body", body).CombinedOutput()
	return string(out)
}

func inbox(t *testing.T, st *store.Store, user string) []store.Message {
	t.Helper()
	msgs, err := st.Fetch(context.Background(), user, store.Inbox, store.Query{})
	require.NoError(t, err)
	return msgs
}

func TestDeliversToEachRecipientsInbox(t *testing.T) {
	st := openStore(t, "alice@example.org", "bob@example.org")
	addr := serve(t, &lmtpstore.Backend{Store: st, Logger: quiet})

	out := swaksLMTP(t, addr, "hello both", "Alice@Example.org", "bob@example.org", "nobody@example.org")
	assert.Contains(t, out, "<** 550 5.1.1 no such user", "an unknown user is refused at RCPT")
	assert.Contains(t, out, "<-  250 2.0.0 <Alice@Example.org> OK")
	assert.Contains(t, out, "<-  250 2.0.0 <bob@example.org> OK", "one reply per accepted recipient after DATA")

	for _, u := range []string{"alice@example.org", "bob@example.org"} {
		msgs := inbox(t, st, u)
		require.Len(t, msgs, 1, u)
		body, err := st.Body(context.Background(), msgs[0].Digest)
		require.NoError(t, err)
		assert.Contains(t, string(body), "hello both")
		assert.Contains(t, string(body), "Subject: lmtp test")
	}
	assert.Equal(t, inbox(t, st, "alice@example.org")[0].Digest, inbox(t, st, "bob@example.org")[0].Digest, "one body, shared")
}

func TestRepliesPerRecipient(t *testing.T) {
	st := openStore(t, "alice@example.org", "bob@example.org")
	addr := serve(t, &lmtpstore.Backend{Store: st, Logger: quiet,
		User: func(rcpt string) (string, bool) {
			if strings.HasPrefix(rcpt, "gone@") {
				return "deleted-later", true // known to the directory, not to the store
			}
			return strings.ToLower(rcpt), true
		},
	})
	require.NoError(t, st.CreateUser(context.Background(), "deleted-later"))

	c := dialLMTP(t, addr)
	defer c.Close()
	require.NoError(t, c.Hello("client.test"))
	require.NoError(t, c.Mail("sender@example.net", nil))
	require.NoError(t, c.Rcpt("alice@example.org", nil))
	require.NoError(t, c.Rcpt("gone@example.org", nil))
	// The user goes away between RCPT and DATA: that one recipient fails,
	// alice's copy is kept and acknowledged.
	require.NoError(t, st.DeleteUser(context.Background(), "deleted-later"))
	w, err := c.Data()
	require.NoError(t, err)
	_, err = io.WriteString(w, "Subject: x\r\n\r\nbody\r\n")
	require.NoError(t, err)
	ok, err := w.CloseWithLMTPResponse()
	var failed smtp.LMTPDataError
	require.ErrorAs(t, err, &failed)
	assert.Contains(t, ok, "alice@example.org")
	require.Contains(t, failed, "gone@example.org")
	assert.Equal(t, 550, failed["gone@example.org"].Code)
	assert.Len(t, inbox(t, st, "alice@example.org"), 1)
}

func TestNotAcknowledgedUntilCommitted(t *testing.T) {
	st := openStore(t, "alice@example.org")
	var failing atomic.Bool
	var committed atomic.Uint64
	addr := serve(t, &lmtpstore.Backend{Store: st, Logger: quiet,
		Commit: func(ctx context.Context, pos uint64) error {
			if failing.Load() {
				return errors.New("no replica answered within 2s")
			}
			committed.Store(pos)
			return nil
		},
	})

	out := swaksLMTP(t, addr, "replicated", "alice@example.org")
	assert.Contains(t, out, "<-  250 2.0.0 <alice@example.org>")
	assert.Equal(t, st.Position(), committed.Load(), "waited for the position that holds the message")

	failing.Store(true)
	out = swaksLMTP(t, addr, "not replicated", "alice@example.org")
	assert.Contains(t, out, "<** 451 4.4.0", "the client must deliver again")
	assert.NotContains(t, out, "<-  250 2.0.0 <alice@example.org>")
}

func TestTooLargeAndBadInput(t *testing.T) {
	st := openStore(t, "alice@example.org")
	addr := serve(t, &lmtpstore.Backend{Store: st, Logger: quiet, MaxSize: 1000})
	out := swaksLMTP(t, addr, strings.Repeat(strings.Repeat("x", 99)+"\n", 20), "alice@example.org")
	assert.Contains(t, out, "<** 552 5.3.4")
	assert.Empty(t, inbox(t, st, "alice@example.org"))

	out = swaksLMTP(t, addr, "fine", "not an address")
	assert.Regexp(t, `<\*\* 5\d\d `, out)
	out = swaksLMTP(t, addr, "fine", "alice@example.org")
	assert.Contains(t, out, "<-  250 2.0.0", "the server keeps serving")
}

// BenchmarkLMTPDeliver is LMTP deliveries of 10 KiB to one user over
// loopback, each durable before its 250, from 8 connections at once.
func BenchmarkLMTPDeliver(b *testing.B) {
	st := openStore(b, "alice@example.org")
	addr := serve(b, &lmtpstore.Backend{Store: st, Logger: quiet})
	body := "Subject: bench\r\n\r\n" + strings.Repeat(strings.Repeat("0123456789abcdef", 4)+"\r\n", 155)
	b.SetBytes(int64(len(body)))
	b.SetParallelism(4)
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		c := dialLMTP(b, addr)
		defer c.Close()
		if err := c.Hello("bench.test"); err != nil {
			b.Error(err)
			return
		}
		for pb.Next() {
			if err := c.SendMail("sender@example.net", []string{"alice@example.org"}, strings.NewReader(body)); err != nil {
				b.Error(fmt.Errorf("deliver: %w", err))
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
