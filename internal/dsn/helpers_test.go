package dsn

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// t0 is the time the tests build notifications at.
var t0 = time.Date(2024, 1, 2, 10, 0, 0, 0, time.UTC)

// testMessage returns a valid message reporting on rcpts.
func testMessage(rcpts ...RecipientStatus) *Message {
	return &Message{
		From:      "MAILER-DAEMON@relay.example.org",
		To:        "alice@example.com",
		MessageID: "dsn.1@relay.example.org",
		Date:      t0,
		Report: Report{
			ReportingMTA: "relay.example.org",
			ArrivalDate:  t0.Add(-2 * time.Minute),
			Recipients:   rcpts,
		},
	}
}

const testOriginal = "Return-Path: <alice@example.com>\r\n" +
	"From: Alice <alice@example.com>\r\n" +
	"To: bob@example.net\r\n" +
	"Subject: lunch\r\n" +
	"Message-ID: <m1@example.com>\r\n" +
	"\r\n" +
	"Shall we have lunch?\r\n" +
	"\r\n" +
	"Alice\r\n"

// build builds m and fails the test if it cannot.
func build(t testing.TB, m *Message) []byte {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, Build(&b, m))
	return b.Bytes()
}

// comparable returns r with its times as UTC seconds, so that reports
// compare with assert.Equal whatever the zones.
func comparable(r Report) Report {
	r.ArrivalDate = utc(r.ArrivalDate)
	r.Recipients = append([]RecipientStatus(nil), r.Recipients...)
	for i := range r.Recipients {
		rs := &r.Recipients[i]
		rs.LastAttemptDate = utc(rs.LastAttemptDate)
		rs.WillRetryUntil = utc(rs.WillRetryUntil)
	}
	return r
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return time.Unix(t.Unix(), 0).UTC()
}

// A rawPart is a part of a built notification, read with the standard
// library as a cross-check of go-message.
type rawPart struct {
	Type   string // media type, lower case
	Header textproto.MIMEHeader
	Body   []byte // not decoded
}

// structure reads a built notification with the standard library: its
// header and its parts. It checks that every line ends in CRLF and is at
// most 998 octets long.
func structure(t testing.TB, raw []byte) (mail.Header, []rawPart) {
	t.Helper()
	checkLines(t, raw)
	msg, err := mail.ReadMessage(bytes.NewReader(raw))
	require.NoError(t, err)
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	require.NoError(t, err)
	require.Equal(t, "multipart/report", mt)
	require.Equal(t, "delivery-status", params["report-type"])
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var parts []rawPart
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		body, err := io.ReadAll(p)
		require.NoError(t, err)
		pt, _, err := mime.ParseMediaType(p.Header.Get("Content-Type"))
		require.NoError(t, err)
		parts = append(parts, rawPart{Type: pt, Header: p.Header, Body: body})
	}
	return msg.Header, parts
}

// checkLines checks that every line of raw ends in CRLF and has at most 998
// octets.
func checkLines(t testing.TB, raw []byte) {
	t.Helper()
	for i, line := range bytes.SplitAfter(raw, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		require.True(t, bytes.HasSuffix(line, []byte("\r\n")), "line %d does not end in CRLF: %q", i+1, line)
		body := line[:len(line)-2]
		require.NotContains(t, string(body), "\r", "line %d has a bare CR", i+1)
		require.LessOrEqual(t, len(body), maxLine, "line %d is too long", i+1)
	}
}

// statusFields returns the names of the fields of each block of a
// delivery-status part, checking the syntax of every line.
func statusFields(t testing.TB, body []byte) [][]string {
	t.Helper()
	var blocks [][]string
	var cur []string
	for _, line := range strings.Split(strings.TrimSuffix(string(body), "\r\n"), "\r\n") {
		switch {
		case line == "":
			if cur != nil {
				blocks = append(blocks, cur)
			}
			cur = nil
		case line[0] == ' ':
			require.NotEmpty(t, cur, "continuation line %q starts a block", line)
		default:
			name, _, ok := strings.Cut(line, ":")
			require.True(t, ok, "line %q is not a field", line)
			cur = append(cur, name)
		}
	}
	if cur != nil {
		blocks = append(blocks, cur)
	}
	return blocks
}
