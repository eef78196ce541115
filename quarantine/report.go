package quarantine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	texttemplate "text/template"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"go.etcd.io/bbolt"

	"github.com/resilmail/resilmail"
)

// The report generator keeps its state in the index, in its own bucket:
//
//	reports         "version" → "1"
//	                "last_run" → Unix nanoseconds (8 bytes, big-endian)
//	reports/rcpt    recipient → reportState (JSON)
//	reports/sent    recipient NUL entry id → entry time (Unix ns, 8 bytes)
//
// A report is first recorded as pending, with the entries it lists marked
// sent, in one transaction; then delivered under an envelope id made of the
// recipient and the report's sequence number; then recorded as delivered.
// A crash in between delivers the same pending report again under the same
// envelope id, which a queue ignores if it already has it.
const (
	reportsBucket  = "reports"
	reportsVersion = "1"
	reportsRcpt    = "rcpt"
	reportsSent    = "sent"
)

// initReports creates the report generator's bucket; Open calls it.
func (s *Store) initReports(tx *bbolt.Tx) error {
	b, err := tx.CreateBucketIfNotExists([]byte(reportsBucket))
	if err != nil {
		return fmt.Errorf("quarantine: create bucket %s: %w", reportsBucket, err)
	}
	switch v := b.Get([]byte("version")); {
	case v == nil:
		if err := b.Put([]byte("version"), []byte(reportsVersion)); err != nil {
			return err
		}
	case string(v) != reportsVersion:
		return fmt.Errorf("quarantine: report state version %q, this program knows %q", v, reportsVersion)
	}
	for _, name := range []string{reportsRcpt, reportsSent} {
		if _, err := b.CreateBucketIfNotExists([]byte(name)); err != nil {
			return fmt.Errorf("quarantine: create bucket %s/%s: %w", reportsBucket, name, err)
		}
	}
	return nil
}

type reportState struct {
	// Seq is the sequence number of the last report delivered.
	Seq     uint64         `json:"seq"`
	Pending *pendingReport `json:"pending,omitempty"`
}

type pendingReport struct {
	Seq  uint64   `json:"seq"`
	IDs  []string `json:"ids"`
	More int      `json:"more,omitempty"`
}

// ReportOptions configure a Reporter. LinkKey, BaseURL and From are
// required; the zero value of the others gives the defaults documented on
// each field.
type ReportOptions struct {
	// LinkKey signs the release links (see [ReleaseToken]); at least
	// MinLinkKeyLen bytes. The handler that serves the links
	// (HandlerOptions.LinkKey) needs the same key.
	LinkKey []byte
	// BaseURL is where the handler of [NewHandler] is served, e.g.
	// "https://mail.example.org/quarantine". Every link in a report
	// points under it.
	BaseURL string
	// LinkTTL is how long a release link works. It never outlives the
	// entry (Options.MaxAge). Zero means 7 days.
	LinkTTL time.Duration
	// From is the address reports come from (the From field; the envelope
	// sender is the null reverse-path, as for other notifications).
	From string
	// Deliverer takes the reports, for example an outbound queue (which
	// treats a repeated envelope id as a no-op). Send needs it; Reports
	// does not.
	Deliverer resilmail.Deliverer
	// Kinds lists the kinds of entries reported. Nil means every kind but
	// KindRecipient: mail for unknown recipients has no mailbox to read a
	// report in.
	Kinds []Kind
	// MaxEntries is the most entries listed in one report; the others are
	// counted, and reported as seen. Zero means 100.
	MaxEntries int
	// Lookback is how late an entry may reach the store after the time it
	// was caught (shipped from an edge node, say) and still be reported.
	// Zero means 3 days.
	Lookback time.Duration
	// Logger receives a line per report and per error; nil means the
	// store's logger.
	Logger *slog.Logger
	// Now returns the current time; nil means the store's clock.
	Now func() time.Time
}

// A Reporter makes the reports (digests) that tell each recipient which of
// their messages were newly held, with a signed release link and a preview
// link for each. A recipient's report lists each entry once: a durable mark
// in the store records what each recipient was told. It is safe for
// concurrent use; Send calls are serialised.
type Reporter struct {
	s     *Store
	opts  ReportOptions
	base  *url.URL
	host  string
	log   *slog.Logger
	text  *texttemplate.Template
	html  *htmltemplate.Template
	kinds []Kind

	mu sync.Mutex // serialises Send
}

