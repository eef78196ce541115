package replicate

import (
	"os"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/wal"
)

// SetInboxFile makes r open its inbox's segment files with open, for
// tests that inject write and sync failures. Call it before Run.
func SetInboxFile(r *Replica, open func(name string, flag int, perm os.FileMode) (wal.File, error)) {
	r.inboxFile = open
}

// SetLaneIdle sets how long an idle lane lives, until the test ends.
func SetLaneIdle(t interface{ Cleanup(func()) }, d time.Duration) {
	old := laneIdle
	laneIdle = d
	t.Cleanup(func() { laneIdle = old })
}

// Lanes returns how many lanes r has.
func Lanes(r *Replica) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lanes)
}

// InboxHasBody reports whether r's inbox holds body d.
func InboxHasBody(r *Replica, d resilmail.Digest) bool { return r.inInbox(d) }
