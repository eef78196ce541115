// Package rspamd is an intake.Scanner that asks rspamd (https://rspamd.com)
// over its HTTP protocol: one POST /checkv2 per message to a normal (or
// proxy) worker, with the SMTP session in request header fields (IP, Helo,
// From, Rcpt, Queue-Id, User, TLS-Version, TLS-Cipher) and the message as
// the request body.
//
// # Guarantees
//
// Scan returns a verdict only from a well-formed reply about this message:
// status 200, a JSON object with a known action and a finite score, and,
// when the message has a Message-ID, the same "message-id" back (a proxy
// or a confused server answering for another message is an error). A
// connection refused or reset, a hang past the context's deadline, a
// reply over Options.MaxReply bytes or garbage are errors, which
// package intake turns into 451 4.7.1 (or accept-and-tag, as configured):
// never a verdict nobody gave.
//
// Actions map to intake's: "no action" to accept, "add header" and
// "rewrite subject" to tag, "soft reject" to tempfail, "reject" to reject
// with rspamd's smtp_message. "greylist" is tempfail only when rspamd's
// greylist module did greylist the message (symbol GREYLIST_SAVE);
// otherwise it is only a score past the greylist threshold with no
// greylisting behind it (the module needs Redis), and is tag: a 451 then
// would be answered again on every retry. Symbols are
// sorted by name, so two MXs scanning the same message report them alike.
//
// Options.SettingsID picks one of rspamd's settings (a named rule set,
// the Settings-ID header), so that a pool's policy can name the rules
// every MX applies. With Options.Controller, LearnHam and LearnSpam teach
// rspamd's classifier through its controller worker (/learnham,
// /learnspam, with the Password header when set): an operator releasing a
// false positive from quarantine tells the scanner.
//
// # Goroutines
//
// The package starts none; a Scanner is safe for concurrent use (it shares
// one http.Client).
package rspamd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/textproto"
	"net/url"
	"sort"
	"strings"

	"github.com/resilmail/resilmail/queue/intake"
)

// Options tune a Scanner; nil means defaults.
type Options struct {
	// Client sends the requests; nil means a client of its own that
	// follows no redirects. Deadlines come from the Scan context.
	Client *http.Client
	// MaxReply bounds the reply body read, in bytes; zero means 1 MiB.
	MaxReply int64
	// SettingsID, if set, returns the rspamd settings id to scan with (the
	// Settings-ID header: a rule set of rspamd's settings module), read
	// at every scan so that a pool's policy can change it; "" means
	// rspamd's defaults.
	SettingsID func() string
	// Controller is the URL of rspamd's controller worker
	// ("http://127.0.0.1:11334"), which LearnHam and LearnSpam teach;
	// empty means they fail with ErrNoController.
	Controller string
	// Password is the controller's password ("enable_password" for
	// learning), sent in its Password header; nil sends none.
	Password []byte
}

// ErrNoController is returned by LearnHam and LearnSpam when
// Options.Controller is not set.
var ErrNoController = errors.New("rspamd: no controller URL to learn with")

// Scanner asks one rspamd worker.
type Scanner struct {
	url        string
	client     *http.Client
	maxReply   int64
	settingsID func() string
	controller string
	password   []byte
}

var _ intake.Scanner = (*Scanner)(nil)

// New returns a Scanner for the rspamd worker at base, an http or https
// URL such as "http://127.0.0.1:11333".
func New(base string, opts *Options) (*Scanner, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("rspamd: bad URL %q: want http://host:port", base)
	}
	if u.User != nil {
		return nil, errors.New("rspamd: the URL must not hold credentials")
	}
	if opts == nil {
		opts = &Options{}
	}
	s := &Scanner{url: strings.TrimSuffix(u.String(), "/") + "/checkv2", client: opts.Client, maxReply: opts.MaxReply,
		settingsID: opts.SettingsID, password: opts.Password}
	if opts.Controller != "" {
		cu, err := url.Parse(opts.Controller)
		if err != nil || (cu.Scheme != "http" && cu.Scheme != "https") || cu.Host == "" || cu.User != nil {
			return nil, fmt.Errorf("rspamd: bad controller URL %q: want http://host:port", opts.Controller)
		}
		s.controller = strings.TrimSuffix(cu.String(), "/")
	}
	if s.client == nil {
		s.client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if s.maxReply <= 0 {
		s.maxReply = 1 << 20
	}
	return s, nil
}

