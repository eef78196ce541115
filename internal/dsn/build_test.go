package dsn

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRoundTrip(t *testing.T) {
	retry := t0.Add(5 * 24 * time.Hour)
	last := t0.Add(-time.Minute).In(time.FixedZone("", -5*3600))
	tests := []struct {
		name        string
		envID       string
		rcpts       []RecipientStatus
		wantSubject string
	}{
		{
			name:  "failed",
			envID: "QQ314159",
			rcpts: []RecipientStatus{
				{FinalRecipient: "bob@example.net", OriginalRecipient: "rfc822;bob@example.net", Action: Failed, Status: "5.1.1",
					RemoteMTA: "mx1.example.net", DiagnosticCode: "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown in virtual mailbox table",
					LastAttemptDate: last},
				{FinalRecipient: "carol@example.org", Action: Failed, Status: "5.7.1", RemoteMTA: "mx.example.org",
					DiagnosticCode: "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"},
				{FinalRecipient: "dave@example.com", Action: Failed, Status: "4.4.7",
					DiagnosticType: "X-Resilmail", DiagnosticCode: "connect to mx.example.com[192.0.2.7]:25: Connection refused"},
			},
			wantSubject: "Undelivered Mail Returned to Sender",
		},
		{
			name: "delayed",
			rcpts: []RecipientStatus{
				{FinalRecipient: "bob@example.net", Action: Delayed, Status: "4.4.1", RemoteMTA: "mx1.example.net",
					DiagnosticCode: "421 4.4.1 try again later", LastAttemptDate: last, WillRetryUntil: retry},
				{FinalRecipient: "carol@example.org", OriginalRecipient: "rfc822;Carol@Example.ORG", Action: Delayed, Status: "4.2.2",
					WillRetryUntil: retry},
			},
			wantSubject: "Delayed Mail (still being retried)",
		},
		{
			name:  "delivered",
			envID: "id+2Bwith+3Dxtext",
			rcpts: []RecipientStatus{
				{FinalRecipient: "bob@example.net", OriginalRecipient: "rfc822;bob@example.net", Action: Delivered, Status: "2.0.0",
					RemoteMTA: "mx1.example.net", DiagnosticCode: "250 2.0.0 Ok: queued as 4Q1x2"},
				{FinalRecipient: "list@example.org", Action: Expanded, Status: "2.1.5"},
				{FinalRecipient: "carol@legacy.example", Action: Relayed, Status: "2.0.0", RemoteMTA: "legacy.example"},
			},
			wantSubject: "Successful Mail Delivery Report",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testMessage(tt.rcpts...)
			m.Report.OriginalEnvelopeID = tt.envID
			m.Original = []byte(testOriginal)
			m.HeadersOnly = true
			raw := build(t, m)

			h, parts := structure(t, raw)
			assert.Equal(t, "auto-replied", h.Get("Auto-Submitted"))
			assert.Equal(t, "1.0", h.Get("MIME-Version"))
			assert.Equal(t, "<dsn.1@relay.example.org>", h.Get("Message-Id"))
			require.Len(t, parts, 3)
			assert.Equal(t, "text/plain", parts[0].Type)
			assert.Equal(t, "message/delivery-status", parts[1].Type)
			assert.Equal(t, "text/rfc822-headers", parts[2].Type)

			blocks := statusFields(t, parts[1].Body)
			require.Len(t, blocks, 1+len(tt.rcpts))
			if tt.envID != "" {
				assert.Equal(t, []string{"Original-Envelope-Id", "Reporting-MTA", "Arrival-Date"}, blocks[0])
			} else {
				assert.Equal(t, []string{"Reporting-MTA", "Arrival-Date"}, blocks[0])
			}
			for i, rs := range tt.rcpts {
				assert.Equal(t, rs.OriginalRecipient != "", blocks[1+i][0] == "Original-Recipient")
			}

			p, err := Parse(bytes.NewReader(raw))
			require.NoError(t, err)
			assert.Equal(t, "MAILER-DAEMON@relay.example.org", p.From)
			assert.Equal(t, "alice@example.com", p.To)
			assert.Equal(t, tt.wantSubject, p.Subject)
			assert.Equal(t, "dsn.1@relay.example.org", p.MessageID)
			assert.True(t, p.Date.Equal(t0))
			assert.True(t, p.HeadersOnly)
			assert.Equal(t, testOriginal[:strings.Index(testOriginal, "\r\n\r\n")+2], string(p.Original))
			assert.Equal(t, comparable(m.Report), comparable(p.Report))
			for _, rs := range tt.rcpts {
				assert.Contains(t, p.Text, "<"+rs.FinalRecipient+">: "+string(rs.Action))
			}
		})
	}
}

