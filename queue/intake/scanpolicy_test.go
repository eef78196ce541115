package intake_test

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue/intake"
)

// domainPolicy is a ScanPolicy by recipient domain: the action a spam
// verdict gets in each domain, and each domain's class.
type domainPolicy map[string]struct {
	class  string
	action intake.Action
}

func (p domainPolicy) of(rcpt string) (string, intake.Action) {
	_, d, _ := strings.Cut(rcpt, "@")
	c := p[d]
	return c.class, c.action
}

func (p domainPolicy) Class(rcpt string) string { c, _ := p.of(rcpt); return c }

func (p domainPolicy) Decide(rcpt string, v intake.Verdict) intake.Action {
	if v.Action != intake.ActionReject {
		return v.Action
	}
	_, a := p.of(rcpt)
	return a
}

var mixed = domainPolicy{
	"keep.test":   {"keep", intake.ActionQuarantine},
	"tag.test":    {"keep", intake.ActionTag},
	"open.test":   {"keep", intake.ActionAccept},
	"refuse.test": {"refuse", intake.ActionReject},
	"defer.test":  {"defer", intake.ActionTempFail},
	"drop.test":   {"keep", intake.ActionDiscard},
}

// held records what Backend.Quarantine is given.
type held struct {
	mu     sync.Mutex
	envs   []resilmail.Envelope
	bodies []string
	vs     []intake.Verdict
	err    error // returned after reading the body
}

func (h *held) quarantine(_ context.Context, env resilmail.Envelope, v intake.Verdict, body io.Reader) error {
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.envs, h.bodies, h.vs = append(h.envs, env), append(h.bodies, string(b)), append(h.vs, v)
	return h.err
}

// transaction sends one message to rcpts and returns each RCPT reply and
// the reply to the end of DATA ("" when no recipient was accepted).
func transaction(t *testing.T, addr string, rcpts []string, msg string) ([]string, string) {
	t.Helper()
	s := dial(t, addr)
	s.send("EHLO client.example.net")
	s.lines()
	require.Regexp(t, `^250 `, s.cmd("MAIL FROM:<sender@example.net>"))
	var replies []string
	ok := false
	for _, r := range rcpts {
		rep := s.cmd("RCPT TO:<" + r + ">")
		replies = append(replies, rep)
		ok = ok || strings.HasPrefix(rep, "250 ")
	}
	if !ok {
		return replies, ""
	}
	require.Regexp(t, `^354 `, s.cmd("DATA"))
	return replies, s.cmd(strings.TrimSuffix(msg, "\r\n") + "\r\n.")
}

func addrs(env resilmail.Envelope) []string {
	var out []string
	for _, r := range env.To {
		out = append(out, r.Addr)
	}
	return out
}

