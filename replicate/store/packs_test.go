package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

// feedBodies gives the bodies of changes, in their order, from two
// goroutines, each once.
func feedBodies(changes []resilmail.Change, bodies map[resilmail.Digest][]byte) loadFunc {
	return func(ctx context.Context, put func(resilmail.Digest, []byte) error) error {
		var list []resilmail.Digest
		for _, c := range changes {
			if c.Kind == resilmail.ChangeAppend {
				list = append(list, c.Digest)
			}
		}
		g, ctx := errgroup.WithContext(ctx)
		for w := range 2 {
			g.Go(func() error {
				for i := w; i < len(list); i += 2 {
					if err := ctx.Err(); err != nil {
						return err
					}
					if err := put(list[i], bodies[list[i]]); err != nil {
						return err
					}
				}
				return nil
			})
		}
		return g.Wait()
	}
}

// loadedStore loads the loadChanges state (720 bodies of 1-3 KiB) into
// a new store with small packs, and returns it with its folder, the
// loaded changes and their bodies.
func loadedStore(t *testing.T) (*store.Store, string, []resilmail.Change, map[resilmail.Digest][]byte) {
	t.Helper()
	defer store.SetPackTarget(64 << 10)()
	changes, bodies := loadChanges()
	dir := t.TempDir()
	dst := open(t, dir, nil)
	require.NoError(t, dst.Load(context.Background(), changes, feedBodies(changes, bodies)))
	return dst, dir, changes, bodies
}

// looseBodies counts the bodies stored in files of their own.
func looseBodies(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	require.NoError(t, filepath.WalkDir(filepath.Join(dir, "bodies"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	}))
	return n
}

// checkBodies reads every body of changes from dst whole, in part
// (ReadAt at its end, Section, Header, Verified) and compares.
func checkBodies(t *testing.T, dst *store.Store, changes []resilmail.Change, bodies map[resilmail.Digest][]byte) {
	t.Helper()
	ctx := context.Background()
	for d := range fullBodies(changes) {
		want := bodies[d]
		got, err := dst.Body(ctx, d)
		require.NoError(t, err)
		require.Equal(t, want, got)
		r, err := dst.OpenBody(ctx, d)
		require.NoError(t, err)
		require.Equal(t, int64(len(want)), r.Size())
		// A read past the end stops at the body's end, not at the pack's.
		p := make([]byte, 64)
		n, err := r.ReadAt(p, r.Size()-10)
		require.ErrorIs(t, err, io.EOF)
		require.Equal(t, want[len(want)-10:], p[:n])
		part, err := io.ReadAll(r.Section(5, 1<<20))
		require.NoError(t, err)
		require.Equal(t, want[5:], part)
		all, err := io.ReadAll(r.Verified())
		require.NoError(t, err)
		require.Equal(t, want, all)
		require.NoError(t, r.Close())
		h, err := dst.Header(ctx, d, 0)
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(string(want), string(h)))
	}
}

// TestLoadWritesPacks: a load writes its bodies into a few packs, not a
// file each, and every body reads back (whole and in part) before and
// after a restart, and through a scrub.
func TestLoadWritesPacks(t *testing.T) {
	ctx := context.Background()
	dst, dir, changes, bodies := loadedStore(t)
	packs := dst.PackFiles()
	require.Greater(t, packs, 4, "small packs: several")
	require.Less(t, packs, len(bodies)/20, "far fewer packs than bodies")
	require.Zero(t, looseBodies(t, dir), "no body in a file of its own")
	st := dst.Stats()
	require.Equal(t, packs, st.Packs)
	require.Equal(t, len(bodies), st.PackedBodies)
	require.Equal(t, st.PackBytes, st.PackLiveBytes)
	require.Positive(t, st.PackBytes)
	v, err := os.ReadFile(filepath.Join(dir, "VERSION"))
	require.NoError(t, err)
	require.Equal(t, "resilmail-store 3\n", string(v), "a store with packs says so")
	checkBodies(t, dst, changes, bodies)

	require.NoError(t, dst.Close())
	dst = open(t, dir, nil)
	checkLoaded(t, dst, changes, bodies)
	checkBodies(t, dst, changes, bodies)
	rep, err := dst.Scrub(ctx)
	require.NoError(t, err)
	require.Empty(t, rep.Corrupt)
	require.Equal(t, len(bodies), rep.Checked)
	require.Zero(t, rep.Orphans)
	require.Equal(t, packs, dst.PackFiles())

	// The same content appended again shares the packed body.
	var one resilmail.Change
	for _, c := range changes {
		if c.Kind == resilmail.ChangeAppend {
			one = c
			break
		}
	}
	appendMsg(t, dst, one.User, one.Mailbox, string(bodies[one.Digest]))
	require.Zero(t, looseBodies(t, dir), "a body the store holds in a pack is not written again")
}

