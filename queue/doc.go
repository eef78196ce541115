// Package queue is a durable store-and-forward mail queue that a Go mail
// server embeds, for inbound relay (towards its mail store) and outbound
// delivery (towards the Internet).
//
// # Guarantees
//
//   - Durability: [Queue.Enqueue] returns nil only once the message and its
//     envelope are on stable storage (fsynced). Concurrent enqueues share
//     fsyncs (group commit); none is skipped. A crash or kill -9 at any
//     instant loses no message Enqueue acknowledged.
//   - Idempotency: the envelope id is the key. Enqueueing an id that is
//     queued with the same content, or that left the queue within
//     Options.DedupWindow, is a no-op; an id queued, or finished within the
//     window, with other content is refused with [ErrConflict] (a finished
//     id keeps the first 128 bits of its body's digest, carried through
//     restarts and compaction).
//   - Integrity: every body is stored with its SHA-256 and a CRC, and both
//     are checked whenever it is read. A body that fails is moved aside into
//     the folder "corrupt", reported (log, [Stats], [Hooks]) and never
//     delivered; the rest of the queue carries on.
//   - Attempts are committed before any byte of the message leaves (the
//     Deliverer may speak the envelope meanwhile: its first read of the
//     body waits for the commit, and fails if the commit did), and their
//     results through the same group commit once they end, before the
//     delivery is reported ([Hooks]): a crash during an attempt still
//     backs off, and a crash after it does not send it again. Both ride
//     the commits of enqueues when the queue is busy, so deliveries add
//     no fsyncs of their own; an idle queue commits them itself within
//     2 ms. An attempt a crash cut short (no result recorded) is simply
//     retried at the next Open: delivery is at least once, as Postfix's.
//   - Per-recipient state: each recipient is pending, delivered, failed or
//     maybe-delivered; only pending ones are tried again.
//   - Maybe delivered: when the final dot left and the reply was lost, the
//     recipient is retried after the usual backoff (the default; a rare
//     duplicate rather than a loss, RFC 5321 section 6.1), or, with
//     [MaybeHold], held for an operator while the message's other
//     recipients carry on. A held recipient still gets delay warnings and
//     fails at the end of the message's lifetime with a DSN that says it
//     may have been delivered: no acknowledged message waits unseen.
//   - Held: a message the postmaster held ([Queue.Hold]) is not sent, but
//     its sender still gets delay warnings and it fails at the end of its
//     lifetime (4.4.7) with a DSN saying it was held.
//   - Stopping: [Queue.Shutdown] starts no new delivery and lets those in
//     flight finish up to its context's deadline; nothing is started on a
//     cancelled context.
//   - Notifications: permanent failures and expiry produce an RFC 3464
//     delivery status notification to the sender, honouring the DSN
//     parameters NOTIFY, RET, ENVID and ORCPT (RFC 3461); so do delay
//     warnings. A recipient with NOTIFY=SUCCESS that the Deliverer handed
//     to a next hop without DSN ([resilmail.ReportRelayed]) gets a
//     "relayed" notification (headers only), since that next hop will
//     never send one; a next hop that offers DSN got NOTIFY and reports
//     itself. Nothing is ever sent to the null reverse-path.
//
// # Delivery
//
// [Queue.Run] delivers through a [resilmail.Deliverer], which reports an
// outcome per recipient ([resilmail.Outcomes]). Recipients of one message are
// grouped by Options.Destination (the next-hop host when known, else the
// domain), and each group is sent in transactions of at most
// Options.MaxRcptsPerTransaction recipients (50 by default), each one
// delivery. When a next hop takes some recipients of a transaction and
// answers 452 to the others, those go at once in another transaction. At
// most Options.MaxDeliveries run at once, and at most
// Options.MaxPerDestination per destination; Options.PerDestination sets
// another concurrency, recipient limit or a rate of attempts for some
// destinations. A
// destination that refuses connections, answers 421 or times out is slowed
// down for every message: its concurrency drops to one and it is paused for
// 10 s (or the first retry interval, if shorter), doubling to 5 min while it
// keeps failing; deliveries put off this way are not counted as attempts.
//
// Temporary failures are retried per Options.Retry: by default after 5
// minutes, doubling up to about 67 minutes, with 10% jitter, for 5 days.
//
// # Storage (format version 1)
//
// The queue keeps one folder (mode 0700, files 0600, created with its
// parents fsynced): a record log in "log" (see internal/wal: CRC per
// record, torn tail truncated on open, group commit), a "LOCK" file that
// keeps a second process out, "spool" for messages over 256 KiB while they
// arrive (never acknowledged there; emptied by Open), and "corrupt" for
// damaged data moved aside.
// A message is one record holding its state as JSON and its body; state
// changes are small update records appended after it. Memory holds an index
// entry per message (envelope and state), never the bodies: a body over
// 256 KiB is copied into the log from its spool file in pieces, without
// the queue's lock (its place in the log is reserved under the lock, in
// order), and delivery and compaction read it in place from the log
// through a file handle of their own (the Deliverer gets an
// *io.SectionReader it may read again for another host); a smaller body is
// read whole. The oldest log
// segment is compacted in the background by restating its live messages at
// the end of the log. Open refuses a log written by a newer format version.
//
// # Goroutines
//
// Open starts none. Run starts the dispatcher's helpers (one goroutine per
// delivery in flight, a compactor) and returns after all of them have
// exited. Close stops Run and waits; Shutdown lets deliveries in flight
// finish first.
package queue
