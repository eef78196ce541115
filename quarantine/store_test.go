package quarantine_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/quarantine"
)

func TestPutGetBody(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), nil)
	body := testBody("cheap =?utf-8?q?p=C3=AFlls?=")
	put(t, s, testEntry("e1", t0, "spammer@bad.example", "alice@example.org", "bob@example.org"), body)

	e, err := s.Get(ctx, "admin", "e1")
	require.NoError(t, err)
	assert.Equal(t, resilmail.DigestOf([]byte(body)), e.Digest)
	assert.Equal(t, int64(len(body)), e.Size)
	assert.Equal(t, "cheap pïlls", e.Subject)
	assert.Equal(t, "<cheap.=?utf-8?q?p=C3=AFlls?=@bad.example>", e.MessageID)
	require.Len(t, e.Recipients, 2)
	for _, r := range e.Recipients {
		assert.Equal(t, quarantine.Held, r.Status)
		assert.Equal(t, t0, r.Changed.UTC())
	}

	b, err := s.Body(ctx, "alice@example.org", "e1")
	require.NoError(t, err)
	assert.Equal(t, body, string(b))

	// Alice sees the entry with herself only; carol does not see it at all.
	e, err = s.Get(ctx, "alice@example.org", "e1")
	require.NoError(t, err)
	require.Len(t, e.Recipients, 1)
	assert.Equal(t, "alice@example.org", e.Recipients[0].Addr)
	assert.Len(t, e.Envelope.To, 1)
	_, err = s.Get(ctx, "carol@example.org", "e1")
	assert.ErrorIs(t, err, quarantine.ErrNotFound)
	_, err = s.Body(ctx, "carol@example.org", "e1")
	assert.ErrorIs(t, err, quarantine.ErrNotFound)
	_, err = s.Get(ctx, "", "e1")
	assert.ErrorIs(t, err, quarantine.ErrForbidden)
	_, err = s.Get(ctx, "admin", "nope")
	assert.ErrorIs(t, err, quarantine.ErrNotFound)
}

func TestPutIsIdempotent(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), nil)
	e := testEntry("e1", t0, "spammer@bad.example", "alice@example.org")
	put(t, s, e, testBody("one"))
	put(t, s, e, testBody("one"))
	err := s.Put(ctx, e, strings.NewReader(testBody("two")))
	assert.ErrorIs(t, err, quarantine.ErrConflict)
	st := s.Stats()
	assert.EqualValues(t, 1, st.Entries)
	assert.EqualValues(t, 1, st.Stored)
	assert.EqualValues(t, 1, st.Duplicates)
}

func TestPutRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), &quarantine.Options{MaxSize: 100})
	good := testEntry("ok", t0, "a@b.example", "alice@example.org")
	cases := map[string]struct {
		mod  func(e *quarantine.Entry)
		body string
		want error
	}{
		"path trick id":      {func(e *quarantine.Entry) { e.ID = "../../etc/passwd" }, "x", quarantine.ErrInvalid},
		"slash id":           {func(e *quarantine.Entry) { e.ID = "a/b" }, "x", quarantine.ErrInvalid},
		"empty id":           {func(e *quarantine.Entry) { e.ID = "" }, "x", quarantine.ErrInvalid},
		"no time":            {func(e *quarantine.Entry) { e.Time = time.Time{} }, "x", quarantine.ErrInvalid},
		"no recipient":       {func(e *quarantine.Entry) { e.Recipients, e.Envelope.To = nil, nil }, "x", quarantine.ErrInvalid},
		"recipient mismatch": {func(e *quarantine.Entry) { e.Recipients[0].Addr = "bob@example.org" }, "x", quarantine.ErrInvalid},
		"bad address": {func(e *quarantine.Entry) {
			e.Recipients[0].Addr, e.Envelope.To[0].Addr = "nul\x00@x.org", "nul\x00@x.org"
		}, "x", quarantine.ErrInvalid},
		"wrong digest":   {func(e *quarantine.Entry) { e.Digest = resilmail.DigestOf([]byte("other")) }, "x", quarantine.ErrInvalid},
		"too large":      {func(e *quarantine.Entry) {}, strings.Repeat("x", 101), quarantine.ErrTooLarge},
		"unknown status": {func(e *quarantine.Entry) { e.Recipients[0].Status = "gone" }, "x", quarantine.ErrInvalid},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			e := good
			e.Recipients = append([]quarantine.RecipientState(nil), good.Recipients...)
			e.Envelope.To = append([]resilmail.Recipient(nil), good.Envelope.To...)
			c.mod(&e)
			err := s.Put(ctx, e, strings.NewReader(c.body))
			assert.ErrorIs(t, err, c.want)
		})
	}
	// The store keeps serving.
	put(t, s, good, "fine")
	assert.EqualValues(t, 1, s.Stats().Entries)
}