// TestPacksGoWithTheirBodies: a pack is removed once none of its bodies is
// needed; until then its bodies stay readable, after a restart too.
func TestPacksGoWithTheirBodies(t *testing.T) {
	ctx := context.Background()
	dst, dir, changes, bodies := loadedStore(t)
	packs := dst.PackFiles()

	// Delete every user but one: some packs keep bodies, some may not.
	us := users(t, dst)
	for _, u := range us[1:] {
		require.NoError(t, dst.DeleteUser(ctx, u))
	}
	require.NoError(t, dst.Compact(ctx))
	require.NoError(t, dst.Close())
	dst = open(t, dir, nil)
	var kept []resilmail.Change
	for _, c := range changes {
		if c.Kind == resilmail.ChangeAppend && c.User == us[0] {
			kept = append(kept, c)
		}
	}
	require.NotEmpty(t, kept)
	checkBodies(t, dst, kept, bodies)
	require.Less(t, dst.PackFiles(), packs, "packs of the deleted users' bodies only are gone")
	require.Positive(t, dst.PackFiles())

	// Then the last one: every pack goes.
	require.NoError(t, dst.DeleteUser(ctx, us[0]))
	require.NoError(t, dst.Compact(ctx))
	require.Zero(t, dst.PackFiles(), "no body left: no pack left")
	require.NoError(t, dst.Close())
	dst = open(t, dir, nil)
	require.Zero(t, dst.PackFiles())
}

// TestDamagedPackedBody: a packed body that does not hash to its digest is
// refused and marked corrupt, found by a scrub, and served again once a
// good copy is restored (as a file of its own), after a restart too.
func TestDamagedPackedBody(t *testing.T) {
	ctx := context.Background()
	dst, dir, changes, bodies := loadedStore(t)
	var d resilmail.Digest
	for _, c := range changes {
		if c.Kind == resilmail.ChangeAppend {
			d = c.Digest
			break
		}
	}
	good := bodies[d]
	// Flip a byte of that body inside its pack.
	r, err := dst.OpenBody(ctx, d)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	flipped := false
	packs, err := filepath.Glob(filepath.Join(dir, "packs", "*.pack"))
	require.NoError(t, err)
	for _, p := range packs {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		if i := strings.Index(string(b), string(good)); i >= 0 {
			b[i+len(good)/2] ^= 1
			require.NoError(t, os.WriteFile(p, b, 0o640))
			flipped = true
			break
		}
	}
	require.True(t, flipped)

	_, err = dst.Body(ctx, d)
	require.ErrorIs(t, err, store.ErrCorrupt)
	_, err = dst.Body(ctx, d)
	require.ErrorIs(t, err, store.ErrCorrupt, "and stays refused")
	require.False(t, dst.HasBody(d))
	rep, err := dst.Scrub(ctx)
	require.NoError(t, err)
	require.Equal(t, []resilmail.Digest{d}, rep.Corrupt)

	require.ErrorIs(t, dst.RestoreBody(ctx, d, strings.NewReader("not it")), store.ErrCorrupt)
	require.NoError(t, dst.RestoreBody(ctx, d, strings.NewReader(string(good))))
	b, err := dst.Body(ctx, d)
	require.NoError(t, err)
	require.Equal(t, good, b)
	require.Equal(t, 1, looseBodies(t, dir), "the good copy is a file of its own")
	require.NoError(t, dst.Close())
	dst = open(t, dir, nil)
	b, err = dst.Body(ctx, d)
	require.NoError(t, err, "the good copy is read, not the pack")
	require.Equal(t, good, b)
	rep, err = dst.Scrub(ctx)
	require.NoError(t, err)
	require.Empty(t, rep.Corrupt)
}

// TestScrubRemovesPacksOfAFailedLoad: the packs of a load that failed are
// removed by a scrub, and by the next load.
func TestScrubRemovesPacksOfAFailedLoad(t *testing.T) {
	ctx := context.Background()
	defer store.SetPackTarget(16 << 10)()
	changes, bodies := loadChanges()
	errStop := errors.New("stop")
	fail := func(ctx context.Context, put func(resilmail.Digest, []byte) error) error {
		var n atomic.Int32
		return feedBodies(changes, bodies)(ctx, func(d resilmail.Digest, b []byte) error {
			if n.Add(1) > 300 {
				return errStop
			}
			return put(d, b)
		})
	}
	dir := t.TempDir()
	dst := open(t, dir, nil)
	require.ErrorIs(t, dst.Load(ctx, changes, fail), errStop)
	require.Positive(t, dst.PackFiles())
	rep, err := dst.Scrub(ctx)
	require.NoError(t, err)
	require.Positive(t, rep.Orphans)
	require.Zero(t, dst.PackFiles())

	require.ErrorIs(t, dst.Load(ctx, changes, fail), errStop)
	require.NoError(t, dst.Close())
	dst = open(t, dir, nil)
	require.Empty(t, users(t, dst))
	require.NoError(t, dst.Load(ctx, changes, feedBodies(changes, bodies)))
	checkLoaded(t, dst, changes, bodies)
	checkBodies(t, dst, changes, bodies)
	rep, err = dst.Scrub(ctx)
	require.NoError(t, err)
	require.Zero(t, rep.Orphans, "the failed load's packs were removed by the load")
	require.Empty(t, rep.Corrupt)
}

