package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/resilmail/resilmail/internal/durable"
)

// Folder is a [Target] that keeps each blob as one file under a folder of
// the local file system (a mounted disk of another machine, or a folder
// that [NewHandler] serves). Writes are durable: a temporary file in the
// blob's folder, fsync, rename (or link, for PutIfAbsent), fsync of the
// folder; folders created on the way are fsynced into their parents.
// Temporary files are named ".<name>.tmp-*" and are never listed; a crash
// can leave some behind, which [Folder.Clean] removes.
type Folder struct {
	root string
}

var _ Target = (*Folder)(nil)

// NewFolder returns the Folder rooted at dir, creating dir if needed.
func NewFolder(dir string) (*Folder, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("backup: target folder: %w", err)
	}
	if err := durable.SyncDir(filepath.Dir(filepath.Clean(dir))); err != nil {
		return nil, fmt.Errorf("backup: target folder: %w", err)
	}
	return &Folder{root: dir}, nil
}

// Dir returns the folder the blobs are in.
func (f *Folder) Dir() string { return f.root }

func (f *Folder) path(name string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	return filepath.Join(f.root, filepath.FromSlash(name)), nil
}

// mkdirs creates the folders of path below the root, fsyncing each new one
// into its parent.
func (f *Folder) mkdirs(path string) error {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	rel, err := filepath.Rel(f.root, dir)
	if err != nil {
		return err
	}
	cur := f.root
	for _, el := range strings.Split(rel, string(filepath.Separator)) {
		next := filepath.Join(cur, el)
		if err := os.Mkdir(next, 0o750); err == nil {
			if err := durable.SyncDir(cur); err != nil {
				return err
			}
		} else if !errors.Is(err, fs.ErrExist) {
			return err
		}
		cur = next
	}
	return nil
}

// Put implements [Target].
func (f *Folder) Put(ctx context.Context, name string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := f.path(name)
	if err != nil {
		return err
	}
	if err := f.mkdirs(p); err != nil {
		return fmt.Errorf("backup: put %s: %w", name, err)
	}
	if err := durable.WriteFile(durable.OS, p, data, 0o640); err != nil {
		return fmt.Errorf("backup: put %s: %w", name, err)
	}
	return nil
}

// PutIfAbsent implements [Target]: the data is written to a temporary file
// and fsynced, then linked to the name, which fails if it exists.
func (f *Folder) PutIfAbsent(ctx context.Context, name string, data []byte) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := f.path(name)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil && !errors.Is(err, ErrExists) {
			err = fmt.Errorf("backup: put %s: %w", name, err)
		}
	}()
	if err := f.mkdirs(p); err != nil {
		return err
	}
	dir := filepath.Dir(p)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(p)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), p); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s", ErrExists, name)
		}
		return err
	}
	return durable.SyncDir(dir)
}

// Get implements [Target].
func (f *Folder) Get(ctx context.Context, name string, off, length int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := f.path(name)
	if err != nil {
		return nil, err
	}
	fh, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotExist, name)
	}
	if err != nil {
		return nil, fmt.Errorf("backup: get %s: %w", name, err)
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, fmt.Errorf("backup: get %s: %w", name, err)
	}
	if length < 0 {
		length = st.Size() - off
	}
	if off < 0 || length < 0 || off+length > st.Size() {
		return nil, fmt.Errorf("backup: get %s: range %d+%d beyond its %d bytes", name, off, length, st.Size())
	}
	b := make([]byte, length)
	if _, err := fh.ReadAt(b, off); err != nil && !(errors.Is(err, io.EOF) && length == 0) {
		return nil, fmt.Errorf("backup: get %s: %w", name, err)
	}
	return b, nil
}

// List implements [Target].
func (f *Folder) List(ctx context.Context, prefix string) ([]BlobInfo, error) {
	var out []BlobInfo
	start := f.root
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = filepath.Join(f.root, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(start, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path == start {
				return filepath.SkipAll
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".") || d.Name() == "LOCK" {
			if d.IsDir() && path != start {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(f.root, path)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if !strings.HasPrefix(name, prefix) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted meanwhile
			}
			return err
		}
		out = append(out, BlobInfo{Name: name, Size: info.Size()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backup: list %s: %w", prefix, err)
	}
	return out, nil
}

// Delete implements [Target].
func (f *Folder) Delete(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := f.path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("backup: delete %s: %w", name, err)
	}
	if err := durable.SyncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("backup: delete %s: %w", name, err)
	}
	return nil
}

// Clean removes the temporary files a crash left behind. Call it only when
// no writer uses the folder (the repository's lock is held).
func (f *Folder) Clean() (int, error) {
	n := 0
	err := filepath.WalkDir(f.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasPrefix(d.Name(), ".") && strings.Contains(d.Name(), ".tmp-") {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// FreeSpace returns the bytes available on the folder's file system.
func (f *Folder) FreeSpace() (uint64, error) {
	return durable.FreeSpace(f.root)
}
