package quarantine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-message/textproto"
	"golang.org/x/net/html"
	htmlcharset "golang.org/x/net/html/charset"
)

// A Preview is what can safely be shown of a quarantined message: its
// header, the text of its text parts, and the names and sizes of its
// attachments. Every string is valid UTF-8 without control characters
// (Text keeps newlines and tabs) and is meant to be shown as text, escaped,
// never interpreted: nothing in a Preview is executed, and nothing it
// names is fetched.
type Preview struct {
	From []Address `json:"from,omitempty"`
	To   []Address `json:"to,omitempty"`
	Cc   []Address `json:"cc,omitempty"`
	// Subject is decoded per RFC 2047.
	Subject string `json:"subject,omitempty"`
	// Date is the Date field; zero when missing or unreadable.
	Date      time.Time `json:"date,omitzero"`
	MessageID string    `json:"message_id,omitempty"`
	// Header lists every header field of the message in order, values
	// unfolded and decoded per RFC 2047.
	Header []HeaderField `json:"header"`
	// Text holds the text parts shown inline, in order. Of the parts of a
	// multipart/alternative, only one is kept: the plain text if there is
	// one, else the richest one. HTML is converted to plain text.
	Text []TextPart `json:"text"`
	// Attachments lists the other parts.
	Attachments []Attachment `json:"attachments"`
	// Problems describes what was malformed or left out (for example
	// "part 2: base64: illegal data at input byte 4"); the rest of the
	// preview is what could be read.
	Problems []string `json:"problems,omitempty"`
}

// An Address is a mailbox of an address header field. When the field cannot
// be parsed as addresses, Addr is empty and Name holds its decoded text.
type Address struct {
	Name string `json:"name,omitempty"`
	Addr string `json:"addr,omitempty"`
}

// String returns a as `Name <addr>`, or the part that is present.
func (a Address) String() string {
	switch {
	case a.Name == "":
		return a.Addr
	case a.Addr == "":
		return a.Name
	}
	return a.Name + " <" + a.Addr + ">"
}

// A HeaderField is one field of a message header.
type HeaderField struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// A TextPart is the text of one part, converted to UTF-8 (and from HTML to
// plain text).
type TextPart struct {
	// ContentType is the part's media type, e.g. "text/plain".
	ContentType string `json:"content_type"`
	Text        string `json:"text"`
	// Truncated is set when Text was cut at PreviewOptions.MaxTextBytes.
	Truncated bool `json:"truncated,omitempty"`
}

// An Attachment describes a part that is not shown inline.
type Attachment struct {
	// Name is the file name the sender gave, if any. It is only a label:
	// it may contain anything, "../" included.
	Name        string `json:"name,omitempty"`
	ContentType string `json:"content_type"`
	// Size is the decoded size in bytes.
	Size int64 `json:"size"`
}

// PreviewOptions bound the work and the output of ParsePreview. The zero
// value (or nil) gives the defaults documented on each field.
type PreviewOptions struct {
	// MaxTextBytes is the most text kept of one text part. Zero means
	// 64 KiB.
	MaxTextBytes int
	// MaxParts is the most MIME parts read (multipart containers count);
	// the rest of the message is left out. Zero means 100.
	MaxParts int
	// MaxDepth is how deeply multiparts are entered; deeper ones are left
	// out. Zero means 10.
	MaxDepth int
	// MaxHeaderFields is the most header fields listed in Preview.Header.
	// Zero means 500.
	MaxHeaderFields int
}

const (
	// maxProblems bounds Preview.Problems.
	maxProblems = 50
	// maxHeaderValue bounds each value in Preview.Header, in bytes.
	maxHeaderValue = 16 << 10
	// htmlInputFactor bounds the HTML read for one part, as a multiple of
	// MaxTextBytes: markup takes room.
	htmlInputFactor = 16
)

