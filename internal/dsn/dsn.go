package dsn

import (
	"fmt"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
)

// Action is the fate of a message for one recipient: the Action field of a
// per-recipient block (RFC 3464 §2.3.3).
type Action string

// The actions of RFC 3464 §2.3.3.
const (
	// Failed: the message could not be delivered and will not be retried.
	Failed Action = "failed"
	// Delayed: the message has not been delivered yet and is being retried.
	Delayed Action = "delayed"
	// Delivered: the message was delivered to the recipient's mailbox.
	Delivered Action = "delivered"
	// Relayed: the message was handed to a system that sends no
	// notifications; no further notice will follow.
	Relayed Action = "relayed"
	// Expanded: the recipient was a list or alias and the message was
	// delivered to it and forwarded to its members.
	Expanded Action = "expanded"
)

// Valid reports whether a is one of the actions of RFC 3464.
func (a Action) Valid() bool {
	switch a {
	case Failed, Delayed, Delivered, Relayed, Expanded:
		return true
	}
	return false
}

// A RecipientStatus is one per-recipient block of a report (RFC 3464 §2.3):
// what happened to the message for one recipient.
//
// Values are written sanitised: control characters become spaces, runs of
// white space one space, invalid UTF-8 a '?', and over-long values are cut
// so that no line of the report reaches 998 octets. [Parse] returns them in
// the same form, so a value that is already clean comes back unchanged.
type RecipientStatus struct {
	// FinalRecipient is the recipient's address, without angle brackets.
	// It is written "rfc822; addr", or "utf-8; addr" when it is not ASCII
	// (RFC 6533, with '\', '+', '=' and spaces escaped as \x{HH}).
	// Required.
	FinalRecipient string

	// OriginalRecipient is the DSN ORCPT parameter as received (RFC 3461
	// §4.2), address type included, e.g. "rfc822;user@example.org"; an
	// address without a type is taken as rfc822. It is written as given,
	// not xtext-decoded. Empty means the field is omitted.
	OriginalRecipient string

	// Action is what happened. Required.
	Action Action

	// Status is the RFC 3463 status code, e.g. "5.1.1": a class of 2
	// (success), 4 (persistent transient failure) or 5 (permanent failure),
	// then two numbers of one to three digits. The class must fit the
	// action: 2 for delivered, relayed and expanded; 4 for delayed; 4 or 5
	// for failed (4 when a message expired after temporary failures).
	// Required.
	Status string

	// RemoteMTA is the host name of the server that reported the status,
	// written "dns; host". Empty means the field is omitted.
	RemoteMTA string

	// DiagnosticType is the type of DiagnosticCode. Empty means "smtp": the
	// code is the reply of an SMTP server. Any other type ("X-Resilmail" for
	// a failure that is no SMTP reply, such as a refused connection) is an
	// atom of letters, digits, '-', '_' and '.'.
	DiagnosticType string

	// DiagnosticCode is the diagnostic as the remote server gave it, e.g.
	// the SMTP reply "550 5.1.1 no such user", written
	// "smtp; 550 5.1.1 no such user". Empty means the field is omitted.
	DiagnosticCode string

	// LastAttemptDate is when delivery was last attempted. The zero time
	// means the field is omitted. Dates are written to the second.
	LastAttemptDate time.Time

	// WillRetryUntil is when the sender will stop retrying; it is meaningful
	// only for the Delayed action. The zero time means the field is omitted.
	WillRetryUntil time.Time
}

// A Report is the content of a message/delivery-status part (RFC 3464 §2):
// the per-message fields and one block per recipient.
type Report struct {
	// ReportingMTA is the host name of the server that writes the report,
	// written "dns; host". Required.
	ReportingMTA string

	// OriginalEnvelopeID is the DSN ENVID parameter (RFC 3461 §4.4), as
	// decoded from xtext. Empty means the field is omitted.
	OriginalEnvelopeID string

	// ArrivalDate is when the message arrived at the reporting server. The
	// zero time means the field is omitted.
	ArrivalDate time.Time

	// Recipients has one status per recipient reported on; at least one.
	Recipients []RecipientStatus
}