// NewReporter returns a Reporter for s. It checks opts and does no I/O.
func NewReporter(s *Store, opts *ReportOptions) (*Reporter, error) {
	if s == nil {
		return nil, errors.New("quarantine: NewReporter: nil Store")
	}
	var o ReportOptions
	if opts != nil {
		o = *opts
	}
	if len(o.LinkKey) < MinLinkKeyLen {
		return nil, fmt.Errorf("%w: LinkKey of %d bytes, need %d", ErrInvalid, len(o.LinkKey), MinLinkKeyLen)
	}
	o.LinkKey = slices.Clone(o.LinkKey)
	base, err := parseBaseURL(o.BaseURL)
	if err != nil {
		return nil, err
	}
	if base == nil {
		return nil, fmt.Errorf("%w: ReportOptions.BaseURL is required", ErrInvalid)
	}
	if err := resilmail.CheckAddress(o.From); err != nil {
		return nil, fmt.Errorf("%w: ReportOptions.From: %v", ErrInvalid, err)
	}
	switch {
	case o.LinkTTL == 0:
		o.LinkTTL = 7 * 24 * time.Hour
	case o.LinkTTL < 0:
		return nil, fmt.Errorf("%w: negative LinkTTL", ErrInvalid)
	}
	switch {
	case o.MaxEntries == 0:
		o.MaxEntries = 100
	case o.MaxEntries < 0:
		return nil, fmt.Errorf("%w: negative MaxEntries", ErrInvalid)
	}
	switch {
	case o.Lookback == 0:
		o.Lookback = 3 * 24 * time.Hour
	case o.Lookback < 0:
		return nil, fmt.Errorf("%w: negative Lookback", ErrInvalid)
	}
	if o.Now == nil {
		o.Now = s.now
	}
	if o.Logger == nil {
		o.Logger = s.log
	}
	kinds := slices.Clone(o.Kinds)
	r := &Reporter{s: s, opts: o, base: base, host: base.Hostname(), log: o.Logger, kinds: kinds}
	funcs := map[string]any{"time": formatTime, "sender": senderText, "reason": reasonText, "short": shortText}
	r.text = texttemplate.Must(texttemplate.New("text").Funcs(funcs).Parse(reportText))
	r.html = htmltemplate.Must(htmltemplate.New("html").Funcs(funcs).Parse(reportHTML))
	return r, nil
}

// A Report is what one recipient is told: the entries newly held for them.
type Report struct {
	// Rcpt is the recipient the report is for and delivered to.
	Rcpt string
	// ID is the envelope id the report is delivered under; it stays the
	// same until the report is delivered, so that a repeat is a no-op.
	ID string
	// Seq numbers the reports of Rcpt, from 1.
	Seq uint64
	// Entries lists the entries, newest first, each with only Rcpt among
	// its recipients.
	Entries []ReportEntry
	// More counts newly held entries not listed (over MaxEntries).
	More int
	// ListURL is the page that lists all of the recipient's entries.
	ListURL string

	ids     []string // every entry the report covers, listed or not
	times   []time.Time
	pending bool // recorded as pending by an earlier Send
}

// A ReportEntry is one entry of a report with its links.
type ReportEntry struct {
	Entry Entry
	// ReleaseURL releases the entry to the report's recipient, once
	// confirmed; empty when it cannot be released (no body).
	ReleaseURL string
	// Expires is when ReleaseURL stops working.
	Expires time.Time
	// PreviewURL shows the entry to a signed-in user.
	PreviewURL string
}

// Reports returns the reports that Send would deliver now, without
// delivering them or changing anything: for each recipient, a report still
// pending from an earlier Send, or else one listing the held entries not
// yet reported to it. Recipients with nothing new get none.
func (r *Reporter) Reports(ctx context.Context) ([]Report, error) {
	reps, _, err := r.plan(ctx)
	return reps, err
}

