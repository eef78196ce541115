package quarantine_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/quarantine"
)

// testAuth: "admin" sees everything, "postmaster" the domain example.org,
// alice@example.org also sees her alias al@example.org.
func testAuth() *quarantine.StaticAuthorizer {
	return &quarantine.StaticAuthorizer{
		Admins:       []string{"admin"},
		DomainAdmins: map[string][]string{"postmaster": {"example.org"}},
		Aliases:      map[string][]string{"alice@example.org": {"al@example.org"}},
	}
}

// recorder is a Deliverer that records what it was given.
type recorder struct {
	mu    sync.Mutex
	got   []resilmail.Envelope
	body  []string
	fail  func(env resilmail.Envelope) error
	block chan struct{} // when set, Deliver waits for it
}

func (r *recorder) Deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	if r.block != nil {
		select {
		case <-r.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		if err := r.fail(env); err != nil {
			return err
		}
	}
	r.got = append(r.got, env)
	r.body = append(r.body, string(b))
	return nil
}

func (r *recorder) deliveries() []resilmail.Envelope {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]resilmail.Envelope(nil), r.got...)
}

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// t0 is a recent time: entries made at it are not old enough to expire.
var t0 = time.Now().UTC().Truncate(time.Minute).Add(-2 * time.Hour)

func openTestStore(t testing.TB, dir string, opts *quarantine.Options) *quarantine.Store {
	t.Helper()
	if opts == nil {
		opts = &quarantine.Options{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := quarantine.Open(dir, testAuth(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// testEntry returns an entry caught at at, for rcpts, with a spam reason.
func testEntry(id string, at time.Time, from string, rcpts ...string) quarantine.Entry {
	e := quarantine.Entry{
		ID:       id,
		Envelope: resilmail.Envelope{ID: "q-" + id, From: from},
		Time:     at,
		Node:     "mx2",
		Reason:   quarantine.Reason{Kind: quarantine.KindSpam, Score: 9.5, Threshold: 5, Reply: "550 5.7.1 spam"},
	}
	for _, r := range rcpts {
		e.Envelope.To = append(e.Envelope.To, resilmail.Recipient{Addr: r})
		e.Recipients = append(e.Recipients, quarantine.RecipientState{Addr: r})
	}
	return e
}

func testBody(subject string) string {
	return fmt.Sprintf("From: spammer@bad.example\r\nTo: alice@example.org\r\nSubject: %s\r\nMessage-ID: <%s@bad.example>\r\n\r\nBuy now!\r\n", subject, strings.ReplaceAll(subject, " ", "."))
}

func put(t testing.TB, s *quarantine.Store, e quarantine.Entry, body string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	require.NoError(t, s.Put(context.Background(), e, r))
}
