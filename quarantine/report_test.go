package quarantine

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/bbolt"

	"github.com/resilmail/resilmail"
)

const reportBase = "https://mail.example.org/quarantine"

// reportSink is the Deliverer of reports: it records every attempt and,
// like a queue, ignores an envelope id it already took.
type reportSink struct {
	mu       sync.Mutex
	attempts []accessDelivery
	taken    map[string]accessDelivery
	// fail, when set, answers instead of taking the report.
	fail func(env resilmail.Envelope) error
	// after, when set, runs after a report is taken.
	after func(env resilmail.Envelope)
}

func (k *reportSink) Deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	k.mu.Lock()
	k.attempts = append(k.attempts, accessDelivery{Env: env.Clone(), Body: b})
	fail, after := k.fail, k.after
	k.mu.Unlock()
	if fail != nil {
		if err := fail(env); err != nil {
			return err
		}
	}
	k.mu.Lock()
	if k.taken == nil {
		k.taken = make(map[string]accessDelivery)
	}
	if _, dup := k.taken[env.ID]; !dup {
		k.taken[env.ID] = accessDelivery{Env: env.Clone(), Body: b}
	}
	k.mu.Unlock()
	if after != nil {
		after(env)
	}
	return nil
}

func (k *reportSink) set(fail func(resilmail.Envelope) error, after func(resilmail.Envelope)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fail, k.after = fail, after
}

// takenFor returns the reports taken for rcpt, by envelope id.
func (k *reportSink) takenFor(rcpt string) map[string]accessDelivery {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]accessDelivery)
	for id, d := range k.taken {
		if d.Env.To[0].Addr == rcpt {
			out[id] = d
		}
	}
	return out
}

func (k *reportSink) attemptCount() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.attempts)
}

