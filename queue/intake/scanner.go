package intake

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
)

// A Scanner judges a message's content at the end of DATA, before the
// client gets its reply: rspamd, a milter, a virus scanner. Scan is called
// from the SMTP session's goroutine, concurrently for different sessions,
// so it must be safe for concurrent use. It must not keep body (the
// Backend reuses it) and should return when ctx is done. An error means
// "no verdict": the Backend then answers 451 4.7.1 (or accepts and tags,
// see Backend.ScanFailure), never 250 as if the message had been judged.
type Scanner interface {
	Scan(ctx context.Context, env *ScanEnvelope, body []byte) (Verdict, error)
}

// ScannerFunc adapts a function to a Scanner.
type ScannerFunc func(ctx context.Context, env *ScanEnvelope, body []byte) (Verdict, error)

// Scan calls f.
func (f ScannerFunc) Scan(ctx context.Context, env *ScanEnvelope, body []byte) (Verdict, error) {
	return f(ctx, env, body)
}

var _ Scanner = ScannerFunc(nil)

// A ScanPolicy decides, per recipient, what a verdict does: the pool's
// per-domain spam policy (thresholds and actions). It is called from the
// SMTP sessions' goroutines, concurrently, and must be safe for that.
//
// Class groups recipients that may share one transaction: when a
// recipient's class differs from the transaction's first recipient's, the
// Backend answers its RCPT 452 4.5.3 and the client sends it again in the
// next transaction. Give recipients whose domains would need different
// replies to one verdict (550 for one, 250 for another) different classes;
// recipients that may be quarantined for some and delivered to others
// (every reply 250) may share one.
//
// Decide returns the action v asks for rcpt. When recipients of one
// message get different actions: any ActionTempFail defers the whole
// message (451 4.7.1); ActionReject refuses it (550 5.7.1) when every
// recipient rejects, else the rejecting recipients are quarantined
// instead; quarantined recipients get one copy through
// Backend.Quarantine, the others one enqueued copy, tagged when any of
// them is ActionTag.
type ScanPolicy interface {
	Class(rcpt string) string
	Decide(rcpt string, v Verdict) Action
}

// A ScanMiddleware wraps a Scanner, as HTTP middleware wraps a handler: to
// apply a policy to its verdicts, measure it, log it.
type ScanMiddleware func(Scanner) Scanner

// WrapScanner returns s wrapped by mw, the first one outermost:
// WrapScanner(s, a, b) is a(b(s)).
func WrapScanner(s Scanner, mw ...ScanMiddleware) Scanner {
	for i := len(mw) - 1; i >= 0; i-- {
		s = mw[i](s)
	}
	return s
}

// ScanEnvelope is what a Scanner learns about a message besides its body:
// the envelope (with the queue id the message will have), and the SMTP
// session it came in.
type ScanEnvelope struct {
	resilmail.Envelope
	// ClientIP is the address of the SMTP client (invalid if unknown).
	ClientIP netip.Addr
	// HELO is the name the client gave in HELO/EHLO.
	HELO string
	// TLS says whether the session was encrypted; TLSVersion and
	// TLSCipher name its version and cipher suite ("TLS 1.3",
	// "TLS_AES_128_GCM_SHA256") when it was.
	TLS                   bool
	TLSVersion, TLSCipher string
	// User is the authenticated user, "" when the session did not
	// authenticate.
	User string
	// Truncated says that body holds only the first Backend.ScanLimit
	// bytes of a larger message.
	Truncated bool
}

// An Action is what a verdict asks the MX to do with a message.
type Action string

// The actions, from the mildest. The zero Action is ActionAccept.
const (
	ActionAccept     Action = "accept"     // enqueue as it is
	ActionTag        Action = "tag"        // enqueue with X-Spam headers
	ActionQuarantine Action = "quarantine" // keep it in quarantine (Backend.Quarantine), do not deliver
	ActionDiscard    Action = "discard"    // 250 to the client, then dropped: never delivered (a milter's SMFIR_DISCARD)
	ActionTempFail   Action = "tempfail"   // 451 4.7.1: the client tries again later (greylisting, soft reject)
	ActionReject     Action = "reject"     // 550 5.7.1 with Verdict.Message
)