// TestScrubRewritesSparsePacks: once most of a pack's bodies are expunged,
// a scrub gives the rest files of their own and removes the pack; every
// message still reads back, after a restart too, and a pack still mostly
// used stays.
func TestScrubRewritesSparsePacks(t *testing.T) {
	ctx := context.Background()
	dst, dir, changes, bodies := loadedStore(t)
	packs := dst.PackFiles()
	// u0 and u1 lose two messages of three; u2 and u3 keep everything.
	kept := sparseChanges(t, dst, changes)
	require.Equal(t, packs, dst.PackFiles(), "every pack still holds a body")
	rep, err := dst.Scrub(ctx)
	require.NoError(t, err)
	require.Empty(t, rep.Corrupt)
	require.Positive(t, rep.PacksRewritten)
	require.Equal(t, packs-rep.PacksRewritten, dst.PackFiles())
	st := dst.Stats()
	require.Equal(t, packs-rep.PacksRewritten, st.Packs)
	require.GreaterOrEqual(t, st.PackLiveBytes*2, st.PackBytes, "no pack under half used")
	require.Positive(t, dst.PackFiles(), "the packs of u2 and u3 stay")
	require.Positive(t, looseBodies(t, dir))
	checkBodies(t, dst, kept, bodies)
	rep, err = dst.Scrub(ctx)
	require.NoError(t, err)
	require.Zero(t, rep.PacksRewritten, "nothing sparse left")
	require.NoError(t, dst.Close())
	dst = open(t, dir, nil)
	checkBodies(t, dst, kept, bodies)
	rep, err = dst.Scrub(ctx)
	require.NoError(t, err)
	require.Empty(t, rep.Corrupt)
	require.Zero(t, rep.Orphans)
	require.Equal(t, len(fullBodies(kept)), rep.Checked)
}

const repackChildEnv = "RESILMAIL_STORE_REPACK_CHILD"

// sparseChanges expunges two messages of three of u0 and u1 from a store
// loaded with loadChanges, and returns the appends that stay.
func sparseChanges(t *testing.T, s *store.Store, changes []resilmail.Change) []resilmail.Change {
	t.Helper()
	ctx := context.Background()
	var kept []resilmail.Change
	for _, c := range changes {
		if c.Kind != resilmail.ChangeAppend {
			continue
		}
		if (c.User == "u0" || c.User == "u1") && c.UID%3 != 0 {
			_, err := s.Expunge(ctx, c.User, c.Mailbox, resilmail.NewUIDSet(c.UID))
			require.NoError(t, err)
			continue
		}
		kept = append(kept, c)
	}
	require.NoError(t, s.Compact(ctx))
	return kept
}

// TestRepackChild is the child of TestRepackCrash: it scrubs the store,
// announcing each body moved out of a pack ("U n"), and says "DONE" once
// the scrub returned.
func TestRepackChild(t *testing.T) {
	dir := os.Getenv(repackChildEnv)
	if dir == "" {
		t.Skip("run by TestRepackCrash as a child process")
	}
	s, err := store.Open(dir, &store.Options{Logger: discardLogger()})
	require.NoError(t, err)
	n := 0
	defer store.SetUnpackHook(func() {
		n++
		fmt.Printf("U %d\n", n)
	})()
	_, err = s.Scrub(context.Background())
	require.NoError(t, err)
	fmt.Println("DONE")
	os.Stdout.Sync()
	select {} // wait for the kill
}

// TestRepackCrash kills a process (kill -9) while its scrub moves the
// bodies of sparse packs into files of their own, or after: every message
// left reads back, nothing is corrupt, and the next scrub finishes the
// work.
func TestRepackCrash(t *testing.T) {
	if os.Getenv(repackChildEnv) != "" {
		t.Skip("child")
	}
	ctx := context.Background()
	rounds := 4
	if testing.Short() {
		rounds = 2
	}
	for r := range rounds {
		s, dir, changes, bodies := loadedStore(t)
		kept := sparseChanges(t, s, changes)
		moves := 0
		for _, c := range kept {
			if c.User == "u0" || c.User == "u1" {
				moves++
			}
		}
		require.NoError(t, s.Close())
		cmd := exec.Command(os.Args[0], "-test.run", "^TestRepackChild$")
		cmd.Env = append(os.Environ(), repackChildEnv+"="+dir)
		killAt := 1 + rand.IntN(moves/2)
		if r%2 == 1 {
			killAt = -1 // no such step: once the scrub returned
		}
		killChildAt(t, cmd, "U ", killAt)

		s = open(t, dir, nil)
		checkBodies(t, s, kept, bodies)
		rep, err := s.Scrub(ctx)
		require.NoError(t, err, "round %d", r)
		require.Empty(t, rep.Corrupt)
		require.Equal(t, len(fullBodies(kept)), rep.Checked)
		st := s.Stats()
		require.GreaterOrEqual(t, st.PackLiveBytes*2, st.PackBytes, "round %d: the rewrite finished", r)
		require.Equal(t, st.Packs, s.PackFiles(), "round %d: no stray pack file left", r)
		require.NoError(t, s.Close())
		s = open(t, dir, nil)
		checkBodies(t, s, kept, bodies)
		require.NoError(t, s.Close())
	}
}
