package dsn

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"
	"time"

	"github.com/emersion/go-message"
)

// Limits of Parse.
const (
	// MaxParseSize is the longest message Parse reads.
	MaxParseSize = 64 << 20
	// MaxParseRecipients is the largest number of recipients Parse reads
	// from a delivery-status part.
	MaxParseRecipients = 10000
	// maxStatusPart is the longest delivery-status part Parse reads.
	maxStatusPart = 16 << 20
	// maxSubject is the longest subject, as for Build.
	maxSubject = maxWord
)

// Parse reads a delivery status notification: a multipart/report message
// whose report-type is delivery-status (RFC 6522, RFC 3464), or that has no
// report-type but a delivery-status part. It is the inverse of [Build] and
// reads the notifications of other servers too: field names in any case,
// folded fields, "rfc822;addr" with or without a space, optional fields
// missing, extension fields (ignored), LF line ends, the RFC 6533 global
// types.
//
// Values are returned in the sanitised form Build writes (see
// [RecipientStatus]); Parse is lenient about their syntax, so check the
// report with [Report.Validate] before relying on it.
//
// Parse reads at most [MaxParseSize] bytes; a longer message is refused
// with [ErrTooLarge]. A message that is not a delivery status notification
// gives an error wrapping [ErrNotReport]; one whose structure is broken, an
// error wrapping [ErrMalformed]. A broken part after the delivery-status
// part only ends the reading: what was read is returned.
func Parse(r io.Reader) (*Parsed, error) {
	lr := &limitReader{r: r, n: MaxParseSize}
	p, err := parse(lr)
	if lr.over {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrTooLarge, MaxParseSize)
	}
	return p, err
}

// limitReader reads at most n bytes from r; past that it fails and sets
// over.
type limitReader struct {
	r    io.Reader
	n    int64
	over bool
}

var errOver = errors.New("dsn: read limit reached")

func (l *limitReader) Read(p []byte) (int, error) {
	if l.over {
		return 0, errOver
	}
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	k, err := l.r.Read(p)
	if int64(k) > l.n {
		l.over = true
		return 0, errOver
	}
	l.n -= int64(k)
	return k, err
}

func parse(r io.Reader) (*Parsed, error) {
	e, err := message.Read(r)
	if e == nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	ctype := e.Header.Get("Content-Type")
	if ctype == "" {
		return nil, fmt.Errorf("%w: no Content-Type", ErrNotReport)
	}
	mt, params, err := mime.ParseMediaType(ctype)
	if mt != "multipart/report" {
		return nil, fmt.Errorf("%w: content type %q", ErrNotReport, ctype)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: Content-Type: %v", ErrMalformed, err)
	}
	if rt := strings.ToLower(params["report-type"]); rt != "" && rt != "delivery-status" {
		return nil, fmt.Errorf("%w: report type %q", ErrNotReport, rt)
	}
	mr := e.MultipartReader()
	if mr == nil || params["boundary"] == "" {
		return nil, fmt.Errorf("%w: multipart/report without boundary", ErrMalformed)
	}

	p := &Parsed{
		From:      headerAddress(e.Header.Get("From")),
		To:        headerAddress(e.Header.Get("To")),
		MessageID: messageID(e.Header.Get("Message-Id")),
		Date:      parseDate(e.Header.Get("Date")),
	}
	subject, _ := e.Header.Text("Subject")
	p.Subject = cleanText(subject, maxSubject)

	seenStatus, seenText, seenOriginal := false, false, false
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if part == nil {
			if seenStatus {
				break
			}
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		// err may report an unknown transfer encoding or charset: the body
		// is then read as it is.
		ct := partType(part)
		switch {
		case ct == "message/delivery-status" || ct == "message/global-delivery-status":
			if seenStatus {
				continue
			}
			body, err := io.ReadAll(io.LimitReader(part.Body, maxStatusPart+1))
			if err != nil {
				return nil, fmt.Errorf("%w: delivery-status part: %v", ErrMalformed, err)
			}
			if len(body) > maxStatusPart {
				return nil, fmt.Errorf("%w: delivery-status part longer than %d bytes", ErrTooLarge, maxStatusPart)
			}
			if p.Report, err = parseReport(body); err != nil {
				return nil, err
			}
			seenStatus = true
		case ct == "message/rfc822" || ct == "message/global" ||
			ct == "text/rfc822-headers" || ct == "message/global-headers" || ct == "message/rfc822-headers":
			if seenOriginal {
				continue
			}
			seenOriginal = true
			p.HeadersOnly = strings.HasSuffix(ct, "headers")
			p.Original, err = io.ReadAll(part.Body)
			if err != nil {
				if !seenStatus {
					return nil, fmt.Errorf("%w: original message part: %v", ErrMalformed, err)
				}
				return p, nil
			}
		case !seenText && !seenStatus:
			text, ok, err := findText(part, ct)
			if err != nil {
				return nil, fmt.Errorf("%w: text part: %v", ErrMalformed, err)
			}
			if ok {
				p.Text, seenText = text, true
			}
		}
	}
	if !seenStatus {
		return nil, fmt.Errorf("%w: no delivery-status part", ErrNotReport)
	}
	return p, nil
}

// partType returns the media type of e in lower case; text/plain if it has
// none.
func partType(e *message.Entity) string {
	v := e.Header.Get("Content-Type")
	if v == "" {
		return "text/plain"
	}
	mt, _, err := mime.ParseMediaType(v)
	if mt == "" && err != nil {
		mt, _, _ = strings.Cut(strings.ToLower(strings.TrimSpace(v)), ";")
	}
	return mt
}

