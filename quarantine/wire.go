package quarantine

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/resilmail/resilmail"
)

// The batch wire format carries entries from an edge's [Outbox] to the
// central [Store] ([Shipper] writes it, [Store.IngestHandler] reads it). It
// is versioned and self-delimiting; all integers are big-endian:
//
//	magic    "RMQBATCH"           8 bytes
//	version  uint16               BatchVersion
//	items, each:
//	  tag      'I'                1 byte
//	  metaLen  uint32
//	  meta     [metaLen]byte      the Entry as JSON
//	  bodyLen  uint64
//	  body     [bodyLen]byte      empty for an entry without a body
//	end:
//	  tag      'E'                1 byte
//	  count    uint32             the number of items
//
// An entry has a body exactly when its Digest is not zero; the body must
// hash to Entry.Digest and be Entry.Size bytes long. The end marker makes a
// batch cut between two items detectable. Nothing may follow it.

// BatchVersion is the version of the batch wire format this package writes
// and reads.
const BatchVersion = 1

// BatchContentType is the media type of a batch in an HTTP request.
const BatchContentType = "application/vnd.resilmail.quarantine-batch"

const (
	batchMagic   = "RMQBATCH"
	batchItemTag = 'I'
	batchEndTag  = 'E'
)

// The default BatchLimits.
const (
	DefaultBatchMaxItems = 1024
	DefaultBatchMaxMeta  = 1 << 20
	DefaultBatchMaxBody  = 64 << 20
	DefaultBatchMaxBytes = 128 << 20
)

// BatchLimits bound what a [BatchReader] accepts. A zero field means the
// default named after it (DefaultBatchMaxItems, ...).
type BatchLimits struct {
	// MaxItems is the most items in one batch.
	MaxItems int
	// MaxMeta is the largest metadata (JSON) of one item.
	MaxMeta int
	// MaxBody is the largest body of one item (like Options.MaxSize).
	MaxBody int64
	// MaxBytes is the largest whole batch, framing included.
	MaxBytes int64
}

func (l *BatchLimits) withDefaults() BatchLimits {
	var out BatchLimits
	if l != nil {
		out = *l
	}
	if out.MaxItems <= 0 {
		out.MaxItems = DefaultBatchMaxItems
	}
	if out.MaxMeta <= 0 {
		out.MaxMeta = DefaultBatchMaxMeta
	}
	if out.MaxBody <= 0 {
		out.MaxBody = DefaultBatchMaxBody
	}
	if out.MaxBytes <= 0 {
		out.MaxBytes = DefaultBatchMaxBytes
	}
	return out
}

// A BatchWriter writes a batch of entries in the wire format to an
// io.Writer. Call Add for each entry, then Close. It is not safe for
// concurrent use.
type BatchWriter struct {
	w       io.Writer
	started bool
	closed  bool
	n       int
	size    int64
	err     error
}

// NewBatchWriter returns a BatchWriter that writes to w. Nothing is written
// before the first Add or Close.
func NewBatchWriter(w io.Writer) *BatchWriter { return &BatchWriter{w: w} }

