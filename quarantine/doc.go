// Package quarantine keeps the mail a server rejected: one stored copy per
// message, why and where it was rejected, and the state of each recipient;
// it lets users and administrators list, preview, release and delete what
// they may see, and ships what every MX rejects to one central store.
//
// # The store
//
// [Open] opens a [Store] in a folder. An [Entry] is one rejected message:
// its envelope, the [Reason] (policy rule, spam score and threshold, virus,
// size, the reply the sender got), the client's address and HELO, the node
// that caught it and when, and a [Status] per recipient (held, releasing,
// released, deleted, expired). A reject made before the body arrived
// (unknown recipient, blocked client) is an entry without a body.
//
// Guarantees:
//
//   - Durability: [Store.Put] and [Store.PutBatch] return nil only once the
//     entry and its body are on stable storage; a batch shares its fsyncs,
//     and so do concurrent Puts (the index commits through bbolt's Batch).
//   - Bounded: the store holds at most Options.MaxEntries entries; a new
//     one beyond is refused with ErrFull (the centre's ingest answers
//     "retry", so the edges keep theirs until there is room).
//   - Idempotency: an entry id stored twice with the same body is stored
//     once; with another body it is refused ([ErrConflict]). So a shipper
//     may send a batch again after any failure.
//   - Integrity: a body is named by its SHA-256 and verified on every read;
//     a corrupt body is reported ([ErrCorrupt], the log, [Stats]) and never
//     served or released.
//   - Access: every read and action asks the [Authorizer] what the caller
//     may see (everything, some domains, some addresses) and shows each
//     entry with the caller's recipients only; an entry outside the scope
//     is [ErrNotFound], so ids cannot be probed.
//   - Exactly-once release: [Store.Release] marks the recipients releasing
//     durably under a stable envelope id before handing the untouched
//     message to the [resilmail.Deliverer] (a queue, which ignores an id it
//     already has), so neither a repeated request nor a crash delivers it
//     twice; [Store.Run] finishes releases a crash interrupted. Every action
//     is written to the entry's audit trail ([Store.Audit]).
//   - Expiry: [Store.Expire] (run by [Store.Run]) removes entries older than
//     Options.MaxAge (14 days) and expires the oldest held entries of a
//     recipient over its quota. Bodies shared by several entries are
//     reference-counted and removed with the last entry that holds them.
//
// Listings ([Store.List]) are newest first, by recipient, domain, sender,
// kind, status and time range, with stable cursors.
//
// # From every MX to the centre
//
// An edge MX keeps what it rejects in an [Outbox] ([OpenOutbox]): [Outbox.Add]
// returns nil only once the entry is on stable storage, so the MX answers
// 5xx after it and 4xx after an error (the sender then tries again and
// nothing is lost). A [Shipper] ([NewShipper]) posts the outbox in batches
// (the RMQBATCH wire format, [BatchWriter], [BatchReader]) to the centre's
// [Store.IngestHandler], authenticated by a token derived from the pool's
// secret ([ShipToken]) or by each edge's own credential (its password or
// TLS client certificate, [IngestOptions].Identify), retrying with backoff
// while the centre is down. With Identify the centre records an edge's
// entries under the name its credential proves, and refuses those it ships
// as another node. An entry leaves the outbox only once the
// centre acknowledged storing it; ingestion is idempotent by entry id and
// digest, so a batch sent again stores nothing twice.
//
// # Access
//
// [NewHandler] serves a JSON API (list, search, preview, audit, release,
// delete) and plain HTML pages (no script, no remote content) behind the
// Authorizer. [Store.Preview] parses a body into what is safe to show:
// headers, text parts, attachment names and sizes ([ParsePreview]). A
// [Reporter] ([NewReporter]) sends each recipient the entries held for them
// since their last report, with signed, expiring release links
// ([ReleaseToken]): a link authorises releasing that one entry to that one
// recipient, opening it shows a confirmation page, and only a POST
// releases, because mail scanners open every link. A virus is listed but
// never self-released: only an administrator (a scope with a domain or
// everything) releases it.
//
// # Storage (format version 1)
//
// The folder holds "index.db", a bbolt database with the entries and their
// indexes (see index.go), "bodies/" with one file per body named by its
// SHA-256 in 16 sub-folders, and a LOCK file that keeps a second process
// out. Bodies are written to a temporary file, fsynced, renamed and their
// folder fsynced before the index that refers to them commits; a crash in
// between leaves a file no entry refers to, which [Store.Run] removes when
// it starts. Open refuses an index of another format version.
//
// # Goroutines
//
// Open and OpenOutbox start none. [Store.Run] expires and finishes releases
// until its context is cancelled, [Shipper.Run] ships until its context is
// cancelled; [Reporter.Send] sends the reports due when called (for
// example from a daily timer). Close releases the folder.
package quarantine