// Send delivers the reports of [Reporter.Reports] and returns how many
// were delivered. Each is recorded as pending before it is handed to the
// Deliverer and as delivered after, so each entry is reported to each
// recipient once; a report that fails temporarily stays pending and is
// sent again, under the same envelope id, by the next Send. A report the
// Deliverer refuses for good is dropped (and logged). Send errors join the
// errors of every report that failed.
func (r *Reporter) Send(ctx context.Context) (int, error) {
	if r.opts.Deliverer == nil {
		return 0, fmt.Errorf("%w: ReportOptions.Deliverer is required to send", ErrInvalid)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	reps, run, err := r.plan(ctx)
	if err != nil {
		return 0, err
	}
	var (
		errs []error
		sent int
	)
	for i := range reps {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		ok, err := r.sendOne(ctx, &reps[i])
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			sent++
		}
	}
	if ctx.Err() == nil {
		// Every new report is recorded as pending (or failed to be, and
		// its entries will be found again): the scan may move on.
		if err := r.advance(run); err != nil {
			errs = append(errs, err)
		}
	}
	return sent, errors.Join(errs...)
}

// sendOne records rep as pending (unless it already is), delivers it and
// records the outcome. It reports whether rep was delivered.
func (r *Reporter) sendOne(ctx context.Context, rep *Report) (bool, error) {
	rcpt := strings.ToLower(rep.Rcpt)
	if !rep.pending {
		recorded, err := r.recordPending(rep)
		if err != nil {
			return false, fmt.Errorf("quarantine: report %s: %w", rep.ID, err)
		}
		if !recorded {
			return false, nil // another Reporter on this store got there first
		}
	}
	if len(rep.Entries) == 0 && rep.More == 0 {
		// A pending report whose entries have all gone: nothing to say.
		return false, r.finish(rcpt, rep.Seq)
	}
	msg, err := r.render(rep)
	if err != nil {
		return false, fmt.Errorf("quarantine: report %s: %w", rep.ID, err)
	}
	env := resilmail.Envelope{
		ID:       rep.ID,
		To:       []resilmail.Recipient{{Addr: rep.Rcpt}},
		Size:     int64(len(msg)),
		SMTPUTF8: !isASCII(rep.Rcpt),
	}
	derr := r.opts.Deliverer.Deliver(ctx, env, bytes.NewReader(msg))
	if de := resilmail.Outcomes([]string{rep.Rcpt}, derr)[rep.Rcpt]; de != nil {
		if !de.Permanent {
			r.log.Warn("quarantine: report not delivered, will retry", "rcpt", rep.Rcpt, "msg_id", rep.ID, "err", derr)
			return false, fmt.Errorf("quarantine: report %s: %w", rep.ID, derr)
		}
		r.log.Warn("quarantine: report refused, dropped", "rcpt", rep.Rcpt, "msg_id", rep.ID, "err", derr)
		if err := r.finish(rcpt, rep.Seq); err != nil {
			return false, err
		}
		return false, fmt.Errorf("quarantine: report %s: %w", rep.ID, derr)
	}
	if err := r.finish(rcpt, rep.Seq); err != nil {
		// Delivered; the next Send delivers it again under the same id.
		return true, err
	}
	r.log.Info("quarantine: report sent", "rcpt", rep.Rcpt, "msg_id", rep.ID, "entries", len(rep.Entries), "more", rep.More)
	return true, nil
}