func (o *PreviewOptions) withDefaults() (PreviewOptions, error) {
	var out PreviewOptions
	if o != nil {
		out = *o
	}
	if out.MaxTextBytes < 0 || out.MaxParts < 0 || out.MaxDepth < 0 || out.MaxHeaderFields < 0 {
		return out, fmt.Errorf("%w: negative preview limit", ErrInvalid)
	}
	if out.MaxTextBytes == 0 {
		out.MaxTextBytes = 64 << 10
	}
	if out.MaxParts == 0 {
		out.MaxParts = 100
	}
	if out.MaxDepth == 0 {
		out.MaxDepth = 10
	}
	if out.MaxHeaderFields == 0 {
		out.MaxHeaderFields = 500
	}
	return out, nil
}

// Preview returns a preview of entry id's body, if who may see the entry.
// The body is verified against its digest first (see [Store.Body]). An
// entry without a body, or whose body is no longer kept because no
// recipient holds it (all released, deleted or expired), is ErrNoBody.
func (s *Store) Preview(ctx context.Context, who, id string) (*Preview, error) {
	body, err := s.Body(ctx, who, id)
	if err != nil {
		return nil, err
	}
	return ParsePreview(body, nil)
}

// ParsePreview parses an RFC 5322 message with MIME (RFC 2045-2047, 2231)
// into a Preview, within the limits of opts (nil: defaults). Malformed
// input never fails it: what can be read is returned, and Problems says
// what could not. The only error is ErrInvalid for bad options.
//
// Charsets are decoded with the WHATWG encoding labels
// (golang.org/x/net/html/charset); ParsePreview changes no global state
// (in particular not go-message's CharsetReader).
func ParsePreview(body []byte, opts *PreviewOptions) (*Preview, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	p := &previewer{opts: o, pv: &Preview{Header: []HeaderField{}, Text: []TextPart{}, Attachments: []Attachment{}}}
	p.dec = &mime.WordDecoder{CharsetReader: charsetReader}
	hdr, rest := p.cleanHeader(body)
	h, herr := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(hdr)))
	if herr != nil {
		p.problem("", "header: %v", herr)
	}
	p.header(h)
	p.entity(h, bytes.NewReader(rest), 0, "")
	return p.pv, nil
}

// cleanHeader splits msg into its header, with malformed lines left out
// (and reported) so that one bad line does not hide the fields after it,
// and its body.
func (p *previewer) cleanHeader(msg []byte) (hdr, body []byte) {
	var out bytes.Buffer
	keep := false // whether the current field is kept, for its continuations
	for len(msg) > 0 {
		line, next, found := bytes.Cut(msg, []byte("\n"))
		if !found {
			next = nil
		}
		msg = next
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if keep {
				out.Write(line)
				out.WriteString("\r\n")
			}
			continue
		}
		key, _, found := bytes.Cut(line, []byte(":"))
		key = bytes.TrimRight(key, " \t")
		keep = found && len(key) > 0 && !bytes.ContainsFunc(key, func(r rune) bool { return r <= ' ' || r > '~' })
		if !keep {
			p.problem("", "header: malformed line %q left out", truncate(string(line), 64))
			continue
		}
		out.Write(line)
		out.WriteString("\r\n")
	}
	out.WriteString("\r\n")
	return out.Bytes(), msg
}

// previewer holds the state of one ParsePreview.
type previewer struct {
	opts     PreviewOptions
	pv       *Preview
	dec      *mime.WordDecoder
	parts    int
	problems int
}

func (p *previewer) problem(path, format string, args ...any) {
	p.problems++
	switch {
	case p.problems < maxProblems:
	case p.problems == maxProblems:
		p.pv.Problems = append(p.pv.Problems, "more problems not listed")
		return
	default:
		return
	}
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = "part " + path + ": " + msg
	}
	p.pv.Problems = append(p.pv.Problems, clean(truncate(msg, 512), false))
}

// decode decodes RFC 2047 encoded words in a header value; a value it
// cannot decode is kept as it is and reported.
func (p *previewer) decode(path, name, v string) string {
	d, err := p.dec.DecodeHeader(v)
	if err != nil {
		p.problem(path, "%s: %v", name, err)
		d = v
	}
	return clean(d, false)
}

