package auth

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/mail"
	"strings"
	"time"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-msgauth/authres"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-msgauth/dmarc"
	"github.com/emersion/go-smtp"
	"golang.org/x/net/publicsuffix"

	"github.com/resilmail/resilmail/queue/intake"
)

// A Resolver answers the DNS questions of sender authentication;
// *net.Resolver is one (a test points its Dial at a DNS server on
// loopback). Its methods are safe for concurrent use; an error that is a
// *net.DNSError with IsNotFound is "no such record", any other error a
// temporary failure.
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

var _ Resolver = (*net.Resolver)(nil)

// A Disposition is what the MX does with a message that fails DMARC.
type Disposition string

// The dispositions.
const (
	Reject     Disposition = "reject"     // 550 5.7.1
	Quarantine Disposition = "quarantine" // intake.ActionQuarantine
	Tag        Disposition = "tag"        // intake.ActionTag: X-Spam headers, delivered
	Accept     Disposition = "accept"     // delivered, with the Authentication-Results only
)

// Options configure an Authenticator. AuthServID is required; the zero
// value of every other field gives the default.
type Options struct {
	// AuthServID names this administrative domain in the
	// Authentication-Results field it adds (RFC 8601 section 2.5), and is
	// the id whose incoming fields are removed as forged: every MX of a
	// pool uses the same.
	AuthServID string
	// Resolver asks the DNS; nil means net.DefaultResolver.
	Resolver Resolver
	// OnReject is what a DMARC failure under p=reject does; "" means
	// Reject.
	OnReject Disposition
	// OnQuarantine is what a DMARC failure under p=quarantine does; ""
	// means Tag.
	OnQuarantine Disposition
	// Timeout bounds the DNS lookups of one check; zero means 10 s.
	Timeout time.Duration
	// Logger gets a line per refusal; nil means slog.Default().
	Logger *slog.Logger
	// Rand, if set, returns an integer in [0, 100) to sample a DMARC
	// record's pct=; nil means math/rand/v2.
	Rand func() int
}

// Authenticator checks who sent a message: a null MX sender domain at
// MAIL FROM (CheckSender), SPF, DKIM and DMARC at the end of DATA
// (Middleware). It is safe for concurrent use and starts no goroutine.
type Authenticator struct {
	id           string
	res          Resolver
	onReject     Disposition
	onQuarantine Disposition
	timeout      time.Duration
	log          *slog.Logger
	rand         func() int
}

// New returns an Authenticator configured by opts; it does no I/O.
func New(opts *Options) (*Authenticator, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.AuthServID == "" || strings.ContainsAny(o.AuthServID, " \t\r\n;()\"") {
		return nil, fmt.Errorf("auth: bad authserv-id %q (a domain name, required)", o.AuthServID)
	}
	a := &Authenticator{id: o.AuthServID, res: o.Resolver, onReject: o.OnReject, onQuarantine: o.OnQuarantine,
		timeout: o.Timeout, log: o.Logger, rand: o.Rand}
	if a.res == nil {
		a.res = net.DefaultResolver
	}
	if a.onReject == "" {
		a.onReject = Reject
	}
	if a.onQuarantine == "" {
		a.onQuarantine = Tag
	}
	for _, d := range []Disposition{a.onReject, a.onQuarantine} {
		switch d {
		case Reject, Quarantine, Tag, Accept:
		default:
			return nil, fmt.Errorf("auth: unknown disposition %q (reject, quarantine, tag or accept)", d)
		}
	}
	if a.timeout < 0 {
		return nil, errors.New("auth: negative Timeout")
	}
	if a.timeout == 0 {
		a.timeout = 10 * time.Second
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.rand == nil {
		a.rand = func() int { return rand.IntN(100) }
	}
	return a, nil
}

// ParseDisposition reads a disposition by name, for flags.
func ParseDisposition(s string) (Disposition, error) {
	switch d := Disposition(strings.ToLower(s)); d {
	case Reject, Quarantine, Tag, Accept:
		return d, nil
	}
	return "", fmt.Errorf("auth: unknown disposition %q (reject, quarantine, tag or accept)", s)
}

// CheckSender is an intake.Backend.CheckSender: it refuses a sender whose
// domain publishes a null MX (RFC 7505 section 4.2: it accepts no mail,
// so no reply could reach it) with 550 5.7.27. A DNS failure refuses
// nothing: the check only acts on a certain answer.
func (a *Authenticator) CheckSender(ctx context.Context, env *intake.ScanEnvelope) error {
	_, domain, ok := strings.Cut(env.From, "@")
	if !ok || domain == "" || strings.HasPrefix(domain, "[") {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	mxs, err := a.res.LookupMX(ctx, domain)
	if err != nil || len(mxs) != 1 || (mxs[0].Host != "." && mxs[0].Host != "") {
		return nil
	}
	a.log.Info("auth: sender refused: its domain publishes a null MX", "from", env.From, "remote", env.ClientIP)
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 27}, Message: "sender address domain " + domain + " accepts no mail (null MX)"}
}