// Add writes one entry with its body (nil: an entry without a body). Like
// [Store.Put] it computes Digest and Size when they are zero and checks them
// otherwise, then validates the entry, so that a batch it writes is one a
// [BatchReader] accepts. An error wrapping ErrInvalid leaves the batch
// usable; any other error (from the underlying writer) is returned again by
// every later call.
func (bw *BatchWriter) Add(e Entry, body []byte) error {
	if bw.err != nil {
		return bw.err
	}
	if bw.closed {
		return errors.New("quarantine: BatchWriter.Add after Close")
	}
	if body != nil {
		d := resilmail.DigestOf(body)
		if !e.Digest.IsZero() && e.Digest != d {
			return fmt.Errorf("%w: entry %s: body does not match digest %s", ErrInvalid, e.ID, e.Digest)
		}
		if e.Size != 0 && e.Size != int64(len(body)) {
			return fmt.Errorf("%w: entry %s: body is %d bytes, entry says %d", ErrInvalid, e.ID, len(body), e.Size)
		}
		e.Digest, e.Size = d, int64(len(body))
	} else if !e.Digest.IsZero() {
		return fmt.Errorf("%w: entry %s has a digest but no body", ErrInvalid, e.ID)
	}
	if err := e.Validate(); err != nil {
		return err
	}
	meta, err := json.Marshal(&e)
	if err != nil {
		return fmt.Errorf("%w: entry %s: %v", ErrInvalid, e.ID, err)
	}
	if int64(len(meta)) > math.MaxUint32 {
		return fmt.Errorf("%w: entry %s: metadata too large", ErrInvalid, e.ID)
	}
	hdr := make([]byte, 0, 16)
	if !bw.started {
		hdr = append(hdr, batchMagic...)
		hdr = binary.BigEndian.AppendUint16(hdr, BatchVersion)
	}
	hdr = append(hdr, batchItemTag)
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(len(meta)))
	if err := bw.write(hdr, meta, binary.BigEndian.AppendUint64(nil, uint64(len(body))), body); err != nil {
		return err
	}
	bw.started = true
	bw.n++
	return nil
}

// Close writes the end of the batch. It does not close the underlying
// writer. Calling it again does nothing.
func (bw *BatchWriter) Close() error {
	if bw.err != nil || bw.closed {
		return bw.err
	}
	var b []byte
	if !bw.started {
		b = append(b, batchMagic...)
		b = binary.BigEndian.AppendUint16(b, BatchVersion)
	}
	b = append(b, batchEndTag)
	b = binary.BigEndian.AppendUint32(b, uint32(bw.n))
	if err := bw.write(b); err != nil {
		return err
	}
	bw.started, bw.closed = true, true
	return nil
}

// Len returns the number of entries added.
func (bw *BatchWriter) Len() int { return bw.n }

// Size returns the number of bytes written so far.
func (bw *BatchWriter) Size() int64 { return bw.size }

func (bw *BatchWriter) write(parts ...[]byte) error {
	for _, p := range parts {
		n, err := bw.w.Write(p)
		bw.size += int64(n)
		if err != nil {
			bw.err = fmt.Errorf("quarantine: writing batch: %w", err)
			return bw.err
		}
	}
	return nil
}

// An ItemError reports an item of a batch that is well framed but invalid:
// its metadata does not parse or validate, its body does not match its
// digest, or it is over a size limit. The [BatchReader] that returned it can
// go on with the next item. It wraps ErrInvalid (and ErrTooLarge for a body
// over the limit).
type ItemError struct {
	// Index is the item's position in the batch, from 0.
	Index int
	// ID is the entry id as far as it could be read; it may be empty or
	// itself invalid.
	ID string
	// Err is the reason.
	Err error
}

// Error implements error.
func (e *ItemError) Error() string {
	return fmt.Sprintf("quarantine: batch item %d (entry %q): %v", e.Index, e.ID, e.Err)
}

// Unwrap returns e.Err.
func (e *ItemError) Unwrap() error { return e.Err }

// A BatchReader reads a batch in the wire format, one item at a time,
// within [BatchLimits]. It reads only as much memory as the items it
// returns, and never panics on any input. It is not safe for concurrent use.
type BatchReader struct {
	r      *bufio.Reader
	lim    BatchLimits
	left   int64 // bytes of MaxBytes not yet read
	n      int   // items read
	err    error // sticky framing error or io.EOF
	header bool
}

// NewBatchReader returns a BatchReader reading from r within lim (nil: the
// defaults). It reads and checks the batch header: an error wraps
// ErrInvalid for what is not a batch of a known version.
func NewBatchReader(r io.Reader, lim *BatchLimits) (*BatchReader, error) {
	br := &BatchReader{r: bufio.NewReaderSize(r, 64<<10), lim: lim.withDefaults()}
	br.left = br.lim.MaxBytes
	var h [len(batchMagic) + 2]byte
	if err := br.readFull(h[:], "header"); err != nil {
		return nil, err
	}
	if string(h[:len(batchMagic)]) != batchMagic {
		return nil, fmt.Errorf("%w: not a quarantine batch", ErrInvalid)
	}
	if v := binary.BigEndian.Uint16(h[len(batchMagic):]); v != BatchVersion {
		return nil, fmt.Errorf("%w: batch format version %d; this build reads version %d", ErrInvalid, v, BatchVersion)
	}
	br.header = true
	return br, nil
}

