package quarantine

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzDecodeBatch feeds arbitrary bytes to the batch decoder, the one the
// centre runs on what edges send. Seeds are in
// testdata/fuzz/FuzzDecodeBatch: valid batches of every shape, truncated,
// forged and oversized ones. It checks that decoding never panics, that
// every error wraps ErrInvalid, that every accepted item is valid with a
// body matching its digest, and that what decodes survives a round trip.
func FuzzDecodeBatch(f *testing.F) {
	f.Add([]byte(nil))
	f.Add(shHeader(1))
	lim := &BatchLimits{MaxItems: 16, MaxMeta: 8 << 10, MaxBody: 64 << 10, MaxBytes: 1 << 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		// The lenient reader the ingest handler uses.
		br, err := NewBatchReader(bytes.NewReader(data), lim)
		if err != nil {
			require.ErrorIs(t, err, ErrInvalid)
			return
		}
		for {
			it, err := br.Next()
			if err == io.EOF {
				break
			}
			var ie *ItemError
			if errors.As(err, &ie) {
				require.ErrorIs(t, err, ErrInvalid)
				continue
			}
			if err != nil {
				require.ErrorIs(t, err, ErrInvalid)
				break
			}
			require.NoError(t, checkItem(&it.Entry, it.Body))
			require.Equal(t, it.Entry.HasBody(), it.Body != nil)
		}

		// The strict reader, and the round trip of what it accepts.
		items, err := ReadBatch(bytes.NewReader(data), lim)
		if err != nil {
			require.ErrorIs(t, err, ErrInvalid)
			return
		}
		enc1 := fuzzEncode(t, items)
		items2, err := ReadBatch(bytes.NewReader(enc1), lim)
		require.NoError(t, err, "a re-encoded batch must decode")
		require.Len(t, items2, len(items))
		for i := range items {
			require.Equal(t, items[i].Entry.ID, items2[i].Entry.ID)
			require.Equal(t, items[i].Entry.Digest, items2[i].Entry.Digest)
			require.Equal(t, items[i].Body, items2[i].Body)
		}
		require.Equal(t, enc1, fuzzEncode(t, items2), "encoding is stable")
	})
}

func fuzzEncode(t *testing.T, items []Item) []byte {
	var buf bytes.Buffer
	bw := NewBatchWriter(&buf)
	for _, it := range items {
		require.NoError(t, bw.Add(it.Entry, it.Body), "the writer must accept what the reader accepted")
	}
	require.NoError(t, bw.Close())
	return buf.Bytes()
}