// Verdict is a Scanner's judgement of one message.
type Verdict struct {
	// Action is what the scanner (or a policy wrapping it) asks for.
	Action Action
	// Score is the spam score; Required the score the scanner itself
	// deems spam from (zero if it has no such notion).
	Score, Required float64
	// Symbols are the rules that matched, as the scanner names them.
	Symbols []string
	// Message, if set, is the text of a reject or tempfail reply.
	Message string
	// Scanner names the scanner and its version ("rspamd 3.4").
	Scanner string
	// Edits change the message's header before it is kept (enqueued or
	// quarantined), in order. Edits that cannot be applied make the scan
	// count as no verdict (ErrBadEdit).
	Edits []HeaderEdit
}

// A FailedScan is an error a Scanner returns when it has no verdict but
// knows header edits that must be made to any message it lets through: an
// authentication stage whose content scanner failed still removes forged
// Authentication-Results fields and adds its own. When the Backend then
// accepts unchecked mail (ScanFailAcceptTag) it applies Edits, and refuses
// with 451 4.7.1 if they cannot be applied; otherwise the scan failed
// like any other.
type FailedScan struct {
	Err   error
	Edits []HeaderEdit
}

// Error returns the scanner's error text.
func (e *FailedScan) Error() string { return e.Err.Error() }

// Unwrap returns the scanner's error.
func (e *FailedScan) Unwrap() error { return e.Err }

// ScanFailure says what the Backend does when the scanner gave no
// verdict: it failed, timed out, or answered garbage.
type ScanFailure int

const (
	// ScanFailTempFail answers 451 4.7.1, so that the client tries again
	// (Postfix's milter_default_action = tempfail). The default.
	ScanFailTempFail ScanFailure = iota
	// ScanFailAcceptTag accepts the message with an X-Spam-Status header
	// saying it was not scanned.
	ScanFailAcceptTag
)

// ScanOversize says what the Backend does with a message longer than
// Backend.ScanLimit.
type ScanOversize int

const (
	// ScanPrefix scans the first ScanLimit bytes (ScanEnvelope.Truncated
	// is set). The default.
	ScanPrefix ScanOversize = iota
	// ScanSkip does not scan the message and accepts it with an
	// X-Spam-Status header saying so.
	ScanSkip
)

// Defaults of the Backend's scanner settings.
const (
	DefaultScanTimeout = 30 * time.Second
	DefaultScanLimit   = 1 << 20
)

// ErrNoVerdict wraps the error of a scan that gave no verdict.
var ErrNoVerdict = errors.New("intake: no verdict from the content scanner")

// scanResult is what scanning decided for one message.
type scanResult struct {
	verdict Verdict
	header  string // header fields to prepend, CRLF-terminated
	err     error  // the scanner's error, if it gave no verdict
	// mustRefuse says that the message cannot be accepted unchecked
	// either (a failed scan's edits could not be applied).
	mustRefuse bool
	judged     bool // the scanner gave a verdict (not skipped, no error)
}