// Middleware returns an intake.ScanMiddleware that authenticates each
// message before next (which may be nil) scans it; see the package doc.
func (a *Authenticator) Middleware() intake.ScanMiddleware {
	return func(next intake.Scanner) intake.Scanner {
		return intake.ScannerFunc(func(ctx context.Context, env *intake.ScanEnvelope, body []byte) (intake.Verdict, error) {
			return a.scan(ctx, env, body, next)
		})
	}
}

// Scanner returns an intake.Scanner that only authenticates.
func (a *Authenticator) Scanner() intake.Scanner { return a.Middleware()(nil) }

// scan checks the message, asks next on the message as it will be kept
// (forged fields gone, ours added), and merges the two verdicts.
func (a *Authenticator) scan(ctx context.Context, env *intake.ScanEnvelope, body []byte, next intake.Scanner) (intake.Verdict, error) {
	res, err := a.Check(ctx, env, body)
	if err != nil {
		return intake.Verdict{}, err
	}
	v := res.Verdict
	if v.Action == intake.ActionReject || v.Action == intake.ActionTempFail || next == nil {
		return v, nil
	}
	edited, err := intake.ApplyEdits(body, !env.Truncated, v.Edits)
	if err != nil {
		return intake.Verdict{}, err
	}
	inner, err := next.Scan(ctx, env, edited)
	if err != nil {
		// Still no forged field may pass, nor one without ours, if the
		// Backend accepts unchecked mail.
		return intake.Verdict{}, &intake.FailedScan{Err: err, Edits: v.Edits}
	}
	out := inner
	out.Edits = append(append([]intake.HeaderEdit(nil), v.Edits...), inner.Edits...)
	if severity(v.Action) > severity(inner.Action) {
		out.Action, out.Message = v.Action, v.Message
		out.Symbols = append(append([]string(nil), inner.Symbols...), v.Symbols...)
	}
	return out, nil
}

// severity orders actions from the mildest.
func severity(a intake.Action) int {
	switch a {
	case intake.ActionTag:
		return 1
	case intake.ActionQuarantine:
		return 2
	case intake.ActionDiscard:
		return 3
	case intake.ActionTempFail:
		return 4
	case intake.ActionReject:
		return 5
	}
	return 0
}

// Result is what Check found about one message.
type Result struct {
	SPF   authres.SPFResult
	DKIM  []authres.DKIMResult
	DMARC authres.DMARCResult
	// Policy is the DMARC policy that applied to a failure ("" when the
	// message passed or no policy was found), after pct= sampling.
	Policy dmarc.Policy
	// Header is the Authentication-Results field value this node adds.
	Header string
	// Verdict is what the MX does: its Edits remove every incoming
	// Authentication-Results field naming this authserv-id and add ours
	// at the top; its Action follows the DMARC disposition.
	Verdict intake.Verdict
}

// Check authenticates one message: SPF of the client for the envelope
// sender (or the HELO name when the sender is null), every DKIM signature
// (only when body holds the whole message), and DMARC for the From
// domain. An error means the message could not be read as a message.
func (a *Authenticator) Check(ctx context.Context, env *intake.ScanEnvelope, body []byte) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	var r Result
	hdr, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(body)))
	if err != nil {
		return r, fmt.Errorf("auth: message header: %w", err)
	}
	r.SPF = a.spf(ctx, env)
	r.DKIM = a.dkim(ctx, env, body)
	from, fromErr := fromDomain(hdr)
	r.DMARC, r.Policy = a.dmarc(ctx, env, from, fromErr, r.SPF, r.DKIM)

	results := []authres.Result{&r.SPF}
	for i := range r.DKIM {
		results = append(results, &r.DKIM[i])
	}
	results = append(results, &r.DMARC)
	r.Header = fold(authres.Format(a.id, results))

	v := intake.Verdict{Scanner: "resilmail auth"}
	v.Edits = a.removeForged(hdr)
	v.Edits = append(v.Edits, intake.HeaderEdit{Op: intake.HeaderInsert, Index: 0, Name: "Authentication-Results", Value: r.Header})
	switch r.DMARC.Value {
	case authres.ResultFail:
		d := Accept
		switch r.Policy {
		case dmarc.PolicyReject:
			d = a.onReject
		case dmarc.PolicyQuarantine:
			d = a.onQuarantine
		}
		v.Symbols = []string{"DMARC_POLICY_" + strings.ToUpper(string(r.Policy))}
		switch d {
		case Reject:
			v.Action, v.Message = intake.ActionReject, "message refused: the DMARC policy of "+from+" says reject"
		case Quarantine:
			v.Action, v.Message = intake.ActionQuarantine, "DMARC policy of "+from+": "+string(r.Policy)
		case Tag:
			v.Action = intake.ActionTag
		}
		if v.Action == intake.ActionReject && temporary(r) {
			// A lookup that failed might have passed: ask the client to
			// come back rather than refuse for good (RFC 7489 section 6.6.2).
			v.Action, v.Message = intake.ActionTempFail, "DMARC check of "+from+" failed temporarily, try again later"
		}
	case authres.ResultTempError:
		// The policy could not be read: nothing to enforce, and not a pass.
	}
	if v.Action != "" && v.Action != intake.ActionAccept {
		a.log.Info("auth: DMARC failure", "msg_id", env.ID, "from", env.From, "header_from", from, "policy", string(r.Policy), "action", string(v.Action))
	}
	r.Verdict = v
	return r, nil
}

