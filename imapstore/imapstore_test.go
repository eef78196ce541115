package imapstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
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
	return errors.New("bad password")
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type env struct {
	st   *store.Store
	srv  *Server
	addr string
	ro   atomic.Bool
}

func newEnv(t testing.TB) *env {
	t.Helper()
	st, err := store.Open(t.TempDir(), &store.Options{Logger: quiet})
	require.NoError(t, err)
	e := &env{st: st}
	e.srv, err = New(st, users{"alice": "pw", "bob": "pw"}, &Options{Logger: quiet, ReadOnly: e.ro.Load,
		Guard: loginguard.New(&loginguard.Options{Delay: time.Millisecond, MaxFailures: 5, Logger: quiet})})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	e.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ln) }()
	t.Cleanup(func() {
		e.srv.Close()
		assert.ErrorIs(t, <-done, ErrServerClosed)
		st.Close()
	})
	return e
}

func (e *env) login(t testing.TB, o *imapclient.Options) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(e.addr, o)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.Login("alice", "pw").Wait())
	return c
}

func (e *env) deliver(t testing.TB, body string) uint32 {
	t.Helper()
	uid, err := e.st.Append(context.Background(), "alice", store.Inbox, nil, time.Time{}, strings.NewReader(body))
	require.NoError(t, err)
	return uid
}

// updates collects the unilateral EXISTS and EXPUNGE a client receives.
type updates struct {
	exists  chan uint32
	expunge chan uint32
	flags   chan uint32
}

func newUpdates() (*updates, *imapclient.Options) {
	u := &updates{exists: make(chan uint32, 100), expunge: make(chan uint32, 100), flags: make(chan uint32, 100)}
	return u, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				u.exists <- *d.NumMessages
			}
		},
		Expunge: func(seq uint32) { u.expunge <- seq },
		Fetch: func(m *imapclient.FetchMessageData) {
			u.flags <- m.SeqNum
			for m.Next() != nil {
			}
		},
	}}
}

func recv(t testing.TB, ch chan uint32, what string) uint32 {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s", what)
		return 0
	}
}

// TestSessionsSeeEachOther: a second session sees the first one's
// expunge and flag change, and a delivery, at its next command.
func TestSessionsSeeEachOther(t *testing.T) {
	e := newEnv(t)
	a := e.login(t, nil)
	for i := range 3 {
		e.deliver(t, fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i))
	}
	u, o := newUpdates()
	b := e.login(t, o)
	_, err := a.Select("INBOX", nil).Wait()
	require.NoError(t, err)
	_, err = b.Select("INBOX", nil).Wait()
	require.NoError(t, err)

	require.NoError(t, a.Store(imap.SeqSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close())
	require.NoError(t, b.Noop().Wait())
	assert.Equal(t, uint32(2), recv(t, u.flags, "FETCH FLAGS"))
	require.NoError(t, a.Expunge().Close())
	require.NoError(t, b.Noop().Wait())
	assert.Equal(t, uint32(2), recv(t, u.expunge, "EXPUNGE"))
	e.deliver(t, "Subject: new\r\n\r\nnew\r\n")
	require.NoError(t, b.Noop().Wait())
	assert.Equal(t, uint32(3), recv(t, u.exists, "EXISTS"))
	// b's view is right: sequence 3 is the new message (UID 4).
	msgs, err := b.Fetch(imap.SeqSetNum(3), &imap.FetchOptions{UID: true}).Collect()
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	assert.Equal(t, imap.UID(4), msgs[0].UID)
}

// TestStandbyIsReadOnly: on a standby SELECT is read-only and every write
// is refused before the store sees it.
func TestStandbyIsReadOnly(t *testing.T) {
	e := newEnv(t)
	c := e.login(t, nil)
	e.deliver(t, "Subject: x\r\n\r\nx\r\n")
	before := e.st.Position()
	e.ro.Store(true)
	e.st.SetReadOnly(true)
	sel, err := c.Select("INBOX", nil).Wait()
	require.NoError(t, err)
	assert.Empty(t, sel.PermanentFlags, "no flag can be stored on a standby")
	r := dialRaw(t, e.addr)
	r.send("a LOGIN alice pw\r\nb SELECT INBOX\r\n")
	r.until("a")
	assert.Equal(t, "b OK [READ-ONLY] EXAMINE completed", r.until("b"), "SELECT on a standby answers READ-ONLY")
	_, err = c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
	require.NoError(t, err, "reading works")
	assert.Error(t, c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close())
	assert.Error(t, c.Expunge().Close())
	assert.Error(t, c.Create("New", nil).Wait())
	_, err = c.Copy(imap.SeqSetNum(1), "INBOX").Wait()
	assert.Error(t, err)
	_, err = c.Move(imap.SeqSetNum(1), "Trash").Wait()
	assert.Error(t, err)
	ap := c.Append("INBOX", 3, nil)
	ap.Write([]byte("x\r\n"))
	ap.Close()
	_, err = ap.Wait()
	assert.Error(t, err)
	assert.Equal(t, before, e.st.Position(), "nothing was written")
	msgs, err := e.st.Fetch(context.Background(), "alice", store.Inbox, store.Query{})
	require.NoError(t, err)
	assert.Empty(t, msgs[0].Flags, "FETCH BODY[] set no \\Seen on a standby")
	assert.Positive(t, e.srv.Stats().RefusedReadOnly)
}