// scan reads the start of the message from src (up to the scan limit),
// asks the scanner, and returns the bytes read, the decision, and a reply
// when the message is refused here. An error is a read error of src.
func (s *session) scan(env resilmail.Envelope, src io.Reader) (head []byte, res scanResult, err error) {
	limit := s.b.ScanLimit
	if limit <= 0 {
		limit = DefaultScanLimit
	}
	buf := bytes.NewBuffer(make([]byte, 0, 64<<10))
	n, err := io.Copy(buf, io.LimitReader(src, limit+1))
	if err != nil {
		return nil, res, err
	}
	head = buf.Bytes()
	se := &ScanEnvelope{Envelope: env, HELO: s.conn.Hostname(), User: s.user}
	if ap, perr := netip.ParseAddrPort(s.remote); perr == nil {
		se.ClientIP = ap.Addr().Unmap()
	}
	if cs, ok := s.tls(); ok {
		se.TLS, se.TLSVersion, se.TLSCipher = true, tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite)
	}
	body := head
	if n > limit {
		if s.b.ScanOversize == ScanSkip {
			s.log.Info("smtp: message not scanned: larger than the scan limit", "msg_id", env.ID, "remote", s.remote, "limit", limit)
			return head, scanResult{header: "X-Spam-Status: No, unchecked (larger than the scan limit)\r\n"}, nil
		}
		body, se.Truncated = head[:limit], true
	}
	timeout := s.b.ScanTimeout
	if timeout <= 0 {
		timeout = DefaultScanTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	v, serr := s.b.Scanner.Scan(ctx, se, body)
	if serr == nil && ctx.Err() != nil {
		serr = ctx.Err() // a verdict after the deadline is not trusted: the client may have given up
	}
	if serr == nil {
		if _, ok := knownActions[v.Action]; !ok {
			serr = fmt.Errorf("unknown action %q", v.Action)
		}
	}
	if serr != nil {
		s.log.Warn("smtp: content scanner gave no verdict", "msg_id", env.ID, "remote", s.remote, "took", time.Since(start), "err", serr)
		var fs *FailedScan
		if errors.As(serr, &fs) && s.b.ScanFailure == ScanFailAcceptTag {
			edited, eerr := applyEdits(head, n <= limit, fs.Edits)
			if eerr != nil {
				// The edits that had to be made cannot be: not even
				// accept-and-tag can take this message.
				s.log.Warn("smtp: the edits of a failed scan cannot be applied", "msg_id", env.ID, "remote", s.remote, "err", eerr)
				return head, scanResult{err: fmt.Errorf("%w: %w", ErrNoVerdict, eerr), mustRefuse: true}, nil
			}
			head = edited
		}
		return head, scanResult{err: fmt.Errorf("%w: %w", ErrNoVerdict, serr), header: "X-Spam-Status: No, unchecked (scanner unavailable)\r\n"}, nil
	}
	if len(v.Edits) > 0 && v.Action != ActionReject && v.Action != ActionTempFail && v.Action != ActionDiscard {
		edited, eerr := applyEdits(head, n <= limit, v.Edits)
		if eerr != nil {
			s.log.Warn("smtp: content scanner gave no verdict", "msg_id", env.ID, "remote", s.remote, "took", time.Since(start), "err", eerr)
			return head, scanResult{err: fmt.Errorf("%w: %w", ErrNoVerdict, eerr), header: "X-Spam-Status: No, unchecked (scanner unavailable)\r\n"}, nil
		}
		head = edited
	}
	if v.Action == "" {
		v.Action = ActionAccept
	}
	s.log.Info("smtp: message scanned", "msg_id", env.ID, "remote", s.remote, "action", string(v.Action), "score", v.Score, "symbols", len(v.Symbols), "scanner", v.Scanner, "took", time.Since(start))
	res = scanResult{verdict: v, judged: true}
	if v.Action == ActionTag || v.Action == ActionQuarantine {
		res.header = spamHeaders(v)
	}
	return head, res, nil
}

var knownActions = map[Action]struct{}{"": {}, ActionAccept: {}, ActionTag: {}, ActionQuarantine: {}, ActionDiscard: {}, ActionTempFail: {}, ActionReject: {}}

