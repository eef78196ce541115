package store_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// clock is a settable clock for Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Second)
	return c.now
}

func quietOpts() *store.Options {
	return &store.Options{Logger: discardLogger(), Now: newClock().Now}
}

func open(t testing.TB, dir string, opts *store.Options) *store.Store {
	t.Helper()
	if opts == nil {
		opts = quietOpts()
	}
	s, err := store.Open(dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// newStore opens a store in a new folder with a user "alice".
func newStore(t testing.TB) (*store.Store, string) {
	t.Helper()
	dir := t.TempDir()
	s := open(t, dir, nil)
	require.NoError(t, s.CreateUser(context.Background(), "alice"))
	return s, dir
}

func msg(subject, body string) string {
	return "Subject: " + subject + "\r\nFrom: a@example.org\r\n\r\n" + body + "\r\n"
}

func appendMsg(t testing.TB, s *store.Store, user, mailbox, content string, flags ...string) uint32 {
	t.Helper()
	uid, err := s.Append(context.Background(), user, mailbox, flags, time.Time{}, strings.NewReader(content))
	require.NoError(t, err)
	return uid
}

// replicateAll applies every change of src after pos to dst and returns
// the new position.
func replicateAll(t testing.TB, src, dst *store.Store, pos uint64) uint64 {
	t.Helper()
	ctx := context.Background()
	for {
		changes, err := src.Changes(ctx, pos, 500)
		require.NoError(t, err)
		if len(changes) == 0 {
			return pos
		}
		require.NoError(t, dst.Apply(ctx, changes, bodyFrom(src)))
		pos = changes[len(changes)-1].Seq
	}
}

func bodyFrom(src *store.Store) store.BodyFunc {
	return func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error) {
		b, err := src.Body(ctx, d)
		if err != nil {
			return nil, err
		}
		return io.NopCloser(strings.NewReader(string(b))), nil
	}
}

// snapshot is everything observable about a user's mail, for comparing
// stores.
type snapshot struct {
	Mailboxes map[string]store.Status
	Messages  map[string][]store.Message
	Subs      []string
}

func snap(t testing.TB, s *store.Store, user string) snapshot {
	t.Helper()
	ctx := context.Background()
	sn := snapshot{Mailboxes: map[string]store.Status{}, Messages: map[string][]store.Message{}}
	list, err := s.ListMailboxes(ctx, user)
	require.NoError(t, err)
	for _, st := range list {
		sn.Mailboxes[st.Name] = st
		msgs, err := s.Fetch(ctx, user, st.Name, store.Query{})
		require.NoError(t, err)
		sn.Messages[st.Name] = msgs
	}
	sn.Subs, err = s.Subscriptions(ctx, user)
	require.NoError(t, err)
	return sn
}

// rng returns the UID set start:stop.
func rng(start, stop uint32) resilmail.UIDSet { return resilmail.UIDSet{}.AddRange(start, stop) }
