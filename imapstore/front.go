package imapstore

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/resilmail/resilmail/internal/loginguard"
)

// front sits between a client's connection and go-imap's server, which
// parses no CONDSTORE or QRESYNC syntax. It frames the client's commands
// (line segments and literals) and hands go-imap one command at a time.
// The commands that carry that syntax (ENABLE CONDSTORE, SELECT
// (QRESYNC ...), FETCH (CHANGEDSINCE n), the MODSEQ fetch item, STORE
// (UNCHANGEDSINCE n), SEARCH MODSEQ, STATUS HIGHESTMODSEQ) are read whole,
// answered with the session's state or handed on without it, the session
// being told the rest (cmdState); go-imap's responses are scanned line by
// line to add what it cannot write (MODSEQ, [MODIFIED], HIGHESTMODSEQ,
// the ENABLED capabilities). It also does STARTTLS itself, so that it sees
// the clear text after it, and it states the capabilities.
//
// go-imap reads (Read) from its connection goroutine only, so the front's
// input side needs no lock; writes (Write, and writeOwn from the session's
// Poll and Idle) are serialized by omu.
type front struct {
	srv  *Server
	raw  net.Conn
	sess *session // set by NewSession, before go-imap reads

	mu  sync.Mutex // guards tr
	tr  net.Conn   // raw, or TLS over raw after STARTTLS
	br  *bufio.Reader
	out *coalescingConn

	// Input state, go-imap's goroutine only.
	pend    []byte
	litLeft int64 // bytes of a literal being passed to go-imap
	open    bool  // a passed command goes on after its literal
	long    bool  // a passed line goes on beyond what was handed

	omu   sync.Mutex
	cur   string // the tag of the command go-imap is running; "" between commands
	done  bool   // the tagged response to cur was written
	oline []byte // the response line being written, up to its LF
	olit  int64  // bytes of a literal in go-imap's output still to pass
	ocont bool   // oline continues a response after a literal
}

func newFront(srv *Server, c net.Conn) *front {
	return &front{srv: srv, raw: c, tr: c, br: bufio.NewReaderSize(c, 4096), out: newCoalescingConn(c)}
}

// Read hands go-imap the next piece of the client's input.
func (f *front) Read(p []byte) (int, error) {
	for len(f.pend) == 0 {
		if err := f.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, f.pend)
	f.pend = f.pend[n:]
	return n, nil
}

func (f *front) fill() error {
	f.omu.Lock()
	between := f.cur == "" || f.done
	if between {
		f.cur = ""
	}
	f.omu.Unlock()
	if between {
		f.litLeft, f.open, f.long = 0, false, false
		if f.sess != nil {
			f.sess.cmd = cmdState{}
		}
		return f.next()
	}
	if f.litLeft > 0 {
		buf := make([]byte, min(f.litLeft, 32<<10))
		n, err := f.br.Read(buf)
		f.litLeft -= int64(n)
		f.pend = buf[:n]
		if n > 0 {
			return nil
		}
		return err
	}
	// The rest of a command after a literal, the rest of a long line, or
	// what go-imap reads within a command (IDLE's DONE, a SASL answer).
	seg, err := f.br.ReadSlice('\n')
	f.pend = bytes.Clone(seg)
	f.long = errors.Is(err, bufio.ErrBufferFull)
	if f.long {
		return nil
	}
	f.open = false
	if n, _, _, ok := literalMarker(seg); ok {
		f.litLeft, f.open = n, true
	}
	if len(seg) > 0 {
		return nil
	}
	return err
}

// readLine reads a line of at most limit bytes; full is false when the
// line is longer (what was read is returned).
func (f *front) readLine(limit int) (line []byte, full bool, err error) {
	for {
		seg, err := f.br.ReadSlice('\n')
		line = append(line, seg...)
		switch {
		case err == nil:
			return line, true, nil
		case errors.Is(err, bufio.ErrBufferFull):
			if len(line) >= limit {
				return line, false, nil
			}
		default:
			return line, false, err
		}
	}
}

// commandHead returns a line's tag and command name (with "UID ").
func commandHead(line []byte) (tag, name string) {
	fields := strings.Fields(string(line[:min(len(line), 64)]))
	if len(fields) > 0 {
		tag = fields[0]
	}
	if len(fields) > 1 {
		name = strings.ToUpper(fields[1])
	}
	if name == "UID" && len(fields) > 2 {
		name += " " + strings.ToUpper(fields[2])
	}
	return tag, name
}

