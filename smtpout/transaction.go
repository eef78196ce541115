package smtpout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
)

// A txn is a mail transaction ready to be sent: the envelope checked and
// its parameters translated; how they are written depends on what the
// server offers (see mailLine and rcptLine).
type txn struct {
	env   *resilmail.Envelope
	utf8  bool // the message needs SMTPUTF8
	ret   string
	envID string // printable ASCII, or empty
	rcpts []rcptParams
}

// rcptParams is a recipient worth a RCPT, with its DSN parameters.
type rcptParams struct {
	addr      string
	notify    string // "SUCCESS,FAILURE", "NEVER", or empty
	orcptType smtp.DSNAddressType
	orcpt     string // decoded; empty for none
}

// prepare checks what can be checked before connecting. It returns the
// transaction to send, or nil when there is nothing to send, and the
// failures already known: refusals that no server could change.
func (d *Deliverer) prepare(host string, env *resilmail.Envelope) (*txn, []error) {
	if env.Body == resilmail.BodyBinaryMIME {
		return nil, []error{refusal(host, cmdMail, "5.6.3",
			"BINARYMIME bodies need BDAT (RFC 3030), which this client does not speak")}
	}
	if env.From != "" {
		if err := resilmail.CheckAddress(env.From); err != nil {
			return nil, []error{refusal(host, cmdMail, "5.1.7", "bad sender address: "+err.Error())}
		}
	}
	tx := &txn{env: env, utf8: env.SMTPUTF8 || !isASCII(env.From)}
	switch env.Return {
	case "", resilmail.ReturnFull, resilmail.ReturnHeaders:
		tx.ret = string(env.Return)
	default:
		d.log.Debug("smtpout: unknown RET value, not sent", "msg_id", env.ID)
	}
	if isPrintableASCII(env.EnvID) {
		tx.envID = env.EnvID
	} else {
		d.log.Debug("smtpout: ENVID is not printable ASCII, not sent", "msg_id", env.ID)
	}
	var errs []error
	for _, r := range env.To {
		if err := resilmail.CheckAddress(r.Addr); err != nil {
			errs = append(errs, forRecipient(refusal(host, cmdRcpt, "5.1.3", "bad recipient address: "+err.Error()), r.Addr))
			continue
		}
		if !isASCII(r.Addr) {
			tx.utf8 = true
		}
		tx.rcpts = append(tx.rcpts, d.rcptParams(env, r))
	}
	if len(tx.rcpts) == 0 {
		return nil, errs
	}
	return tx, errs
}

// rcptParams translates a recipient's DSN parameters (RFC 3461 §4.1,
// §4.2). They are sent only to servers that offer DSN.
func (d *Deliverer) rcptParams(env *resilmail.Envelope, r resilmail.Recipient) rcptParams {
	p := rcptParams{addr: r.Addr}
	switch {
	case r.Notify&resilmail.NotifyNever != 0:
		p.notify = string(smtp.DSNNotifyNever)
	default:
		for _, k := range []struct {
			bit resilmail.Notify
			kw  smtp.DSNNotify
		}{
			{resilmail.NotifySuccess, smtp.DSNNotifySuccess},
			{resilmail.NotifyFailure, smtp.DSNNotifyFailure},
			{resilmail.NotifyDelay, smtp.DSNNotifyDelayed},
		} {
			if r.Notify&k.bit != 0 {
				if p.notify != "" {
					p.notify += ","
				}
				p.notify += string(k.kw)
			}
		}
	}
	if r.ORCPT != "" {
		typ, addr, ok := strings.Cut(r.ORCPT, ";")
		switch {
		case !ok || addr == "":
			d.log.Debug("smtpout: malformed ORCPT, not sent", "msg_id", env.ID, "rcpt", r.Addr)
		case strings.EqualFold(typ, "rfc822") && isPrintableASCII(addr):
			p.orcptType, p.orcpt = smtp.DSNAddressTypeRFC822, addr
		case strings.EqualFold(typ, "rfc822"), strings.EqualFold(typ, "utf-8"):
			// RFC 6533 §3: a non-ASCII address travels as utf-8-addr.
			p.orcptType, p.orcpt = smtp.DSNAddressTypeUTF8, addr
		default:
			d.log.Debug("smtpout: ORCPT address type not supported, not sent", "msg_id", env.ID, "rcpt", r.Addr)
		}
	}
	return p
}

// A result is what one transaction on one session came to.
type result struct {
	errs  []error // per-recipient DeliveryErrors and at most one general one
	keep  bool    // the session can carry another transaction
	clean bool    // no transaction is open (else RSET before reuse)

	// dead is set when a reused session failed before anything of the
	// message was sent: the caller may retry on a new connection, or
	// report errs.
	dead bool
}

// pipelineWindow bounds the commands written before their replies are
// read, so that neither side can block writing while the other does (RFC
// 2920 §3.2: the client must not deadlock on a full window). A recipient
// list longer than that goes out in several groups; DATA ends the last.
const pipelineWindow = 100

