package dsn

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits on the values of the delivery-status fields. With the longest field
// name and the longest type prefix, a word of maxWord octets stays well
// under the 998 octets a line may have (RFC 5322 §2.1.1); longer values are
// folded at spaces.
const (
	maxLine  = 998  // longest line, CRLF excluded
	foldAt   = 78   // lines are folded at a space before this length
	maxWord  = 900  // longest run of non-space octets in a value
	maxAddr  = 900  // longest address or ORCPT, as written
	maxHost  = 255  // longest host name
	maxEnvID = 900  // longest envelope id
	maxDiag  = 2048 // longest diagnostic
	maxType  = 64   // longest address or diagnostic type
)

// isBlank reports whether r is cut from field values: a control character
// (C0, DEL, C1), or white space, Unicode line separators included.
func isBlank(r rune) bool {
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || unicode.IsSpace(r)
}

// cleanText returns s as the value of a one-line field: control characters
// and white space runs become one space, invalid UTF-8 becomes '?', leading
// and trailing spaces go, words longer than maxWord octets are split with a
// space, and the result is cut, at a character boundary, to at most limit
// octets. It is idempotent: cleanText(cleanText(s, n), n) == cleanText(s, n).
func cleanText(s string, limit int) string {
	var b strings.Builder
	b.Grow(min(len(s), limit))
	word := 0 // octets since the last space
	space := false
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		i += n
		if r == utf8.RuneError && n == 1 {
			r = '?'
		}
		if isBlank(r) {
			space = b.Len() > 0
			continue
		}
		rn := utf8.RuneLen(r)
		if space || word+rn > maxWord {
			if b.Len()+1+rn > limit {
				break
			}
			b.WriteByte(' ')
			word, space = 0, false
		}
		if b.Len()+rn > limit {
			break
		}
		b.WriteRune(r)
		word += rn
	}
	return b.String()
}

