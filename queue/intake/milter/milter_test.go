package milter_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/smtp"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/d--j/go-milter/mailfilter"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/rspamdtest"
	"github.com/resilmail/resilmail/queue/intake"
	"github.com/resilmail/resilmail/queue/intake/intaketest"
	"github.com/resilmail/resilmail/queue/intake/milter"
)

func TestMain(m *testing.M) {
	code := m.Run()
	rspamdtest.Stop()
	os.Exit(code)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// relay serves an intake.Backend scanning with s on loopback and returns
// its address and what it enqueued.
func relay(t *testing.T, s intake.Scanner, tune func(*intake.Backend)) (string, *intaketest.Recorder) {
	t.Helper()
	rec := &intaketest.Recorder{}
	be := &intake.Backend{Queue: rec, Scanner: s, ScanTimeout: 20 * time.Second, Logger: quiet}
	if tune != nil {
		tune(be)
	}
	return intaketest.Serve(t, be), rec
}

// send sends msg from sender@example.net to alice@example.org and returns
// the reply to the end of DATA ("250 ..." or the error's text).
func send(t *testing.T, addr, msg string) string {
	t.Helper()
	c, err := smtp.Dial(addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("client.example.net"))
	require.NoError(t, c.Mail("sender@example.net"))
	require.NoError(t, c.Rcpt("alice@example.org"))
	w, err := c.Data()
	require.NoError(t, err)
	_, err = io.WriteString(w, msg)
	require.NoError(t, err)
	if err := w.Close(); err != nil {
		var te *textproto.Error
		if errors.As(err, &te) {
			return fmt.Sprintf("%03d %s", te.Code, te.Msg)
		}
		return err.Error()
	}
	return "250"
}

func message(subject, text string) string {
	return "From: Sender <sender@example.net>\r\nTo: alice@example.org\r\nSubject: " + subject +
		"\r\nDate: Mon, 07 Dec 2026 18:00:00 +0000\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", ".") + "@example.net>\r\n\r\n" + text + "\r\n"
}

// The GTUBE test strings rspamd knows: X rejects, Y adds a header, Z
// rewrites the subject.
const (
	gtubeReject  = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
	gtubeHeader  = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
	gtubeSubject = "ZJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
)

func TestWithRspamdProxyInMilterMode(t *testing.T) {
	r, err := rspamdtest.Start()
	require.NoError(t, err)
	sc, err := milter.Parse("inet:"+r.Milter, &milter.Options{Name: "rspamd", Hostname: "mx.example.org", Logger: quiet})
	require.NoError(t, err)
	addr, rec := relay(t, sc, nil)

	t.Run("clean message accepted", func(t *testing.T) {
		before := len(rec.Bodies())
		assert.Equal(t, "250", send(t, addr, message("clean", "Hello Alice, see you tomorrow.")))
		got := rec.Bodies()
		require.Len(t, got, before+1)
		assert.Contains(t, got[before], "Subject: clean\r\n")
		assert.NotContains(t, got[before], "X-Spam: Yes")
	})
	t.Run("GTUBE rejected with rspamd's message", func(t *testing.T) {
		before := len(rec.Bodies())
		assert.Equal(t, "550 5.7.1 Gtube pattern", send(t, addr, message("gtube", gtubeReject)))
		assert.Len(t, rec.Bodies(), before, "a rejected message is not enqueued")
	})
	t.Run("add header: X-Spam added", func(t *testing.T) {
		before := len(rec.Bodies())
		assert.Equal(t, "250", send(t, addr, message("tagged", gtubeHeader)))
		got := rec.Bodies()
		require.Len(t, got, before+1)
		assert.Contains(t, got[before], "\r\nX-Spam: Yes\r\n")
	})
	t.Run("rewrite subject: Subject changed in place", func(t *testing.T) {
		before := len(rec.Bodies())
		assert.Equal(t, "250", send(t, addr, message("rewritten", gtubeSubject)))
		got := rec.Bodies()
		require.Len(t, got, before+1)
		assert.Contains(t, got[before], "\r\nSubject: *** SPAM *** rewritten\r\n")
		assert.NotContains(t, got[before], "\r\nSubject: rewritten\r\n")
		assert.Equal(t, 1, strings.Count(got[before], "\nSubject:"))
	})
}

