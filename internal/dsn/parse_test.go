package dsn

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// postfixBounce is a bounce as Postfix writes it, with LF line ends as
// Postfix's local delivery hands it over.
const postfixBounce = `Return-Path: <>
Received: by mail.example.com (Postfix)
	id 7D8A11234; Tue,  2 Jan 2024 10:00:01 +0000 (UTC)
Date: Tue,  2 Jan 2024 10:00:01 +0000 (UTC)
From: MAILER-DAEMON@mail.example.com (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: alice@example.com
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="7D8A11234.1704189601/mail.example.com"
Content-Transfer-Encoding: 8bit
Message-Id: <20240102100001.7D8A11234@mail.example.com>

This is a MIME-encapsulated message.

--7D8A11234.1704189601/mail.example.com
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host mail.example.com.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

                   The mail system

<bob@example.net>: host mx.example.net[192.0.2.25] said: 550 5.1.1
    <bob@example.net>: Recipient address rejected: User unknown in virtual
    mailbox table (in reply to RCPT TO command)

--7D8A11234.1704189601/mail.example.com
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mail.example.com
X-Postfix-Queue-ID: 7D8A11234
X-Postfix-Sender: rfc822; alice@example.com
Arrival-Date: Tue,  2 Jan 2024 09:59:58 +0000 (UTC)

Final-Recipient: rfc822; bob@example.net
Original-Recipient: rfc822;bob@example.net
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected:
    User unknown in virtual mailbox table

Final-Recipient: rfc822; carol@example.org
Original-Recipient: rfc822;carol@example.org
Action: failed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mx.example.org[192.0.2.26]:25: Connection
    timed out

--7D8A11234.1704189601/mail.example.com
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers
Content-Transfer-Encoding: 8bit

Return-Path: <alice@example.com>
Received: from client.example.com (client.example.com [192.0.2.10])
	by mail.example.com (Postfix) with ESMTPS id 7D8A11234
	for <bob@example.net>; Tue,  2 Jan 2024 09:59:58 +0000 (UTC)
From: Alice <alice@example.com>
To: bob@example.net
Subject: lunch
Message-ID: <m1@example.com>

--7D8A11234.1704189601/mail.example.com--
`

func TestParsePostfix(t *testing.T) {
	for _, crlf := range []bool{false, true} {
		name := "LF"
		raw := postfixBounce
		if crlf {
			name, raw = "CRLF", strings.ReplaceAll(raw, "\n", "\r\n")
		}
		t.Run(name, func(t *testing.T) {
			p, err := Parse(strings.NewReader(raw))
			require.NoError(t, err)
			assert.Equal(t, "MAILER-DAEMON@mail.example.com", p.From)
			assert.Equal(t, "alice@example.com", p.To)
			assert.Equal(t, "Undelivered Mail Returned to Sender", p.Subject)
			assert.Equal(t, "20240102100001.7D8A11234@mail.example.com", p.MessageID)
			assert.True(t, p.Date.Equal(time.Date(2024, 1, 2, 10, 0, 1, 0, time.UTC)))
			assert.True(t, strings.HasPrefix(p.Text, "This is the mail system at host mail.example.com.\n"), p.Text)
			assert.Contains(t, p.Text, "(in reply to RCPT TO command)\n")
			assert.True(t, p.HeadersOnly)
			assert.True(t, bytes.HasPrefix(p.Original, []byte("Return-Path: <alice@example.com>")))
			assert.Contains(t, string(p.Original), "Message-ID: <m1@example.com>")

			want := Report{
				ReportingMTA: "mail.example.com",
				ArrivalDate:  time.Date(2024, 1, 2, 9, 59, 58, 0, time.UTC),
				Recipients: []RecipientStatus{
					{FinalRecipient: "bob@example.net", OriginalRecipient: "rfc822;bob@example.net", Action: Failed, Status: "5.1.1",
						RemoteMTA:      "mx.example.net",
						DiagnosticCode: "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown in virtual mailbox table"},
					{FinalRecipient: "carol@example.org", OriginalRecipient: "rfc822;carol@example.org", Action: Failed, Status: "4.4.1",
						DiagnosticType: "X-Postfix", DiagnosticCode: "connect to mx.example.org[192.0.2.26]:25: Connection timed out"},
				},
			}
			assert.Equal(t, comparable(want), comparable(p.Report))
			require.NoError(t, p.Report.Validate())

			// What Parse read, Build writes again.
			var b bytes.Buffer
			require.NoError(t, Build(&b, &Message{From: p.From, To: p.To, MessageID: p.MessageID, Date: p.Date,
				Report: p.Report, Original: p.Original, HeadersOnly: p.HeadersOnly}))
			q, err := Parse(&b)
			require.NoError(t, err)
			assert.Equal(t, comparable(p.Report), comparable(q.Report))
		})
	}
}

