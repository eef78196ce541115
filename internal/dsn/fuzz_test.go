package dsn

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// FuzzParse checks that Parse never panics, fails only with the package's
// errors, returns values in canonical form, and that a valid report it
// returns comes back unchanged through Build and Parse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(postfixBounce))
	f.Add([]byte(strings.ReplaceAll(postfixBounce, "\n", "\r\n")))
	f.Add([]byte(report("Reporting-MTA: dns; mx.example\n\nFinal-Recipient: utf-8; j\\x{F6}s\\x{E9}@example.net\nAction: failed\nStatus: 5.1.1\n")))
	m := testMessage(
		RecipientStatus{FinalRecipient: "bob@example.net", OriginalRecipient: "rfc822;bob@example.net", Action: Failed, Status: "5.1.1",
			RemoteMTA: "mx.example.net", DiagnosticCode: "550 5.1.1 no such user", LastAttemptDate: t0},
		RecipientStatus{FinalRecipient: "jösé@exämple.net", Action: Delayed, Status: "4.4.1", WillRetryUntil: t0.Add(time.Hour)},
	)
	m.Report.OriginalEnvelopeID = "env1"
	m.Original = []byte(testOriginal)
	f.Add(build(f, m))

	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(bytes.NewReader(data))
		if err != nil {
			require.Nil(t, p)
			if !errors.Is(err, ErrNotReport) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Parse error %v wraps none of the package's errors", err)
			}
			return
		}
		require.NotEmpty(t, p.Report.Recipients)
		if p.Report.Validate() != nil {
			return
		}
		n, err := p.Report.normalize()
		require.NoError(t, err)
		require.Equal(t, comparable(n), comparable(p.Report), "Parse returns canonical values")

		var b bytes.Buffer
		require.NoError(t, Build(&b, &Message{
			From:        "MAILER-DAEMON@relay.example.org",
			To:          "alice@example.com",
			MessageID:   "fuzz@relay.example.org",
			Date:        t0,
			Report:      p.Report,
			Original:    p.Original,
			HeadersOnly: p.HeadersOnly,
		}))
		checkLines(t, b.Bytes())
		q, err := Parse(&b)
		require.NoError(t, err)
		require.Equal(t, comparable(p.Report), comparable(q.Report))
	})
}

// fuzzTime turns a fuzzed number into a time: zero for 0, otherwise within
// about a thousand years of 1970, in a zone of any offset (seconds
// included) within a day of UTC either way.
func fuzzTime(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(v%(1<<35), 0).In(time.FixedZone("", int(v%(26*3600))))
}

var fuzzActions = []Action{Failed, Delayed, Delivered, Relayed, Expanded, "bogus", ""}

// FuzzBuild checks that whatever a Message holds, Build either refuses it
// with ErrInvalid and writes nothing, or writes a well-formed notification
// (CRLF lines under 998 octets, only its own header fields, parts and
// delivery-status fields) that Parse reads back to the sanitised values.
func FuzzBuild(f *testing.F) {
	f.Add("relay.example.org", "env1", "bob@example.net", "rfc822;bob@example.net", byte(0), "5.1.1", "mx.example.net", "",
		"550 5.1.1 no such user", int64(1704189600), int64(0), "", "", "", []byte(testOriginal), true)
	f.Add("relay.example.org", "", "jösé@exämple.net", "utf-8;jösé@exämple.net", byte(1), "4.4.1", "", "X-Resilmail",
		"connect: connection refused", int64(1704189600), int64(1704289600), "", "Sujet é", "Texte\naccentué\n", []byte(testOriginal), false)
	f.Add("relay.example.org\r\nBcc: x", "env\r\n\r\n--x", "bob@example.net\r\nBcc: y", "rfc822;b\x00b", byte(2), "2.0.0", "mx\r\n.",
		"smtp", "250\r\nBcc: z", int64(-1), int64(1), "", "s\r\nBcc: w", "--dsn=_\r\n", []byte("S: x\n\nbody\rline\x00\xff"), false)

	f.Fuzz(func(t *testing.T, reportingMTA, envID, final, orcpt string, action byte, status, remote, diagType, diag string,
		last, retry int64, to, subject, text string, original []byte, headersOnly bool) {
		m := testMessage(
			RecipientStatus{
				FinalRecipient:    final,
				OriginalRecipient: orcpt,
				Action:            fuzzActions[int(action)%len(fuzzActions)],
				Status:            status,
				RemoteMTA:         remote,
				DiagnosticType:    diagType,
				DiagnosticCode:    diag,
				LastAttemptDate:   fuzzTime(last),
				WillRetryUntil:    fuzzTime(retry),
			},
			RecipientStatus{FinalRecipient: "second@example.net", Action: Failed, Status: "5.0.0"},
		)
		m.Report.ReportingMTA = reportingMTA
		m.Report.OriginalEnvelopeID = envID
		if to != "" {
			m.To = to
		}
		m.Subject = subject
		m.Text = text
		m.Original = original
		m.HeadersOnly = headersOnly

		var b bytes.Buffer
		if err := Build(&b, m); err != nil {
			require.ErrorIs(t, err, ErrInvalid)
			require.Zero(t, b.Len())
			return
		}
		raw := b.Bytes()

		h, parts := structure(t, raw)
		for k := range h {
			require.Contains(t, []string{"Date", "From", "To", "Subject", "Message-Id", "Auto-Submitted", "Mime-Version", "Content-Type"}, k)
		}
		require.True(t, len(parts) == 2 || len(parts) == 3, "%d parts", len(parts))
		require.Equal(t, "text/plain", parts[0].Type)
		require.Contains(t, []string{"message/delivery-status", "message/global-delivery-status"}, parts[1].Type)
		blocks := statusFields(t, parts[1].Body)
		require.Len(t, blocks, 3)
		known := []string{"Original-Envelope-Id", "Reporting-MTA", "Arrival-Date", "Original-Recipient", "Final-Recipient",
			"Action", "Status", "Remote-MTA", "Diagnostic-Code", "Last-Attempt-Date", "Will-Retry-Until"}
		for _, block := range blocks {
			for _, name := range block {
				require.Contains(t, known, name)
			}
		}

		p, err := Parse(bytes.NewReader(raw))
		require.NoError(t, err)
		want, err := m.Report.normalize()
		require.NoError(t, err)
		require.Equal(t, comparable(want), comparable(p.Report))
		require.NoError(t, p.Report.Validate())
		if s := cleanText(subject, maxSubject); s != "" {
			assert.Equal(t, s, p.Subject)
		}
		if s := cleanBody(text); strings.TrimSpace(s) != "" {
			assert.Equal(t, s, p.Text)
		}
		content, _, hdrOnly, _ := returned(original, headersOnly, 0)
		if len(content) == 0 {
			assert.Empty(t, p.Original)
		} else {
			assert.Equal(t, content, p.Original)
			assert.Equal(t, hdrOnly, p.HeadersOnly)
		}
	})
}
