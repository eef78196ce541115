package intake

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
)

// An Enqueuer stores a message durably; *queue.Queue is one.
type Enqueuer interface {
	Enqueue(ctx context.Context, env resilmail.Envelope, body io.Reader) (string, error)
}

// An Admitter says whether a message would be taken now, before its data
// is sent; *queue.Queue is one. A Backend whose Queue is an Admitter asks
// it at MAIL FROM (with the SIZE parameter) and at every RCPT, and refuses
// with 452 4.3.1 while the queue is full, 552 5.3.4 when SIZE is over the
// limit.
type Admitter interface {
	Admit(size int64) error
}

// Backend is a go-smtp Backend that enqueues every message it receives.
type Backend struct {
	// Queue receives the messages.
	Queue Enqueuer
	// Accept, if set, decides per recipient; a non-nil error is returned to
	// the client as the RCPT reply (use *smtp.SMTPError for the code).
	Accept func(ctx context.Context, rcpt string) error
	// Rejected, if set, records a recipient that Accept refused with a
	// permanent (5xx) reply, before the client sees the reply: the edge's
	// quarantine outbox. When it fails, the client gets 451 instead, so it
	// tries again and nothing is lost.
	Rejected func(ctx context.Context, r Rejection) error
	// MaxSize, if set, is the largest message accepted at this moment, in
	// bytes (the pool's policy may change it while the server runs): a
	// larger SIZE= at MAIL and a longer body at DATA get 552 5.3.4. Zero
	// or less means no limit beyond the server's own.
	MaxSize func() int64
	// Hostname names this node in the Received header it adds to every
	// message (with the queue id, so that one grep finds a message on
	// every node); "" means "localhost".
	Hostname string
	// MaxHops refuses a message with more Received headers than this as a
	// mail loop (554 5.4.6, RFC 5321 section 6.3); zero means 50, as
	// Postfix's hopcount_limit.
	MaxHops int
	// Logger receives a line per message; nil means slog.Default().
	Logger *slog.Logger

	// CheckSender, if set, is asked at MAIL FROM, once the address is
	// well formed and before the queue is asked, about the sender: env
	// carries From, ClientIP, HELO and TLS (no recipients yet). A non-nil
	// error refuses the sender: an *smtp.SMTPError is the reply (a null
	// MX sender domain gets 550 5.7.27, RFC 7505), any other error 451
	// 4.7.1. Sender authentication (package auth) hooks in here.
	CheckSender func(ctx context.Context, env *ScanEnvelope) error

	// Scanner, if set, judges every message at the end of DATA, before
	// the reply (see the package doc, "Content scanning").
	Scanner Scanner
	// ScanTimeout bounds one scan; zero means DefaultScanTimeout.
	ScanTimeout time.Duration
	// ScanLimit is how many bytes of a message the Scanner gets (and the
	// session holds in memory); zero means DefaultScanLimit.
	ScanLimit int64
	// ScanOversize says what happens to a message longer than ScanLimit.
	ScanOversize ScanOversize
	// ScanFailure says what happens when the Scanner gives no verdict.
	ScanFailure ScanFailure
	// ScanPolicy, if set, decides per recipient what a verdict does (the
	// pool's per-domain spam policy), and keeps recipients that need
	// different replies out of one transaction; nil means the verdict's
	// Action applies to every recipient.
	ScanPolicy ScanPolicy
	// Quarantine, if set, keeps a message whose verdict is
	// ActionQuarantine instead of enqueueing it; body is the whole message
	// with the Received and X-Spam headers. When it returns nil the client
	// gets 250, when it returns an *smtp.SMTPError that reply, and any
	// other error 451. Without it such a message is refused with 550 5.7.1:
	// it is never delivered.
	Quarantine func(ctx context.Context, env resilmail.Envelope, v Verdict, body io.Reader) error

	// Submission, if set, makes this a message submission server (RFC
	// 6409): AUTH after TLS, an authenticated user for every transaction,
	// the sender rule and DKIM signing (see [Submission]). go-smtp cannot
	// see the TLS a Listener negotiates, so its Server needs
	// AllowInsecureAuth: the Backend itself refuses AUTH outside TLS.
	Submission *Submission
}

// ErrTooManyHops is the error the body reader returns when a message has
// more Received headers than Backend.MaxHops: it is looping.
var ErrTooManyHops = errors.New("intake: too many hops (Received headers): a mail loop")

type clientKey struct{}

// ClientIP returns the address of the SMTP client that the context passed
// to Backend.Accept belongs to.
func ClientIP(ctx context.Context) (netip.Addr, bool) {
	a, ok := ctx.Value(clientKey{}).(netip.Addr)
	return a, ok
}

