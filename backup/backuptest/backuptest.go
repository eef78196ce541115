// Package backuptest holds a conformance test that any implementation of
// backup.Target can run, like testing/fstest.
package backuptest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/resilmail/resilmail/backup"
)

// TestTarget checks that t behaves as backup.Target's contract says: put
// and get whole and by range, replace, conditional put with one winner
// among concurrent callers, listing by prefix, delete (also of a missing
// blob), missing blobs and bad names. t must start empty.
func TestTarget(tt *testing.T, t backup.Target) {
	ctx := context.Background()
	check := func(err error, format string, args ...any) {
		tt.Helper()
		if err != nil {
			tt.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
		}
	}
	check(t.Put(ctx, "a/b/c", []byte("hello, world")), "put")
	b, err := t.Get(ctx, "a/b/c", 0, -1)
	check(err, "get")
	if string(b) != "hello, world" {
		tt.Fatalf("get: %q", b)
	}
	b, err = t.Get(ctx, "a/b/c", 7, 5)
	check(err, "get range")
	if string(b) != "world" {
		tt.Fatalf("get range: %q", b)
	}
	if _, err := t.Get(ctx, "a/b/c", 7, 50); err == nil {
		tt.Fatal("a range beyond the end was served")
	}
	check(t.Put(ctx, "a/b/c", []byte("replaced")), "put again")
	b, err = t.Get(ctx, "a/b/c", 0, -1)
	check(err, "get")
	if string(b) != "replaced" {
		tt.Fatalf("put does not replace: %q", b)
	}
	if _, err := t.Get(ctx, "a/missing", 0, -1); !errors.Is(err, backup.ErrNotExist) {
		tt.Fatalf("missing blob: %v, want ErrNotExist", err)
	}
	for _, bad := range []string{"", "../x", "a//b", ".hidden", "A", "a/./b", "a\x00"} {
		if err := t.Put(ctx, bad, []byte("x")); !errors.Is(err, backup.ErrBadName) {
			tt.Fatalf("put %q: %v, want ErrBadName", bad, err)
		}
	}
	// Conditional put: one winner.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, exists := 0, 0
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := t.PutIfAbsent(ctx, "lock", []byte(fmt.Sprint(i)))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, backup.ErrExists):
				exists++
			default:
				tt.Errorf("put if absent: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || exists != 7 {
		tt.Fatalf("put if absent: %d winners, %d refused", wins, exists)
	}
	check(t.Put(ctx, "a/d", nil), "put empty")
	list, err := t.List(ctx, "a/")
	check(err, "list")
	var names []string
	for _, bi := range list {
		names = append(names, bi.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"a/b/c", "a/d"}) {
		tt.Fatalf("list a/: %v", names)
	}
	list, err = t.List(ctx, "nothing/")
	check(err, "list nothing")
	if len(list) != 0 {
		tt.Fatalf("list of a missing prefix: %v", list)
	}
	check(t.Delete(ctx, "a/b/c"), "delete")
	check(t.Delete(ctx, "a/b/c"), "delete again")
	if _, err := t.Get(ctx, "a/b/c", 0, -1); !errors.Is(err, backup.ErrNotExist) {
		tt.Fatalf("deleted blob: %v", err)
	}
}
