package replicate

import (
	"os"

	"github.com/resilmail/resilmail/internal/wal"
)

// SetInboxFile makes r open its inbox's segment files with open, for
// tests that inject write and sync failures. Call it before Run.
func SetInboxFile(r *Replica, open func(name string, flag int, perm os.FileMode) (wal.File, error)) {
	r.inboxFile = open
}