// temporary says whether an SPF or DKIM lookup failed temporarily.
func temporary(r Result) bool {
	if r.SPF.Value == authres.ResultTempError {
		return true
	}
	for _, d := range r.DKIM {
		if d.Value == authres.ResultTempError {
			return true
		}
	}
	return false
}

// spf checks the client against the sender's (or the HELO name's) SPF
// record.
func (a *Authenticator) spf(ctx context.Context, env *intake.ScanEnvelope) authres.SPFResult {
	r := authres.SPFResult{From: env.From, Helo: env.HELO}
	if !env.ClientIP.IsValid() {
		r.Value = authres.ResultNone
		return r
	}
	if env.From == "" {
		r.From = ""
	}
	res, err := spf.CheckHostWithSender(net.IP(env.ClientIP.AsSlice()), env.HELO, env.From,
		spf.WithResolver(a.res), spf.WithContext(ctx))
	r.Value = authres.ResultValue(res)
	if err != nil && res != spf.Pass {
		r.Reason = reason(err)
	}
	return r
}

// lookupTXT returns a TXT lookup for go-msgauth: "not found" stays so,
// and every other failure is reported as temporary (temperror, never a
// permanent verdict on a DNS failure).
func (a *Authenticator) lookupTXT(ctx context.Context) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		txt, err := a.res.LookupTXT(ctx, name)
		var de *net.DNSError
		if err != nil && !(errors.As(err, &de) && de.IsNotFound) {
			return nil, &net.DNSError{Err: err.Error(), Name: name, IsTemporary: true}
		}
		return txt, err
	}
}

// dkim verifies every DKIM signature of a whole message.
func (a *Authenticator) dkim(ctx context.Context, env *intake.ScanEnvelope, body []byte) []authres.DKIMResult {
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(body), &dkim.VerifyOptions{LookupTXT: a.lookupTXT(ctx), MaxVerifications: 8})
	if err != nil && len(verifs) == 0 {
		return []authres.DKIMResult{{Value: authres.ResultPermError, Reason: reason(err)}}
	}
	if len(verifs) == 0 {
		return []authres.DKIMResult{{Value: authres.ResultNone}}
	}
	out := make([]authres.DKIMResult, 0, len(verifs))
	for _, v := range verifs {
		d := authres.DKIMResult{Domain: v.Domain, Identifier: v.Identifier}
		switch {
		case env.Truncated:
			d.Value, d.Reason = authres.ResultNeutral, "message larger than the scan limit, not verified"
		case v.Err == nil:
			d.Value = authres.ResultPass
		case dkim.IsTempFail(v.Err):
			d.Value, d.Reason = authres.ResultTempError, reason(v.Err)
		case dkim.IsPermFail(v.Err):
			d.Value, d.Reason = authres.ResultPermError, reason(v.Err)
		default:
			d.Value, d.Reason = authres.ResultFail, reason(v.Err)
		}
		out = append(out, d)
	}
	return out
}