// Validate reports whether r can be written, as [Build] would write it: the
// error wraps [ErrInvalid] and says which field is wrong.
func (r *Report) Validate() error {
	_, err := r.normalize()
	return err
}

// DefaultMaxOriginal is the largest original message [Build] returns whole
// when [Message].MaxOriginal is zero.
const DefaultMaxOriginal = 10 << 20

// A Message is a delivery status notification to build: the message
// header, a human-readable explanation, the machine-readable [Report] and
// the original message or its header.
type Message struct {
	// From is the address the notification comes from, e.g.
	// "MAILER-DAEMON@relay.example.org". Required.
	From string

	// To is the address the notification goes to: the reverse-path (MAIL
	// FROM) of the original message. Required.
	To string

	// Subject is the subject. Empty means a default by the actions
	// reported: "Undelivered Mail Returned to Sender" when a recipient
	// failed, "Delayed Mail (still being retried)" when one is delayed,
	// "Successful Mail Delivery Report" otherwise.
	Subject string

	// MessageID is the Message-ID, without angle brackets, e.g.
	// "20240102.abc@relay.example.org". Required.
	MessageID string

	// Date is the date of the notification. The zero time means now.
	Date time.Time

	// Text is the human-readable first part (text/plain; charset=utf-8).
	// Empty means a default text that says, for each recipient, what
	// happened and why.
	Text string

	// Report is the machine-readable report.
	Report Report

	// Original is the original message, header and body, as received. Nil
	// means none is returned.
	Original []byte

	// HeadersOnly returns only the header of the original message, as
	// text/rfc822-headers, instead of the whole message as message/rfc822.
	// Set it when the DSN RET parameter is HDRS or absent
	// (env.Return != resilmail.ReturnFull), and for delay and success
	// reports: RFC 3461 §4.3 asks for the full message only on failure.
	HeadersOnly bool

	// MaxOriginal is the largest original message returned whole; a larger
	// one is returned as its header only, itself cut to MaxOriginal bytes
	// at a line boundary. Zero means [DefaultMaxOriginal]; a negative value
	// always returns the header only.
	MaxOriginal int
}

// Validate reports whether m can be built: the error wraps [ErrInvalid] and
// says which field is wrong.
func (m *Message) Validate() error {
	if err := m.validateHeader(); err != nil {
		return err
	}
	return m.Report.Validate()
}

func (m *Message) validateHeader() error {
	if err := checkMessageID(m.MessageID); err != nil {
		return err
	}
	if err := resilmail.CheckAddress(m.From); err != nil {
		return fmt.Errorf("%w: From: %v", ErrInvalid, err)
	}
	if err := resilmail.CheckAddress(m.To); err != nil {
		return fmt.Errorf("%w: To: %v", ErrInvalid, err)
	}
	return nil
}

// maxMessageID is the longest Message-ID accepted, so that the header line
// stays short.
const maxMessageID = 250

func checkMessageID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: no Message-ID", ErrInvalid)
	}
	if len(id) > maxMessageID {
		return fmt.Errorf("%w: Message-ID longer than %d bytes", ErrInvalid, maxMessageID)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f || c == '<' || c == '>' {
			return fmt.Errorf("%w: Message-ID %q has a forbidden character", ErrInvalid, id)
		}
	}
	if at := strings.IndexByte(id, '@'); at <= 0 || at == len(id)-1 {
		return fmt.Errorf("%w: Message-ID %q is not left@right", ErrInvalid, id)
	}
	return nil
}

// Parsed is a delivery status notification read by [Parse].
type Parsed struct {
	// From and To are the addresses of the From and To header fields,
	// without display names or angle brackets.
	From, To string

	// Subject is the decoded Subject.
	Subject string

	// MessageID is the Message-ID without angle brackets.
	MessageID string

	// Date is the Date of the notification; zero if absent or unreadable.
	Date time.Time

	// Text is the human-readable part, decoded, with "\n" line ends.
	Text string

	// Report is the machine-readable report. Parse is lenient: check it
	// with [Report.Validate] before relying on a field being well-formed.
	Report Report

	// Original is the returned message or its header; nil if there is none.
	Original []byte

	// HeadersOnly is set when Original is only the header of the message
	// (text/rfc822-headers or message/global-headers).
	HeadersOnly bool
}
