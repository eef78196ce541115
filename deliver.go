package resilmail

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// A Deliverer hands one message to its next hop: a mail server over SMTP or
// LMTP, a mailbox store, a quarantine.
//
// Deliver is safe for concurrent use. It reads body to EOF or returns an
// error; it does not keep body after it returns. It does not modify env.
// It reports one outcome per recipient through its error, as the package
// documentation describes and [Outcomes] decodes: nil means every recipient
// was delivered. An error that is not a [*DeliveryError] is temporary.
// Deliver returns promptly, with an error, when ctx is done.
type Deliverer interface {
	Deliver(ctx context.Context, env Envelope, body io.Reader) error
}

// DelivererFunc adapts a function to the [Deliverer] interface.
type DelivererFunc func(ctx context.Context, env Envelope, body io.Reader) error

// Deliver calls f(ctx, env, body).
func (f DelivererFunc) Deliver(ctx context.Context, env Envelope, body io.Reader) error {
	return f(ctx, env, body)
}

var _ Deliverer = DelivererFunc(nil)

// A DeliveryError says why a message could not be delivered to one recipient
// (Recipient set) or to all of them (Recipient empty).
type DeliveryError struct {
	// Recipient is the address that failed; empty means every recipient not
	// otherwise named.
	Recipient string

	// Host is the next hop that answered (or failed to), e.g. "mx1.example.org".
	Host string

	// Command is the protocol step that failed: "connect", "EHLO",
	// "STARTTLS", "MAIL FROM", "RCPT TO", "DATA", "end of data", ...
	Command string

	// Code is the SMTP reply code (e.g. 550), or 0 when no reply was read.
	Code int

	// EnhancedCode is the RFC 3463 status code, e.g. "5.1.1"; empty if the
	// server gave none.
	EnhancedCode string

	// Message is the text of the reply, or a description of the failure.
	Message string

	// Permanent is set when retrying cannot succeed (a 5xx reply, a null MX,
	// a message the next hop cannot carry). Only permanent failures bounce.
	Permanent bool

	// MaybeDelivered is set when the message may have been delivered anyway:
	// the whole message was sent and the connection failed or timed out
	// before the final reply. Such a recipient must not be sent elsewhere
	// blindly: that is how duplicates are made.
	MaybeDelivered bool

	// Err is the underlying error, if any.
	Err error
}

func (e *DeliveryError) Error() string {
	var b strings.Builder
	b.WriteString("delivery")
	if e.Recipient != "" {
		fmt.Fprintf(&b, " to %s", e.Recipient)
	}
	if e.Host != "" {
		fmt.Fprintf(&b, " via %s", e.Host)
	}
	switch {
	case e.MaybeDelivered:
		b.WriteString(" maybe delivered")
	case e.Permanent:
		b.WriteString(" failed permanently")
	default:
		b.WriteString(" failed temporarily")
	}
	if e.Command != "" {
		fmt.Fprintf(&b, " at %s", e.Command)
	}
	b.WriteString(": ")
	if e.Code != 0 {
		fmt.Fprintf(&b, "%d ", e.Code)
	}
	if e.EnhancedCode != "" {
		fmt.Fprintf(&b, "%s ", e.EnhancedCode)
	}
	switch {
	case e.Message != "":
		b.WriteString(e.Message)
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	default:
		b.WriteString("no reason given")
	}
	return b.String()
}

// Unwrap returns the underlying error.
func (e *DeliveryError) Unwrap() error { return e.Err }

// Temporary reports whether a later attempt may succeed.
func (e *DeliveryError) Temporary() bool { return !e.Permanent }

// Reply returns the SMTP reply the error carries as one line,
// "550 5.1.1 no such user", or its message when there was no reply.
func (e *DeliveryError) Reply() string {
	if e.Code == 0 {
		if e.Message != "" {
			return e.Message
		}
		if e.Err != nil {
			return e.Err.Error()
		}
		return ""
	}
	s := fmt.Sprint(e.Code)
	if e.EnhancedCode != "" {
		s += " " + e.EnhancedCode
	}
	if e.Message != "" {
		s += " " + e.Message
	}
	return s
}

// SplitErrors separates the error a [Deliverer] returned into the
// DeliveryErrors that name a recipient and the first error that applies to
// every recipient not named (a DeliveryError without a Recipient, or any
// other error), nil if there is none. It walks trees built with
// [errors.Join]. [Outcomes] is built on it.
func SplitErrors(err error) (named []*DeliveryError, general error) {
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			if _, isDE := e.(*DeliveryError); !isDE {
				for _, sub := range j.Unwrap() {
					walk(sub)
				}
				return
			}
		}
		var de *DeliveryError
		if errors.As(e, &de) && de.Recipient != "" {
			named = append(named, de)
			return
		}
		if general == nil {
			general = e
		}
	}
	walk(err)
	return named, general
}

// Outcomes decodes the error a [Deliverer] returned for recipients into one
// outcome per recipient: nil for delivered, or the *DeliveryError that says
// why not. An error that is not a DeliveryError becomes a temporary
// DeliveryError wrapping it. A DeliveryError naming an address that is not
// among recipients applies to all of them. The result has one entry per
// address in recipients, matched case-insensitively.
func Outcomes(recipients []string, err error) map[string]*DeliveryError {
	out := make(map[string]*DeliveryError, len(recipients))
	for _, r := range recipients {
		out[r] = nil
	}
	if err == nil {
		return out
	}
	index := make(map[string]string, len(recipients))
	for _, r := range recipients {
		index[strings.ToLower(r)] = r
	}
	namedErrs, general := SplitErrors(err)
	named := make(map[string]bool)
	for _, de := range namedErrs {
		r, ok := index[strings.ToLower(de.Recipient)]
		if !ok {
			if general == nil {
				general = de
			}
			continue
		}
		c := *de
		c.Recipient = r
		out[r] = &c
		named[r] = true
	}
	if general == nil {
		return out
	}
	var gde *DeliveryError
	if !errors.As(general, &gde) {
		gde = &DeliveryError{Message: general.Error(), Err: general}
	}
	for _, r := range recipients {
		if !named[r] {
			c := *gde
			c.Recipient = r
			out[r] = &c
		}
	}
	return out
}

type relayedKey struct{}

// WithRelayedReport returns a copy of ctx that carries report, for a
// [Deliverer] to say which recipients it handed to a next hop that does
// not offer DSN (RFC 3461). Such a next hop drops the recipients' NOTIFY
// parameters, so it will never send the success notification that
// NOTIFY=SUCCESS asks for: the caller (a queue) sends a "relayed" one
// itself (RFC 3461 section 4.1). A Deliverer reports through
// [ReportRelayed]; report may be called from any goroutine the Deliverer
// uses, but only before Deliver returns, and only for recipients Deliver
// then reports delivered.
func WithRelayedReport(ctx context.Context, report func(rcpt string)) context.Context {
	return context.WithValue(ctx, relayedKey{}, report)
}

// ReportRelayed tells the caller of a [Deliverer], through the function
// [WithRelayedReport] put in ctx, that rcpt was accepted by a next hop that
// does not offer DSN. It does nothing when ctx carries no such function.
// Deliverers that wrap another pass ctx on, and so the report.
func ReportRelayed(ctx context.Context, rcpt string) {
	if f, ok := ctx.Value(relayedKey{}).(func(string)); ok && f != nil {
		f(rcpt)
	}
}
