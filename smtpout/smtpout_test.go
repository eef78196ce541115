package smtpout_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/smtpout"
)

const host = "127.0.0.1"

func TestDeliver(t *testing.T) {
	srv := startServer(t, newBackend(), nil, nil)
	d := newDeliverer(t, smtpout.Options{Addr: srv.addr})

	env := envelope("a@example.com", "b@example.com")
	require.NoError(t, d.Deliver(context.Background(), env, body()))

	msgs := srv.be.messages()
	require.Len(t, msgs, 1)
	assert.Equal(t, "sender@example.net", msgs[0].From)
	assert.Equal(t, []string{"a@example.com", "b@example.com"}, msgs[0].To)
	assert.Equal(t, testBody, msgs[0].Body)
	srv.be.mu.Lock()
	assert.Equal(t, []string{"client.test"}, srv.be.helos)
	srv.be.mu.Unlock()
}

func TestClassification(t *testing.T) {
	refuseBad := func(to string, _ *smtp.RcptOptions) error {
		if strings.HasPrefix(to, "bad") {
			return reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
		}
		return nil
	}
	closedAddr := func(t *testing.T) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := l.Addr().String()
		l.Close()
		return addr
	}

	tests := []struct {
		name   string
		server func(t *testing.T, be *backend) string // nil: go-smtp with be
		opts   smtpout.Options
		env    func() resilmail.Envelope
		want   map[string]outcome
		// general is set when the failure must be reported without a
		// recipient.
		general bool
		noData  bool
		body    io.Reader // nil: testBody
	}{
		{
			name: "accepted",
			env:  func() resilmail.Envelope { return envelope("a@example.com", "b@example.com") },
			want: map[string]outcome{"a@example.com": delivered, "b@example.com": delivered},
		},
		{
			name: "one RCPT refused",
			server: func(t *testing.T, be *backend) string {
				be.rcpt = refuseBad
				return startServer(t, be, nil, nil).addr
			},
			env: func() resilmail.Envelope { return envelope("a@example.com", "bad@example.com") },
			want: map[string]outcome{
				"a@example.com":   delivered,
				"bad@example.com": {permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"},
			},
		},
		{
			name: "RCPT 450 is temporary",
			server: func(t *testing.T, be *backend) string {
				be.rcpt = func(to string, _ *smtp.RcptOptions) error {
					if to == "busy@example.com" {
						return reply(450, smtp.EnhancedCode{4, 2, 1}, "try later")
					}
					return nil
				}
				return startServer(t, be, nil, nil).addr
			},
			env: func() resilmail.Envelope { return envelope("busy@example.com", "a@example.com") },
			want: map[string]outcome{
				"busy@example.com": {command: "RCPT TO", code: 450, enhanced: "4.2.1"},
				"a@example.com":    delivered,
			},
		},
		{
			name: "RCPT 552 is temporary",
			server: func(t *testing.T, be *backend) string {
				be.rcpt = func(to string, _ *smtp.RcptOptions) error {
					if to == "many@example.com" {
						return reply(552, smtp.EnhancedCode{5, 5, 3}, "too many recipients")
					}
					return nil
				}
				return startServer(t, be, nil, nil).addr
			},
			env: func() resilmail.Envelope { return envelope("a@example.com", "many@example.com") },
			want: map[string]outcome{
				"a@example.com":    delivered,
				"many@example.com": {command: "RCPT TO", code: 552, enhanced: "5.5.3"},
			},
		},
		{
			name: "every RCPT refused sends no DATA",
			server: func(t *testing.T, be *backend) string {
				be.rcpt = refuseBad
				return startServer(t, be, nil, nil).addr
			},
			env: func() resilmail.Envelope { return envelope("bad1@example.com", "bad2@example.com") },
			want: map[string]outcome{
				"bad1@example.com": {permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"},
				"bad2@example.com": {permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"},
			},
			noData: true,
		},
		{
			name: "MAIL FROM 550",
			server: func(t *testing.T, be *backend) string {
				be.mail = func(string, *smtp.MailOptions) error {
					return reply(550, smtp.EnhancedCode{5, 7, 1}, "sender blocked")
				}
				return startServer(t, be, nil, nil).addr
			},
			env: func() resilmail.Envelope { return envelope("a@example.com", "b@example.com") },
			want: map[string]outcome{
				"a@example.com": {permanent: true, command: "MAIL FROM", code: 550, enhanced: "5.7.1"},
				"b@example.com": {permanent: true, command: "MAIL FROM", code: 550, enhanced: "5.7.1"},
			},
			general: true,
		},
		{
			name: "MAIL FROM 421",
			server: func(t *testing.T, be *backend) string {
				be.mail = func(string, *smtp.MailOptions) error {
					return reply(421, smtp.EnhancedCode{4, 3, 2}, "shutting down")
				}
				return startServer(t, be, nil, nil).addr
			},
			env: func() resilmail.Envelope { return envelope("a@example.com") },
			want: map[string]outcome{
				"a@example.com": {command: "MAIL FROM", code: 421, enhanced: "4.3.2"},
			},
			general: true,
		},
		{
			name: "RCPT 421 fails every recipient not refused",
			server: func(t *testing.T, be *backend) string {
				be.rcpt = func(to string, _ *smtp.RcptOptions) error {
					switch {
					case strings.HasPrefix(to, "bad"):
						return reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
					case to == "c@example.com":
						return reply(421, smtp.EnhancedCode{4, 3, 2}, "shutting down")
					}
					return nil
				}
				return startServer(t, be, nil, nil).addr
			},
			env: func() resilmail.Envelope {
				return envelope("a@example.com", "bad@example.com", "c@example.com", "d@example.com")
			},
			want: map[string]outcome{
				"a@example.com":   {command: "RCPT TO", code: 421, enhanced: "4.3.2"},
				"bad@example.com": {permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"},
				"c@example.com":   {command: "RCPT TO", code: 421, enhanced: "4.3.2"},
				"d@example.com":   {command: "RCPT TO", code: 421, enhanced: "4.3.2"},
			},
			noData: true,
		},
		{
			name: "552 after the message",
			server: func(t *testing.T, be *backend) string {
				be.data = func(*smtp.Conn, *message) error { return smtp.ErrDataTooLarge }
				return startServer(t, be, nil, nil).addr
			},
			env: func() resilmail.Envelope { return envelope("a@example.com", "b@example.com") },
			want: map[string]outcome{
				"a@example.com": {permanent: true, command: "end of data", code: 552, enhanced: "5.3.4"},
				"b@example.com": {permanent: true, command: "end of data", code: 552, enhanced: "5.3.4"},
			},
		},
		{
			name: "451 after the message",
			server: func(t *testing.T, be *backend) string {
				be.data = func(*smtp.Conn, *message) error {
					return reply(451, smtp.EnhancedCode{4, 3, 0}, "local error")
				}
				return startServer(t, be, nil, nil).addr
			},
			env: func() resilmail.Envelope { return envelope("a@example.com") },
			want: map[string]outcome{
				"a@example.com": {command: "end of data", code: 451, enhanced: "4.3.0"},
			},
		},
		{
			name: "connection closed after the message",
			server: func(t *testing.T, be *backend) string {
				be.rcpt = refuseBad
				be.data = func(c *smtp.Conn, _ *message) error {
					c.Close()
					return nil
				}
				return startServer(t, be, nil, nil).addr
			},
			env: func() resilmail.Envelope { return envelope("a@example.com", "bad@example.com", "b@example.com") },
			want: map[string]outcome{
				"a@example.com":   {maybe: true, command: "end of data"},
				"bad@example.com": {permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"},
				"b@example.com":   {maybe: true, command: "end of data"},
			},
		},
		{
			name: "no reply within DataTimeout",
			server: func(t *testing.T, be *backend) string {
				release := blocker(t)
				be.data = func(*smtp.Conn, *message) error {
					<-release
					return nil
				}
				return startServer(t, be, nil, nil).addr
			},
			opts: smtpout.Options{DataTimeout: 200 * time.Millisecond},
			env:  func() resilmail.Envelope { return envelope("a@example.com") },
			want: map[string]outcome{
				"a@example.com": {maybe: true, command: "end of data"},
			},
		},
		{
			name: "SMTPUTF8 needed and not offered",
			env: func() resilmail.Envelope {
				env := envelope("a@example.com")
				env.SMTPUTF8 = true
				return env
			},
			want: map[string]outcome{
				"a@example.com": {permanent: true, command: "MAIL FROM", enhanced: "5.6.7"},
			},
			general: true,
			noData:  true,
		},
		{
			name: "non-ASCII recipient needs SMTPUTF8",
			env:  func() resilmail.Envelope { return envelope("a@example.com", "josé@example.com") },
			want: map[string]outcome{
				"a@example.com":    {permanent: true, command: "MAIL FROM", enhanced: "5.6.7"},
				"josé@example.com": {permanent: true, command: "MAIL FROM", enhanced: "5.6.7"},
			},
			general: true,
			noData:  true,
		},
		{
			name: "SMTPUTF8 offered",
			server: func(t *testing.T, be *backend) string {
				return startServer(t, be, func(s *smtp.Server) { s.EnableSMTPUTF8 = true }, nil).addr
			},
			env:  func() resilmail.Envelope { return envelope("josé@example.com") },
			want: map[string]outcome{"josé@example.com": delivered},
		},
		{
			name: "8BITMIME body and no 8BITMIME",
			server: func(t *testing.T, _ *backend) string {
				return startRaw(t, rawScript{ehlo: []string{"SIZE", "ENHANCEDSTATUSCODES"}})
			},
			env: func() resilmail.Envelope {
				env := envelope("a@example.com")
				env.Body = resilmail.Body8BitMIME
				return env
			},
			want: map[string]outcome{
				"a@example.com": {permanent: true, command: "MAIL FROM", enhanced: "5.6.3"},
			},
			general: true,
		},
		{
			name: "7BIT body and no 8BITMIME",
			server: func(t *testing.T, _ *backend) string {
				return startRaw(t, rawScript{ehlo: []string{"SIZE"}})
			},
			env:  func() resilmail.Envelope { return envelope("a@example.com") },
			want: map[string]outcome{"a@example.com": delivered},
		},
		{
			name: "BINARYMIME body",
			env: func() resilmail.Envelope {
				env := envelope("a@example.com")
				env.Body = resilmail.BodyBinaryMIME
				return env
			},
			want: map[string]outcome{
				"a@example.com": {permanent: true, command: "MAIL FROM", enhanced: "5.6.3"},
			},
			general: true,
			noData:  true,
		},
		{
			name: "larger than the server's SIZE",
			server: func(t *testing.T, be *backend) string {
				return startServer(t, be, func(s *smtp.Server) { s.MaxMessageBytes = 1000 }, nil).addr
			},
			env: func() resilmail.Envelope {
				env := envelope("a@example.com")
				env.Size = 5000
				return env
			},
			want: map[string]outcome{
				"a@example.com": {permanent: true, command: "MAIL FROM", enhanced: "5.3.4"},
			},
			general: true,
			noData:  true,
		},
		{
			name: "bad recipient syntax",
			env:  func() resilmail.Envelope { return envelope("a@example.com", "not an address") },
			want: map[string]outcome{
				"a@example.com":  delivered,
				"not an address": {permanent: true, command: "RCPT TO", enhanced: "5.1.3"},
			},
		},
		{
			name:   "connection refused",
			server: func(t *testing.T, _ *backend) string { return closedAddr(t) },
			env:    func() resilmail.Envelope { return envelope("a@example.com", "b@example.com") },
			want: map[string]outcome{
				"a@example.com": {command: "connect"},
				"b@example.com": {command: "connect"},
			},
			general: true,
		},
		{
			name: "554 greeting over implicit TLS",
			server: func(t *testing.T, _ *backend) string {
				cfg, _ := newCert(t)
				return startRaw(t, rawScript{tls: cfg, greeting: "554 5.7.1 go away"})
			},
			opts: smtpout.Options{TLS: smtpout.TLSImplicit, TLSConfig: &tls.Config{InsecureSkipVerify: true}},
			env:  func() resilmail.Envelope { return envelope("a@example.com") },
			want: map[string]outcome{
				"a@example.com": {command: "greeting", code: 554, enhanced: "5.7.1"},
			},
			general: true,
		},
		{
			name: "STARTTLS refused, opportunistic",
			server: func(t *testing.T, _ *backend) string {
				return startRaw(t, rawScript{ehlo: []string{"STARTTLS", "8BITMIME"}})
			},
			env:  func() resilmail.Envelope { return envelope("a@example.com") },
			want: map[string]outcome{"a@example.com": delivered},
		},
		{
			name: "STARTTLS refused, required",
			server: func(t *testing.T, _ *backend) string {
				return startRaw(t, rawScript{ehlo: []string{"STARTTLS", "8BITMIME"}})
			},
			opts: smtpout.Options{TLS: smtpout.TLSRequired},
			env:  func() resilmail.Envelope { return envelope("a@example.com") },
			want: map[string]outcome{
				"a@example.com": {command: "STARTTLS", code: 502, enhanced: "5.5.1"},
			},
			general: true,
		},
		{
			name: "EHLO refused",
			server: func(t *testing.T, be *backend) string {
				return startRaw(t, rawScript{ehloReply: "550 5.7.1 bad name"})
			},
			env: func() resilmail.Envelope { return envelope("a@example.com") },
			want: map[string]outcome{
				"a@example.com": {permanent: true, command: "EHLO", code: 550, enhanced: "5.7.1"},
			},
			general: true,
		},
		{
			name: "server stops reading the message",
			server: func(t *testing.T, be *backend) string {
				release := blocker(t)
				be.dataStart = func() { <-release }
				return startServer(t, be, nil, nil).addr
			},
			opts:    smtpout.Options{CommandTimeout: 200 * time.Millisecond},
			body:    endless{},
			env:     func() resilmail.Envelope { return envelope("a@example.com") },
			want:    map[string]outcome{"a@example.com": {command: "DATA"}},
			general: true,
		},
		{
			name: "554 greeting is temporary",
			server: func(t *testing.T, _ *backend) string {
				return startRaw(t, rawScript{greeting: "554 5.7.1 go away"})
			},
			env: func() resilmail.Envelope { return envelope("a@example.com") },
			want: map[string]outcome{
				"a@example.com": {command: "greeting", code: 554, enhanced: "5.7.1"},
			},
			general: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			be := newBackend()
			var addr string
			if tt.server == nil {
				addr = startServer(t, be, nil, nil).addr
			} else {
				addr = tt.server(t, be)
			}
			opts := tt.opts
			opts.Addr = addr
			d := newDeliverer(t, opts)
			env := tt.env()
			b := tt.body
			if b == nil {
				b = body()
			}
			err := d.Deliver(context.Background(), env, b)
			checkOutcomes(t, env, host, err, tt.want)
			if tt.general {
				des := deliveryErrors(err)
				require.Len(t, des, 1, "err: %v", err)
				assert.Empty(t, des[0].Recipient)
			}
			if tt.noData {
				assert.Zero(t, be.datas(), "DATA was sent")
			}
		})
	}
}

func TestDSNParameters(t *testing.T) {
	t.Run("offered", func(t *testing.T) {
		srv := startServer(t, newBackend(), func(s *smtp.Server) { s.EnableDSN = true }, nil)
		d := newDeliverer(t, smtpout.Options{Addr: srv.addr})
		env := envelope()
		env.Size = int64(len(testBody))
		env.Return = resilmail.ReturnHeaders
		env.EnvID = "envid+42"
		env.Body = resilmail.Body8BitMIME
		env.To = []resilmail.Recipient{
			{Addr: "a@example.com", Notify: resilmail.NotifySuccess | resilmail.NotifyFailure, ORCPT: "rfc822;orig@example.org"},
			{Addr: "b@example.com", Notify: resilmail.NotifyNever},
			{Addr: "c@example.com", Notify: resilmail.NotifyDelay, ORCPT: "rfc822;jos\u00e9@example.org"},
			{Addr: "d@example.com"},
		}
		require.NoError(t, d.Deliver(context.Background(), env, body()))

		msgs := srv.be.messages()
		require.Len(t, msgs, 1)
		m := msgs[0]
		assert.Equal(t, smtp.DSNReturnHeaders, m.MailOpts.Return)
		assert.Equal(t, "envid+42", m.MailOpts.EnvelopeID)
		assert.Equal(t, int64(len(testBody)), m.MailOpts.Size)
		assert.Equal(t, smtp.Body8BitMIME, m.MailOpts.Body)
		require.Len(t, m.RcptOpts, 4)
		assert.Equal(t, []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure}, m.RcptOpts[0].Notify)
		assert.Equal(t, smtp.DSNAddressTypeRFC822, m.RcptOpts[0].OriginalRecipientType)
		assert.Equal(t, "orig@example.org", m.RcptOpts[0].OriginalRecipient)
		assert.Equal(t, []smtp.DSNNotify{smtp.DSNNotifyNever}, m.RcptOpts[1].Notify)
		assert.Equal(t, []smtp.DSNNotify{smtp.DSNNotifyDelayed}, m.RcptOpts[2].Notify)
		assert.Equal(t, smtp.DSNAddressTypeUTF8, m.RcptOpts[2].OriginalRecipientType)
		assert.Equal(t, "jos\u00e9@example.org", m.RcptOpts[2].OriginalRecipient)
		assert.Empty(t, m.RcptOpts[3].Notify)
		assert.Empty(t, m.RcptOpts[3].OriginalRecipient)
	})
	t.Run("not offered", func(t *testing.T) {
		// go-smtp's server refuses DSN parameters it did not offer.
		srv := startServer(t, newBackend(), nil, nil)
		d := newDeliverer(t, smtpout.Options{Addr: srv.addr})
		env := envelope()
		env.Return = resilmail.ReturnFull
		env.EnvID = "x"
		env.To = []resilmail.Recipient{{Addr: "a@example.com", Notify: resilmail.NotifyFailure, ORCPT: "rfc822;a@example.com"}}
		require.NoError(t, d.Deliver(context.Background(), env, body()))
		msgs := srv.be.messages()
		require.Len(t, msgs, 1)
		assert.Empty(t, msgs[0].MailOpts.Return)
		assert.Empty(t, msgs[0].RcptOpts[0].Notify)
	})
}

func TestLMTP(t *testing.T) {
	t.Run("mixed replies", func(t *testing.T) {
		be := newBackend()
		be.lmtp = func(m *message, status smtp.StatusCollector) error {
			for _, to := range m.To {
				switch to {
				case "full@example.com":
					status.SetStatus(to, reply(452, smtp.EnhancedCode{4, 2, 2}, "mailbox full"))
				case "gone@example.com":
					status.SetStatus(to, reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user"))
				default:
					status.SetStatus(to, nil)
				}
			}
			return nil
		}
		srv := startServer(t, be, func(s *smtp.Server) { s.LMTP = true }, nil)
		d := newDeliverer(t, smtpout.Options{Addr: srv.addr, LMTP: true})
		env := envelope("a@example.com", "full@example.com", "gone@example.com", "b@example.com")
		err := d.Deliver(context.Background(), env, body())
		checkOutcomes(t, env, host, err, map[string]outcome{
			"a@example.com":    delivered,
			"full@example.com": {command: "end of data", code: 452, enhanced: "4.2.2"},
			"gone@example.com": {permanent: true, command: "end of data", code: 550, enhanced: "5.1.1"},
			"b@example.com":    delivered,
		})
		// The session carries on.
		env = envelope("a@example.com")
		require.NoError(t, d.Deliver(context.Background(), env, body()))
		assert.Equal(t, 1, srv.ln.accepted())
		srv.be.mu.Lock()
		assert.Equal(t, []string{"client.test"}, srv.be.helos)
		srv.be.mu.Unlock()
	})
	t.Run("session lost between replies", func(t *testing.T) {
		addr := startRaw(t, rawScript{
			ehlo: []string{"8BITMIME", "ENHANCEDSTATUSCODES"},
			afterDot: func(tp *textproto.Conn, rcpts []string) bool {
				tp.PrintfLine("250 2.0.0 <%s> delivered", rcpts[0])
				return false
			},
		})
		d := newDeliverer(t, smtpout.Options{Addr: addr, LMTP: true})
		env := envelope("a@example.com", "b@example.com", "c@example.com")
		err := d.Deliver(context.Background(), env, body())
		checkOutcomes(t, env, host, err, map[string]outcome{
			"a@example.com": delivered,
			"b@example.com": {maybe: true, command: "end of data"},
			"c@example.com": {maybe: true, command: "end of data"},
		})
	})
}

func TestContext(t *testing.T) {
	blockIn := func(t *testing.T, be *backend, stage string) chan struct{} {
		entered := make(chan struct{}, 1)
		release := blocker(t)
		wait := func() {
			entered <- struct{}{}
			<-release
		}
		switch stage {
		case "rcpt":
			be.rcpt = func(string, *smtp.RcptOptions) error { wait(); return nil }
		case "data":
			be.data = func(*smtp.Conn, *message) error { wait(); return nil }
		}
		return entered
	}
	tests := []struct {
		name  string
		stage string
		want  outcome
		cause error
	}{
		// Pipelined, the reply to MAIL FROM may not have been read yet
		// when the server blocks in RCPT: either command is named.
		{"cancelled during RCPT", "rcpt", outcome{command: "RCPT TO|MAIL FROM"}, context.Canceled},
		{"cancelled waiting for the final reply", "data", outcome{maybe: true, command: "end of data"}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			be := newBackend()
			entered := blockIn(t, be, tt.stage)
			srv := startServer(t, be, nil, nil)
			d := newDeliverer(t, smtpout.Options{Addr: srv.addr, CommandTimeout: time.Minute, DataTimeout: time.Minute})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				<-entered
				cancel()
			}()
			env := envelope("a@example.com")
			start := time.Now()
			err := d.Deliver(ctx, env, body())
			assert.Less(t, time.Since(start), 10*time.Second)
			checkOutcomes(t, env, host, err, map[string]outcome{"a@example.com": tt.want})
			assert.ErrorIs(t, err, tt.cause)
			require.NoError(t, d.Close())
			requireNoLeak(t)
		})
	}
	t.Run("deadline during RCPT", func(t *testing.T) {
		be := newBackend()
		blockIn(t, be, "rcpt")
		srv := startServer(t, be, nil, nil)
		d := newDeliverer(t, smtpout.Options{Addr: srv.addr, CommandTimeout: time.Minute})
		env := envelope("a@example.com")
		start := time.Now()
		err := d.Deliver(withTimeout(t, 200*time.Millisecond), env, body())
		assert.Less(t, time.Since(start), 10*time.Second)
		checkOutcomes(t, env, host, err, map[string]outcome{"a@example.com": {command: "RCPT TO"}})
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	})
	t.Run("already cancelled", func(t *testing.T) {
		srv := startServer(t, newBackend(), nil, nil)
		d := newDeliverer(t, smtpout.Options{Addr: srv.addr})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := d.Deliver(ctx, envelope("a@example.com"), body())
		assert.ErrorIs(t, err, context.Canceled)
		assert.Zero(t, srv.ln.accepted())
	})
}

// TestResetBeforeFinalDot: a connection reset before the final "." could
// leave is a plain temporary failure, not a maybe-delivered one.
func TestResetBeforeFinalDot(t *testing.T) {
	addr := startRaw(t, rawScript{ehlo: []string{"8BITMIME"}, resetOnData: true})
	d := newDeliverer(t, smtpout.Options{Addr: addr})
	notSent := 0
	for range 5 {
		env := envelope("a@example.com")
		err := d.Deliver(context.Background(), env, body())
		de := resilmail.Outcomes(env.Recipients(), err)["a@example.com"]
		require.NotNil(t, de)
		assert.False(t, de.Permanent, "%v", de)
		if de.MaybeDelivered {
			// The reset arrived after the "." left: the server could
			// have had the message.
			assert.Equal(t, "end of data", de.Command)
		} else {
			assert.Contains(t, []string{"DATA", "end of data"}, de.Command, "%v", de)
			notSent++
		}
	}
	// On loopback the reset is there before the "." is written.
	assert.NotZero(t, notSent)
}

// endless is a message that never ends.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
		if i%78 == 77 {
			p[i] = '\n'
		}
	}
	return len(p), nil
}

