package intake_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
	"github.com/resilmail/resilmail/queue/intake"
)

// serveBodies runs a delivering queue behind a go-smtp server, on a
// Listener (which reads DATA itself) or on the bare listener (go-smtp
// reads it), and returns its address and the bodies delivered, Received
// header removed.
func serveBodies(t *testing.T, onListener bool, tune func(*smtp.Server)) (string, <-chan string) {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	bodies := make(chan string, 16)
	q, err := queue.Open(t.TempDir(), resilmail.DelivererFunc(func(_ context.Context, _ resilmail.Envelope, r io.Reader) error {
		b, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		s := string(b)
		for strings.HasPrefix(s, "Received:") || strings.HasPrefix(s, "\t") {
			s = s[strings.Index(s, "\n")+1:]
		}
		bodies <- s
		return nil
	}), &queue.Options{Logger: quiet, MinFreeBytes: -1})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; q.Close() })
	srv := smtp.NewServer(&intake.Backend{Queue: q, Logger: quiet})
	srv.Domain = "mx.test"
	if tune != nil {
		tune(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var l net.Listener = ln
	if onListener {
		il := intake.NewListener(ln, &intake.ListenerOptions{Logger: quiet})
		il.Configure(srv)
		l = il
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), bodies
}

// bodyCases are messages as sent after DATA (with their final dot) and
// the body each must be queued with.
var bodyCases = []struct{ name, sent, want string }{
	{"dot-stuffing", "a\r\n..\r\n...b\r\n.. c\r\n.\r\n", "a\r\n.\r\n..b\r\n. c\r\n"},
	{"empty", ".\r\n", ""},
	{"a dot line not at a line's start", "x.\r\n\r\n.x\r\n.\r\n", "x.\r\n\r\nx\r\n"},
	{"bare LF is no line end for the final dot", "x\n.\r\ny\r\n..\n.\r\n\r\n.\r\n", "x\n.\r\ny\r\n.\n.\r\n\r\n"},
	{"bare CR", "x\r.\r\n.\r\n", "x\r.\r\n"},
	{"long lines across the buffer", strings.Repeat("l", 9000) + "\r\n." + strings.Repeat("m", 5000) + "\r\n.\r\n",
		strings.Repeat("l", 9000) + "\r\n" + strings.Repeat("m", 5000) + "\r\n"},
	{"CRLF split at the buffer's end", strings.Repeat("c", 4095) + "\r\n.\r\n", strings.Repeat("c", 4095) + "\r\n"},
}

// TestDataIsReadExactly sends the same messages to go-smtp's own DATA
// reader and to the Listener's, which must queue the same bodies and
// answer the same.
func TestDataIsReadExactly(t *testing.T) {
	for _, onListener := range []bool{false, true} {
		addr, bodies := serveBodies(t, onListener, func(srv *smtp.Server) { srv.MaxLineLength = 20000 })
		s := dial(t, addr)
		s.cmd("EHLO client.test")
		for _, c := range bodyCases {
			s.cmd("MAIL FROM:<a@example.net>")
			s.cmd("RCPT TO:<b@example.org>")
			require.Regexp(t, `^354 `, s.cmd("DATA"), c.name)
			_, err := io.WriteString(s.c, c.sent)
			require.NoError(t, err)
			require.Regexp(t, `^250 `, s.reply(), c.name)
			select {
			case got := <-bodies:
				assert.Equal(t, c.want, got, "%s (Listener: %v)", c.name, onListener)
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: not delivered", c.name)
			}
		}
		// The final dot and the next commands in one write (PIPELINING).
		s.cmd("MAIL FROM:<a@example.net>")
		s.cmd("RCPT TO:<b@example.org>")
		s.cmd("DATA")
		s.send("pipelined", ".", "MAIL FROM:<a@example.net>", "RCPT TO:<b@example.org>", "DATA")
		assert.Regexp(t, `^250 2\.0\.0 OK`, s.reply())
		assert.Regexp(t, `^250 `, s.reply())
		assert.Regexp(t, `^250 `, s.reply())
		assert.Regexp(t, `^354 `, s.reply())
		s.send("second", ".", "QUIT")
		assert.Regexp(t, `^250 2\.0\.0 OK`, s.reply())
		assert.Regexp(t, `^221 `, s.reply())
		assert.Equal(t, "pipelined\r\n", <-bodies)
		assert.Equal(t, "second\r\n", <-bodies)
	}
}

// TestDataLimitsAsGoSMTP checks that the Listener's DATA reader keeps
// go-smtp's limits and answers: a message over MaxMessageBytes gets 552
// and the session goes on; a line over MaxLineLength ends the session.
func TestDataLimitsAsGoSMTP(t *testing.T) {
	for _, onListener := range []bool{false, true} {
		addr, _ := serveBodies(t, onListener, func(srv *smtp.Server) {
			srv.MaxMessageBytes = 10000
			srv.MaxLineLength = 1000
		})
		s := dial(t, addr)
		s.cmd("EHLO client.test")
		s.cmd("MAIL FROM:<a@example.net>")
		s.cmd("RCPT TO:<b@example.org>")
		s.cmd("DATA")
		s.send(strings.Repeat(strings.Repeat("x", 98)+"\r\n", 200) + ".")
		assert.Regexp(t, `^552 5\.3\.4 `, s.reply(), "Listener: %v", onListener)
		assert.Regexp(t, `^250 `, s.cmd("MAIL FROM:<a@example.net>"), "the session goes on (Listener: %v)", onListener)
		s.cmd("RCPT TO:<b@example.org>")
		s.cmd("DATA")
		s.send(strings.Repeat("y", 1200), ".")
		assert.Regexp(t, `^451 `, s.reply(), "Listener: %v", onListener)
		assert.Regexp(t, `^500 5\.4\.0 Too long line`, s.reply(), "Listener: %v", onListener)
		assert.Regexp(t, `^closed: `, s.reply(), "Listener: %v", onListener)
	}
}
