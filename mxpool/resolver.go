package mxpool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/resilmail/resilmail/mxpool/sts"
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

// TXT adapts r to the TXT lookups of MTA-STS ([sts.TXTResolver]): a name
// that does not exist has no records rather than an error.
func TXT(r Resolver) sts.TXTResolver { return txtResolver{r} }

type txtResolver struct{ r Resolver }

func (t txtResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return lookupTXT(ctx, t.r, name)
}

// lookupTXT asks r for the TXT records of name, a name that does not
// exist (NXDOMAIN) having none.
func lookupTXT(ctx context.Context, r Resolver, name string) ([]string, error) {
	res, err := r.Lookup(ctx, name, TypeTXT)
	if de := (*DNSError)(nil); errors.As(err, &de) && de.NotFound {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return res.TXT, nil
}

// LookupTXT returns the TXT records of name for MTA-STS
// ([sts.TXTResolver]): none, without an error, when name does not exist.
func (r *DNSResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return lookupTXT(ctx, r, name)
}

// LookupTXT returns the TXT records of name for MTA-STS
// ([sts.TXTResolver]): none, without an error, when name does not exist.
func (s *StaticResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return lookupTXT(ctx, s, name)
}

var (
	_ sts.TXTResolver = (*DNSResolver)(nil)
	_ sts.TXTResolver = (*StaticResolver)(nil)
)