// Next returns the next item. After the last item it checks the end of the
// batch and returns io.EOF. An *ItemError is about that item only: the
// following items can still be read. Any other error wraps ErrInvalid (a
// truncated, forged or oversized batch), or is the underlying reader's, and
// ends the batch: every later call returns it again.
func (br *BatchReader) Next() (Item, error) {
	if br.err != nil {
		return Item{}, br.err
	}
	it, err := br.next()
	var ie *ItemError
	if err != nil && !errors.As(err, &ie) {
		br.err = err
	}
	return it, err
}

func (br *BatchReader) next() (Item, error) {
	var tag [1]byte
	if err := br.readFull(tag[:], "item"); err != nil {
		return Item{}, err
	}
	switch tag[0] {
	case batchEndTag:
		var c [4]byte
		if err := br.readFull(c[:], "end"); err != nil {
			return Item{}, err
		}
		if n := binary.BigEndian.Uint32(c[:]); int64(n) != int64(br.n) {
			return Item{}, fmt.Errorf("%w: batch ends after %d items, says %d", ErrInvalid, br.n, n)
		}
		if _, err := br.r.ReadByte(); err != io.EOF {
			if err != nil {
				return Item{}, fmt.Errorf("quarantine: reading batch: %w", err)
			}
			return Item{}, fmt.Errorf("%w: data after the end of the batch", ErrInvalid)
		}
		return Item{}, io.EOF
	case batchItemTag:
	default:
		return Item{}, fmt.Errorf("%w: bad tag %#x at item %d", ErrInvalid, tag[0], br.n)
	}
	if br.n >= br.lim.MaxItems {
		return Item{}, fmt.Errorf("%w: %w: more than %d items", ErrInvalid, ErrTooLarge, br.lim.MaxItems)
	}
	idx := br.n
	br.n++

	var l4 [4]byte
	if err := br.readFull(l4[:], "metadata length"); err != nil {
		return Item{}, err
	}
	metaLen := int64(binary.BigEndian.Uint32(l4[:]))
	var meta []byte
	var metaErr error
	if metaLen > int64(br.lim.MaxMeta) {
		metaErr = fmt.Errorf("%w: %w: metadata of %d bytes, limit %d", ErrInvalid, ErrTooLarge, metaLen, br.lim.MaxMeta)
		if err := br.discard(metaLen, "metadata"); err != nil {
			return Item{}, err
		}
	} else {
		var err error
		if meta, err = br.read(metaLen, "metadata"); err != nil {
			return Item{}, err
		}
	}
	var l8 [8]byte
	if err := br.readFull(l8[:], "body length"); err != nil {
		return Item{}, err
	}
	bodyLen64 := binary.BigEndian.Uint64(l8[:])
	if bodyLen64 > uint64(br.left) {
		return Item{}, fmt.Errorf("%w: %w: body of %d bytes in item %d is over the batch limit of %d bytes", ErrInvalid, ErrTooLarge, bodyLen64, idx, br.lim.MaxBytes)
	}
	bodyLen := int64(bodyLen64)
	var body []byte
	var bodyErr error
	if bodyLen > br.lim.MaxBody {
		bodyErr = fmt.Errorf("%w: %w: body of %d bytes, limit %d", ErrInvalid, ErrTooLarge, bodyLen, br.lim.MaxBody)
		if err := br.discard(bodyLen, "body"); err != nil {
			return Item{}, err
		}
	} else {
		var err error
		if body, err = br.read(bodyLen, "body"); err != nil {
			return Item{}, err
		}
	}

	var it Item
	if metaLen <= int64(br.lim.MaxMeta) {
		if err := json.Unmarshal(meta, &it.Entry); err != nil {
			it.Entry = Entry{}
			metaErr = fmt.Errorf("%w: metadata: %v", ErrInvalid, err)
		}
	}
	if metaErr == nil {
		metaErr = bodyErr
	}
	if metaErr != nil {
		return it, &ItemError{Index: idx, ID: it.Entry.ID, Err: metaErr}
	}
	if err := checkItem(&it.Entry, body); err != nil {
		return it, &ItemError{Index: idx, ID: it.Entry.ID, Err: err}
	}
	if !it.Entry.Digest.IsZero() {
		it.Body = body
		if it.Body == nil {
			it.Body = []byte{}
		}
	}
	return it, nil
}

