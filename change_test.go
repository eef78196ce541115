package resilmail_test

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
)

var (
	testMailboxID = resilmail.MailboxID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	testTime      = time.Date(2026, 3, 4, 5, 6, 7, 890, time.UTC)
)

// sampleChanges holds one valid change of every kind, with every field its
// kind uses set.
func sampleChanges() []resilmail.Change {
	return []resilmail.Change{
		{Seq: 1, Epoch: 1, Kind: resilmail.ChangeUserCreate, Time: testTime, User: "alice"},
		{Seq: 2, Epoch: 1, Kind: resilmail.ChangeMailboxCreate, Time: testTime, User: "alice", Mailbox: "INBOX", MailboxID: testMailboxID, UIDValidity: 1700000000, ModSeq: 1},
		{Seq: 3, Epoch: 1, Kind: resilmail.ChangeAppend, Time: testTime, User: "alice", Mailbox: "INBOX", MailboxID: testMailboxID, UIDValidity: 1700000000,
			UID: 1, Digest: resilmail.DigestOf([]byte("body")), Size: 4, InternalDate: testTime.Add(-time.Hour), Flags: []string{`\Seen`, "$Forwarded"}, ModSeq: 2},
		{Seq: 4, Epoch: 2, Kind: resilmail.ChangeFlags, Time: testTime, User: "alice", Mailbox: "INBOX", MailboxID: testMailboxID, UIDValidity: 1700000000,
			UIDs: resilmail.NewUIDSet(1, 2, 3, 7, 9, 10, 4000000000), FlagOp: resilmail.FlagsRemove, Flags: []string{`\Seen`}, ModSeq: 3},
		{Seq: 5, Epoch: 2, Kind: resilmail.ChangeFlags, User: "alice", MailboxID: testMailboxID, UIDValidity: 1, UIDs: resilmail.NewUIDSet(1), FlagOp: resilmail.FlagsSet},
		{Seq: 6, Epoch: 2, Kind: resilmail.ChangeExpunge, Time: testTime, User: "alice", Mailbox: "INBOX", MailboxID: testMailboxID, UIDValidity: 1700000000, UIDs: resilmail.NewUIDSet(1), ModSeq: 4},
		{Seq: 7, Epoch: 2, Kind: resilmail.ChangeMailboxRename, Time: testTime, User: "alice", Mailbox: "Work", NewName: "Archive/Work", MailboxID: testMailboxID},
		{Seq: 8, Epoch: 2, Kind: resilmail.ChangeMailboxDelete, User: "alice", Mailbox: "Archive/Work", MailboxID: testMailboxID},
		{Seq: 9, Epoch: 2, Kind: resilmail.ChangeSubscribe, User: "alice", Mailbox: "Listes/Général"},
		{Seq: 10, Epoch: 2, Kind: resilmail.ChangeUnsubscribe, User: "alice", Mailbox: "Listes/Général"},
		{Seq: 11, Epoch: 3, Kind: resilmail.ChangeEpoch, Time: testTime},
		{Seq: 12, Epoch: 3, Kind: resilmail.ChangeUserDelete, Time: testTime, User: "alice"},
		{Seq: 14, Epoch: 3, Kind: resilmail.ChangeRestore, Time: testTime, User: "alice", Mailbox: "INBOX", MailboxID: testMailboxID, UIDValidity: 1700000000,
			UID: 7, Digest: resilmail.DigestOf([]byte("body")), Size: 4, InternalDate: testTime.Add(-time.Hour), Flags: []string{`\Seen`}, ModSeq: 9},
		{Seq: 13, Epoch: 3, Kind: resilmail.ChangeReserve, Time: testTime, User: "alice", Mailbox: "INBOX", MailboxID: testMailboxID, UIDValidity: 1700000000, UID: 41, ModSeq: 77},
		{Kind: resilmail.ChangeUserCreate, User: "b"}, // every optional field zero
		{Seq: 1<<64 - 1, Epoch: 1<<64 - 1, Kind: resilmail.ChangeAppend, Time: time.Unix(-1<<40, 999999999).UTC(), User: strings.Repeat("u", resilmail.MaxUserLen),
			Mailbox: strings.Repeat("m", resilmail.MaxMailboxLen), MailboxID: resilmail.MailboxID{0xff}, UIDValidity: 1<<32 - 1, UID: 1<<32 - 1,
			Digest: resilmail.Digest{31: 1}, Size: 1<<63 - 1, InternalDate: time.Unix(1<<40, 0).UTC(), ModSeq: 1<<64 - 1},
	}
}

