package wire

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/resilmail/resilmail"
)

const (
	// Magic names the format in the header line.
	Magic = "resilmail-stream"
	// CurrentVersion is the version a [Writer] writes by default. A
	// [Reader] reads every version from MinVersion to
	// CurrentVersion.
	CurrentVersion = 3
	// MinVersion is the oldest version a [Reader] reads:
	// version 1's heartbeats carry no time, versions 1 and 2 have no body
	// frames.
	MinVersion = 1
	// DefaultMaxFrame is the largest frame payload a [Reader] accepts
	// by default: 4 MiB, more than the largest valid change.
	DefaultMaxFrame = 4 << 20
	// MaxErrorFrame is the longest text an error frame carries.
	MaxErrorFrame = 4096
)

// A FrameType says what a frame carries.
type FrameType uint8

// The frame types. The numbers are part of the format.
const (
	// FrameChange carries one durable change of the primary's journal.
	FrameChange FrameType = 1
	// FrameHeartbeat carries the primary's durable position, epoch and
	// clock, sent when idle so that lag is measurable.
	FrameHeartbeat FrameType = 2
	// FrameError carries the text of an error that ends the stream.
	FrameError FrameType = 3
	// FrameBody carries a body and its digest, ahead of the change that
	// appends it (version 3).
	FrameBody FrameType = 4
)

// String returns "change", "heartbeat" or "error".
func (t FrameType) String() string {
	switch t {
	case FrameChange:
		return "change"
	case FrameHeartbeat:
		return "heartbeat"
	case FrameError:
		return "error"
	case FrameBody:
		return "body"
	}
	return "FrameType(" + strconv.Itoa(int(t)) + ")"
}

const frameHeaderSize = 9

var streamCRC = crc32.MakeTable(crc32.Castagnoli)

// A Heartbeat is what the primary says when it has no change to send.
type Heartbeat struct {
	// Position is the primary's newest durable position.
	Position uint64
	// Epoch is the primary's epoch.
	Epoch resilmail.Epoch
	// Time is the primary's clock when it sent the heartbeat; zero in a
	// version 1 stream.
	Time time.Time
}

// A Frame is one decoded frame: Type says which of the other fields is
// set.
type Frame struct {
	Type      FrameType
	Change    resilmail.Change // FrameChange
	Heartbeat Heartbeat        // FrameHeartbeat
	Error     string           // FrameError
	// Digest and Body are a FrameBody's; Body is the frame's own copy,
	// not yet verified against Digest.
	Digest resilmail.Digest
	Body   []byte
	// Size is the frame's size on the wire, header included.
	Size int
}

// A Writer writes a stream. It is not safe for concurrent use and does
// not buffer beyond one frame: wrap w in a bufio.Writer and flush it after
// each batch.
type Writer struct {
	w       io.Writer
	version int
	buf     []byte
	written int64
}

// NewWriter writes the header line of a version CurrentVersion stream
// to w and returns a Writer for its frames.
func NewWriter(w io.Writer) (*Writer, error) {
	return NewWriterVersion(w, CurrentVersion)
}

// NewWriterVersion is NewWriter for an older reader: version is
// 2 or CurrentVersion.
func NewWriterVersion(w io.Writer, version int) (*Writer, error) {
	if version < 2 || version > CurrentVersion {
		return nil, fmt.Errorf("wire: cannot write stream version %d", version)
	}
	fw := &Writer{w: w, version: version}
	hdr := Magic + " " + strconv.Itoa(version) + "\n"
	n, err := io.WriteString(w, hdr)
	fw.written += int64(n)
	return fw, err
}

// Version returns the version of the stream being written.
func (w *Writer) Version() int { return w.version }

// Written returns the bytes written so far, header included.
func (w *Writer) Written() int64 { return w.written }