// plan works out the reports to send and the time of this run.
func (r *Reporter) plan(ctx context.Context) ([]Report, time.Time, error) {
	now := r.opts.Now()
	if r.s.closed.Load() {
		return nil, now, ErrClosed
	}
	var (
		lastRun time.Time
		states  = make(map[string]reportState)
	)
	err := r.s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(reportsBucket))
		if v := b.Get([]byte("last_run")); len(v) == 8 {
			lastRun = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
		}
		return b.Bucket([]byte(reportsRcpt)).ForEach(func(k, v []byte) error {
			var st reportState
			if err := json.Unmarshal(v, &st); err != nil {
				return fmt.Errorf("quarantine: corrupt report state of %s: %w", k, err)
			}
			states[string(k)] = st
			return nil
		})
	})
	if err != nil {
		return nil, now, err
	}

	var reps []Report
	// Reports left pending by an earlier Send come first, as they were.
	for rcpt, st := range states {
		if st.Pending == nil {
			continue
		}
		rep := Report{Rcpt: rcpt, Seq: st.Pending.Seq, ID: r.envelopeID(rcpt, st.Pending.Seq), More: st.Pending.More, pending: true}
		sc := Scope{Addrs: []string{rcpt}}.normal()
		for _, id := range st.Pending.IDs {
			e, err := r.s.get(sc, id)
			if err != nil {
				continue // expired since
			}
			rep.Rcpt = e.Recipients[0].Addr
			rep.Entries = append(rep.Entries, r.reportEntry(e, now))
		}
		reps = append(reps, rep)
	}

	// New entries, grouped by recipient.
	var since time.Time
	if !lastRun.IsZero() {
		since = lastRun.Add(-r.opts.Lookback)
	}
	byRcpt := make(map[string]*Report)
	var order []string
	q := Query{Since: since, Status: Held, Limit: 1000}
	for {
		// One page, then one transaction to look its entries up in the
		// marks: never a transaction inside another (bbolt can deadlock).
		page, err := r.s.list(ctx, Scope{All: true}, q)
		if err != nil {
			return nil, now, err
		}
		err = r.s.db.View(func(tx *bbolt.Tx) error {
			sent := tx.Bucket([]byte(reportsBucket)).Bucket([]byte(reportsSent))
			for _, e := range page.Entries {
				if !r.reported(e.Reason.Kind) {
					continue
				}
				for _, rs := range e.Recipients {
					rcpt := strings.ToLower(rs.Addr)
					if rs.Status != Held || states[rcpt].Pending != nil || sent.Get(sentKey(rcpt, e.ID)) != nil {
						continue
					}
					rep := byRcpt[rcpt]
					if rep == nil {
						seq := states[rcpt].Seq + 1
						rep = &Report{Rcpt: rs.Addr, Seq: seq, ID: r.envelopeID(rcpt, seq)}
						byRcpt[rcpt] = rep
						order = append(order, rcpt)
					}
					if n := len(rep.ids); n > 0 && rep.ids[n-1] == e.ID {
						continue // the recipient is listed twice in the entry
					}
					rep.ids = append(rep.ids, e.ID)
					rep.times = append(rep.times, e.Time)
					if len(rep.Entries) < r.opts.MaxEntries {
						v, _ := redact(e, Scope{Addrs: []string{rcpt}})
						rep.Entries = append(rep.Entries, r.reportEntry(v, now))
					} else {
						rep.More++
					}
				}
			}
			return nil
		})
		if err != nil {
			return nil, now, err
		}
		if page.Next == "" {
			break
		}
		q.Cursor = page.Next
	}
	for _, rcpt := range order {
		reps = append(reps, *byRcpt[rcpt])
	}
	for i := range reps {
		reps[i].ListURL = r.link("/")
	}
	slices.SortStableFunc(reps, func(a, b Report) int { return strings.Compare(a.Rcpt, b.Rcpt) })
	return reps, now, nil
}

func (r *Reporter) reported(k Kind) bool {
	if r.kinds == nil {
		return k != KindRecipient
	}
	return slices.Contains(r.kinds, k)
}

// reportEntry adds the links to e, which has only the report's recipient.
func (r *Reporter) reportEntry(e Entry, now time.Time) ReportEntry {
	re := ReportEntry{Entry: e, PreviewURL: r.link("/entry/" + e.ID)}
	if !e.HasBody() || len(e.Recipients) != 1 || !selfReleasable(e.Reason.Kind) {
		return re
	}
	exp := now.Add(r.opts.LinkTTL)
	if end := e.Time.Add(r.s.opts.MaxAge); end.Before(exp) {
		exp = end
	}
	if !exp.After(now) {
		return re
	}
	tok, err := ReleaseToken{ID: e.ID, Rcpt: e.Recipients[0].Addr, Expires: exp}.Sign(r.opts.LinkKey)
	if err != nil {
		r.log.Warn("quarantine: cannot sign release link", "entry", e.ID, "err", err)
		return re
	}
	re.ReleaseURL, re.Expires = r.link("/release/"+tok), exp.Truncate(time.Second)
	return re
}

func (r *Reporter) link(path string) string {
	u := *r.base
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawPath = ""
	return u.String()
}

