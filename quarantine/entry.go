package quarantine

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
)

// A Status is the state of one recipient of a quarantined message.
type Status string

// The statuses of a recipient. Held is the only one a user acts on;
// Releasing is the short window between a release being decided and the
// Deliverer taking the message (it survives a crash and is finished by
// [Store.Run]); the last three are final.
const (
	Held      Status = "held"
	Releasing Status = "releasing"
	Released  Status = "released"
	Deleted   Status = "deleted"
	Expired   Status = "expired"
)

// Final reports whether s can no longer change.
func (s Status) Final() bool { return s == Released || s == Deleted || s == Expired }

func (s Status) valid() bool {
	switch s {
	case Held, Releasing, Released, Deleted, Expired:
		return true
	}
	return false
}

// A Kind says why a message was rejected.
type Kind string

// The kinds of rejection. A Kind outside this list is kept as given.
const (
	KindRecipient Kind = "recipient" // unknown recipient or domain (before DATA)
	KindClient    Kind = "client"    // blocked client address or HELO (before DATA)
	KindPolicy    Kind = "policy"    // a policy rule
	KindSpam      Kind = "spam"      // spam score at or above the threshold
	KindVirus     Kind = "virus"     // a virus scanner's verdict
	KindSize      Kind = "size"      // over the size limit
)

// A Reason records why a message was rejected and what the sender was told.
type Reason struct {
	Kind Kind `json:"kind"`
	// Rule names the policy rule or filter that decided; empty if none.
	Rule string `json:"rule,omitempty"`
	// Score and Threshold are the spam score and the threshold it reached
	// (KindSpam); zero otherwise.
	Score     float64 `json:"score,omitempty"`
	Threshold float64 `json:"threshold,omitempty"`
	// Virus is the virus scanner's name for what it found (KindVirus).
	Virus string `json:"virus,omitempty"`
	// Limit is the size limit that was exceeded (KindSize); the message's
	// size is Entry.Size.
	Limit int64 `json:"limit,omitempty"`
	// Reply is the SMTP reply the sender got, e.g. "550 5.7.1 spam".
	Reply string `json:"reply,omitempty"`
	// Symbols are the content scanner's rules that matched, and Scanner
	// its name and version ("rspamd 3.4"), for a verdict of a scanner
	// (KindSpam, KindVirus). Entry.Node is the MX that decided.
	Symbols []string `json:"symbols,omitempty"`
	Scanner string   `json:"scanner,omitempty"`
}

// A RecipientState is the state of one recipient of an entry.
type RecipientState struct {
	Addr   string `json:"addr"`
	Status Status `json:"status"`
	// Changed is when Status last changed, By who changed it ("" for the
	// store itself, e.g. on expiry).
	Changed time.Time `json:"changed"`
	By      string    `json:"by,omitempty"`
	// ReleaseID is the envelope id of the release that carries this
	// recipient; set when Status is Releasing or Released.
	ReleaseID string `json:"release_id,omitempty"`
}

// An Entry is one rejected message: its envelope, why it was rejected, where
// and when, and the state of each recipient. The body is stored once, named
// by Digest; an entry for a reject made before the body arrived (unknown
// recipient, blocked client) has no body and a zero Digest.
type Entry struct {
	// ID names the entry everywhere (edge outbox, central store, links). It
	// is chosen where the message was caught, see [NewID].
	ID string `json:"id"`

	// Envelope is the envelope as received. Envelope.ID is the id the
	// message would have had, kept for tracing.
	Envelope resilmail.Envelope `json:"envelope"`

	// Recipients holds the state of each blocked recipient, in the order of
	// Envelope.To (same addresses).
	Recipients []RecipientState `json:"recipients"`

	// Digest and Size describe the stored body; zero for metadata only.
	Digest resilmail.Digest `json:"digest"`
	Size   int64            `json:"size"`

	// ClientAddr and HELO describe the sending client.
	ClientAddr string `json:"client_addr,omitempty"`
	HELO       string `json:"helo,omitempty"`
	// Node is the node that caught the message.
	Node string `json:"node,omitempty"`
	// Time is when the message was rejected.
	Time time.Time `json:"time"`

	Reason Reason `json:"reason"`

	// Subject and MessageID are copied from the header for listing and
	// search; empty when there is no body.
	Subject   string `json:"subject,omitempty"`
	MessageID string `json:"message_id,omitempty"`

	// Releases counts the releases started for this entry; the n-th one
	// travels under the envelope id "<ID>.r<n>".
	Releases int `json:"releases,omitempty"`
}

