//go:build linux

package durable

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// A FileSystemSync makes a bulk write of many files durable with one
// syncfs(2) instead of an fsync per file. Start it before the writes: the
// kernel reports on Sync a write-back error of any file on that file system
// since Start (Linux 5.8 and later), including one from background
// write-back before Sync.
type FileSystemSync struct {
	f    *os.File
	path string
}

// StartFileSystemSync opens the file system that holds path for a later
// Sync.
func StartFileSystemSync(path string) (*FileSystemSync, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("durable: syncfs %s: %w", path, err)
	}
	return &FileSystemSync{f: f, path: path}, nil
}

// Sync makes durable everything written to the file system (file contents,
// and the creation, renaming and removal of entries).
func (s *FileSystemSync) Sync() error {
	if err := unix.Syncfs(int(s.f.Fd())); err != nil {
		return fmt.Errorf("durable: syncfs %s: %w", s.path, err)
	}
	return nil
}

// Close releases the file system.
func (s *FileSystemSync) Close() error { return s.f.Close() }
