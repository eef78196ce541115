package pop3

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/loginguard"
	"github.com/resilmail/resilmail/replicate/store"
)

type users map[string]string

func (u users) Authenticate(user, pw string) error {
	if p, ok := u[user]; ok && p == pw {
		return nil
	}
	return errors.New("bad")
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newServer(t *testing.T) (*store.Store, string) {
	t.Helper()
	st, err := store.Open(t.TempDir(), &store.Options{Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	require.NoError(t, st.CreateUser(context.Background(), "alice"))
	srv, err := New(st, users{"alice": "pw x"}, &Options{Logger: quiet,
		Guard: loginguard.New(&loginguard.Options{Delay: time.Millisecond, Logger: quiet})})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		assert.ErrorIs(t, <-done, ErrServerClosed)
	})
	return st, ln.Addr().String()
}

type client struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	cl := &client{t: t, c: c, br: bufio.NewReader(c)}
	require.True(t, strings.HasPrefix(cl.line(), "+OK"))
	return cl
}

func (c *client) line() string {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, err := c.br.ReadString('\n')
	require.NoError(c.t, err)
	require.True(c.t, strings.HasSuffix(l, "\r\n"), "%q does not end in CRLF", l)
	return strings.TrimSuffix(l, "\r\n")
}

func (c *client) cmd(s string) string {
	c.t.Helper()
	_, err := io.WriteString(c.c, s+"\r\n")
	require.NoError(c.t, err)
	return c.line()
}

// multi reads a multi-line answer's lines (dot-unstuffed) up to ".".
func (c *client) multi() []string {
	var out []string
	for {
		l := c.line()
		if l == "." {
			return out
		}
		out = append(out, strings.TrimPrefix(l, "."))
	}
}

