package store_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

type loadFunc = func(ctx context.Context, put func(resilmail.Digest, []byte) error) error

// fullState returns a store's whole state as changes.
func fullState(t testing.TB, s *store.Store) []resilmail.Change {
	t.Helper()
	var out []resilmail.Change
	_, err := s.FullState(context.Background(), func(c resilmail.Change) error {
		out = append(out, c)
		return nil
	})
	require.NoError(t, err)
	return out
}

// feedFrom gives the bodies the changes refer to from src, from two
// goroutines, each body once or twice.
func feedFrom(src *store.Store, changes []resilmail.Change) loadFunc {
	return func(ctx context.Context, put func(resilmail.Digest, []byte) error) error {
		g, ctx := errgroup.WithContext(ctx)
		for w := range 2 {
			g.Go(func() error {
				for i, c := range changes {
					if c.Kind != resilmail.ChangeAppend || i%2 != w && i%3 != 0 {
						continue
					}
					b, err := src.Body(ctx, c.Digest)
					if err != nil {
						return err
					}
					if err := put(c.Digest, b); err != nil {
						return err
					}
				}
				return nil
			})
		}
		return g.Wait()
	}
}

func TestLoadFillsAnEmptyStore(t *testing.T) {
	ctx := context.Background()
	defer store.SetLoadKickBytes(4 << 10)() // write-back started every few bodies
	src, _ := newStore(t)
	workload(t, src, 11, 600)
	require.NoError(t, src.SetEpoch(ctx, src.Epoch()+3))
	changes := fullState(t, src)
	require.NotEmpty(t, changes)

	dir := t.TempDir()
	dst, err := store.Open(dir, quietOpts())
	require.NoError(t, err)
	history := dst.History()
	require.NoError(t, dst.Load(ctx, changes, feedFrom(src, changes)))
	assertSame(t, src, dst)
	require.Equal(t, src.Epoch(), dst.Epoch())
	require.Equal(t, history, dst.History(), "a load keeps the store's own history")
	pos := dst.Position()
	require.Positive(t, pos)
	_, err = dst.Changes(ctx, 0, 10)
	require.ErrorIs(t, err, store.ErrTooFarBehind, "the journal starts after the load")
	st := dst.Stats()
	require.Equal(t, uint64(0), st.BodyWrites, "no body through the journal")

	// It is durable, every body is good, and the store goes on from it.
	require.NoError(t, dst.Close())
	dst = open(t, dir, nil)
	assertSame(t, src, dst)
	rep, err := dst.Scrub(ctx)
	require.NoError(t, err)
	require.Empty(t, rep.Corrupt)
	require.Equal(t, len(fullBodies(changes)), rep.Checked)
	uid := appendMsg(t, dst, "alice", "INBOX", msg("after", "the load"))
	sb, err := src.MailboxStatus(ctx, "alice", "INBOX")
	require.NoError(t, err)
	require.Equal(t, sb.UIDNext, uid, "UIDs go on from the loaded UIDNEXT")
	after, err := dst.Changes(ctx, pos, 10)
	require.NoError(t, err)
	require.Len(t, after, 1)
	require.Equal(t, pos+1, after[0].Seq)
	require.NoError(t, dst.Close())
	dst = open(t, dir, nil)
	n, err := dst.Fetch(ctx, "alice", "INBOX", store.Query{})
	require.NoError(t, err)
	require.Equal(t, uid, n[len(n)-1].UID)

	// A second load into it is refused.
	err = dst.Load(ctx, changes, feedFrom(src, changes))
	require.ErrorIs(t, err, store.ErrNotEmpty)
	require.ErrorIs(t, err, fs.ErrExist)
}

func fullBodies(changes []resilmail.Change) map[resilmail.Digest]bool {
	m := map[resilmail.Digest]bool{}
	for _, c := range changes {
		if c.Kind == resilmail.ChangeAppend {
			m[c.Digest] = true
		}
	}
	return m
}