func (f *accessFixture) reporter(sink *reportSink, mod func(*ReportOptions)) *Reporter {
	f.t.Helper()
	o := &ReportOptions{
		LinkKey:   accessLinkKey,
		BaseURL:   reportBase,
		From:      "quarantine@example.org",
		Deliverer: sink,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if mod != nil {
		mod(o)
	}
	r, err := NewReporter(f.s, o)
	require.NoError(f.t, err)
	return r
}

func reportIDs(rep Report) []string {
	var ids []string
	for _, re := range rep.Entries {
		ids = append(ids, re.Entry.ID)
	}
	return ids
}

func reportsByRcpt(reps []Report) map[string]Report {
	out := make(map[string]Report)
	for _, r := range reps {
		out[r.Rcpt] = r
	}
	return out
}

func TestReportsArePure(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	f.put("u1", time.Hour, KindRecipient, "x@bad.example", []string{"nobody@example.org"}, accessMessage("x@bad.example", "nobody@example.org", "unknown", "x"))
	f.put("v1", 30*time.Minute, KindVirus, "x@bad.example", []string{"carol@example.com"}, accessMessage("x@bad.example", "carol@example.com", "invoice", "x"))
	sink := &reportSink{}
	r := f.reporter(sink, nil)
	ctx := context.Background()

	reps, err := r.Reports(ctx)
	require.NoError(t, err)
	again, err := r.Reports(ctx)
	require.NoError(t, err)
	assert.Equal(t, reps, again, "Reports changes nothing")
	assert.Zero(t, sink.attemptCount())

	by := reportsByRcpt(reps)
	require.Len(t, by, 3, "alice, bob and carol; not the unknown recipient")
	assert.Equal(t, []string{"e5", "e4", "e1"}, reportIDs(by["alice@example.org"]))
	assert.Equal(t, []string{"e4", "e2"}, reportIDs(by["bob@example.org"]))
	assert.Equal(t, []string{"v1", "e3"}, reportIDs(by["carol@example.com"]))

	for rcpt, rep := range by {
		assert.Equal(t, uint64(1), rep.Seq)
		assert.Regexp(t, `^qreport\.[0-9a-f]{24}\.1$`, rep.ID)
		assert.NotContains(t, rep.ID, rcpt)
		assert.Equal(t, reportBase+"/", rep.ListURL)
		for _, re := range rep.Entries {
			assert.Equal(t, []string{rcpt}, rcptAddrs(re.Entry), "the entry shows only %s", rcpt)
			assert.Equal(t, reportBase+"/entry/"+re.Entry.ID, re.PreviewURL)
			if !re.Entry.HasBody() {
				assert.Empty(t, re.ReleaseURL, "nothing to release in %s", re.Entry.ID)
				continue
			}
			if re.Entry.Reason.Kind == KindVirus {
				assert.Empty(t, re.ReleaseURL, "a virus is listed but never self-released")
				continue
			}
			require.True(t, strings.HasPrefix(re.ReleaseURL, reportBase+"/release/"), re.ReleaseURL)
			tok, err := ParseReleaseToken(accessLinkKey, strings.TrimPrefix(re.ReleaseURL, reportBase+"/release/"), f.clock())
			require.NoError(t, err)
			assert.Equal(t, re.Entry.ID, tok.ID)
			assert.Equal(t, rcpt, tok.Rcpt)
			assert.WithinDuration(t, f.clock().Add(7*24*time.Hour), tok.Expires, 0)
			assert.WithinDuration(t, tok.Expires, re.Expires, 0)
		}
	}
}

// readReport parses a report message into its header and its two parts.
func readReport(t *testing.T, body []byte) (mail.Header, string, string) {
	t.Helper()
	ent, err := message.Read(bytes.NewReader(body))
	require.NoError(t, err)
	ct, _, err := ent.Header.ContentType()
	require.NoError(t, err)
	require.Equal(t, "multipart/alternative", ct)
	mr := ent.MultipartReader()
	require.NotNil(t, mr)
	parts := make(map[string]string)
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		pt, params, err := p.Header.ContentType()
		require.NoError(t, err)
		assert.Equal(t, "utf-8", params["charset"])
		b, err := io.ReadAll(p.Body)
		require.NoError(t, err)
		parts[pt] = string(b)
	}
	require.Len(t, parts, 2)
	return mail.Header{Header: ent.Header}, parts["text/plain"], parts["text/html"]
}