// fake starts a milter on loopback that decides with decide.
func fake(t *testing.T, decide mailfilter.DecisionModificationFunc) *milter.Scanner {
	t.Helper()
	f, err := mailfilter.New("tcp", "127.0.0.1:0", decide)
	require.NoError(t, err)
	t.Cleanup(f.Close)
	sc, err := milter.New("tcp", f.Addr().String(), &milter.Options{Logger: quiet})
	require.NoError(t, err)
	return sc
}

func TestVerdicts(t *testing.T) {
	msg := message("hello", "some text")
	t.Run("accept, and what the milter saw", func(t *testing.T) {
		var (
			mu   sync.Mutex
			seen []string
		)
		sc := fake(t, func(_ context.Context, trx mailfilter.Trx) (mailfilter.Decision, error) {
			mu.Lock()
			defer mu.Unlock()
			b, _ := io.ReadAll(trx.Body())
			seen = append(seen, trx.Connect().Addr, trx.Helo().Name, trx.MailFrom().Addr, trx.RcptTos()[0].Addr,
				trx.Headers().Value("Subject"), string(b), trx.QueueId())
			return mailfilter.Accept, nil
		})
		addr, rec := relay(t, sc, nil)
		assert.Equal(t, "250", send(t, addr, msg))
		require.Len(t, rec.Bodies(), 1)
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, seen, 7)
		assert.Equal(t, []string{"127.0.0.1", "client.example.net", "sender@example.net", "alice@example.org", "hello", "some text\r\n"}, seen[:6])
		assert.NotEmpty(t, seen[6], "the queue id is sent")
		assert.Contains(t, rec.Bodies()[0], "id "+seen[6], "as the Received header names it")
	})
	for _, tc := range []struct {
		name     string
		decision mailfilter.Decision
		reply    string
		kept     int
	}{
		{"reject", mailfilter.Reject, "550 5.7.1 message refused as spam", 0},
		{"tempfail", mailfilter.TempFail, "451 4.7.1 message deferred by the content scanner, try again later", 0},
		{"reply code 5xx", mailfilter.CustomErrorResponse(554, "5.7.1 virus found"), "550 5.7.1 virus found", 0},
		{"reply code 4xx", mailfilter.CustomErrorResponse(421, "4.3.2 busy"), "451 4.7.1 busy", 0},
		{"discard: 250, dropped", mailfilter.Discard, "250", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := fake(t, func(context.Context, mailfilter.Trx) (mailfilter.Decision, error) { return tc.decision, nil })
			addr, rec := relay(t, sc, nil)
			assert.Equal(t, tc.reply, send(t, addr, msg))
			assert.Len(t, rec.Bodies(), tc.kept)
		})
	}
	t.Run("quarantine", func(t *testing.T) {
		sc := fake(t, func(context.Context, mailfilter.Trx) (mailfilter.Decision, error) {
			return mailfilter.QuarantineResponse("virus Eicar"), nil
		})
		var (
			mu   sync.Mutex
			kept []intake.Verdict
		)
		addr, rec := relay(t, sc, func(be *intake.Backend) {
			be.Quarantine = func(_ context.Context, _ resilmail.Envelope, v intake.Verdict, body io.Reader) error {
				io.Copy(io.Discard, body)
				mu.Lock()
				defer mu.Unlock()
				kept = append(kept, v)
				return nil
			}
		})
		assert.Equal(t, "250", send(t, addr, msg))
		assert.Empty(t, rec.Bodies())
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, kept, 1)
		assert.Equal(t, intake.ActionQuarantine, kept[0].Action)
		assert.Equal(t, "virus Eicar", kept[0].Message)
	})
	t.Run("header changes", func(t *testing.T) {
		sc := fake(t, func(_ context.Context, trx mailfilter.Trx) (mailfilter.Decision, error) {
			trx.Headers().Add("X-Scanned", "yes")
			trx.Headers().SetSubject("[ext] hello")
			return mailfilter.Accept, nil
		})
		addr, rec := relay(t, sc, nil)
		assert.Equal(t, "250", send(t, addr, msg))
		got := rec.Bodies()
		require.Len(t, got, 1)
		assert.Contains(t, got[0], "\r\nSubject: [ext] hello\r\n")
		assert.NotContains(t, got[0], "Subject: hello")
		assert.Contains(t, got[0], "\r\nX-Scanned: yes\r\n")
	})
	t.Run("a change this MTA does not offer: no verdict", func(t *testing.T) {
		sc := fake(t, func(_ context.Context, trx mailfilter.Trx) (mailfilter.Decision, error) {
			trx.AddRcptTo("spy@example.com", "")
			return mailfilter.Accept, nil
		})
		addr, rec := relay(t, sc, nil)
		assert.Equal(t, "451 4.7.1 content scanner unavailable, try again later", send(t, addr, msg))
		assert.Empty(t, rec.Bodies())
	})
}