func TestMetadataOnlyEntry(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), &quarantine.Options{Deliverer: &recorder{}})
	e := testEntry("rcpt1", t0, "someone@far.example", "nobody@example.org")
	e.Reason = quarantine.Reason{Kind: quarantine.KindRecipient, Reply: "550 5.1.1 no such user"}
	e.ClientAddr, e.HELO = "192.0.2.7", "far.example"
	put(t, s, e, "")
	got, err := s.Get(ctx, "postmaster", "rcpt1")
	require.NoError(t, err)
	assert.False(t, got.HasBody())
	assert.Equal(t, "192.0.2.7", got.ClientAddr)
	_, err = s.Body(ctx, "admin", "rcpt1")
	assert.ErrorIs(t, err, quarantine.ErrNoBody)
	_, err = s.Release(ctx, "admin", "rcpt1", nil)
	assert.ErrorIs(t, err, quarantine.ErrNoBody)
}

func TestSharedBodyIsStoredOnceAndRemovedWithItsLastEntry(t *testing.T) {
	ctx := context.Background()
	clock := &testClock{now: t0}
	dir := t.TempDir()
	s := openTestStore(t, dir, &quarantine.Options{Now: clock.Now, MaxAge: 24 * time.Hour})
	body := testBody("same")
	put(t, s, testEntry("a", t0, "x@bad.example", "alice@example.org"), body)
	put(t, s, testEntry("b", t0.Add(2*time.Hour), "x@bad.example", "bob@example.org"), body)
	st := s.Stats()
	assert.EqualValues(t, 2, st.Entries)
	assert.EqualValues(t, 1, st.Bodies)
	assert.EqualValues(t, len(body), st.BodyBytes)
	d := resilmail.DigestOf([]byte(body)).String()
	file := filepath.Join(dir, "bodies", d[:1], d)
	require.FileExists(t, file)

	clock.Advance(25 * time.Hour) // a expires, b does not
	es, err := s.Expire(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, es.Removed)
	assert.FileExists(t, file, "b still needs the body")
	_, err = s.Get(ctx, "admin", "a")
	assert.ErrorIs(t, err, quarantine.ErrNotFound)

	clock.Advance(2 * time.Hour)
	es, err = s.Expire(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, es.Removed)
	assert.Equal(t, 1, es.Bodies)
	assert.NoFileExists(t, file)
	st = s.Stats()
	assert.EqualValues(t, 0, st.Entries)
	assert.EqualValues(t, 0, st.Bodies)
	assert.EqualValues(t, 0, st.BodyBytes)
}

func TestCorruptBodyIsNeverServed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	rec := &recorder{}
	s := openTestStore(t, dir, &quarantine.Options{Deliverer: rec})
	body := testBody("flip")
	put(t, s, testEntry("e1", t0, "x@bad.example", "alice@example.org"), body)
	d := resilmail.DigestOf([]byte(body)).String()
	file := filepath.Join(dir, "bodies", d[:1], d)
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	b[len(b)/2] ^= 0x20
	require.NoError(t, os.WriteFile(file, b, 0o600))

	_, err = s.Body(ctx, "admin", "e1")
	require.ErrorIs(t, err, quarantine.ErrCorrupt)
	var ce *resilmail.CorruptError
	assert.True(t, errors.As(err, &ce))

	_, err = s.Release(ctx, "admin", "e1", nil)
	require.ErrorIs(t, err, quarantine.ErrCorrupt)
	assert.Empty(t, rec.deliveries(), "a corrupt body is never released")
	assert.EqualValues(t, 2, s.Stats().Corrupt)

	// A good copy arriving again (the edge re-ships) does not repair a
	// referenced body by itself, but the entry is still held, not lost.
	e, err := s.Get(ctx, "admin", "e1")
	require.NoError(t, err)
	assert.Equal(t, quarantine.Releasing, e.Recipients[0].Status)
}