func TestChangeRoundTrip(t *testing.T) {
	for _, c := range sampleChanges() {
		t.Run(c.String(), func(t *testing.T) {
			b, err := c.MarshalBinary()
			require.NoError(t, err)
			var got resilmail.Change
			require.NoError(t, got.UnmarshalBinary(b))
			assert.Equal(t, c, got)
			again, err := got.MarshalBinary()
			require.NoError(t, err)
			assert.Equal(t, b, again, "the encoding is canonical")
		})
	}
}

func TestChangeTimeZones(t *testing.T) {
	paris := time.FixedZone("CET", 3600)
	c := resilmail.Change{Kind: resilmail.ChangeUserCreate, User: "a", Time: testTime.In(paris)}
	b, err := c.MarshalBinary()
	require.NoError(t, err)
	var got resilmail.Change
	require.NoError(t, got.UnmarshalBinary(b))
	assert.True(t, got.Time.Equal(c.Time))
	assert.Equal(t, time.UTC, got.Time.Location())
}

func TestChangeValidate(t *testing.T) {
	valid := sampleChanges()[2] // an append
	tests := []struct {
		name   string
		mutate func(c *resilmail.Change)
		want   string // part of the error; "" means valid
	}{
		{"valid", func(c *resilmail.Change) {}, ""},
		{"unknown kind", func(c *resilmail.Change) { c.Kind = 0 }, "unknown kind"},
		{"kind out of range", func(c *resilmail.Change) { c.Kind = 200 }, "unknown kind"},
		{"no user", func(c *resilmail.Change) { c.User = "" }, "without a user"},
		{"long user", func(c *resilmail.Change) { c.User = strings.Repeat("x", 256) }, "user longer"},
		{"bad utf8", func(c *resilmail.Change) { c.Mailbox = "a\xffb" }, "not valid UTF-8"},
		{"NUL", func(c *resilmail.Change) { c.Mailbox = "a\x00b" }, "NUL"},
		{"long mailbox", func(c *resilmail.Change) { c.NewName = strings.Repeat("x", 1025) }, "new name longer"},
		{"no digest", func(c *resilmail.Change) { c.Digest = resilmail.Digest{} }, "without a digest"},
		{"no uid", func(c *resilmail.Change) { c.UID = 0 }, "without a UID"},
		{"no mailbox id", func(c *resilmail.Change) { c.MailboxID = resilmail.MailboxID{} }, "without a mailbox id"},
		{"no uidvalidity", func(c *resilmail.Change) { c.UIDValidity = 0 }, "without a UIDVALIDITY"},
		{"negative size", func(c *resilmail.Change) { c.Size = -1 }, "negative size"},
		{"flag op on append", func(c *resilmail.Change) { c.FlagOp = resilmail.FlagsAdd }, "flag operation"},
		{"empty flag", func(c *resilmail.Change) { c.Flags = []string{""} }, "empty flag"},
		{"long flag", func(c *resilmail.Change) { c.Flags = []string{strings.Repeat("f", 256)} }, "flag longer"},
		{"too many flags", func(c *resilmail.Change) { c.Flags = slices.Repeat([]string{"f"}, resilmail.MaxFlags+1) }, "flags, more than"},
		{"unnormalized uids", func(c *resilmail.Change) { c.UIDs = resilmail.UIDSet{{3, 4}, {5, 6}} }, "not normalized"},
		{"uid zero in set", func(c *resilmail.Change) { c.UIDs = resilmail.UIDSet{{0, 4}} }, "not normalized"},
		{"flags without op", func(c *resilmail.Change) { c.Kind = resilmail.ChangeFlags; c.UIDs = resilmail.NewUIDSet(1) }, "without a flag operation"},
		{"expunge without uids", func(c *resilmail.Change) { c.Kind = resilmail.ChangeExpunge }, "without UIDs"},
		{"rename without new name", func(c *resilmail.Change) { c.Kind = resilmail.ChangeMailboxRename }, "without a new name"},
		{"epoch without epoch", func(c *resilmail.Change) { c.Kind = resilmail.ChangeEpoch; c.Epoch = 0 }, "without an epoch"},
		{"subscribe without name", func(c *resilmail.Change) { c.Kind = resilmail.ChangeSubscribe; c.Mailbox = "" }, "without a name"},
		{"restore without digest", func(c *resilmail.Change) { c.Kind = resilmail.ChangeRestore; c.Digest = resilmail.Digest{} }, "restore change without a digest"},
		{"reserve without uid", func(c *resilmail.Change) { c.Kind = resilmail.ChangeReserve; c.UID = 0 }, "reserve change without a UID"},
		{"reserve without uidvalidity", func(c *resilmail.Change) { c.Kind = resilmail.ChangeReserve; c.UIDValidity = 0 }, "reserve change without a UIDVALIDITY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid
			c.UIDs = slices.Clone(c.UIDs)
			tt.mutate(&c)
			err := c.Validate()
			_, merr := c.MarshalBinary()
			if tt.want == "" {
				assert.NoError(t, err)
				assert.NoError(t, merr)
				return
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, resilmail.ErrBadChange)
			assert.Contains(t, err.Error(), tt.want)
			assert.Error(t, merr, "MarshalBinary refuses what Validate refuses")
		})
	}
}