// rawMilter serves each connection with serve, on loopback.
func rawMilter(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); serve(c) }()
		}
	}()
	return ln.Addr().String()
}

func TestMilterDownOrBroken(t *testing.T) {
	msg := message("hello", "some text")
	closed := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		a := ln.Addr().String()
		ln.Close()
		return a
	}()
	release := make(chan struct{})
	for _, tc := range []struct {
		name string
		addr string
	}{
		{"refused", closed},
		{"reset at once", rawMilter(t, func(net.Conn) {})},
		{"garbage", rawMilter(t, func(c net.Conn) {
			io.ReadFull(c, make([]byte, 5))
			c.Write([]byte("\x00\x00\x00\x05Zjunk HTTP/1.1 200 OK\r\n\r\n"))
		})},
		{"huge packet length", rawMilter(t, func(c net.Conn) {
			io.ReadFull(c, make([]byte, 5))
			c.Write([]byte("\xff\xff\xff\xffO"))
		})},
		{"hangs", rawMilter(t, func(c net.Conn) {
			select {
			case <-release:
			case <-time.After(time.Minute):
			}
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc, err := milter.New("tcp", tc.addr, &milter.Options{Logger: quiet})
			require.NoError(t, err)
			addr, rec := relay(t, sc, func(be *intake.Backend) { be.ScanTimeout = 500 * time.Millisecond })
			start := time.Now()
			assert.Equal(t, "451 4.7.1 content scanner unavailable, try again later", send(t, addr, msg))
			assert.Less(t, time.Since(start), 10*time.Second)
			assert.Empty(t, rec.Bodies())

			addr, rec = relay(t, sc, func(be *intake.Backend) {
				be.ScanTimeout = 500 * time.Millisecond
				be.ScanFailure = intake.ScanFailAcceptTag
			})
			assert.Equal(t, "250", send(t, addr, msg), "accept-and-tag when configured")
			require.Len(t, rec.Bodies(), 1)
			assert.Contains(t, rec.Bodies()[0], "X-Spam-Status: No, unchecked")
		})
	}
	close(release)
}

func TestNewRefusesBadAddresses(t *testing.T) {
	for _, spec := range []string{"inet:nohost", "inet:", "unix:", "127.0.0.1"} {
		_, err := milter.Parse(spec, nil)
		assert.Error(t, err, spec)
	}
	_, err := milter.New("udp", "127.0.0.1:1", nil)
	assert.Error(t, err)
	_, err = milter.New("tcp", "127.0.0.1:1", &milter.Options{Timeout: -1})
	assert.Error(t, err)
}

// BenchmarkScanRspamd asks rspamd's proxy worker in milter mode about a
// clean 4 KiB message from a loopback client (rspamd's DNS rules then
// have nothing to look up), one conversation per message.
func BenchmarkScanRspamd(b *testing.B) {
	r, err := rspamdtest.Start()
	require.NoError(b, err)
	sc, err := milter.Parse("inet:"+r.Milter, &milter.Options{Logger: quiet})
	require.NoError(b, err)
	env := &intake.ScanEnvelope{Envelope: resilmail.Envelope{ID: "b1", From: "sender@example.net", To: []resilmail.Recipient{{Addr: "alice@example.org"}}},
		ClientIP: netip.MustParseAddr("127.0.0.1"), HELO: "client.example.net"}
	msg := []byte(message("bench", strings.Repeat("A line of text in the body of a benchmark message.\r\n", 78)))
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		v, err := sc.Scan(context.Background(), env, msg)
		if err != nil || v.Action != intake.ActionAccept {
			b.Fatalf("%+v %v", v, err)
		}
	}
}
