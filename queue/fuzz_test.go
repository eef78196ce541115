package queue

import (
	"testing"

	"github.com/resilmail/resilmail"
)

// FuzzDecodeRecord feeds arbitrary bytes to the on-disk record decoder: it
// must never panic, and every record it accepts must encode back to one that
// decodes to the same thing.
func FuzzDecodeRecord(f *testing.F) {
	m := msgRec{Env: resilmail.Envelope{ID: "m1", From: "a@example.net", To: []resilmail.Recipient{{Addr: "b@example.org"}}}, Rcpts: make([]rcptRec, 1)}
	for _, seed := range []struct {
		typ  byte
		v    any
		body []byte
	}{
		{recMessage, &m, []byte("Subject: x\r\n\r\nbody\r\n")},
		{recUpdate, &updRec{ID: "m1", Start: &jobRec{Job: 1, Rcpts: []int{0}}, Attempts: 1, Next: 5}, nil},
		{recUpdate, &updRec{ID: "m1", Rcpts: []rcptChange{{I: 0, rcptRec: rcptRec{State: Delivered}}}, Removed: "done", At: 9}, nil},
		{recTombstone, &tombRec{ID: "m1", At: 7}, nil},
	} {
		b, err := encode(seed.typ, seed.v, seed.body)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{'M', 0, 0, 0, 2, '{', '}'})
	f.Add([]byte{'U', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, rec []byte) {
		v, body, err := decodeRecord(rec)
		if err != nil {
			return
		}
		typ := rec[0]
		again, err := encode(typ, v, body)
		if err != nil {
			t.Fatalf("decoded record does not encode: %v", err)
		}
		v2, body2, err := decodeRecord(again)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if string(body) != string(body2) {
			t.Fatal("body changed in round trip")
		}
		if m, ok := v.(*msgRec); ok {
			m2 := v2.(*msgRec)
			if m.Env.ID != m2.Env.ID || len(m.Rcpts) != len(m2.Rcpts) {
				t.Fatal("message changed in round trip")
			}
		}
	})
}