// failingReader fails after its content.
type failingReader struct{ s *strings.Reader }

func (r *failingReader) Read(p []byte) (int, error) {
	n, err := r.s.Read(p)
	if err != nil {
		return n, errors.New("disk on fire")
	}
	return n, nil
}

func TestBodyReadError(t *testing.T) {
	srv := startServer(t, newBackend(), nil, nil)
	d := newDeliverer(t, smtpout.Options{Addr: srv.addr})
	env := envelope("a@example.com")
	err := d.Deliver(context.Background(), env, &failingReader{strings.NewReader(testBody)})
	checkOutcomes(t, env, host, err, map[string]outcome{"a@example.com": {command: "DATA"}})
	assert.ErrorContains(t, err, "disk on fire")
	srv.be.waitLogouts(t, 1)
	assert.Empty(t, srv.be.messages(), "a truncated message was accepted")
}

func TestOptions(t *testing.T) {
	for _, opts := range []smtpout.Options{
		{Addr: "no-port"},
		{LocalName: "two words"},
		{TLS: smtpout.TLSMode(42)},
		{CommandTimeout: -1},
		{MaxPerConn: -1},
	} {
		_, err := smtpout.New(&opts)
		assert.Error(t, err, "%+v", opts)
	}
	d, err := smtpout.New(nil)
	require.NoError(t, err)
	assert.Error(t, d.Deliver(context.Background(), envelope("a@example.com"), body()))
	assert.Error(t, d.DeliverTo(context.Background(), "no-port", envelope("a@example.com"), body()))
	assert.Error(t, d.DeliverTo(context.Background(), "127.0.0.1:25", envelope(), body()))
	require.NoError(t, d.Close())
}