func (w *Writer) frame(t FrameType, payload func([]byte) ([]byte, error)) error {
	b := append(w.buf[:0], byte(t), 0, 0, 0, 0, 0, 0, 0, 0)
	b, err := payload(b)
	if err != nil {
		return err
	}
	n := len(b) - frameHeaderSize
	if n > DefaultMaxFrame {
		return fmt.Errorf("wire: %s frame of %d bytes is too large", t, n)
	}
	binary.BigEndian.PutUint32(b[1:5], uint32(n))
	binary.BigEndian.PutUint32(b[5:9], frameCRC(b[:5], b[frameHeaderSize:]))
	w.buf = b
	m, err := w.w.Write(b)
	w.written += int64(m)
	return err
}

func frameCRC(hdr, payload []byte) uint32 {
	return crc32.Update(crc32.Checksum(hdr, streamCRC), streamCRC, payload)
}

// WriteChange writes a change frame.
func (w *Writer) WriteChange(c *resilmail.Change) error {
	return w.frame(FrameChange, c.AppendBinary)
}

// WriteBody writes a body frame; a version 2 stream has none, and a body
// too large for a frame is an error.
func (w *Writer) WriteBody(d resilmail.Digest, body []byte) error {
	if w.version < 3 {
		return fmt.Errorf("wire: a version %d stream carries no bodies", w.version)
	}
	return w.frame(FrameBody, func(b []byte) ([]byte, error) {
		return append(append(b, d[:]...), body...), nil
	})
}

// WriteHeartbeat writes a heartbeat frame.
func (w *Writer) WriteHeartbeat(h Heartbeat) error {
	return w.frame(FrameHeartbeat, func(b []byte) ([]byte, error) {
		b = binary.AppendUvarint(b, h.Position)
		b = binary.AppendUvarint(b, uint64(h.Epoch))
		return binary.BigEndian.AppendUint64(b, uint64(h.Time.UnixNano())), nil
	})
}

// WriteError writes an error frame with msg, cut to MaxErrorFrame bytes
// and made valid UTF-8.
func (w *Writer) WriteError(msg string) error {
	msg = truncateUTF8(msg, MaxErrorFrame)
	return w.frame(FrameError, func(b []byte) ([]byte, error) { return append(b, msg...), nil })
}

func truncateUTF8(s string, n int) string {
	s = string([]rune(s)) // replaces invalid bytes with U+FFFD
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// A Reader decodes a stream. It never panics on any input: every
// malformed input is an error wrapping ErrFrame, except a stream that ends
// cleanly between frames, which is io.EOF, and an error of the underlying
// reader, returned wrapped. After an error, Next returns it again.
type Reader struct {
	r       *bufio.Reader
	max     int
	version int
	read    int64
	err     error
	buf     []byte
}

// NewReader returns a Reader of the stream r; it reads the header
// on the first call to Next.
func NewReader(r io.Reader, opts *ReaderOptions) *Reader {
	fr := &Reader{r: bufio.NewReaderSize(r, 64<<10), max: DefaultMaxFrame}
	if opts != nil && opts.MaxFrame > 0 {
		fr.max = opts.MaxFrame
	}
	return fr
}

// Version returns the stream's version, or 0 before the header is read.
func (r *Reader) Version() int { return r.version }

// BytesRead returns the bytes read so far, header included.
func (r *Reader) BytesRead() int64 { return r.read }

func frameErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFrame, fmt.Sprintf(format, args...))
}

func (r *Reader) header() error {
	const maxLine = len(Magic) + 12
	var line []byte
	for len(line) <= maxLine {
		c, err := r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				if len(line) == 0 {
					return frameErr("empty stream, no header")
				}
				return frameErr("truncated header")
			}
			return fmt.Errorf("wire: reading stream header: %w", err)
		}
		r.read++
		if c == '\n' {
			break
		}
		line = append(line, c)
	}
	if len(line) > maxLine || len(line) < len(Magic)+2 || string(line[:len(Magic)+1]) != Magic+" " {
		return frameErr("not a replication stream (header %q)", truncateUTF8(string(line), 64))
	}
	v, err := strconv.Atoi(string(line[len(Magic)+1:]))
	if err != nil || v < MinVersion || v > CurrentVersion {
		return frameErr("unsupported stream version %q (want %d to %d)", line[len(Magic)+1:], MinVersion, CurrentVersion)
	}
	r.version = v
	return nil
}