// cleanBody returns s as the text of a text/plain part: "\n" line ends,
// control characters other than tab and line ends replaced by spaces,
// invalid UTF-8 replaced by '?'.
func cleanBody(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		i += n
		switch {
		case r == utf8.RuneError && n == 1:
			b.WriteByte('?')
		case r == '\r':
			b.WriteByte('\n')
			if i < len(s) && s[i] == '\n' {
				i++
			}
		case r == '\n', r == '\t':
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f):
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// isAtom reports whether s can be an address or diagnostic type: 1 to
// maxType letters, digits, '-', '_' or '.'.
func isAtom(s string) bool {
	if s == "" || len(s) > maxType {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// stripAngles removes spaces and enclosing angle brackets around an
// address: " <<a@b>> " becomes "a@b".
func stripAngles(s string) string {
	for {
		s = strings.Trim(s, " ")
		if len(s) < 2 || s[0] != '<' || s[len(s)-1] != '>' {
			return s
		}
		s = s[1 : len(s)-1]
	}
}

// cleanAddress returns the canonical form of a Final-Recipient address: a
// clean text without enclosing angle brackets, short enough that its written
// form (see typedAddress) fits in maxAddr octets.
func cleanAddress(s string) string {
	s = stripAngles(cleanText(s, maxDiag))
	if isASCII(s) {
		if len(s) > maxAddr {
			s = s[:maxAddr]
		}
	} else {
		n := 0
		for i, r := range s {
			n += escapedLen(r)
			if n > maxAddr {
				s = s[:i]
				break
			}
		}
	}
	return stripAngles(s)
}

// escapedLen is the length of r in the utf-8-addr-unitext form written by
// typedAddress.
func escapedLen(r rune) int {
	if needsEscape(r) {
		return len(`\x{HH}`)
	}
	return utf8.RuneLen(r)
}

// needsEscape reports whether r is not a QUCHAR of RFC 6533 §3: it is an
// ASCII control, a space, '+', '=' or '\'.
func needsEscape(r rune) bool {
	return r <= ' ' || r == 0x7f || r == '+' || r == '=' || r == '\\'
}

// typedAddress returns the value of a Final-Recipient field for the clean
// address addr: "rfc822; addr" when it is ASCII, otherwise "utf-8; addr" in
// the utf-8-addr-unitext form of RFC 6533 §3.
func typedAddress(addr string) string {
	if isASCII(addr) {
		return "rfc822; " + addr
	}
	var b strings.Builder
	b.WriteString("utf-8; ")
	for _, r := range addr {
		if needsEscape(r) {
			fmt.Fprintf(&b, `\x{%02X}`, r)
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// embeddedUnicode matches the EmbeddedUnicodeChar of RFC 6533 §3, leniently
// (any case, any number of digits up to six).
var embeddedUnicode = regexp.MustCompile(`\\[xX]\{[0-9A-Fa-f]{1,6}\}`)

// decodeUnitext decodes the \x{HEX} escapes of a utf-8 address (RFC 6533
// §3). Escapes of invalid code points are left as they are.
func decodeUnitext(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	return embeddedUnicode.ReplaceAllStringFunc(s, func(m string) string {
		v, err := strconv.ParseUint(m[3:len(m)-1], 16, 32)
		if err != nil || !utf8.ValidRune(rune(v)) {
			return m
		}
		return string(rune(v))
	})
}

// parseTypedAddress returns the address of a Final-Recipient value such as
// "rfc822; user@example.org" or "utf-8; us\x{E9}r@example.org".
func parseTypedAddress(v string) string {
	typ, addr, ok := strings.Cut(v, ";")
	typ = strings.TrimSpace(typ)
	if !ok || !isAtom(typ) {
		addr = v
	} else if strings.EqualFold(typ, "utf-8") {
		addr = decodeUnitext(addr)
	}
	return cleanAddress(addr)
}

// cleanOriginalRecipient returns the canonical form of an ORCPT value:
// "type;address", the type an atom (rfc822, or utf-8 for a non-ASCII value,
// when it has none), at most maxAddr octets; "" if there is no address.
func cleanOriginalRecipient(s string) string {
	s = cleanText(s, maxDiag)
	if s == "" {
		return ""
	}
	typ, addr, ok := strings.Cut(s, ";")
	typ, addr = strings.Trim(typ, " "), strings.Trim(addr, " ")
	if !ok || !isAtom(typ) {
		typ, addr = "rfc822", s
		if !isASCII(s) {
			typ = "utf-8"
		}
	}
	if n := maxAddr - len(typ) - 1; len(addr) > n {
		addr = strings.TrimRight(truncate(addr, n), " ")
	}
	if addr == "" {
		return ""
	}
	return typ + ";" + addr
}

// truncate cuts s to at most n octets at a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// cleanDiagnostic returns the canonical type and text of a diagnostic: the
// type "" for smtp, or an atom; the text clean. A diagnostic without text
// has no type either.
func cleanDiagnostic(typ, code string) (string, string) {
	code = cleanText(code, maxDiag)
	typ = strings.Trim(cleanText(typ, maxType), " ")
	if code == "" || strings.EqualFold(typ, "smtp") {
		typ = ""
	}
	return typ, code
}

// parseDiagnostic splits a Diagnostic-Code value "smtp; 550 ..." into its
// canonical type and text. A value whose type is not an atom is all text.
func parseDiagnostic(v string) (string, string) {
	typ, code, ok := strings.Cut(v, ";")
	if typ = strings.TrimSpace(typ); !ok || !isAtom(typ) {
		typ, code = "", v
	}
	return cleanDiagnostic(typ, code)
}

// afterType returns what follows the first ';' of an "mta-name-type; name"
// value, or the whole value if it has none.
func afterType(v string) string {
	if _, name, ok := strings.Cut(v, ";"); ok {
		return name
	}
	return v
}

// firstWord returns the first space-separated word of the clean value v.
func firstWord(v string) string {
	w, _, _ := strings.Cut(v, " ")
	return w
}

// statusCode matches an RFC 3463 status code.
var statusCode = regexp.MustCompile(`^[245]\.[0-9]{1,3}\.[0-9]{1,3}$`)

// ValidStatus reports whether s is an RFC 3463 status code: class 2, 4 or 5,
// a dot, one to three digits, a dot, one to three digits.
func ValidStatus(s string) bool {
	return statusCode.MatchString(s)
}

// fitsAction reports whether a status of class c may be reported with a.
func fitsAction(a Action, c byte) bool {
	switch a {
	case Failed:
		return c == '4' || c == '5'
	case Delayed:
		return c == '4'
	default:
		return c == '2'
	}
}

// writtenTime returns t as it is written: to the second, in its own zone if
// that is a whole number of minutes within a day of UTC, otherwise in UTC.
func writtenTime(t time.Time) time.Time {
	t = t.Round(0).Truncate(time.Second)
	if _, off := t.Zone(); off%60 != 0 || off <= -24*3600 || off >= 24*3600 {
		t = t.UTC()
	}
	return t
}

// formatDate formats t as an RFC 5322 date-time.
func formatDate(t time.Time) string {
	return writtenTime(t).Format(time.RFC1123Z)
}

// checkDate reports whether t, if not zero, can be written as an RFC 5322
// date-time with a four-digit year.
func checkDate(t time.Time) bool {
	if t.IsZero() {
		return true
	}
	y := writtenTime(t).Year()
	return y >= 1000 && y <= 9999
}

// normalize returns the canonical copy of r that Build writes and Parse
// returns, or an error wrapping ErrInvalid.
func (r *Report) normalize() (Report, error) {
	n := Report{
		ReportingMTA:       cleanText(r.ReportingMTA, maxHost),
		OriginalEnvelopeID: cleanText(r.OriginalEnvelopeID, maxEnvID),
		ArrivalDate:        r.ArrivalDate,
	}
	if n.ReportingMTA == "" {
		return n, fmt.Errorf("%w: no reporting MTA", ErrInvalid)
	}
	if !checkDate(n.ArrivalDate) {
		return n, fmt.Errorf("%w: arrival date %v out of range", ErrInvalid, n.ArrivalDate)
	}
	if len(r.Recipients) == 0 {
		return n, fmt.Errorf("%w: no recipient", ErrInvalid)
	}
	n.Recipients = make([]RecipientStatus, len(r.Recipients))
	for i, rs := range r.Recipients {
		c, err := rs.normalize()
		if err != nil {
			return n, fmt.Errorf("%w (recipient %d)", err, i+1)
		}
		n.Recipients[i] = c
	}
	return n, nil
}

func (rs *RecipientStatus) normalize() (RecipientStatus, error) {
	n := RecipientStatus{
		FinalRecipient:    cleanAddress(rs.FinalRecipient),
		OriginalRecipient: cleanOriginalRecipient(rs.OriginalRecipient),
		Action:            rs.Action,
		Status:            rs.Status,
		RemoteMTA:         cleanText(rs.RemoteMTA, maxHost),
		LastAttemptDate:   rs.LastAttemptDate,
		WillRetryUntil:    rs.WillRetryUntil,
	}
	n.DiagnosticType, n.DiagnosticCode = cleanDiagnostic(rs.DiagnosticType, rs.DiagnosticCode)
	switch {
	case n.FinalRecipient == "":
		return n, fmt.Errorf("%w: no final recipient", ErrInvalid)
	case !n.Action.Valid():
		return n, fmt.Errorf("%w: unknown action %q", ErrInvalid, rs.Action)
	case !ValidStatus(n.Status):
		return n, fmt.Errorf("%w: status %q is not an RFC 3463 code", ErrInvalid, rs.Status)
	case !fitsAction(n.Action, n.Status[0]):
		return n, fmt.Errorf("%w: status %s does not fit action %s", ErrInvalid, n.Status, n.Action)
	case n.DiagnosticType != "" && !isAtom(n.DiagnosticType):
		return n, fmt.Errorf("%w: diagnostic type %q is not an atom", ErrInvalid, rs.DiagnosticType)
	case !checkDate(n.LastAttemptDate):
		return n, fmt.Errorf("%w: last attempt date %v out of range", ErrInvalid, n.LastAttemptDate)
	case !checkDate(n.WillRetryUntil):
		return n, fmt.Errorf("%w: will-retry-until date %v out of range", ErrInvalid, n.WillRetryUntil)
	}
	return n, nil
}

// nonASCII reports whether r has a field that needs UTF-8 and so the
// global types of RFC 6533.
func (r *Report) nonASCII() bool {
	if !isASCII(r.ReportingMTA) || !isASCII(r.OriginalEnvelopeID) {
		return true
	}
	for _, rs := range r.Recipients {
		for _, s := range []string{rs.FinalRecipient, rs.OriginalRecipient, rs.RemoteMTA, rs.DiagnosticType, rs.DiagnosticCode} {
			if !isASCII(s) {
				return true
			}
		}
	}
	return false
}

// fieldWriter writes the fields of a delivery-status part.
type fieldWriter struct {
	strings.Builder
}

// field writes "name: value" CRLF, folding the clean value at spaces so that
// lines stay under foldAt octets where words allow.
func (w *fieldWriter) field(name, value string) {
	w.WriteString(name)
	w.WriteByte(':')
	line := len(name) + 1
	first := true
	for word := range strings.SplitSeq(value, " ") {
		if !first && line+1+len(word) > foldAt {
			w.WriteString("\r\n")
			line = 0
		}
		first = false
		w.WriteByte(' ')
		w.WriteString(word)
		line += 1 + len(word)
	}
	w.WriteString("\r\n")
}

// writeReport writes the per-message block and one block per recipient of
// the canonical report r, each block ended by an empty line.
func writeReport(w *fieldWriter, r *Report) {
	if r.OriginalEnvelopeID != "" {
		w.field("Original-Envelope-Id", r.OriginalEnvelopeID)
	}
	w.field("Reporting-MTA", "dns; "+r.ReportingMTA)
	if !r.ArrivalDate.IsZero() {
		w.field("Arrival-Date", formatDate(r.ArrivalDate))
	}
	for _, rs := range r.Recipients {
		w.WriteString("\r\n")
		if rs.OriginalRecipient != "" {
			typ, addr, _ := strings.Cut(rs.OriginalRecipient, ";")
			w.field("Original-Recipient", typ+"; "+addr)
		}
		w.field("Final-Recipient", typedAddress(rs.FinalRecipient))
		w.field("Action", string(rs.Action))
		w.field("Status", rs.Status)
		if rs.RemoteMTA != "" {
			w.field("Remote-MTA", "dns; "+rs.RemoteMTA)
		}
		if rs.DiagnosticCode != "" {
			typ := rs.DiagnosticType
			if typ == "" {
				typ = "smtp"
			}
			w.field("Diagnostic-Code", typ+"; "+rs.DiagnosticCode)
		}
		if !rs.LastAttemptDate.IsZero() {
			w.field("Last-Attempt-Date", formatDate(rs.LastAttemptDate))
		}
		if !rs.WillRetryUntil.IsZero() {
			w.field("Will-Retry-Until", formatDate(rs.WillRetryUntil))
		}
	}
}