// send runs one mail transaction on cn.
//
// With PIPELINING (always with LMTP, RFC 2033 §4.2) MAIL FROM, the RCPTs
// and DATA leave in one write and their replies are read in order (RFC
// 2920 §3.1); without it, one command at a time. The message then leaves,
// dot-stuffed, through a buffer of bodyBufSize bytes with the final ".":
// as a rule, in one write.
func (d *Deliverer) send(ctx context.Context, cn *conn, tx *txn, body io.Reader, reused bool) result {
	host := cn.host
	general := func(err error, cmd string, keep, clean bool) result {
		return result{errs: []error{failure(ctx, host, cmd, err)}, keep: keep && !sessionLost(err), clean: clean}
	}

	// Refusals that retrying cannot fix: the server cannot carry this
	// message, whatever it would answer.
	env := tx.env
	var refused *resilmail.DeliveryError
	if tx.utf8 && !cn.ext.smtpUTF8 {
		refused = refusal(host, cmdMail, "5.6.7", "the message needs SMTPUTF8 and the server does not offer it")
	} else if env.Body == resilmail.Body8BitMIME && !cn.ext.eightBit {
		refused = refusal(host, cmdMail, "5.6.3", "the message has an 8-bit body and the server does not offer 8BITMIME")
	} else if limit := cn.ext.sizeLimit; limit > 0 && env.Size > int64(limit) {
		refused = refusal(host, cmdMail, "5.3.4",
			fmt.Sprintf("message size %d exceeds the server's limit of %d", env.Size, limit))
	}
	if refused != nil {
		return result{errs: []error{refused}, keep: true, clean: true}
	}

	bufs := d.getBufs()
	defer d.bufs.Put(bufs)
	o := &out{buf: bufs.w[:0], d: d, ctx: ctx, cn: cn}

	cn.msgs++
	window := 1
	if (cn.ext.pipelining && !d.noPipelining) || d.opts.LMTP {
		window = pipelineWindow
	}
	n := len(tx.rcpts)
	// Commands are numbered 0 (MAIL FROM), 1..n (RCPT TO), n+1 (DATA);
	// replies up to next-1 have been read.
	next := 0
	var errs []error
	accepted := make([]string, 0, n)
	for k := 0; k <= n+1; k++ {
		switch {
		case k == 0:
			o.mailLine(tx)
		case k <= n:
			o.rcptLine(&tx.rcpts[k-1])
		default:
			if next == k && len(accepted) == 0 {
				// One at a time, and every RCPT was refused: no DATA.
				return result{errs: errs, keep: true}
			}
			o.writeString("DATA\r\n")
		}
		if k <= n && k+1-next < window {
			continue
		}
		if err := o.flush(); err != nil {
			// Nothing of the group can be known to have arrived: the
			// first command without a reply fails, with the session.
			r := general(err, stepCommand(next, n), false, false)
			r.errs = append(errs, r.errs...)
			r.dead = reused && next == 0 && !isTimeout(err)
			return r
		}
		for ; next <= k; next++ {
			switch {
			case next == 0:
				err := d.readReply(ctx, cn, 250, d.opts.CommandTimeout)
				if err == nil {
					continue
				}
				if sessionLost(err) {
					// Pipelined, a reply not read is that of MAIL FROM,
					// whichever command the server is busy with.
					r := general(err, cmdMail, false, false)
					r.dead = reused && !isTimeout(err)
					return r
				}
				// The replies to what was sent with MAIL FROM are
				// refusals too (RFC 2920 §3.1); read them, so that the
				// session can go on.
				keep := d.drain(ctx, cn, k-next, k == n+1)
				return general(err, cmdMail, keep, true)
			case next <= n:
				rcpt := tx.rcpts[next-1].addr
				err := d.readReply(ctx, cn, 25, d.opts.CommandTimeout)
				if err == nil {
					accepted = append(accepted, rcpt)
					continue
				}
				if sessionLost(err) {
					// Every recipient not refused yet fails with the
					// session.
					return result{errs: append(errs, failure(ctx, host, cmdRcpt, err))}
				}
				de := forRecipient(failure(ctx, host, cmdRcpt, err), rcpt)
				if de.Code == 552 {
					// RFC 5321 §4.5.3.1.10: "too many recipients" was
					// 552 in RFC 821; clients treat it as temporary.
					de.Permanent = false
				}
				errs = append(errs, de)
			default:
				err := d.readReply(ctx, cn, 354, d.opts.CommandTimeout)
				if len(accepted) == 0 {
					// Pipelined, and every RCPT was refused: the server
					// refuses DATA (RFC 2920 §3.1). A server that wants
					// the message anyway gets no "." but a dropped
					// connection.
					return result{errs: errs, keep: err != nil && !sessionLost(err)}
				}
				if err != nil {
					r := general(err, cmdData, true, false)
					r.errs = append(errs, r.errs...)
					return r
				}
			}
		}
	}

	if err := copyBody(o, body, bufs.r[:]); err != nil {
		// The final "." must not be sent: the server would take a
		// truncated message. The session cannot go on.
		var re *readError
		de := failure(ctx, host, cmdData, err)
		if errors.As(err, &re) {
			de = &resilmail.DeliveryError{Host: host, Command: cmdData,
				Message: "reading the message: " + re.err.Error(), Err: re.err}
		}
		return result{errs: append(errs, de)}
	}

	cn.wire.watch()
	if err := o.flush(); err != nil || cn.wire.lost {
		// The final "." did not leave: no server can have the message.
		if err == nil {
			err = errors.New("smtpout: write of the final \".\" failed")
		}
		return result{errs: append(errs, failure(ctx, host, cmdEndOfData, err))}
	}
	if d.opts.LMTP {
		return d.endLMTP(ctx, cn, accepted, errs)
	}
	err := d.readReply(ctx, cn, 250, d.opts.DataTimeout)
	switch {
	case err == nil:
		if !cn.ext.dsn {
			for _, rcpt := range accepted {
				resilmail.ReportRelayed(ctx, rcpt)
			}
		}
		return result{errs: errs, keep: true, clean: true}
	case isReply(err):
		// A reply: the transaction is over (RFC 5321 §4.1.1.4).
		r := general(err, cmdEndOfData, true, true)
		r.errs = append(errs, r.errs...)
		return r
	}
	for _, rcpt := range accepted {
		errs = append(errs, maybeDelivered(ctx, host, rcpt, err))
	}
	return result{errs: errs}
}

