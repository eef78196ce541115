package backup_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/backup"
	"github.com/resilmail/resilmail/replicate/store"
)

// The store implements what backup needs.
var (
	_ backup.Source      = (*store.Store)(nil)
	_ backup.Destination = (*store.Store)(nil)
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Millisecond)
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func openStore(t testing.TB, dir string, clk *clock) *store.Store {
	t.Helper()
	opts := &store.Options{Logger: quiet()}
	if clk != nil {
		opts.Now = clk.Now
	}
	s, err := store.Open(dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

func openRepo(t testing.TB, target backup.Target, clk *clock, key []byte) *backup.Repo {
	t.Helper()
	opts := &backup.Options{Logger: quiet(), Key: key, PackSize: 64 << 10}
	if clk != nil {
		opts.Now = clk.Now
	}
	r, err := backup.Open(context.Background(), target, opts)
	require.NoError(t, err)
	return r
}

func newFolder(t testing.TB) *backup.Folder {
	t.Helper()
	f, err := backup.NewFolder(t.TempDir())
	require.NoError(t, err)
	return f
}

func body(user, box string, i int) string {
	id := sha256.Sum256(fmt.Appendf(nil, "%s/%s/%d", user, box, i))
	return fmt.Sprintf("From: sender%d@example.net\r\nTo: %s\r\nSubject: message %d in %s\r\nMessage-ID: <%x@example.net>\r\n\r\n%s\r\n", i%7, user, i, box, id,
		strings.Repeat(fmt.Sprintf("line %d of a message body that compresses. ", i), 20))
}

// fill creates users with mailboxes and messages; it returns the UIDs per
// user/mailbox.
func fill(t testing.TB, s *store.Store, users, boxes, msgs int) {
	t.Helper()
	ctx := context.Background()
	for u := 0; u < users; u++ {
		user := fmt.Sprintf("user%d@example.org", u)
		require.NoError(t, s.CreateUser(ctx, user))
		for b := 0; b < boxes; b++ {
			box := "INBOX"
			if b > 0 {
				box = fmt.Sprintf("Folder%d", b)
				_, err := s.CreateMailbox(ctx, user, box)
				require.NoError(t, err)
			}
			for i := 0; i < msgs; i++ {
				_, err := s.Append(ctx, user, box, []string{`\Seen`}, time.Date(2025, 1, 1, 0, 0, i, 0, time.UTC), strings.NewReader(body(user, box, i)))
				require.NoError(t, err)
			}
		}
	}
}

// equalStores checks that two stores hold the same users, mailboxes
// (ids, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ) and messages (the mailbox
// digests cover UIDs, mod-sequences, bodies, sizes, dates and flags).
func equalStores(t testing.TB, want, got *store.Store) {
	t.Helper()
	ctx := context.Background()
	wu, err := want.Users(ctx)
	require.NoError(t, err)
	gu, err := got.Users(ctx)
	require.NoError(t, err)
	require.Equal(t, wu, gu)
	for _, u := range wu {
		wm, err := want.ListMailboxes(ctx, u)
		require.NoError(t, err)
		gm, err := got.ListMailboxes(ctx, u)
		require.NoError(t, err)
		require.Equal(t, wm, gm, "mailboxes of %s", u)
		ws, err := want.Subscriptions(ctx, u)
		require.NoError(t, err)
		gs, err := got.Subscriptions(ctx, u)
		require.NoError(t, err)
		require.Equal(t, ws, gs)
	}
}

func uids(u ...uint32) resilmail.UIDSet { return resilmail.NewUIDSet(u...) }
