package smtpout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
)

// A txn is a mail transaction ready to be sent: the envelope checked and
// translated into go-smtp's parameters.
type txn struct {
	env      *resilmail.Envelope
	utf8     bool // the message needs SMTPUTF8
	mail     smtp.MailOptions
	rcpts    []string // the recipients worth a RCPT, in order
	rcptOpts []*smtp.RcptOptions
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
	tx.mail = smtp.MailOptions{
		Size:   max(env.Size, 0),
		Return: smtp.DSNReturn(env.Return),
	}
	if isPrintableASCII(env.EnvID) {
		tx.mail.EnvelopeID = env.EnvID
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
		tx.rcpts = append(tx.rcpts, r.Addr)
		tx.rcptOpts = append(tx.rcptOpts, d.rcptOptions(env, r))
	}
	if len(tx.rcpts) == 0 {
		return nil, errs
	}
	tx.mail.UTF8 = tx.utf8
	return tx, errs
}

// rcptOptions translates a recipient's DSN parameters (RFC 3461 §4.1,
// §4.2). go-smtp sends them only to servers that offer DSN.
func (d *Deliverer) rcptOptions(env *resilmail.Envelope, r resilmail.Recipient) *smtp.RcptOptions {
	var o smtp.RcptOptions
	switch {
	case r.Notify&resilmail.NotifyNever != 0:
		o.Notify = []smtp.DSNNotify{smtp.DSNNotifyNever}
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
				o.Notify = append(o.Notify, k.kw)
			}
		}
	}
	if r.ORCPT != "" {
		typ, addr, ok := strings.Cut(r.ORCPT, ";")
		switch {
		case !ok || addr == "":
			d.log.Debug("smtpout: malformed ORCPT, not sent", "msg_id", env.ID, "rcpt", r.Addr)
		case strings.EqualFold(typ, "rfc822") && isPrintableASCII(addr):
			o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeRFC822, addr
		case strings.EqualFold(typ, "rfc822"), strings.EqualFold(typ, "utf-8"):
			// RFC 6533 §3: a non-ASCII address travels as utf-8-addr.
			o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeUTF8, addr
		default:
			d.log.Debug("smtpout: ORCPT address type not supported, not sent", "msg_id", env.ID, "rcpt", r.Addr)
		}
	}
	return &o
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

