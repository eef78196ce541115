package intake_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue/intake"
)

// recorder is an Enqueuer that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	envs   []resilmail.Envelope
	bodies []string
}

func (r *recorder) Enqueue(_ context.Context, env resilmail.Envelope, body io.Reader) (string, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return env.ID, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.envs = append(r.envs, env)
	r.bodies = append(r.bodies, string(b))
	return env.ID, nil
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bodies...)
}

// scanServer serves a Backend with scanner s over a recorder, tuned by
// tune, and returns its address and the recorder.
func scanServer(t *testing.T, s intake.Scanner, tune func(*intake.Backend)) (string, *recorder) {
	t.Helper()
	rec := &recorder{}
	be := &intake.Backend{Queue: rec, Scanner: s, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if tune != nil {
		tune(be)
	}
	return serve(t, be), rec
}

// sendMessage sends one message with a raw client and returns the reply to
// the end of DATA.
func sendMessage(t *testing.T, addr, msg string) string {
	t.Helper()
	s := dial(t, addr)
	s.send("EHLO client.example.net")
	s.lines()
	require.Regexp(t, `^250 `, s.cmd("MAIL FROM:<sender@example.net>"))
	require.Regexp(t, `^250 `, s.cmd("RCPT TO:<alice@example.org>"))
	require.Regexp(t, `^354 `, s.cmd("DATA"))
	return s.cmd(strings.TrimSuffix(msg, "\r\n") + "\r\n.")
}

const testMessage = "Subject: hi\r\nFrom: sender@example.net\r\n\r\nhello\r\n"

func verdict(v intake.Verdict) intake.Scanner {
	return intake.ScannerFunc(func(context.Context, *intake.ScanEnvelope, []byte) (intake.Verdict, error) {
		return v, nil
	})
}

func TestScannerSeesTheEnvelopeAndTheBodyBeforeTheReply(t *testing.T) {
	var (
		mu   sync.Mutex
		seen *intake.ScanEnvelope
		body string
	)
	s := intake.ScannerFunc(func(_ context.Context, env *intake.ScanEnvelope, b []byte) (intake.Verdict, error) {
		mu.Lock()
		defer mu.Unlock()
		seen, body = env, string(b)
		return intake.Verdict{Action: intake.ActionAccept}, nil
	})
	addr, rec := scanServer(t, s, nil)
	reply := sendMessage(t, addr, testMessage)
	require.Regexp(t, `^250 2\.0\.0 OK: queued as `, reply)
	mu.Lock()
	defer mu.Unlock()
	require.NotNil(t, seen)
	assert.Equal(t, "sender@example.net", seen.From)
	require.Len(t, seen.To, 1)
	assert.Equal(t, "alice@example.org", seen.To[0].Addr)
	assert.Equal(t, "127.0.0.1", seen.ClientIP.String())
	assert.Equal(t, "client.example.net", seen.HELO)
	assert.False(t, seen.TLS)
	assert.False(t, seen.Truncated)
	assert.True(t, strings.HasSuffix(reply, seen.ID), "the scanner sees the queue id the client is told")
	assert.Equal(t, testMessage, body)
	got := rec.got()
	require.Len(t, got, 1)
	assert.True(t, strings.HasPrefix(got[0], "Received: "))
	assert.True(t, strings.HasSuffix(got[0], "\r\n"+testMessage), "an accepted message is enqueued unchanged")
	assert.NotContains(t, got[0], "X-Spam")
}

func TestVerdictActions(t *testing.T) {
	t.Run("reject", func(t *testing.T) {
		addr, rec := scanServer(t, verdict(intake.Verdict{Action: intake.ActionReject, Score: 20, Message: "Gtube pattern\r\nmore"}), nil)
		assert.Equal(t, "550 5.7.1 Gtube pattern  more", sendMessage(t, addr, testMessage))
		assert.Empty(t, rec.got(), "a rejected message is not enqueued")
	})
	t.Run("reject without a message", func(t *testing.T) {
		addr, _ := scanServer(t, verdict(intake.Verdict{Action: intake.ActionReject}), nil)
		assert.Equal(t, "550 5.7.1 message refused as spam", sendMessage(t, addr, testMessage))
	})
	t.Run("tempfail", func(t *testing.T) {
		addr, rec := scanServer(t, verdict(intake.Verdict{Action: intake.ActionTempFail, Message: "greylisted"}), nil)
		assert.Equal(t, "451 4.7.1 greylisted", sendMessage(t, addr, testMessage))
		assert.Empty(t, rec.got())
	})
	t.Run("tag", func(t *testing.T) {
		addr, rec := scanServer(t, verdict(intake.Verdict{Action: intake.ActionTag, Score: 6.5, Required: 5,
			Symbols: []string{"BAYES_SPAM", "R_DKIM,NA", "MISSING_DATE"}, Scanner: "rspamd 3.4"}), nil)
		require.Regexp(t, `^250 `, sendMessage(t, addr, testMessage))
		got := rec.got()
		require.Len(t, got, 1)
		_, rest, ok := strings.Cut(got[0], "X-Spam-Flag: YES\r\n")
		require.True(t, ok, got[0])
		assert.Equal(t, "X-Spam-Status: Yes, score=6.50 required=5.00\r\n\ttests=BAYES_SPAM,R_DKIMNA,MISSING_DATE\r\n"+
			"X-Spam-Checker-Version: rspamd 3.4\r\n"+testMessage, rest)
	})
	t.Run("unknown action", func(t *testing.T) {
		addr, rec := scanServer(t, verdict(intake.Verdict{Action: "bounce"}), nil)
		assert.Equal(t, "451 4.7.1 content scanner unavailable, try again later", sendMessage(t, addr, testMessage))
		assert.Empty(t, rec.got())
	})
}

func TestQuarantineVerdict(t *testing.T) {
	v := intake.Verdict{Action: intake.ActionQuarantine, Score: 12, Symbols: []string{"GTUBE"}}
	t.Run("kept, 250, not enqueued", func(t *testing.T) {
		var (
			mu   sync.Mutex
			kept []string
			got  intake.Verdict
		)
		addr, rec := scanServer(t, verdict(v), func(be *intake.Backend) {
			be.Quarantine = func(_ context.Context, env resilmail.Envelope, v intake.Verdict, body io.Reader) error {
				b, err := io.ReadAll(body)
				mu.Lock()
				defer mu.Unlock()
				kept, got = append(kept, string(b)), v
				return err
			}
		})
		require.Regexp(t, `^250 2\.0\.0 `, sendMessage(t, addr, testMessage))
		assert.Empty(t, rec.got())
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, kept, 1)
		assert.Contains(t, kept[0], "X-Spam-Status: Yes, score=12.00\r\n\ttests=GTUBE\r\n"+testMessage)
		assert.Equal(t, v, got)
	})
	t.Run("a 550 from the quarantine", func(t *testing.T) {
		addr, _ := scanServer(t, verdict(v), func(be *intake.Backend) {
			be.Quarantine = func(_ context.Context, _ resilmail.Envelope, _ intake.Verdict, body io.Reader) error {
				io.Copy(io.Discard, body)
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "spam, kept"}
			}
		})
		assert.Equal(t, "550 5.7.1 spam, kept", sendMessage(t, addr, testMessage))
	})
	t.Run("quarantine failing", func(t *testing.T) {
		addr, rec := scanServer(t, verdict(v), func(be *intake.Backend) {
			be.Quarantine = func(context.Context, resilmail.Envelope, intake.Verdict, io.Reader) error {
				return errors.New("disk full")
			}
		})
		assert.Regexp(t, `^451 4\.3\.0 `, sendMessage(t, addr, testMessage))
		assert.Empty(t, rec.got())
	})
	t.Run("no quarantine: refused, never delivered", func(t *testing.T) {
		addr, rec := scanServer(t, verdict(v), nil)
		assert.Equal(t, "550 5.7.1 message refused as spam", sendMessage(t, addr, testMessage))
		assert.Empty(t, rec.got())
	})
}

