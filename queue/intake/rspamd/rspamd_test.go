package rspamd_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/freeport"
	"github.com/resilmail/resilmail/internal/rspamdtest"
	"github.com/resilmail/resilmail/queue/intake"
	"github.com/resilmail/resilmail/queue/intake/rspamd"
)

// gtube is the Generic Test for Unsolicited Bulk Email: rspamd rejects it.
const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

func message(id, text string) string {
	return "From: Sender <sender@example.net>\r\nTo: Alice <alice@example.org>\r\nSubject: a note\r\n" +
		"Date: Mon, 07 Dec 2026 17:00:00 +0000\r\nMessage-ID: <" + id + ">\r\n\r\n" + text + "\r\n"
}

func TestMain(m *testing.M) { rspamdtest.Main(m) }

func envelope(id string) *intake.ScanEnvelope {
	return &intake.ScanEnvelope{
		Envelope: resilmail.Envelope{ID: id, From: "sender@example.net", To: []resilmail.Recipient{{Addr: "alice@example.org"}}},
		ClientIP: netip.MustParseAddr("127.0.0.1"), HELO: "client.example.net",
	}
}

func TestRealRspamd(t *testing.T) {
	s, err := rspamd.New(rspamdtest.Shared(t).URL, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	v, err := s.Scan(ctx, envelope("Q1"), []byte(message("gtube@example.net", gtube)))
	require.NoError(t, err)
	assert.Equal(t, intake.ActionReject, v.Action)
	assert.Equal(t, "Gtube pattern", v.Message)
	assert.Contains(t, v.Symbols, "GTUBE")
	assert.Regexp(t, `^rspamd \d`, v.Scanner)

	v, err = s.Scan(ctx, envelope("Q2"), []byte(message("clean@example.net", "Lunch at noon?")))
	require.NoError(t, err)
	assert.Equal(t, intake.ActionAccept, v.Action, "%+v", v)
	assert.Less(t, v.Score, v.Required)
	assert.True(t, len(v.Symbols) > 0)
}

// relay serves an intake Backend scanning with s over a recording queue.
func relay(t *testing.T, s intake.Scanner, tune func(*intake.Backend)) (string, *recorder) {
	t.Helper()
	rec := &recorder{}
	be := &intake.Backend{Queue: rec, Scanner: s, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if tune != nil {
		tune(be)
	}
	srv := smtp.NewServer(be)
	srv.Domain = "mx.test"
	srv.ReadTimeout, srv.WriteTimeout = 30*time.Second, 30*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), rec
}

type recorder struct {
	mu     sync.Mutex
	bodies []string
}

func (r *recorder) Enqueue(_ context.Context, env resilmail.Envelope, body io.Reader) (string, error) {
	b, err := io.ReadAll(body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bodies = append(r.bodies, string(b))
	return env.ID, err
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.bodies)
}

// send delivers msg with go-smtp's client and returns the final reply
// ("250 ..." or the error's text).
func send(t *testing.T, addr, msg string) string {
	t.Helper()
	c, err := smtp.Dial(addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("client.example.net"))
	require.NoError(t, c.Mail("sender@example.net", nil))
	require.NoError(t, c.Rcpt("alice@example.org", nil))
	w, err := c.Data()
	require.NoError(t, err)
	_, err = io.WriteString(w, msg)
	require.NoError(t, err)
	resp, err := w.CloseWithResponse()
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
	}
	if err != nil {
		return err.Error()
	}
	return "250 " + resp.StatusText
}

func TestIntakeWithRealRspamd(t *testing.T) {
	s, err := rspamd.New(rspamdtest.Shared(t).URL, nil)
	require.NoError(t, err)
	addr, rec := relay(t, s, nil)
	assert.Equal(t, "550 5.7.1 Gtube pattern", send(t, addr, message("g@example.net", gtube)))
	assert.Equal(t, 0, rec.count())
	assert.Regexp(t, `^250 .*queued as`, send(t, addr, message("c@example.net", "Lunch at noon?")))
	assert.Equal(t, 1, rec.count())

	// Too large for the scanner: GTUBE in the first ScanLimit bytes is
	// still found; with ScanSkip the message passes unchecked.
	big := message("big@example.net", gtube+"\r\n"+strings.Repeat("filler line of text\r\n", 2000))
	addr, rec = relay(t, s, func(be *intake.Backend) { be.ScanLimit = 4096 })
	assert.Equal(t, "550 5.7.1 Gtube pattern", send(t, addr, big))
	assert.Equal(t, 0, rec.count())
	addr, rec = relay(t, s, func(be *intake.Backend) { be.ScanLimit = 4096; be.ScanOversize = intake.ScanSkip })
	assert.Regexp(t, `^250 `, send(t, addr, big))
	assert.Equal(t, 1, rec.count())
}

