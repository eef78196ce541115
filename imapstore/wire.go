package imapstore

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
)

// This file is the front's reading of client commands: the framing of a
// command into line segments and literals, and a tokenizer for the
// commands the front answers or rewrites (ENABLE, SELECT, EXAMINE, FETCH,
// STORE, SEARCH, STATUS). Every token keeps its byte span in the command,
// so that a rewritten command is the client's own bytes minus what the
// front took out.

// maxFrontCommand bounds a command the front reads whole (with its
// literals); a longer one is handed to go-imap as it comes, which refuses
// commands over 50 KiB.
const maxFrontCommand = 64 << 10

// literalMarker reports whether a line segment (ending in LF) ends with a
// literal's announcement {n}, {n+} or ~{n}, and where the brace starts.
func literalMarker(seg []byte) (n int64, nonSync bool, brace int, ok bool) {
	line := bytes.TrimSuffix(bytes.TrimSuffix(seg, []byte("\n")), []byte("\r"))
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false, 0, false
	}
	open := bytes.LastIndexByte(line, '{')
	if open < 0 {
		return 0, false, 0, false
	}
	digits := line[open+1 : len(line)-1]
	if len(digits) > 0 && digits[len(digits)-1] == '+' {
		nonSync = true
		digits = digits[:len(digits)-1]
	}
	if len(digits) == 0 || len(digits) > 12 {
		return 0, false, 0, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false, 0, false
		}
	}
	v, err := strconv.ParseInt(string(digits), 10, 64)
	if err != nil {
		return 0, false, 0, false
	}
	return v, nonSync, open, true
}

// tokKind is the kind of a command token.
type tokKind uint8

const (
	tokAtom   tokKind = iota // an atom, possibly with [...] and <...> (BODY[HEADER]<0.10>)
	tokString                // a quoted string or a literal
	tokList                  // a parenthesized list
)

// token is one argument of a command.
type token struct {
	kind       tokKind
	val        string  // the atom or the string's value
	list       []token // a list's members
	start, end int     // the token's bytes in the command
}

// is reports whether t is the atom a (case-insensitive).
func (t token) is(a string) bool { return t.kind == tokAtom && strings.EqualFold(t.val, a) }

// command is a parsed client command.
type command struct {
	tag  string
	uid  bool   // UID FETCH, UID STORE, UID SEARCH
	name string // upper case, without "UID "
	args []token
	raw  []byte // the command, literals non-synchronizing, ending in CRLF
}

var errSyntax = errors.New("syntax error")

// parser reads the tokens of one command.
type parser struct {
	b   []byte
	pos int
}

// parseCommand parses a whole command (line segments and literals,
// ending in CRLF).
func parseCommand(b []byte) (*command, error) {
	if !bytes.HasSuffix(b, []byte("\r\n")) {
		return nil, errSyntax
	}
	p := &parser{b: b[:len(b)-2]}
	c := &command{raw: b}
	tag, ok := p.atom()
	if !ok || !validTag(tag) || !p.sp() {
		return nil, errSyntax
	}
	c.tag = tag
	name, ok := p.atom()
	if !ok {
		return nil, errSyntax
	}
	c.name = strings.ToUpper(name)
	if c.name == "UID" {
		if !p.sp() {
			return nil, errSyntax
		}
		if name, ok = p.atom(); !ok {
			return nil, errSyntax
		}
		c.uid, c.name = true, strings.ToUpper(name)
	}
	for p.pos < len(p.b) {
		if !p.sp() {
			return nil, errSyntax
		}
		t, err := p.token(0)
		if err != nil {
			return nil, err
		}
		c.args = append(c.args, t)
	}
	return c, nil
}

// validTag reports whether a tag is one the front can follow: an atom
// that is not "+" or "*" (which would read as a continuation request or
// an untagged response).
func validTag(tag string) bool {
	return tag != "" && !strings.ContainsAny(tag, "+*")
}

func (p *parser) sp() bool {
	if p.pos < len(p.b) && p.b[p.pos] == ' ' {
		p.pos++
		return true
	}
	return false
}

// isAtomChar reports whether c may be in an atom token: RFC 9051's
// ATOM-CHAR plus the list wildcards '*' and '%' (sequence sets, LIST
// patterns) and '\\' (flags); brackets are matched apart.
func isAtomChar(c byte) bool {
	switch c {
	case '(', ')', '{', ' ', '"', '[', ']':
		return false
	}
	return c > 0x20 && c < 0x7f
}

func (p *parser) atom() (string, bool) {
	start := p.pos
	for p.pos < len(p.b) && isAtomChar(p.b[p.pos]) {
		p.pos++
	}
	return string(p.b[start:p.pos]), p.pos > start
}

