package imapstore

import (
	"bytes"
	"io"
	"mime"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message"
	"golang.org/x/text/cases"
	"golang.org/x/text/encoding/htmlindex"
)

// SEARCH's text keys (TEXT, BODY, HEADER, SUBJECT, FROM, ...) match
// without regard to case (Unicode case folding) against the message as a
// reader sees it: RFC 2047 words in headers decoded, base64 and
// quoted-printable undone, every charset turned into UTF-8. A message with
// none of those and a key in ASCII is matched on its raw bytes (the fast
// path, most mail); the others are decoded once per SEARCH and message.

// maxDecodedText bounds the decoded text of one message that SEARCH reads.
const maxDecodedText = 32 << 20

var folder = cases.Fold()

// fold returns b case-folded (Unicode).
func fold(b []byte) []byte { return folder.Bytes(b) }

// foldString returns s case-folded (Unicode).
func foldString(s string) string { return folder.String(s) }

// charsetReader converts input from charset to UTF-8.
func charsetReader(charset string, input io.Reader) (io.Reader, error) {
	switch strings.ToLower(charset) {
	case "", "utf-8", "utf8", "us-ascii", "ascii":
		return input, nil
	}
	enc, err := htmlindex.Get(charset)
	if err != nil {
		return nil, err
	}
	return enc.NewDecoder().Reader(input), nil
}

var wordDecoder = &mime.WordDecoder{CharsetReader: charsetReader}

// decodeHeader returns a header value with its RFC 2047 words decoded
// (the value as it is when a word cannot be).
func decodeHeader(v string) string {
	if !strings.Contains(v, "=?") {
		return v
	}
	d, err := wordDecoder.DecodeHeader(v)
	if err != nil {
		return v
	}
	return d
}

// needsDecoding reports whether a message (its raw bytes, ASCII
// lower-cased) has text a search of the raw bytes would miss: encoded
// words, base64 or quoted-printable, or a charset that is not UTF-8.
func needsDecoding(lower []byte) bool {
	if bytes.Contains(lower, []byte("=?")) || bytes.Contains(lower, []byte("base64")) ||
		bytes.Contains(lower, []byte("quoted-printable")) {
		return true
	}
	for rest := lower; ; {
		i := bytes.Index(rest, []byte("charset="))
		if i < 0 {
			return false
		}
		rest = bytes.TrimLeft(rest[i+len("charset="):], `"`)
		if !bytes.HasPrefix(rest, []byte("utf-8")) && !bytes.HasPrefix(rest, []byte("us-ascii")) {
			return true
		}
	}
}

// isASCII reports whether s is all ASCII.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// decodeForSearch returns a message's text as SEARCH reads it, folded:
// its header fields (words decoded) then, after hdrLen, the bodies of
// its text parts (transfer encoding undone, in UTF-8). Parts that are not
// text (images, archives) are left out, as Dovecot does.
func decodeForSearch(raw []byte) (text []byte, hdrLen int) {
	e, rootErr := message.Read(bytes.NewReader(raw))
	if e == nil {
		return fold(raw), len(raw) // no header to read: the raw text
	}
	var b bytes.Buffer
	fields := e.Header.Fields()
	for fields.Next() {
		b.WriteString(fields.Key())
		b.WriteString(": ")
		b.WriteString(decodeHeader(fields.Value()))
		b.WriteString("\n")
	}
	b.WriteString("\n")
	hdrLen = b.Len()
	e.Walk(func(path []int, part *message.Entity, err error) error {
		if path == nil {
			err = rootErr
		}
		if part == nil || (err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err)) {
			return nil
		}
		if part.MultipartReader() != nil {
			return nil
		}
		t, params, _ := part.Header.ContentType()
		if t != "" && !strings.HasPrefix(t, "text/") && !strings.HasPrefix(t, "message/") {
			return nil
		}
		body := part.Body
		if message.IsUnknownCharset(err) {
			// go-message converted nothing (no CharsetReader of its
			// own is set here): convert it.
			if r, cerr := charsetReader(params["charset"], body); cerr == nil {
				body = r
			}
		}
		io.Copy(&b, io.LimitReader(body, int64(max(0, maxDecodedText-b.Len()))))
		b.WriteString("\n")
		return nil
	})
	return fold(b.Bytes()), hdrLen
}