// frontCommands are the commands the front reads whole.
var frontCommands = map[string]bool{
	"STARTTLS": true, "ENABLE": true, "SELECT": true, "EXAMINE": true, "STATUS": true,
	"FETCH": true, "UID FETCH": true, "STORE": true, "UID STORE": true,
	"SEARCH": true, "UID SEARCH": true,
}

// next reads the client's next command and hands it to go-imap, rewritten
// or not, or answers it.
func (f *front) next() error {
	line, full, err := f.readLine(maxFrontCommand)
	if len(line) == 0 {
		return err
	}
	tag, name := commandHead(line)
	if !full || !frontCommands[name] || !validTag(tag) {
		f.pass(tag, line, !full)
		return nil
	}
	buf := line
	seg := 0 // where the last segment starts
	for {
		n, nonSync, brace, ok := literalMarker(buf[seg:])
		if !ok {
			break
		}
		if int64(len(buf))+n > maxFrontCommand {
			f.pass(tag, buf, false) // go-imap refuses or reads it
			return nil
		}
		if !nonSync {
			if err := f.writeOwn([]byte("+ Ready for literal data\r\n")); err != nil {
				return err
			}
			// go-imap must not ask for it again: {n} becomes {n+}.
			at := seg + brace + bytes.IndexByte(buf[seg+brace:], '}')
			buf = append(buf[:at:at], append([]byte("+"), buf[at:]...)...)
		}
		lit := make([]byte, n)
		if _, err := io.ReadFull(f.br, lit); err != nil {
			return err
		}
		buf = append(buf, lit...)
		seg = len(buf)
		more, full, err := f.readLine(maxFrontCommand - len(buf))
		buf = append(buf, more...)
		if err != nil {
			return err
		}
		if !full {
			f.pass(tag, buf, true)
			return nil
		}
	}
	cmd, err := parseCommand(buf)
	if err != nil {
		f.pass(tag, buf, false) // go-imap answers BAD
		return nil
	}
	return f.dispatch(cmd)
}

// pass hands b (the start of a command) to go-imap.
func (f *front) pass(tag string, b []byte, long bool) {
	f.pend = b
	f.long = long
	if n, _, _, ok := literalMarker(b); ok && !long {
		f.litLeft, f.open = n, true
	}
	f.omu.Lock()
	f.cur, f.done = "", false
	if validTag(tag) {
		f.cur = tag
	}
	f.omu.Unlock()
}

// answer writes the front's own complete answer to a command.
func (f *front) answer(b []byte) error {
	return f.writeOwn(b)
}

// writeOwn writes whole responses of the front or the session.
func (f *front) writeOwn(b []byte) error {
	f.omu.Lock()
	defer f.omu.Unlock()
	_, err := f.out.Write(b)
	return err
}

// Write passes go-imap's output on, line by line, rewriting the lines the
// session asked for.
func (f *front) Write(p []byte) (int, error) {
	f.omu.Lock()
	defer f.omu.Unlock()
	total := len(p)
	for len(p) > 0 {
		if f.olit > 0 {
			n := int(min(f.olit, int64(len(p))))
			if _, err := f.out.Write(p[:n]); err != nil {
				return 0, err
			}
			f.olit -= int64(n)
			p = p[n:]
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			f.oline = append(f.oline, p...)
			break
		}
		f.oline = append(f.oline, p[:i+1]...)
		p = p[i+1:]
		line := f.oline
		if !f.ocont {
			line = f.rewriteLocked(line)
		}
		if _, err := f.out.Write(line); err != nil {
			return 0, err
		}
		f.ocont = false
		if n, _, _, ok := literalMarker(f.oline); ok {
			f.olit, f.ocont = n, true
		}
		f.oline = f.oline[:0]
	}
	return total, nil
}

// rewriteLocked returns the first line of a response as it goes to the
// client.
func (f *front) rewriteLocked(line []byte) []byte {
	if bytes.HasPrefix(line, []byte("* CAPABILITY ")) || bytes.HasPrefix(line, []byte("* OK [CAPABILITY ")) ||
		(f.cur != "" && bytes.HasPrefix(line, []byte(f.cur+" OK [CAPABILITY "))) {
		line = f.capsLine(line)
	}
	if f.cur != "" && bytes.HasPrefix(line, []byte(f.cur+" ")) {
		f.done = true
		if f.sess != nil {
			return f.sess.taggedLine(line)
		}
		return line
	}
	if f.sess != nil && bytes.HasPrefix(line, []byte("* ")) {
		return f.sess.untaggedLine(line)
	}
	return line
}