// maxDepth bounds the nesting of lists and brackets.
const maxDepth = 32

func (p *parser) token(depth int) (token, error) {
	if depth > maxDepth || p.pos >= len(p.b) {
		return token{}, errSyntax
	}
	start := p.pos
	switch c := p.b[p.pos]; c {
	case '(':
		p.pos++
		t := token{kind: tokList, start: start}
		for {
			if p.pos >= len(p.b) {
				return token{}, errSyntax
			}
			if p.b[p.pos] == ')' {
				p.pos++
				break
			}
			if len(t.list) > 0 && !p.sp() {
				return token{}, errSyntax
			}
			m, err := p.token(depth + 1)
			if err != nil {
				return token{}, err
			}
			t.list = append(t.list, m)
		}
		t.end = p.pos
		return t, nil
	case '"':
		p.pos++
		var v []byte
		for {
			if p.pos >= len(p.b) {
				return token{}, errSyntax
			}
			c := p.b[p.pos]
			p.pos++
			switch c {
			case '"':
				return token{kind: tokString, val: string(v), start: start, end: p.pos}, nil
			case '\\':
				if p.pos >= len(p.b) || (p.b[p.pos] != '\\' && p.b[p.pos] != '"') {
					return token{}, errSyntax
				}
				v = append(v, p.b[p.pos])
				p.pos++
			case '\r', '\n', 0:
				return token{}, errSyntax
			default:
				v = append(v, c)
			}
		}
	case '{', '~':
		if c == '~' {
			p.pos++
		}
		if p.pos >= len(p.b) || p.b[p.pos] != '{' {
			return token{}, errSyntax
		}
		end := bytes.IndexByte(p.b[p.pos:], '}')
		if end < 0 {
			return token{}, errSyntax
		}
		digits := strings.TrimSuffix(string(p.b[p.pos+1:p.pos+end]), "+")
		n, err := strconv.Atoi(digits)
		if err != nil || n < 0 || digits == "" || digits[0] == '+' {
			return token{}, errSyntax
		}
		p.pos += end + 1
		if !bytes.HasPrefix(p.b[p.pos:], []byte("\r\n")) || len(p.b)-p.pos-2 < n {
			return token{}, errSyntax
		}
		p.pos += 2
		v := string(p.b[p.pos : p.pos+n])
		p.pos += n
		return token{kind: tokString, val: v, start: start, end: p.pos}, nil
	}
	// An atom, with bracketed sections: BODY.PEEK[HEADER.FIELDS (A B)]<0.9>.
	for p.pos < len(p.b) {
		c := p.b[p.pos]
		if isAtomChar(c) {
			p.pos++
			continue
		}
		if c != '[' {
			break
		}
		p.pos++
		for {
			if p.pos >= len(p.b) {
				return token{}, errSyntax
			}
			if p.b[p.pos] == ']' {
				p.pos++
				break
			}
			if p.b[p.pos] == ' ' {
				p.pos++
				continue
			}
			if _, err := p.token(depth + 1); err != nil {
				return token{}, err
			}
		}
	}
	if p.pos == start {
		return token{}, errSyntax
	}
	return token{kind: tokAtom, val: string(p.b[start:p.pos]), start: start, end: p.pos}, nil
}

// parseModSeq parses a mod-sequence value (RFC 7162: 1 to 2^63-1; zero
// where mod-sequence-valzer allows it).
func parseModSeq(t token, zero bool) (uint64, bool) {
	if t.kind != tokAtom || t.val == "" || len(t.val) > 19 {
		return 0, false
	}
	for _, c := range []byte(t.val) {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(t.val, 10, 63)
	if err != nil || (v == 0 && !zero) {
		return 0, false
	}
	return v, true
}

// parseNumber parses an nz-number (a UID or a UIDVALIDITY).
func parseNumber(t token) (uint32, bool) {
	if t.kind != tokAtom || t.val == "" || len(t.val) > 10 {
		return 0, false
	}
	for _, c := range []byte(t.val) {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(t.val, 10, 32)
	return uint32(v), err == nil && v > 0
}

// rebuild returns the command's bytes with the tokens of args in keep
// only, each written as the client wrote it, plus extra appended.
func (c *command) rebuild(keep []token, extra string) []byte {
	var b bytes.Buffer
	b.WriteString(c.tag)
	if c.uid {
		b.WriteString(" UID")
	}
	b.WriteString(" " + c.name)
	for _, t := range keep {
		b.WriteByte(' ')
		b.Write(c.raw[t.start:t.end])
	}
	b.WriteString(extra)
	b.WriteString("\r\n")
	return b.Bytes()
}

// span returns the bytes of a token as the client wrote them.
func (c *command) span(t token) string { return string(c.raw[t.start:t.end]) }
