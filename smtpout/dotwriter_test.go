package smtpout

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// sinkConn is a net.Conn that keeps what is written to it.
type sinkConn struct {
	net.Conn // nil: only Write and SetWriteDeadline are called
	buf      bytes.Buffer
	writes   int
}

func (c *sinkConn) Write(p []byte) (int, error)      { c.writes++; return c.buf.Write(p) }
func (c *sinkConn) SetWriteDeadline(time.Time) error { return nil }

// stuff runs body through copyBody, read in chunks of chunk bytes, into an
// output buffer of size bytes, and returns what was written and the number
// of writes.
func stuff(t testing.TB, body []byte, chunk, size int) ([]byte, int) {
	sc := &sinkConn{}
	o := &out{buf: make([]byte, 0, size), d: &Deliverer{}, ctx: context.Background(), cn: &conn{top: sc}}
	if err := copyBody(o, bytes.NewReader(body), make([]byte, chunk)); err != nil {
		t.Fatal(err)
	}
	if err := o.flush(); err != nil {
		t.Fatal(err)
	}
	return sc.buf.Bytes(), sc.writes
}

// dotWriterOutput is what net/textproto's DotWriter makes of body.
func dotWriterOutput(body []byte) []byte {
	var b bytes.Buffer
	w := textproto.NewWriter(bufio.NewWriter(&b))
	dw := w.DotWriter()
	dw.Write(body)
	dw.Close()
	return b.Bytes()
}

func TestDotWriter(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", "\r\n.\r\n"},
		{"a\r\n", "a\r\n.\r\n"},
		{"a", "a\r\n.\r\n"},
		{"a\r", "a\r\n.\r\n"},
		{".\r\n", "..\r\n.\r\n"},
		{"a\r\n.b\r\n..\r\n", "a\r\n..b\r\n...\r\n.\r\n"},
		{"a\n.\nb", "a\r\n..\r\nb\r\n.\r\n"},     // bare LF: CRLF, as DotWriter
		{"a\r.b\r\n", "a\r.b\r\n.\r\n"},          // a bare CR does not end a line
		{"\r\n\r\n.\r\n", "\r\n\r\n..\r\n.\r\n"}, // empty lines
		{"x\r\r\n", "x\r\r\r\n.\r\n"},            // DotWriter's own way with CR CR LF
		{strings.Repeat("ab\r\n", 3), "ab\r\nab\r\nab\r\n.\r\n"},
	} {
		for _, chunk := range []int{1, 2, 3, 1000} {
			got, _ := stuff(t, []byte(tt.in), chunk, 4)
			if string(got) != tt.want {
				t.Errorf("%q in chunks of %d: got %q, want %q", tt.in, chunk, got, tt.want)
			}
			if want := dotWriterOutput([]byte(tt.in)); !bytes.Equal(got, want) {
				t.Errorf("%q: got %q, DotWriter %q", tt.in, got, want)
			}
		}
	}
}

// TestOneWrite: a message that fits in the buffer leaves in one write,
// final "." included; a larger one in as many writes as buffers it fills.
func TestOneWrite(t *testing.T) {
	msg := bytes.Repeat([]byte(strings.Repeat("x", 76)+"\r\n"), 4096/78)
	if _, n := stuff(t, msg, readBufSize, bodyBufSize); n != 1 {
		t.Errorf("4 KiB message: %d writes, want 1", n)
	}
	big := bytes.Repeat(msg, 40) // 160 KiB
	got, n := stuff(t, big, readBufSize, bodyBufSize)
	if want := (len(got) + bodyBufSize - 1) / bodyBufSize; n != want {
		t.Errorf("%d bytes: %d writes, want %d", len(got), n, want)
	}
}

// FuzzDotWriter checks that copyBody writes what net/textproto's DotWriter
// writes, whatever the chunks the message is read in and the size of the
// output buffer.
func FuzzDotWriter(f *testing.F) {
	for _, s := range []string{"", "a\r\n", ".\r\n", "a\n.\n", "a\r.\r\n", "x\r\r\n", "\r", "\n", "..", "a\r\n.\r\n.\r\n"} {
		f.Add([]byte(s), uint8(1), uint8(3))
	}
	f.Fuzz(func(t *testing.T, body []byte, chunk, size uint8) {
		got, _ := stuff(t, body, int(chunk)%64+1, int(size)%64+1)
		if want := dotWriterOutput(body); !bytes.Equal(got, want) {
			t.Fatalf("%q: got %q, DotWriter %q", body, got, want)
		}
	})
}
