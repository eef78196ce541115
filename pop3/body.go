package pop3

import (
	"bufio"
	"context"
	"errors"
	"io"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

func uidSet(uids []uint32) resilmail.UIDSet {
	var s resilmail.UIDSet
	for _, u := range uids {
		s = s.Add(u)
	}
	return s
}

const sizeKey = "pop3.size.1"

// sentSize returns the octets RETR sends for m (bare LFs become CRLF, a
// missing final CRLF is added; dot-stuffing and the final "." are not
// counted), computed once per body.
func (s *Server) sentSize(ctx context.Context, m store.Message) (int64, error) {
	v, err := s.st.Derived(ctx, m.Digest, sizeKey, func(r *store.BodyReader) (any, int64, error) {
		cw := &countWriter{}
		if err := writeLines(cw, r.Section(0, r.Size()), -1, false); err != nil {
			return nil, 0, err
		}
		return cw.n, 8, nil
	})
	if err != nil {
		return 0, err
	}
	return v.(int64), nil
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// writeStuffed writes a message as RETR or TOP send it: CRLF line ends,
// dot-stuffed, without the final ".". lines >= 0 sends the header, the
// blank line and that many lines of the body.
func writeStuffed(w io.Writer, r io.Reader, lines int) error {
	return writeLines(w, r, lines, true)
}

func writeLines(w io.Writer, r io.Reader, lines int, stuff bool) error {
	br := bufio.NewReaderSize(r, 32<<10)
	inBody := false
	bodyLines := 0
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A very long line: write it in pieces, keeping state.
			if err := writePiece(w, line, stuff, true); err != nil {
				return err
			}
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = br.ReadSlice('\n')
				if errors.Is(err, bufio.ErrBufferFull) {
					if _, werr := w.Write(line); werr != nil {
						return werr
					}
				}
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if err := writeEnd(w, line); err != nil {
				return err
			}
		} else {
			if len(line) == 0 && errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if err := writePiece(w, line, stuff, false); err != nil {
				return err
			}
		}
		if inBody {
			bodyLines++
		}
		if !inBody && (len(line) <= 2 && (string(line) == "\r\n" || string(line) == "\n")) {
			inBody = true
		}
		if lines >= 0 && inBody && bodyLines >= lines {
			return nil
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
	}
}

// writePiece writes the start of a line: stuffed if it begins with ".",
// and, when it is the whole line, with CRLF as its end.
func writePiece(w io.Writer, line []byte, stuff, partial bool) error {
	if stuff && len(line) > 0 && line[0] == '.' {
		if _, err := w.Write([]byte{'.'}); err != nil {
			return err
		}
	}
	if partial {
		_, err := w.Write(line)
		return err
	}
	return writeEnd(w, line)
}

// writeEnd writes the rest of a line with CRLF as its end.
func writeEnd(w io.Writer, line []byte) error {
	n := len(line)
	if n > 0 && line[n-1] == '\n' {
		n--
	}
	if n > 0 && line[n-1] == '\r' {
		n--
	}
	if _, err := w.Write(line[:n]); err != nil {
		return err
	}
	_, err := w.Write([]byte("\r\n"))
	return err
}