func TestScannerDownOrSlow(t *testing.T) {
	down := intake.ScannerFunc(func(context.Context, *intake.ScanEnvelope, []byte) (intake.Verdict, error) {
		return intake.Verdict{}, errors.New("connection refused")
	})
	hang := intake.ScannerFunc(func(ctx context.Context, _ *intake.ScanEnvelope, _ []byte) (intake.Verdict, error) {
		<-ctx.Done()
		return intake.Verdict{}, ctx.Err()
	})
	// A scanner that ignores its deadline and then says "accept": the
	// verdict came too late to be trusted.
	late := intake.ScannerFunc(func(ctx context.Context, _ *intake.ScanEnvelope, _ []byte) (intake.Verdict, error) {
		<-ctx.Done()
		return intake.Verdict{Action: intake.ActionAccept}, nil
	})
	fast := func(be *intake.Backend) { be.ScanTimeout = 100 * time.Millisecond }
	for name, s := range map[string]intake.Scanner{"down": down, "hang": hang, "late": late} {
		t.Run(name, func(t *testing.T) {
			addr, rec := scanServer(t, s, fast)
			assert.Equal(t, "451 4.7.1 content scanner unavailable, try again later", sendMessage(t, addr, testMessage))
			assert.Empty(t, rec.got(), "never a 250 without a verdict")

			addr, rec = scanServer(t, s, func(be *intake.Backend) { fast(be); be.ScanFailure = intake.ScanFailAcceptTag })
			require.Regexp(t, `^250 `, sendMessage(t, addr, testMessage))
			got := rec.got()
			require.Len(t, got, 1)
			assert.Contains(t, got[0], "\r\nX-Spam-Status: No, unchecked (scanner unavailable)\r\n"+testMessage)
		})
	}
}

