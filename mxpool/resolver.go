package mxpool

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

// Type is a DNS record type that planning asks for.
type Type uint16

// The record types a Resolver answers.
const (
	TypeA    Type = 1
	TypeMX   Type = 15
	TypeTXT  Type = 16
	TypeAAAA Type = 28
)

// String returns the type's mnemonic, such as "MX".
func (t Type) String() string {
	switch t {
	case TypeA:
		return "A"
	case TypeMX:
		return "MX"
	case TypeTXT:
		return "TXT"
	case TypeAAAA:
		return "AAAA"
	}
	return fmt.Sprintf("TYPE%d", uint16(t))
}

// MX is one mail exchanger record.
type MX struct {
	Host string // the exchanger's name without the trailing dot; "." for a null MX
	Pref uint16
}

// Result is the answer to one question. Only the field of the type asked is
// set. A name that exists but has no records of that type (NODATA) is a
// Result with no records and a nil error.
type Result struct {
	MX    []MX
	Addrs []netip.Addr // A or AAAA
	TXT   []string     // each record's strings joined
	// CNAME is the canonical name when the name asked is an alias; the
	// records, if any, are those of that name.
	CNAME string
	// TTL is how long the answer may be cached: the smallest TTL of the
	// records, or the negative-caching TTL of an empty answer.
	TTL time.Duration
}

// Resolver answers the DNS questions MX planning needs. Unlike net.Resolver
// it tells a name that does not exist (NXDOMAIN, a DNSError with NotFound)
// from a name without records of the type asked (an empty Result), and both
// from a failure to get an answer (a DNSError with Temporary).
type Resolver interface {
	Lookup(ctx context.Context, name string, t Type) (Result, error)
}

// DNSError is a failed lookup.
type DNSError struct {
	Name      string
	Type      Type
	NotFound  bool  // the name does not exist (NXDOMAIN)
	Temporary bool  // no usable answer now (SERVFAIL, timeout, refused): try later
	Err       error // the cause, if any
}

// Error describes the failure.
func (e *DNSError) Error() string {
	what := "lookup failed"
	switch {
	case e.NotFound:
		what = "no such domain"
	case e.Temporary:
		what = "temporary DNS failure"
	}
	if e.Err != nil {
		return fmt.Sprintf("dns: %s %s: %s: %v", e.Type, e.Name, what, e.Err)
	}
	return fmt.Sprintf("dns: %s %s: %s", e.Type, e.Name, what)
}

// Unwrap returns the cause.
func (e *DNSError) Unwrap() error { return e.Err }
