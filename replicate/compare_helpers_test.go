package replicate_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Second)
	return c.now
}

func openStore(t testing.TB, dir string) *store.Store {
	t.Helper()
	c := &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	s, err := store.Open(dir, &store.Options{Logger: quietLogger(), Now: c.Now, ScrubInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func msgText(subject, body string) string {
	return "Subject: " + subject + "\r\nFrom: a@example.org\r\n\r\n" + body + "\r\n"
}

func add(t testing.TB, s *store.Store, user, mailbox, content string, flags ...string) uint32 {
	t.Helper()
	uid, err := s.Append(context.Background(), user, mailbox, flags, time.Time{}, strings.NewReader(content))
	require.NoError(t, err)
	return uid
}

func addN(t testing.TB, s *store.Store, user, mailbox string, n int) {
	t.Helper()
	for i := range n {
		add(t, s, user, mailbox, msgText(fmt.Sprintf("%s/%s %d", user, mailbox, i), "hello"))
	}
}

// replicateAll applies every change of src after pos to dst and returns
// the new position.
func replicateAll(t testing.TB, src, dst *store.Store, pos uint64) uint64 {
	t.Helper()
	ctx := context.Background()
	for {
		changes, err := src.Changes(ctx, pos, 1000)
		require.NoError(t, err)
		if len(changes) == 0 {
			return pos
		}
		require.NoError(t, dst.Apply(ctx, changes, replicate.BodiesFrom(src)))
		pos = changes[len(changes)-1].Seq
	}
}

// requireSame checks that the two stores hold the same users, mailboxes
// (state and digest), messages and subscriptions.
func requireSame(t testing.TB, a, b *store.Store) {
	t.Helper()
	ctx := context.Background()
	au, err := a.Users(ctx)
	require.NoError(t, err)
	bu, err := b.Users(ctx)
	require.NoError(t, err)
	require.Equal(t, au, bu)
	for _, u := range au {
		am, err := a.Mailboxes(ctx, u)
		require.NoError(t, err)
		bm, err := b.Mailboxes(ctx, u)
		require.NoError(t, err)
		require.Equal(t, am, bm, "user %s", u)
		as, err := a.Subscriptions(ctx, u)
		require.NoError(t, err)
		bs, err := b.Subscriptions(ctx, u)
		require.NoError(t, err)
		require.Equal(t, as, bs, "user %s", u)
		for _, mb := range am {
			x, err := a.MessageRange(ctx, u, mb.ID, 1, ^uint32(0), 1<<20)
			require.NoError(t, err)
			y, err := b.MessageRange(ctx, u, mb.ID, 1, ^uint32(0), 1<<20)
			require.NoError(t, err)
			require.Equal(t, x, y, "%s/%s", u, mb.Name)
		}
	}
}

func mailboxID(t testing.TB, s *store.Store, user, name string) resilmail.MailboxID {
	t.Helper()
	st, err := s.MailboxStatus(context.Background(), user, name)
	require.NoError(t, err)
	return st.ID
}

// flipBody damages the stored file of body d in the store folder dir.
func flipBody(t testing.TB, dir string, d resilmail.Digest) {
	t.Helper()
	h := d.String()
	path := filepath.Join(dir, "bodies", h[:2], h)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	b[len(b)/2] ^= 0x20
	require.NoError(t, os.WriteFile(path, b, 0o600))
}

type ioReadCloser = io.ReadCloser

func nopCloser(s string) io.ReadCloser { return io.NopCloser(strings.NewReader(s)) }
