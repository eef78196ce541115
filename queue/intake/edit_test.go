package intake_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/queue/intake"
)

// afterReceived returns the message below the Received field intake adds.
func afterReceived(t *testing.T, msg string) string {
	t.Helper()
	require.True(t, strings.HasPrefix(msg, "Received: "), msg)
	i := strings.Index(msg, "\r\n")
	for i >= 0 && i+2 < len(msg) && (msg[i+2] == '\t' || msg[i+2] == ' ') {
		j := strings.Index(msg[i+2:], "\r\n")
		require.GreaterOrEqual(t, j, 0)
		i += 2 + j
	}
	return msg[i+2:]
}

func TestVerdictHeaderEdits(t *testing.T) {
	const msg = "Subject: hi\r\nAuthentication-Results: mx.example.org; spf=pass\r\nFrom: sender@example.net\r\n" +
		"Authentication-Results: other.example; dkim=pass\r\n\r\nhello\r\n"
	for _, tc := range []struct {
		name  string
		edits []intake.HeaderEdit
		want  string
	}{
		{"append", []intake.HeaderEdit{{Op: intake.HeaderAppend, Name: "X-Spam", Value: "Yes"}},
			strings.Replace(msg, "\r\n\r\n", "\r\nX-Spam: Yes\r\n\r\n", 1)},
		{"insert at the top, folded", []intake.HeaderEdit{{Op: intake.HeaderInsert, Name: "Authentication-Results", Value: "mx.example.org;\n\tspf=fail"}},
			"Authentication-Results: mx.example.org;\r\n\tspf=fail\r\n" + msg},
		{"insert after the first", []intake.HeaderEdit{{Op: intake.HeaderInsert, Index: 1, Name: "X-A", Value: " b"}},
			strings.Replace(msg, "Subject: hi\r\n", "Subject: hi\r\nX-A: b\r\n", 1)},
		{"change the second", []intake.HeaderEdit{{Op: intake.HeaderChange, Index: 2, Name: "authentication-results", Value: "x; none"}},
			strings.Replace(msg, "other.example; dkim=pass", "x; none", 1)},
		{"remove the first, then the new first", []intake.HeaderEdit{
			{Op: intake.HeaderChange, Index: 1, Name: "Authentication-Results"},
			{Op: intake.HeaderChange, Index: 1, Name: "Authentication-Results"}},
			"Subject: hi\r\nFrom: sender@example.net\r\n\r\nhello\r\n"},
		{"change a missing field adds it", []intake.HeaderEdit{{Op: intake.HeaderChange, Index: 1, Name: "X-New", Value: "v"}},
			strings.Replace(msg, "\r\n\r\n", "\r\nX-New: v\r\n\r\n", 1)},
		{"remove a missing field changes nothing", []intake.HeaderEdit{{Op: intake.HeaderChange, Index: 3, Name: "Authentication-Results"}}, msg},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, rec := scanServer(t, verdict(intake.Verdict{Edits: tc.edits}), nil)
			require.Regexp(t, `^250 `, sendMessage(t, addr, msg))
			got := rec.got()
			require.Len(t, got, 1)
			assert.Equal(t, tc.want, afterReceived(t, got[0]))
		})
	}
	for _, tc := range []struct {
		name string
		edit intake.HeaderEdit
	}{
		{"name with a colon", intake.HeaderEdit{Name: "X-A:", Value: "v"}},
		{"empty name", intake.HeaderEdit{Value: "v"}},
		{"value smuggling a field", intake.HeaderEdit{Name: "X-A", Value: "v\r\nBcc: victim@example.org"}},
		{"bare CR", intake.HeaderEdit{Name: "X-A", Value: "v\rw"}},
		{"change index 0", intake.HeaderEdit{Op: intake.HeaderChange, Name: "Subject", Value: "v"}},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			addr, rec := scanServer(t, verdict(intake.Verdict{Edits: []intake.HeaderEdit{tc.edit}}), nil)
			assert.Equal(t, "451 4.7.1 content scanner unavailable, try again later", sendMessage(t, addr, msg))
			assert.Empty(t, rec.got())
		})
	}
	t.Run("a header longer than the scan limit cannot be edited", func(t *testing.T) {
		long := strings.Repeat("X-Pad: "+strings.Repeat("a", 90)+"\r\n", 20) + msg
		addr, rec := scanServer(t, verdict(intake.Verdict{Edits: []intake.HeaderEdit{{Op: intake.HeaderChange, Index: 1, Name: "Authentication-Results"}}}),
			func(be *intake.Backend) { be.ScanLimit = 1024 })
		assert.Regexp(t, `^451 4\.7\.1 `, sendMessage(t, addr, long))
		assert.Empty(t, rec.got())
	})
	t.Run("a message that is all header", func(t *testing.T) {
		addr, rec := scanServer(t, verdict(intake.Verdict{Edits: []intake.HeaderEdit{{Name: "X-A", Value: "v"}}}), nil)
		require.Regexp(t, `^250 `, sendMessage(t, addr, "Subject: hi\r\n"))
		got := rec.got()
		require.Len(t, got, 1)
		assert.Equal(t, "Subject: hi\r\nX-A: v\r\n", afterReceived(t, got[0]))
	})
}

func TestDiscardVerdict(t *testing.T) {
	addr, rec := scanServer(t, verdict(intake.Verdict{Action: intake.ActionDiscard}), nil)
	assert.Regexp(t, `^250 2\.0\.0 OK: queued as `, sendMessage(t, addr, testMessage))
	assert.Empty(t, rec.got(), "a discarded message is not enqueued")
}

func TestCheckSender(t *testing.T) {
	var seen *intake.ScanEnvelope
	addr, rec := scanServer(t, nil, func(be *intake.Backend) {
		be.CheckSender = func(ctx context.Context, env *intake.ScanEnvelope) error {
			seen = env
			switch env.From {
			case "sender@null.example":
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 27}, Message: "sender domain null.example accepts no mail"}
			case "sender@broken.example":
				return errors.New("dns down")
			}
			return nil
		}
	})
	s := dial(t, addr)
	s.send("EHLO client.example.net")
	s.lines()
	assert.Equal(t, "550 5.7.27 sender domain null.example accepts no mail", s.cmd("MAIL FROM:<sender@null.example>"))
	assert.Regexp(t, `^50[23] `, s.cmd("RCPT TO:<alice@example.org>"), "a refused sender opens no transaction")
	assert.Equal(t, "451 4.7.1 sender check failed, try again later", s.cmd("MAIL FROM:<sender@broken.example>"))
	require.Regexp(t, `^250 `, s.cmd("MAIL FROM:<sender@example.net>"))
	require.NotNil(t, seen)
	assert.Equal(t, "client.example.net", seen.HELO)
	assert.Equal(t, "127.0.0.1", seen.ClientIP.String())
	require.Regexp(t, `^250 `, s.cmd("RCPT TO:<alice@example.org>"))
	require.Regexp(t, `^354 `, s.cmd("DATA"))
	require.Regexp(t, `^250 `, s.cmd(strings.TrimSuffix(testMessage, "\r\n")+"\r\n."))
	assert.Len(t, rec.got(), 1)
}
