package smtpout

import (
	"bytes"
	"context"
	"io"
	"strconv"

	"github.com/emersion/go-smtp"
)

// Buffer sizes of a transaction. The output buffer holds a pipelined
// command group, and then the message: a message up to bodyBufSize bytes,
// dot-stuffed, leaves with its final "." in one write.
const (
	readBufSize = 32 << 10
	bodyBufSize = 64 << 10
)

// xferBufs are the buffers of one transaction, pooled by the Deliverer.
type xferBufs struct {
	r [readBufSize]byte // the message as read
	w [bodyBufSize]byte // what goes to the server
}

func (d *Deliverer) getBufs() *xferBufs {
	if b, ok := d.bufs.Get().(*xferBufs); ok {
		return b
	}
	return new(xferBufs)
}

// out buffers what a transaction writes to its session: a write leaves
// when the buffer is full or at flush, each with a write deadline of
// CommandTimeout capped by ctx. The first error sticks.
type out struct {
	buf []byte // len: buffered; cap: the buffer's size
	d   *Deliverer
	ctx context.Context
	cn  *conn
	err error
}

// write buffers p, flushing as the buffer fills.
func (o *out) write(p []byte) {
	for len(p) > 0 && o.err == nil {
		if len(o.buf) == cap(o.buf) {
			o.flush()
			continue
		}
		k := copy(o.buf[len(o.buf):cap(o.buf)], p)
		o.buf = o.buf[:len(o.buf)+k]
		p = p[k:]
	}
}

func (o *out) writeString(s string) {
	for len(s) > 0 && o.err == nil {
		if len(o.buf) == cap(o.buf) {
			o.flush()
			continue
		}
		k := copy(o.buf[len(o.buf):cap(o.buf)], s)
		o.buf = o.buf[:len(o.buf)+k]
		s = s[k:]
	}
}

// flush writes what is buffered and returns the first error of the
// session's writes.
func (o *out) flush() error {
	if o.err != nil || len(o.buf) == 0 {
		return o.err
	}
	o.d.setWriteDeadline(o.ctx, o.cn)
	_, o.err = o.cn.top.Write(o.buf)
	o.buf = o.buf[:0]
	return o.err
}

// mailLine writes MAIL FROM with the parameters go-smtp's client (v0.25)
// would send for the same options, in the same order and form: BODY=8BITMIME
// whenever the server offers 8BITMIME, SIZE when it offers SIZE and the
// size is known, SMTPUTF8, and with DSN, RET and ENVID as xtext.
func (o *out) mailLine(tx *txn) {
	ext := &o.cn.ext
	var a [512]byte
	b := append(a[:0], "MAIL FROM:<"...)
	b = append(b, tx.env.From...)
	b = append(b, '>')
	if ext.eightBit {
		b = append(b, " BODY=8BITMIME"...)
	}
	if ext.size && tx.env.Size > 0 {
		b = append(b, " SIZE="...)
		b = strconv.AppendInt(b, tx.env.Size, 10)
	}
	if tx.utf8 {
		b = append(b, " SMTPUTF8"...)
	}
	if ext.dsn {
		if tx.ret != "" {
			b = append(b, " RET="...)
			b = append(b, tx.ret...)
		}
		if tx.envID != "" {
			b = append(b, " ENVID="...)
			b = appendXtext(b, tx.envID)
		}
	}
	b = append(b, "\r\n"...)
	o.write(b)
}

// rcptLine writes RCPT TO as go-smtp's client (v0.25) would: with DSN,
// NOTIFY and ORCPT, the latter as xtext (rfc822), or per RFC 6533 as
// utf-8-addr-unitext when the server offers SMTPUTF8 and
// utf-8-addr-xtext otherwise.
func (o *out) rcptLine(r *rcptParams) {
	ext := &o.cn.ext
	var a [512]byte
	b := append(a[:0], "RCPT TO:<"...)
	b = append(b, r.addr...)
	b = append(b, '>')
	if ext.dsn {
		if r.notify != "" {
			b = append(b, " NOTIFY="...)
			b = append(b, r.notify...)
		}
		if r.orcpt != "" {
			b = append(b, " ORCPT="...)
			b = append(b, r.orcptType...)
			b = append(b, ';')
			switch {
			case r.orcptType == smtp.DSNAddressTypeRFC822:
				b = appendXtext(b, r.orcpt)
			case ext.smtpUTF8:
				b = appendUTF8Addr(b, r.orcpt, true)
			default:
				b = appendUTF8Addr(b, r.orcpt, false)
			}
		}
	}
	b = append(b, "\r\n"...)
	o.write(b)
}