func TestOpenRefusesUnknownVersionAndSecondProcess(t *testing.T) {
	dir := t.TempDir()
	s, err := quarantine.Open(dir, testAuth(), nil)
	require.NoError(t, err)
	_, err = quarantine.Open(dir, testAuth(), nil)
	assert.Error(t, err, "a second Open of the same folder must fail")
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close is idempotent")
	assert.ErrorIs(t, s.Put(context.Background(), testEntry("x", t0, "", "alice@example.org"), nil), quarantine.ErrClosed)
}

func TestListPagingAndScopes(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), nil)
	// 30 entries, one a minute; alternately for alice, bob, and her alias;
	// every fifth from the null sender, every third a virus.
	for i := range 30 {
		rcpt := []string{"alice@example.org", "bob@example.org", "al@example.org"}[i%3]
		from := "spam@bad.example"
		if i%5 == 0 {
			from = ""
		}
		e := testEntry(idOf(i), t0.Add(time.Duration(i)*time.Minute), from, rcpt, "zed@other.example")
		if i%3 == 2 {
			e.Reason = quarantine.Reason{Kind: quarantine.KindVirus, Virus: "EICAR"}
		}
		put(t, s, e, testBody(idOf(i)))
	}
	all := collect(t, s, "admin", quarantine.Query{Limit: 7})
	require.Len(t, all, 30)
	for i, e := range all {
		assert.Equal(t, idOf(29-i), e.ID, "newest first, no gaps, no repeats")
	}

	alice := collect(t, s, "alice@example.org", quarantine.Query{Limit: 4})
	require.Len(t, alice, 20, "alice sees her address and her alias")
	for _, e := range alice {
		require.Len(t, e.Recipients, 1)
		assert.NotEqual(t, "zed@other.example", e.Recipients[0].Addr, "other recipients are hidden")
	}
	assert.Len(t, collect(t, s, "postmaster", quarantine.Query{}), 30)
	assert.Len(t, collect(t, s, "zed@other.example", quarantine.Query{}), 30)
	assert.Len(t, collect(t, s, "admin", quarantine.Query{Rcpt: "BOB@example.org"}), 10)
	assert.Len(t, collect(t, s, "admin", quarantine.Query{Domain: "other.example"}), 30)
	assert.Len(t, collect(t, s, "admin", quarantine.Query{Sender: "<>"}), 6)
	assert.Len(t, collect(t, s, "admin", quarantine.Query{Sender: "spam@bad.example"}), 24)
	assert.Len(t, collect(t, s, "admin", quarantine.Query{Kind: quarantine.KindVirus}), 10)
	assert.Len(t, collect(t, s, "alice@example.org", quarantine.Query{Kind: quarantine.KindVirus}), 10, "al@ gets the viruses")
	window := collect(t, s, "admin", quarantine.Query{Since: t0.Add(10 * time.Minute), Until: t0.Add(20 * time.Minute), Limit: 3})
	require.Len(t, window, 10)
	assert.Equal(t, idOf(19), window[0].ID)
	assert.Equal(t, idOf(10), window[9].ID)

	_, err := s.List(ctx, "alice@example.org", quarantine.Query{Rcpt: "bob@example.org"})
	assert.ErrorIs(t, err, quarantine.ErrForbidden)
	_, err = s.List(ctx, "postmaster", quarantine.Query{Domain: "other.example"})
	assert.ErrorIs(t, err, quarantine.ErrForbidden)
	_, err = s.List(ctx, "admin", quarantine.Query{Cursor: "!!not-a-cursor"})
	assert.ErrorIs(t, err, quarantine.ErrInvalid)
	_, err = s.List(ctx, "admin", quarantine.Query{Status: "weird"})
	assert.ErrorIs(t, err, quarantine.ErrInvalid)

	// A page taken before new entries arrive continues where it was.
	p1, err := s.List(ctx, "admin", quarantine.Query{Limit: 5})
	require.NoError(t, err)
	put(t, s, testEntry("newer", t0.Add(time.Hour), "x@bad.example", "alice@example.org"), testBody("newer"))
	p2, err := s.List(ctx, "admin", quarantine.Query{Limit: 5, Cursor: p1.Next})
	require.NoError(t, err)
	assert.Equal(t, idOf(24), p2.Entries[0].ID)
}

