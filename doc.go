// Package resilmail holds the vocabulary that resilmail's packages share:
// the [Envelope] of a message, the [Deliverer] that hands a message to its
// next hop, the [DeliveryError] that says per recipient why it could not, the
// [Digest] that names a message body, and the mailbox [Change] (stamped with
// the [Epoch] of the primary that made it) that the store's journal,
// replication, backup and failover exchange.
//
// The packages below it are the building blocks of a mail system that loses
// no acknowledged message:
//
//   - queue: a durable store-and-forward queue (fsync before 250, group
//     commit, retries, RFC 3464 bounces, hold and release, crash recovery).
//   - mxpool: where mail goes next (RFC 5321 MX selection, routes, host
//     health) and the pool's shared inbound policy.
//   - replicate: message-level replication of mailbox changes.
//   - quarantine: rejected mail kept, shipped to the centre, released once.
//
// This package does no I/O and starts no goroutine; it imports none of the
// packages below it, so every one of them can speak it.
//
// # Delivery outcomes
//
// A [Deliverer] reports one outcome per recipient through the error it
// returns:
//
//   - nil: every recipient was delivered.
//   - a [*DeliveryError] whose Recipient is set, or several joined with
//     [errors.Join]: those recipients failed as the errors say; recipients
//     that no error names were delivered.
//   - any other error, or a DeliveryError without a Recipient (alone or
//     joined with per-recipient ones): it applies to every recipient that no
//     per-recipient error names.
//
// [Outcomes] applies these rules, so that every consumer reads a Deliverer's
// answer the same way. An error that is not a DeliveryError is temporary: a
// wrong bounce loses mail, a retry only costs time.
//
// A delivered recipient may carry one more fact: the next hop that took it
// does not offer DSN, so the caller owes the sender the "relayed" notice a
// NOTIFY=SUCCESS asks for. A Deliverer says so through [ReportRelayed] on
// the context the caller made with [WithRelayedReport].
package resilmail