func TestReturnedOriginal(t *testing.T) {
	big := testOriginal + strings.Repeat("0123456789abcdef\r\n", 100)
	header := testOriginal[:strings.Index(testOriginal, "\r\n\r\n")+2]
	tests := []struct {
		name        string
		original    string
		headersOnly bool
		max         int
		wantType    string // "" for no part
		want        string
	}{
		{"full", testOriginal, false, 0, "message/rfc822", testOriginal},
		{"headers", testOriginal, true, 0, "text/rfc822-headers", header},
		{"none", "", false, 0, "", ""},
		{"no separator is all header", "Subject: x\r\nFrom: a@b", true, 0, "text/rfc822-headers", "Subject: x\r\nFrom: a@b\r\n"},
		{"no separator, full", "Subject: x\r\nFrom: a@b", false, 0, "message/rfc822", "Subject: x\r\nFrom: a@b"},
		{"empty header", "\r\nbody only\r\n", true, 0, "", ""},
		{"bare LF", "Subject: x\nFrom: a@b\n\nbody\n", false, 0, "message/rfc822", "Subject: x\r\nFrom: a@b\r\n\r\nbody\r\n"},
		{"bare CR", "Subject: x\rFrom: a@b\r\rbody", false, 0, "message/rfc822", "Subject: x\r\nFrom: a@b\r\n\r\nbody"},
		{"too large falls back to header", big, false, len(big) - 1, "text/rfc822-headers", header},
		{"just fits", big, false, len(big), "message/rfc822", big},
		{"negative max", testOriginal, false, -1, "text/rfc822-headers", header},
		{"header cut at a line", testOriginal, true, 40, "text/rfc822-headers", "Return-Path: <alice@example.com>\r\n"},
		{"long body line broken", "S: x\r\n\r\n" + strings.Repeat("b", 1000), false, 0, "message/rfc822",
			"S: x\r\n\r\n" + strings.Repeat("b", 998) + "\r\nbb"},
		{"long header line folded", "S: " + strings.Repeat("h", 1000) + "\r\n\r\nbody", true, 0, "text/rfc822-headers",
			"S: " + strings.Repeat("h", 995) + "\r\n " + strings.Repeat("h", 5) + "\r\n"},
		{"8bit body stays rfc822", "Subject: x\r\n\r\ncaf\xc3\xa9\r\n", false, 0, "message/rfc822", "Subject: x\r\n\r\ncaf\xc3\xa9\r\n"},
		{"utf-8 header is global", "Subject: caf\xc3\xa9\r\n\r\nbody\r\n", false, 0, "message/global", "Subject: caf\xc3\xa9\r\n\r\nbody\r\n"},
		{"utf-8 header only is global", "Subject: caf\xc3\xa9\r\n\r\nbody\r\n", true, 0, "message/global-headers", "Subject: caf\xc3\xa9\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testMessage(RecipientStatus{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.1.1"})
			m.Original = []byte(tt.original)
			m.HeadersOnly = tt.headersOnly
			m.MaxOriginal = tt.max
			raw := build(t, m)
			_, parts := structure(t, raw)
			p, err := Parse(bytes.NewReader(raw))
			require.NoError(t, err)
			if tt.wantType == "" {
				assert.Len(t, parts, 2)
				assert.Nil(t, p.Original)
				return
			}
			require.Len(t, parts, 3)
			assert.Equal(t, tt.wantType, parts[2].Type)
			assert.Equal(t, tt.want, string(parts[2].Body))
			assert.Equal(t, tt.want, string(p.Original))
			assert.Equal(t, strings.HasSuffix(tt.wantType, "headers"), p.HeadersOnly)
			if tt.max > 0 && tt.wantType == "text/rfc822-headers" && !tt.headersOnly {
				assert.Contains(t, p.Text, "too large")
			}
		})
	}
}