func idOf(i int) string { return "e" + string(rune('a'+i/10)) + string(rune('0'+i%10)) }

func collect(t *testing.T, s *quarantine.Store, who string, q quarantine.Query) []quarantine.Entry {
	t.Helper()
	var out []quarantine.Entry
	for range 1000 {
		p, err := s.List(context.Background(), who, q)
		require.NoError(t, err)
		out = append(out, p.Entries...)
		if p.Next == "" {
			return out
		}
		q.Cursor = p.Next
	}
	t.Fatal("listing does not end")
	return nil
}

func TestReleaseOnlyBlockedRecipientsExactlyOnce(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	s := openTestStore(t, t.TempDir(), &quarantine.Options{Deliverer: rec})
	body := testBody("release me")
	e := testEntry("e1", t0, "x@bad.example", "alice@example.org", "bob@example.org", "zed@other.example")
	e.Envelope.To[0].Notify = resilmail.NotifyNever
	e.Envelope.EnvID = "orig-env"
	put(t, s, e, body)

	// Twenty concurrent requests from alice: one delivery, to her only.
	var wg sync.WaitGroup
	var changed sync.Map
	for i := range 20 {
		wg.Go(func() {
			r, err := s.Release(ctx, "alice@example.org", "e1", nil)
			assert.NoError(t, err)
			if len(r.Changed) > 0 {
				changed.Store(i, r.Changed)
			}
		})
	}
	wg.Wait()
	n := 0
	changed.Range(func(_, _ any) bool { n++; return true })
	assert.Equal(t, 1, n, "exactly one request changes anything")
	got := rec.deliveries()
	require.Len(t, got, 1)
	assert.Equal(t, "e1.r1", got[0].ID)
	assert.Equal(t, "x@bad.example", got[0].From)
	assert.Equal(t, "orig-env", got[0].EnvID)
	require.Len(t, got[0].To, 1)
	assert.Equal(t, resilmail.Recipient{Addr: "alice@example.org", Notify: resilmail.NotifyNever}, got[0].To[0])
	assert.Equal(t, body, rec.body[0], "the message is released untouched")

	// The postmaster releases the rest of example.org; zed stays held.
	r, err := s.Release(ctx, "postmaster", "e1", nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"bob@example.org"}, r.Changed)
	got = rec.deliveries()
	require.Len(t, got, 2)
	assert.Equal(t, "e1.r2", got[1].ID)

	full, err := s.Get(ctx, "admin", "e1")
	require.NoError(t, err)
	assert.Equal(t, quarantine.Released, full.Recipients[0].Status)
	assert.Equal(t, "alice@example.org", full.Recipients[0].By)
	assert.Equal(t, quarantine.Released, full.Recipients[1].Status)
	assert.Equal(t, quarantine.Held, full.Recipients[2].Status)

	// Naming a recipient outside the scope, or not in the entry, fails.
	_, err = s.Release(ctx, "alice@example.org", "e1", []string{"zed@other.example"})
	assert.ErrorIs(t, err, quarantine.ErrForbidden)
	_, err = s.Release(ctx, "admin", "e1", []string{"nobody@example.org"})
	assert.ErrorIs(t, err, quarantine.ErrInvalid)
	_, err = s.Release(ctx, "carol@example.org", "e1", nil)
	assert.ErrorIs(t, err, quarantine.ErrNotFound)

	trail, err := s.Audit(ctx, "admin", "e1")
	require.NoError(t, err)
	var actions []string
	for _, a := range trail {
		actions = append(actions, a.Who+":"+a.Action+":"+strings.Join(a.Rcpts, ","))
	}
	assert.Equal(t, []string{
		"alice@example.org:release:alice@example.org",
		":released:alice@example.org",
		"postmaster:release:bob@example.org",
		":released:bob@example.org",
	}, actions)
	mine, err := s.Audit(ctx, "alice@example.org", "e1")
	require.NoError(t, err)
	assert.Len(t, mine, 2, "alice sees only the trail about her")
}