// header fills the fields of the top-level header.
func (p *previewer) header(h textproto.Header) {
	fields := h.Fields()
	for fields.Next() {
		if len(p.pv.Header) == p.opts.MaxHeaderFields {
			p.problem("", "header: more than %d fields; the rest are not listed", p.opts.MaxHeaderFields)
			break
		}
		name := fields.Key()
		if raw, err := fields.Raw(); err == nil {
			// The name as written, rather than canonicalised.
			if i := bytes.IndexByte(raw, ':'); i > 0 {
				name = string(bytes.TrimRight(raw[:i], " \t"))
			}
		}
		v := fields.Value()
		if len(v) > maxHeaderValue {
			v = truncate(v, maxHeaderValue) + " …"
		}
		p.pv.Header = append(p.pv.Header, HeaderField{Name: clean(name, false), Value: p.decode("", name, v)})
	}
	p.pv.From = p.addresses(h, "From")
	p.pv.To = p.addresses(h, "To")
	p.pv.Cc = p.addresses(h, "Cc")
	if v := h.Get("Subject"); v != "" {
		p.pv.Subject = p.decode("", "Subject", truncate(v, maxHeaderValue))
	}
	if v := h.Get("Message-Id"); v != "" {
		p.pv.MessageID = clean(truncate(strings.TrimSpace(v), 998), false)
	}
	if v := h.Get("Date"); v != "" {
		d, err := mail.ParseDate(v)
		if err != nil {
			p.problem("", "Date: %v", err)
		} else {
			p.pv.Date = d
		}
	}
}

// addresses parses the address list in every field named key.
func (p *previewer) addresses(h textproto.Header, key string) []Address {
	var out []Address
	parser := mail.AddressParser{WordDecoder: p.dec}
	for _, v := range h.Values(key) {
		v = truncate(v, maxHeaderValue)
		if strings.TrimSpace(v) == "" {
			continue
		}
		list, err := parser.ParseList(v)
		if err != nil {
			p.problem("", "%s: %v", key, err)
			out = append(out, Address{Name: p.decode("", key, v)})
			continue
		}
		for _, a := range list {
			out = append(out, Address{Name: clean(a.Name, false), Addr: clean(a.Address, false)})
		}
	}
	return out
}

// entity previews one MIME entity with header h and raw body r, found at
// path ("" for the message, "1.2" for the second part of the first part)
// and depth.
func (p *previewer) entity(h textproto.Header, r io.Reader, depth int, path string) {
	p.parts++
	ctype, params := p.contentType(h, path)
	disp, dparams := "", map[string]string(nil)
	if v := h.Get("Content-Disposition"); v != "" {
		var err error
		disp, dparams, err = mime.ParseMediaType(v)
		if err != nil {
			p.problem(path, "Content-Disposition: %v", err)
			disp, _, _ = strings.Cut(strings.ToLower(strings.TrimSpace(v)), ";")
		}
	}
	if strings.HasPrefix(ctype, "multipart/") {
		p.multipart(ctype, params, r, depth, path)
		return
	}
	name := dparams["filename"]
	if name == "" {
		name = params["name"]
	}
	if name != "" {
		// RFC 2231 names arrive decoded; RFC 2047 in quotes is common too.
		name = p.decode(path, "file name", name)
	}
	body := p.transferDecoder(h, r, path)
	if disp != "attachment" && shownAsText(ctype) {
		p.text(ctype, params["charset"], body, path)
		return
	}
	n, err := io.Copy(io.Discard, body)
	if err != nil {
		p.problem(path, "%v", err)
	}
	p.pv.Attachments = append(p.pv.Attachments, Attachment{Name: name, ContentType: ctype, Size: n})
}

// contentType returns the media type and parameters of h, with the
// defaults of RFC 2045 §5.2 for a missing or invalid field.
func (p *previewer) contentType(h textproto.Header, path string) (string, map[string]string) {
	v := h.Get("Content-Type")
	if v == "" {
		return "text/plain", map[string]string{}
	}
	t, params, err := mime.ParseMediaType(v)
	if err != nil {
		p.problem(path, "Content-Type: %v", err)
		// A parameter may be broken while the type is fine.
		t, _, _ = strings.Cut(v, ";")
		t = strings.ToLower(strings.TrimSpace(t))
		if _, _, err := mime.ParseMediaType(t); err != nil || strings.HasPrefix(t, "multipart/") {
			return "text/plain", map[string]string{}
		}
		return clean(t, false), map[string]string{}
	}
	return clean(t, false), params
}