func TestRspamdDown(t *testing.T) {
	port, err := freeport.Port() // nothing listens there
	require.NoError(t, err)
	s, err := rspamd.New(fmt.Sprintf("http://127.0.0.1:%d", port), nil)
	require.NoError(t, err)
	addr, rec := relay(t, s, nil)
	assert.Equal(t, "451 4.7.1 content scanner unavailable, try again later", send(t, addr, message("d@example.net", "hi")))
	assert.Equal(t, 0, rec.count())
}

// fake serves handler as a misbehaving rspamd.
func fake(t *testing.T, handler http.HandlerFunc) *rspamd.Scanner {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	s, err := rspamd.New(srv.URL, &rspamd.Options{MaxReply: 4096})
	require.NoError(t, err)
	return s
}

func TestFaults(t *testing.T) {
	body := []byte(message("m1@example.net", "hi"))
	good := `{"score":1.5,"required_score":15,"action":"add header","symbols":{"B":{},"A":{}},"message-id":"m1@example.net"}`
	// release lets the "hang" handler return: each subtest closes its own
	// before its server's Close, which waits for running handlers (the
	// request context alone is not cancelled while the body is unread).
	var release chan struct{}
	cases := map[string]struct {
		h    http.HandlerFunc
		want string // "" for success
	}{
		"good": {h: func(w http.ResponseWriter, r *http.Request) {
			assert.Equal(t, "/checkv2", r.URL.Path)
			// rspamd reads these case-insensitively; Go's server
			// canonicalises the keys ("IP" arrives as "Ip").
			assert.Equal(t, "127.0.0.1", r.Header.Get("IP"))
			assert.Equal(t, []string{"client.example.net"}, r.Header.Values("Helo"))
			assert.Equal(t, []string{"sender@example.net"}, r.Header.Values("From"))
			assert.Equal(t, []string{"alice@example.org"}, r.Header.Values("Rcpt"))
			assert.Equal(t, []string{"Q1"}, r.Header.Values("Queue-Id"))
			b, _ := io.ReadAll(r.Body)
			assert.Equal(t, body, b)
			io.WriteString(w, good)
		}},
		"greylist without greylisting": {h: func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, strings.Replace(good, `"add header"`, `"greylist"`, 1))
		}},
		"garbage":  {h: func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "<html>oops") }, want: "malformed reply"},
		"no score": {h: func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, `{"action":"reject"}`) }, want: "finite score"},
		"bad action": {h: func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, `{"score":1,"action":"discard","message-id":"m1@example.net"}`)
		}, want: "unknown action"},
		"another message": {h: func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, strings.Replace(good, "m1@", "m2@", 1))
		}, want: "not \"m1@example.net\""},
		"error": {h: func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(500)
			io.WriteString(w, `{"error":"cannot parse"}`)
		}, want: "status 500"},
		"too long": {h: func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, good[:len(good)-1]+`,"x":"`+strings.Repeat("x", 5000)+`"}`)
		}, want: "reply over 4096 bytes"},
		"reset": {h: func(w http.ResponseWriter, _ *http.Request) {
			c, _, err := http.NewResponseController(w).Hijack()
			require.NoError(t, err)
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}, want: "rspamd: Post"},
		"hang": {h: func(_ http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}, want: "context deadline exceeded"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			release = make(chan struct{})
			s := fake(t, c.h)
			rel := release
			t.Cleanup(func() { close(rel) }) // runs before fake's srv.Close
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			v, err := s.Scan(ctx, envelope("Q1"), body)
			if c.want == "" {
				require.NoError(t, err)
				assert.Equal(t, intake.Verdict{Action: intake.ActionTag, Score: 1.5, Required: 15, Symbols: []string{"A", "B"}, Scanner: "rspamd"}, v)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

func TestNewRefusesBadURLs(t *testing.T) {
	for _, u := range []string{"", "127.0.0.1:11333", "ftp://x", "http://user:secret@127.0.0.1:11333", "http://"} {
		_, err := rspamd.New(u, nil)
		assert.Error(t, err, u)
	}
}

func FuzzParseReply(f *testing.F) {
	f.Add([]byte(`{"score":15,"required_score":15,"action":"reject","symbols":{"GTUBE":{}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"a@b"}`), "a@b")
	f.Add([]byte(`{"score":-0.1,"action":"no action","messages":{"smtp_message":5}}`), "")
	f.Add([]byte(`{"score":1e400,"action":"reject"}`), "")
	f.Fuzz(func(t *testing.T, data []byte, id string) {
		v, err := rspamd.ParseReply(data, id)
		if err != nil {
			return
		}
		switch v.Action {
		case intake.ActionAccept, intake.ActionTag, intake.ActionTempFail, intake.ActionReject:
		default:
			t.Fatalf("action %q from %q", v.Action, data)
		}
	})
}

func TestLearnAndSettings(t *testing.T) {
	body := []byte(message("fp@example.net", "not spam at all"))
	var (
		mu    sync.Mutex
		paths []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		switch r.URL.Path {
		case "/checkv2":
			assert.Equal(t, "inbound", r.Header.Get("Settings-ID"))
			io.WriteString(w, `{"score":0,"action":"no action","message-id":"fp@example.net"}`)
		case "/learnham":
			assert.Equal(t, body, b)
			if r.Header.Get("Password") != "s3cret-controller" {
				w.WriteHeader(403)
				io.WriteString(w, `{"error":"Unauthorized"}`)
				return
			}
			io.WriteString(w, `{"success":true}`)
		default:
			w.WriteHeader(404)
		}
	}))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	s, err := rspamd.New(srv.URL, &rspamd.Options{Controller: srv.URL, Password: []byte("s3cret-controller"), SettingsID: func() string { return "inbound" }})
	require.NoError(t, err)
	_, err = s.Scan(ctx, envelope("Q1"), body)
	require.NoError(t, err)
	require.NoError(t, s.LearnHam(ctx, body))

	wrong, err := rspamd.New(srv.URL, &rspamd.Options{Controller: srv.URL, Password: []byte("guess")})
	require.NoError(t, err)
	err = wrong.LearnHam(ctx, body)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "403")
	assert.NotContains(t, err.Error(), "guess", "the password is never in an error")

	none, err := rspamd.New(srv.URL, nil)
	require.NoError(t, err)
	assert.ErrorIs(t, none.LearnHam(ctx, body), rspamd.ErrNoController)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"/checkv2", "/learnham", "/learnham"}, paths)
}

