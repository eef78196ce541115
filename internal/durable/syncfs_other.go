//go:build !linux

package durable

import "syscall"

// A FileSystemSync makes a bulk write of many files durable with one call
// instead of an fsync per file. Without syncfs(2) it uses sync(2), which
// flushes every file system and reports no error.
type FileSystemSync struct{}

// StartFileSystemSync prepares a Sync of the file system that holds path.
func StartFileSystemSync(path string) (*FileSystemSync, error) { return &FileSystemSync{}, nil }

// Sync makes durable everything written to the file systems.
func (s *FileSystemSync) Sync() error {
	syscall.Sync()
	return nil
}

// Close releases the file system.
func (s *FileSystemSync) Close() error { return nil }
