package milter

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/emersion/go-message/textproto"

	"github.com/resilmail/resilmail/queue/intake"
)

// ErrMilter wraps every error of a scan that got no verdict from the
// milter: it could not be reached, closed the connection, timed out,
// answered out of protocol, or asked for a change the MTA did not offer.
var ErrMilter = errors.New("milter: no verdict")

// Options tune a Scanner; the zero value (or nil) gives working defaults.
type Options struct {
	// Name is the Verdict's Scanner; "" means "milter ADDRESS".
	Name string
	// Hostname is this MTA's name, sent as the j macro; "" means
	// "localhost".
	Hostname string
	// Timeout bounds each read and write on the milter connection
	// (besides the scan's own context); zero means 30 s.
	Timeout time.Duration
	// Logger receives a line per refused change or protocol fault; nil
	// means slog.Default().
	Logger *slog.Logger
}

// Scanner is an intake.Scanner that asks a milter about each message. It
// is safe for concurrent use: every Scan opens its own connection.
type Scanner struct {
	network, address string
	name, hostname   string
	timeout          time.Duration
	log              *slog.Logger
}

var _ intake.Scanner = (*Scanner)(nil)

// New returns a Scanner for the milter at address on network ("tcp" or
// "unix"). It does no I/O.
func New(network, address string, opts *Options) (*Scanner, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	switch network {
	case "tcp", "tcp4", "tcp6":
		if _, _, err := net.SplitHostPort(address); err != nil {
			return nil, fmt.Errorf("milter: bad address %q: %w", address, err)
		}
	case "unix":
		if address == "" {
			return nil, errors.New("milter: empty socket path")
		}
	default:
		return nil, fmt.Errorf("milter: unknown network %q (tcp or unix)", network)
	}
	if o.Timeout < 0 {
		return nil, errors.New("milter: negative Timeout")
	}
	s := &Scanner{network: network, address: address, name: o.Name, hostname: o.Hostname, timeout: o.Timeout, log: o.Logger}
	if s.name == "" {
		s.name = "milter " + network + ":" + address
	}
	if s.hostname == "" {
		s.hostname = "localhost"
	}
	if s.timeout == 0 {
		s.timeout = 30 * time.Second
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	return s, nil
}

// Parse returns a Scanner for a milter named as Postfix names them:
// "inet:HOST:PORT", "unix:/PATH", or a bare "HOST:PORT".
func Parse(spec string, opts *Options) (*Scanner, error) {
	switch {
	case strings.HasPrefix(spec, "inet:"):
		return New("tcp", strings.TrimPrefix(spec, "inet:"), opts)
	case strings.HasPrefix(spec, "unix:"):
		return New("unix", strings.TrimPrefix(spec, "unix:"), opts)
	}
	return New("tcp", spec, opts)
}

// actions are the changes offered to a milter at negotiation: all those
// of protocol version 6, since milters (rspamd's proxy among them) refuse
// an MTA that does not offer what they might use. Only header changes and
// quarantine are carried out; a milter that uses another (recipients,
// sender, body) gets no verdict.
const actions = gomilter.AllClientSupportedActionMasks

// ctxDialer dials with the scan's context and remembers the connection so
// that the scan can close it when the context ends.
type ctxDialer struct {
	ctx  context.Context
	mu   sync.Mutex
	conn net.Conn
}

func (d *ctxDialer) Dial(network, address string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(d.ctx, network, address)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.conn = c
	d.mu.Unlock()
	return c, nil
}

func (d *ctxDialer) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil {
		d.conn.Close()
	}
}

// Scan implements intake.Scanner: one milter conversation (connect, HELO,
// MAIL, RCPT, DATA, header, body, end of message) over a new connection.
func (s *Scanner) Scan(ctx context.Context, env *intake.ScanEnvelope, body []byte) (v intake.Verdict, err error) {
	defer func() {
		// go-milter v0.10.1's packet reader panics on a packet of length
		// zero (found by FuzzMilterAnswer): a broken milter must not take
		// the MX down with it.
		if p := recover(); p != nil {
			s.log.Error("milter: the milter's answer crashed the codec", "msg_id", env.ID, "milter", s.name, "panic", fmt.Sprint(p))
			v, err = intake.Verdict{}, fmt.Errorf("%w: malformed answer (codec panic: %v)", ErrMilter, p)
		}
	}()
	d := &ctxDialer{ctx: ctx}
	stop := context.AfterFunc(ctx, d.close)
	defer stop()
	defer d.close()
	timeout := s.timeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	client := gomilter.NewClient(s.network, s.address,
		gomilter.WithDialer(d), gomilter.WithActions(actions),
		gomilter.WithReadTimeout(timeout), gomilter.WithWriteTimeout(timeout))
	macros := gomilter.NewMacroBag()
	macros.Set(gomilter.MacroMTAFQDN, s.hostname)
	macros.Set(gomilter.MacroDaemonName, "resilmail")
	macros.Set(gomilter.MacroQueueId, env.ID)
	if env.User != "" {
		macros.Set(gomilter.MacroAuthAuthen, env.User)
	}
	sess, err := client.Session(macros)
	if err != nil {
		return intake.Verdict{}, s.fail(ctx, "connect", err)
	}
	defer sess.Close()
	v, err = s.converse(sess, env, body)
	if err != nil {
		return intake.Verdict{}, s.fail(ctx, "converse", err)
	}
	v.Scanner = s.name
	return v, nil
}