// TestLoadFailuresLeaveTheStoreEmpty: a bad body, a missing body, a change
// a load does not take, a cancelled load and a write that came in meanwhile
// leave an empty store that a later load fills.
func TestLoadFailuresLeaveTheStoreEmpty(t *testing.T) {
	ctx := context.Background()
	src, _ := newStore(t)
	workload(t, src, 5, 200)
	changes := fullState(t, src)
	var one resilmail.Digest
	for d := range fullBodies(changes) {
		one = d
		break
	}
	cases := []struct {
		name    string
		changes []resilmail.Change
		feed    func(s *store.Store) loadFunc
		want    error
	}{
		{"corrupt body", changes, func(*store.Store) loadFunc {
			return func(ctx context.Context, put func(resilmail.Digest, []byte) error) error {
				if err := feedFrom(src, changes)(ctx, put); err != nil {
					return err
				}
				return put(one, []byte("not that body"))
			}
		}, store.ErrCorrupt},
		{"missing body", changes, func(*store.Store) loadFunc {
			return func(ctx context.Context, put func(resilmail.Digest, []byte) error) error {
				return feedFrom(src, changes)(ctx, func(d resilmail.Digest, b []byte) error {
					if d == one {
						return nil
					}
					return put(d, b)
				})
			}
		}, nil},
		{"an expunge", append(append([]resilmail.Change(nil), changes...), resilmail.Change{Kind: resilmail.ChangeExpunge, User: "alice",
			Mailbox: "INBOX", UIDs: resilmail.NewUIDSet(1), Epoch: changes[0].Epoch, Time: changes[0].Time}), func(*store.Store) loadFunc {
			return feedFrom(src, changes)
		}, nil},
		{"a write meanwhile", changes, func(s *store.Store) loadFunc {
			return func(ctx context.Context, put func(resilmail.Digest, []byte) error) error {
				if err := s.CreateUser(ctx, "zed"); err != nil {
					return err
				}
				return feedFrom(src, changes)(ctx, put)
			}
		}, store.ErrNotEmpty},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			dst := open(t, dir, nil)
			err := dst.Load(ctx, tc.changes, tc.feed(dst))
			require.Error(t, err)
			if tc.want != nil {
				require.ErrorIs(t, err, tc.want)
			}
			require.NoError(t, dst.Close())
			dst = open(t, dir, nil)
			if tc.name == "a write meanwhile" {
				require.Equal(t, []string{"zed"}, users(t, dst))
				return
			}
			require.Empty(t, users(t, dst))
			require.Zero(t, dst.Position())
			require.NoError(t, dst.Load(ctx, changes, feedFrom(src, changes)))
			assertSame(t, src, dst)
		})
	}
	t.Run("cancelled", func(t *testing.T) {
		dst := open(t, t.TempDir(), nil)
		cctx, cancel := context.WithCancel(ctx)
		err := dst.Load(cctx, changes, func(ctx context.Context, put func(resilmail.Digest, []byte) error) error {
			cancel()
			return feedFrom(src, changes)(ctx, put)
		})
		require.ErrorIs(t, err, context.Canceled)
		require.Empty(t, users(t, dst))
	})
}

const loadChildEnv = "RESILMAIL_STORE_LOAD_CHILD"

// loadChanges is the state the load crash test loads: 4 users, 3 mailboxes
// each, 60 messages per mailbox (some expunged: gaps and a raised UIDNEXT).
func loadChanges() ([]resilmail.Change, map[resilmail.Digest][]byte) {
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	bodies := map[resilmail.Digest][]byte{}
	var out []resilmail.Change
	for u := range 4 {
		user := fmt.Sprintf("u%d", u)
		out = append(out, resilmail.Change{Kind: resilmail.ChangeUserCreate, User: user, Epoch: 2, Time: now})
		for b, name := range []string{"INBOX", "Sent", "Work"} {
			id := resilmail.MailboxID{byte(u), byte(b), 1}
			uv := uint32(1000 + 10*u + b)
			out = append(out, resilmail.Change{Kind: resilmail.ChangeMailboxCreate, User: user, Mailbox: name, MailboxID: id, UIDValidity: uv, ModSeq: 500, Epoch: 2, Time: now})
			for i := 1; i <= 60; i++ {
				uid := uint32(2 * i)
				body := []byte(msg(fmt.Sprintf("%s %s %d", user, name, i), strings.Repeat(fmt.Sprintf("line %d of %s\r\n", i, name), 40+i)))
				d := resilmail.DigestOf(body)
				bodies[d] = body
				var flags []string
				if i%3 == 0 {
					flags = []string{`\Seen`}
				}
				out = append(out, resilmail.Change{Kind: resilmail.ChangeAppend, User: user, Mailbox: name, MailboxID: id, UIDValidity: uv,
					UID: uid, Digest: d, Size: int64(len(body)), ModSeq: uint64(i), Flags: flags, InternalDate: now.Add(time.Duration(i) * time.Minute), Epoch: 2, Time: now})
			}
			out = append(out, resilmail.Change{Kind: resilmail.ChangeReserve, User: user, Mailbox: name, MailboxID: id, UIDValidity: uv, UID: 200, ModSeq: 500, Epoch: 2, Time: now})
		}
	}
	return out, bodies
}

