package durable

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// A File is the part of *os.File that durable writes need.
type File interface {
	io.Writer
	Name() string
	Sync() error
	Close() error
}

// FS is the file system the helpers write to. [OS] is the real one; tests
// wrap it to inject failures.
type FS interface {
	CreateTemp(dir, pattern string) (File, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	SyncDir(dir string) error
}

// OS is the operating system's file system.
var OS FS = osFS{}

type osFS struct{}

func (osFS) CreateTemp(dir, pattern string) (File, error) { return os.CreateTemp(dir, pattern) }
func (osFS) Rename(oldpath, newpath string) error         { return os.Rename(oldpath, newpath) }
func (osFS) Remove(name string) error                     { return os.Remove(name) }
func (osFS) SyncDir(dir string) error                     { return SyncDir(dir) }

// SyncDir fsyncs the folder dir, making the creation, renaming and removal
// of its entries durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("durable: sync folder %s: %w", dir, err)
	}
	return nil
}

// WriteFile replaces the file at path with data so that after a crash the
// file holds either its old content or data, never a mixture: it writes a
// temporary file in the same folder, fsyncs it, renames it over path and
// fsyncs the folder. When it returns nil, data is on stable storage. On
// error the old file is untouched and the temporary file is removed.
func WriteFile(fsys FS, path string, data []byte, perm os.FileMode) error {
	return WriteFileFunc(fsys, path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteFileFunc is like [WriteFile] but lets write produce the content.
func WriteFileFunc(fsys FS, path string, perm os.FileMode, write func(io.Writer) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := fsys.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("durable: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			fsys.Remove(tmp)
			err = fmt.Errorf("durable: write %s: %w", path, err)
		}
	}()
	if c, ok := f.(interface{ Chmod(os.FileMode) error }); ok {
		if err := c.Chmod(perm); err != nil {
			return err
		}
	}
	if err := write(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fsys.Rename(tmp, path); err != nil {
		return err
	}
	// From here on the new content is in place; a failed folder sync means
	// the rename may not survive a crash, which the caller must hear about.
	return fsys.SyncDir(dir)
}

// ErrLocked is returned by [Lock] when another process (or another Lock in
// this process) holds the folder.
var ErrLocked = errors.New("durable: folder is locked by another writer")

// Lock takes an exclusive lock on the folder dir, through a file named LOCK
// in it, so that a second process opening the same data refuses to start
// instead of corrupting it. The lock is released by calling unlock or when
// the process exits, including by kill -9.
func Lock(dir string) (unlock func() error, err error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("durable: lock %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, fmt.Errorf("durable: lock %s: %w", dir, err)
	}
	return f.Close, nil
}

// FreeSpace returns the bytes available to an unprivileged user on the file
// system holding path.
func FreeSpace(path string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("durable: statfs %s: %w", path, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// MkdirAll creates the folder path and any missing parents with perm, and
// fsyncs the parent of every folder it creates, so that after a crash the
// new folders are still there. A folder that exists is left as it is.
func MkdirAll(path string, perm os.FileMode) error {
	path = filepath.Clean(path)
	if fi, err := os.Stat(path); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("durable: %s is not a folder", path)
		}
		return nil
	}
	parent := filepath.Dir(path)
	if parent != path {
		if err := MkdirAll(parent, perm); err != nil {
			return err
		}
	}
	if err := os.Mkdir(path, perm); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil
		}
		return err
	}
	return SyncDir(parent)
}
