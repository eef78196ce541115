package backup

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/resilmail/resilmail"
)

// seedState is a small state with every kind of entry.
func seedState() *state {
	st := newState()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ch := []resilmail.Change{
		{Seq: 1, Epoch: 1, Kind: resilmail.ChangeUserCreate, Time: t0, User: "alice"},
		{Seq: 2, Epoch: 1, Kind: resilmail.ChangeMailboxCreate, Time: t0, User: "alice", Mailbox: "INBOX", MailboxID: resilmail.MailboxID{1}, UIDValidity: 7, ModSeq: 1},
		{Seq: 3, Epoch: 1, Kind: resilmail.ChangeAppend, Time: t0, User: "alice", Mailbox: "INBOX", MailboxID: resilmail.MailboxID{1}, UIDValidity: 7, UID: 1, Digest: resilmail.DigestOf([]byte("a")), Size: 1, InternalDate: t0, Flags: []string{`\Seen`}, ModSeq: 2},
		{Seq: 4, Epoch: 1, Kind: resilmail.ChangeAppend, Time: t0, User: "alice", Mailbox: "INBOX", MailboxID: resilmail.MailboxID{1}, UIDValidity: 7, UID: 5, Digest: resilmail.DigestOf([]byte("b")), Size: 1, ModSeq: 3},
		{Seq: 5, Epoch: 2, Kind: resilmail.ChangeExpunge, Time: t0.Add(time.Hour), User: "alice", Mailbox: "INBOX", MailboxID: resilmail.MailboxID{1}, UIDValidity: 7, UIDs: resilmail.NewUIDSet(1), ModSeq: 4},
		{Seq: 6, Epoch: 2, Kind: resilmail.ChangeSubscribe, Time: t0, User: "alice", Mailbox: "Lists"},
		{Seq: 7, Epoch: 2, Kind: resilmail.ChangeFlags, Time: t0, User: "alice", Mailbox: "INBOX", MailboxID: resilmail.MailboxID{1}, UIDValidity: 7, UIDs: resilmail.NewUIDSet(5), FlagOp: resilmail.FlagsAdd, Flags: []string{"$Label1", `\Flagged`}, ModSeq: 5},
	}
	for i := range ch {
		st.apply(&ch[i])
	}
	st.history = "h1"
	return st
}

func FuzzDecodeManifest(f *testing.F) {
	f.Add(encodeManifest(seedState()))
	f.Add(encodeManifest(newState()))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeManifest(b)
		if err != nil {
			return
		}
		again := encodeManifest(st)
		st2, err := decodeManifest(again)
		if err != nil {
			t.Fatalf("re-encoded manifest does not decode: %v", err)
		}
		if !bytes.Equal(again, encodeManifest(st2)) {
			t.Fatal("encoding is not stable")
		}
		if !reflect.DeepEqual(st.pos, st2.pos) || len(st.boxes) != len(st2.boxes) || len(st.users) != len(st2.users) {
			t.Fatal("round trip changed the state")
		}
	})
}

func FuzzDecodeChanges(f *testing.F) {
	ch := []resilmail.Change{{Seq: 9, Epoch: 1, Kind: resilmail.ChangeUserCreate, Time: time.Unix(1, 0).UTC(), User: "bob"},
		{Seq: 10, Epoch: 1, Kind: resilmail.ChangeUserDelete, Time: time.Unix(2, 0).UTC(), User: "bob"}}
	b, err := encodeChanges("h", ch)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, out, err := decodeChanges(b)
		if err != nil {
			return
		}
		again, err := encodeChanges(h, out)
		if err != nil {
			t.Fatalf("decoded changes do not encode: %v", err)
		}
		h2, out2, err := decodeChanges(again)
		if err != nil || h2 != h || !reflect.DeepEqual(out, out2) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func FuzzDecodeIndex(f *testing.F) {
	f.Add(encodeIndex([]indexEntry{{digest: resilmail.DigestOf([]byte("x")), off: 0, length: 40, size: 30}, {off: 40, length: 1, size: 1}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := decodeIndex(b)
		if err != nil {
			return
		}
		out2, err := decodeIndex(encodeIndex(out))
		if err != nil || !reflect.DeepEqual(out, out2) && len(out) > 0 {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzOpen feeds damaged objects to the envelope's decoder, plain and
// encrypted: it must refuse them, never panic, and open what seal made.
func FuzzOpen(f *testing.F) {
	plain, err := newCodec(nil, "id", zstd.SpeedFastest)
	if err != nil {
		f.Fatal(err)
	}
	sealed, err := newCodec(bytes.Repeat([]byte("k"), 32), "id", zstd.SpeedFastest)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(plain.seal(kindSnapshot, []byte("hello hello hello hello"), true), false)
	f.Add(sealed.seal(kindSnapshot, []byte("hello"), false), true)
	f.Fuzz(func(t *testing.T, b []byte, enc bool) {
		c := plain
		if enc {
			c = sealed
		}
		p, err := c.open(kindSnapshot, b)
		if err != nil {
			return
		}
		q, err := c.open(kindSnapshot, c.seal(kindSnapshot, p, true))
		if err != nil || !bytes.Equal(p, q) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
