package wal_test

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/wal"
)

// BenchmarkAppendFrom measures streaming 1 MiB records into the log from
// a reader (AppendFrom: Reserve, then Fill in 256 KiB pieces), each
// synced.
func BenchmarkAppendFrom(b *testing.B) {
	payload := bytes.Repeat([]byte("x"), 1<<20)
	l, err := wal.Open(b.TempDir(), wal.Options{Kind: "bench"}, func(wal.Pos, []byte) error { return nil })
	require.NoError(b, err)
	defer l.Close()
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := l.AppendFrom([]byte("head"), bytes.NewReader(payload), int64(len(payload))); err != nil {
			b.Fatal(err)
		}
		if err := l.Sync(); err != nil {
			b.Fatal(err)
		}
	}
}
