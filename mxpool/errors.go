package mxpool

import (
	"errors"
	"fmt"
)

// The causes a planning failure wraps, besides the [*DNSError] of a failed
// lookup. Match them with errors.Is on the error Plan returns.
var (
	// ErrPlanBadDomain is the cause of the failure to plan for a domain
	// that is not a valid host name (5.1.2, permanent).
	ErrPlanBadDomain = errors.New("mxpool: invalid domain")
	// ErrPlanNullMX is the cause of the failure to plan for a domain that
	// publishes a null MX, RFC 7505 (556 5.1.10, permanent).
	ErrPlanNullMX = errors.New("mxpool: domain accepts no mail (null MX)")
	// ErrPlanLoopsBack is the cause of the failure to plan for a domain
	// this node is the best MX of (554 5.4.6, permanent).
	ErrPlanLoopsBack = errors.New("mxpool: mail loops back to myself")
	// ErrPlanNoHost is the cause of the failure to plan for a domain none
	// of whose hosts has an address: permanent (554 5.4.4) when every
	// address lookup had a definite answer, temporary (451 4.4.3) when one
	// failed temporarily, and always temporary for a route.
	ErrPlanNoHost = errors.New("mxpool: no usable host")
	// ErrPlanCNAMELoop is the cause of the failure to plan when a CNAME
	// chain loops or is longer than PlannerOptions.MaxCNAMEHops (451 4.4.3,
	// temporary: the DNS may be fixed).
	ErrPlanCNAMELoop = errors.New("mxpool: CNAME loop or chain too long")
)

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
