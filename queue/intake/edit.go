package intake

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// A HeaderOp is the kind of a HeaderEdit.
type HeaderOp int

// The header edits, as a milter asks for them (SMFIR_ADDHEADER,
// SMFIR_INSHEADER, SMFIR_CHGHEADER).
const (
	// HeaderAppend adds a field at the end of the header.
	HeaderAppend HeaderOp = iota
	// HeaderInsert adds a field after the Index-th field of the header
	// (0: at the very top, under this node's own Received field).
	HeaderInsert
	// HeaderChange replaces the value of the Index-th field (1-based)
	// named Name (case-insensitive), or removes that field when Value is
	// "". When there are fewer such fields, a non-empty Value is appended
	// as a new field and an empty one changes nothing.
	HeaderChange
)

// A HeaderEdit is a change a Scanner asks for in the message's header: a
// milter adding its X-Spam fields, an authentication stage adding its
// Authentication-Results and removing forged ones. Edits apply to the
// header the client sent, never to the trace fields this node adds.
type HeaderEdit struct {
	Op    HeaderOp
	Name  string
	Value string // unfolded or folded with CRLF (or LF) and whitespace
	Index int
}

// ErrBadEdit wraps the reason a verdict's header edits could not be
// applied: a bad field name or value, or a header longer than the part
// of the message held in memory. Such a verdict counts as no verdict.
var ErrBadEdit = errors.New("intake: header edit cannot be applied")

// headerField is one field of a parsed header: its name and the whole
// field, CRLF-terminated lines included.
type headerField struct {
	name string
	raw  []byte
}

// applyEdits applies edits to the header at the start of msg and returns
// the new message. complete says that msg is the whole message (so a
// message without an empty line is all header); otherwise the header must
// end inside msg.
func applyEdits(msg []byte, complete bool, edits []HeaderEdit) ([]byte, error) {
	if len(edits) == 0 {
		return msg, nil
	}
	fields, rest, err := splitHeader(msg, complete)
	if err != nil {
		return nil, err
	}
	if len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
		// A continuation line with no field above it would join a field
		// added before it.
		return nil, fmt.Errorf("%w: the header starts with a continuation line", ErrBadEdit)
	}
	for _, e := range edits {
		line, err := e.field()
		if err != nil {
			return nil, err
		}
		switch e.Op {
		case HeaderAppend:
			fields = append(fields, headerField{name: e.Name, raw: line})
		case HeaderInsert:
			i := min(max(e.Index, 0), len(fields))
			fields = append(fields[:i], append([]headerField{{name: e.Name, raw: line}}, fields[i:]...)...)
		case HeaderChange:
			if e.Index < 1 {
				return nil, fmt.Errorf("%w: change of field %q at index %d", ErrBadEdit, e.Name, e.Index)
			}
			n, at := 0, -1
			for i, f := range fields {
				if strings.EqualFold(f.name, e.Name) {
					if n++; n == e.Index {
						at = i
						break
					}
				}
			}
			switch {
			case at >= 0 && e.Value == "":
				fields = append(fields[:at], fields[at+1:]...)
			case at >= 0:
				keep := e
				keep.Name = fields[at].name // the field keeps its name's spelling
				if line, err = keep.field(); err != nil {
					return nil, err
				}
				fields[at] = headerField{name: keep.Name, raw: line}
			case e.Value != "":
				fields = append(fields, headerField{name: e.Name, raw: line})
			}
		default:
			return nil, fmt.Errorf("%w: unknown operation %d", ErrBadEdit, e.Op)
		}
	}
	size := len(rest)
	for _, f := range fields {
		size += len(f.raw) + 2
	}
	out := make([]byte, 0, size)
	for _, f := range fields {
		out = append(out, f.raw...)
		if len(f.raw) > 0 && f.raw[len(f.raw)-1] != '\n' {
			out = append(out, '\r', '\n') // a last line without its end
		}
	}
	return append(out, rest...), nil
}

// field returns the edit's field as header lines, CRLF-terminated, or an
// error when its name or value could not be written safely.
func (e HeaderEdit) field() ([]byte, error) {
	if e.Name == "" || len(e.Name) > 998 {
		return nil, fmt.Errorf("%w: bad field name length %d", ErrBadEdit, len(e.Name))
	}
	for i := 0; i < len(e.Name); i++ {
		if c := e.Name[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return nil, fmt.Errorf("%w: bad field name %q", ErrBadEdit, e.Name)
		}
	}
	if e.Op == HeaderChange && e.Value == "" {
		return nil, nil
	}
	var b bytes.Buffer
	b.WriteString(e.Name)
	b.WriteByte(':')
	v := strings.ReplaceAll(e.Value, "\r\n", "\n")
	if v != "" && v[0] != ' ' && v[0] != '\t' {
		b.WriteByte(' ')
	}
	for i, line := range strings.Split(v, "\n") {
		if i > 0 {
			if line == "" || (line[0] != ' ' && line[0] != '\t') {
				return nil, fmt.Errorf("%w: field %q has a continuation line that does not start with whitespace", ErrBadEdit, e.Name)
			}
			b.WriteString("\r\n")
		}
		for j := 0; j < len(line); j++ {
			if c := line[j]; c == 0 || c == '\r' {
				return nil, fmt.Errorf("%w: field %q holds a NUL or a bare CR", ErrBadEdit, e.Name)
			}
		}
		b.WriteString(line)
	}
	if b.Len() > 64<<10 {
		return nil, fmt.Errorf("%w: field %q is longer than 64 KiB", ErrBadEdit, e.Name)
	}
	b.WriteString("\r\n")
	return b.Bytes(), nil
}

// splitHeader cuts msg into its header fields and the rest (the empty line
// and the body). Lines end with CRLF or LF, kept as they are. A line before
// the first field that starts with whitespace, or a line without a colon,
// ends the header as go-message does not: it is kept in the rest, so that
// the message is written back unchanged around the edits.
func splitHeader(msg []byte, complete bool) ([]headerField, []byte, error) {
	var fields []headerField
	for off := 0; ; {
		if off == len(msg) {
			if !complete {
				return nil, nil, fmt.Errorf("%w: the header is longer than the part of the message held in memory", ErrBadEdit)
			}
			return fields, msg[off:], nil
		}
		end := bytes.IndexByte(msg[off:], '\n')
		if end < 0 {
			if !complete {
				return nil, nil, fmt.Errorf("%w: the header is longer than the part of the message held in memory", ErrBadEdit)
			}
			end = len(msg) - off
		} else {
			end++
		}
		line := msg[off : off+end]
		switch {
		case len(bytes.TrimRight(line, "\r\n")) == 0:
			return fields, msg[off:], nil // the empty line
		case (line[0] == ' ' || line[0] == '\t') && len(fields) > 0:
			f := &fields[len(fields)-1]
			f.raw = msg[off-len(f.raw) : off+end]
		default:
			colon := bytes.IndexByte(line, ':')
			if colon <= 0 || line[0] == ' ' || line[0] == '\t' {
				return fields, msg[off:], nil // not a field: the body starts here
			}
			fields = append(fields, headerField{name: string(bytes.TrimRight(line[:colon], " \t")), raw: line})
		}
		off += end
	}
}

// ApplyEdits applies edits to the header at the start of msg as a Backend
// applies a verdict's edits, and returns the new message; complete says
// that msg is the whole message. A ScanMiddleware uses it to show the next
// Scanner the message as it will be kept (the indexes of that Scanner's
// own edits then count on the edited header).
func ApplyEdits(msg []byte, complete bool, edits []HeaderEdit) ([]byte, error) {
	return applyEdits(msg, complete, edits)
}