// checkItem checks a decoded entry against its body.
func checkItem(e *Entry, body []byte) error {
	if err := e.Validate(); err != nil {
		return err
	}
	if e.Digest.IsZero() {
		if len(body) != 0 {
			return fmt.Errorf("%w: entry %s has no digest but a body of %d bytes", ErrInvalid, e.ID, len(body))
		}
		return nil
	}
	if int64(len(body)) != e.Size {
		return fmt.Errorf("%w: entry %s: body is %d bytes, entry says %d", ErrInvalid, e.ID, len(body), e.Size)
	}
	if got := resilmail.DigestOf(body); got != e.Digest {
		return fmt.Errorf("%w: entry %s: body does not match digest %s", ErrInvalid, e.ID, e.Digest)
	}
	return nil
}

// readFull reads exactly len(b) bytes, counted against MaxBytes.
func (br *BatchReader) readFull(b []byte, what string) error {
	if int64(len(b)) > br.left {
		return fmt.Errorf("%w: %w: batch over %d bytes", ErrInvalid, ErrTooLarge, br.lim.MaxBytes)
	}
	n, err := io.ReadFull(br.r, b)
	br.left -= int64(n)
	return br.readErr(err, what)
}

// read reads n bytes, counted against MaxBytes, allocating as they arrive
// so that a forged length costs no more memory than the bytes sent.
func (br *BatchReader) read(n int64, what string) ([]byte, error) {
	if n > br.left {
		return nil, fmt.Errorf("%w: %w: batch over %d bytes", ErrInvalid, ErrTooLarge, br.lim.MaxBytes)
	}
	if n == 0 {
		return nil, nil
	}
	const chunk = 1 << 20
	if n <= chunk {
		b := make([]byte, n)
		return b, br.readFull(b, what)
	}
	b, err := io.ReadAll(io.LimitReader(br.r, n))
	br.left -= int64(len(b))
	if err != nil {
		return nil, br.readErr(err, what)
	}
	if int64(len(b)) < n {
		return nil, br.readErr(io.ErrUnexpectedEOF, what)
	}
	return b, nil
}

// discard skips n bytes, counted against MaxBytes.
func (br *BatchReader) discard(n int64, what string) error {
	if n > br.left {
		return fmt.Errorf("%w: %w: batch over %d bytes", ErrInvalid, ErrTooLarge, br.lim.MaxBytes)
	}
	m, err := io.CopyN(io.Discard, br.r, n)
	br.left -= m
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return br.readErr(err, what)
}

func (br *BatchReader) readErr(err error, what string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		if !br.header {
			return fmt.Errorf("%w: batch truncated in the header", ErrInvalid)
		}
		return fmt.Errorf("%w: batch truncated in the %s of item %d", ErrInvalid, what, br.n)
	}
	return fmt.Errorf("quarantine: reading batch: %w", err)
}

// ReadBatch reads a whole batch from r within lim (nil: the defaults) and
// returns its items, each validated and with its body checked against its
// digest. Any problem, including one invalid item, is an error wrapping
// ErrInvalid (an *ItemError for an item) unless it comes from r itself.
// Use a [BatchReader] to accept the valid items of a batch and report the
// others.
func ReadBatch(r io.Reader, lim *BatchLimits) ([]Item, error) {
	br, err := NewBatchReader(r, lim)
	if err != nil {
		return nil, err
	}
	var items []Item
	for {
		it, err := br.Next()
		if err == io.EOF {
			return items, nil
		}
		if err != nil {
			return nil, err
		}
		items = append(items, it)
	}
}