func TestReportSend(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	sink := &reportSink{}
	r := f.reporter(sink, nil)
	ctx := context.Background()

	n, err := r.Send(ctx)
	require.NoError(t, err)
	assert.Equal(t, 3, n)
	alice := sink.takenFor("alice@example.org")
	require.Len(t, alice, 1)
	var d accessDelivery
	for _, d = range alice {
	}
	assert.Equal(t, "", d.Env.From, "null reverse-path")
	assert.Equal(t, []string{"alice@example.org"}, d.Env.Recipients())
	assert.Equal(t, int64(len(d.Body)), d.Env.Size)
	require.NoError(t, d.Env.Validate())

	h, text, html := readReport(t, d.Body)
	from, err := h.AddressList("From")
	require.NoError(t, err)
	assert.Equal(t, "quarantine@example.org", from[0].Address)
	to, err := h.AddressList("To")
	require.NoError(t, err)
	assert.Equal(t, "alice@example.org", to[0].Address)
	subject, err := h.Subject()
	require.NoError(t, err)
	assert.Equal(t, "Quarantine: 3 new messages held for alice@example.org", subject)
	date, err := h.Date()
	require.NoError(t, err)
	assert.True(t, date.Equal(f.clock()))
	msgID, err := h.MessageID()
	require.NoError(t, err)
	assert.Equal(t, d.Env.ID+"@mail.example.org", msgID)
	assert.Equal(t, "auto-generated", h.Get("Auto-Submitted"))

	for name, part := range map[string]string{"text": text, "html": html} {
		urls := regexp.MustCompile(`https?://[^\s"<>]+`).FindAllString(part, -1)
		assert.NotEmpty(t, urls, name)
		for _, u := range urls {
			assert.True(t, strings.HasPrefix(u, reportBase+"/"), "%s: link %s outside BaseURL", name, u)
		}
		assert.Contains(t, part, "Newsletter", name)
		assert.Contains(t, part, "spammer@bad.example", name)
	}
	assert.Contains(t, text, "Subject: Cheap <script>alert(1)</script> pills")
	assert.Contains(t, html, "Cheap &lt;script&gt;alert(1)&lt;/script&gt; pills")
	assert.NotContains(t, html, "<script")
	assert.NotContains(t, html, "<img")
	assert.Equal(t, 2, strings.Count(text, "Release: "), "e5 has no body to release")

	// Nothing new: nothing sent.
	n, err = r.Send(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)
	assert.Equal(t, 3, sink.attemptCount())

	// A new entry for bob: only it, in bob's second report.
	f.advance(time.Hour)
	f.put("n1", time.Minute, KindSpam, "x@bad.example", []string{"bob@example.org"}, accessMessage("x@bad.example", "bob@example.org", "fresh", "x"))
	reps, err := r.Reports(ctx)
	require.NoError(t, err)
	require.Len(t, reps, 1)
	assert.Equal(t, "bob@example.org", reps[0].Rcpt)
	assert.Equal(t, []string{"n1"}, reportIDs(reps[0]))
	assert.Equal(t, uint64(2), reps[0].Seq)
	n, err = r.Send(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Len(t, sink.takenFor("bob@example.org"), 2)

	// The release link of a report works once, for its recipient only.
	_, text, _ = readReport(t, sink.takenFor("bob@example.org")[reps[0].ID].Body)
	link := regexp.MustCompile(`Release: (\S+)`).FindStringSubmatch(text)
	require.Len(t, link, 2)
	h2 := http.StripPrefix("/quarantine", f.handler(func(o *HandlerOptions) { o.BaseURL = reportBase }))
	path := strings.TrimPrefix(link[1], "https://mail.example.org")
	w := request(h2, "GET", path, "", "")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	assert.Contains(t, w.Body.String(), "fresh")
	assert.Empty(t, f.deliveries())
	w = request(h2, "POST", path, "", "")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	require.Len(t, f.deliveries(), 1)
	assert.Equal(t, []string{"bob@example.org"}, f.deliveries()[0].Env.Recipients())
}

func TestReportSkipsWhatIsNotHeld(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	ctx := context.Background()
	_, err := f.s.Release(ctx, "alice@example.org", "e4", nil)
	require.NoError(t, err)
	_, err = f.s.Delete(ctx, "carol@example.com", "e3", nil)
	require.NoError(t, err)
	reps, err := f.reporter(&reportSink{}, nil).Reports(ctx)
	require.NoError(t, err)
	by := reportsByRcpt(reps)
	assert.Equal(t, []string{"e5", "e1"}, reportIDs(by["alice@example.org"]))
	assert.Equal(t, []string{"e4", "e2"}, reportIDs(by["bob@example.org"]))
	assert.NotContains(t, by, "carol@example.com")
}

func TestReportCrashAfterDelivery(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	sink := &reportSink{}
	ctx := context.Background()

	// The process dies right after the first report is taken, before it is
	// recorded as delivered.
	var once sync.Once
	sink.set(nil, func(resilmail.Envelope) { once.Do(func() { _ = f.s.Close() }) })
	n, err := f.reporter(sink, nil).Send(ctx)
	require.Error(t, err)
	assert.Equal(t, 1, n)
	require.Len(t, sink.takenFor("alice@example.org"), 1)
	first := sink.attempts[0]

	f.open()
	sink.set(nil, nil)
	r := f.reporter(sink, nil)
	reps, err := r.Reports(ctx)
	require.NoError(t, err)
	require.Len(t, reps, 3)
	assert.Equal(t, first.Env.ID, reportsByRcpt(reps)["alice@example.org"].ID, "the pending report keeps its envelope id")
	n, err = r.Send(ctx)
	require.NoError(t, err)
	assert.Equal(t, 3, n)

	// Alice's report was handed over twice under one id, so the queue
	// delivered it once; it listed the same entries both times.
	var again []accessDelivery
	for _, a := range sink.attempts {
		if a.Env.ID == first.Env.ID {
			again = append(again, a)
		}
	}
	require.Len(t, again, 2)
	_, t1, _ := readReport(t, again[0].Body)
	_, t2, _ := readReport(t, again[1].Body)
	entryLines := regexp.MustCompile(`(?m)^\* .*$`)
	assert.Equal(t, entryLines.FindAllString(t1, -1), entryLines.FindAllString(t2, -1))
	assert.Len(t, sink.takenFor("alice@example.org"), 1)
	assert.Len(t, sink.takenFor("bob@example.org"), 1)
	assert.Len(t, sink.takenFor("carol@example.com"), 1)

	n, err = r.Send(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)
}

func TestReportFailures(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	sink := &reportSink{}
	r := f.reporter(sink, nil)
	ctx := context.Background()

	sink.set(func(env resilmail.Envelope) error {
		switch env.To[0].Addr {
		case "bob@example.org":
			return errors.New("queue full")
		case "carol@example.com":
			return &resilmail.DeliveryError{Recipient: "carol@example.com", Code: 550, Message: "no such user", Permanent: true}
		}
		return nil
	}, nil)
	n, err := r.Send(ctx)
	require.Error(t, err)
	assert.Equal(t, 1, n)
	var bobID string
	for _, a := range sink.attempts {
		if a.Env.To[0].Addr == "bob@example.org" {
			bobID = a.Env.ID
		}
	}
	require.NotEmpty(t, bobID)

	// A new entry for bob while his report is pending waits for the next.
	f.advance(time.Hour)
	f.put("n1", time.Minute, KindSpam, "x@bad.example", []string{"bob@example.org"}, accessMessage("x@bad.example", "bob@example.org", "fresh", "x"))
	sink.set(nil, nil)
	reps, err := r.Reports(ctx)
	require.NoError(t, err)
	require.Len(t, reps, 1, "carol's refused report is not retried")
	assert.Equal(t, bobID, reps[0].ID)
	assert.Equal(t, []string{"e4", "e2"}, reportIDs(reps[0]))
	n, err = r.Send(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, n)

	reps, err = r.Reports(ctx)
	require.NoError(t, err)
	require.Len(t, reps, 1)
	assert.Equal(t, []string{"n1"}, reportIDs(reps[0]))
	assert.Equal(t, uint64(2), reps[0].Seq)
}

func TestReportMaxEntriesKindsAndLookback(t *testing.T) {
	f := newAccessFixture(t)
	ctx := context.Background()
	msg := accessMessage("x@bad.example", "dave@example.org", "s", "x")
	for _, id := range []string{"d1", "d2", "d3"} {
		f.put(id, time.Hour, KindSpam, "x@bad.example", []string{"dave@example.org"}, msg)
	}
	f.put("u1", time.Hour, KindRecipient, "x@bad.example", []string{"nobody@example.org"}, msg)
	f.put("old", 13*24*time.Hour+12*time.Hour, KindSpam, "x@bad.example", []string{"erin@example.org"}, msg)
	sink := &reportSink{}
	r := f.reporter(sink, func(o *ReportOptions) { o.MaxEntries = 2; o.Kinds = []Kind{KindSpam, KindRecipient} })

	reps, err := r.Reports(ctx)
	require.NoError(t, err)
	by := reportsByRcpt(reps)
	require.Len(t, by, 3)
	assert.Len(t, by["dave@example.org"].Entries, 2)
	assert.Equal(t, 1, by["dave@example.org"].More)
	assert.Contains(t, by, "nobody@example.org", "Kinds includes unknown recipients")
	old := by["erin@example.org"].Entries[0]
	assert.WithinDuration(t, old.Entry.Time.Add(14*24*time.Hour), old.Expires, 0, "a link never outlives its entry")

	n, err := r.Send(ctx)
	require.NoError(t, err)
	assert.Equal(t, 3, n)
	var dave accessDelivery
	for _, dave = range sink.takenFor("dave@example.org") {
	}
	h, text, _ := readReport(t, dave.Body)
	subject, _ := h.Subject()
	assert.Equal(t, "Quarantine: 3 new messages held for dave@example.org", subject)
	assert.Contains(t, text, "1 more not listed here.")

	n, err = r.Send(ctx)
	require.NoError(t, err)
	assert.Zero(t, n, "the entry not listed is counted as reported")

	// A day later: an entry that arrives late (caught before the last run,
	// shipped from an edge node now) is reported; one older than the
	// lookback is not.
	f.advance(24 * time.Hour)
	f.put("late", 25*time.Hour, KindSpam, "x@bad.example", []string{"dave@example.org"}, msg)
	f.put("too-late", 5*24*time.Hour, KindSpam, "x@bad.example", []string{"dave@example.org"}, msg)
	reps, err = r.Reports(ctx)
	require.NoError(t, err)
	require.Len(t, reps, 1)
	assert.Equal(t, []string{"late"}, reportIDs(reps[0]))
}

func TestReportConcurrentSends(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	sink := &reportSink{}
	r := f.reporter(sink, nil)
	var wg sync.WaitGroup
	total := make([]int, 4)
	for i := range total {
		wg.Go(func() {
			n, err := r.Send(context.Background())
			assert.NoError(t, err)
			total[i] = n
		})
	}
	wg.Wait()
	sum := 0
	for _, n := range total {
		sum += n
	}
	assert.Equal(t, 3, sum)
	assert.Equal(t, 3, sink.attemptCount())
}

func TestNewReporterOptions(t *testing.T) {
	f := newAccessFixture(t)
	good := func() *ReportOptions {
		return &ReportOptions{LinkKey: accessLinkKey, BaseURL: reportBase, From: "q@example.org"}
	}
	tests := []struct {
		name string
		mod  func(*ReportOptions)
	}{
		{"short key", func(o *ReportOptions) { o.LinkKey = o.LinkKey[:16] }},
		{"no BaseURL", func(o *ReportOptions) { o.BaseURL = "" }},
		{"relative BaseURL", func(o *ReportOptions) { o.BaseURL = "/q" }},
		{"BaseURL with credentials", func(o *ReportOptions) { o.BaseURL = "https://u:p@example.org/" }},
		{"no From", func(o *ReportOptions) { o.From = "" }},
		{"bad From", func(o *ReportOptions) { o.From = "quarantine" }},
		{"negative TTL", func(o *ReportOptions) { o.LinkTTL = -time.Hour }},
		{"negative MaxEntries", func(o *ReportOptions) { o.MaxEntries = -1 }},
		{"negative Lookback", func(o *ReportOptions) { o.Lookback = -time.Hour }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good()
			tt.mod(o)
			_, err := NewReporter(f.s, o)
			assert.ErrorIs(t, err, ErrInvalid)
		})
	}
	r, err := NewReporter(f.s, good())
	require.NoError(t, err)
	_, err = r.Send(context.Background())
	assert.ErrorIs(t, err, ErrInvalid, "Send needs a Deliverer")
	_, err = NewReporter(nil, good())
	assert.Error(t, err)
}

func TestReportStateVersion(t *testing.T) {
	f := newAccessFixture(t)
	require.NoError(t, f.s.Close())
	db, err := bbolt.Open(filepath.Join(f.dir, "index.db"), 0o640, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(reportsBucket)).Put([]byte("version"), []byte("99"))
	}))
	require.NoError(t, db.Close())
	_, err = Open(f.dir, accessAuthorizer(), nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "report state version")
}
