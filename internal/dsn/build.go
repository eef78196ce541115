package dsn

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"strings"
	"time"

	"github.com/emersion/go-message"
)

// Build writes the delivery status notification m to w: a multipart/report
// message (RFC 6522) with a text/plain explanation, a message/delivery-status
// part (RFC 3464) and, if m.Original is set, the original message or its
// header. Lines end in CRLF and none is longer than 998 octets.
//
// When an address, the reporting server's reply or the original header is
// not ASCII, the report uses the global types of RFC 6533:
// message/global-delivery-status, message/global and message/global-headers;
// the notification then needs 8BITMIME, and SMTPUTF8 if From or To is not
// ASCII.
//
// Build validates m first, and writes nothing if it is invalid: the error
// wraps [ErrInvalid]. Otherwise an error is one of w's.
func Build(w io.Writer, m *Message) error {
	p, err := m.prepare()
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	if err := p.write(bw); err != nil {
		return err
	}
	return bw.Flush()
}

// prepared is a validated Message in the form it is written.
type prepared struct {
	from, to, subject, messageID string
	date                         time.Time
	text                         string // "\n" line ends
	report                       Report
	original                     []byte // CRLF line ends; nil if none
	headersOnly                  bool
	originalCut                  bool // the whole message was over the cap
	global                       bool
}

func (m *Message) prepare() (*prepared, error) {
	if err := m.validateHeader(); err != nil {
		return nil, err
	}
	r, err := m.Report.normalize()
	if err != nil {
		return nil, err
	}
	p := &prepared{
		from:      m.From,
		to:        m.To,
		messageID: m.MessageID,
		date:      m.Date,
		report:    r,
	}
	if p.date.IsZero() {
		p.date = time.Now()
	}
	if !checkDate(p.date) {
		return nil, fmt.Errorf("%w: date %v out of range", ErrInvalid, m.Date)
	}
	var header []byte
	p.original, header, p.headersOnly, p.originalCut = returned(m.Original, m.HeadersOnly, m.MaxOriginal)
	p.global = r.nonASCII() || !isASCII(m.From) || !isASCII(m.To) || !isASCII(string(header))
	p.subject = cleanText(m.Subject, maxWord)
	if p.subject == "" {
		p.subject = defaultSubject(&r)
	}
	p.text = cleanBody(m.Text)
	if strings.TrimSpace(p.text) == "" {
		p.text = p.defaultText()
	}
	return p, nil
}

// returned returns what is returned of the original message raw: the whole
// message, or only its header when headersOnly is set or the whole is larger
// than maxOriginal (see Message.MaxOriginal), with CRLF line ends and lines
// of at most 998 octets. It also returns the header alone, and whether the
// whole message was too large.
func returned(raw []byte, headersOnly bool, maxOriginal int) (content, header []byte, hdrOnly, cut bool) {
	if len(raw) == 0 {
		return nil, nil, headersOnly, false
	}
	limit := maxOriginal
	if limit <= 0 {
		limit = DefaultMaxOriginal
	}
	if maxOriginal < 0 {
		headersOnly = true
	}
	h, body := splitHeader(raw)
	header = normalizeLines(h, true)
	if !headersOnly {
		if len(raw) <= limit {
			content = append(header, normalizeLines(body, false)...)
			if len(content) <= limit {
				return content, header[:len(header):len(header)], false, false
			}
		}
		cut = true
	}
	if len(header) > 0 && !hasCRLFSuffix(header) {
		header = append(header, '\r', '\n')
	}
	if len(header) > limit {
		header = header[:limit]
		if i := lastCRLF(header); i >= 0 {
			header = header[:i+2]
		}
	}
	if len(header) == 0 {
		return nil, nil, true, cut
	}
	return header, header, true, cut
}

func hasCRLFSuffix(b []byte) bool {
	return len(b) >= 2 && b[len(b)-2] == '\r' && b[len(b)-1] == '\n'
}

func lastCRLF(b []byte) int {
	for i := len(b) - 2; i >= 0; i-- {
		if b[i] == '\r' && b[i+1] == '\n' {
			return i
		}
	}
	return -1
}

// splitHeader splits a message at its first empty line: the header section,
// every line with its line end, and the rest, starting with the empty line.
// CRLF, LF and CR all end a line. A message without an empty line is all
// header.
func splitHeader(raw []byte) (header, rest []byte) {
	for i := 0; i < len(raw); {
		j := i
		for j < len(raw) && raw[j] != '\r' && raw[j] != '\n' {
			j++
		}
		if j == i {
			return raw[:i], raw[i:]
		}
		if j < len(raw) {
			if raw[j] == '\r' && j+1 < len(raw) && raw[j+1] == '\n' {
				j++
			}
			j++
		}
		i = j
	}
	return raw, nil
}