func TestLearnHamWithRealRspamd(t *testing.T) {
	srv := rspamdtest.Shared(t)
	s, err := rspamd.New(srv.URL, &rspamd.Options{Controller: srv.Controller, Password: []byte(rspamdtest.Password)})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	text := "Dear colleagues, the quarterly planning meeting moves to Thursday afternoon in the large conference room; " +
		"please bring the budget figures, the hiring plan and the notes from the customer workshop we held in Lyon last month."
	msg := []byte(message("ham@example.net", text))
	// The controller (which trusts loopback clients without a password)
	// hands the message to its classifier; this rspamd, without Redis for
	// its statistics, declines to learn (204), which is an error: nothing
	// was learned.
	err = s.LearnHam(ctx, msg)
	if err != nil {
		assert.Contains(t, err.Error(), "classifier")
		assert.NotContains(t, err.Error(), rspamdtest.Password)
	}
}

func TestParseReplyGreylist(t *testing.T) {
	v, err := rspamd.ParseReply([]byte(`{"score":4.2,"action":"greylist","symbols":{"GREYLIST_SAVE":{}},"messages":{"smtp_message":"Try again later"}}`), "")
	require.NoError(t, err)
	assert.Equal(t, intake.ActionTempFail, v.Action, "greylisted by the module: try again")
	v, err = rspamd.ParseReply([]byte(`{"score":4.2,"action":"greylist","symbols":{"MISSING_DATE":{}}}`), "")
	require.NoError(t, err)
	assert.Equal(t, intake.ActionTag, v.Action, "past the threshold with no greylisting behind it")
	v, err = rspamd.ParseReply([]byte(`{"score":4.2,"action":"soft reject"}`), "")
	require.NoError(t, err)
	assert.Equal(t, intake.ActionTempFail, v.Action)
}
