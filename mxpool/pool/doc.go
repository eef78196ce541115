// Package pool keeps every MX of a pool on one inbound policy.
//
// Every MX of a pool must accept and reject exactly what the primary MX
// would, or a secondary becomes the spammers' door. One node runs a
// [Publisher]: it holds the pool's [Policy] (domains, recipients, aliases,
// spam threshold and action per domain, the content scanner's profile,
// size limit, routes) as a
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
//
//	pub, _ := pool.OpenPublisher(dir, secret, nil) // on the primary MX
//	pub.Publish(ctx, pol) // pol normalized
//	http.Serve(ln, pub) // followers poll it
//	f, _ := pool.OpenFollower(url, secret, dir2, &pool.FollowerOptions{
//		Trust: pool.Trust{Keys: []ed25519.PublicKey{pub.PublicKey()}},
//	}) // on every other MX
//	go f.Run(ctx)
//	f.Check("alice@example.org") // the same Verdict as pub.Check
//
// # On disk
//
// A publisher's folder holds snapshot.json (the current [Snapshot] in the
// format SnapshotFormat describes, written whole and fsynced before a
// version is published), history.json (the recent deltas, {"format":2,
// "version":V,"deltas":[...]}, written after the snapshot and dropped when
// it does not end at the snapshot's version) and signing.key (the ed25519
// private key, PKCS #8 in PEM, mode 600, made on first open). A follower's
// folder holds snapshot.json, the same format, written after each version
// is put in use; one that does not verify is renamed aside to
// snapshot.json.bad-<time>. Both folders are locked against a second
// process. Format 1 files (HMAC-authenticated) are not read.
//
// # Goroutines
//
// OpenPublisher and OpenFollower start none. A Publisher has no goroutine
// of its own: it seals its version again while answering a request, and
// the caller's http.Server runs its handler. A Follower's Run owns the one
// goroutine that polls, applies and stores, and returns only once it has
// stopped; Close stops it. Check, Snapshot and Status are safe from any
// goroutine at any time.
package pool