// shownAsText reports whether parts of media type t are shown inline.
func shownAsText(t string) bool {
	switch t {
	case "message/delivery-status", "message/global-delivery-status", "message/disposition-notification":
		return true
	}
	return strings.HasPrefix(t, "text/")
}

func (p *previewer) multipart(ctype string, params map[string]string, r io.Reader, depth int, path string) {
	boundary := params["boundary"]
	if boundary == "" {
		p.problem(path, "%s without a boundary: shown as text", ctype)
		p.text("text/plain", "", r, path)
		return
	}
	if depth >= p.opts.MaxDepth {
		p.problem(path, "multipart nested more than %d deep: not shown", p.opts.MaxDepth)
		return
	}
	mr := textproto.NewMultipartReader(r, boundary)
	textStart := len(p.pv.Text)
	var alternatives [][2]int // text ranges of each alternative
	for i := 1; ; i++ {
		if p.parts >= p.opts.MaxParts {
			p.problem(path, "more than %d parts: the rest are not shown", p.opts.MaxParts)
			break
		}
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			p.problem(path, "%v", err)
			break
		}
		sub := strconv.Itoa(i)
		if path != "" {
			sub = path + "." + sub
		}
		start := len(p.pv.Text)
		p.entity(part.Header, part, depth+1, sub)
		alternatives = append(alternatives, [2]int{start, len(p.pv.Text)})
	}
	if ctype == "multipart/alternative" {
		p.chooseAlternative(textStart, alternatives)
	}
}

// chooseAlternative keeps the text of one alternative: the first with
// plain text, else the last (the richest, RFC 2046 §5.1.4) that has any.
func (p *previewer) chooseAlternative(start int, alts [][2]int) {
	chosen := [2]int{start, start}
	for _, a := range alts {
		for _, t := range p.pv.Text[a[0]:a[1]] {
			if t.ContentType == "text/plain" {
				chosen = a
				break
			}
		}
		if chosen != [2]int{start, start} {
			break
		}
	}
	if chosen == [2]int{start, start} {
		for i := len(alts) - 1; i >= 0; i-- {
			if alts[i][1] > alts[i][0] {
				chosen = alts[i]
				break
			}
		}
	}
	kept := append([]TextPart(nil), p.pv.Text[chosen[0]:chosen[1]]...)
	p.pv.Text = append(p.pv.Text[:start], kept...)
}

// transferDecoder undoes the Content-Transfer-Encoding of a body.
func (p *previewer) transferDecoder(h textproto.Header, r io.Reader, path string) io.Reader {
	enc := strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding")))
	switch enc {
	case "", "7bit", "8bit", "binary":
		return r
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &base64Filter{r: r})
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	}
	p.problem(path, "unknown Content-Transfer-Encoding %q: shown undecoded", truncate(enc, 64))
	return r
}

// text reads a text part and appends it to the preview.
func (p *previewer) text(ctype, label string, r io.Reader, path string) {
	limit := p.opts.MaxTextBytes
	isHTML := ctype == "text/html"
	if isHTML {
		limit *= htmlInputFactor
	}
	raw, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		p.problem(path, "%v", err)
	}
	inputCut := len(raw) > limit
	if inputCut {
		raw = raw[:limit]
		_, _ = io.Copy(io.Discard, r)
	}
	s := p.toUTF8(raw, label, path)
	var truncated bool
	if isHTML {
		s, truncated = htmlText(s, p.opts.MaxTextBytes)
	} else {
		s = strings.ReplaceAll(s, "\r\n", "\n")
		if len(s) > p.opts.MaxTextBytes {
			s, truncated = truncate(s, p.opts.MaxTextBytes), true
		}
	}
	p.pv.Text = append(p.pv.Text, TextPart{ContentType: ctype, Text: clean(s, true), Truncated: truncated || inputCut})
}