// A Rejection is one recipient refused at RCPT: who sent it, from where,
// and the reply the client is about to get.
type Rejection struct {
	From       string
	Rcpt       string
	ClientAddr string
	HELO       string
	Reply      *smtp.SMTPError
}

// NewSession implements smtp.Backend.
func (b *Backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	log := b.Logger
	if log == nil {
		log = slog.Default()
	}
	return &session{b: b, log: log, conn: c, remote: c.Conn().RemoteAddr().String()}, nil
}

type session struct {
	b      *Backend
	log    *slog.Logger
	conn   *smtp.Conn
	remote string
	env    resilmail.Envelope
	user   string // the authenticated user; "" before AUTH
	class  string // the ScanPolicy class of the transaction's recipients
}

func (s *session) Reset() { s.env, s.class = resilmail.Envelope{}, "" }

func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.env, s.class = resilmail.Envelope{From: from}, ""
	if s.b.Submission != nil {
		if err := s.checkSubmitter(from); err != nil {
			return err
		}
	}
	if from != "" {
		if err := resilmail.CheckAddress(from); err != nil {
			return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "bad sender address"}
		}
	}
	if opts != nil && s.b.MaxSize != nil {
		if limit := s.b.MaxSize(); limit > 0 && opts.Size > limit {
			return errTooLargeReply
		}
	}
	if s.b.CheckSender != nil {
		if err := s.checkSender(from); err != nil {
			s.env = resilmail.Envelope{}
			return err
		}
	}
	if opts != nil {
		s.env.Size = opts.Size
		s.env.SMTPUTF8 = opts.UTF8
		s.env.EnvID = opts.EnvelopeID
		switch opts.Body {
		case smtp.Body8BitMIME:
			s.env.Body = resilmail.Body8BitMIME
		case smtp.BodyBinaryMIME:
			s.env.Body = resilmail.BodyBinaryMIME
		}
		switch opts.Return {
		case smtp.DSNReturnFull:
			s.env.Return = resilmail.ReturnFull
		case smtp.DSNReturnHeaders:
			s.env.Return = resilmail.ReturnHeaders
		}
	}
	return s.admit()
}

// checkSender asks Backend.CheckSender about the sender and returns the
// reply when it is refused.
func (s *session) checkSender(from string) error {
	env := &ScanEnvelope{Envelope: resilmail.Envelope{From: from}, HELO: s.conn.Hostname(), User: s.user}
	ctx := context.Background()
	if ap, err := netip.ParseAddrPort(s.remote); err == nil {
		env.ClientIP = ap.Addr().Unmap()
		ctx = context.WithValue(ctx, clientKey{}, env.ClientIP)
	}
	_, env.TLS = s.tls()
	err := s.b.CheckSender(ctx, env)
	if err == nil {
		return nil
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		s.log.Info("smtp: sender refused", "remote", s.remote, "from", from, "reply", se.Code, "err", se.Message)
		return se
	}
	s.log.Warn("smtp: sender check failed, answering 451", "remote", s.remote, "from", from, "err", err)
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "sender check failed, try again later"}
}

// admit asks the queue, when it can tell, whether it would take the
// message now.
func (s *session) admit() error {
	a, ok := s.b.Queue.(Admitter)
	if !ok {
		return nil
	}
	if err := a.Admit(s.env.Size); err != nil {
		s.log.Info("smtp: refused before data", "remote", s.remote, "from", s.env.From, "size", s.env.Size, "err", err)
		return replyFor(err)
	}
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if err := resilmail.CheckAddress(to); err != nil {
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "bad recipient address"}
	}
	for _, r := range s.env.To {
		if strings.EqualFold(r.Addr, to) {
			return nil // a repeated RCPT is accepted once
		}
	}
	if err := s.admit(); err != nil {
		return err
	}
	if s.b.Accept != nil {
		ctx := context.Background()
		if ap, err := netip.ParseAddrPort(s.remote); err == nil {
			ctx = context.WithValue(ctx, clientKey{}, ap.Addr().Unmap())
		}
		if err := s.b.Accept(ctx, to); err != nil {
			return s.rejected(to, err)
		}
	}
	if s.b.Scanner != nil && s.b.ScanPolicy != nil {
		class := s.b.ScanPolicy.Class(to)
		if len(s.env.To) == 0 {
			s.class = class
		} else if class != s.class {
			// One reply at the end of DATA cannot refuse some recipients
			// and accept others: this one comes in the next transaction
			// (RFC 5321 section 4.5.3.1.10).
			s.log.Info("smtp: recipient deferred to another transaction: another spam policy", "remote", s.remote, "rcpt", to, "class", class, "transaction_class", s.class)
			return errOtherPolicyReply
		}
	}
	r := resilmail.Recipient{Addr: to}
	if opts != nil {
		for _, n := range opts.Notify {
			switch n {
			case smtp.DSNNotifyNever:
				r.Notify |= resilmail.NotifyNever
			case smtp.DSNNotifySuccess:
				r.Notify |= resilmail.NotifySuccess
			case smtp.DSNNotifyFailure:
				r.Notify |= resilmail.NotifyFailure
			case smtp.DSNNotifyDelayed:
				r.Notify |= resilmail.NotifyDelay
			}
		}
		if opts.OriginalRecipient != "" {
			typ := string(opts.OriginalRecipientType)
			if typ == "" {
				typ = "rfc822"
			}
			r.ORCPT = typ + ";" + opts.OriginalRecipient
		}
	}
	s.env.To = append(s.env.To, r)
	return nil
}