// dmarc evaluates the From domain's DMARC policy against the SPF and DKIM
// results (RFC 7489 sections 3.1 and 6.6) and returns the result and the
// policy that applies to a failure.
func (a *Authenticator) dmarc(ctx context.Context, env *intake.ScanEnvelope, from string, fromErr error, s authres.SPFResult, ds []authres.DKIMResult) (authres.DMARCResult, dmarc.Policy) {
	r := authres.DMARCResult{From: from}
	if fromErr != nil {
		r.Value, r.Reason = authres.ResultPermError, reason(fromErr)
		return r, ""
	}
	org, err := publicsuffix.EffectiveTLDPlusOne(from)
	if err != nil {
		org = from
	}
	lookup := a.lookupTXT(ctx)
	rec, err := dmarc.LookupWithOptions(from, &dmarc.LookupOptions{LookupTXT: lookup})
	sub := false
	if errors.Is(err, dmarc.ErrNoPolicy) && org != from {
		rec, err = dmarc.LookupWithOptions(org, &dmarc.LookupOptions{LookupTXT: lookup})
		sub = true
	}
	switch {
	case errors.Is(err, dmarc.ErrNoPolicy):
		r.Value = authres.ResultNone
		return r, ""
	case dmarc.IsTempFail(err):
		r.Value, r.Reason = authres.ResultTempError, reason(err)
		return r, ""
	case err != nil:
		r.Value, r.Reason = authres.ResultPermError, reason(err)
		return r, ""
	}
	aligned := func(d string, mode dmarc.AlignmentMode) bool {
		d = strings.ToLower(strings.TrimSuffix(d, "."))
		if mode == dmarc.AlignmentStrict {
			return d == from
		}
		o, err := publicsuffix.EffectiveTLDPlusOne(d)
		return err == nil && o == org
	}
	spfDomain := env.HELO
	if _, d, ok := strings.Cut(env.From, "@"); ok {
		spfDomain = d
	}
	if s.Value == authres.ResultPass && aligned(spfDomain, rec.SPFAlignment) {
		r.Value = authres.ResultPass
		return r, ""
	}
	for _, d := range ds {
		if d.Value == authres.ResultPass && aligned(d.Domain, rec.DKIMAlignment) {
			r.Value = authres.ResultPass
			return r, ""
		}
	}
	r.Value = authres.ResultFail
	p := rec.Policy
	if sub && rec.SubdomainPolicy != "" {
		p = rec.SubdomainPolicy
	}
	if rec.Percent != nil && *rec.Percent < 100 && a.rand() >= *rec.Percent {
		// Not sampled: the next milder policy applies (RFC 7489 section 6.6.4).
		switch p {
		case dmarc.PolicyReject:
			p = dmarc.PolicyQuarantine
		case dmarc.PolicyQuarantine:
			p = dmarc.PolicyNone
		}
	}
	return r, p
}

// fromDomain returns the lower-case domain of the message's one From
// address (RFC 7489 section 6.6.1).
func fromDomain(h textproto.Header) (string, error) {
	vals := h.Values("From")
	if len(vals) != 1 {
		return "", fmt.Errorf("%d From fields", len(vals))
	}
	list, err := mail.ParseAddressList(vals[0])
	if err != nil {
		return "", fmt.Errorf("the From field: %w", err)
	}
	if len(list) != 1 {
		return "", fmt.Errorf("%d From addresses", len(list))
	}
	_, d, ok := strings.Cut(list[0].Address, "@")
	if !ok || d == "" {
		return "", errors.New("the From address has no domain")
	}
	return strings.ToLower(strings.TrimSuffix(d, ".")), nil
}

// removeForged returns the edits that remove every Authentication-Results
// field claiming this authserv-id (RFC 8601 section 5), last first so
// that the indexes stay right.
func (a *Authenticator) removeForged(h textproto.Header) []intake.HeaderEdit {
	var idx []int
	n := 0
	for f := h.FieldsByKey("Authentication-Results"); f.Next(); {
		n++
		if strings.EqualFold(servID(f.Value()), a.id) {
			idx = append(idx, n)
		}
	}
	edits := make([]intake.HeaderEdit, 0, len(idx))
	for i := len(idx) - 1; i >= 0; i-- {
		edits = append(edits, intake.HeaderEdit{Op: intake.HeaderChange, Name: "Authentication-Results", Index: idx[i]})
	}
	return edits
}

// servID returns the authserv-id of an Authentication-Results value: the
// first token before ';', without comments or a version.
func servID(v string) string {
	var b strings.Builder
	depth := 0
	for _, c := range v {
		switch {
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case depth > 0:
		case c == ';':
			return firstWord(b.String())
		default:
			b.WriteRune(c)
		}
	}
	return firstWord(b.String())
}

func firstWord(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return strings.Trim(f[0], "\"")
	}
	return ""
}

// reason makes an error's text safe for a reason="..." parameter.
func reason(err error) string {
	s := strings.Map(func(r rune) rune {
		if r < 0x20 || r >= 0x7f || r == '"' || r == '\\' {
			return ' '
		}
		return r
	}, err.Error())
	if len(s) > 120 {
		s = s[:120]
	}
	return strings.TrimSpace(s)
}

// fold breaks an Authentication-Results value after each ';', so that no
// line grows long.
func fold(v string) string {
	v = strings.ReplaceAll(strings.TrimSpace(v), " ;", ";")
	return strings.ReplaceAll(v, "; ", ";\r\n\t")
}