// fail wraps err with ErrMilter, preferring the context's error when the
// scan was cut by it.
func (s *Scanner) fail(ctx context.Context, stage string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w: %s: %w (%v)", ErrMilter, stage, cerr, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrMilter, stage, err)
}

// converse runs the milter conversation and returns the verdict.
func (s *Scanner) converse(sess *gomilter.ClientSession, env *intake.ScanEnvelope, body []byte) (intake.Verdict, error) {
	family, addr, port := gomilter.FamilyUnknown, "", uint16(0)
	host := "unknown"
	if env.ClientIP.IsValid() {
		family, addr, host = gomilter.FamilyInet, env.ClientIP.String(), "["+env.ClientIP.String()+"]"
		if env.ClientIP.Is6() {
			family = gomilter.FamilyInet6
		}
	}
	helo := env.HELO
	if helo == "" {
		helo = host
	}
	steps := []func() (*gomilter.Action, error){
		func() (*gomilter.Action, error) { return sess.Conn(host, family, port, addr) },
		func() (*gomilter.Action, error) { return sess.Helo(helo) },
		func() (*gomilter.Action, error) { return sess.Mail(env.From, "") },
	}
	for _, r := range env.To {
		steps = append(steps, func() (*gomilter.Action, error) { return sess.Rcpt(r.Addr, "") })
	}
	steps = append(steps, sess.DataStart)
	hdr, rest, err := header(body)
	if err != nil {
		return intake.Verdict{}, err
	}
	steps = append(steps, func() (*gomilter.Action, error) { return s.header(sess, hdr) })
	for _, step := range steps {
		act, err := step()
		if err != nil {
			return intake.Verdict{}, err
		}
		if act.Type != gomilter.ActionContinue {
			return final(act, nil)
		}
	}
	mods, act, err := sess.BodyReadFrom(bytes.NewReader(rest))
	if err != nil {
		return intake.Verdict{}, err
	}
	return final(act, mods)
}

// header sends the header fields as they came, each value without the
// one space after the colon (as Sendmail does), then the end of header.
func (s *Scanner) header(sess *gomilter.ClientSession, hdr textproto.Header) (*gomilter.Action, error) {
	for f := hdr.Fields(); f.Next(); {
		raw, err := f.Raw()
		if err != nil {
			return nil, err
		}
		_, value, ok := bytes.Cut(raw, []byte{':'})
		if !ok {
			return nil, fmt.Errorf("header field %q without a colon", f.Key())
		}
		value = bytes.TrimPrefix(value, []byte{' '})
		act, err := sess.HeaderField(f.Key(), string(value), nil)
		if err != nil {
			return nil, err
		}
		if act.Type != gomilter.ActionContinue {
			return act, nil
		}
		if sess.Skip() {
			break
		}
	}
	return sess.HeaderEnd()
}

// header parses the header at the start of msg and returns it with the
// body after the empty line.
func header(msg []byte) (textproto.Header, []byte, error) {
	r := bytes.NewReader(msg)
	br := bufio.NewReader(r)
	hdr, err := textproto.ReadHeader(br)
	if err != nil {
		return textproto.Header{}, nil, fmt.Errorf("message header: %w", err)
	}
	return hdr, msg[len(msg)-r.Len()-br.Buffered():], nil
}

