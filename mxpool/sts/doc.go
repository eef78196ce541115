// Package sts decides with what TLS mail goes to a domain's MX hosts: the
// MTA-STS policies that domains publish (RFC 8461), and a [TLSPolicy] that
// combines them with the domains configured to require TLS. mxpool's
// Deliverer asks a TLSPolicy before every delivery.
//
// # MTA-STS
//
// [ParseRecord] reads the "_mta-sts" TXT record and [ParsePolicy] the policy
// file:
//
//	id, err := sts.ParseRecord("v=STSv1; id=20260101T000000")
//	p, err := sts.ParsePolicy(body) // "version: STSv1\nmode: enforce\nmx: ..."
//	p.Match("mx1.example.org")      // may mail go to this MX host?
//
// [MTASTS] learns a domain's policy: it looks up the record with a
// [TXTResolver] on each call, fetches the policy over HTTPS (certificates
// verified, no redirects, at most [MaxPolicySize] bytes, text/plain only)
// when the record's id is new or the cached policy is past half its life,
// and keeps a cached, unexpired policy in force when the record disappears,
// the lookup fails or a fetch fails (RFC 8461 §5.1). Domain names are
// checked by internal/domainname, like the planner's and the pool policy's.
//
// # The cache folder
//
// With Options.Dir every fetched policy is also written durably (written
// to a temporary file, synced, renamed), one file per domain named
// "<domain>.sts":
//
//	mxpool-mta-sts <version> <body length> <CRC-32C of body, 8 hex digits>\n
//	<body: JSON {"domain", "id", "fetched", "expires", "policy"}>
//
// where policy is the policy file as fetched, parsed again on load. Version
// is 1. Open loads the folder: a file of another version fails Open with
// ErrCacheVersion and is left as it is; a damaged file is renamed aside
// with the suffix ".corrupt" and logged; an expired policy is dropped.
//
// # TLS policy
//
// [TLSPolicy.Decide] says, for a domain and its MX hosts, which hosts may
// be used and whether TLS with a certificate valid for the host name is
// required: for the domains of TLSPolicyOptions.Required, and for those
// whose MTA-STS policy is in mode enforce (whose hosts that match none of
// the policy's mx patterns are dropped). Mode testing only logs what
// enforce would drop; no policy, mode none and a policy that cannot be
// learnt leave TLS opportunistic.
//
// # Goroutines
//
// Everything here is safe for concurrent use. The only goroutine the
// package starts is [MTASTS]'s fetch of one domain's policy, shared by the
// callers that wait for it: it runs to the end of the fetch (bounded by
// Options.FetchTimeout), even when every caller has given up, so that the
// result is cached, and then exits. Nothing runs in the background
// between calls, and nothing needs closing.
package sts