func TestChangeUnmarshalRefuses(t *testing.T) {
	good, err := sampleChanges()[2].MarshalBinary()
	require.NoError(t, err)
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "too short"},
		{"version 2", append([]byte{2}, good[1:]...), "unknown encoding version 2"},
		{"version 0", append([]byte{0}, good[1:]...), "unknown encoding version 0"},
		{"trailing byte", append(slices.Clone(good), 0), "after the change"},
		{"unknown field", []byte{1, 9, 0x80, 0x80, 0x04}, "unknown fields"},
		{"non-minimal varint", []byte{1, 9, 0x88, 0x00, 1, 'a'}, "bad field mask"},
		{"zero seq present", []byte{1, 9, 0x09, 0, 1, 'a'}, "seq present but zero"},
		{"user length beyond input", []byte{1, 9, 0x08, 0x7f, 'a'}, "truncated"},
		{"user too long", []byte{1, 9, 0x08, 0x80, 0x02}, "user longer"},
		{"huge flag count", []byte{1, 9, 0x80, 0x80, 0x01, 0xff, 0xff, 0x03}, "flags"},
		{"huge uid set", []byte{1, 2, 0x80, 0x04, 0xff, 0xff, 0x03}, "uid set"},
	}
	for i := 2; i < len(good); i++ {
		tests = append(tests, struct {
			name string
			data []byte
			want string
		}{"truncated", good[:i], ""})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c resilmail.Change
			err := c.UnmarshalBinary(tt.data)
			require.Error(t, err)
			assert.ErrorIs(t, err, resilmail.ErrBadChange)
			if tt.want != "" {
				assert.Contains(t, err.Error(), tt.want)
			}
			assert.Equal(t, resilmail.Change{}, c, "a failed decode leaves c alone")
		})
	}
}