func TestPOP3Session(t *testing.T) {
	st, addr := newServer(t)
	ctx := context.Background()
	bodies := []string{
		"Subject: one\r\n\r\n.leading dot\r\n..two dots\r\nlast line without end",
		"Subject: two\n\nbare LF\nline 2\nline 3\n",
	}
	for _, b := range bodies {
		_, err := st.Append(ctx, "alice", store.Inbox, nil, time.Time{}, strings.NewReader(b))
		require.NoError(t, err)
	}
	status, err := st.MailboxStatus(ctx, "alice", store.Inbox)
	require.NoError(t, err)

	c := dial(t, addr)
	capa := c.cmd("CAPA")
	require.Equal(t, "+OK capabilities follow", capa)
	caps := c.multi()
	assert.Contains(t, caps, "UIDL")
	assert.Contains(t, caps, "SASL PLAIN")
	assert.True(t, strings.HasPrefix(c.cmd("STAT"), "-ERR"), "STAT before login")
	assert.True(t, strings.HasPrefix(c.cmd("PASS x"), "-ERR"), "PASS before USER")
	assert.Equal(t, "+OK send PASS", c.cmd("USER alice"))
	assert.Equal(t, "-ERR [AUTH] authentication failed", c.cmd("PASS wrong"))
	c.cmd("USER alice")
	require.True(t, strings.HasPrefix(c.cmd("PASS pw x"), "+OK"), "a password with a space")

	// Sizes are the octets RETR sends.
	want := []string{
		"Subject: one\r\n\r\n.leading dot\r\n..two dots\r\nlast line without end\r\n",
		"Subject: two\r\n\r\nbare LF\r\nline 2\r\nline 3\r\n",
	}
	assert.Equal(t, fmt.Sprintf("+OK 2 %d", len(want[0])+len(want[1])), c.cmd("STAT"))
	require.Equal(t, "+OK", c.cmd("LIST"))
	assert.Equal(t, []string{fmt.Sprintf("1 %d", len(want[0])), fmt.Sprintf("2 %d", len(want[1]))}, c.multi())
	assert.Equal(t, fmt.Sprintf("+OK 2 %08x%08x", status.UIDValidity, 2), c.cmd("UIDL 2"))
	assert.Equal(t, "-ERR no such message", c.cmd("RETR 3"))
	assert.Equal(t, "-ERR no such message", c.cmd("RETR 0"))

	// RETR: raw wire bytes, dot-stuffed.
	_, err = io.WriteString(c.c, "RETR 1\r\n")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(c.line(), "+OK"))
	var raw bytes.Buffer
	for {
		l, err := c.br.ReadString('\n')
		require.NoError(t, err)
		raw.WriteString(l)
		if l == ".\r\n" {
			break
		}
	}
	assert.Equal(t, "Subject: one\r\n\r\n..leading dot\r\n...two dots\r\nlast line without end\r\n.\r\n", raw.String())

	require.True(t, strings.HasPrefix(c.cmd("TOP 2 1"), "+OK"))
	assert.Equal(t, []string{"Subject: two", "", "bare LF"}, c.multi())

	// DELE, RSET, DELE again; a second session is locked out meanwhile.
	assert.Equal(t, "+OK marked for deletion", c.cmd("DELE 1"))
	assert.Equal(t, "-ERR message deleted", c.cmd("RETR 1"))
	assert.Equal(t, "+OK 1 "+fmt.Sprint(len(want[1])), c.cmd("STAT"))
	assert.Equal(t, "+OK", c.cmd("RSET"))
	assert.True(t, strings.HasPrefix(c.cmd("STAT"), "+OK 2 "))
	c.cmd("DELE 1")
	c2 := dial(t, addr)
	auth := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00pw x"))
	assert.Equal(t, "-ERR [IN-USE] maildrop already locked by another session", c2.cmd("AUTH PLAIN "+auth))
	// Nothing is deleted before QUIT.
	msgs, err := st.Fetch(ctx, "alice", store.Inbox, store.Query{})
	require.NoError(t, err)
	assert.Len(t, msgs, 2)
	assert.Equal(t, "+OK bye, 1 messages deleted", c.cmd("QUIT"))
	msgs, err = st.Fetch(ctx, "alice", store.Inbox, store.Query{})
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	assert.Equal(t, uint32(2), msgs[0].UID)

	// AUTH PLAIN after "+ ", then a connection cut after DELE deletes
	// nothing.
	c3 := dial(t, addr)
	assert.Equal(t, "+ ", c3.cmd("AUTH PLAIN"))
	require.True(t, strings.HasPrefix(c3.cmd(auth), "+OK"))
	assert.Equal(t, "+OK marked for deletion", c3.cmd("DELE 1"))
	c3.c.Close()
	require.Eventually(t, func() bool {
		c4 := dial(t, addr)
		defer c4.c.Close()
		return strings.HasPrefix(c4.cmd("AUTH PLAIN "+auth), "+OK")
	}, 5*time.Second, 10*time.Millisecond, "the lock is released when the connection ends")
	msgs, err = st.Fetch(ctx, "alice", store.Inbox, store.Query{})
	require.NoError(t, err)
	assert.Len(t, msgs, 1)
}

func TestPOP3BadInput(t *testing.T) {
	_, addr := newServer(t)
	c := dial(t, addr)
	assert.Equal(t, "-ERR line too long", c.cmd("NOOP "+strings.Repeat("x", 300)))
	assert.Equal(t, "-ERR syntax error", c.cmd("NO\x00OP"))
	assert.Equal(t, "-ERR unknown command or not before login", c.cmd("RETR 1"))
	assert.Equal(t, "-ERR unsupported SASL mechanism", c.cmd("AUTH LOGIN"))
	assert.Equal(t, "-ERR bad base64", c.cmd("AUTH PLAIN !!!"))
	// A line of 100 000 characters closes the session.
	_, err := io.WriteString(c.c, strings.Repeat("A", 100_000)+"\r\n")
	require.NoError(t, err)
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, _ := io.ReadAll(c.br)
	assert.NotContains(t, string(rest), "+OK")

	// Too many errors close the session.
	c = dial(t, addr)
	var last string
	for i := 0; i < maxErrors; i++ {
		last = c.cmd("XYZZ")
	}
	assert.True(t, strings.HasPrefix(last, "-ERR"))
	assert.Equal(t, "-ERR too many errors, closing", c.line())
	_, err = c.br.ReadString('\n')
	assert.Error(t, err)
}