// report returns a notification whose delivery-status part is status, with
// LF line ends.
func report(status string) string {
	return "From: mailer-daemon@x.example\nTo: a@x.example\nSubject: DSN\n" +
		"Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n" +
		"--B\nContent-Type: text/plain\n\nSee below.\n" +
		"--B\nContent-Type: message/delivery-status\n\n" + status + "\n--B--\n"
}

func TestParseLenient(t *testing.T) {
	tests := []struct {
		name   string
		status string
		want   Report
	}{
		{"lower-case names, no spaces",
			"reporting-mta:dns;mx.example\n\nfinal-recipient:rfc822;bob@example.net\naction:FAILED\nstatus:5.1.1\n",
			Report{ReportingMTA: "mx.example", Recipients: []RecipientStatus{{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.1.1"}}}},
		{"angle brackets and comments",
			"Reporting-MTA: dns; mx.example\n\nFinal-Recipient: RFC822; <bob@example.net>\nAction: failed (bad address)\nStatus: 5.1.1 (unknown user)\n",
			Report{ReportingMTA: "mx.example", Recipients: []RecipientStatus{{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.1.1"}}}},
		{"no per-message block",
			"Final-Recipient: rfc822; bob@example.net\nAction: delivered\nStatus: 2.0.0\n",
			Report{Recipients: []RecipientStatus{{FinalRecipient: "bob@example.net", Action: Delivered, Status: "2.0.0"}}}},
		{"extra blank lines and extension blocks",
			"\n\nReporting-MTA: dns; mx.example\nX-Foo: bar\n\n\n\nX-Only: ext\n\nFinal-Recipient: rfc822; bob@example.net\nAction: delayed\nStatus: 4.0.0\nWill-Retry-Until: Fri, 5 Jan 2024 10:00:00 +0100\n\n\n",
			Report{ReportingMTA: "mx.example", Recipients: []RecipientStatus{{FinalRecipient: "bob@example.net", Action: Delayed, Status: "4.0.0",
				WillRetryUntil: time.Date(2024, 1, 5, 9, 0, 0, 0, time.UTC)}}}},
		{"folded with tabs",
			"Reporting-MTA: dns;\n\tmx.example\n\nFinal-Recipient:\n rfc822;\n\tbob@example.net\nAction: failed\nStatus: 5.0.0\nDiagnostic-Code: smtp;\n  550\n\t  go\n away\n",
			Report{ReportingMTA: "mx.example", Recipients: []RecipientStatus{{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.0.0", DiagnosticCode: "550 go away"}}}},
		{"utf-8 xtext address",
			"Reporting-MTA: dns; mx.example\n\nFinal-Recipient: utf-8; j\\x{F6}s\\x{E9}\\x{2b}x@example.net\nAction: failed\nStatus: 5.1.1\n",
			Report{ReportingMTA: "mx.example", Recipients: []RecipientStatus{{FinalRecipient: "jösé+x@example.net", Action: Failed, Status: "5.1.1"}}}},
		{"missing block separator",
			"Reporting-MTA: dns; mx.example\nFinal-Recipient: rfc822; bob@example.net\nAction: failed\nStatus: 5.1.1\n",
			Report{ReportingMTA: "mx.example", Recipients: []RecipientStatus{{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.1.1"}}}},
		{"diagnostic without type",
			"Reporting-MTA: dns; mx.example\n\nFinal-Recipient: rfc822; bob@example.net\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: 550 user unknown\n",
			Report{ReportingMTA: "mx.example", Recipients: []RecipientStatus{{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.1.1", DiagnosticCode: "550 user unknown"}}}},
		{"garbage lines are skipped",
			"Reporting-MTA: dns; mx.example\nthis is no field\n: no name\n\nFinal-Recipient: rfc822; bob@example.net\nAction: failed\nStatus: 5.1.1\nLast-Attempt-Date: not a date\n",
			Report{ReportingMTA: "mx.example", Recipients: []RecipientStatus{{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.1.1"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(strings.NewReader(report(tt.status)))
			require.NoError(t, err)
			assert.Equal(t, comparable(tt.want), comparable(p.Report))
			assert.Equal(t, "See below.", p.Text)
		})
	}
}

func TestParseNoReportType(t *testing.T) {
	raw := strings.Replace(report("Final-Recipient: rfc822; b@x\nAction: failed\nStatus: 5.0.0\n"), " report-type=delivery-status;", "", 1)
	p, err := Parse(strings.NewReader(raw))
	require.NoError(t, err)
	assert.Len(t, p.Report.Recipients, 1)
}

func TestParseAlternativeText(t *testing.T) {
	raw := "Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n" +
		"--B\nContent-Type: multipart/alternative; boundary=C\n\n" +
		"--C\nContent-Type: text/html\n\n<p>html</p>\n--C\nContent-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: quoted-printable\n\nplain =3D text\n--C--\n" +
		"--B\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822; b@x\nAction: failed\nStatus: 5.0.0\n--B--\n"
	p, err := Parse(strings.NewReader(raw))
	require.NoError(t, err)
	assert.Equal(t, "plain = text", p.Text)
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		want error
	}{
		{"plain message", "From: a@b\nSubject: hi\n\nhello\n", ErrNotReport},
		{"multipart/mixed", "Content-Type: multipart/mixed; boundary=B\n\n--B\n\nx\n--B--\n", ErrNotReport},
		{"disposition notification", strings.Replace(report("Final-Recipient: rfc822; b@x\n"), "delivery-status;", "disposition-notification;", 1), ErrNotReport},
		{"no status part", "Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n--B\nContent-Type: text/plain\n\nx\n--B--\n", ErrNotReport},
		{"no recipient", report("Reporting-MTA: dns; mx.example\n"), ErrMalformed},
		{"no boundary", "Content-Type: multipart/report; report-type=delivery-status\n\n--B\n", ErrMalformed},
		{"bad parameters", "Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\n\n--B\n", ErrMalformed},
		{"no boundary line", "Content-Type: multipart/report; boundary=B\n\njust text\n", ErrMalformed},
		{"bad header", " starts with a space\n\n", ErrMalformed},
		{"empty", "", ErrNotReport},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(strings.NewReader(tt.raw))
			assert.ErrorIs(t, err, tt.want)
			assert.Nil(t, p)
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 64 MiB")
	}
	head := "Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n" +
		"--B\r\nContent-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822; b@x\r\nAction: failed\r\nStatus: 5.0.0\r\n" +
		"--B\r\nContent-Type: message/rfc822\r\n\r\n"
	r := io.MultiReader(strings.NewReader(head), endless{})
	_, err := Parse(r)
	assert.ErrorIs(t, err, ErrTooLarge)

	t.Run("too many recipients", func(t *testing.T) {
		status := strings.Repeat("Final-Recipient: rfc822; b@x\nAction: failed\nStatus: 5.0.0\n\n", MaxParseRecipients+1)
		_, err := Parse(strings.NewReader(report(status)))
		assert.ErrorIs(t, err, ErrTooLarge)
	})
}

// endless reads as an endless body of short lines.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = "0123456789abcde\n"[i%16]
	}
	return len(p), nil
}