// final turns the milter's last answer and its changes into a verdict.
func final(act *gomilter.Action, mods []gomilter.ModifyAction) (intake.Verdict, error) {
	var v intake.Verdict
	switch act.Type {
	case gomilter.ActionAccept, gomilter.ActionContinue:
		v.Action = intake.ActionAccept
	case gomilter.ActionDiscard:
		return intake.Verdict{Action: intake.ActionDiscard}, nil
	case gomilter.ActionReject:
		return intake.Verdict{Action: intake.ActionReject}, nil
	case gomilter.ActionTempFail:
		return intake.Verdict{Action: intake.ActionTempFail}, nil
	case gomilter.ActionRejectWithCode:
		v.Action, v.Message = intake.ActionTempFail, replyText(act.SMTPReply)
		if act.SMTPCode >= 500 {
			v.Action = intake.ActionReject
		}
		return v, nil
	default:
		return v, fmt.Errorf("unexpected answer %v at the end of the message", act)
	}
	for _, m := range mods {
		switch m.Type {
		case gomilter.ActionAddHeader:
			v.Edits = append(v.Edits, intake.HeaderEdit{Op: intake.HeaderAppend, Name: m.HeaderName, Value: m.HeaderValue})
		case gomilter.ActionInsertHeader:
			v.Edits = append(v.Edits, intake.HeaderEdit{Op: intake.HeaderInsert, Name: m.HeaderName, Value: m.HeaderValue, Index: int(m.HeaderIndex)})
		case gomilter.ActionChangeHeader:
			v.Edits = append(v.Edits, intake.HeaderEdit{Op: intake.HeaderChange, Name: m.HeaderName, Value: m.HeaderValue, Index: int(m.HeaderIndex)})
		case gomilter.ActionQuarantine:
			v.Action = intake.ActionQuarantine
			v.Message = replyText(m.Reason)
		default:
			return intake.Verdict{}, fmt.Errorf("the milter asked for a change this MTA did not offer: %v", m)
		}
	}
	for _, e := range v.Edits {
		if sc, req, syms, ok := spamScore(e.Name, e.Value); ok {
			v.Score, v.Required, v.Symbols = sc, req, syms
		}
	}
	return v, nil
}

// spamScore reads the score a milter reports in a header field it adds:
// rspamd's X-Spamd-Result ("default: False [3.70 / 15.00];
// SYMBOL(0.20)[...]; ...") or SpamAssassin's X-Spam-Status ("No,
// score=-0.1 required=5.0 tests=A,B autolearn=ham ..."). ok is false for
// any other field, or one that does not parse.
func spamScore(name, value string) (score, required float64, symbols []string, ok bool) {
	value = strings.Join(strings.Fields(value), " ") // unfolded
	switch {
	case strings.EqualFold(name, "X-Spamd-Result"):
		start, end := strings.IndexByte(value, '['), strings.IndexByte(value, ']')
		if start < 0 || end < start {
			return 0, 0, nil, false
		}
		s, r, found := strings.Cut(value[start+1:end], "/")
		if !found {
			return 0, 0, nil, false
		}
		var err1, err2 error
		score, err1 = strconv.ParseFloat(strings.TrimSpace(s), 64)
		required, err2 = strconv.ParseFloat(strings.TrimSpace(r), 64)
		if err1 != nil || err2 != nil || !finite(score) || !finite(required) {
			return 0, 0, nil, false
		}
		for part := range strings.SplitSeq(value[end+1:], ";") {
			sym, _, found := strings.Cut(strings.TrimSpace(part), "(")
			if sym = strings.TrimSpace(sym); found && sym != "" && !strings.ContainsAny(sym, " ,") {
				symbols = append(symbols, sym)
			}
		}
		return score, required, symbols, true
	case strings.EqualFold(name, "X-Spam-Status"):
		var haveScore, haveRequired, inTests bool
		for f := range strings.FieldsSeq(value) {
			k, val, found := strings.Cut(f, "=")
			if !found && inTests { // the tests list, folded after a comma
				k, val = "tests", f
			}
			inTests = k == "tests"
			val = strings.TrimSuffix(val, ",")
			switch k {
			case "score":
				n, err := strconv.ParseFloat(val, 64)
				score, haveScore = n, err == nil && finite(n)
			case "required":
				n, err := strconv.ParseFloat(val, 64)
				required, haveRequired = n, err == nil && finite(n)
			case "tests":
				for t := range strings.SplitSeq(val, ",") {
					if t != "" && t != "none" {
						symbols = append(symbols, t)
					}
				}
			}
		}
		if !haveScore || !haveRequired {
			return 0, 0, nil, false
		}
		return score, required, symbols, true
	}
	return 0, 0, nil, false
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// replyText returns the text of an SMTP reply ("554 5.7.1 Spam message
// rejected", maybe multiline) without its codes.
func replyText(reply string) string {
	var out []string
	for _, line := range strings.Split(strings.ReplaceAll(reply, "\r\n", "\n"), "\n") {
		if len(line) >= 4 && isCode(line[:3]) && (line[3] == ' ' || line[3] == '-') {
			line = line[4:]
			if i := strings.IndexByte(line, ' '); i > 0 && isEnhanced(line[:i]) {
				line = line[i+1:]
			}
		}
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, line)
		}
	}
	return strings.Join(out, " ")
}

func isCode(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 200 && n < 600
}

func isEnhanced(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if _, err := strconv.Atoi(p); err != nil {
			return false
		}
	}
	return true
}