// rejected records a permanent refusal through Backend.Rejected and returns
// the reply for the client: the refusal, or 451 when it could not be
// recorded.
func (s *session) rejected(to string, err error) error {
	var se *smtp.SMTPError
	if s.b.Rejected == nil || !errors.As(err, &se) || se.Code < 500 {
		return err
	}
	host, _, _ := net.SplitHostPort(s.remote)
	rec := Rejection{From: s.env.From, Rcpt: to, ClientAddr: host, HELO: s.conn.Hostname(), Reply: se}
	if rerr := s.b.Rejected(context.Background(), rec); rerr != nil {
		s.log.Error("smtp: cannot record a rejected recipient, answering 451", "remote", s.remote, "from", s.env.From, "rcpt", to, "err", rerr)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary failure, try again later"}
	}
	return err
}

func (s *session) Data(r io.Reader) error {
	if c, ok := s.conn.Conn().(*Conn); ok {
		if b := c.body(s.conn.Server()); b != nil {
			r = b
			defer b.Drain() // before go-smtp answers
		}
	}
	env := s.env
	env.ID = queue.NewID()
	var lr *limitReader
	if s.b.MaxSize != nil {
		if limit := s.b.MaxSize(); limit > 0 {
			lr = &limitReader{r: r, left: limit}
			r = lr
		}
	}
	maxHops := s.b.MaxHops
	if maxHops <= 0 {
		maxHops = 50
	}
	var src io.Reader = &hopCounter{r: r, max: maxHops}
	head := ""
	if s.b.Scanner != nil {
		// The scanner decides before Enqueue, on the first ScanLimit
		// bytes held in memory, so that a refused message is never
		// acknowledged.
		start, res, err := s.scan(env, src)
		if err != nil {
			if lr != nil && lr.over {
				s.log.Warn("smtp: message refused: larger than the limit", "msg_id", env.ID, "remote", s.remote, "from", env.From)
				return errTooLargeReply
			}
			s.log.Warn("smtp: message refused", "msg_id", env.ID, "remote", s.remote, "from", env.From, "err", err)
			return replyFor(err)
		}
		src = io.MultiReader(bytes.NewReader(start), src)
		var keep, held resilmail.Envelope
		qv := res.verdict // what the quarantine records
		qv.Action = ActionQuarantine
		if res.judged {
			res, keep, held = s.decide(env, res)
		}
		if reply := res.reply(s.b.ScanFailure); reply != nil {
			s.log.Info("smtp: message refused by the content scanner", "msg_id", env.ID, "remote", s.remote, "from", env.From, "reply", reply.Code)
			return reply
		}
		head = res.header
		if res.err == nil && res.verdict.Action == ActionDiscard {
			return s.discard(env, src, lr)
		}
		if len(held.To) > 0 {
			rcvd := s.received(env)
			if len(keep.To) == 0 {
				return s.quarantine(held, qv, io.MultiReader(strings.NewReader(rcvd+spamHeaders(qv)), src), lr)
			}
			return s.split(keep, held, qv, rcvd, head, src, lr)
		}
		if res.judged {
			env.To = keep.To // without the recipients the verdict discards
		}
	}
	if s.b.Submission != nil {
		var err error
		if src, err = s.completeHeader(env, src); err != nil {
			var se *smtp.SMTPError
			switch {
			case lr != nil && lr.over:
				return errTooLargeReply
			case errors.As(err, &se):
				return se
			}
			s.log.Warn("smtp: message refused", "msg_id", env.ID, "remote", s.remote, "from", env.From, "err", err)
			return replyFor(err)
		}
	}
	if sub := s.b.Submission; sub != nil && sub.Signer != nil {
		// The signature covers the message as the client sent it; it
		// is computed on a copy (memory, then SpoolDir) that is then
		// queued below the signature.
		sp := &spool{dir: sub.SpoolDir}
		defer sp.remove()
		sig, err := sub.Signer.Sign(context.Background(), env, io.TeeReader(src, sp))
		if err == nil {
			src, err = sp.reader()
		}
		if err != nil {
			if lr != nil && lr.over {
				s.log.Warn("smtp: message refused: larger than the limit", "msg_id", env.ID, "remote", s.remote, "from", env.From)
				return errTooLargeReply
			}
			s.log.Warn("smtp: message refused: not signed", "msg_id", env.ID, "remote", s.remote, "from", env.From, "err", err)
			return replyFor(err)
		}
		head += sig
	}
	body := io.MultiReader(strings.NewReader(s.received(env)+head), src)
	id, err := s.b.Queue.Enqueue(context.Background(), env, body)
	if lr != nil && lr.over {
		s.log.Warn("smtp: message refused: larger than the limit", "msg_id", id, "remote", s.remote, "from", env.From)
		return errTooLargeReply
	}
	if err != nil {
		s.log.Warn("smtp: message refused", "msg_id", id, "remote", s.remote, "from", env.From, "err", err)
		return replyFor(err)
	}
	s.log.Info("smtp: message queued", "msg_id", id, "remote", s.remote, "from", env.From, "rcpts", len(env.To))
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + id}
}