// HasBody reports whether the entry has a stored body.
func (e *Entry) HasBody() bool { return !e.Digest.IsZero() }

// Recipient returns the state of addr (case-insensitive), or nil.
func (e *Entry) Recipient(addr string) *RecipientState {
	for i := range e.Recipients {
		if strings.EqualFold(e.Recipients[i].Addr, addr) {
			return &e.Recipients[i]
		}
	}
	return nil
}

// maxID is the longest entry id accepted.
const maxID = 64

// ValidID reports whether id is acceptable as an entry id: 1 to 64 bytes of
// letters, digits, '-', '_' and '.', not starting with '.'. Ids appear in
// file names and URLs, so nothing else is allowed.
func ValidID(id string) bool {
	if id == "" || len(id) > maxID || id[0] == '.' {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

var idEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// NewID returns a new entry id for a message caught at t: 26 characters
// that sort by time (to the nanosecond) followed by 80 random bits, so ids
// made on different nodes never collide.
func NewID(t time.Time) string {
	var b [15]byte
	binary.BigEndian.PutUint64(b[:8], uint64(t.UnixNano()))
	if _, err := rand.Read(b[8:]); err != nil {
		panic(fmt.Sprintf("quarantine: crypto/rand: %v", err)) // never happens (crypto/rand does not fail)
	}
	return idEncoding.EncodeToString(b[:])
}

// Validate checks e before it is stored: a valid id, a time, at least one
// recipient, recipients matching Envelope.To, plausible addresses, statuses
// known. It does not check the body.
func (e *Entry) Validate() error {
	if !ValidID(e.ID) {
		return fmt.Errorf("%w: bad entry id %q", ErrInvalid, e.ID)
	}
	if e.Time.IsZero() {
		return fmt.Errorf("%w: entry %s has no time", ErrInvalid, e.ID)
	}
	if len(e.Envelope.To) == 0 || len(e.Recipients) != len(e.Envelope.To) {
		return fmt.Errorf("%w: entry %s: %d recipients for %d envelope recipients", ErrInvalid, e.ID, len(e.Recipients), len(e.Envelope.To))
	}
	if e.Envelope.From != "" {
		if err := resilmail.CheckAddress(e.Envelope.From); err != nil {
			return fmt.Errorf("%w: entry %s: sender: %v", ErrInvalid, e.ID, err)
		}
	}
	seen := make(map[string]bool, len(e.Recipients))
	for i, r := range e.Recipients {
		if low := strings.ToLower(r.Addr); seen[low] {
			return fmt.Errorf("%w: entry %s: recipient %s twice", ErrInvalid, e.ID, r.Addr)
		} else {
			seen[low] = true
		}
		if !strings.EqualFold(r.Addr, e.Envelope.To[i].Addr) {
			return fmt.Errorf("%w: entry %s: recipient %d is %q, envelope says %q", ErrInvalid, e.ID, i, r.Addr, e.Envelope.To[i].Addr)
		}
		if err := resilmail.CheckAddress(r.Addr); err != nil {
			return fmt.Errorf("%w: entry %s: recipient: %v", ErrInvalid, e.ID, err)
		}
		if !r.Status.valid() {
			return fmt.Errorf("%w: entry %s: recipient %s: status %q", ErrInvalid, e.ID, r.Addr, r.Status)
		}
	}
	if e.Size < 0 || (e.Digest.IsZero() && e.Size != 0) {
		return fmt.Errorf("%w: entry %s: size %d", ErrInvalid, e.ID, e.Size)
	}
	return nil
}