// Scan implements intake.Scanner.
func (s *Scanner) Scan(ctx context.Context, env *intake.ScanEnvelope, body []byte) (intake.Verdict, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return intake.Verdict{}, fmt.Errorf("rspamd: %w", err)
	}
	h := req.Header
	if env.ClientIP.IsValid() {
		h.Set("IP", env.ClientIP.String())
	}
	set := func(k, v string) {
		if v != "" && !strings.ContainsAny(v, "\r\n") {
			h[k] = append(h[k], v) // rspamd's names, not canonicalised
		}
	}
	set("Helo", env.HELO)
	from := env.From
	if from == "" {
		from = "<>"
	}
	set("From", from)
	for _, r := range env.To {
		set("Rcpt", r.Addr)
	}
	set("Queue-Id", env.ID)
	set("User", env.User)
	if env.TLS {
		set("TLS-Version", env.TLSVersion)
		set("TLS-Cipher", env.TLSCipher)
	}
	if s.settingsID != nil {
		set("Settings-ID", s.settingsID())
	}
	req.Header.Set("Content-Type", "message/rfc822")
	resp, err := s.client.Do(req)
	if err != nil {
		return intake.Verdict{}, fmt.Errorf("rspamd: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, s.maxReply+1))
	if err != nil {
		return intake.Verdict{}, fmt.Errorf("rspamd: reading the reply: %w", err)
	}
	if int64(len(data)) > s.maxReply {
		return intake.Verdict{}, fmt.Errorf("rspamd: reply over %d bytes", s.maxReply)
	}
	if resp.StatusCode != http.StatusOK {
		return intake.Verdict{}, fmt.Errorf("rspamd: status %s: %.200q", resp.Status, data)
	}
	v, err := ParseReply(data, messageID(body))
	if err != nil {
		return intake.Verdict{}, err
	}
	v.Scanner = "rspamd"
	if name, version, ok := strings.Cut(resp.Header.Get("Server"), "/"); ok && name == "rspamd" && version != "" {
		v.Scanner += " " + version
	}
	return v, nil
}

// LearnHam teaches rspamd's classifier that body is not spam (a false
// positive an operator released), through the controller's /learnham.
func (s *Scanner) LearnHam(ctx context.Context, body []byte) error {
	return s.learn(ctx, "/learnham", body)
}

// LearnSpam teaches rspamd's classifier that body is spam, through the
// controller's /learnspam.
func (s *Scanner) LearnSpam(ctx context.Context, body []byte) error {
	return s.learn(ctx, "/learnspam", body)
}

func (s *Scanner) learn(ctx context.Context, path string, body []byte) error {
	if s.controller == "" {
		return ErrNoController
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.controller+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("rspamd: %w", err)
	}
	if s.password != nil {
		req.Header.Set("Password", string(s.password))
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("rspamd: %s: %w", path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var r struct {
		Success bool   `json:"success"`
		Error   string `json:"error"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(data, &r) != nil || !r.Success {
		// rspamd answers 208 "already learned" and 4xx/5xx with
		// {"error": ...}; the text never holds the password.
		return fmt.Errorf("rspamd: %s: status %s: %.200q", path, resp.Status, data)
	}
	return nil
}

// reply is the part of a /checkv2 reply a verdict is made of.
type reply struct {
	Score     *float64                   `json:"score"`
	Required  float64                    `json:"required_score"`
	Action    string                     `json:"action"`
	Symbols   map[string]json.RawMessage `json:"symbols"`
	Messages  map[string]json.RawMessage `json:"messages"`
	MessageID *string                    `json:"message-id"`
	Error     string                     `json:"error"`
}

var actions = map[string]intake.Action{
	"no action":       intake.ActionAccept,
	"add header":      intake.ActionTag,
	"rewrite subject": intake.ActionTag,
	"greylist":        intake.ActionTempFail,
	"soft reject":     intake.ActionTempFail,
	"reject":          intake.ActionReject,
}

// ParseReply makes a Verdict of a /checkv2 reply body. msgID is the
// Message-ID of the message scanned, without angle brackets ("" if it has
// none): a reply about another message is an error.
func ParseReply(data []byte, msgID string) (intake.Verdict, error) {
	var r reply
	if err := json.Unmarshal(data, &r); err != nil {
		return intake.Verdict{}, fmt.Errorf("rspamd: malformed reply: %w", err)
	}
	if r.Error != "" {
		return intake.Verdict{}, fmt.Errorf("rspamd: %.200q", r.Error)
	}
	act, ok := actions[r.Action]
	if !ok {
		return intake.Verdict{}, fmt.Errorf("rspamd: unknown action %.50q", r.Action)
	}
	if r.Score == nil || math.IsNaN(*r.Score) || math.IsInf(*r.Score, 0) || math.IsNaN(r.Required) || math.IsInf(r.Required, 0) {
		return intake.Verdict{}, errors.New("rspamd: reply without a finite score")
	}
	if msgID != "" && (r.MessageID == nil || *r.MessageID != msgID) {
		got := "none"
		if r.MessageID != nil {
			got = fmt.Sprintf("%.100q", *r.MessageID)
		}
		return intake.Verdict{}, fmt.Errorf("rspamd: reply about message-id %s, not %q", got, msgID)
	}
	if r.Action == "greylist" {
		if _, ok := r.Symbols["GREYLIST_SAVE"]; !ok {
			act = intake.ActionTag
		}
	}
	v := intake.Verdict{Action: act, Score: *r.Score, Required: r.Required}
	for name := range r.Symbols {
		v.Symbols = append(v.Symbols, name)
	}
	sort.Strings(v.Symbols)
	if raw, ok := r.Messages["smtp_message"]; ok {
		var m string
		if json.Unmarshal(raw, &m) == nil {
			v.Message = m
		}
	}
	return v, nil
}

// messageID returns the Message-ID of a message (without angle brackets),
// as rspamd reports it, or "" when the header has none or cannot be read.
func messageID(body []byte) string {
	end := bytes.Index(body, []byte("\r\n\r\n")) + 4
	if end < 4 {
		end = bytes.Index(body, []byte("\n\n")) + 2
	}
	if end < 2 {
		return ""
	}
	h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(body[:end]))).ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	ids := h.Values("Message-Id")
	if len(ids) != 1 {
		return ""
	}
	id := strings.TrimSpace(ids[0])
	id = strings.TrimSuffix(strings.TrimPrefix(id, "<"), ">")
	if id == "" || strings.ContainsAny(id, " \t<>") {
		return "" // rspamd's own parsing of odd ids is not ours to guess
	}
	return id
}
