package sts

import "context"

// TXTResolver looks up the "_mta-sts" TXT records that [MTASTS] needs.
// mxpool's DNSResolver and StaticResolver satisfy it, and mxpool.TXT adapts
// any other mxpool.Resolver; this package does not depend on
// mxpool, which depends on it for its [TLSPolicy].
type TXTResolver interface {
	// LookupTXT returns the TXT records of name, each record's strings
	// joined. A name without TXT records, or that does not exist, has
	// none: no records and a nil error. An error means that no answer
	// could be had (a timeout, SERVFAIL): MTA-STS then keeps a cached
	// policy in force, or fails temporarily.
	LookupTXT(ctx context.Context, name string) ([]string, error)
}
