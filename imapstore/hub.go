package imapstore

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/emersion/go-imap/v2"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

// hub keeps one shared view of every selected mailbox: its UIDs in order
// and, per session, what that session's client has not been told yet
// (view.go). One goroutine per
// selected mailbox follows the store's Watch and brings the view up to
// date with MailboxDelta; sessions also refresh it themselves after their
// own writes, so that their next response includes them.
type hub struct {
	st  *store.Store
	log *slog.Logger

	mu    sync.Mutex
	boxes map[resilmail.MailboxID]*mbox

	sessions atomic.Int64
	failed   atomic.Uint64
	refused  atomic.Uint64
}

func newHub(st *store.Store, log *slog.Logger) *hub {
	return &hub{st: st, log: log, boxes: make(map[resilmail.MailboxID]*mbox)}
}

// mbox is a selected mailbox's shared view.
type mbox struct {
	h    *hub
	id   resilmail.MailboxID
	user string

	refs int // guarded by hub.mu

	mu          sync.Mutex
	name        string
	uidValidity uint32
	uidNext     uint32
	highest     uint64
	uids        []uint32
	views       map[*view]struct{}
	watch       <-chan struct{}
	gone        bool

	stop     chan struct{} // closed by halt
	stopOnce sync.Once
	done     chan struct{}
}

// halt stops the mailbox's watcher. The last session's release and the
// server's close may both call it, in either order.
func (mb *mbox) halt() { mb.stopOnce.Do(func() { close(mb.stop) }) }

// open returns the shared view of user's mailbox name, loading it and
// starting its watcher if no session has it selected.
func (h *hub) open(ctx context.Context, user, name string) (*mbox, error) {
	st, err := h.st.MailboxStatus(ctx, user, name)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	if mb := h.boxes[st.ID]; mb != nil {
		mb.refs++
		h.mu.Unlock()
		if err := mb.refresh(ctx, nil); err != nil {
			h.release(mb)
			return nil, err
		}
		return mb, nil
	}
	mb := &mbox{h: h, id: st.ID, user: user, name: st.Name, refs: 1, stop: make(chan struct{}), done: make(chan struct{})}
	h.boxes[st.ID] = mb
	mb.mu.Lock() // loaded before any session sees it
	h.mu.Unlock()
	err = mb.loadLocked(ctx)
	mb.mu.Unlock()
	if err != nil {
		h.release(mb)
		return nil, err
	}
	go mb.follow()
	return mb, nil
}

func (mb *mbox) loadLocked(ctx context.Context) error {
	mb.watch = mb.h.st.Watch(mb.id)
	d, err := mb.h.st.MailboxDelta(ctx, mb.user, mb.name, 0)
	if err != nil {
		return err
	}
	if d.Status.ID != mb.id {
		return store.ErrNotFound
	}
	mb.uids = make([]uint32, len(d.Changed))
	for i, m := range d.Changed {
		mb.uids[i] = m.UID
	}
	mb.uidValidity, mb.uidNext, mb.highest = d.Status.UIDValidity, d.Status.UIDNext, d.Status.HighestModSeq
	mb.views = make(map[*view]struct{})
	return nil
}

// release drops a session's reference; the last one stops the watcher.
func (h *hub) release(mb *mbox) {
	h.mu.Lock()
	mb.refs--
	last := mb.refs == 0
	if last && h.boxes[mb.id] == mb {
		delete(h.boxes, mb.id)
	}
	h.mu.Unlock()
	if last {
		mb.halt()
	}
}

func (h *hub) close() {
	h.mu.Lock()
	boxes := make([]*mbox, 0, len(h.boxes))
	for _, mb := range h.boxes {
		boxes = append(boxes, mb)
	}
	h.mu.Unlock()
	for _, mb := range boxes {
		mb.halt()
		<-mb.done
	}
}

// follow refreshes the view at every change of the mailbox until release.
func (mb *mbox) follow() {
	defer close(mb.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-mb.stop
		cancel()
	}()
	for {
		mb.mu.Lock()
		w := mb.watch
		mb.mu.Unlock()
		select {
		case <-w:
		case <-mb.stop:
			return
		}
		if err := mb.refresh(ctx, nil); err != nil {
			if ctx.Err() != nil || errors.Is(err, store.ErrClosed) {
				return
			}
			mb.h.log.Warn("imap: refreshing a selected mailbox", "mailbox", mb.currentName(), "err", err)
			if errors.Is(err, store.ErrNotFound) {
				return
			}
		}
	}
}

// refresh brings the view up to date with the store, queueing the updates
// for every session; flag updates are not queued for source (the session
// that made them answers them itself).
func (mb *mbox) refresh(ctx context.Context, source *view) error {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	if mb.gone {
		return store.ErrNotFound
	}
	mb.watch = mb.h.st.Watch(mb.id)
	_, st, err := mb.h.st.MailboxByID(ctx, mb.id)
	if err == nil {
		if st.UIDValidity != mb.uidValidity {
			err = store.ErrNotFound
		} else if st.HighestModSeq == mb.highest && st.Name == mb.name {
			return nil
		}
	}
	if errors.Is(err, store.ErrNotFound) {
		mb.gone = true
	}
	if err != nil {
		return err
	}
	mb.name = st.Name
	d, err := mb.h.st.MailboxDelta(ctx, mb.user, mb.name, mb.highest)
	if err != nil {
		return err
	}
	for _, r := range d.Vanished {
		i, _ := slices.BinarySearch(mb.uids, r.Start)
		j := i
		for j < len(mb.uids) && mb.uids[j] <= r.Stop {
			for v := range mb.views {
				v.expungedLocked(mb.uids[j])
			}
			j++
		}
		mb.uids = slices.Delete(mb.uids, i, j)
	}
	for _, m := range d.Changed {
		if m.UID >= mb.uidNext {
			mb.uids = append(mb.uids, m.UID)
			continue
		}
		if _, ok := slices.BinarySearch(mb.uids, m.UID); ok {
			for v := range mb.views {
				if v != source {
					v.flagsLocked(m.UID, flagUpdate{m.Flags, m.ModSeq})
				}
			}
		}
	}
	for v := range mb.views {
		v.wake()
	}
	mb.highest, mb.uidNext = d.Status.HighestModSeq, d.Status.UIDNext
	return nil
}

// imapFlags converts the store's flags; recent adds \Recent.
func imapFlags(flags []string, recent bool) []imap.Flag {
	out := make([]imap.Flag, 0, len(flags)+1)
	for _, f := range flags {
		out = append(out, imap.Flag(f))
	}
	if recent {
		out = append(out, flagRecent)
	}
	return out
}

// flagRecent is IMAP4rev1's \Recent, which IMAP4rev2 dropped; the store
// does not keep it and no message ever has it.
const flagRecent = imap.Flag(`\Recent`)

// currentName returns the mailbox's name now (a RENAME changes it).
func (mb *mbox) currentName() string {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	return mb.name
}
