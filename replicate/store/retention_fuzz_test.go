package store

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/resilmail/resilmail"
)

// FuzzDecodeRetention feeds arbitrary bytes to the retention file decoder:
// it must never panic, and a file it accepts must encode back to the same
// bytes (holds aside, whose order is a map's).
func FuzzDecodeRetention(f *testing.F) {
	s := emptyStore()
	s.ret.init()
	s.ret.holds["backup"] = Hold{Name: "backup", Position: 3, Bodies: true}
	t := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for i := range 3 {
		tb := Tombstone{Seq: uint64(4 + i), User: "alice", Mailbox: "INBOX", MailboxID: resilmail.MailboxID{1}, UIDValidity: 9,
			UID: uint32(i + 1), Digest: resilmail.DigestOf([]byte{byte(i)}), Size: 10, InternalDate: t, Deleted: t.Add(time.Hour), ModSeq: 7}
		s.ret.tombs = append(s.ret.tombs, tb)
	}
	f.Add(s.encodeRetentionLocked(10))
	f.Add(s.encodeRetentionLocked(5))
	s.ret.holds = nil
	s.ret.init()
	f.Add(s.encodeRetentionLocked(0))
	f.Add([]byte(retentionMagic + "\x00\x01\xff\xff\xff\xff\x0f"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := emptyStore()
		s.ret.init()
		seq, err := s.decodeRetention(b)
		if err != nil || len(s.ret.holds) > 1 {
			return
		}
		again := s.encodeRetentionLocked(seq)
		s2 := emptyStore()
		s2.ret.init()
		seq2, err := s2.decodeRetention(again)
		if err != nil || seq2 != seq || !reflect.DeepEqual(s.ret.holds, s2.ret.holds) || !reflect.DeepEqual(s.ret.tombs, s2.ret.tombs) ||
			s.ret.floor != s2.ret.floor {
			t.Fatalf("retention file changed in a round trip (%v)", err)
		}
		if !bytes.Equal(again, s2.encodeRetentionLocked(seq2)) {
			t.Fatal("encoding not stable")
		}
	})
}