func TestVirusIsReleasedByAnAdministratorOnly(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	s := openTestStore(t, t.TempDir(), &quarantine.Options{Deliverer: rec})
	e := testEntry("v1", t0, "x@bad.example", "alice@example.org")
	e.Reason = quarantine.Reason{Kind: quarantine.KindVirus, Virus: "EICAR-Test-File"}
	put(t, s, e, testBody("invoice"))

	_, err := s.Release(ctx, "alice@example.org", "v1", nil)
	require.ErrorIs(t, err, quarantine.ErrForbidden, "the recipient does not release a virus")
	assert.Empty(t, rec.deliveries())
	got, err := s.Get(ctx, "alice@example.org", "v1")
	require.NoError(t, err)
	assert.Equal(t, quarantine.Held, got.Recipients[0].Status)

	r, err := s.Release(ctx, "postmaster", "v1", nil)
	require.NoError(t, err, "the domain's administrator may")
	assert.Equal(t, []string{"alice@example.org"}, r.Changed)
	assert.Len(t, rec.deliveries(), 1)
}

func TestReleaseFailures(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	mode := "temporary"
	rec := &recorder{fail: func(env resilmail.Envelope) error {
		mu.Lock()
		defer mu.Unlock()
		switch mode {
		case "temporary":
			return &resilmail.DeliveryError{Code: 451, Message: "queue full"}
		case "permanent":
			return &resilmail.DeliveryError{Recipient: env.To[0].Addr, Code: 550, Message: "no", Permanent: true}
		}
		return nil
	}}
	s := openTestStore(t, t.TempDir(), &quarantine.Options{Deliverer: rec, ExpireEvery: time.Hour})

	put(t, s, testEntry("t1", t0, "x@bad.example", "alice@example.org"), testBody("t1"))
	r, err := s.Release(ctx, "admin", "t1", nil)
	require.Error(t, err, "a temporary failure is reported")
	assert.Equal(t, []string{"alice@example.org"}, r.Changed)
	assert.Equal(t, quarantine.Releasing, r.Entry.Recipients[0].Status)
	assert.Equal(t, 1, s.Stats().Releasing)

	// A second request does not start a second release.
	r, err = s.Release(ctx, "admin", "t1", nil)
	require.NoError(t, err)
	assert.Empty(t, r.Changed)

	// Run finishes it, with the same envelope id.
	mu.Lock()
	mode = "ok"
	mu.Unlock()
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- s.Run(runCtx) }()
	require.Eventually(t, func() bool { return len(rec.deliveries()) == 1 }, 10*time.Second, 5*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	assert.Equal(t, "t1.r1", rec.deliveries()[0].ID)
	e, err := s.Get(ctx, "admin", "t1")
	require.NoError(t, err)
	assert.Equal(t, quarantine.Released, e.Recipients[0].Status)
	assert.Equal(t, 0, s.Stats().Releasing)

	// A permanent refusal holds the recipient again; a later release gets
	// a new envelope id.
	mu.Lock()
	mode = "permanent"
	mu.Unlock()
	put(t, s, testEntry("p1", t0, "x@bad.example", "bob@example.org"), testBody("p1"))
	r, err = s.Release(ctx, "admin", "p1", nil)
	require.Error(t, err)
	assert.Equal(t, quarantine.Held, r.Entry.Recipients[0].Status)
	mu.Lock()
	mode = "ok"
	mu.Unlock()
	_, err = s.Release(ctx, "admin", "p1", nil)
	require.NoError(t, err)
	got := rec.deliveries()
	assert.Equal(t, "p1.r2", got[len(got)-1].ID)
}