// raw is a line-level IMAP client for bad input.
type raw struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *raw {
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	r := &raw{t: t, c: c, br: bufio.NewReader(c)}
	r.line()
	return r
}

func (r *raw) line() string {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, err := r.br.ReadString('\n')
	require.NoError(r.t, err)
	return strings.TrimRight(l, "\r\n")
}

// until reads lines up to the tagged answer and returns it.
func (r *raw) until(tag string) string {
	r.t.Helper()
	for {
		l := r.line()
		if strings.HasPrefix(l, tag+" ") {
			return l
		}
	}
}

func (r *raw) send(s string) {
	r.t.Helper()
	_, err := io.WriteString(r.c, s)
	require.NoError(r.t, err)
}

func TestBadInput(t *testing.T) {
	e := newEnv(t)
	r := dialRaw(t, e.addr)
	r.send("a LOGIN alice pw\r\n")
	require.Contains(t, r.until("a"), "a OK")
	r.send("b SELECT INBOX\r\n")
	require.Contains(t, r.until("b"), "b OK")

	// A literal over the APPEND limit is refused before it is sent.
	r.send("c APPEND INBOX {100000000}\r\n")
	assert.Contains(t, r.until("c"), "c NO [TOOBIG]")
	// A malformed literal.
	r.send("d APPEND INBOX {12x}\r\n")
	assert.Contains(t, r.until("d"), "d BAD")
	// A NUL inside a literal: the message is stored as sent (RFC 3501
	// forbids it in a literal; the store keeps bytes as they come), and the
	// session goes on.
	r.send("e APPEND INBOX {11}\r\n")
	require.True(t, strings.HasPrefix(r.line(), "+"))
	r.send("Subj\x00ct: x\r\n")
	assert.Contains(t, r.until("e"), "e ")
	// Bad mailbox names: "..", "/" at the ends, invalid modified UTF-7.
	for i, name := range []string{`"a/../b"`, `"/abs"`, `"."`, `"&Jjo"`, `"&-&AGE-"`, `"a//b"`} {
		tag := fmt.Sprintf("n%d", i)
		r.send(tag + " CREATE " + name + "\r\n")
		got := r.until(tag)
		assert.True(t, strings.HasPrefix(got, tag+" NO") || strings.HasPrefix(got, tag+" BAD"), "CREATE %s: %s", name, got)
	}
	boxes, err := e.st.ListMailboxes(context.Background(), "alice")
	require.NoError(t, err)
	for _, b := range boxes {
		assert.NotContains(t, b.Name, "..")
	}
	// Unknown and out-of-state commands.
	r.send("f FROBNICATE\r\n")
	assert.Contains(t, r.until("f"), "f BAD")
	r.send("g LOGIN alice pw\r\n")
	assert.Contains(t, r.until("g"), "g BAD")
	r.send("h NOOP\r\n")
	assert.Contains(t, r.until("h"), "h OK")

	// A line of 100 000 characters: an error, no crash, and the server
	// still serves others.
	r.send("i NOOP " + strings.Repeat("x", 100_000) + "\r\n")
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, _ := r.br.ReadString('\n')
	assert.NotContains(t, rest, "i OK")
	c := e.login(t, nil)
	require.NoError(t, c.Noop().Wait())
}

func TestWrongPasswordsInALoop(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 8; i++ {
		c, err := imapclient.DialInsecure(e.addr, nil)
		require.NoError(t, err)
		assert.Error(t, c.Login("alice", "guess").Wait())
		c.Close()
	}
	// Over the budget even the right password is refused for a while.
	c, err := imapclient.DialInsecure(e.addr, nil)
	require.NoError(t, err)
	defer c.Close()
	err = c.Login("alice", "pw").Wait()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "UNAVAILABLE")
	assert.GreaterOrEqual(t, e.srv.Stats().FailedLogins, uint64(8))
}

// TestIdleOnManySessions: many sessions idle on one mailbox and each sees
// a delivery.
func TestIdleOnManySessions(t *testing.T) {
	e := newEnv(t)
	const n = 50
	var all []*updates
	for i := 0; i < n; i++ {
		u, o := newUpdates()
		c := e.login(t, o)
		_, err := c.Select("INBOX", nil).Wait()
		require.NoError(t, err)
		idle, err := c.Idle()
		require.NoError(t, err)
		t.Cleanup(func() { idle.Close() })
		all = append(all, u)
	}
	assert.Equal(t, 1, e.srv.Stats().OpenMailboxes, "one shared view of INBOX")
	e.deliver(t, "Subject: hi\r\n\r\nhi\r\n")
	for _, u := range all {
		assert.Equal(t, uint32(1), recv(t, u.exists, "EXISTS in IDLE"))
	}
}

