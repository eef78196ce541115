// Package mxpool decides where mail goes next and keeps every MX of a pool
// on one policy.
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
// domain it plans, asks the [TLSPolicy] which hosts may be used and with
// what TLS (opportunistic by default; verified for configured domains and
// for MTA-STS policies in enforce mode, fetched and cached by [MTASTS]),
// and tries the addresses in order. A failed session (no connection, a
// refusal of the whole session, 421, a TLS failure) moves on to the next
// host with the same recipients; anything a host says about a recipient or
// about the message is the outcome of this attempt; a message that may have
// been delivered is never sent to a second host. [Health] remembers each
// host's recent failures across all deliveries: after consecutive failures
// its circuit opens and the host is skipped without a connection attempt
// until a single probe finds it working again.
//
// # Inbound: one policy for the whole pool
//
// Every MX of a pool must accept and reject exactly what the primary MX
// would, or a secondary becomes the spammers' door. One node runs a
// [Publisher]: it holds the pool's [Policy] (domains, recipients, aliases,
// spam threshold and quarantine choice per domain, size limit, routes) as a
// versioned snapshot with a digest, sealed with its ed25519 key (a [Seal]
// names the pool, the key, the issue time, the version and the digest),
// and serves it over HTTP with long polling, as deltas when the follower's
// version is recent. Every other MX runs a [Follower]: it holds only the
// publisher's public key ([Trust]), so no follower can make a policy
// another accepts; it applies each verified snapshot atomically, keeps it
// on disk, starts from the stored copy when the publisher is unreachable,
// and answers recipients with the same [Verdict] the publisher would,
// except that a follower that has not heard from the publisher for too
// long answers 450 instead of 550 for an unknown recipient, so that a
// stale secondary never bounces good mail. "Heard" means a seal of the
// version it runs, issued within StaleAfter: the publisher seals its
// version again at least every ResealEvery, and a recorded answer played
// back by someone on the network is as old as its seal. Keys rotate with
// [Publisher.Rotate] while followers trust both keys.
//
// The shared secret only derives the bearer token a follower presents to
// fetch the policy (or use TLS client certificates, AuthClientCert).
package mxpool
