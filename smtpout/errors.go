package smtpout

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
)

// ErrClosed is returned by Deliver and DeliverTo after Close. It is not a
// DeliveryError, so it counts as a temporary failure of every recipient.
var ErrClosed = errors.New("smtpout: deliverer closed")

// The commands a DeliveryError names besides the SMTP verbs.
const (
	cmdConnect   = "connect"
	cmdGreeting  = "greeting"
	cmdSTARTTLS  = "STARTTLS"
	cmdAuth      = "AUTH"
	cmdMail      = "MAIL FROM"
	cmdRcpt      = "RCPT TO"
	cmdData      = "DATA"
	cmdEndOfData = "end of data"
)

// replyError turns a server's reply into a DeliveryError: 5xx is permanent,
// anything else temporary.
func replyError(host, cmd string, se *smtp.SMTPError) *resilmail.DeliveryError {
	de := &resilmail.DeliveryError{
		Host:      host,
		Command:   cmd,
		Code:      se.Code,
		Message:   se.Message,
		Permanent: se.Code/100 == 5,
		Err:       se,
	}
	if ec := se.EnhancedCode; ec[0] > 0 {
		de.EnhancedCode = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
	}
	return de
}

// failure turns the error of a step into a DeliveryError: a reply as by
// replyError, anything else (I/O, timeout, cancellation) temporary. When
// ctx is done the cause is wrapped too, so that errors.Is(err,
// context.Canceled) holds.
func failure(ctx context.Context, host, cmd string, err error) *resilmail.DeliveryError {
	if se, ok := asReply(err); ok {
		return replyError(host, cmd, se)
	}
	de := &resilmail.DeliveryError{Host: host, Command: cmd, Message: err.Error(), Err: err}
	if cause := doneCause(ctx); cause != nil {
		de.Message = fmt.Sprintf("%v (%v)", cause, err)
		de.Err = errors.Join(cause, err)
	}
	return de
}

// doneCause returns why ctx is done, or nil. A context whose deadline has
// passed counts as done even before its timer fired: timeouts capped by the
// deadline expire at that very instant.
func doneCause(ctx context.Context) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

// refusal is a permanent failure decided on this side: the next hop cannot
// carry the message, so no retry can succeed.
func refusal(host, cmd, enhanced, msg string) *resilmail.DeliveryError {
	return &resilmail.DeliveryError{
		Host:         host,
		Command:      cmd,
		EnhancedCode: enhanced,
		Message:      msg,
		Permanent:    true,
	}
}

// asReply returns the server reply err carries, if any.
func asReply(err error) (*smtp.SMTPError, bool) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se, true
	}
	return nil, false
}

// sessionLost reports whether err ends the session: anything but a reply,
// or a 421 reply (RFC 5321 §3.8: the server is closing the channel).
func sessionLost(err error) bool {
	se, ok := asReply(err)
	return !ok || se.Code == 421
}

// forRecipient returns de naming rcpt.
func forRecipient(de *resilmail.DeliveryError, rcpt string) *resilmail.DeliveryError {
	de.Recipient = rcpt
	return de
}
