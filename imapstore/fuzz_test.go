package imapstore

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// FuzzParseCommand feeds the front's command tokenizer and the walkers
// over its tokens (SEARCH keys, FETCH and STORE modifiers, SELECT
// parameters): no input may panic, and every token's span lies within
// the command.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{
		"a FETCH 1:* (FLAGS MODSEQ) (CHANGEDSINCE 12 VANISHED)\r\n",
		"a UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From {2+}\r\nTo)]<0.10>)\r\n",
		"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541 (1,3:5 41,43:45)))\r\n",
		"a STORE 1:3 (UNCHANGEDSINCE 0) +FLAGS.SILENT (\\Seen $Junk)\r\n",
		`a SEARCH RETURN (ALL MIN) CHARSET UTF-8 OR NOT MODSEQ "/flags/\\draft" all 5 (SUBJECT "x\"y" HEADER To {3+}` + "\r\nabc)\r\n",
		"a ENABLE CONDSTORE QRESYNC IMAP4rev2\r\n",
		"a STATUS \"Sent Items\" (MESSAGES HIGHESTMODSEQ)\r\n",
		"a APPEND INBOX ~{3+}\r\n\x00\x01\x02\r\n",
		"* FETCH ((((\r\n",
		"a SEARCH {99999999999}\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		literalMarker(b)
		c, err := parseCommand(b)
		if err != nil {
			return
		}
		var check func(ts []token)
		check = func(ts []token) {
			for _, tk := range ts {
				if tk.start < 0 || tk.end > len(b) || tk.start > tk.end {
					t.Fatalf("token %+v outside the command of %d bytes", tk, len(b))
				}
				check(tk.list)
			}
		}
		check(c.args)
		for i := 0; i < len(c.args); {
			var found []modseqKey
			j, ok := searchKeys(c.args, i, 0, &found)
			if !ok || j <= i {
				break
			}
			i = j
		}
		out := c.rebuild(c.args, "")
		if !bytes.HasSuffix(out, []byte("\r\n")) {
			t.Fatalf("rebuilt command %q has no CRLF", out)
		}
		var p selectParams
		for _, tk := range c.args {
			p.parseQResync(tk)
			parseModSeq(tk, true)
			parseSet(tk.val, 7)
		}
	})
}

// memConn is a net.Conn over a byte slice (reads) and a buffer (writes).
type memConn struct {
	net.Conn
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *memConn) Read(p []byte) (int, error)       { return c.in.Read(p) }
func (c *memConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
func (c *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
func (c *memConn) SetDeadline(t time.Time) error    { return nil }
func (c *memConn) NetConn() net.Conn                { return nil }
func (c *memConn) written() []byte                  { return c.out.Bytes() }
func newMemConn(b []byte) *memConn                  { return &memConn{in: bytes.NewReader(b)} }

// FuzzFront feeds a front client bytes (as go-imap reads them, each
// command answered before the next is read) and server bytes in pieces:
// no input may panic, nothing handed on is larger than a command's bound
// (or a literal chunk), and server output without capability lists goes
// out unchanged.
func FuzzFront(f *testing.F) {
	f.Add([]byte("a LOGIN x y\r\nb SELECT INBOX (CONDSTORE)\r\nc APPEND INBOX {3}\r\nabc\r\nd IDLE\r\nDONE\r\n"),
		[]byte("* 1 FETCH (BODY[] {5}\r\n* OK \r\n)\r\na OK done\r\n"), uint8(3))
	f.Add([]byte("a SEARCH SUBJECT {2}\r\nxy MODSEQ 5\r\nb FETCH 1:* (MODSEQ) (CHANGEDSINCE 1)\r\n"),
		[]byte("* 2 EXISTS\r\n+ idling\r\n"), uint8(1))
	f.Fuzz(func(t *testing.T, in, srvOut []byte, chunk uint8) {
		srv := &Server{o: Options{ReadOnly: func() bool { return false }}, log: quiet}
		mc := newMemConn(in)
		fr := newFront(srv, mc)
		p := make([]byte, 4096)
		for range 1000 {
			n, err := fr.Read(p)
			if err != nil {
				break
			}
			if n > len(p) {
				t.Fatalf("read %d", n)
			}
			fr.omu.Lock()
			fr.done = true // go-imap answered
			fr.omu.Unlock()
		}
		out := newMemConn(nil)
		fr.out = newCoalescingConn(out)
		fr.cur = ""
		step := int(chunk%64) + 1
		for b := srvOut; len(b) > 0; {
			n := min(step, len(b))
			if _, err := fr.Write(b[:n]); err != nil {
				t.Fatal(err)
			}
			b = b[n:]
		}
		fr.out.Flush()
		if !bytes.Contains(srvOut, []byte("CAPABILITY")) && !bytes.Equal(out.written(), srvOut[:len(srvOut)-len(fr.oline)]) {
			t.Fatalf("output changed:\n%q\n%q", srvOut, out.written())
		}
	})
}

// FuzzHeaderLen checks the header-length scan (BODY[HEADER], BODY[TEXT],
// SEARCH BODY) against a line-by-line reading, with every growth of its
// buffer: the header ends after the first empty line, CRLF or bare LF.
func FuzzHeaderLen(f *testing.F) {
	for _, s := range []string{
		"Subject: a\r\n\r\nbody", "Subject: a\n\nbody", "\r\nbody", "\nbody", "no header end",
		"A: b\n\r\nc", "A: b\r\n\nc", "A: b\r\n\r", "A: b\n", "A: b\r\n\r\n\r\n", "",
	} {
		f.Add([]byte(s), uint8(1))
	}
	f.Fuzz(func(t *testing.T, b []byte, initial uint8) {
		want := int64(len(b))
		for off := 0; off < len(b); {
			i := bytes.IndexByte(b[off:], '\n')
			if i < 0 {
				break
			}
			line := b[off : off+i]
			off += i + 1
			if len(line) == 0 || (len(line) == 1 && line[0] == '\r') {
				want = int64(off)
				break
			}
		}
		got, err := headerLenFrom(bytes.NewReader(b), int64(len(b)), int(initial%32)+1)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("headerLen(%q) = %d, want %d", b, got, want)
		}
		if n, ok := headerEnd(b); ok != (want < int64(len(b)) || (want == int64(len(b)) && ok)) || (ok && int64(n) != want) {
			t.Fatalf("headerEnd(%q) = %d, %v; want %d", b, n, ok, want)
		}
	})
}

// FuzzParseCache feeds the parse cache file's reader: no input may panic,
// and what it accepts has a checksum that matches.
func FuzzParseCache(f *testing.F) {
	valid := parseCacheMagic + `{"d":"` + strings.Repeat("ab", 32) + `","e":{"Subject":"x"},"b":{"m":{"c":[{"s":{"p":{"Type":"text","Subtype":"plain","Size":3}}},{"s":{"p":{"Type":"message","Subtype":"rfc822"},"r":{"e":null,"b":{"s":{"p":{"Type":"text"}}},"n":1}}}],"t":"mixed"}}}` + "\n"
	sum := sha256.Sum256([]byte(valid))
	f.Add([]byte(valid + fmt.Sprintf("sha256 %x\n", sum)))
	f.Add([]byte(valid))
	f.Add([]byte(parseCacheMagic + "sha256 0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := parseParseCache(b)
		if err != nil {
			return
		}
		for _, e := range entries {
			e.st.bs.Walk(func([]int, imap.BodyStructure) bool { return true })
			structureSize(e.st.bs)
		}
	})
}