func TestScanPolicyPerRecipient(t *testing.T) {
	spam := intake.Verdict{Action: intake.ActionReject, Score: 15, Symbols: []string{"GTUBE"}, Message: "Gtube pattern", Scanner: "rspamd 3.4"}
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 20000) // beyond ScanLimit, streamed
	for _, c := range []struct {
		name       string
		v          intake.Verdict
		rcpts      []string
		msg        string
		rcptReply  []string // prefixes
		reply      string   // prefix
		queued     []string
		quarantine []string
		tagged     bool
		qerr       error
	}{
		{name: "quarantined for some, delivered to others", v: spam, msg: testMessage,
			rcpts: []string{"a@keep.test", "b@open.test", "c@keep.test"}, rcptReply: []string{"250", "250", "250"},
			reply: "250 2.0.0 OK: queued as", queued: []string{"b@open.test"}, quarantine: []string{"a@keep.test", "c@keep.test"}},
		{name: "large message split", v: spam, msg: big,
			rcpts: []string{"a@keep.test", "b@tag.test"}, rcptReply: []string{"250", "250"},
			reply: "250 2.0.0", queued: []string{"b@tag.test"}, quarantine: []string{"a@keep.test"}, tagged: true},
		{name: "another class waits for the next transaction", v: spam, msg: testMessage,
			rcpts: []string{"a@refuse.test", "b@open.test", "c@refuse.test"}, rcptReply: []string{"250", "452 4.5.3", "250"},
			reply: "550 5.7.1 Gtube pattern"},
		{name: "and the next transaction takes it", v: spam, msg: testMessage,
			rcpts: []string{"b@open.test"}, rcptReply: []string{"250"}, reply: "250 2.0.0", queued: []string{"b@open.test"}},
		{name: "clean message for a refusing domain", v: intake.Verdict{Action: intake.ActionAccept, Score: 1}, msg: testMessage,
			rcpts: []string{"a@refuse.test"}, rcptReply: []string{"250"}, reply: "250 2.0.0", queued: []string{"a@refuse.test"}},
		{name: "discarded for one, delivered to another", v: spam, msg: testMessage,
			rcpts: []string{"a@drop.test", "b@open.test"}, rcptReply: []string{"250", "250"}, reply: "250 2.0.0", queued: []string{"b@open.test"}},
		{name: "discarded for all", v: spam, msg: testMessage, rcpts: []string{"a@drop.test"}, rcptReply: []string{"250"}, reply: "250 2.0.0"},
		{name: "tempfail", v: spam, msg: testMessage, rcpts: []string{"a@defer.test"}, rcptReply: []string{"250"}, reply: "451 4.7.1"},
		{name: "quarantine fails: 451, nothing acknowledged", v: spam, msg: testMessage, qerr: io.ErrUnexpectedEOF,
			rcpts: []string{"a@keep.test", "b@open.test"}, rcptReply: []string{"250", "250"}, reply: "451 4.3.0",
			queued: []string{"b@open.test"}, quarantine: []string{"a@keep.test"}},
		{name: "quarantine refuses: the others take it", v: spam, msg: testMessage, qerr: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "no"},
			rcpts: []string{"a@keep.test", "b@open.test"}, rcptReply: []string{"250", "250"}, reply: "250 2.0.0",
			queued: []string{"b@open.test"}, quarantine: []string{"a@keep.test"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := &held{err: c.qerr}
			addr, rec := scanServer(t, verdict(c.v), func(be *intake.Backend) {
				be.ScanPolicy, be.Quarantine, be.ScanLimit = mixed, h.quarantine, 64<<10
			})
			replies, reply := transaction(t, addr, c.rcpts, c.msg)
			for i, p := range c.rcptReply {
				assert.True(t, strings.HasPrefix(replies[i], p), "RCPT %s: %q, want %q", c.rcpts[i], replies[i], p)
			}
			assert.True(t, strings.HasPrefix(reply, c.reply), "reply %q, want %q", reply, c.reply)
			rec.mu.Lock()
			defer rec.mu.Unlock()
			h.mu.Lock()
			defer h.mu.Unlock()
			if c.queued == nil {
				assert.Empty(t, rec.envs)
			} else {
				require.Len(t, rec.envs, 1)
				assert.Equal(t, c.queued, addrs(rec.envs[0]))
				assert.True(t, strings.HasSuffix(rec.bodies[0], "\r\n"+c.msg), "the queued copy is whole")
				assert.Equal(t, c.tagged, strings.Contains(rec.bodies[0], "X-Spam-Flag: YES"))
			}
			if c.quarantine == nil {
				assert.Empty(t, h.envs)
			} else {
				require.Len(t, h.envs, 1)
				assert.Equal(t, c.quarantine, addrs(h.envs[0]))
				assert.True(t, strings.HasSuffix(h.bodies[0], "\r\n"+c.msg), "the quarantined copy is whole")
				assert.Contains(t, h.bodies[0], "X-Spam-Flag: YES")
				assert.Equal(t, intake.ActionQuarantine, h.vs[0].Action)
				assert.Equal(t, []string{"GTUBE"}, h.vs[0].Symbols)
				assert.Equal(t, "rspamd 3.4", h.vs[0].Scanner)
				if len(rec.envs) > 0 {
					assert.Equal(t, rec.envs[0].ID, h.envs[0].ID, "one queue id for both copies")
				}
			}
		})
	}
}

// A reject for some recipients and 250 for others cannot be one reply: the
// rejecting ones are quarantined, never silently delivered.
func TestScanPolicyRejectMixedWithoutClasses(t *testing.T) {
	h := &held{}
	p := domainPolicy{"refuse.test": {"", intake.ActionReject}, "open.test": {"", intake.ActionAccept}}
	addr, rec := scanServer(t, verdict(intake.Verdict{Action: intake.ActionReject, Score: 15}), func(be *intake.Backend) {
		be.ScanPolicy, be.Quarantine = p, h.quarantine
	})
	_, reply := transaction(t, addr, []string{"a@refuse.test", "b@open.test"}, testMessage)
	assert.Regexp(t, `^250 `, reply)
	require.Len(t, h.envs, 1)
	assert.Equal(t, []string{"a@refuse.test"}, addrs(h.envs[0]))
	require.Len(t, rec.envs, 1)
	assert.Equal(t, []string{"b@open.test"}, addrs(rec.envs[0]))
}