// findText returns the text of a text/plain part, or of the first
// text/plain part of a multipart one (multipart/alternative, say).
func findText(e *message.Entity, ct string) (string, bool, error) {
	switch {
	case ct == "text/plain":
		b, err := io.ReadAll(e.Body)
		if err != nil {
			return "", false, err
		}
		return cleanBody(string(b)), true, nil
	case strings.HasPrefix(ct, "multipart/"):
		mr := e.MultipartReader()
		if mr == nil {
			return "", false, nil
		}
		for {
			part, err := mr.NextPart()
			if err == io.EOF || part == nil {
				return "", false, nil
			}
			if partType(part) == "text/plain" {
				return findText(part, "text/plain")
			}
		}
	}
	return "", false, nil
}

// headerAddress returns the first address of an address header field, or
// the cleaned field if it cannot be parsed.
func headerAddress(v string) string {
	if l, err := mail.ParseAddressList(v); err == nil && len(l) > 0 {
		return cleanText(l[0].Address, maxAddr)
	}
	if i := strings.LastIndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j >= 0 {
			return cleanText(v[i+1:i+j], maxAddr)
		}
	}
	// "addr (comment)"
	if i := strings.IndexByte(v, '('); i >= 0 {
		v = v[:i]
	}
	return cleanText(v, maxAddr)
}

// messageID returns a Message-ID without angle brackets.
func messageID(v string) string {
	v = cleanText(v, maxWord)
	if i := strings.IndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j >= 0 {
			return v[i+1 : i+j]
		}
	}
	return firstWord(v)
}

// parseDate parses an RFC 5322 date-time; the zero time if it cannot.
func parseDate(v string) time.Time {
	t, err := mail.ParseDate(cleanText(v, 200))
	if err != nil {
		return time.Time{}
	}
	return t
}

// A dsField is one field of a delivery-status block: its name in lower case
// and its unfolded value.
type dsField struct {
	name  string
	value []byte
}

// blocks calls f with the fields of each block of a delivery-status part:
// groups of header-like fields separated by empty lines. Lines that are not
// fields are skipped.
func blocks(body []byte, f func([]dsField) error) error {
	var cur []dsField
	last := -1 // index in cur of the field a continuation line continues
	flush := func() error {
		if len(cur) == 0 {
			return nil
		}
		err := f(cur)
		cur, last = cur[:0], -1
		return err
	}
	for len(body) > 0 {
		var line []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			line, body = body[:i], body[i+1:]
		} else {
			line, body = body, nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		switch {
		case len(bytes.TrimSpace(line)) == 0:
			if err := flush(); err != nil {
				return err
			}
		case line[0] == ' ' || line[0] == '\t':
			if last >= 0 {
				cur[last].value = append(append(cur[last].value, ' '), line...)
			}
		default:
			name, value, ok := bytes.Cut(line, []byte(":"))
			name = bytes.TrimSpace(name)
			if !ok || len(name) == 0 || bytes.ContainsAny(name, " \t") {
				last = -1
				continue
			}
			cur = append(cur, dsField{strings.ToLower(string(name)), bytes.Clone(value)})
			last = len(cur) - 1
		}
	}
	return flush()
}

// parseReport reads the fields of a delivery-status part.
func parseReport(body []byte) (Report, error) {
	var r Report
	perMessage := false
	err := blocks(body, func(fields []dsField) error {
		isMessage, isRecipient := false, false
		for _, f := range fields {
			switch f.name {
			case "reporting-mta", "original-envelope-id", "arrival-date", "received-from-mta", "dsn-gateway":
				isMessage = true
			case "final-recipient", "original-recipient", "action", "status":
				isRecipient = true
			}
		}
		if isMessage && !perMessage {
			perMessage = true
			for _, f := range fields {
				switch f.name {
				case "reporting-mta":
					r.ReportingMTA = cleanText(afterType(string(f.value)), maxHost)
				case "original-envelope-id":
					r.OriginalEnvelopeID = cleanText(string(f.value), maxEnvID)
				case "arrival-date":
					r.ArrivalDate = parseDate(string(f.value))
				}
			}
		}
		if !isRecipient {
			return nil
		}
		if len(r.Recipients) >= MaxParseRecipients {
			return fmt.Errorf("%w: more than %d recipients", ErrTooLarge, MaxParseRecipients)
		}
		var rs RecipientStatus
		for _, f := range fields {
			switch f.name {
			case "final-recipient":
				rs.FinalRecipient = parseTypedAddress(string(f.value))
			case "original-recipient":
				rs.OriginalRecipient = cleanOriginalRecipient(string(f.value))
			case "action":
				rs.Action = Action(strings.ToLower(firstWord(cleanText(string(f.value), maxType))))
			case "status":
				rs.Status = firstWord(cleanText(string(f.value), maxType))
			case "remote-mta":
				rs.RemoteMTA = cleanText(afterType(string(f.value)), maxHost)
			case "diagnostic-code":
				rs.DiagnosticType, rs.DiagnosticCode = parseDiagnostic(string(f.value))
			case "last-attempt-date":
				rs.LastAttemptDate = parseDate(string(f.value))
			case "will-retry-until":
				rs.WillRetryUntil = parseDate(string(f.value))
			}
		}
		r.Recipients = append(r.Recipients, rs)
		return nil
	})
	if err != nil {
		return r, err
	}
	if len(r.Recipients) == 0 {
		return r, fmt.Errorf("%w: no recipient in the delivery-status part", ErrMalformed)
	}
	return r, nil
}