func TestDelete(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openTestStore(t, dir, &quarantine.Options{Deliverer: &recorder{}})
	body := testBody("del")
	put(t, s, testEntry("d1", t0, "x@bad.example", "alice@example.org", "bob@example.org"), body)
	r, err := s.Delete(ctx, "alice@example.org", "d1", nil)
	require.NoError(t, err)
	assert.Equal(t, []string{"alice@example.org"}, r.Changed)
	assert.EqualValues(t, 1, s.Stats().Bodies, "bob still holds the body")
	r, err = s.Release(ctx, "alice@example.org", "d1", nil)
	require.NoError(t, err)
	assert.Empty(t, r.Changed, "a deleted recipient cannot be released")
	_, err = s.Delete(ctx, "bob@example.org", "d1", nil)
	require.NoError(t, err)
	assert.EqualValues(t, 0, s.Stats().Bodies)
	d := resilmail.DigestOf([]byte(body)).String()
	assert.NoFileExists(t, filepath.Join(dir, "bodies", d[:1], d))
	e, err := s.Get(ctx, "admin", "d1")
	require.NoError(t, err, "metadata stays until the entry expires")
	assert.Equal(t, quarantine.Deleted, e.Recipients[1].Status)
	assert.Equal(t, "bob@example.org", e.Recipients[1].By)
}

func TestQuotaExpiresOldestOfThatRecipient(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir(), &quarantine.Options{QuotaCount: 3})
	for i := range 5 {
		put(t, s, testEntry(idOf(i), t0.Add(time.Duration(i)*time.Minute), "x@bad.example", "alice@example.org"), testBody(idOf(i)))
	}
	put(t, s, testEntry("bob1", t0, "x@bad.example", "bob@example.org"), testBody("bob1"))
	es, err := s.Expire(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, es.OverQuota)
	held := collect(t, s, "admin", quarantine.Query{Rcpt: "alice@example.org", Status: quarantine.Held})
	require.Len(t, held, 3)
	assert.Equal(t, idOf(4), held[0].ID)
	assert.Equal(t, idOf(2), held[2].ID)
	expired := collect(t, s, "admin", quarantine.Query{Status: quarantine.Expired})
	assert.Len(t, expired, 2)
	_, err = s.Get(ctx, "admin", "bob1")
	require.NoError(t, err)
	es, err = s.Expire(ctx)
	require.NoError(t, err)
	assert.Zero(t, es.OverQuota, "nothing more to do")
}

func TestReopenKeepsEverything(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := quarantine.Open(dir, testAuth(), nil)
	require.NoError(t, err)
	put(t, s, testEntry("k1", t0, "x@bad.example", "alice@example.org"), testBody("k1"))
	require.NoError(t, s.Close())
	s = openTestStore(t, dir, nil)
	b, err := s.Body(ctx, "alice@example.org", "k1")
	require.NoError(t, err)
	assert.Equal(t, testBody("k1"), string(b))
	assert.EqualValues(t, 1, s.Stats().Entries)
}

func TestRunSweepsBodyFilesACrashLeft(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir, &quarantine.Options{ExpireEvery: time.Hour})
	put(t, s, testEntry("kept", t0, "x@bad.example", "alice@example.org"), testBody("kept"))

	// What a crash between writing bodies and committing the index leaves:
	// a renamed body nobody refers to and a temporary file.
	orphan := resilmail.DigestOf([]byte("never committed"))
	h := orphan.String()
	orphanPath := filepath.Join(dir, "bodies", h[:1], h)
	require.NoError(t, os.MkdirAll(filepath.Dir(orphanPath), 0o750))
	require.NoError(t, os.WriteFile(orphanPath, []byte("never committed"), 0o640))
	tmpPath := filepath.Join(dir, "bodies", h[:1], ".tmp-123")
	require.NoError(t, os.WriteFile(tmpPath, []byte("half"), 0o640))
	stranger := filepath.Join(dir, "bodies", h[:1], "README")
	require.NoError(t, os.WriteFile(stranger, []byte("not ours"), 0o640))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	require.Eventually(t, func() bool {
		_, e1 := os.Stat(orphanPath)
		_, e2 := os.Stat(tmpPath)
		return os.IsNotExist(e1) && os.IsNotExist(e2)
	}, 5*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	assert.FileExists(t, stranger, "a file that is not a body is left alone")
	body, err := s.Body(context.Background(), "admin", "kept")
	require.NoError(t, err, "a referenced body stays")
	assert.Equal(t, testBody("kept"), string(body))
}