// toUTF8 converts b from the charset label to UTF-8. Without a label, or
// with one it does not know, it takes b as UTF-8 if it is valid, else as
// windows-1252 (the usual undeclared 8-bit charset).
func (p *previewer) toUTF8(b []byte, label, path string) string {
	label = strings.ToLower(strings.TrimSpace(label))
	switch label {
	case "utf-8", "utf8", "us-ascii", "ascii":
		return strings.ToValidUTF8(string(b), "\uFFFD")
	case "":
	default:
		if enc, _ := htmlcharset.Lookup(label); enc != nil {
			out, err := enc.NewDecoder().Bytes(b)
			if err == nil {
				return strings.ToValidUTF8(string(out), "\uFFFD")
			}
			p.problem(path, "charset %q: %v", truncate(label, 64), err)
		} else {
			p.problem(path, "unknown charset %q", truncate(label, 64))
		}
	}
	if utf8.Valid(b) {
		return string(b)
	}
	enc, _ := htmlcharset.Lookup("windows-1252")
	out, err := enc.NewDecoder().Bytes(b)
	if err != nil {
		return strings.ToValidUTF8(string(b), "\uFFFD")
	}
	return string(out)
}

// charsetReader is the mime.WordDecoder's CharsetReader: WHATWG labels.
func charsetReader(label string, r io.Reader) (io.Reader, error) {
	enc, _ := htmlcharset.Lookup(label)
	if enc == nil {
		return nil, fmt.Errorf("unknown charset %q", truncate(label, 64))
	}
	return enc.NewDecoder().Reader(r), nil
}

// base64Filter drops what base64 bodies carry besides the alphabet (line
// breaks, spaces, stray characters) so that the decoder reads on; a stray
// character is not worth losing the rest of an attachment's size.
type base64Filter struct{ r io.Reader }

