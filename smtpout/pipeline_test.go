package smtpout_test

import (
	"context"
	"errors"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/smtpout"
)

// A recScript drives a recording server: it answers as scripted and keeps
// every chunk the client's writes arrived in.
type recScript struct {
	lmtp bool
	ehlo []string // extensions announced
	// mail answers MAIL FROM; "" is "250 2.1.0 ok".
	mail string
	// rcpt answers RCPT TO; nil or "" is "250 2.1.5 ok". A reply
	// starting with "421" closes the session after it.
	rcpt func(addr string) string
	// end answers the end of a message, one reply per line (LMTP: per
	// accepted recipient); nil is "250 2.0.0 ok". A nil slice from end
	// closes the session without a reply.
	end func(rcpts []string) []string
}

// A recorder is a scripted SMTP/LMTP server that records what arrives.
type recorder struct {
	addr string

	mu       sync.Mutex
	chunks   []string // each Read of the server, in order
	lines    []string // commands
	bodies   []string // messages received, as on the wire (dot-stuffed)
	sessions int
}

func (r *recorder) snapshot() (chunks, lines, bodies []string, sessions int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.chunks...), append([]string(nil), r.lines...), append([]string(nil), r.bodies...), r.sessions
}

// recConn records the chunks its reads return.
type recConn struct {
	net.Conn
	r *recorder
}

func (c recConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.r.mu.Lock()
		c.r.chunks = append(c.r.chunks, string(p[:n]))
		c.r.mu.Unlock()
	}
	return n, err
}

func startRecorder(t testing.TB, sc recScript) *recorder {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r := &recorder{addr: l.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			r.mu.Lock()
			r.sessions++
			r.mu.Unlock()
			wg.Go(func() { r.serve(recConn{c, r}, sc) })
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return r
}

func (r *recorder) serve(c net.Conn, sc recScript) {
	defer c.Close()
	tp := textproto.NewConn(c)
	tp.PrintfLine("220 rec.test ESMTP")
	var rcpts []string
	mailOK := false
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.lines = append(r.lines, line)
		r.mu.Unlock()
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO", "LHLO":
			lines := append([]string{"rec.test"}, sc.ehlo...)
			for i, l := range lines {
				sep := "-"
				if i == len(lines)-1 {
					sep = " "
				}
				tp.PrintfLine("250%s%s", sep, l)
			}
		case "MAIL":
			rcpts = nil
			if sc.mail != "" {
				tp.PrintfLine("%s", sc.mail)
				continue
			}
			mailOK = true
			tp.PrintfLine("250 2.1.0 ok")
		case "RCPT":
			if !mailOK {
				tp.PrintfLine("503 5.5.1 need MAIL")
				continue
			}
			addr := arg
			if i, j := strings.Index(arg, "<"), strings.Index(arg, ">"); 0 <= i && i < j {
				addr = arg[i+1 : j]
			}
			reply := ""
			if sc.rcpt != nil {
				reply = sc.rcpt(addr)
			}
			if reply == "" {
				rcpts = append(rcpts, addr)
				reply = "250 2.1.5 ok"
			}
			tp.PrintfLine("%s", reply)
			if strings.HasPrefix(reply, "421") {
				return
			}
		case "DATA":
			if len(rcpts) == 0 {
				if mailOK {
					tp.PrintfLine("554 5.5.1 Error: no valid recipients")
				} else {
					tp.PrintfLine("503 5.5.1 need MAIL")
				}
				continue
			}
			tp.PrintfLine("354 go ahead")
			var b strings.Builder
			for {
				l, err := tp.R.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				b.WriteString(l)
			}
			r.mu.Lock()
			r.bodies = append(r.bodies, b.String())
			r.mu.Unlock()
			mailOK = false
			replies := []string{"250 2.0.0 ok"}
			if sc.lmtp {
				replies = replies[:0]
				for range rcpts {
					replies = append(replies, "250 2.0.0 ok")
				}
			}
			if sc.end != nil {
				replies = sc.end(rcpts)
			}
			if replies == nil {
				return
			}
			for _, l := range replies {
				tp.PrintfLine("%s", l)
			}
		case "RSET":
			rcpts, mailOK = nil, false
			tp.PrintfLine("250 2.0.0 ok")
		case "NOOP":
			tp.PrintfLine("250 2.0.0 ok")
		case "QUIT":
			tp.PrintfLine("221 2.0.0 bye")
			return
		default:
			tp.PrintfLine("502 5.5.1 not implemented")
		}
	}
}