// normalizeLines returns b with CRLF line ends (a bare CR or LF becomes
// CRLF) and lines of at most maxLine octets: longer lines are broken before
// a UTF-8 sequence that would not fit, with a space starting the next line
// when header is set, so that it continues the same field.
func normalizeLines(b []byte, header bool) []byte {
	out := make([]byte, 0, len(b)+len(b)/64+2)
	line := 0
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch c {
		case '\r':
			if i+1 < len(b) && b[i+1] == '\n' {
				i++
			}
			fallthrough
		case '\n':
			out = append(out, '\r', '\n')
			line = 0
			continue
		}
		if line+seqLen(c) > maxLine {
			out = append(out, '\r', '\n')
			line = 0
			if header {
				out = append(out, ' ')
				line = 1
			}
		}
		out = append(out, c)
		line++
	}
	return out
}

// seqLen returns the length of the UTF-8 sequence that c starts, or 1 if c
// starts none.
func seqLen(c byte) int {
	switch {
	case c < 0xc0:
		return 1
	case c < 0xe0:
		return 2
	case c < 0xf0:
		return 3
	}
	return 4
}

// newHeader returns a header with the fields kv (name, value, name, ...) in
// that order. go-message writes the field added last first.
func newHeader(kv ...string) message.Header {
	var h message.Header
	for i := len(kv) - 2; i >= 0; i -= 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// newBoundary returns a multipart boundary found in none of the parts.
// "=_" cannot occur in quoted-printable text.
func (p *prepared) newBoundary() string {
	for {
		var r [16]byte
		_, _ = rand.Read(r[:])
		b := "dsn=_" + hex.EncodeToString(r[:])
		if !strings.Contains(p.text, b) && !bytes.Contains(p.original, []byte(b)) {
			return b
		}
	}
}

// transferEncoding returns the Content-Transfer-Encoding for a message/*
// part with content b, which is already in CRLF lines of at most 998 octets.
func transferEncoding(b []byte) string {
	enc := "7bit"
	for _, c := range b {
		switch {
		case c == 0:
			return "binary"
		case c >= 0x80:
			enc = "8bit"
		}
	}
	return enc
}

func (p *prepared) write(w io.Writer) error {
	subject := p.subject
	if !isASCII(subject) {
		subject = mime.QEncoding.Encode("utf-8", subject)
	}
	h := newHeader(
		"Date", formatDate(p.date),
		"From", "Mail Delivery System <"+p.from+">",
		"To", "<"+p.to+">",
		"Subject", subject,
		"Message-Id", "<"+p.messageID+">",
		"Auto-Submitted", "auto-replied",
		"MIME-Version", "1.0",
		"Content-Type", mime.FormatMediaType("multipart/report", map[string]string{
			"report-type": "delivery-status",
			"boundary":    p.newBoundary(),
		}),
	)
	mw, err := message.CreateWriter(w, h)
	if err != nil {
		return err
	}

	text := strings.ReplaceAll(p.text, "\n", "\r\n")
	enc := "7bit"
	if !isASCII(text) || longestLine(text) > maxLine {
		enc = "quoted-printable"
	}
	if err := writePart(mw, newHeader(
		"Content-Type", "text/plain; charset=utf-8",
		"Content-Description", "Notification",
		"Content-Transfer-Encoding", enc,
	), []byte(text)); err != nil {
		return err
	}

	var fw fieldWriter
	writeReport(&fw, &p.report)
	status := []byte(fw.String())
	ct := "message/delivery-status"
	if p.global {
		ct = "message/global-delivery-status"
	}
	if err := writePart(mw, newHeader(
		"Content-Type", ct,
		"Content-Description", "Delivery report",
		"Content-Transfer-Encoding", transferEncoding(status),
	), status); err != nil {
		return err
	}

	if p.original != nil {
		var ct, desc string
		switch {
		case p.headersOnly && p.global:
			ct, desc = "message/global-headers", "Original message header"
		case p.headersOnly:
			ct, desc = "text/rfc822-headers", "Original message header"
		case p.global:
			ct, desc = "message/global", "Original message"
		default:
			ct, desc = "message/rfc822", "Original message"
		}
		if err := writePart(mw, newHeader(
			"Content-Type", ct,
			"Content-Description", desc,
			"Content-Transfer-Encoding", transferEncoding(p.original),
		), p.original); err != nil {
			return err
		}
	}
	return mw.Close()
}

func writePart(mw *message.Writer, h message.Header, body []byte) error {
	pw, err := mw.CreatePart(h)
	if err != nil {
		return err
	}
	if _, err := pw.Write(body); err != nil {
		return err
	}
	return pw.Close()
}

func longestLine(s string) int {
	n := 0
	for line := range strings.SplitSeq(s, "\n") {
		n = max(n, len(strings.TrimSuffix(line, "\r")))
	}
	return n
}
