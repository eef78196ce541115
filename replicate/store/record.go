package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/resilmail/resilmail"
)

// Journal records (the payload of one wal record; the wal adds a length and
// CRC-32C). The first byte says what the record is:
//
//	'B' a batch of changes made atomically:
//	    count uvarint, then per change: upstream uvarint (the primary's
//	    position of a change applied from it, 0 for a local change),
//	    length uvarint, resilmail.Change binary encoding
//	'D' a body: digest (32 bytes), then the body's bytes to the end of the
//	    record. It is appended before the first 'B' record that references
//	    the body (a body already stored is not written again), so that the
//	    group-committed fsync that makes the batch durable makes the body
//	    durable too. Open rewrites the body's file from it when the file is
//	    missing or does not hash to the digest.
//	'K' a body marked corrupt (1) or repaired (0): flag byte, digest
//	'O' the store was opened: Unix nanoseconds varint
const (
	recBatch   = 'B'
	recBody    = 'D'
	recCorrupt = 'K'
	recOpen    = 'O'
)

// bodyRecHeader is the size of a 'D' record before the body's bytes.
const bodyRecHeader = 1 + len(resilmail.Digest{})

// decodeBody decodes a 'D' record; body aliases rec.
func decodeBody(rec []byte) (d resilmail.Digest, body []byte, err error) {
	if len(rec) < bodyRecHeader || rec[0] != recBody {
		return d, nil, fmt.Errorf("%w: body record of %d bytes", errBadRecord, len(rec))
	}
	copy(d[:], rec[1:bodyRecHeader])
	return d, rec[bodyRecHeader:], nil
}

// maxBatch bounds the changes one record may hold.
const maxBatch = 1 << 20

func encodeBatch(changes []resilmail.Change, upstream []uint64) ([]byte, error) {
	b := make([]byte, 0, 64+128*len(changes))
	b = append(b, recBatch)
	b = binary.AppendUvarint(b, uint64(len(changes)))
	for i := range changes {
		var up uint64
		if upstream != nil {
			up = upstream[i]
		}
		b = binary.AppendUvarint(b, up)
		enc, err := changes[i].MarshalBinary()
		if err != nil {
			return nil, err
		}
		b = binary.AppendUvarint(b, uint64(len(enc)))
		b = append(b, enc...)
	}
	return b, nil
}

var errBadRecord = errors.New("bad journal record")

// decodeBatch decodes a 'B' record.
func decodeBatch(rec []byte) ([]resilmail.Change, []uint64, error) {
	if len(rec) < 2 || rec[0] != recBatch {
		return nil, nil, errBadRecord
	}
	d := decoder{b: rec[1:]}
	n := d.uvarint()
	if n == 0 || n > maxBatch || n > uint64(len(d.b)) {
		return nil, nil, fmt.Errorf("%w: %d changes", errBadRecord, n)
	}
	changes := make([]resilmail.Change, n)
	upstream := make([]uint64, n)
	for i := range changes {
		upstream[i] = d.uvarint()
		enc := d.bytes(int(min(d.uvarint(), uint64(len(d.b)+1))))
		if d.err != nil {
			return nil, nil, d.err
		}
		if err := changes[i].UnmarshalBinary(enc); err != nil {
			return nil, nil, err
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: trailing bytes", errBadRecord)
	}
	return changes, upstream, d.err
}

func encodeCorrupt(d resilmail.Digest, corrupt bool) []byte {
	b := []byte{recCorrupt, 0}
	if corrupt {
		b[1] = 1
	}
	return append(b, d[:]...)
}

// encoder and decoder are the primitives of the records and the
// checkpoint.
type encoder struct{ b []byte }

func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) raw(p []byte)     { e.b = append(e.b, p...) }
func (e *encoder) str(s string) {
	e.uvarint(uint64(len(s)))
	e.b = append(e.b, s...)
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: bad %s", errBadRecord, what)
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("number")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("number")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uint32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 {
		d.fail("32-bit number")
	}
	return uint32(v)
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail("length")
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) digest() resilmail.Digest {
	var v resilmail.Digest
	copy(v[:], d.bytes(len(v)))
	return v
}

func (d *decoder) mailboxID() resilmail.MailboxID {
	var v resilmail.MailboxID
	copy(v[:], d.bytes(len(v)))
	return v
}

func (d *decoder) str(maxLen int) string {
	n := d.uvarint()
	if n > uint64(maxLen) {
		d.fail("string length")
		return ""
	}
	return string(d.bytes(int(n)))
}

// count reads a count of items that take at least minSize bytes each,
// refusing one the remaining input cannot hold.
func (d *decoder) count(minSize int) int {
	n := d.uvarint()
	if n > uint64(len(d.b)/minSize) {
		d.fail("count")
		return 0
	}
	return int(n)
}
