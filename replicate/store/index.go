package store

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"sort"
	"strings"

	"github.com/resilmail/resilmail"
)

// A SetDigest is the combined hash of a set of messages: the XOR of one
// 128-bit hash per message over (UID, mod-sequence, body digest, size,
// internal date, flags). XOR makes it independent of order and lets every
// change update it in O(1): adding or removing a message XORs its hash in
// or out. Two mailboxes with the same UIDVALIDITY and the same SetDigest
// hold the same messages with the same metadata (short of a 128-bit
// collision). The zero SetDigest is the empty set.
type SetDigest [16]byte

// String returns d as 32 lower-case hexadecimal digits.
func (d SetDigest) String() string { return hex.EncodeToString(d[:]) }

func (d *SetDigest) xor(h SetDigest) {
	a := binary.LittleEndian.Uint64(d[:8]) ^ binary.LittleEndian.Uint64(h[:8])
	b := binary.LittleEndian.Uint64(d[8:]) ^ binary.LittleEndian.Uint64(h[8:])
	binary.LittleEndian.PutUint64(d[:8], a)
	binary.LittleEndian.PutUint64(d[8:], b)
}

// msgHashVersion names the per-message hash below; changing what it covers
// changes every digest, so it is versioned like a format.
const msgHashVersion = "resilmail-msg-1\x00"

// message is a message's entry in the in-memory index.
type message struct {
	uid      uint32
	dateNsec uint32
	modseq   uint64
	size     int64
	dateSec  int64
	digest   resilmail.Digest
	flags    flagSet
	hash     SetDigest
}

// computeHash returns the message's contribution to its mailbox's
// SetDigest.
func (m *message) computeHash() SetDigest {
	b := make([]byte, 0, 128)
	b = append(b, msgHashVersion...)
	b = binary.BigEndian.AppendUint32(b, m.uid)
	b = binary.BigEndian.AppendUint64(b, m.modseq)
	b = append(b, m.digest[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(m.size))
	b = binary.BigEndian.AppendUint64(b, uint64(m.dateSec))
	b = binary.BigEndian.AppendUint32(b, m.dateNsec)
	b = append(b, m.flags.sys)
	for _, k := range m.flags.kw {
		b = append(b, strings.ToLower(k)...)
		b = append(b, 0)
	}
	sum := sha256.Sum256(b)
	return SetDigest(sum[:16])
}

func (m *message) seen() bool { return m.flags.sys&bitSeen != 0 }

// mailbox is a mailbox's entry in the in-memory index.
type mailbox struct {
	id          resilmail.MailboxID
	user        *user
	name        string
	uidValidity uint32
	uidNext     uint32
	highest     uint64    // HIGHESTMODSEQ
	msgs        []message // ascending by UID
	unseen      int
	size        int64
	sum         SetDigest
}

// find returns the index of the first message with a UID >= uid.
func (mb *mailbox) find(uid uint32) int {
	return sort.Search(len(mb.msgs), func(i int) bool { return mb.msgs[i].uid >= uid })
}

// get returns the message with uid, or nil.
func (mb *mailbox) get(uid uint32) *message {
	if i := mb.find(uid); i < len(mb.msgs) && mb.msgs[i].uid == uid {
		return &mb.msgs[i]
	}
	return nil
}

// each calls fn for every message whose UID is in set, in UID order; a nil
// set means every message.
func (mb *mailbox) each(set resilmail.UIDSet, fn func(m *message)) {
	if set == nil {
		for i := range mb.msgs {
			fn(&mb.msgs[i])
		}
		return
	}
	for _, r := range set {
		for i := mb.find(r.Start); i < len(mb.msgs) && mb.msgs[i].uid <= r.Stop; i++ {
			fn(&mb.msgs[i])
		}
	}
}

// present returns the UIDs of set that name messages of mb.
func (mb *mailbox) present(set resilmail.UIDSet) resilmail.UIDSet {
	var out resilmail.UIDSet
	mb.each(set, func(m *message) { out = out.Add(m.uid) })
	return out
}

// user is a user's entry in the in-memory index.
type user struct {
	name      string
	mailboxes map[string]*mailbox // by name
	subs      map[string]struct{}
}

func newUser(name string) *user {
	return &user{name: name, mailboxes: make(map[string]*mailbox), subs: make(map[string]struct{})}
}