func TestGlobal(t *testing.T) {
	m := testMessage(
		RecipientStatus{FinalRecipient: "jösé+tag=x@exämple.net", OriginalRecipient: "utf-8;jösé+tag=x@exämple.net",
			Action: Failed, Status: "5.1.1", RemoteMTA: "mx.exämple.net", DiagnosticCode: "550 5.1.1 unknown user jösé"},
		RecipientStatus{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.2.2"},
	)
	m.Original = []byte(testOriginal)
	m.HeadersOnly = true
	raw := build(t, m)
	_, parts := structure(t, raw)
	require.Len(t, parts, 3)
	assert.Equal(t, "message/global-delivery-status", parts[1].Type)
	assert.Equal(t, "8bit", parts[1].Header.Get("Content-Transfer-Encoding"))
	assert.Equal(t, "message/global-headers", parts[2].Type)
	assert.Contains(t, string(parts[1].Body), "Final-Recipient: utf-8; jösé\\x{2B}tag\\x{3D}x@exämple.net\r\n")
	assert.Contains(t, string(parts[1].Body), "Final-Recipient: rfc822; bob@example.net\r\n")
	assert.Contains(t, string(parts[1].Body), "Original-Recipient: utf-8; jösé+tag=x@exämple.net\r\n")

	p, err := Parse(bytes.NewReader(raw))
	require.NoError(t, err)
	assert.Equal(t, comparable(m.Report), comparable(p.Report))

	t.Run("non-ASCII sender", func(t *testing.T) {
		m := testMessage(RecipientStatus{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.1.1"})
		m.To = "älice@example.com"
		raw := build(t, m)
		_, parts := structure(t, raw)
		assert.Equal(t, "message/global-delivery-status", parts[1].Type)
		p, err := Parse(bytes.NewReader(raw))
		require.NoError(t, err)
		assert.Equal(t, "älice@example.com", p.To)
	})
	t.Run("ASCII stays message/delivery-status", func(t *testing.T) {
		m := testMessage(RecipientStatus{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.1.1"})
		_, parts := structure(t, build(t, m))
		assert.Equal(t, "message/delivery-status", parts[1].Type)
		assert.Equal(t, "7bit", parts[1].Header.Get("Content-Transfer-Encoding"))
	})
}

func TestInjection(t *testing.T) {
	evil := "\r\nBcc: victim@example.com\r\n\r\n--boundary\r\nContent-Type: text/html\r\n\x00\x1b[31m\x7f"
	m := testMessage(RecipientStatus{
		FinalRecipient:    "bob@example.net" + evil,
		OriginalRecipient: "rfc822;bob@example.net" + evil,
		Action:            Failed,
		Status:            "5.1.1",
		RemoteMTA:         "mx.example.net" + evil,
		DiagnosticCode:    "550 5.1.1 no" + evil + strings.Repeat(" long", 500) + strings.Repeat("x", 3000),
	})
	m.Report.OriginalEnvelopeID = "env" + evil
	m.Report.ReportingMTA = "relay.example.org" + evil
	m.Subject = "Returned" + evil
	m.Text = "Dear sender,\r\n--dsn=_\r\n" + evil + "\n" + strings.Repeat("y", 2000) + "\n"
	m.Original = []byte(testOriginal)
	raw := build(t, m)

	h, parts := structure(t, raw)
	assert.Empty(t, h.Get("Bcc"))
	for k := range h {
		assert.Contains(t, []string{"Date", "From", "To", "Subject", "Message-Id", "Auto-Submitted", "Mime-Version", "Content-Type"}, k)
	}
	require.Len(t, parts, 3, "the text must not add or break a part")
	for _, p := range parts {
		for k := range p.Header {
			assert.Contains(t, []string{"Content-Type", "Content-Description", "Content-Transfer-Encoding"}, k)
		}
	}
	blocks := statusFields(t, parts[1].Body)
	assert.Equal(t, [][]string{
		{"Original-Envelope-Id", "Reporting-MTA", "Arrival-Date"},
		{"Original-Recipient", "Final-Recipient", "Action", "Status", "Remote-MTA", "Diagnostic-Code"},
	}, blocks)

	p, err := Parse(bytes.NewReader(raw))
	require.NoError(t, err)
	rs := p.Report.Recipients[0]
	assert.Equal(t, "bob@example.net Bcc: victim@example.com --boundary Content-Type: text/html [31m", rs.FinalRecipient)
	assert.Equal(t, "mx.example.net Bcc: victim@example.com --boundary Content-Type: text/html [31m", rs.RemoteMTA)
	assert.True(t, strings.HasPrefix(rs.DiagnosticCode, "550 5.1.1 no Bcc: victim@example.com --boundary"))
	assert.LessOrEqual(t, len(rs.DiagnosticCode), maxDiag)
	assert.Equal(t, "env Bcc: victim@example.com --boundary Content-Type: text/html [31m", p.Report.OriginalEnvelopeID)
	assert.Equal(t, "Returned Bcc: victim@example.com --boundary Content-Type: text/html [31m", p.Subject)
	assert.Contains(t, p.Text, "Dear sender,\n--dsn=_\n")
	assert.Equal(t, comparable(mustNormalize(t, &m.Report)), comparable(p.Report))
}

func mustNormalize(t testing.TB, r *Report) Report {
	t.Helper()
	n, err := r.normalize()
	require.NoError(t, err)
	return n
}

func TestBuildErrors(t *testing.T) {
	ok := RecipientStatus{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.1.1"}
	tests := []struct {
		name   string
		modify func(m *Message)
		want   string
	}{
		{"no recipient", func(m *Message) { m.Report.Recipients = nil }, "no recipient"},
		{"no Message-ID", func(m *Message) { m.MessageID = "" }, "no Message-ID"},
		{"Message-ID with brackets", func(m *Message) { m.MessageID = "<a@b>" }, "forbidden character"},
		{"Message-ID with CRLF", func(m *Message) { m.MessageID = "a@b\r\nBcc: x" }, "forbidden character"},
		{"Message-ID without @", func(m *Message) { m.MessageID = "abc" }, "not left@right"},
		{"no From", func(m *Message) { m.From = "" }, "From"},
		{"To with CRLF", func(m *Message) { m.To = "a@b.example\r\nBcc: x@y" }, "To"},
		{"no reporting MTA", func(m *Message) { m.Report.ReportingMTA = " \r\n" }, "no reporting MTA"},
		{"no final recipient", func(m *Message) { m.Report.Recipients[0].FinalRecipient = "<>" }, "no final recipient"},
		{"unknown action", func(m *Message) { m.Report.Recipients[0].Action = "bounced" }, "unknown action"},
		{"upper-case action", func(m *Message) { m.Report.Recipients[0].Action = "FAILED" }, "unknown action"},
		{"no status", func(m *Message) { m.Report.Recipients[0].Status = "" }, "not an RFC 3463 code"},
		{"bad class", func(m *Message) { m.Report.Recipients[0].Status = "3.1.1" }, "not an RFC 3463 code"},
		{"two parts", func(m *Message) { m.Report.Recipients[0].Status = "5.1" }, "not an RFC 3463 code"},
		{"four digits", func(m *Message) { m.Report.Recipients[0].Status = "5.1000.1" }, "not an RFC 3463 code"},
		{"trailing text", func(m *Message) { m.Report.Recipients[0].Status = "5.1.1 bad" }, "not an RFC 3463 code"},
		{"delayed with 5", func(m *Message) { m.Report.Recipients[0].Action = Delayed }, "does not fit"},
		{"delivered with 5", func(m *Message) { m.Report.Recipients[0].Action = Delivered }, "does not fit"},
		{"failed with 2", func(m *Message) { m.Report.Recipients[0].Status = "2.0.0" }, "does not fit"},
		{"bad diagnostic type", func(m *Message) {
			m.Report.Recipients[0].DiagnosticType = "x y"
			m.Report.Recipients[0].DiagnosticCode = "z"
		}, "not an atom"},
		{"date out of range", func(m *Message) {
			m.Report.Recipients[0].LastAttemptDate = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
		}, "out of range"},
		{"second recipient", func(m *Message) { m.Report.Recipients = append(m.Report.Recipients, RecipientStatus{}) }, "recipient 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testMessage(ok)
			tt.modify(m)
			var b bytes.Buffer
			err := Build(&b, m)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tt.want)
			assert.Zero(t, b.Len(), "nothing is written")
			assert.ErrorIs(t, m.Validate(), ErrInvalid)
		})
	}
}

func TestBuildDefaults(t *testing.T) {
	m := testMessage(RecipientStatus{FinalRecipient: "<bob@example.net>", Action: Failed, Status: "5.1.1",
		DiagnosticType: "SMTP", DiagnosticCode: "550 no"})
	m.Date = time.Time{}
	m.Subject = "Custom subject: naïve café"
	m.Text = "Sorry.\n"
	before := time.Now().Add(-time.Second)
	p, err := Parse(bytes.NewReader(build(t, m)))
	require.NoError(t, err)
	assert.WithinRange(t, p.Date, before, time.Now().Add(time.Second))
	assert.Equal(t, "Custom subject: naïve café", p.Subject)
	assert.Equal(t, "Sorry.\n", p.Text)
	assert.Equal(t, "bob@example.net", p.Report.Recipients[0].FinalRecipient)
	assert.Empty(t, p.Report.Recipients[0].DiagnosticType, "smtp is the default type")
	assert.Nil(t, p.Original)
}

func TestFromDeliveryError(t *testing.T) {
	tests := []struct {
		name   string
		de     *resilmail.DeliveryError
		action Action
		want   RecipientStatus
	}{
		{"permanent reply", &resilmail.DeliveryError{Recipient: "bob@example.net", Host: "mx.example.net", Code: 550, EnhancedCode: "5.1.1", Message: "no such user", Permanent: true},
			Failed, RecipientStatus{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.1.1", RemoteMTA: "mx.example.net", DiagnosticCode: "550 5.1.1 no such user"}},
		{"permanent without enhanced code", &resilmail.DeliveryError{Recipient: "bob@example.net", Code: 554, Message: "go away", Permanent: true},
			Failed, RecipientStatus{FinalRecipient: "bob@example.net", Action: Failed, Status: "5.0.0", DiagnosticCode: "554 go away"}},
		{"expired", &resilmail.DeliveryError{Recipient: "bob@example.net", Host: "mx.example.net", Command: "connect", Message: "connection refused"},
			Failed, RecipientStatus{FinalRecipient: "bob@example.net", Action: Failed, Status: "4.4.7", RemoteMTA: "mx.example.net", DiagnosticType: "X-Resilmail", DiagnosticCode: "connection refused"}},
		{"expired keeps a 4 code", &resilmail.DeliveryError{Recipient: "bob@example.net", Code: 451, EnhancedCode: "4.3.0", Message: "later"},
			Failed, RecipientStatus{FinalRecipient: "bob@example.net", Action: Failed, Status: "4.3.0", DiagnosticCode: "451 4.3.0 later"}},
		{"delayed", &resilmail.DeliveryError{Recipient: "bob@example.net", Code: 421, Message: "busy", Err: errors.New("x")},
			Delayed, RecipientStatus{FinalRecipient: "bob@example.net", Action: Delayed, Status: "4.0.0", DiagnosticCode: "421 busy"}},
		{"delayed ignores a 5 code", &resilmail.DeliveryError{Recipient: "bob@example.net", EnhancedCode: "5.1.1"},
			Delayed, RecipientStatus{FinalRecipient: "bob@example.net", Action: Delayed, Status: "4.0.0"}},
		{"nil", nil, Delivered, RecipientStatus{Action: Delivered, Status: "2.0.0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, FromDeliveryError(tt.de, tt.action))
		})
	}
}

func BenchmarkBuild(b *testing.B) {
	original := []byte(testOriginal + strings.Repeat("The quick brown fox jumps over the lazy dog 0123456789.\r\n", 4096/57))
	m := testMessage(
		RecipientStatus{FinalRecipient: "bob@example.net", OriginalRecipient: "rfc822;bob@example.net", Action: Failed, Status: "5.1.1",
			RemoteMTA: "mx1.example.net", DiagnosticCode: "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown"},
		RecipientStatus{FinalRecipient: "carol@example.org", Action: Failed, Status: "5.2.2", RemoteMTA: "mx.example.org",
			DiagnosticCode: "552 5.2.2 mailbox full"},
		RecipientStatus{FinalRecipient: "dave@example.com", Action: Failed, Status: "4.4.7",
			DiagnosticType: "X-Resilmail", DiagnosticCode: "connect to mx.example.com[192.0.2.7]:25: Connection refused"},
	)
	m.Original = original
	var buf bytes.Buffer
	b.SetBytes(int64(len(original)))
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		if err := Build(&buf, m); err != nil {
			b.Fatal(err)
		}
	}
}
