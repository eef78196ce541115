package quarantine

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
)

// shSampleItems returns items of every shape: a body, no body, an empty
// body.
func shSampleItems() []Item {
	a := shEntry("a1")
	b := shEntry("b2")
	b.Reason = Reason{Kind: KindRecipient, Reply: "550 5.1.1 no such user"}
	c := shEntry("c3")
	return []Item{{Entry: a, Body: shBody("a1", 3000)}, {Entry: b}, {Entry: c, Body: []byte{}}}
}

func TestBatchRoundTrip(t *testing.T) {
	in := shSampleItems()
	data := shBatch(t, in...)
	out, err := ReadBatch(bytes.NewReader(data), nil)
	require.NoError(t, err)
	require.Len(t, out, len(in))
	for i := range in {
		want := in[i].Entry
		if in[i].Body != nil {
			want.Digest, want.Size = resilmail.DigestOf(in[i].Body), int64(len(in[i].Body))
		}
		wj, _ := json.Marshal(want)
		gj, _ := json.Marshal(out[i].Entry)
		assert.JSONEq(t, string(wj), string(gj), "item %d", i)
		assert.Equal(t, in[i].Body, out[i].Body, "item %d", i)
		assert.Equal(t, in[i].Body == nil, out[i].Body == nil, "item %d: nil body means no body", i)
	}

	// An empty batch is a batch.
	out, err = ReadBatch(bytes.NewReader(shBatch(t)), nil)
	require.NoError(t, err)
	assert.Empty(t, out)
}

func TestBatchWriter(t *testing.T) {
	body := shBody("x", 100)
	tests := []struct {
		name string
		edit func(e *Entry)
		body []byte
		err  error
	}{
		{"fills digest and size", func(e *Entry) {}, body, nil},
		{"checks digest", func(e *Entry) { e.Digest = resilmail.DigestOf([]byte("other")) }, body, ErrInvalid},
		{"checks size", func(e *Entry) { e.Size = 3 }, body, ErrInvalid},
		{"digest without body", func(e *Entry) { e.Digest = resilmail.DigestOf(body) }, nil, ErrInvalid},
		{"bad id", func(e *Entry) { e.ID = "../etc" }, body, ErrInvalid},
		{"no recipients", func(e *Entry) { e.Envelope.To = nil }, body, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			bw := NewBatchWriter(&buf)
			e := shEntry("e1")
			tt.edit(&e)
			err := bw.Add(e, tt.body)
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				assert.Zero(t, buf.Len(), "a refused entry writes nothing")
				assert.Zero(t, bw.Len())
			} else {
				require.NoError(t, err)
				assert.Equal(t, 1, bw.Len())
			}
			// The batch stays usable either way.
			require.NoError(t, bw.Add(shEntry("e2"), nil))
			require.NoError(t, bw.Close())
			require.NoError(t, bw.Close(), "Close is idempotent")
			assert.Equal(t, int64(buf.Len()), bw.Size())
			items, err := ReadBatch(&buf, nil)
			require.NoError(t, err)
			assert.Len(t, items, bw.Len())
		})
	}
}

type shFailWriter struct{ n int }

func (w *shFailWriter) Write(p []byte) (int, error) {
	if w.n <= 0 {
		return 0, errors.New("disk on fire")
	}
	w.n--
	return len(p), nil
}

func TestBatchWriterSticksToWriteError(t *testing.T) {
	bw := NewBatchWriter(&shFailWriter{n: 1})
	err := bw.Add(shEntry("e1"), []byte("body"))
	require.Error(t, err)
	assert.NotErrorIs(t, err, ErrInvalid)
	assert.Equal(t, err, bw.Add(shEntry("e2"), nil))
	assert.Equal(t, err, bw.Close())
}

func TestReadBatchTruncated(t *testing.T) {
	data := shBatch(t, shSampleItems()...)
	for n := 0; n < len(data); n++ {
		_, err := ReadBatch(bytes.NewReader(data[:n]), nil)
		require.ErrorIs(t, err, ErrInvalid, "batch cut at %d of %d bytes", n, len(data))
	}
}

// shFrame builds a raw item frame.
func shFrame(meta []byte, bodyLen uint64, body []byte) []byte {
	b := []byte{batchItemTag}
	b = binary.BigEndian.AppendUint32(b, uint32(len(meta)))
	b = append(b, meta...)
	b = binary.BigEndian.AppendUint64(b, bodyLen)
	return append(b, body...)
}

func shHeader(version uint16) []byte {
	return binary.BigEndian.AppendUint16([]byte(batchMagic), version)
}

func shEnd(n uint32) []byte { return binary.BigEndian.AppendUint32([]byte{batchEndTag}, n) }