// discard reads the rest of a message the scanner said to drop and
// answers 250 (552 if it was too large): the client is told it was taken,
// and it is never delivered (a milter's SMFIR_DISCARD).
func (s *session) discard(env resilmail.Envelope, src io.Reader, lr *limitReader) error {
	_, err := io.Copy(io.Discard, src)
	if lr != nil && lr.over {
		return errTooLargeReply
	}
	if err != nil {
		s.log.Warn("smtp: message refused", "msg_id", env.ID, "remote", s.remote, "from", env.From, "err", err)
		return replyFor(err)
	}
	s.log.Info("smtp: message discarded by the content scanner", "msg_id", env.ID, "remote", s.remote, "from", env.From, "rcpts", len(env.To))
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + env.ID}
}

// quarantine hands a message to Backend.Quarantine and returns the reply.
func (s *session) quarantine(env resilmail.Envelope, v Verdict, body io.Reader, lr *limitReader) error {
	if s.b.Quarantine == nil {
		s.log.Info("smtp: message refused: quarantine verdict and no quarantine", "msg_id", env.ID, "remote", s.remote, "from", env.From)
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: replyText(v.Message, "message refused as spam")}
	}
	err := s.b.Quarantine(context.Background(), env, v, body)
	if lr != nil && lr.over {
		return errTooLargeReply
	}
	var se *smtp.SMTPError
	switch {
	case err == nil:
		s.log.Info("smtp: message quarantined", "msg_id", env.ID, "remote", s.remote, "from", env.From, "score", v.Score)
		return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + env.ID}
	case errors.As(err, &se):
		s.log.Info("smtp: message quarantined and refused", "msg_id", env.ID, "remote", s.remote, "from", env.From, "reply", se.Code)
		return se
	default:
		s.log.Error("smtp: cannot quarantine a message, answering 451", "msg_id", env.ID, "remote", s.remote, "from", env.From, "err", err)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary failure storing the message, try again later"}
	}
}

// split enqueues one copy of a message for the recipients of keep and
// hands another to Backend.Quarantine for those of held, reading the body
// once: the quarantine reads what the queue reads, through a pipe. The
// client gets 250 only when both kept their copy (a refusal from the
// Quarantine hook counts as kept: the other recipients take the message),
// else 451 and may send again: a rare duplicate beats a loss.
func (s *session) split(keep, held resilmail.Envelope, v Verdict, rcvd, head string, src io.Reader, lr *limitReader) error {
	pr, pw := io.Pipe()
	qerr := make(chan error, 1)
	go func() {
		var err error
		if s.b.Quarantine == nil {
			err = errors.New("no quarantine")
		} else {
			err = s.b.Quarantine(context.Background(), held, v, io.MultiReader(strings.NewReader(rcvd+spamHeaders(v)), pr))
		}
		pr.CloseWithError(errQuarantineDone) // unblocks the queue's copy if it stopped reading early
		qerr <- err
	}()
	body := io.MultiReader(strings.NewReader(rcvd+head), io.TeeReader(src, pw))
	id, err := s.b.Queue.Enqueue(context.Background(), keep, body)
	pw.CloseWithError(err) // nil: EOF for the quarantine's copy
	herr := <-qerr
	if lr != nil && lr.over {
		return errTooLargeReply
	}
	if err != nil {
		s.log.Warn("smtp: message refused", "msg_id", keep.ID, "remote", s.remote, "from", keep.From, "err", err)
		return replyFor(err)
	}
	var se *smtp.SMTPError
	if herr != nil && !errors.As(herr, &se) {
		s.log.Error("smtp: cannot quarantine a message for some recipients, answering 451", "msg_id", keep.ID, "remote", s.remote, "from", keep.From, "held", len(held.To), "err", herr)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary failure storing the message, try again later"}
	}
	s.log.Info("smtp: message queued for some recipients and quarantined for others", "msg_id", id, "remote", s.remote, "from", keep.From, "rcpts", len(keep.To), "held", len(held.To), "score", v.Score)
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + id}
}