// capsLine rewrites a capability list: STARTTLS while it is possible,
// AUTH=PLAIN where passwords are accepted (else LOGINDISABLED), and
// CONDSTORE and QRESYNC once logged in.
func (f *front) capsLine(line []byte) []byte {
	s := string(line)
	start := strings.Index(s, "CAPABILITY ") + len("CAPABILITY ")
	end := strings.IndexAny(s[start:], "]\r\n")
	if end < 0 {
		return line
	}
	end += start
	var caps []string
	for _, c := range strings.Fields(s[start:end]) {
		u := strings.ToUpper(c)
		if strings.HasPrefix(u, "AUTH=") || u == "LOGINDISABLED" || u == "STARTTLS" || u == "CONDSTORE" || u == "QRESYNC" {
			continue
		}
		caps = append(caps, c)
	}
	authed := f.sess != nil && f.sess.user != ""
	if !authed {
		if f.srv.o.TLSConfig != nil && !f.isTLS() {
			caps = append(caps, "STARTTLS")
		}
		if loginguard.Secure(f) {
			caps = append(caps, "AUTH=PLAIN")
		} else {
			caps = append(caps, "LOGINDISABLED")
		}
	} else {
		caps = append(caps, "CONDSTORE", "QRESYNC")
	}
	return []byte(s[:start] + strings.Join(caps, " ") + s[end:])
}

func (f *front) isTLS() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.tr.(*tls.Conn)
	return ok
}

// startTLS answers STARTTLS (RFC 9051 §6.2.1): whatever the client sent
// after the command is dropped (it was sent in clear), the handshake
// runs, and the session goes on over TLS.
func (f *front) startTLS(c *command) error {
	authed := f.sess != nil && f.sess.user != ""
	if f.srv.o.TLSConfig == nil || f.isTLS() || authed || len(c.args) > 0 || c.uid {
		return f.answer(fmt.Appendf(nil, "%s BAD STARTTLS not available\r\n", c.tag))
	}
	if err := f.writeOwn(fmt.Appendf(nil, "%s OK Begin TLS negotiation now\r\n", c.tag)); err != nil {
		return err
	}
	f.omu.Lock()
	f.out.Flush()
	f.out.stop()
	f.omu.Unlock()
	if n := f.br.Buffered(); n > 0 {
		f.srv.log.Warn("imap: data in clear after STARTTLS dropped", "remote", f.raw.RemoteAddr().String(), "bytes", n)
	}
	tc := tls.Server(f.raw, f.srv.o.TLSConfig)
	tc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("imapstore: STARTTLS handshake: %w", err)
	}
	tc.SetDeadline(time.Time{})
	f.mu.Lock()
	f.tr = tc
	f.mu.Unlock()
	f.br = bufio.NewReaderSize(tc, 4096)
	f.omu.Lock()
	f.out = newCoalescingConn(tc)
	f.omu.Unlock()
	return nil
}

// noteModSeq makes the next FETCH response go-imap writes carry MODSEQ
// (m).
func (f *front) noteModSeq(m uint64) {
	f.omu.Lock()
	f.sess.cmd.noteModSeq = m
	f.omu.Unlock()
}

// Close flushes and closes the connection.
func (f *front) Close() error {
	f.omu.Lock()
	out := f.out
	f.omu.Unlock()
	return out.Close()
}

// LocalAddr returns the connection's local address.
func (f *front) LocalAddr() net.Addr { return f.raw.LocalAddr() }

// RemoteAddr returns the client's address.
func (f *front) RemoteAddr() net.Addr { return f.raw.RemoteAddr() }

// SetDeadline sets the read deadline (writes have the flush timeout).
func (f *front) SetDeadline(t time.Time) error { return f.SetReadDeadline(t) }

// SetReadDeadline sets the deadline of reads from the client.
func (f *front) SetReadDeadline(t time.Time) error { return f.NetConn().SetReadDeadline(t) }

// SetWriteDeadline is go-imap's per-response deadline: the flushes keep
// their own.
func (f *front) SetWriteDeadline(time.Time) error { return nil }

// NetConn returns the connection to the client (TLS after STARTTLS).
func (f *front) NetConn() net.Conn {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tr
}
