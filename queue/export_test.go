package queue

import (
	"os"

	"github.com/resilmail/resilmail/internal/wal"
)

// SetOpenFile makes the queue open its log files with fn (the power-loss
// test's file-system shim).
func SetOpenFile(o *Options, fn func(name string, flag int, perm os.FileMode) (wal.File, error)) {
	o.openFile = fn
}