// Buffered returns how many bytes are read from the stream and not yet
// decoded: zero between batches that the writer flushed separately.
func (r *Reader) Buffered() int { return r.r.Buffered() }

// Next returns the next frame.
func (r *Reader) Next() (Frame, error) {
	if r.err != nil {
		return Frame{}, r.err
	}
	f, err := r.next()
	if err != nil {
		r.err = err
	}
	return f, err
}

func (r *Reader) next() (Frame, error) {
	if r.version == 0 {
		if err := r.header(); err != nil {
			return Frame{}, err
		}
	}
	var h [frameHeaderSize]byte
	n, err := io.ReadFull(r.r, h[:])
	r.read += int64(n)
	switch {
	case err == io.EOF:
		return Frame{}, io.EOF
	case err == io.ErrUnexpectedEOF:
		return Frame{}, frameErr("truncated frame header")
	case err != nil:
		return Frame{}, fmt.Errorf("wire: reading stream: %w", err)
	}
	t := FrameType(h[0])
	size := binary.BigEndian.Uint32(h[1:5])
	if t < FrameChange || t > FrameBody || t == FrameBody && r.version < 3 {
		return Frame{}, frameErr("unknown frame type %d in a version %d stream", h[0], r.version)
	}
	if uint64(size) > uint64(r.max) {
		return Frame{}, frameErr("%s frame of %d bytes exceeds the limit of %d", t, size, r.max)
	}
	if cap(r.buf) < int(size) {
		r.buf = make([]byte, size)
	}
	p := r.buf[:size]
	n, err = io.ReadFull(r.r, p)
	r.read += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return Frame{}, frameErr("truncated %s frame: %d of %d bytes", t, n, size)
	} else if err != nil {
		return Frame{}, fmt.Errorf("wire: reading stream: %w", err)
	}
	if frameCRC(h[:5], p) != binary.BigEndian.Uint32(h[5:9]) {
		return Frame{}, frameErr("%s frame of %d bytes fails its CRC", t, size)
	}
	f := Frame{Type: t, Size: frameHeaderSize + int(size)}
	switch t {
	case FrameChange:
		if err := f.Change.UnmarshalBinary(p); err != nil {
			return Frame{}, frameErr("change frame: %v", err)
		}
	case FrameHeartbeat:
		hb, err := decodeHeartbeat(p, r.version)
		if err != nil {
			return Frame{}, err
		}
		f.Heartbeat = hb
	case FrameError:
		if len(p) > MaxErrorFrame || !utf8.Valid(p) {
			return Frame{}, frameErr("error frame is not UTF-8 text of at most %d bytes", MaxErrorFrame)
		}
		f.Error = string(p)
	case FrameBody:
		if len(p) < len(f.Digest) {
			return Frame{}, frameErr("body frame of %d bytes has no digest", len(p))
		}
		copy(f.Digest[:], p)
		f.Body = append([]byte(nil), p[len(f.Digest):]...)
	}
	return f, nil
}

func decodeHeartbeat(p []byte, version int) (Heartbeat, error) {
	var hb Heartbeat
	pos, n := binary.Uvarint(p)
	if n <= 0 {
		return hb, frameErr("heartbeat: bad position")
	}
	p = p[n:]
	ep, n := binary.Uvarint(p)
	if n <= 0 {
		return hb, frameErr("heartbeat: bad epoch")
	}
	p = p[n:]
	hb.Position, hb.Epoch = pos, resilmail.Epoch(ep)
	if version >= 2 {
		if len(p) < 8 {
			return hb, frameErr("heartbeat: no time")
		}
		hb.Time = time.Unix(0, int64(binary.BigEndian.Uint64(p))).UTC()
		p = p[8:]
	}
	if len(p) != 0 {
		return hb, frameErr("heartbeat: %d trailing bytes", len(p))
	}
	return hb, nil
}
