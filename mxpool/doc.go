// Package mxpool decides where mail goes next.
//
// # Outbound: planning the next hop
//
// A [Planner] turns a recipient domain into a [Plan], the ordered hosts to
// try, as RFC 5321 §5.1 says:
//
//   - MX records by preference, hosts of equal preference in a new, fair
//     random order in every plan;
//   - no MX records (NODATA): the domain's own addresses, the implicit MX;
//   - a domain that does not exist (NXDOMAIN): permanent failure 5.1.2;
//     a DNS failure: temporary 4.4.3, the queue retries;
//   - a null MX (RFC 7505): permanent failure 556 5.1.10;
//   - CNAME chains followed up to a hop limit, loops caught;
//   - when this node is itself an MX of the domain, by name
//     (PlannerOptions.Self) or by address (SelfAddrs, and by default this
//     machine's interface and loopback addresses), itself and every MX of
//     equal or worse preference are dropped, and mail that would loop
//     back fails with 5.4.6;
//   - a [Route] (a domain, or "*" for a smart host) replaces the MX lookup;
//     fallback relays are tried after the planned hosts, never for a
//     domain this node is an MX of, and with verified TLS when the
//     domain requires it (configuration or MTA-STS enforce).
//
// Planning needs a [Resolver] that tells "no such domain" from "no records
// of this type" from "no answer now", which net.LookupMX cannot: a
// [DNSResolver] (UDP with TCP on truncation, TTL-aware positive and
// negative cache, concurrent identical questions share one query), or a
// [StaticResolver], an in-memory zone for tests and loopback deployments.
//
// # Outbound: delivering through the plan
//
// A [Deliverer] is a resilmail.Deliverer for the queue. Per recipient
// domain it plans, asks the [sts.TLSPolicy] which hosts may be used and with
// what TLS (opportunistic by default; verified for configured domains and
// for MTA-STS policies in enforce mode, fetched and cached by
// [sts.MTASTS]: MTA-STS and the TLS policy are the sub-package mxpool/sts,
// which learns TXT records through a [DNSResolver] or [StaticResolver], or
// any [Resolver] adapted by [TXT]), and tries the addresses in order. A failed session (no connection, a
// refusal of the whole session, 421, a TLS failure) moves on to the next
// host with the same recipients; anything a host says about a recipient or
// about the message is the outcome of this attempt; a message that may have
// been delivered is never sent to a second host. [Health] remembers each
// host's recent failures across all deliveries: after consecutive failures
// its circuit opens and the host is skipped without a connection attempt
// until a single probe finds it working again.
//
// # Goroutines and state
//
// Every type here is safe for concurrent use, and nothing runs in the
// background between calls. [Planner.Plan] looks up the addresses of
// several hosts at once in up to 8 goroutines that end before it returns.
// A [DNSResolver] runs a query that concurrent callers share in a goroutine
// of its own, which ends within the query's time budget even when every
// caller gave up. A [Deliverer] keeps idle SMTP and LMTP sessions in
// smtpout's pools until [Deliverer.Close]. Nothing in this package writes
// to disk: caches and host health live in memory; the MTA-STS cache folder
// and its format are described in mxpool/sts, the pool policy's files in
// mxpool/pool.
//
// # Inbound: one policy for the whole pool
//
// The pool's shared inbound policy, its publisher and its followers are in
// the sub-package mxpool/pool.
package mxpool
