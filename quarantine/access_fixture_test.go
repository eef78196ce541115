package quarantine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
)

// The fixture of the access tests (HTTP, links, previews, reports): a real
// Store with a StaticAuthorizer, a settable clock, and a Deliverer that
// records what it is given and can be scripted to fail.
//
//	root@example.net      administrator: sees everything
//	pm-org                domain administrator of example.org
//	alice@example.org     user, with alias info@example.org
//	bob@example.org       user
//	carol@example.com     user in another domain
type accessFixture struct {
	t   *testing.T
	dir string
	s   *Store

	mu        sync.Mutex
	now       time.Time
	delivered []accessDelivery
	// fail, when set, answers Deliver instead of success.
	fail func(env resilmail.Envelope) error
}

type accessDelivery struct {
	Env  resilmail.Envelope
	Body []byte
}

func accessAuthorizer() *StaticAuthorizer {
	return &StaticAuthorizer{
		Admins:       []string{"root@example.net"},
		DomainAdmins: map[string][]string{"pm-org": {"example.org"}},
		Aliases:      map[string][]string{"alice@example.org": {"info@example.org"}},
	}
}

func newAccessFixture(t *testing.T) *accessFixture {
	t.Helper()
	f := &accessFixture{t: t, dir: t.TempDir(), now: time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)}
	f.open()
	t.Cleanup(func() { _ = f.s.Close() })
	return f
}

// open opens (or reopens) the store of f.
func (f *accessFixture) open() {
	f.t.Helper()
	s, err := Open(f.dir, accessAuthorizer(), &Options{
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		Deliverer: resilmail.DelivererFunc(f.deliver),
		Now:       f.clock,
	})
	require.NoError(f.t, err)
	f.s = s
}

func (f *accessFixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *accessFixture) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

func (f *accessFixture) deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	f.mu.Lock()
	fail := f.fail
	f.mu.Unlock()
	if fail != nil {
		if err := fail(env); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delivered = append(f.delivered, accessDelivery{Env: env.Clone(), Body: b})
	return nil
}

func (f *accessFixture) setFail(fn func(env resilmail.Envelope) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fn
}

func (f *accessFixture) deliveries() []accessDelivery {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]accessDelivery(nil), f.delivered...)
}

// message returns a small RFC 5322 message.
func accessMessage(from, to, subject, text string) []byte {
	return []byte(fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: Tue, 10 Mar 2026 10:00:00 +0000\r\nMessage-ID: <%d@example.net>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n",
		from, to, subject, len(text), text))
}

// put stores an entry caught age ago, from sender to rcpts, with body (nil:
// metadata only).
func (f *accessFixture) put(id string, age time.Duration, kind Kind, sender string, rcpts []string, body []byte) Entry {
	f.t.Helper()
	e := Entry{
		ID:       id,
		Envelope: resilmail.Envelope{ID: "in-" + id, From: sender},
		Time:     f.clock().Add(-age),
		Reason:   Reason{Kind: kind, Rule: "test-rule", Score: 9.5, Threshold: 5},
		Node:     "mx1",
	}
	for _, r := range rcpts {
		e.Envelope.To = append(e.Envelope.To, resilmail.Recipient{Addr: r})
		e.Recipients = append(e.Recipients, RecipientState{Addr: r})
	}
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	require.NoError(f.t, f.s.Put(context.Background(), e, r))
	got, err := f.s.Get(context.Background(), "root@example.net", id)
	require.NoError(f.t, err)
	return got
}

// standard stores the entries most tests use:
//
//	e1 spam to alice, e2 spam to bob, e3 spam to carol (example.com),
//	e4 spam to alice and bob, e5 metadata-only reject for alice.
func (f *accessFixture) standard() {
	f.put("e1", 5*time.Hour, KindSpam, "spammer@bad.example", []string{"alice@example.org"},
		accessMessage("Spammer <spammer@bad.example>", "alice@example.org", "Cheap <script>alert(1)</script> pills", "Buy now."))
	f.put("e2", 4*time.Hour, KindSpam, "spammer@bad.example", []string{"bob@example.org"},
		accessMessage("spammer@bad.example", "bob@example.org", "For Bob only", "Secret for Bob."))
	f.put("e3", 3*time.Hour, KindSpam, "spammer@bad.example", []string{"carol@example.com"},
		accessMessage("spammer@bad.example", "carol@example.com", "For Carol", "Carol's text."))
	f.put("e4", 2*time.Hour, KindPolicy, "news@letter.example", []string{"alice@example.org", "bob@example.org"},
		accessMessage("news@letter.example", "alice@example.org, bob@example.org", "Newsletter", "Hello both."))
	f.put("e5", 1*time.Hour, KindClient, "bot@bad.example", []string{"alice@example.org"}, nil)
}

// headerAuth authenticates a request by its X-Test-User header.
func headerAuth(r *http.Request) (string, error) {
	if u := r.Header.Get("X-Test-User"); u != "" {
		return u, nil
	}
	return "", errors.New("no X-Test-User header")
}

func entryIDs(es []Entry) []string {
	var ids []string
	for _, e := range es {
		ids = append(ids, e.ID)
	}
	return ids
}

func rcptAddrs(e Entry) []string {
	var out []string
	for _, r := range e.Recipients {
		out = append(out, strings.ToLower(r.Addr))
	}
	return out
}

// corruptBody overwrites the stored body of e.
func corruptBody(t *testing.T, f *accessFixture, e Entry) {
	t.Helper()
	require.NoError(t, os.WriteFile(f.s.bodyPath(e.Digest), []byte("tampered"), 0o640))
}