func TestReadBatchForged(t *testing.T) {
	good := shBatch(t, shSampleItems()...)
	meta, _ := json.Marshal(shEntry("m1"))
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	hugeMeta := binary.BigEndian.AppendUint32([]byte{batchItemTag}, 0xffffffff)
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"not a batch", []byte("GET / HTTP/1.1\r\n\r\n")},
		{"unknown version", cat(shHeader(2), shEnd(0))},
		{"bad tag", cat(shHeader(1), []byte{'X'})},
		{"count too high", cat(shHeader(1), shEnd(1))},
		{"count too low", cat(shHeader(1), shFrame(meta, 0, nil), shEnd(0))},
		{"trailing data", append(bytes.Clone(good), 0)},
		{"two batches", append(bytes.Clone(good), good...)},
		{"huge metadata length", cat(shHeader(1), hugeMeta)},
		{"huge body length", cat(shHeader(1), shFrame(meta, 1<<62, nil))},
		{"body over the batch", cat(shHeader(1), shFrame(meta, DefaultBatchMaxBytes, []byte("short")))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadBatch(bytes.NewReader(tt.data), nil)
			require.ErrorIs(t, err, ErrInvalid)
			var ie *ItemError
			assert.False(t, errors.As(err, &ie), "a framing error is not about one item: %v", err)
		})
	}
}

func TestBatchReaderItemErrors(t *testing.T) {
	good1 := Item{Entry: shEntry("g1"), Body: shBody("g1", 500)}
	good2 := Item{Entry: shEntry("g2")}
	// Forge a frame whose body does not match its digest.
	forged := shEntry("f1")
	forged.Digest, forged.Size = resilmail.DigestOf([]byte("the real one")), int64(len("tampered one"))
	fmeta, _ := json.Marshal(forged)
	invalid := shEntry("i1")
	invalid.Envelope.To = nil
	imeta, _ := json.Marshal(invalid)

	var buf bytes.Buffer
	buf.Write(shHeader(1))
	g1 := shBatch(t, good1)
	buf.Write(g1[len(batchMagic)+2 : len(g1)-5]) // the item frame alone
	buf.Write(shFrame(fmeta, uint64(len("tampered one")), []byte("tampered one")))
	buf.Write(shFrame(imeta, 0, nil))
	buf.Write(shFrame([]byte("{not json"), 4, []byte("body")))
	g2 := shBatch(t, good2)
	buf.Write(g2[len(batchMagic)+2 : len(g2)-5])
	buf.Write(shEnd(5))
	data := buf.Bytes()

	_, err := ReadBatch(bytes.NewReader(data), nil)
	var ie *ItemError
	require.ErrorAs(t, err, &ie, "ReadBatch is strict")
	assert.Equal(t, 1, ie.Index)
	assert.Equal(t, "f1", ie.ID)
	assert.ErrorIs(t, err, ErrInvalid)

	br, err := NewBatchReader(bytes.NewReader(data), nil)
	require.NoError(t, err)
	it, err := br.Next()
	require.NoError(t, err)
	assert.Equal(t, "g1", it.Entry.ID)
	for i, id := range []string{"f1", "i1", ""} {
		_, err = br.Next()
		require.ErrorAs(t, err, &ie)
		assert.Equal(t, i+1, ie.Index)
		assert.Equal(t, id, ie.ID)
		assert.ErrorIs(t, err, ErrInvalid)
	}
	it, err = br.Next()
	require.NoError(t, err)
	assert.Equal(t, "g2", it.Entry.ID)
	assert.Nil(t, it.Body)
	_, err = br.Next()
	assert.Equal(t, io.EOF, err)
	_, err = br.Next()
	assert.Equal(t, io.EOF, err, "EOF sticks")
}

func TestBatchLimits(t *testing.T) {
	items := []Item{
		{Entry: shEntry("l1"), Body: shBody("l1", 2000)},
		{Entry: shEntry("l2"), Body: shBody("l2", 100)},
		{Entry: shEntry("l3")},
	}
	data := shBatch(t, items...)

	t.Run("items", func(t *testing.T) {
		_, err := ReadBatch(bytes.NewReader(data), &BatchLimits{MaxItems: 2})
		require.ErrorIs(t, err, ErrInvalid)
		require.ErrorIs(t, err, ErrTooLarge)
	})
	t.Run("bytes", func(t *testing.T) {
		_, err := ReadBatch(bytes.NewReader(data), &BatchLimits{MaxBytes: int64(len(data) - 1)})
		require.ErrorIs(t, err, ErrInvalid)
		require.ErrorIs(t, err, ErrTooLarge)
		_, err = ReadBatch(bytes.NewReader(data), &BatchLimits{MaxBytes: int64(len(data))})
		require.NoError(t, err)
	})
	t.Run("body and metadata are per item", func(t *testing.T) {
		for _, lim := range []*BatchLimits{{MaxBody: 1000}, {MaxMeta: 400}} {
			br, err := NewBatchReader(bytes.NewReader(data), lim)
			require.NoError(t, err)
			var ok []string
			var bad []*ItemError
			for {
				it, err := br.Next()
				if err == io.EOF {
					break
				}
				var ie *ItemError
				if errors.As(err, &ie) {
					require.ErrorIs(t, err, ErrTooLarge)
					bad = append(bad, ie)
					continue
				}
				require.NoError(t, err)
				ok = append(ok, it.Entry.ID)
			}
			if lim.MaxBody != 0 {
				assert.Equal(t, []string{"l2", "l3"}, ok)
				require.Len(t, bad, 1)
				assert.Equal(t, "l1", bad[0].ID)
			} else {
				assert.Empty(t, ok, "every entry's metadata is over 400 bytes")
				assert.Len(t, bad, 3)
			}
		}
	})
}