// xtextSafe reports whether c stands for itself in xtext (RFC 3461 §4):
// printable US-ASCII but space, '+' and '='.
func xtextSafe(c rune) bool { return c >= '!' && c <= '~' && c != '+' && c != '=' }

// appendXtext appends s as xtext, each other character as "+" and its
// code point in upper-case hexadecimal, as go-smtp's client does.
func appendXtext(b []byte, s string) []byte {
	for _, c := range s {
		if xtextSafe(c) {
			b = append(b, byte(c))
			continue
		}
		b = append(b, '+')
		b = appendHexUpper(b, c)
	}
	return b
}

// appendUTF8Addr appends s as utf-8-addr-unitext (unitext: non-ASCII
// characters as they are) or utf-8-addr-xtext (RFC 6533 §3): the other
// characters as "\x{HEX}".
func appendUTF8Addr(b []byte, s string, unitext bool) []byte {
	for _, c := range s {
		switch {
		case xtextSafe(c):
			b = append(b, byte(c))
		case unitext && c > 0x7f:
			b = append(b, string(c)...)
		default:
			b = append(b, `\x{`...)
			b = appendHexUpper(b, c)
			b = append(b, '}')
		}
	}
	return b
}

func appendHexUpper(b []byte, c rune) []byte {
	const digits = "0123456789ABCDEF"
	start := len(b)
	b = strconv.AppendInt(b, int64(c), 16)
	for i := start; i < len(b); i++ {
		if b[i] >= 'a' {
			b[i] = digits[b[i]-'a'+10]
		}
	}
	return b
}

// The states of a dotWriter, as net/textproto's DotWriter has them.
const (
	dotBegin     = iota // nothing written yet
	dotBeginLine        // at the start of a line
	dotData             // within a line
	dotCR               // after a CR within a line
)

// A dotWriter writes a message as the text of DATA (RFC 5321 §4.5.2): a
// line that starts with "." gets another, and close ends the text with
// ".\r\n", after a CRLF if the text does not end with one. Its output is
// byte for byte that of net/textproto's DotWriter (a bare LF becomes
// CRLF), which go-smtp's client used; a message with CRLF line ends leaves
// as it is, but for the dots. Lines go out in runs, not byte by byte.
type dotWriter struct {
	o     *out
	state int
}

func (w *dotWriter) write(b []byte) {
	for len(b) > 0 {
		switch w.state {
		case dotBegin, dotBeginLine:
			if b[0] == '.' {
				w.o.writeString(".")
			}
			w.state = dotData
		case dotCR:
			w.o.write(b[:1])
			if b[0] == '\n' {
				w.state = dotBeginLine
			} else {
				w.state = dotData
			}
			b = b[1:]
		default: // dotData
			line := b
			i := bytes.IndexByte(b, '\n')
			if i >= 0 {
				line = b[:i]
			}
			j := bytes.IndexByte(line, '\r')
			switch {
			case j < 0 && i < 0:
				w.o.write(b)
				return
			case j < 0:
				// A bare LF ends the line, as CRLF.
				w.o.write(line)
				w.o.writeString("\r\n")
				w.state = dotBeginLine
				b = b[i+1:]
			case j == i-1:
				// CRLF: the common case.
				w.o.write(b[:i+1])
				w.state = dotBeginLine
				b = b[i+1:]
			default:
				w.o.write(line[:j+1])
				w.state = dotCR
				b = b[j+1:]
			}
		}
	}
}

// close writes the end of the text: CRLF if needed, then ".\r\n".
func (w *dotWriter) close() {
	switch w.state {
	case dotBeginLine:
		w.o.writeString(".\r\n")
	case dotCR:
		w.o.writeString("\n.\r\n")
	default:
		w.o.writeString("\r\n.\r\n")
	}
}

// A readError is a failure to read the message, told from a failure to
// write it.
type readError struct{ err error }

func (e *readError) Error() string { return "reading the message: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// copyBody writes body to o as the text of DATA, up to and including the
// final ".", which it leaves in o's buffer for the caller to flush. It
// returns a *readError if body fails, the write error if the session does;
// then the text is not terminated.
func copyBody(o *out, body io.Reader, buf []byte) error {
	w := dotWriter{o: o}
	for {
		n, err := body.Read(buf)
		if n > 0 {
			w.write(buf[:n])
			if o.err != nil {
				return o.err
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return &readError{err}
		}
	}
	w.close()
	return o.err
}