// stepCommand names command k of a transaction with n recipients.
func stepCommand(k, n int) string {
	switch {
	case k == 0:
		return cmdMail
	case k <= n:
		return cmdRcpt
	}
	return cmdData
}

// drain reads the replies to m commands sent after a refused MAIL FROM,
// the last of them DATA if withData, and reports whether the session can
// go on: every reply read, none of them 421, and DATA refused.
func (d *Deliverer) drain(ctx context.Context, cn *conn, m int, withData bool) bool {
	for i := range m {
		expect := 25
		if withData && i == m-1 {
			expect = 354
		}
		err := d.readReply(ctx, cn, expect, d.opts.CommandTimeout)
		if (err == nil && expect == 354) || (err != nil && sessionLost(err)) {
			return false
		}
	}
	return true
}

// readReply reads one reply, waiting at most timeout (capped by ctx): nil
// if its code is expect (see [textproto.Reader.ReadResponse]), an
// *smtp.SMTPError if it is another, an I/O or protocol error otherwise.
func (d *Deliverer) readReply(ctx context.Context, cn *conn, expect int, timeout time.Duration) error {
	cn.top.SetReadDeadline(time.Now().Add(capTimeout(ctx, timeout)))
	code, msg, err := cn.tr.ReadResponse(expect)
	if _, ok := err.(*textproto.Error); ok {
		return parseReply(code, msg)
	}
	return err
}

// rset aborts the transaction (RFC 5321 §4.1.1.5) on the session's own
// reader and writer: go-smtp's Reset would make its client say EHLO again.
func (d *Deliverer) rset(ctx context.Context, cn *conn) error {
	d.setWriteDeadline(ctx, cn)
	if _, err := io.WriteString(cn.top, "RSET\r\n"); err != nil {
		return err
	}
	return d.readReply(ctx, cn, 250, d.opts.CommandTimeout)
}

// endLMTP reads one reply per accepted recipient (RFC 2033 §4.2).
func (d *Deliverer) endLMTP(ctx context.Context, cn *conn, accepted []string, errs []error) result {
	keep := true
	for i, rcpt := range accepted {
		err := d.readReply(ctx, cn, 250, d.opts.DataTimeout)
		if err == nil {
			if !cn.ext.dsn {
				resilmail.ReportRelayed(ctx, rcpt)
			}
			continue
		}
		if se, ok := asReply(err); ok {
			errs = append(errs, forRecipient(replyError(cn.host, cmdEndOfData, se), rcpt))
			if se.Code == 421 {
				keep = false
			}
			continue
		}
		for _, rcpt := range accepted[i:] {
			errs = append(errs, maybeDelivered(ctx, cn.host, rcpt, err))
		}
		return result{errs: errs}
	}
	return result{errs: errs, keep: keep, clean: true}
}

func maybeDelivered(ctx context.Context, host, rcpt string, err error) error {
	de := forRecipient(failure(ctx, host, cmdEndOfData, err), rcpt)
	de.MaybeDelivered = true
	return de
}

// isTimeout reports whether err is a timeout: a slow server, not a
// pooled session found dead.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isReply(err error) bool {
	_, ok := asReply(err)
	return ok
}

func (d *Deliverer) setWriteDeadline(ctx context.Context, cn *conn) {
	cn.top.SetWriteDeadline(time.Now().Add(capTimeout(ctx, d.opts.CommandTimeout)))
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
