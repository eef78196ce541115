package imapstore

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/resilmail/resilmail"
)

// view is what one session's client knows of its selected mailbox: the
// mailbox's UIDs up to maxSeen (announced by EXISTS), plus the UIDs
// expunged since and not yet announced (gone), with the flag changes not
// yet announced. The mailbox's UIDs are shared (mbox.uids); a view holds
// only what differs, so an idle session costs a few words. Every field is
// guarded by the mailbox's mu.
type view struct {
	mb      *mbox
	maxSeen uint32
	gone    []uint32 // sorted
	flags   map[uint32]flagUpdate
	notify  chan struct{} // one pending wake-up for Idle
}

// flagUpdate is a message's flags at a mod-sequence.
type flagUpdate struct {
	flags  []string
	modseq uint64
}

// newViewLocked returns a view that knows the whole mailbox.
func (mb *mbox) newViewLocked() *view {
	v := &view{mb: mb, notify: make(chan struct{}, 1)}
	if n := len(mb.uids); n > 0 {
		v.maxSeen = mb.uids[n-1]
	}
	mb.views[v] = struct{}{}
	return v
}

// closeView stops updates to v.
func (mb *mbox) closeView(v *view) {
	mb.mu.Lock()
	delete(mb.views, v)
	mb.mu.Unlock()
}

func (v *view) wake() {
	select {
	case v.notify <- struct{}{}:
	default:
	}
}

// expungedLocked records that uid left the mailbox.
func (v *view) expungedLocked(uid uint32) {
	delete(v.flags, uid)
	if uid > v.maxSeen {
		return // never announced
	}
	i, found := slices.BinarySearch(v.gone, uid)
	if !found {
		v.gone = slices.Insert(v.gone, i, uid)
	}
}

// flagsLocked records a message's new flags.
func (v *view) flagsLocked(uid uint32, u flagUpdate) {
	if uid > v.maxSeen {
		return // announced with its flags when fetched
	}
	if v.flags == nil {
		v.flags = make(map[uint32]flagUpdate)
	}
	v.flags[uid] = u
}

// uidsLocked returns the UIDs as the client numbers them (sequence number
// n is the n-th). The slice may be the mailbox's own: read it under the
// lock only, never change it.
func (v *view) uidsLocked() []uint32 {
	uids := v.mb.uids
	n, _ := slices.BinarySearch(uids, v.maxSeen+1)
	if v.maxSeen == ^uint32(0) {
		n = len(uids)
	}
	base := uids[:n]
	if len(v.gone) == 0 {
		return base
	}
	out := make([]uint32, 0, len(base)+len(v.gone))
	i, j := 0, 0
	for i < len(base) || j < len(v.gone) {
		switch {
		case j == len(v.gone) || (i < len(base) && base[i] < v.gone[j]):
			out = append(out, base[i])
			i++
		default:
			out = append(out, v.gone[j])
			j++
		}
	}
	return out
}

// pendingLocked returns the updates the client has not been told, as IMAP
// responses, and forgets them. Expunges are left for later unless
// allowExpunge (RFC 9051 §7.5.1: not during FETCH, STORE or SEARCH); with
// qresync they are one VANISHED, and with condstore every FETCH carries
// MODSEQ.
func (v *view) pendingLocked(allowExpunge, condstore, qresync bool) []byte {
	var b []byte
	if allowExpunge && len(v.gone) > 0 {
		if qresync {
			var set resilmail.UIDSet
			for _, u := range v.gone {
				set = set.Add(u)
			}
			b = fmt.Appendf(b, "* VANISHED %s\r\n", set)
		} else {
			// From the highest sequence number down, so that each number
			// is right when the client reads it.
			uids := v.uidsLocked()
			for k := len(v.gone) - 1; k >= 0; k-- {
				i, _ := slices.BinarySearch(uids, v.gone[k])
				b = fmt.Appendf(b, "* %d EXPUNGE\r\n", i+1)
			}
		}
		v.gone = nil
	}
	if n := len(v.mb.uids); n > 0 && v.mb.uids[n-1] > v.maxSeen {
		v.maxSeen = v.mb.uids[n-1]
		b = fmt.Appendf(b, "* %d EXISTS\r\n", len(v.uidsLocked()))
	}
	if len(v.flags) > 0 {
		uids := v.uidsLocked()
		keys := make([]uint32, 0, len(v.flags))
		for u := range v.flags {
			keys = append(keys, u)
		}
		slices.Sort(keys)
		for _, u := range keys {
			i, ok := slices.BinarySearch(uids, u)
			if !ok {
				continue
			}
			b = appendFlagsFetch(b, uint32(i)+1, u, v.flags[u], condstore)
		}
		v.flags = nil
	}
	return b
}

// appendFlagsFetch appends "* seq FETCH (UID u FLAGS (...) MODSEQ (m))".
func appendFlagsFetch(b []byte, seq, uid uint32, u flagUpdate, condstore bool) []byte {
	b = fmt.Appendf(b, "* %d FETCH (UID %d FLAGS (%s)", seq, uid, strings.Join(u.flags, " "))
	if condstore {
		b = append(b, " MODSEQ ("...)
		b = strconv.AppendUint(b, u.modseq, 10)
		b = append(b, ')')
	}
	return append(b, ")\r\n"...)
}

// seqOfLocked returns the client's sequence number of uid, or 0.
func (v *view) seqOfLocked(uid uint32) uint32 {
	uids := v.uidsLocked()
	if i, ok := slices.BinarySearch(uids, uid); ok {
		return uint32(i) + 1
	}
	return 0
}

// sentLocked forgets a pending flag update the client has just been sent
// in a command's own FETCH response (at modseq or later).
func (v *view) sentLocked(uid uint32, modseq uint64) {
	if u, ok := v.flags[uid]; ok && u.modseq <= modseq {
		delete(v.flags, uid)
	}
}

// sent is sentLocked for a session's selected mailbox.
func (s *session) sent(uid uint32, modseq uint64) {
	mb := s.sel.mb
	mb.mu.Lock()
	s.sel.view.sentLocked(uid, modseq)
	mb.mu.Unlock()
}
