package sts

import (
	"errors"
	"fmt"
)

// Parse errors.
var (
	// ErrNotRecord is returned by ParseRecord for a TXT record that
	// does not begin with "v=STSv1": another kind of record at the same
	// name, which RFC 8461 §3.1 says to discard.
	ErrNotRecord = errors.New("sts: not an MTA-STS record")
	// ErrSyntax is wrapped by every other error of ParseRecord and
	// ParsePolicy: the record or policy is invalid, and a domain whose
	// record or policy is invalid has no policy.
	ErrSyntax = errors.New("sts: MTA-STS syntax error")
)

// Fetch errors, wrapped by an *Error.
var (
	// ErrRedirect is returned when the policy URL answers with a
	// redirect, which RFC 8461 §3.3 forbids following.
	ErrRedirect = errors.New("sts: MTA-STS policy URL redirects")
	// ErrStatus is returned when the policy URL answers with a status
	// other than 200 OK.
	ErrStatus = errors.New("sts: MTA-STS policy URL answered without 200 OK")
	// ErrMediaType is returned when the policy is not served as
	// text/plain.
	ErrMediaType = errors.New("sts: MTA-STS policy is not text/plain")
	// ErrTooLarge is returned when the policy is larger than
	// MaxPolicySize.
	ErrTooLarge = errors.New("sts: MTA-STS policy is too large")
	// ErrCacheVersion is returned by Open when a file in
	// Options.Dir has a format version this code does not know (written
	// by a newer release, say). The file is left as it is.
	ErrCacheVersion = errors.New("sts: MTA-STS cache file has an unknown format version")
)

// An Error reports that a domain's MTA-STS policy could not be learnt
// while no unexpired cached policy exists: the TXT lookup failed (Op
// "lookup"), or the domain publishes a record but its policy could not be
// fetched or is invalid (Op "fetch"). It is temporary. RFC 8461 §3.3 says
// to deliver then as if the domain had no policy, and to report the
// failure; [TLSPolicy] does so.
type Error struct {
	Domain string
	Op     string // "lookup" or "fetch"
	ID     string // the record's id; empty when Op is "lookup"
	Err    error  // the cause: the TXTResolver's error, an HTTP or TLS error, ErrRedirect, ErrSyntax, ...
}

// Error describes the failure.
func (e *Error) Error() string {
	if e.Op == "lookup" {
		return fmt.Sprintf("sts: MTA-STS record of %s: %v", e.Domain, e.Err)
	}
	return fmt.Sprintf("sts: MTA-STS policy of %s (id %s): %v", e.Domain, e.ID, e.Err)
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Temporary reports true: a later attempt may learn the policy.
func (e *Error) Temporary() bool { return true }

// ErrNoAllowedMX is wrapped by the error of [TLSPolicy.Decide] when a
// domain's MTA-STS policy in mode enforce matches none of its MX hosts.
var ErrNoAllowedMX = errors.New("sts: MTA-STS policy allows none of the MX hosts")
