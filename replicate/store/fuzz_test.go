package store

import (
	"reflect"
	"testing"
	"time"

	"github.com/resilmail/resilmail"
)

func fuzzSeedChanges() []resilmail.Change {
	id := resilmail.MailboxID{1, 2, 3}
	t := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	return []resilmail.Change{
		{Seq: 1, Epoch: 1, Kind: resilmail.ChangeUserCreate, User: "alice", Time: t},
		{Seq: 2, Epoch: 1, Kind: resilmail.ChangeMailboxCreate, User: "alice", Mailbox: "INBOX", MailboxID: id, UIDValidity: 9, ModSeq: 1},
		{Seq: 3, Epoch: 1, Kind: resilmail.ChangeAppend, User: "alice", Mailbox: "INBOX", MailboxID: id, UIDValidity: 9, UID: 1,
			Digest: resilmail.DigestOf([]byte("x")), Size: 1, InternalDate: t, Flags: []string{`\Seen`, "$k"}, ModSeq: 2},
		{Seq: 4, Epoch: 1, Kind: resilmail.ChangeExpunge, User: "alice", MailboxID: id, UIDValidity: 9, UIDs: resilmail.NewUIDSet(1), ModSeq: 3},
	}
}

// FuzzDecodeBatch feeds arbitrary bytes to the journal record decoder: it
// must never panic, and a record it accepts must encode back to one that
// decodes to the same changes.
func FuzzDecodeBatch(f *testing.F) {
	changes := fuzzSeedChanges()
	for i := range changes {
		rec, err := encodeBatch(changes[:i+1], nil)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(rec)
	}
	rec, _ := encodeBatch(changes, []uint64{5, 6, 7, 8})
	f.Add(rec)
	f.Add([]byte{recBatch, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, rec []byte) {
		changes, upstream, err := decodeBatch(rec)
		if err != nil {
			return
		}
		again, err := encodeBatch(changes, upstream)
		if err != nil {
			t.Fatalf("decoded batch does not encode: %v", err)
		}
		c2, u2, err := decodeBatch(again)
		if err != nil {
			t.Fatalf("re-encoded batch does not decode: %v", err)
		}
		if !reflect.DeepEqual(changes, c2) || !reflect.DeepEqual(upstream, u2) {
			t.Fatal("batch changed in a round trip")
		}
	})
}

func emptyStore() *Store {
	return &Store{
		users: make(map[string]*user), byID: make(map[resilmail.MailboxID]*mailbox),
		refs: make(map[resilmail.Digest]int32), inflight: make(map[resilmail.Digest]*bodyWrite),
		corrupt: make(map[resilmail.Digest]struct{}), pendingUnlink: make(map[resilmail.Digest]uint64),
		upstream: make(map[string]uint64),
	}
}

// FuzzDecodeCheckpoint feeds arbitrary payloads to the checkpoint decoder:
// it must never panic, and a checkpoint it accepts must encode to one that
// decodes to the same index.
func FuzzDecodeCheckpoint(f *testing.F) {
	s := emptyStore()
	for _, c := range fuzzSeedChanges()[:3] {
		s.applyLocked(&c, 0)
	}
	s.upstream["alice"] = 7
	s.corrupt[resilmail.DigestOf([]byte("bad"))] = struct{}{}
	full := s.encodeCheckpointLocked()
	f.Add(full[len(checkpointMagic)+2 : len(full)-4])
	f.Add([]byte{0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, payload []byte) {
		a := emptyStore()
		if a.decodeCheckpoint(payload) != nil {
			return
		}
		a.applied = a.ckptSeq
		enc := a.encodeCheckpointLocked()
		b := emptyStore()
		if err := b.decodeCheckpoint(enc[len(checkpointMagic)+2 : len(enc)-4]); err != nil {
			t.Fatalf("re-encoded checkpoint does not decode: %v", err)
		}
		if a.messages != b.messages || len(a.byID) != len(b.byID) || a.epoch != b.epoch || a.bodyBytes != b.bodyBytes {
			t.Fatal("checkpoint changed in a round trip")
		}
		for id, mb := range a.byID {
			if b.byID[id] == nil || b.byID[id].sum != mb.sum || b.byID[id].uidNext != mb.uidNext {
				t.Fatal("mailbox changed in a round trip")
			}
		}
	})
}

// FuzzDecodePackIndex feeds arbitrary bytes to the pack index decoder: it
// must never panic, and an index it accepts must hold bodies inside the
// pack, in order, and encode back to the same bytes.
func FuzzDecodePackIndex(f *testing.F) {
	a, b := resilmail.DigestOf([]byte("a")), resilmail.DigestOf([]byte("b"))
	f.Add(encodePackIndex(0, nil))
	f.Add(encodePackIndex(30, []packIndexEntryOf{{d: a, off: 0, size: 10}, {d: b, off: 10, size: 20}}))
	f.Add(encodePackIndex(5, []packIndexEntryOf{{d: a, off: 0, size: 10}})) // outside its pack
	f.Add([]byte(packIndexMagic))
	f.Fuzz(func(t *testing.T, in []byte) {
		size, entries, err := decodePackIndex(in)
		if err != nil {
			return
		}
		var end int64
		for _, x := range entries {
			if x.off < end || x.size < 0 || x.off+x.size > size {
				t.Fatalf("entry %+v outside a pack of %d bytes or overlapping", x, size)
			}
			end = x.off + x.size
		}
		if out := encodePackIndex(size, entries); string(out) != string(in) {
			t.Fatalf("re-encoded differently")
		}
	})
}