func TestMessageLargerThanTheScanLimit(t *testing.T) {
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 100)
	var (
		mu        sync.Mutex
		calls     int
		truncated bool
		n         int
	)
	s := intake.ScannerFunc(func(_ context.Context, env *intake.ScanEnvelope, b []byte) (intake.Verdict, error) {
		mu.Lock()
		defer mu.Unlock()
		calls, truncated, n = calls+1, env.Truncated, len(b)
		return intake.Verdict{}, nil
	})
	addr, rec := scanServer(t, s, func(be *intake.Backend) { be.ScanLimit = 100 })
	require.Regexp(t, `^250 `, sendMessage(t, addr, big))
	mu.Lock()
	assert.Equal(t, 1, calls)
	assert.True(t, truncated)
	assert.Equal(t, 100, n, "the scanner gets the first ScanLimit bytes")
	mu.Unlock()
	got := rec.got()
	require.Len(t, got, 1)
	assert.True(t, strings.HasSuffix(got[0], "\r\n"+big), "the whole message is enqueued")

	addr, rec = scanServer(t, s, func(be *intake.Backend) { be.ScanLimit = 100; be.ScanOversize = intake.ScanSkip })
	require.Regexp(t, `^250 `, sendMessage(t, addr, big))
	mu.Lock()
	assert.Equal(t, 1, calls, "skipped: not scanned")
	mu.Unlock()
	got = rec.got()
	require.Len(t, got, 1)
	assert.Contains(t, got[0], "\r\nX-Spam-Status: No, unchecked (larger than the scan limit)\r\n"+big)

	// A message exactly at the limit is scanned whole.
	addr, _ = scanServer(t, s, func(be *intake.Backend) { be.ScanLimit = int64(len(testMessage)) })
	require.Regexp(t, `^250 `, sendMessage(t, addr, testMessage))
	mu.Lock()
	assert.Equal(t, 2, calls)
	assert.False(t, truncated)
	mu.Unlock()
}

func TestSizeLimitAndLoopsStillApplyWithAScanner(t *testing.T) {
	addr, rec := scanServer(t, verdict(intake.Verdict{}), func(be *intake.Backend) {
		be.MaxSize = func() int64 { return 50 }
	})
	assert.Regexp(t, `^552 5\.3\.4 `, sendMessage(t, addr, "Subject: x\r\n\r\n"+strings.Repeat("x", 100)))
	assert.Empty(t, rec.got())

	addr, rec = scanServer(t, verdict(intake.Verdict{}), func(be *intake.Backend) { be.MaxHops = 2 })
	assert.Regexp(t, `^554 5\.4\.6 `, sendMessage(t, addr, strings.Repeat("Received: from a\r\n", 3)+"\r\nx\r\n"))
	assert.Empty(t, rec.got())
}

func TestWrapScannerOrder(t *testing.T) {
	var order []string
	mw := func(name string) intake.ScanMiddleware {
		return func(next intake.Scanner) intake.Scanner {
			return intake.ScannerFunc(func(ctx context.Context, env *intake.ScanEnvelope, b []byte) (intake.Verdict, error) {
				order = append(order, name)
				v, err := next.Scan(ctx, env, b)
				v.Symbols = append(v.Symbols, name)
				return v, err
			})
		}
	}
	s := intake.WrapScanner(verdict(intake.Verdict{}), mw("a"), mw("b"))
	v, err := s.Scan(context.Background(), &intake.ScanEnvelope{}, nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, order, "the first middleware is outermost")
	assert.Equal(t, []string{"b", "a"}, v.Symbols)
}
