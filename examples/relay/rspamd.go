package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/metrics"
	"github.com/resilmail/resilmail/mxpool/pool"
	"github.com/resilmail/resilmail/quarantine"
	"github.com/resilmail/resilmail/queue/intake"
	"github.com/resilmail/resilmail/queue/intake/milter"
	"github.com/resilmail/resilmail/queue/intake/rspamd"
)

// scanning is this relay's content scanning (-rspamd): the scanner,
// wrapped so that it is measured and checked against the pool's scanner
// profile, and the pool's per-domain spam policy deciding what a verdict
// does for each recipient.
type scanning struct {
	rs      *rspamd.Scanner // nil with -milter
	scanner intake.Scanner
	policy  intake.ScanPolicy // nil without a pool: the verdict's action stands
	log     *slog.Logger

	node string // this MX's name (-hostname), the mx label of the metrics

	scans, failures, mismatches, learned, learnFailures atomic.Uint64
	actions                                             sync.Map // intake.Action -> *atomic.Uint64, per recipient
	verdicts                                            sync.Map // intake.Action -> *atomic.Uint64, per message
	lat                                                 latencies
}

// openScanning sets up -rspamd or -milter, or returns nil when neither is
// set; the pool's policy decides what either's verdicts do. check
// and snapshot are the pool's (nil without one).
func openScanning(c config, nt *nodeTLS, check pool.Checker, snapshot func() *pool.Snapshot, log *slog.Logger) (*scanning, error) {
	if c.auth.milter != "" && c.rspamd != "" {
		return nil, errors.New("-milter and -rspamd exclude each other: one content scanner")
	}
	if c.rspamd == "" && c.rspamdController != "" {
		return nil, errors.New("-rspamd-controller needs -rspamd")
	}
	profile := func() *pool.ScannerProfile {
		if snapshot == nil {
			return nil
		}
		if s := snapshot(); s != nil {
			return s.Policy.Scanner
		}
		return nil
	}
	var sc *scanning
	switch {
	case c.auth.milter != "":
		// A milter's verdicts (reject, quarantine, tempfail, its header
		// changes) go through the pool's policy like rspamd's.
		m, err := milter.Parse(c.auth.milter, &milter.Options{Name: c.auth.milterName, Hostname: c.hostname, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("-milter: %w", err)
		}
		sc = &scanning{log: log}
		sc.scanner = intake.WrapScanner(m, sc.measure, sc.matchProfile(profile))
	case c.rspamd != "":
		var err error
		if sc, err = openRspamd(c, nt, profile, log); err != nil {
			return nil, err
		}
	default:
		return nil, nil
	}
	sc.node = c.hostname
	if check != nil {
		sc.policy = &spamPolicy{check: check, count: sc.count}
	}
	return sc, nil
}

// openRspamd sets up -rspamd.
func openRspamd(c config, nt *nodeTLS, profile func() *pool.ScannerProfile, log *slog.Logger) (*scanning, error) {
	if err := checkURL("rspamd", c.rspamd, c.insecureHTTP); err != nil {
		return nil, err
	}
	opts := &rspamd.Options{Client: nt.client}
	if c.rspamdController != "" {
		if err := checkURL("rspamd-controller", c.rspamdController, c.insecureHTTP); err != nil {
			return nil, err
		}
		opts.Controller = c.rspamdController
		if c.rspamdPassword.File != "" {
			pw, err := c.rspamdPassword.Read(nil)
			if err != nil {
				return nil, fmt.Errorf("-rspamd-password-file: %w", err)
			}
			opts.Password = pw
		}
	}
	opts.SettingsID = func() string {
		if p := profile(); p != nil {
			return p.Settings
		}
		return ""
	}
	rs, err := rspamd.New(c.rspamd, opts)
	if err != nil {
		return nil, err
	}
	sc := &scanning{rs: rs, log: log}
	sc.scanner = intake.WrapScanner(rs, sc.measure, sc.matchProfile(profile))
	return sc, nil
}

// configure sets be up to scan with sc.
func (sc *scanning) configure(be *intake.Backend, c config) {
	if sc == nil {
		return
	}
	be.Scanner, be.ScanPolicy = sc.scanner, sc.policy
	be.ScanTimeout, be.ScanLimit = c.scanTimeout, c.scanLimit
	if c.scanFailure == "accept" {
		be.ScanFailure = intake.ScanFailAcceptTag
	}
}

// measure counts scans, failures and their latency.
func (sc *scanning) measure(next intake.Scanner) intake.Scanner {
	return intake.ScannerFunc(func(ctx context.Context, env *intake.ScanEnvelope, body []byte) (intake.Verdict, error) {
		start := time.Now()
		v, err := next.Scan(ctx, env, body)
		sc.lat.add(time.Since(start))
		sc.scans.Add(1)
		if err != nil {
			sc.failures.Add(1)
		}
		return v, err
	})
}

// matchProfile refuses a verdict from a scanner other than the pool's
// profile names: no verdict, as when the scanner is down, rather than an
// MX judging by other rules than the rest of the pool.
func (sc *scanning) matchProfile(profile func() *pool.ScannerProfile) intake.ScanMiddleware {
	return func(next intake.Scanner) intake.Scanner {
		return intake.ScannerFunc(func(ctx context.Context, env *intake.ScanEnvelope, body []byte) (intake.Verdict, error) {
			v, err := next.Scan(ctx, env, body)
			if err != nil {
				return v, err
			}
			if p := profile(); !p.Matches(v.Scanner) {
				sc.mismatches.Add(1)
				return intake.Verdict{}, fmt.Errorf("the verdict of %q, not of the pool's scanner %q", v.Scanner, p.String())
			}
			return v, nil
		})
	}
}

func (sc *scanning) count(a intake.Action) {
	c, _ := sc.actions.LoadOrStore(a, new(atomic.Uint64))
	c.(*atomic.Uint64).Add(1)
}

// countVerdicts wraps be's scanner as finally set up (sender
// authentication around the content scanner) to count each message's
// verdict by its action, before the pool's policy maps it per recipient.
func (sc *scanning) countVerdicts(be *intake.Backend) {
	if sc == nil || be.Scanner == nil {
		return
	}
	next := be.Scanner
	be.Scanner = intake.ScannerFunc(func(ctx context.Context, env *intake.ScanEnvelope, body []byte) (intake.Verdict, error) {
		v, err := next.Scan(ctx, env, body)
		if err == nil {
			a := v.Action
			if a == "" {
				a = intake.ActionAccept
			}
			c, _ := sc.verdicts.LoadOrStore(a, new(atomic.Uint64))
			c.(*atomic.Uint64).Add(1)
		}
		return v, err
	})
}

// learner wraps the quarantine's Deliverer: a message an operator
// released that carries our X-Spam-Flag (a false positive) is taught to
// rspamd as ham once delivered. A failure to teach is logged and counted;
// the release stands.
func (sc *scanning) learner(next resilmail.Deliverer, maxSize int64) resilmail.Deliverer {
	if sc == nil || sc.rs == nil {
		return next
	}
	return resilmail.DelivererFunc(func(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
		buf := &capped{max: maxSize}
		err := next.Deliver(ctx, env, io.TeeReader(body, buf))
		if err != nil || buf.over || !spamFlagged(buf.Bytes()) {
			return err
		}
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if lerr := sc.rs.LearnHam(lctx, buf.Bytes()); lerr != nil {
			if !errors.Is(lerr, rspamd.ErrNoController) {
				sc.learnFailures.Add(1)
				sc.log.Warn("relay: released message not learned as ham", "msg_id", env.ID, "err", lerr)
			}
			return nil
		}
		sc.learned.Add(1)
		sc.log.Info("relay: released message learned as ham", "msg_id", env.ID)
		return nil
	})
}

// capped keeps what is written to it up to max bytes; beyond, it notes
// over and keeps nothing more (the writes still succeed).
type capped struct {
	bytes.Buffer
	max  int64
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	if !c.over && int64(c.Len()+len(p)) <= c.max {
		c.Buffer.Write(p)
	} else {
		c.over = true
	}
	return len(p), nil
}

// spamFlagged reports whether a message's header holds "X-Spam-Flag: YES".
func spamFlagged(msg []byte) bool {
	end := bytes.Index(msg, []byte("\r\n\r\n"))
	if end < 0 {
		end = len(msg)
	}
	for _, line := range bytes.Split(msg[:end], []byte("\r\n")) {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && strings.EqualFold(string(name), "X-Spam-Flag") && strings.EqualFold(strings.TrimSpace(string(value)), "YES") {
			return true
		}
	}
	return false
}

// spamPolicy is the pool's spam policy as an intake.ScanPolicy: each
// recipient's domain says from what score a message is spam and what
// happens to it then (mxpool/pool's SpamThreshold and SpamAction).
type spamPolicy struct {
	check pool.Checker
	count func(intake.Action)
}

// domain returns the spam settings of rcpt's domain; nil for a recipient
// outside the pool's domains (outbound mail of a trusted client), which
// the scanner's own judgement decides, refusing what it would reject.
func (p *spamPolicy) domain(rcpt string) *pool.DomainPolicy {
	v := p.check.Check(rcpt)
	if v.Action != pool.ActionAccept {
		return nil
	}
	return &pool.DomainPolicy{SpamThreshold: v.SpamThreshold, SpamAction: v.SpamAction}
}

// Class keeps apart recipients that one verdict could answer differently:
// every domain whose spam gets 250 (quarantine, deliver, accept) shares
// one class; a refusing domain shares only with domains of the same
// threshold and action.
func (p *spamPolicy) Class(rcpt string) string {
	d := p.domain(rcpt)
	if d == nil {
		return "refuse scanner reject"
	}
	if !d.SpamAction.Refuses() {
		return "keep"
	}
	return "refuse " + strconv.FormatFloat(d.SpamThreshold, 'g', -1, 64) + " " + string(d.SpamAction)
}

// Decide maps the verdict through rcpt's domain policy.
func (p *spamPolicy) Decide(rcpt string, v intake.Verdict) intake.Action {
	a := p.decide(p.domain(rcpt), v)
	p.count(a)
	return a
}

func (p *spamPolicy) decide(d *pool.DomainPolicy, v intake.Verdict) intake.Action {
	if v.Action == intake.ActionTempFail {
		return intake.ActionTempFail // the scanner asks to try later (greylisting)
	}
	spam := d.IsSpam(v.Score, v.Action == intake.ActionReject)
	if v.Required == 0 {
		// A verdict without a score scale (a milter, sender
		// authentication): no threshold applies, its own reject says spam.
		spam = v.Action == intake.ActionReject
	}
	if v.Action == intake.ActionQuarantine {
		// Asked for whatever the score (a milter's quarantine, DMARC's
		// quarantine disposition merged with rspamd's scored verdict).
		spam = true
	}
	if !spam {
		if v.Action == intake.ActionReject || v.Action == intake.ActionTag {
			return intake.ActionTag // spammy, below the domain's threshold
		}
		return intake.ActionAccept
	}
	if d == nil {
		return intake.ActionReject
	}
	switch d.SpamAction {
	case pool.SpamReject:
		return intake.ActionReject
	case pool.SpamDeliver:
		return intake.ActionTag
	case pool.SpamAccept:
		return intake.ActionAccept
	default: // quarantine, quarantine-refuse
		return intake.ActionQuarantine
	}
}

// quarantineReply is what the sender of a message quarantined for rcpts
// is told: 550 5.7.1 when their domains all say quarantine-refuse, else
// nil (250). The Backend keeps refusing and accepting domains in separate
// transactions.
func (p *spamPolicy) quarantineReply(rcpts []resilmail.Recipient) bool {
	if p == nil || len(rcpts) == 0 {
		return false
	}
	for _, r := range rcpts {
		d := p.domain(r.Addr)
		if d == nil || d.SpamAction != pool.SpamQuarantineRefuse {
			return false
		}
	}
	return true
}

// threshold is the spam threshold of rcpt's domain (zero: the scanner's).
func (p *spamPolicy) threshold(rcpt string) float64 {
	if p == nil {
		return 0
	}
	if d := p.domain(rcpt); d != nil {
		return d.SpamThreshold
	}
	return 0
}

// quarantineHook is the Backend's Quarantine: the message and the
// scanner's evidence (score, symbols, scanner and version, the deciding
// MX, the policy version) are kept by keep, then the sender gets 250, or
// 550 when the recipients' domains say quarantine-refuse.
func (sc *scanning) quarantineHook(keep func(context.Context, quarantine.Entry, io.Reader) error, node string, snapshot func() *pool.Snapshot) func(context.Context, resilmail.Envelope, intake.Verdict, io.Reader) error {
	if sc == nil || keep == nil {
		return nil
	}
	return func(ctx context.Context, env resilmail.Envelope, v intake.Verdict, body io.Reader) error {
		now := time.Now()
		sp, _ := sc.policy.(*spamPolicy)
		refuse := sp.quarantineReply(env.To)
		reply := "250 2.0.0 kept in quarantine"
		if refuse {
			reply = "550 5.7.1 " + replyLine(v.Message, "message refused as spam")
		}
		rule := "scanner"
		if snapshot != nil {
			if s := snapshot(); s != nil && len(env.To) > 0 {
				d := s.Policy.Domains[resilmail.Domain(strings.ToLower(env.To[0].Addr))]
				if d != nil {
					rule = fmt.Sprintf("spam_action %s (policy v%d)", d.SpamAction, s.Version)
				}
			}
		}
		var threshold float64
		if len(env.To) > 0 {
			threshold = sp.threshold(env.To[0].Addr)
		}
		if threshold == 0 {
			threshold = v.Required
		}
		e := quarantine.Entry{
			ID:       quarantine.NewID(now),
			Envelope: env,
			Node:     node,
			Time:     now,
			Reason: quarantine.Reason{Kind: quarantine.KindSpam, Rule: rule, Score: v.Score, Threshold: threshold,
				Symbols: slices.Clone(v.Symbols), Scanner: v.Scanner, Reply: reply},
		}
		for _, r := range env.To {
			e.Recipients = append(e.Recipients, quarantine.RecipientState{Addr: r.Addr, Status: quarantine.Held, Changed: now})
		}
		if err := keep(ctx, e, body); err != nil {
			return err
		}
		if refuse {
			return refusal(v.Message)
		}
		return nil
	}
}

// replyLine is a scanner's message made safe for a reply line.
func replyLine(msg, def string) string {
	msg = strings.Map(func(r rune) rune {
		if r < 0x20 || r >= 0x7f {
			return ' '
		}
		return r
	}, msg)
	if msg = strings.TrimSpace(msg); msg == "" {
		return def
	}
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return msg
}

// latencies keeps the last scan latencies for the p50 and p99 gauges.
type latencies struct {
	mu    sync.Mutex
	ring  [4096]time.Duration
	n     int
	total time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ring[l.n%len(l.ring)] = d
	l.n++
	l.total += d
}

// quantiles returns the p50 and p99 of the recent latencies, in seconds
// (NaN when there are none), and the total of all.
func (l *latencies) quantiles() (p50, p99 float64, total time.Duration) {
	l.mu.Lock()
	n := min(l.n, len(l.ring))
	s := slices.Clone(l.ring[:n])
	total = l.total
	l.mu.Unlock()
	if n == 0 {
		return math.NaN(), math.NaN(), total
	}
	slices.Sort(s)
	at := func(q float64) float64 { return s[min(n-1, int(q*float64(n)))].Seconds() }
	return at(0.50), at(0.99), total
}

// writeMetrics exports the scanning counters.
func (sc *scanning) writeMetrics(m *metrics.Writer) {
	if sc == nil {
		return
	}
	m.Counter("resilmail_scan_total", "Messages given to the content scanner.", sc.scans.Load())
	m.Counter("resilmail_scan_errors_total", "Scans that gave no verdict (scanner down, slow, garbage).", sc.failures.Load())
	m.Counter("resilmail_scan_profile_mismatch_total", "Verdicts refused because the scanner is not the pool's profile.", sc.mismatches.Load())
	all := []intake.Action{intake.ActionAccept, intake.ActionTag, intake.ActionQuarantine, intake.ActionTempFail, intake.ActionReject}
	verdicts := map[string]uint64{}
	for _, a := range append(all, intake.ActionDiscard) {
		verdicts[string(a)] = 0
	}
	sc.verdicts.Range(func(k, v any) bool {
		verdicts[string(k.(intake.Action))] = v.(*atomic.Uint64).Load()
		return true
	})
	m.CounterVec("resilmail_scan_verdicts_total", "Messages by the action of their verdict (sender authentication and content scanner), before the pool's policy, on this MX.", "action", verdicts, "mx", sc.node)
	byAction := map[string]float64{}
	for _, a := range all {
		byAction[string(a)] = 0
	}
	sc.actions.Range(func(k, v any) bool {
		byAction[string(k.(intake.Action))] = float64(v.(*atomic.Uint64).Load())
		return true
	})
	m.GaugeVec("resilmail_scan_recipient_actions", "Recipients by what the spam policy did with their message on this MX (a count since start).", "action", byAction, "mx", sc.node)
	p50, p99, total := sc.lat.quantiles()
	m.Gauge("resilmail_scan_latency_p50_seconds", "Median scan latency over the last 4096 scans.", p50)
	m.Gauge("resilmail_scan_latency_p99_seconds", "99th percentile scan latency over the last 4096 scans.", p99)
	m.Gauge("resilmail_scan_seconds_total", "Time spent scanning since start.", total.Seconds())
	m.Counter("resilmail_scan_learned_ham_total", "Released messages taught to the scanner as ham.", sc.learned.Load())
	m.Counter("resilmail_scan_learn_errors_total", "Released messages the scanner could not be taught.", sc.learnFailures.Load())
}

// refusal is the reply to a message kept in quarantine whose sender is
// refused.
func refusal(msg string) error {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: replyLine(msg, "message refused as spam")}
}