// transactionChunks returns the chunks from the first MAIL FROM on.
func transactionChunks(chunks []string) []string {
	for i, c := range chunks {
		if strings.HasPrefix(c, "MAIL FROM:") {
			return chunks[i:]
		}
	}
	return nil
}

func TestPipelinedGroupOnTheWire(t *testing.T) {
	const group = "MAIL FROM:<sender@example.net>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
	body := "Subject: dots\r\n\r\n.leading dot\r\nlast line without CRLF"
	const wireBody = "Subject: dots\r\n\r\n..leading dot\r\nlast line without CRLF\r\n.\r\n"

	for _, tt := range []struct {
		name    string
		ehlo    []string
		lmtp    bool
		disable bool
		want    []string // the chunks from MAIL FROM on, the body last
	}{
		{name: "PIPELINING", ehlo: []string{"PIPELINING", "8BITMIME"},
			want: []string{strings.Replace(group, ">\r\n", "> BODY=8BITMIME\r\n", 1), wireBody}},
		{name: "no PIPELINING", ehlo: []string{"8BITMIME"},
			want: []string{"MAIL FROM:<sender@example.net> BODY=8BITMIME\r\n", "RCPT TO:<a@example.com>\r\n", "RCPT TO:<b@example.com>\r\n", "DATA\r\n", wireBody}},
		{name: "PIPELINING disabled", ehlo: []string{"PIPELINING"}, disable: true,
			want: []string{"MAIL FROM:<sender@example.net>\r\n", "RCPT TO:<a@example.com>\r\n", "RCPT TO:<b@example.com>\r\n", "DATA\r\n", wireBody}},
		{name: "LMTP pipelines without PIPELINING", lmtp: true, want: []string{group, wireBody}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := startRecorder(t, recScript{ehlo: tt.ehlo, lmtp: tt.lmtp})
			d := newDeliverer(t, smtpout.Options{Addr: rec.addr, LMTP: tt.lmtp})
			if tt.disable {
				smtpout.DisablePipelining(d)
			}
			want := tt.want
			for range 2 { // the second time over the pooled session
				require.NoError(t, d.Deliver(context.Background(), envelope("a@example.com", "b@example.com"), strings.NewReader(body)))
				chunks, _, _, _ := rec.snapshot()
				got := transactionChunks(chunks)
				assert.Equal(t, want, got)
				rec.mu.Lock()
				rec.chunks = nil
				rec.mu.Unlock()
			}
			_, _, _, sessions := rec.snapshot()
			assert.Equal(t, 1, sessions)
		})
	}
}