func TestUIDSet(t *testing.T) {
	tests := []struct {
		name string
		add  [][2]uint32
		want string
		len  uint64
	}{
		{"empty", nil, "", 0},
		{"one", [][2]uint32{{5, 5}}, "5", 1},
		{"ascending merges adjacent", [][2]uint32{{1, 1}, {2, 2}, {3, 3}, {5, 5}}, "1:3,5", 4},
		{"descending", [][2]uint32{{9, 9}, {7, 7}, {8, 8}, {1, 2}}, "1:2,7:9", 5},
		{"reversed range", [][2]uint32{{10, 4}}, "4:10", 7},
		{"bridge", [][2]uint32{{1, 3}, {7, 9}, {4, 6}}, "1:9", 9},
		{"overlap several", [][2]uint32{{1, 2}, {4, 5}, {7, 8}, {10, 11}, {3, 9}}, "1:11", 11},
		{"zero ignored", [][2]uint32{{0, 0}, {0, 2}}, "1:2", 2},
		{"max", [][2]uint32{{1<<32 - 2, 1<<32 - 1}}, "4294967294:4294967295", 2},
		{"inside", [][2]uint32{{1, 10}, {3, 4}}, "1:10", 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s resilmail.UIDSet
			for _, r := range tt.add {
				s = s.AddRange(r[0], r[1])
			}
			assert.True(t, s.Valid())
			assert.Equal(t, tt.want, s.String())
			assert.Equal(t, tt.len, s.Len())
			var all []uint32
			for u := range s.All() {
				all = append(all, u)
				assert.True(t, s.Contains(u))
			}
			assert.Len(t, all, int(tt.len))
			assert.True(t, slices.IsSorted(all))
			p, err := resilmail.ParseUIDSet(tt.want)
			require.NoError(t, err)
			assert.Equal(t, s.String(), p.String())
		})
	}
	s := resilmail.NewUIDSet(1, 3, 5)
	assert.False(t, s.Contains(2))
	assert.False(t, s.Contains(0))
	assert.False(t, s.Contains(6))
	for _, bad := range []string{"0", "a", "1:", "1,,2", "*", "1:0", "4294967296"} {
		_, err := resilmail.ParseUIDSet(bad)
		assert.Error(t, err, bad)
	}
}

func TestChangeKindString(t *testing.T) {
	assert.Equal(t, "append", resilmail.ChangeAppend.String())
	assert.Equal(t, "epoch", resilmail.ChangeEpoch.String())
	assert.Equal(t, "ChangeKind(99)", resilmail.ChangeKind(99).String())
	assert.Equal(t, "remove", resilmail.FlagsRemove.String())
	id, err := resilmail.ParseMailboxID(testMailboxID.String())
	require.NoError(t, err)
	assert.Equal(t, testMailboxID, id)
	_, err = resilmail.ParseMailboxID("xyz")
	assert.Error(t, err)
}

// FuzzChangeUnmarshal feeds arbitrary bytes to the change decoder: it must
// never panic, and every change it accepts must pass Validate and encode
// back to exactly the same bytes (the encoding is canonical).
func FuzzChangeUnmarshal(f *testing.F) {
	for _, c := range sampleChanges() {
		b, err := c.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{1})
	f.Add([]byte{1, 9, 0x08, 0x7f, 'a'})
	f.Fuzz(func(t *testing.T, data []byte) {
		var c resilmail.Change
		err := c.UnmarshalBinary(data)
		if err != nil {
			if !errors.Is(err, resilmail.ErrBadChange) {
				t.Fatalf("error does not wrap ErrBadChange: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("decoded change fails Validate: %v", err)
		}
		again, err := c.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded change does not encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("round trip changed the bytes:\n%x\n%x", data, again)
		}
		var c2 resilmail.Change
		if err := c2.UnmarshalBinary(again); err != nil {
			t.Fatalf("re-encoded change does not decode: %v", err)
		}
		_ = c2.String()
	})
}