// envelopeID is the envelope id of report seq of rcpt: stable, and
// without the address itself (envelope ids are logged everywhere).
func (r *Reporter) envelopeID(rcpt string, seq uint64) string {
	h := sha256.Sum256([]byte(strings.ToLower(rcpt)))
	return fmt.Sprintf("qreport.%s.%d", hex.EncodeToString(h[:12]), seq)
}

func sentKey(rcpt, id string) []byte {
	return []byte(rcpt + "\x00" + id)
}

// recordPending records rep as pending and its entries as reported. It
// returns false when the recipient's state moved since rep was planned.
func (r *Reporter) recordPending(rep *Report) (bool, error) {
	rcpt := strings.ToLower(rep.Rcpt)
	recorded := false
	err := r.s.db.Update(func(tx *bbolt.Tx) error {
		recorded = false
		b := tx.Bucket([]byte(reportsBucket))
		st, err := loadReportState(b, rcpt)
		if err != nil {
			return err
		}
		if st.Pending != nil || st.Seq+1 != rep.Seq {
			return nil
		}
		var listed []string
		for _, re := range rep.Entries {
			listed = append(listed, re.Entry.ID)
		}
		st.Pending = &pendingReport{Seq: rep.Seq, IDs: listed, More: rep.More}
		sent := b.Bucket([]byte(reportsSent))
		for i, id := range rep.ids {
			if err := sent.Put(sentKey(rcpt, id), binary.BigEndian.AppendUint64(nil, uint64(rep.times[i].UnixNano()))); err != nil {
				return err
			}
		}
		recorded = true
		return saveReportState(b, rcpt, st)
	})
	return recorded, err
}

// finish records report seq of rcpt as done.
func (r *Reporter) finish(rcpt string, seq uint64) error {
	err := r.s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(reportsBucket))
		st, err := loadReportState(b, rcpt)
		if err != nil {
			return err
		}
		if st.Pending == nil || st.Pending.Seq != seq {
			return nil
		}
		st.Seq, st.Pending = seq, nil
		return saveReportState(b, rcpt, st)
	})
	if err != nil {
		return fmt.Errorf("quarantine: record report %d of %s: %w", seq, rcpt, err)
	}
	return nil
}