func TestWriteStuffedRoundTrip(t *testing.T) {
	for _, in := range []string{"", "a", ".", "..\r\n.", "x\ny\r\nz", strings.Repeat("l", 100_000) + "\n.\n", "\r\n\r\n"} {
		var b bytes.Buffer
		require.NoError(t, writeStuffed(&b, strings.NewReader(in), -1))
		assert.Equal(t, normalize(in), unstuff(t, b.String()), "%q", in)
	}
}

// normalize is what RETR must deliver: CRLF line ends, a final CRLF.
func normalize(s string) string {
	if s == "" {
		return ""
	}
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\n", "\r\n")
	if !strings.HasSuffix(s, "\r\n") {
		s += "\r\n"
	}
	return s
}

func unstuff(t testing.TB, s string) string {
	var out strings.Builder
	for _, l := range strings.SplitAfter(s, "\r\n") {
		if l == "" {
			continue
		}
		if strings.HasPrefix(l, ".") {
			if l == ".\r\n" {
				t.Fatalf("a bare terminator inside the message: %q", s)
			}
			l = l[1:]
		}
		out.WriteString(l)
	}
	return out.String()
}

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"USER alice", "PASS a b  c", "AUTH PLAIN AGFsaWNlAHB3", "TOP 1 10", "LIST", "retr 99999999999", "", " ", "X\x00Y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		c, err := parseCommand(line)
		if err != nil {
			return
		}
		if len(c.name) < 3 || len(c.name) > 4 || strings.ToUpper(c.name) != c.name {
			t.Fatalf("bad name %q from %q", c.name, line)
		}
		for _, a := range c.args {
			if a == "" || strings.ContainsAny(a, "\r\n\x00") {
				t.Fatalf("bad argument %q from %q", a, line)
			}
		}
		if n, ok := parseNumber(line); ok && n <= 0 {
			t.Fatalf("number %d", n)
		}
	})
}

func FuzzWriteStuffed(f *testing.F) {
	f.Add("Subject: x\r\n\r\n.a\r\n..\r\n.")
	f.Add("\n\n\n")
	f.Fuzz(func(t *testing.T, in string) {
		var b bytes.Buffer
		if err := writeStuffed(&b, strings.NewReader(in), -1); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		if strings.Contains(strings.ReplaceAll(out, "\r\n", ""), "\n") {
			t.Fatalf("bare LF in %q", out)
		}
		if got := unstuff(t, out); got != normalize(in) && !strings.Contains(in, "\r") {
			t.Fatalf("round trip of %q gave %q", in, got)
		}
		var c countWriter
		writeLines(&c, strings.NewReader(in), -1, false)
		if c.n != int64(len(normalize(in))) && !strings.Contains(in, "\r") {
			t.Fatalf("size %d, want %d for %q", c.n, len(normalize(in)), in)
		}
	})
}

// TestReconnectAfterQuit logs in again as soon as QUIT is answered, as
// poplib and mail clients that poll do: the maildrop must be free by then.
func TestReconnectAfterQuit(t *testing.T) {
	_, addr := newServer(t)
	auth := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00pw x"))
	for i := range 50 {
		c := dial(t, addr)
		require.True(t, strings.HasPrefix(c.cmd("AUTH PLAIN "+auth), "+OK"), "login %d", i)
		require.True(t, strings.HasPrefix(c.cmd("QUIT"), "+OK"))
	}
}