// TestParametersAsGoSMTP: MAIL FROM and RCPT TO carry, byte for byte, the
// parameters go-smtp's client sends for the same envelope.
func TestParametersAsGoSMTP(t *testing.T) {
	for _, utf8 := range []bool{true, false} {
		ehlo := []string{"PIPELINING", "8BITMIME", "SIZE 100000", "DSN"}
		if utf8 {
			ehlo = append(ehlo, "SMTPUTF8")
		}
		rec := startRecorder(t, recScript{ehlo: ehlo})
		env := envelope()
		env.Size = 1234
		env.Return = resilmail.ReturnHeaders
		env.EnvID = "env+id=1 x"
		env.SMTPUTF8 = utf8
		env.To = []resilmail.Recipient{
			{Addr: "a@example.com", Notify: resilmail.NotifySuccess | resilmail.NotifyFailure | resilmail.NotifyDelay, ORCPT: "rfc822;a+b=c@example.org"},
			{Addr: "b@example.com", Notify: resilmail.NotifyNever, ORCPT: "utf-8;jos\u00e9 x@example.org"},
			{Addr: "c@example.com", ORCPT: "rfc822;z\u00fc@example.org"},
			{Addr: "d@example.com"},
		}
		d := newDeliverer(t, smtpout.Options{Addr: rec.addr})
		require.NoError(t, d.Deliver(context.Background(), env, body()))
		require.NoError(t, d.Close())
		_, ours, _, _ := rec.snapshot()

		// go-smtp's client, with the options smtpout used to give it.
		c, err := smtp.Dial(rec.addr)
		require.NoError(t, err)
		require.NoError(t, c.Hello("client.test"))
		require.NoError(t, c.Mail(env.From, &smtp.MailOptions{Size: env.Size, Return: smtp.DSNReturnHeaders, EnvelopeID: env.EnvID, UTF8: utf8}))
		for _, o := range []smtp.RcptOptions{
			{Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed}, OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "a+b=c@example.org"},
			{Notify: []smtp.DSNNotify{smtp.DSNNotifyNever}, OriginalRecipientType: smtp.DSNAddressTypeUTF8, OriginalRecipient: "jos\u00e9 x@example.org"},
			{OriginalRecipientType: smtp.DSNAddressTypeUTF8, OriginalRecipient: "z\u00fc@example.org"},
			{},
		} {
			require.NoError(t, c.Rcpt("x", &o))
		}
		require.NoError(t, c.Quit())
		_, all, _, _ := rec.snapshot()
		theirs := all[len(ours):]

		pick := func(lines []string) []string {
			var out []string
			for _, l := range lines {
				if strings.HasPrefix(l, "MAIL ") || strings.HasPrefix(l, "RCPT ") {
					// The addresses differ; the parameters must not.
					if i := strings.Index(l, ">"); i >= 0 {
						l = l[:5] + l[i:]
					}
					out = append(out, l)
				}
			}
			return out
		}
		assert.Equal(t, pick(theirs), pick(ours), "SMTPUTF8 %v", utf8)
		t.Logf("%q", pick(ours))
	}
}