func TestFetchHeaderAndText(t *testing.T) {
	e := newEnv(t)
	long := "X-Long: " + strings.Repeat("y", 5000) + "\r\n"
	for _, m := range []struct{ header, text string }{
		{"Subject: a\r\nFrom: b@example.org\r\n\r\n", "text\r\nmore\r\n"},
		{"Subject: lf\n\n", "bare LF body\n"},
		{"Subject: long\r\n" + long + "\r\n", "after a header of over 4 KiB\r\n"},
		{"Subject: no body\r\n", ""},
	} {
		c := e.login(t, nil)
		e.deliver(t, m.header+m.text)
		sel, err := c.Select("INBOX", nil).Wait()
		require.NoError(t, err)
		msgs, err := c.Fetch(imap.SeqSetNum(sel.NumMessages), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{
			{Specifier: imap.PartSpecifierHeader, Peek: true}, {Specifier: imap.PartSpecifierText, Peek: true},
			{Specifier: imap.PartSpecifierHeader, Peek: true, Partial: &imap.SectionPartial{Offset: 2, Size: 5}}}}).Collect()
		require.NoError(t, err)
		require.Len(t, msgs, 1)
		for _, bs := range msgs[0].BodySection {
			switch {
			case bs.Section.Partial != nil:
				assert.Equal(t, m.header[2:7], string(bs.Bytes))
			case bs.Section.Specifier == imap.PartSpecifierHeader:
				assert.Equal(t, m.header, string(bs.Bytes))
			default:
				assert.Equal(t, m.text, string(bs.Bytes))
			}
		}
	}
}

// TestClientThatStopsReading: a session whose client stops reading blocks
// only itself; the others are served, and it is cleaned up when the
// client goes.
func TestClientThatStopsReading(t *testing.T) {
	e := newEnv(t)
	other := e.login(t, nil)
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 1<<16) // about 1 MiB
	for range 20 {
		e.deliver(t, big)
	}
	stuck := dialRaw(t, e.addr)
	stuck.send("a LOGIN alice pw\r\nb SELECT INBOX\r\n")
	stuck.until("b")
	stuck.send("c FETCH 1:* BODY.PEEK[]\r\n") // 20 MiB, never read
	require.Eventually(t, func() bool { return e.srv.Stats().Sessions == 2 }, 5*time.Second, 10*time.Millisecond)

	_, err := other.Select("INBOX", nil).Wait()
	require.NoError(t, err)
	msgs, err := other.Fetch(imap.SeqSetNum(20), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	require.NoError(t, err, "another session is served while one is stuck")
	require.Len(t, msgs, 1)
	assert.Len(t, msgs[0].BodySection[0].Bytes, len(big))
	require.NoError(t, other.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close())

	stuck.c.Close()
	ok := assert.Eventually(t, func() bool { return e.srv.Stats().Sessions == 1 }, 10*time.Second, 10*time.Millisecond,
		"the stuck session ends with its connection")
	if !ok {
		pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
	}
}

func TestSearchTextInParallel(t *testing.T) {
	e := newEnv(t)
	c := e.login(t, nil)
	var want []imap.UID
	for i := 1; i <= 200; i++ {
		body := fmt.Sprintf("Subject: m%d\r\nX-Tag: headerword\r\n\r\nline\r\n", i)
		if i%10 == 0 {
			body += "a NeEdLe here\r\n"
			want = append(want, imap.UID(i))
		}
		e.deliver(t, body)
	}
	_, err := c.Select("INBOX", nil).Wait()
	require.NoError(t, err)
	sd, err := c.UIDSearch(&imap.SearchCriteria{Text: []string{"needle"}}, nil).Wait()
	require.NoError(t, err)
	assert.Equal(t, want, sd.AllUIDs())
	sd, err = c.UIDSearch(&imap.SearchCriteria{Body: []string{"HEADERWORD"}}, nil).Wait()
	require.NoError(t, err)
	assert.Empty(t, sd.AllUIDs(), "BODY does not search the header")
	sd, err = c.UIDSearch(&imap.SearchCriteria{Text: []string{"HEADERWORD"}, Not: []imap.SearchCriteria{{Body: []string{"needle"}}}}, nil).Wait()
	require.NoError(t, err)
	assert.Len(t, sd.AllUIDs(), 180)
}

// TestSessionClosedAfterTheServer: a session whose connection ends only
// after the server has stopped the mailbox watchers (its goroutine
// scheduled late, under load) releases its mailbox without a panic
// ("close of closed channel" before).
func TestSessionClosedAfterTheServer(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(t.TempDir(), &store.Options{Logger: quiet})
	require.NoError(t, err)
	defer st.Close()
	require.NoError(t, st.CreateUser(ctx, "alice"))
	h := newHub(st, quiet)
	mb, err := h.open(ctx, "alice", store.Inbox)
	require.NoError(t, err)
	h.close()
	assert.NotPanics(t, func() { h.release(mb) })
}