// advance records the time of a run, and forgets the reported entries too
// old for any later run to look at.
func (r *Reporter) advance(run time.Time) error {
	err := r.s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(reportsBucket))
		if v := b.Get([]byte("last_run")); len(v) == 8 {
			if last := time.Unix(0, int64(binary.BigEndian.Uint64(v))); last.After(run) {
				run = last // the clock went back: never look further back than before
			}
		}
		if err := b.Put([]byte("last_run"), binary.BigEndian.AppendUint64(nil, uint64(run.UnixNano()))); err != nil {
			return err
		}
		horizon := run.Add(-r.opts.Lookback).UnixNano()
		sent := b.Bucket([]byte(reportsSent))
		var old [][]byte
		if err := sent.ForEach(func(k, v []byte) error {
			if len(v) == 8 && int64(binary.BigEndian.Uint64(v)) < horizon {
				old = append(old, slices.Clone(k))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range old {
			if err := sent.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("quarantine: record report run: %w", err)
	}
	return nil
}

func loadReportState(b *bbolt.Bucket, rcpt string) (reportState, error) {
	var st reportState
	if v := b.Bucket([]byte(reportsRcpt)).Get([]byte(rcpt)); v != nil {
		if err := json.Unmarshal(v, &st); err != nil {
			return st, fmt.Errorf("quarantine: corrupt report state of %s: %w", rcpt, err)
		}
	}
	return st, nil
}

func saveReportState(b *bbolt.Bucket, rcpt string, st reportState) error {
	v, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return b.Bucket([]byte(reportsRcpt)).Put([]byte(rcpt), v)
}

// Message renders rep as an RFC 5322 message: multipart/alternative with a
// plain text and an HTML part, links only to BaseURL, no images.
func (r *Reporter) Message(rep *Report) ([]byte, error) {
	return r.render(rep)
}

func (r *Reporter) render(rep *Report) ([]byte, error) {
	var h mail.Header
	h.SetAddressList("From", []*mail.Address{{Name: "Quarantine", Address: r.opts.From}})
	h.SetAddressList("To", []*mail.Address{{Address: rep.Rcpt}})
	h.SetDate(r.opts.Now())
	h.SetSubject(reportSubject(rep))
	h.SetMessageID(rep.ID + "@" + r.host)
	h.Set("Auto-Submitted", "auto-generated")
	h.SetContentType("multipart/alternative", nil)

	var textBuf, htmlBuf bytes.Buffer
	if err := r.text.Execute(&textBuf, rep); err != nil {
		return nil, err
	}
	if err := r.html.Execute(&htmlBuf, rep); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	w, err := message.CreateWriter(&out, h.Header)
	if err != nil {
		return nil, err
	}
	for _, p := range []struct {
		ctype string
		body  []byte
	}{{"text/plain", textBuf.Bytes()}, {"text/html", htmlBuf.Bytes()}} {
		var ph message.Header
		ph.SetContentType(p.ctype, map[string]string{"charset": "utf-8"})
		ph.Set("Content-Transfer-Encoding", "quoted-printable")
		pw, err := w.CreatePart(ph)
		if err != nil {
			return nil, err
		}
		if _, err := pw.Write(p.body); err != nil {
			return nil, err
		}
		if err := pw.Close(); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func reportSubject(rep *Report) string {
	n := len(rep.Entries) + rep.More
	if n == 1 {
		return "Quarantine: 1 new message held for " + rep.Rcpt
	}
	return fmt.Sprintf("Quarantine: %d new messages held for %s", n, rep.Rcpt)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// formatTime is how pages and reports show a time.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04 UTC")
}

func senderText(e Entry) string {
	if e.Envelope.From == "" {
		return "<> (a bounce)"
	}
	return clean(e.Envelope.From, false)
}

func reasonText(rs Reason) string {
	s := string(rs.Kind)
	switch {
	case rs.Kind == KindSpam && rs.Score != 0:
		s += fmt.Sprintf(" (score %.1f", rs.Score)
		if rs.Threshold != 0 {
			s += fmt.Sprintf(" ≥ %.1f", rs.Threshold)
		}
		s += ")"
	case rs.Kind == KindVirus && rs.Virus != "":
		s += " (" + rs.Virus + ")"
	}
	if rs.Rule != "" {
		s += ": " + rs.Rule
	}
	return clean(s, false)
}

// shortText is s made safe to show on one line and cut to 200 bytes.
func shortText(s string) string {
	s = clean(s, false)
	if len(s) > 200 {
		return truncate(s, 200) + "…"
	}
	return s
}

const reportText = `Messages for {{.Rcpt}} were held in quarantine.
Review them before releasing: a release link asks for confirmation, and
releases the message to {{.Rcpt}} only.
{{range .Entries}}
* {{time .Entry.Time}}  from {{sender .Entry}}
  Subject: {{with .Entry.Subject}}{{short .}}{{else}}(no subject){{end}}
  Held as: {{reason .Entry.Reason}}
  Preview: {{.PreviewURL}}
{{- if .ReleaseURL}}
  Release: {{.ReleaseURL}}
  (link valid until {{time .Expires}})
{{- end}}
{{end}}
{{- if .More}}
{{.More}} more not listed here.
{{- end}}
All held messages: {{.ListURL}}
`

const reportHTML = `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Quarantine report</title></head>
<body style="font-family: sans-serif">
<p>Messages for <b>{{.Rcpt}}</b> were held in quarantine. Review them before
releasing: a release link asks for confirmation, and releases the message to
{{.Rcpt}} only.</p>
<table style="border-collapse: collapse">
<tr><th align="left">Time</th><th align="left">From</th><th align="left">Subject</th><th align="left">Held as</th><th></th></tr>
{{range .Entries}}<tr>
<td>{{time .Entry.Time}}</td>
<td>{{sender .Entry}}</td>
<td>{{with .Entry.Subject}}{{short .}}{{else}}(no subject){{end}}</td>
<td>{{reason .Entry.Reason}}</td>
<td><a href="{{.PreviewURL}}">Preview</a>{{if .ReleaseURL}} · <a href="{{.ReleaseURL}}">Release</a> (until {{time .Expires}}){{end}}</td>
</tr>
{{end}}</table>
{{if .More}}<p>{{.More}} more not listed here.</p>{{end}}
<p><a href="{{.ListURL}}">All held messages</a></p>
</body></html>
`
