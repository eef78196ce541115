// Package replicate keeps replicas of a mailbox store in step with its
// primary at the level of messages and mailboxes, never files: a change
// journal streamed to any number of replicas, applied in order per user,
// acknowledged once durable, fenced by epochs, and a comparison that finds
// and repairs divergence. A file system that corrupts a body on one node
// is never copied to the other.
//
// A [Source] (the primary's numbered change journal and its bodies) and a
// [Target] (what a replica applies changes to) are small interfaces; the
// reference store, replicate/store, implements both, and a Go developer
// can implement them over their own store.
//
// # The stream
//
// A [Primary] ([NewPrimary]) serves its Source over HTTP ([Primary.Handler];
// HTTP/2 over TLS between machines, plain HTTP on loopback): a long-lived,
// versioned stream of CRC-checked frames (the internal package
// replicate/internal/wire: the bytes on the wire are versioned, their Go
// codec is not public API) that
// carries each change as soon as it is durable, small bodies (up to 64
// KiB) ahead of the changes that append them, and a heartbeat with the
// primary's position, epoch and clock; the other bodies by digest, always
// verified, a corrupt one never sent; and the replicas' acknowledgements.
// A primary and a replica one version of the stream apart still replicate.
// Requests carry a bearer token derived from a secret ([StreamToken]) or
// are authenticated by client certificates. A replica's name is bound to
// its credential (PrimaryOptions.ReplicaSecrets, one secret per replica,
// or PrimaryOptions.Identify, the name from the authenticated identity),
// which AckAll requires; an acknowledgement from a name the primary does
// not know, with another replica's credential, or beyond the end of the
// journal is refused ([ErrUnknownReplica], [ErrWrongReplica],
// [ErrAckBeyondEnd]).
//
// A [Replica] ([NewReplica]) follows a primary from the position it last
// received. It fetches the bodies its Target lacks, verifies every digest,
// writes the changes and bodies to its inbox (a group-committed log in its
// folder) and only then acknowledges them; appliers then apply the inbox
// to the Target in order per user, different users in parallel, so one
// slow user stalls no one else. A change never depends on a body that only
// the Target holds: the replica copies such a body into its inbox with the
// change (see [BodyReader]), so that another user's expunge applied first
// cannot remove it before the change applies, even if the primary is gone
// by then. A body the primary cannot serve (its copy is damaged) does not
// stop the stream: the change is kept without it and parked, its user's
// lane waits and retries, other users go on, and [Replica.Parked] reports
// it ([ErrBodyUnavailable]). The replica acknowledges the position but
// names that change as missing its body, so the primary never counts it
// as replicated: the writers waiting for it are not answered until the
// replica has the body, and later writers are not held back by it
// ([Primary.Await]). Only the primary's
// explicit "not_found" means the message was expunged since. A silent, cut
// or corrupted connection is
// dropped and resumed with backoff; nothing acknowledged is lost. When the
// primary's journal no longer reaches back to the replica's position, the
// replica compares itself with the inventory the primary serves next to
// its stream and repairs (ReplicaOptions.FullSync), then follows the
// stream again; a change that contradicts its state (another UIDVALIDITY)
// makes it repair that user and go on.
//
// Writers choose how long to wait ([Primary.Await], [AckMode]): not at all
// (AckAsync), until one replica has the change durably (AckOne), or until
// every named replica has it (AckAll). When the replicas do not answer in
// time, the caller chooses to refuse with a temporary error
// ([ErrNotReplicated]) or to accept and have the window counted and logged
// ([TimeoutPolicy]).
//
// # Epochs, histories and orphans
//
// Every change carries the epoch of the primary that made it. A replica
// refuses a stream or a change with an epoch lower than the highest it has
// seen ([ErrFenced]); a primary that learns of a higher epoch, from a
// replica's acknowledgement or from a replica's position, is fenced: its
// Source is demoted ([Demoter]: local writes refused, durably), Await
// fails with ErrFenced, and its streams end with a "fenced" error frame.
// [Primary.Demote] does the same on purpose, ending the streams with
// "shutting down".
//
// A position is (history, epoch, seq) ([Position]): every journal has a
// [HistoryID] and an epoch-start table ([EpochStart]), and a store that
// is promoted records the history it continued and up to where
// ([Predecessor]). A resuming replica of a [HistoryTarget] names its
// position; the primary of a [HistorySource] checks it (raft's (term,
// index) check, Kafka's leader epochs) and answers with the stream or
// with a [Divergence]: where the two histories agree and where the
// replica resumes. The replica then re-delivers what it holds beyond that
// point into the new primary as new messages ([KeepOrphans]: orphans are
// kept, counted and listed, never deleted; when its journal was compacted
// past that point and cannot list them, its repair holds every removal
// for the operator instead), resumes at once where the new
// primary continued its history, or otherwise compares and repairs, and
// resets its positions to the new history: a resync that finishes on its
// own. [Replica.Promote] drains what the replica received and
// acknowledged and makes its target a primary at a higher epoch, durably
// on both sides (a restarted promoted replica follows no one). A delayed
// destructive change is applied once an operator confirms it
// ([Replica.Confirm]) or dropped once an operator discards it
// ([Replica.Discard]: logged, counted, durable).
//
// # Divergence and guard rails
//
// Every mailbox carries a digest of its messages, flags and UIDs, kept up
// to date on every change ([Inventory]). [Compare] compares two stores
// cheaply (equal digests end the comparison) and bisects differing
// mailboxes with range digests down to the exact UIDs, reading the replica
// before the primary so that a change replicated meanwhile never looks
// like the replica being ahead; [Repair] compares each user again and
// brings the replica in step from the primary (the primary wins), UID by
// UID (a mailbox is replaced only for another UIDVALIDITY), holding
// removals larger than a configured share, and any removal of what only
// the replica has, until an operator confirms them. A
// [Comparer] runs comparisons on a schedule or on demand; an inventory can
// be compared across machines ([InventoryHandler], [NewRemoteInventory]).
// A replica's own comparer ([Replica.Comparer]) also heals the primary: a
// body the primary holds damaged (a disk that flipped a bit) is sent the
// replica's good copy, which the primary verifies before it keeps it
// ([BodyRestorer]).
// [NewExpungeGuard] makes a replica hold a mass expunge or deletion for
// confirmation instead of copying a logical disaster blindly, and
// ReplicaOptions.ApplyDelay keeps a replica behind on purpose.
//
// # Layout
//
// The package does four jobs; each has its own files, and its errors and
// options in files of their own:
//
//   - the wire codec: replicate/internal/wire (frames, the stream header,
//     heartbeats; fuzzed), internal so that its Go API can change while
//     the format on the wire stays versioned;
//   - the stream: stream_*.go ([Primary], [Replica], acknowledgements,
//     the inbox, lanes, delayed changes, promotion, resync and orphans),
//     with stream_errors.go, stream_options.go and stream_stats.go;
//   - compare and repair: compare*.go ([Compare], [Repair], [Comparer], the
//     [Inventory] and its HTTP form), with compare_errors.go and
//     compare_options.go;
//   - the guard: guard*.go ([NewExpungeGuard]), with guard_options.go.
//
// What they share is in replicate.go ([Source], [Target]), history.go
// (positions and histories) and errors.go (errors of Sources and
// Targets).
//
// # Goroutines
//
// NewPrimary starts none: the streams run in the HTTP server's handlers.
// [Replica.Run] runs the stream and the appliers until its context is
// cancelled or [Replica.Close]; [Comparer.Run] compares on its schedule.
package replicate
