package resilmail

import (
	"errors"
	"fmt"
	"strings"
)

// An Envelope is what travels with a message body from one hop to the next:
// the SMTP envelope (RFC 5321 MAIL FROM and RCPT TO) with its extension
// parameters (RFC 3461 DSN, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 1870
// SIZE), plus a stable identity.
//
// The zero value is not useful: ID and at least one recipient are required
// by most consumers (see [Envelope.Validate]).
type Envelope struct {
	// ID names the message for its whole journey: it is the key that makes
	// enqueueing idempotent, and the trace id that every log line about the
	// message carries (as msg_id), from the relay's 250 to the replica's disk.
	// Printable ASCII without spaces, at most 128 bytes.
	ID string

	// From is the reverse-path (MAIL FROM). The empty string is the null
	// reverse-path "<>" of bounces and other notifications, to which no
	// notification is ever sent.
	From string

	// To lists the recipients (RCPT TO), each with its DSN parameters.
	To []Recipient

	// SMTPUTF8 is set when the message needs the SMTPUTF8 extension
	// (RFC 6531): an address or a header field is not ASCII.
	SMTPUTF8 bool

	// Body is the body type declared with MAIL FROM BODY= (RFC 6152,
	// RFC 3030). Empty means 7BIT.
	Body BodyType

	// Size is the size of the message in bytes: as declared with SIZE=
	// (RFC 1870) until it is received, then as counted (the queue stores
	// the count, never the declaration). Zero means unknown.
	Size int64

	// Return is the DSN RET parameter (RFC 3461 §4.3): whether a failure
	// notification carries the full message or only its headers. Empty means
	// not specified (the notifier chooses; resilmail returns the headers).
	Return DSNReturn

	// EnvID is the DSN ENVID parameter (RFC 3461 §4.4), an identifier chosen
	// by the sender and copied into notifications as Original-Envelope-Id.
	// Empty means not specified.
	EnvID string
}

// A Recipient is one RCPT TO with its DSN parameters (RFC 3461 §4.1, §4.2).
type Recipient struct {
	// Addr is the recipient's mailbox, "local@domain", without angle
	// brackets.
	Addr string

	// Notify is the DSN NOTIFY parameter. Zero means not specified: notify
	// on failure (and on delay, at the notifier's choice), as RFC 3461 §4.1
	// lets a server do.
	Notify Notify

	// ORCPT is the DSN ORCPT parameter: the original recipient as given to
	// the first server, with its address type, e.g. "rfc822;user@example.org".
	// Empty means not specified.
	ORCPT string
}

// BodyType is the body type of a message (MAIL FROM BODY=).
type BodyType string

// The body types of RFC 6152 and RFC 3030.
const (
	Body7Bit       BodyType = "7BIT"
	Body8BitMIME   BodyType = "8BITMIME"
	BodyBinaryMIME BodyType = "BINARYMIME"
)

// DSNReturn is the DSN RET parameter.
type DSNReturn string

// The values of the DSN RET parameter.
const (
	ReturnFull    DSNReturn = "FULL"
	ReturnHeaders DSNReturn = "HDRS"
)

// Notify is the set of conditions on which a recipient asked to be notified
// (the DSN NOTIFY parameter). The zero value means the parameter was absent.
type Notify uint8

// The NOTIFY keywords. NotifyNever excludes every other one.
const (
	NotifyNever Notify = 1 << iota
	NotifySuccess
	NotifyFailure
	NotifyDelay
)

// Has reports whether the recipient wants a notification on condition c,
// applying the default of RFC 3461 §4.1 when NOTIFY was absent: failure and
// delay, but not success.
func (n Notify) Has(c Notify) bool {
	if n == 0 {
		return c == NotifyFailure || c == NotifyDelay
	}
	if n&NotifyNever != 0 {
		return false
	}
	return n&c != 0
}

// String returns the NOTIFY parameter value, e.g. "SUCCESS,FAILURE", or ""
// when it was absent.
func (n Notify) String() string {
	if n&NotifyNever != 0 {
		return "NEVER"
	}
	var parts []string
	for _, k := range []struct {
		bit  Notify
		name string
	}{{NotifySuccess, "SUCCESS"}, {NotifyFailure, "FAILURE"}, {NotifyDelay, "DELAY"}} {
		if n&k.bit != 0 {
			parts = append(parts, k.name)
		}
	}
	return strings.Join(parts, ",")
}