var errQuarantineDone = errors.New("intake: the quarantine stopped reading")

// errOtherPolicyReply defers a recipient whose spam policy needs another
// reply than the transaction's first recipient's.
var errOtherPolicyReply = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "recipient under another spam policy: send it again in a new transaction"}

// errTooLargeReply is the reply to a message larger than the limit.
var errTooLargeReply = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "message too large"}

// limitReader reads r until left bytes, then fails, noting it in over.
type limitReader struct {
	r    io.Reader
	left int64
	over bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left < 0 {
		return 0, errors.New("message larger than the limit")
	}
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	if l.left < 0 {
		l.over = true
		return n, errors.New("message larger than the limit")
	}
	return n, err
}

// replyFor maps a queue error to the SMTP reply the client should see.
func replyFor(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, ErrTooManyHops):
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 4, 6}, Message: "too many hops: a mail loop"}
	case errors.As(err, &ne) && ne.Timeout():
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "timeout while receiving the message, closing the connection"}
	case errors.Is(err, queue.ErrTooLarge), errors.Is(err, smtp.ErrDataTooLarge):
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "message too large"}
	case errors.Is(err, queue.ErrInvalid):
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "invalid message envelope"}
	case errors.Is(err, queue.ErrFull):
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "queue full, try again later"}
	default:
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary failure storing the message, try again later"}
	}
}

// received returns the Received header (RFC 5321 section 4.4) this node
// adds: who handed the message over, over what, and its queue id.
func (s *session) received(env resilmail.Envelope) string {
	host := s.b.Hostname
	if host == "" {
		host = "localhost"
	}
	ip := s.remote
	if ap, err := netip.ParseAddrPort(s.remote); err == nil {
		ip = ap.Addr().Unmap().String()
	}
	helo := s.conn.Hostname()
	if helo == "" || strings.ContainsAny(helo, " \t\r\n()") {
		helo = "unknown"
	}
	proto := "ESMTP"
	if s.conn.Server().LMTP {
		proto = "LMTP"
	}
	if _, ok := s.tls(); ok {
		proto += "S"
	}
	if s.user != "" {
		proto += "A" // RFC 3848
	}
	if env.SMTPUTF8 {
		proto = "UTF8" + proto // RFC 6531 section 3.7.3
	}
	h := "Received: from " + helo + " ([" + ip + "])\r\n\tby " + host + " (resilmail) with " + proto + " id " + env.ID
	if len(env.To) == 1 && !strings.ContainsAny(env.To[0].Addr, "\r\n") {
		h += "\r\n\tfor <" + env.To[0].Addr + ">"
	}
	return h + "; " + time.Now().Format(time.RFC1123Z) + "\r\n"
}

// hopCounter passes a message through and fails with ErrTooManyHops once
// its header holds more than max Received fields.
type hopCounter struct {
	r       io.Reader
	max     int
	hops    int
	line    []byte // the start of the current header line
	started bool   // a byte of the current line was seen
	done    bool   // past the header
}

func (h *hopCounter) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if h.done {
		return n, err
	}
	for _, b := range p[:n] {
		if b == '\n' {
			if !h.started || (len(h.line) == 1 && h.line[0] == '\r') {
				h.done = true // the empty line that ends the header
				break
			}
			h.line, h.started = h.line[:0], false
			continue
		}
		h.started = true
		if len(h.line) < 9 {
			h.line = append(h.line, b)
			if len(h.line) == 9 && strings.EqualFold(string(h.line), "received:") {
				if h.hops++; h.hops > h.max {
					return 0, ErrTooManyHops
				}
			}
		}
	}
	return n, err
}