func (f *base64Filter) Read(b []byte) (int, error) {
	for {
		n, err := f.r.Read(b)
		j := 0
		for _, c := range b[:n] {
			if ('A' <= c && c <= 'Z') || ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') || c == '+' || c == '/' || c == '=' {
				b[j] = c
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

// clean makes s safe to show as text: control characters and the Unicode
// controls that reorder text (used to disguise file names such as
// "invoice\u202Efdp.exe") are dropped; tabs stay, newlines only when
// multiline. s must be valid UTF-8 or is made so.
func clean(s string, multiline bool) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	ok := true
	for _, r := range s {
		if dropped(r, multiline) {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	return strings.Map(func(r rune) rune {
		if dropped(r, multiline) {
			if r == '\r' || r == '\n' {
				return ' '
			}
			return -1
		}
		return r
	}, s)
}

func dropped(r rune, multiline bool) bool {
	switch {
	case r == '\t':
		return false
	case r == '\n':
		return !multiline
	case r < 0x20 || r == 0x7f || (0x80 <= r && r < 0xa0):
		return true
	case 0x202a <= r && r <= 0x202e, 0x2066 <= r && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
		return true
	}
	return false
}

// htmlText converts HTML to plain text of at most max bytes: the text
// content with line breaks for blocks, link targets in brackets after the
// link text, image alt text; nothing from script, style, head, template or
// title. It reports whether the text was cut.
func htmlText(src string, max int) (string, bool) {
	z := html.NewTokenizer(strings.NewReader(src))
	w := &textWriter{max: max}
	var (
		skip      string // element whose content is skipped
		href      string // target of the open link
		linkStart int    // where its text starts in w
	)
	for !w.full {
		tt := z.Next()
		if tt == html.ErrorToken {
			break
		}
		switch tt {
		case html.TextToken:
			if skip == "" {
				w.text(string(z.Text()))
			}
		case html.StartTagToken, html.SelfClosingTagToken:
			name, hasAttr := z.TagName()
			tag := string(name)
			if skip != "" {
				if skip == "head" && tag == "body" {
					skip = ""
				}
				continue
			}
			switch tag {
			case "script", "style", "head", "template", "title", "noembed", "xmp":
				if tt == html.StartTagToken {
					skip = tag
				}
				continue
			}
			attrs := map[string]string{}
			for hasAttr {
				var k, v []byte
				k, v, hasAttr = z.TagAttr()
				if key := string(k); key == "href" || key == "alt" {
					attrs[key] = string(v)
				}
			}
			switch tag {
			case "a":
				href, linkStart = strings.TrimSpace(attrs["href"]), w.b.Len()
			case "img":
				if alt := strings.TrimSpace(attrs["alt"]); alt != "" {
					w.text("[" + alt + "]")
				}
			case "pre":
				w.pre++
			}
			w.block(tag, true)
		case html.EndTagToken:
			name, _ := z.TagName()
			tag := string(name)
			if skip != "" {
				if tag == skip {
					skip = ""
				}
				continue
			}
			switch tag {
			case "a":
				if shownLink(href) && strings.TrimSpace(w.b.String()[linkStart:]) != strings.TrimPrefix(href, "mailto:") {
					w.text(" [" + truncate(href, 500) + "]")
				}
				href = ""
			case "pre":
				if w.pre > 0 {
					w.pre--
				}
			}
			w.block(tag, false)
		}
	}
	return w.b.String(), w.full
}

// shownLink reports whether a link target is worth showing: an absolute
// web or mail address (a user can judge where it leads).
func shownLink(href string) bool {
	h := strings.ToLower(href)
	return strings.HasPrefix(h, "http://") || strings.HasPrefix(h, "https://") || strings.HasPrefix(h, "mailto:")
}

// textWriter collects the text of an HTML document: white space collapsed
// outside <pre>, at most two line breaks in a row, at most max bytes.
type textWriter struct {
	b     strings.Builder
	max   int
	full  bool
	space bool // a space is due before the next word
	nl    int  // line breaks due before the next word
	pre   int  // depth of <pre>
}

func (w *textWriter) block(tag string, start bool) {
	switch tag {
	case "br":
		if start {
			w.breakLine(1, true)
		}
	case "p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol", "dl", "hr":
		w.breakLine(2, false)
	case "div", "li", "tr", "dt", "dd", "section", "article", "header", "footer", "nav", "aside", "main",
		"address", "figure", "figcaption", "form", "fieldset", "caption", "center":
		w.breakLine(1, false)
	case "td", "th":
		w.space = true
	}
	if start && tag == "li" {
		w.text("• ")
	}
}

// breakLine asks for n line breaks before the next text; forced ones (br)
// add up, the others do not.
func (w *textWriter) breakLine(n int, forced bool) {
	if w.b.Len() == 0 {
		return
	}
	if forced {
		w.nl = min(w.nl+n, 2)
	} else {
		w.nl = max(w.nl, n)
	}
	w.space = false
}

func (w *textWriter) text(s string) {
	if w.pre > 0 {
		w.flush()
		w.write(strings.ReplaceAll(s, "\r\n", "\n"))
		return
	}
	for i, word := range strings.Fields(s) {
		if i > 0 || startsWithSpace(s) {
			w.space = true
		}
		w.flush()
		w.write(word)
		if w.full {
			return
		}
	}
	if strings.TrimSpace(s) == "" && s != "" {
		w.space = true
	} else if endsWithSpace(s) {
		w.space = true
	}
}

// flush writes the line breaks or the space due.
func (w *textWriter) flush() {
	switch {
	case w.nl > 0:
		w.write(strings.Repeat("\n", w.nl))
	case w.space && w.b.Len() > 0:
		w.write(" ")
	}
	w.nl, w.space = 0, false
}

func (w *textWriter) write(s string) {
	if w.full {
		return
	}
	if w.b.Len()+len(s) > w.max {
		s = truncate(s, w.max-w.b.Len())
		w.full = true
	}
	w.b.WriteString(s)
}

func startsWithSpace(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return unicode.IsSpace(r)
}

func endsWithSpace(s string) bool {
	r, _ := utf8.DecodeLastRuneInString(s)
	return unicode.IsSpace(r)
}