// TestLoadChild is the child of TestLoadCrash: it loads loadChanges into
// the store, announcing each body written ("P n"), and says "DONE" once
// Load returned nil.
func TestLoadChild(t *testing.T) {
	dir := os.Getenv(loadChildEnv)
	if dir == "" {
		t.Skip("run by TestLoadCrash as a child process")
	}
	ctx := context.Background()
	defer store.SetPackTarget(32 << 10)() // many packs: kills between them
	defer store.SetLoadKickBytes(64 << 10)()
	s, err := store.Open(dir, &store.Options{Logger: discardLogger()})
	require.NoError(t, err)
	changes, bodies := loadChanges()
	n := 0
	err = s.Load(ctx, changes, func(ctx context.Context, put func(resilmail.Digest, []byte) error) error {
		for d, b := range bodies {
			if err := put(d, b); err != nil {
				return err
			}
			n++
			fmt.Printf("P %d\n", n)
		}
		return nil
	})
	require.NoError(t, err)
	fmt.Println("DONE")
	os.Stdout.Sync()
	select {} // wait for the kill
}

// TestLoadCrash kills a process loading a store (kill -9) at random points,
// bodies being written or the commit under way, and checks that the store
// it leaves is either empty (and a new load fills it) or whole, never a
// part.
func TestLoadCrash(t *testing.T) {
	if os.Getenv(loadChildEnv) != "" {
		t.Skip("child")
	}
	ctx := context.Background()
	changes, bodies := loadChanges()
	rounds := 6
	if testing.Short() {
		rounds = 3
	}
	empty, whole := 0, 0
	for r := range rounds {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run", "^TestLoadChild$")
		cmd.Env = append(os.Environ(), loadChildEnv+"="+dir)
		// A third of the kills among the bodies, a third right after the
		// last one (the sync and the commit), a third once Load returned.
		killAt := []int{1 + rand.IntN(len(bodies)-1), len(bodies), len(bodies) + 1}[r%3]
		killChildAt(t, cmd, "P ", killAt)

		s, err := store.Open(dir, &store.Options{Logger: discardLogger()})
		require.NoError(t, err)
		if us := users(t, s); len(us) == 0 {
			empty++
			require.Zero(t, s.Position(), "round %d: an empty store with a position", r)
			require.NoError(t, s.Load(ctx, changes, func(ctx context.Context, put func(resilmail.Digest, []byte) error) error {
				for d, b := range bodies {
					if err := put(d, b); err != nil {
						return err
					}
				}
				return nil
			}))
		} else {
			whole++
		}
		if killAt > len(bodies) {
			require.Positive(t, s.Position(), "round %d: Load returned nil, the store must hold the load", r)
		}
		checkLoaded(t, s, changes, bodies)
		require.NoError(t, s.Close())
	}
	t.Logf("%d kills: %d left the store empty (then loaded again), %d left it whole", rounds, empty, whole)
}

// checkLoaded checks that s holds exactly the loadChanges state with
// every body readable.
func checkLoaded(t *testing.T, s *store.Store, changes []resilmail.Change, bodies map[resilmail.Digest][]byte) {
	t.Helper()
	ctx := context.Background()
	require.Equal(t, []string{"u0", "u1", "u2", "u3"}, users(t, s))
	for _, c := range changes {
		switch c.Kind {
		case resilmail.ChangeReserve:
			st, err := s.MailboxStatus(ctx, c.User, c.Mailbox)
			require.NoError(t, err)
			require.Equal(t, c.UID+1, st.UIDNext)
			require.Equal(t, c.UIDValidity, st.UIDValidity)
			require.Equal(t, 60, st.Messages)
		case resilmail.ChangeAppend:
			b, err := s.Body(ctx, c.Digest)
			require.NoError(t, err, "body of %s/%s UID %d", c.User, c.Mailbox, c.UID)
			require.Equal(t, bodies[c.Digest], b)
		}
	}
	rep, err := s.Scrub(ctx)
	require.NoError(t, err)
	require.Empty(t, rep.Corrupt)
	if errors.Is(err, store.ErrCorrupt) {
		t.Fatal(err)
	}
}

// killChildAt starts cmd, a child that prints prefix+N as it makes step N
// and DONE at the end, and kills it (kill -9) at step killAt, or at DONE
// if it gets there first; it fails the test if the child ends before.
func killChildAt(t *testing.T, cmd *exec.Cmd, prefix string, killAt int) {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	sc := bufio.NewScanner(stdout)
	killed := false
	for sc.Scan() {
		line := sc.Text()
		n, ok := 0, false
		if p, cut := strings.CutPrefix(line, prefix); cut {
			n, err = strconv.Atoi(p)
			ok = err == nil
		}
		if (ok && n == killAt) || line == "DONE" {
			require.NoError(t, cmd.Process.Kill())
			killed = true
			break
		}
	}
	require.True(t, killed, "the child ended before the kill; run it alone to see why")
	cmd.Wait()
}