// ParseNotify parses a NOTIFY parameter value such as "SUCCESS,DELAY" or
// "NEVER" (case-insensitive).
func ParseNotify(s string) (Notify, error) {
	var n Notify
	for _, kw := range strings.Split(s, ",") {
		switch strings.ToUpper(strings.TrimSpace(kw)) {
		case "NEVER":
			n |= NotifyNever
		case "SUCCESS":
			n |= NotifySuccess
		case "FAILURE":
			n |= NotifyFailure
		case "DELAY":
			n |= NotifyDelay
		default:
			return 0, fmt.Errorf("resilmail: bad NOTIFY keyword %q", kw)
		}
	}
	if n&NotifyNever != 0 && n != NotifyNever {
		return 0, errors.New("resilmail: NOTIFY=NEVER cannot be combined with other keywords")
	}
	return n, nil
}

// Recipients returns the addresses of env's recipients.
func (env *Envelope) Recipients() []string {
	addrs := make([]string, len(env.To))
	for i, r := range env.To {
		addrs[i] = r.Addr
	}
	return addrs
}

// Clone returns a copy of env that shares no memory with it.
func (env Envelope) Clone() Envelope {
	env.To = append([]Recipient(nil), env.To...)
	return env
}

// MaxIDLen is the longest envelope id accepted by [Envelope.Validate].
const MaxIDLen = 128

// Validate checks what every consumer relies on: a well-formed ID, at least
// one recipient, addresses that are plausible mailboxes (see [CheckAddress])
// and no recipient listed twice.
func (env *Envelope) Validate() error {
	if err := CheckID(env.ID); err != nil {
		return err
	}
	if env.From != "" {
		if err := CheckAddress(env.From); err != nil {
			return fmt.Errorf("resilmail: sender: %w", err)
		}
	}
	if len(env.To) == 0 {
		return errors.New("resilmail: envelope has no recipient")
	}
	seen := make(map[string]bool, len(env.To))
	for _, r := range env.To {
		if err := CheckAddress(r.Addr); err != nil {
			return fmt.Errorf("resilmail: recipient: %w", err)
		}
		k := strings.ToLower(r.Addr)
		if seen[k] {
			return fmt.Errorf("resilmail: recipient %q listed twice", r.Addr)
		}
		seen[k] = true
	}
	switch env.Body {
	case "", Body7Bit, Body8BitMIME, BodyBinaryMIME:
	default:
		return fmt.Errorf("resilmail: unknown body type %q", env.Body)
	}
	switch env.Return {
	case "", ReturnFull, ReturnHeaders:
	default:
		return fmt.Errorf("resilmail: unknown DSN RET value %q", env.Return)
	}
	if len(env.EnvID) > 100 {
		return errors.New("resilmail: ENVID longer than 100 characters")
	}
	return nil
}

// CheckID reports whether id can be an envelope id: 1 to [MaxIDLen] bytes of
// printable ASCII other than space and '/'.
func CheckID(id string) error {
	if id == "" {
		return errors.New("resilmail: empty envelope id")
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("resilmail: envelope id longer than %d bytes", MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f || c == '/' || c == '\\' {
			return fmt.Errorf("resilmail: envelope id %q has a forbidden character", id)
		}
	}
	return nil
}

// CheckAddress reports whether addr is a plausible mailbox: "local@domain",
// at most 254 bytes with a local part of at most 64 (RFC 5321 §4.5.3.1), no
// control characters, spaces or angle brackets, and valid UTF-8. It does not
// resolve the domain.
func CheckAddress(addr string) error {
	if len(addr) > 254 {
		return fmt.Errorf("address longer than 254 bytes")
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return fmt.Errorf("address %q is not local@domain", addr)
	}
	if at > 64 {
		return fmt.Errorf("local part of %q longer than 64 bytes", addr)
	}
	if !validUTF8NoControls(addr) {
		return fmt.Errorf("address %q has a forbidden character", addr)
	}
	return nil
}

func validUTF8NoControls(s string) bool {
	for _, r := range s {
		if r == 0xFFFD || r <= ' ' || r == 0x7f || r == '<' || r == '>' {
			return false
		}
	}
	return true
}

// Domain returns the domain of addr, the part after the last '@', in lower
// case; "" if there is none.
func Domain(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return ""
	}
	return strings.ToLower(addr[at+1:])
}
