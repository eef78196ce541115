package intake_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
	"github.com/resilmail/resilmail/queue/intake"
)

// serve runs be on a loopback port until the test ends.
func serve(t *testing.T, be *intake.Backend) string {
	t.Helper()
	srv := smtp.NewServer(be)
	srv.Domain = "mx.test"
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// swaks sends one message from sender@example.net to rcpts with a real
// client and returns its transcript.
func swaks(t *testing.T, addr string, rcpts ...string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	out, _ := exec.Command("swaks", "--server", host, "--port", port, "--helo", "client.example.net",
		"--from", "sender@example.net", "--to", strings.Join(rcpts, ","), "--body", "hello").CombinedOutput()
	return string(out)
}

func TestRefusedRecipientIsRecordedBeforeTheReply(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	q, err := queue.Open(t.TempDir(), resilmail.DelivererFunc(func(context.Context, resilmail.Envelope, io.Reader) error {
		return errors.New("not delivering in this test")
	}), &queue.Options{Logger: quiet})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })

	var (
		mu       sync.Mutex
		recorded []intake.Rejection
		broken   bool
	)
	be := &intake.Backend{Queue: q, Logger: quiet,
		Accept: func(_ context.Context, rcpt string) error {
			switch {
			case strings.HasPrefix(rcpt, "busy@"):
				return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "try later"}
			case strings.HasPrefix(rcpt, "nobody@"):
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		},
		Rejected: func(_ context.Context, r intake.Rejection) error {
			mu.Lock()
			defer mu.Unlock()
			if broken {
				return errors.New("disk full")
			}
			recorded = append(recorded, r)
			return nil
		},
	}
	addr := serve(t, be)

	out := swaks(t, addr, "alice@example.org", "nobody@example.org", "busy@example.org")
	assert.Contains(t, out, "<** 550 5.1.1 no such user")
	assert.Contains(t, out, "<** 450 4.2.1 try later")
	assert.Regexp(t, `<-  250 .*queued as`, out, "alice's copy is accepted")
	mu.Lock()
	require.Len(t, recorded, 1, "only the permanent refusal is recorded")
	r := recorded[0]
	mu.Unlock()
	assert.Equal(t, "sender@example.net", r.From)
	assert.Equal(t, "nobody@example.org", r.Rcpt)
	assert.Equal(t, "127.0.0.1", r.ClientAddr)
	assert.Equal(t, "client.example.net", r.HELO)
	assert.Equal(t, 550, r.Reply.Code)

	// When the record cannot be kept, the client is told to try again:
	// a 5xx would lose the only trace of the message.
	mu.Lock()
	broken = true
	mu.Unlock()
	out = swaks(t, addr, "nobody@example.org")
	assert.Contains(t, out, "<** 451 4.3.0")
	assert.NotContains(t, out, "<** 550")
}