// send runs one mail transaction on cn.
func (d *Deliverer) send(ctx context.Context, cn *conn, tx *txn, body io.Reader, reused bool) result {
	host := cn.host
	general := func(err error, cmd string, keep, clean bool) result {
		return result{errs: []error{failure(ctx, host, cmd, err)}, keep: keep && !sessionLost(err), clean: clean}
	}
	if cn.rehello {
		if err := d.hello(ctx, cn); err != nil {
			return result{errs: []error{err}, dead: reused && sessionLost(err)}
		}
		cn.rehello = false
	}

	// Refusals that retrying cannot fix: the server cannot carry this
	// message, whatever it would answer.
	env := tx.env
	var refused *resilmail.DeliveryError
	if ok, _ := cn.c.Extension("SMTPUTF8"); tx.utf8 && !ok {
		refused = refusal(host, cmdMail, "5.6.7", "the message needs SMTPUTF8 and the server does not offer it")
	} else if ok, _ := cn.c.Extension("8BITMIME"); env.Body == resilmail.Body8BitMIME && !ok {
		refused = refusal(host, cmdMail, "5.6.3", "the message has an 8-bit body and the server does not offer 8BITMIME")
	} else if limit, ok := cn.c.MaxMessageSize(); ok && limit > 0 && env.Size > int64(limit) {
		refused = refusal(host, cmdMail, "5.3.4",
			fmt.Sprintf("message size %d exceeds the server's limit of %d", env.Size, limit))
	}
	if refused != nil {
		return result{errs: []error{refused}, keep: true, clean: true}
	}

	cn.msgs++
	d.arm(ctx, cn)
	if err := cn.c.Mail(env.From, &tx.mail); err != nil {
		r := general(err, cmdMail, true, true)
		r.dead = reused && sessionLost(err)
		return r
	}

	var errs []error
	var accepted []string
	for i, rcpt := range tx.rcpts {
		d.arm(ctx, cn)
		err := cn.c.Rcpt(rcpt, tx.rcptOpts[i])
		if err == nil {
			accepted = append(accepted, rcpt)
			continue
		}
		if sessionLost(err) {
			// Every recipient not refused yet fails with the session.
			return result{errs: append(errs, failure(ctx, host, cmdRcpt, err))}
		}
		de := forRecipient(failure(ctx, host, cmdRcpt, err), rcpt)
		if de.Code == 552 {
			// RFC 5321 §4.5.3.1.10: "too many recipients" was 552 in
			// RFC 821; clients treat it as temporary.
			de.Permanent = false
		}
		errs = append(errs, de)
	}
	if len(accepted) == 0 {
		return result{errs: errs, keep: true}
	}

	d.arm(ctx, cn)
	w, err := cn.c.Data()
	if err != nil {
		r := general(err, cmdData, true, false)
		r.errs = append(errs, r.errs...)
		return r
	}
	br := &bodyReader{r: body}
	buf, _ := d.bufs.Get().(*[]byte)
	if buf == nil {
		b := make([]byte, 32<<10)
		buf = &b
	}
	_, err = io.CopyBuffer(&deadlineWriter{ctx: ctx, d: d, cn: cn, w: w}, br, *buf)
	d.bufs.Put(buf)
	if err != nil {
		// The final "." must not be sent: the server would take a
		// truncated message. The session cannot go on.
		de := failure(ctx, host, cmdData, err)
		if br.err != nil {
			de = &resilmail.DeliveryError{Host: host, Command: cmdData,
				Message: "reading the message: " + br.err.Error(), Err: br.err}
		}
		return result{errs: append(errs, de)}
	}

	d.setWriteDeadline(ctx, cn)
	cn.wire.watch()
	if d.opts.LMTP {
		return d.endLMTP(ctx, cn, w, accepted, errs)
	}
	_, err = w.CloseWithResponse()
	switch {
	case err == nil:
		return result{errs: errs, keep: true, clean: true}
	case isReply(err):
		// A reply: the transaction is over (RFC 5321 §4.1.1.4).
		r := general(err, cmdEndOfData, true, true)
		r.errs = append(errs, r.errs...)
		return r
	case cn.wire.lost:
		// The final "." did not leave: no server can have the message.
		return result{errs: append(errs, failure(ctx, host, cmdEndOfData, err))}
	}
	for _, rcpt := range accepted {
		errs = append(errs, maybeDelivered(ctx, host, rcpt, err))
	}
	return result{errs: errs}
}

// endLMTP ends the message and reads one reply per accepted recipient
// (RFC 2033 §4.2).
func (d *Deliverer) endLMTP(ctx context.Context, cn *conn, w *smtp.DataCommand, accepted []string, errs []error) result {
	resps, err := w.CloseWithLMTPResponse()
	if err == nil {
		return result{errs: errs, keep: true, clean: true}
	}
	var replies smtp.LMTPDataError
	errors.As(err, &replies)
	// Without a failure besides the replies, every reply was read.
	_, complete := err.(smtp.LMTPDataError)
	keep := complete
	for _, rcpt := range accepted {
		if _, ok := resps[rcpt]; ok {
			continue
		}
		if se, ok := replies[rcpt]; ok {
			errs = append(errs, forRecipient(replyError(cn.host, cmdEndOfData, se), rcpt))
			if se.Code == 421 {
				keep = false
			}
			continue
		}
		if cn.wire.lost {
			errs = append(errs, forRecipient(failure(ctx, cn.host, cmdEndOfData, err), rcpt))
		} else {
			errs = append(errs, maybeDelivered(ctx, cn.host, rcpt, err))
		}
	}
	return result{errs: errs, keep: keep, clean: true}
}

func maybeDelivered(ctx context.Context, host, rcpt string, err error) error {
	de := forRecipient(failure(ctx, host, cmdEndOfData, err), rcpt)
	de.MaybeDelivered = true
	return de
}

func isReply(err error) bool {
	_, ok := asReply(err)
	return ok
}

// bodyReader remembers a read error, to tell it from a write error, and
// hides the reader's WriteTo, so that io.CopyBuffer does the writing.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// deadlineWriter bounds each write of the message: go-smtp sets no
// deadline between DATA and the final ".".
type deadlineWriter struct {
	ctx context.Context
	d   *Deliverer
	cn  *conn
	w   io.Writer
}

func (dw *deadlineWriter) Write(p []byte) (int, error) {
	dw.d.setWriteDeadline(dw.ctx, dw.cn)
	return dw.w.Write(p)
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