func TestPipelinedReplies(t *testing.T) {
	pipelining := []string{"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"}
	t.Run("mixed RCPT results", func(t *testing.T) {
		rec := startRecorder(t, recScript{ehlo: pipelining, rcpt: func(addr string) string {
			switch addr {
			case "gone@example.com":
				return "550 5.1.1 no such user"
			case "busy@example.com":
				return "450 4.2.1 try later"
			case "many@example.com":
				return "552 5.5.3 too many recipients"
			}
			return ""
		}})
		d := newDeliverer(t, smtpout.Options{Addr: rec.addr})
		env := envelope("a@example.com", "gone@example.com", "busy@example.com", "many@example.com", "b@example.com")
		err := d.Deliver(context.Background(), env, body())
		checkOutcomes(t, env, host, err, map[string]outcome{
			"a@example.com":    delivered,
			"gone@example.com": {permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"},
			"busy@example.com": {command: "RCPT TO", code: 450, enhanced: "4.2.1"},
			"many@example.com": {command: "RCPT TO", code: 552, enhanced: "5.5.3"},
			"b@example.com":    delivered,
		})
		_, _, bodies, _ := rec.snapshot()
		assert.Equal(t, []string{testBody}, bodies)
	})

	t.Run("every RCPT refused", func(t *testing.T) {
		rec := startRecorder(t, recScript{ehlo: pipelining, rcpt: func(addr string) string {
			if strings.HasPrefix(addr, "bad") {
				return "550 5.1.1 no such user"
			}
			return ""
		}})
		d := newDeliverer(t, smtpout.Options{Addr: rec.addr})
		env := envelope("bad1@example.com", "bad2@example.com")
		err := d.Deliver(context.Background(), env, body())
		checkOutcomes(t, env, host, err, map[string]outcome{
			"bad1@example.com": {permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"},
			"bad2@example.com": {permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"},
		})
		_, lines, bodies, _ := rec.snapshot()
		assert.Empty(t, bodies, "a message was sent")
		assert.Equal(t, "RSET", lines[len(lines)-1], "the transaction is reset")
		// The session carries the next message, without another EHLO.
		require.NoError(t, d.Deliver(context.Background(), envelope("a@example.com"), body()))
		_, lines, bodies, sessions := rec.snapshot()
		assert.Len(t, bodies, 1)
		assert.Equal(t, 1, sessions)
		ehlos := 0
		for _, l := range lines {
			if strings.HasPrefix(l, "EHLO") {
				ehlos++
			}
		}
		assert.Equal(t, 1, ehlos)
	})

	t.Run("MAIL FROM refused", func(t *testing.T) {
		rec := startRecorder(t, recScript{ehlo: pipelining, mail: "550 5.7.1 sender blocked"})
		d := newDeliverer(t, smtpout.Options{Addr: rec.addr})
		env := envelope("a@example.com", "b@example.com")
		err := d.Deliver(context.Background(), env, body())
		checkOutcomes(t, env, host, err, map[string]outcome{
			"a@example.com": {permanent: true, command: "MAIL FROM", code: 550, enhanced: "5.7.1"},
			"b@example.com": {permanent: true, command: "MAIL FROM", code: 550, enhanced: "5.7.1"},
		})
		des := deliveryErrors(err)
		require.Len(t, des, 1, "one general error: %v", err)
		// The RCPT and DATA replies were read: the session goes on.
		err = d.Deliver(context.Background(), envelope("c@example.com"), body())
		checkOutcomes(t, envelope("c@example.com"), host, err, map[string]outcome{
			"c@example.com": {permanent: true, command: "MAIL FROM", code: 550, enhanced: "5.7.1"},
		})
		_, _, bodies, sessions := rec.snapshot()
		assert.Empty(t, bodies)
		assert.Equal(t, 1, sessions)
	})

	t.Run("421 in the middle of the group", func(t *testing.T) {
		rec := startRecorder(t, recScript{ehlo: pipelining, rcpt: func(addr string) string {
			switch addr {
			case "bad@example.com":
				return "550 5.1.1 no such user"
			case "c@example.com":
				return "421 4.3.2 shutting down"
			}
			return ""
		}})
		d := newDeliverer(t, smtpout.Options{Addr: rec.addr})
		env := envelope("a@example.com", "bad@example.com", "c@example.com", "d@example.com")
		err := d.Deliver(context.Background(), env, body())
		checkOutcomes(t, env, host, err, map[string]outcome{
			"a@example.com":   {command: "RCPT TO", code: 421, enhanced: "4.3.2"},
			"bad@example.com": {permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"},
			"c@example.com":   {command: "RCPT TO", code: 421, enhanced: "4.3.2"},
			"d@example.com":   {command: "RCPT TO", code: 421, enhanced: "4.3.2"},
		})
		// The session was dropped: the next message opens another.
		require.NoError(t, d.Deliver(context.Background(), envelope("a@example.com"), body()))
		_, _, bodies, sessions := rec.snapshot()
		assert.Len(t, bodies, 1)
		assert.Equal(t, 2, sessions)
	})

	t.Run("final reply lost", func(t *testing.T) {
		rec := startRecorder(t, recScript{ehlo: pipelining,
			rcpt: func(addr string) string {
				if addr == "bad@example.com" {
					return "550 5.1.1 no such user"
				}
				return ""
			},
			end: func([]string) []string { return nil }})
		d := newDeliverer(t, smtpout.Options{Addr: rec.addr})
		env := envelope("a@example.com", "bad@example.com", "b@example.com")
		err := d.Deliver(context.Background(), env, body())
		checkOutcomes(t, env, host, err, map[string]outcome{
			"a@example.com":   {maybe: true, command: "end of data"},
			"bad@example.com": {permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"},
			"b@example.com":   {maybe: true, command: "end of data"},
		})
	})

	t.Run("LMTP replies per recipient", func(t *testing.T) {
		rec := startRecorder(t, recScript{lmtp: true, ehlo: []string{"8BITMIME", "ENHANCEDSTATUSCODES"},
			rcpt: func(addr string) string {
				if addr == "bad@example.com" {
					return "550 5.1.1 no such user"
				}
				return ""
			},
			end: func(rcpts []string) []string {
				var out []string
				for _, r := range rcpts {
					switch r {
					case "full@example.com":
						out = append(out, "452 4.2.2 mailbox full")
					case "gone@example.com":
						out = append(out, "550 5.1.1 gone since the RCPT")
					default:
						out = append(out, "250 2.0.0 delivered")
					}
				}
				return out
			}})
		d := newDeliverer(t, smtpout.Options{Addr: rec.addr, LMTP: true})
		env := envelope("a@example.com", "bad@example.com", "full@example.com", "gone@example.com", "b@example.com")
		err := d.Deliver(context.Background(), env, body())
		checkOutcomes(t, env, host, err, map[string]outcome{
			"a@example.com":    delivered,
			"bad@example.com":  {permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"},
			"full@example.com": {command: "end of data", code: 452, enhanced: "4.2.2"},
			"gone@example.com": {permanent: true, command: "end of data", code: 550, enhanced: "5.1.1"},
			"b@example.com":    delivered,
		})
		// Every reply was read: the session carries the next message.
		require.NoError(t, d.Deliver(context.Background(), envelope("a@example.com"), body()))
		_, _, _, sessions := rec.snapshot()
		assert.Equal(t, 1, sessions)
	})

	t.Run("more recipients than the window", func(t *testing.T) {
		rec := startRecorder(t, recScript{ehlo: pipelining, rcpt: func(addr string) string {
			if strings.HasPrefix(addr, "bad") {
				return "550 5.1.1 no such user"
			}
			return ""
		}})
		d := newDeliverer(t, smtpout.Options{Addr: rec.addr})
		var rcpts []string
		want := map[string]outcome{}
		for i := range 250 {
			r := "r" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + "@example.com"
			r = strings.Replace(r, "@", "-"+itoa(i)+"@", 1)
			if i%3 == 0 {
				r = "bad" + r
				want[r] = outcome{permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"}
			} else {
				want[r] = delivered
			}
			rcpts = append(rcpts, r)
		}
		env := envelope(rcpts...)
		err := d.Deliver(context.Background(), env, body())
		checkOutcomes(t, env, host, err, want)
		_, _, bodies, _ := rec.snapshot()
		assert.Len(t, bodies, 1)
	})
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

// failingFinal is a connection whose write of the final "." fails, as when
// the peer resets the connection under it.
type failingFinal struct {
	net.Conn
}

func (c failingFinal) Write(p []byte) (int, error) {
	if strings.HasSuffix(string(p), "\r\n.\r\n") {
		c.Conn.Close()
		return 0, errors.New("connection reset by peer (test)")
	}
	return c.Conn.Write(p)
}

// TestFinalFlushFails: a message whose final write fails is not
// maybe-delivered; one whose final write left and whose reply is lost is
// (see "final reply lost").
func TestFinalFlushFails(t *testing.T) {
	for _, size := range []int{len(testBody), 200 << 10} {
		rec := startRecorder(t, recScript{ehlo: []string{"PIPELINING"}})
		d := newDeliverer(t, smtpout.Options{Addr: rec.addr, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var nd net.Dialer
			c, err := nd.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return failingFinal{c}, nil
		}})
		msg := testBody
		for len(msg) < size {
			msg += ".dotted line " + strings.Repeat("x", 60) + "\r\n"
		}
		env := envelope("a@example.com", "b@example.com")
		err := d.Deliver(context.Background(), env, strings.NewReader(msg))
		checkOutcomes(t, env, host, err, map[string]outcome{
			"a@example.com": {command: "end of data"},
			"b@example.com": {command: "end of data"},
		})
	}
}

// TestLargeMessage: a message larger than the output buffer, with dots at
// the start of lines, arrives whole.
func TestLargeMessage(t *testing.T) {
	srv := startServer(t, newBackend(), nil, nil)
	d := newDeliverer(t, smtpout.Options{Addr: srv.addr})
	var b strings.Builder
	b.WriteString("Subject: large\r\n\r\n")
	for i := 0; b.Len() < 300<<10; i++ {
		if i%5 == 0 {
			b.WriteString(".")
		}
		b.WriteString(strings.Repeat("y", i%100) + "\r\n")
	}
	require.NoError(t, d.Deliver(context.Background(), envelope("a@example.com"), strings.NewReader(b.String())))
	msgs := srv.be.messages()
	require.Len(t, msgs, 1)
	assert.Equal(t, b.String(), msgs[0].Body)
}