// decide applies Backend.ScanPolicy to a verdict: it returns the result
// whose action stands for the message as a whole (reject or tempfail when
// the message is refused, tag when kept and tagged), the envelope of the
// recipients to enqueue and that of those to quarantine.
func (s *session) decide(env resilmail.Envelope, res scanResult) (scanResult, resilmail.Envelope, resilmail.Envelope) {
	keep, held := env, env
	keep.To, held.To = nil, nil
	v := res.verdict
	acts := make([]Action, len(env.To))
	rejects, discards, tempfail, tag := 0, 0, false, false
	for i, r := range env.To {
		a := v.Action
		if s.b.ScanPolicy != nil {
			a = s.b.ScanPolicy.Decide(r.Addr, v)
			if _, ok := knownActions[a]; !ok || a == "" {
				a = ActionAccept
			}
		}
		acts[i] = a
		switch a {
		case ActionTempFail:
			tempfail = true
		case ActionReject:
			rejects++
		case ActionDiscard:
			discards++
		case ActionTag:
			tag = true
		}
	}
	switch {
	case tempfail:
		res.verdict.Action = ActionTempFail
		return res, keep, held
	case rejects == len(env.To) && rejects > 0:
		res.verdict.Action = ActionReject
		return res, keep, held
	case discards == len(env.To):
		res.verdict.Action = ActionDiscard
		return res, keep, held
	}
	for i, r := range env.To {
		switch acts[i] {
		case ActionDiscard:
			// dropped for this recipient, as it asked
		case ActionQuarantine, ActionReject:
			held.To = append(held.To, r)
		default:
			keep.To = append(keep.To, r)
		}
	}
	res.verdict.Action, res.header = ActionAccept, ""
	if tag {
		res.verdict.Action, res.header = ActionTag, spamHeaders(v)
	}
	if len(held.To) > 0 {
		s.log.Info("smtp: recipients held by the spam policy", "msg_id", env.ID, "held", len(held.To), "kept", len(keep.To), "score", v.Score)
	}
	return res, keep, held
}

// reply returns the SMTP reply for a verdict that refuses the message
// here, or nil when the message is to be kept (enqueued or quarantined).
func (r scanResult) reply(failure ScanFailure) *smtp.SMTPError {
	if r.err != nil {
		if failure == ScanFailAcceptTag && !r.mustRefuse {
			return nil
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "content scanner unavailable, try again later"}
	}
	switch r.verdict.Action {
	case ActionReject:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: replyText(r.verdict.Message, "message refused as spam")}
	case ActionTempFail:
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: replyText(r.verdict.Message, "message deferred by the content scanner, try again later")}
	}
	return nil
}

// replyText makes a scanner's message safe for an SMTP reply line: printable
// ASCII, at most 200 bytes; def when nothing is left.
func replyText(msg, def string) string {
	var b strings.Builder
	for _, c := range msg {
		if b.Len() >= 200 {
			break
		}
		if c >= 0x20 && c < 0x7f {
			b.WriteRune(c)
		} else {
			b.WriteByte(' ')
		}
	}
	if t := strings.TrimSpace(b.String()); t != "" {
		return t
	}
	return def
}

// spamHeaders returns the X-Spam header fields (as SpamAssassin and rspamd
// write them) for a verdict, CRLF-terminated and folded.
func spamHeaders(v Verdict) string {
	var b strings.Builder
	b.WriteString("X-Spam-Flag: YES\r\n")
	b.WriteString("X-Spam-Status: Yes, score=" + strconv.FormatFloat(v.Score, 'f', 2, 64))
	if v.Required != 0 {
		b.WriteString(" required=" + strconv.FormatFloat(v.Required, 'f', 2, 64))
	}
	if len(v.Symbols) > 0 {
		b.WriteString("\r\n\ttests=")
		line, first := 7, true
		for _, sym := range v.Symbols {
			sym = headerToken(sym)
			if sym == "" {
				continue
			}
			if !first {
				b.WriteByte(',')
				line++
			}
			if line+len(sym) > 76 {
				b.WriteString("\r\n\t")
				line = 1
			}
			b.WriteString(sym)
			line, first = line+len(sym), false
		}
	}
	b.WriteString("\r\n")
	if v.Scanner != "" {
		if name := replyText(v.Scanner, ""); name != "" {
			b.WriteString("X-Spam-Checker-Version: " + name + "\r\n")
		}
	}
	return b.String()
}

// headerToken keeps the characters of s that are safe in a header field
// value: printable ASCII without ',' (which separates symbols).
func headerToken(s string) string {
	return strings.Map(func(r rune) rune {
		if r > 0x20 && r < 0x7f && r != ',' {
			return r
		}
		if r == ' ' {
			return '_'
		}
		return -1
	}, s)
}
