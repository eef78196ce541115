package replicate

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/resilmail/resilmail"
)

// The replication stream's wire format.
//
// A stream starts with a header line naming the format and its version,
// StreamMagic + " " + version + "\n", e.g. "resilmail-stream 3\n". Frames
// follow, each as
//
//	type    uint8   FrameChange, FrameHeartbeat, FrameError or FrameBody
//	length  uint32  payload length
//	crc     uint32  CRC-32C (Castagnoli) of type, length and payload
//	payload [length]byte
//
// with integers big-endian. A change frame's payload is the change's
// [resilmail.Change.MarshalBinary]; a heartbeat's is the primary's durable
// position and epoch as uvarints, then (from version 2) the primary's clock
// as int64 Unix nanoseconds; an error frame's is UTF-8 text; a body frame's
// (from version 3) is the body's SHA-256 digest followed by the body.
//
// A version 3 stream may carry a body frame before the change that appends
// it, so that the replica need not fetch small bodies separately, and ends
// every batch of changes with a heartbeat, so that the replica knows where
// to make what it received durable and acknowledge it (in version 2, where
// its read buffer runs empty). A primary writes version 3 only to a
// replica that asks for it, and version 2 otherwise.
const (
	// StreamMagic names the format in the header line.
	StreamMagic = "resilmail-stream"
	// StreamVersion is the version a [FrameWriter] writes by default. A
	// [FrameReader] reads every version from MinStreamVersion to
	// StreamVersion.
	StreamVersion = 3
	// MinStreamVersion is the oldest version a [FrameReader] reads:
	// version 1's heartbeats carry no time, versions 1 and 2 have no body
	// frames.
	MinStreamVersion = 1
	// DefaultMaxFrame is the largest frame payload a [FrameReader] accepts
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

// ErrFrame is wrapped by every error of a [FrameReader] about the bytes it
// read: a bad header, a truncated, oversized, corrupt or malformed frame.
var ErrFrame = errors.New("replicate: bad stream frame")

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

// A FrameWriter writes a stream. It is not safe for concurrent use and does
// not buffer beyond one frame: wrap w in a bufio.Writer and flush it after
// each batch.
type FrameWriter struct {
	w       io.Writer
	version int
	buf     []byte
	written int64
}

// NewFrameWriter writes the header line of a version StreamVersion stream
// to w and returns a FrameWriter for its frames.
func NewFrameWriter(w io.Writer) (*FrameWriter, error) {
	return NewFrameWriterVersion(w, StreamVersion)
}

// NewFrameWriterVersion is NewFrameWriter for an older reader: version is
// 2 or StreamVersion.
func NewFrameWriterVersion(w io.Writer, version int) (*FrameWriter, error) {
	if version < 2 || version > StreamVersion {
		return nil, fmt.Errorf("replicate: cannot write stream version %d", version)
	}
	fw := &FrameWriter{w: w, version: version}
	hdr := StreamMagic + " " + strconv.Itoa(version) + "\n"
	n, err := io.WriteString(w, hdr)
	fw.written += int64(n)
	return fw, err
}

// Version returns the version of the stream being written.
func (w *FrameWriter) Version() int { return w.version }

// Written returns the bytes written so far, header included.
func (w *FrameWriter) Written() int64 { return w.written }

func (w *FrameWriter) frame(t FrameType, payload func([]byte) ([]byte, error)) error {
	b := append(w.buf[:0], byte(t), 0, 0, 0, 0, 0, 0, 0, 0)
	b, err := payload(b)
	if err != nil {
		return err
	}
	n := len(b) - frameHeaderSize
	if n > DefaultMaxFrame {
		return fmt.Errorf("replicate: %s frame of %d bytes is too large", t, n)
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
func (w *FrameWriter) WriteChange(c *resilmail.Change) error {
	return w.frame(FrameChange, c.AppendBinary)
}

// WriteBody writes a body frame; a version 2 stream has none, and a body
// too large for a frame is an error.
func (w *FrameWriter) WriteBody(d resilmail.Digest, body []byte) error {
	if w.version < 3 {
		return fmt.Errorf("replicate: a version %d stream carries no bodies", w.version)
	}
	return w.frame(FrameBody, func(b []byte) ([]byte, error) {
		return append(append(b, d[:]...), body...), nil
	})
}

// WriteHeartbeat writes a heartbeat frame.
func (w *FrameWriter) WriteHeartbeat(h Heartbeat) error {
	return w.frame(FrameHeartbeat, func(b []byte) ([]byte, error) {
		b = binary.AppendUvarint(b, h.Position)
		b = binary.AppendUvarint(b, uint64(h.Epoch))
		return binary.BigEndian.AppendUint64(b, uint64(h.Time.UnixNano())), nil
	})
}

// WriteError writes an error frame with msg, cut to MaxErrorFrame bytes
// and made valid UTF-8.
func (w *FrameWriter) WriteError(msg string) error {
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

// FrameReaderOptions configure a [FrameReader]; nil or the zero value gives
// the defaults.
type FrameReaderOptions struct {
	// MaxFrame is the largest payload accepted; zero means
	// DefaultMaxFrame.
	MaxFrame int
}

// A FrameReader decodes a stream. It never panics on any input: every
// malformed input is an error wrapping ErrFrame, except a stream that ends
// cleanly between frames, which is io.EOF, and an error of the underlying
// reader, returned wrapped. After an error, Next returns it again.
type FrameReader struct {
	r       *bufio.Reader
	max     int
	version int
	read    int64
	err     error
	buf     []byte
}

// NewFrameReader returns a FrameReader of the stream r; it reads the header
// on the first call to Next.
func NewFrameReader(r io.Reader, opts *FrameReaderOptions) *FrameReader {
	fr := &FrameReader{r: bufio.NewReaderSize(r, 64<<10), max: DefaultMaxFrame}
	if opts != nil && opts.MaxFrame > 0 {
		fr.max = opts.MaxFrame
	}
	return fr
}

// Version returns the stream's version, or 0 before the header is read.
func (r *FrameReader) Version() int { return r.version }

// BytesRead returns the bytes read so far, header included.
func (r *FrameReader) BytesRead() int64 { return r.read }

func frameErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFrame, fmt.Sprintf(format, args...))
}

func (r *FrameReader) header() error {
	const maxLine = len(StreamMagic) + 12
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
			return fmt.Errorf("replicate: reading stream header: %w", err)
		}
		r.read++
		if c == '\n' {
			break
		}
		line = append(line, c)
	}
	if len(line) > maxLine || len(line) < len(StreamMagic)+2 || string(line[:len(StreamMagic)+1]) != StreamMagic+" " {
		return frameErr("not a replication stream (header %q)", truncateUTF8(string(line), 64))
	}
	v, err := strconv.Atoi(string(line[len(StreamMagic)+1:]))
	if err != nil || v < MinStreamVersion || v > StreamVersion {
		return frameErr("unsupported stream version %q (want %d to %d)", line[len(StreamMagic)+1:], MinStreamVersion, StreamVersion)
	}
	r.version = v
	return nil
}

// Buffered returns how many bytes are read from the stream and not yet
// decoded: zero between batches that the writer flushed separately.
func (r *FrameReader) Buffered() int { return r.r.Buffered() }

// Next returns the next frame.
func (r *FrameReader) Next() (Frame, error) {
	if r.err != nil {
		return Frame{}, r.err
	}
	f, err := r.next()
	if err != nil {
		r.err = err
	}
	return f, err
}

func (r *FrameReader) next() (Frame, error) {
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
		return Frame{}, fmt.Errorf("replicate: reading stream: %w", err)
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
		return Frame{}, fmt.Errorf("replicate: reading stream: %w", err)
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
