package wal_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/wal"
)

// FuzzReplay writes arbitrary bytes after a valid segment header and checks
// that Open never panics, that every replayed record reads back intact, and
// that the log stays appendable.
func FuzzReplay(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 3, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 'a', 'b', 'c'})
	f.Add([]byte("\x00\x00\x00\x05garbagegarbagegarbage"))
	f.Fuzz(func(t *testing.T, junk []byte) {
		dir := t.TempDir()
		l, err := wal.Open(dir, wal.Options{Kind: "fuzz"}, func(wal.Pos, []byte) error { return nil })
		require.NoError(t, err)
		_, err = l.AppendSync([]byte("first"))
		require.NoError(t, err)
		require.NoError(t, l.Close())
		path := filepath.Join(dir, "0000000000000001.wal")
		fh, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = fh.Write(junk)
		require.NoError(t, err)
		require.NoError(t, fh.Close())

		var got [][]byte
		var positions []wal.Pos
		l, err = wal.Open(dir, wal.Options{Kind: "fuzz"}, func(p wal.Pos, b []byte) error {
			got = append(got, append([]byte(nil), b...))
			positions = append(positions, p)
			return nil
		})
		require.NoError(t, err)
		defer l.Close()
		require.NotEmpty(t, got)
		require.Equal(t, "first", string(got[0]), "the synced record survives any tail")
		for i, p := range positions {
			b, err := l.ReadAt(p)
			require.NoError(t, err)
			require.Equal(t, got[i], b)
		}
		_, err = l.AppendSync([]byte("last"))
		require.NoError(t, err)
	})
}
