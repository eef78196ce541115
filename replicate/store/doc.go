// Package store is resilmail's reference mailbox store: users, mailboxes
// and messages with the metadata IMAP needs (UID, UIDVALIDITY, UIDNEXT,
// flags and keywords, internal date, size, RFC 7162 mod-sequences), kept
// durable with the discipline of the queue, and a numbered change journal
// that replication and incremental backup read.
//
// # Guarantees
//
//   - Durability: every write (Append, Copy, Move, Expunge, flag changes,
//     mailbox and user changes, SetEpoch, Apply) returns nil only once it is
//     on stable storage: a new body is written into the journal (a body
//     record) before the record of the change that references it, and
//     both are fsynced by the same journal fsync before the call returns.
//     Concurrent writers share the journal's fsyncs (group commit); none
//     is skipped, and there is no other fsync on the write path. A crash
//     or kill -9 at any instant loses no acknowledged write.
//   - Body files: the body is also written to its own file (not fsynced)
//     before the change is visible, for reads. A checkpoint fsyncs the
//     files written since the last one (one fsync per file, one per
//     folder) before it is written and before it removes journal
//     segments, so a body is always durable in the journal, in its file,
//     or both. Open rewrites from the journal every referenced file
//     written after the checkpoint that is missing or does not hash right
//     (a crash came before it reached the disk); earlier files are not
//     re-read, and damage to them later is found by reads and scrubs.
//   - Atomicity: the changes one call makes (a MOVE's appends and expunge,
//     a rename of a mailbox and its children, a user and its INBOX) are one
//     journal record: after a crash all of them are there or none.
//   - No reader sees what a crash could undo: reads (Fetch, MailboxStatus,
//     ListMailboxes, Changes, ...) return only once everything they may
//     have seen is durable, so an IMAP client never sees a UID that a crash
//     would take back. UIDs are never reused: UIDNEXT only grows, and a
//     mailbox created again gets a larger UIDVALIDITY.
//   - Integrity: a body is named by its SHA-256. Every full read ([Store.Body],
//     and so everything replication or backup ships) re-hashes it; a body
//     that does not match, or is missing, is moved aside into the folder
//     "corrupt", marked, reported, and never served until a good copy of the
//     same content is stored again (by Append or Apply), which repairs it.
//     Partial reads ([Store.Header]) are covered by [Store.Scrub], which
//     re-hashes every body in the background ([Store.Run]).
//   - Names: user and mailbox names are validated ([ValidateUser],
//     [ValidateMailbox]): UTF-8, no control characters, no "." or ".."
//     component, no empty component, length limits. Nothing on disk is
//     named after them.
//
// # The change journal
//
// Every mutation is one or more [resilmail.Change] values, numbered from 1
// (the position, Change.Seq) and stamped with the store's epoch and clock.
// [Store.Changes] returns the durable changes after a position, whole
// batches at a time, and [Store.Wait] blocks until there are new ones: that
// is the source of replication and incremental backup. [Store.Compact]
// writes a checkpoint of the whole index, fsyncs the body files written
// since the last one, and removes journal segments that hold only changes
// in the checkpoint and more than Options.KeepChanges behind the newest (or
// beyond Options.KeepBytes of journal: the journal holds the bodies, so it
// is far bigger per change than the changes alone); [Store.Run] does so
// every Options.CheckpointEvery changes or Options.CheckpointBytes of
// journal, whichever comes first. A reader behind that gets [ErrTooFarBehind] and must
// fall back to a full comparison ([Status.Digest], [Store.RangeDigest]).
//
// # Retention holds and tombstones
//
// A reader that follows the journal names its position with a hold:
// [Store.HoldJournal] (a replica: replicate's Primary holds every
// replica at the position it acknowledged) keeps the journal after it,
// and [Store.Hold] (a backup) keeps, besides, the bodies of the messages
// expunged after it. Compaction keeps the journal the lowest hold needs,
// up to Options.HoldBytes (a reader gone for longer gets ErrTooFarBehind).
// Every message removed (by an expunge, or with its mailbox or user)
// after the lowest hold with bodies leaves a [Tombstone]: where it was,
// its body's digest and size, its internal date, and when it was deleted
// (the time of the change that removed it, which the journal also
// carries); [Store.Tombstones] lists them and [Store.Body] serves their
// bodies until every hold with bodies has moved past them ([Store.Release]
// drops a hold). A new hold is durable when set; a hold moved on is
// written with the next checkpoint (a crash keeps the older position:
// more is kept, never less). A hold not renewed (set again) for
// Options.HoldMaxAge, 30 days by default, expires ([Store.ExpireHolds],
// run hourly by [Store.Run] and before each checkpoint): a reader that
// stopped following (a backup repository no longer used) no longer pins
// the journal and the bodies; each expiry is logged as a warning and
// counted in Stats.HoldsExpired. The bodies the holds keep are capped too
// (Options.HoldBodyBytes, 4 GiB by default, checked at the same times):
// over it, the hold with the lowest position is dropped the same way
// (Stats.HoldsOverCap), its reader reads in full, and the bodies only it
// kept are removed.
//
// # Bulk load
//
// [Store.Load] fills an empty store with a whole state (a server rebuilt
// from a backup) without the journal: every body is written once, into a
// body pack (a few large files instead of one file per body, see packs.go);
// one syncfs(2) makes them durable; the checkpoint, written last, is the
// commit. A load that fails or is killed leaves the store empty (with
// packs no message refers to, removed by the next load or a scrub); the
// journal starts after the load. Packed bodies are read, shared, scrubbed,
// marked corrupt and repaired like the others; a pack is removed once none
// of its bodies is needed, or by a scrub, which gives the bodies of a pack
// less than half used files of their own.
//
// # Epochs and replicas
//
// The store's epoch ([Store.Epoch]) is the highest it has seen; it only
// grows. [Store.SetEpoch] raises it durably (a promotion does so before the
// new primary writes). [Store.Apply] applies changes from a primary
// idempotently, keeping the primary's UIDs, UIDVALIDITY, mailbox ids,
// mod-sequences and epochs, fetches the bodies it lacks through a
// [BodyFunc] and verifies them, refuses a change with a lower epoch than
// it has seen ([ErrFenced]) and one that contradicts its state
// ([ErrConflict]). A replica numbers the changes in its own journal and
// remembers the primary's position per user ([Store.UpstreamPosition]),
// and which history those positions belong to ([Store.UpstreamHistory];
// [Store.ResetUpstream] moves them to another, [Store.AdoptUpstream]
// records the first).
//
// Every store has a history id ([Store.History]), an epoch-start table
// ([Store.Epochs]) and a durable role ([Store.Role]): a primary takes
// local writes; a standby ([Store.SetReadOnly], [Store.SetRole]) or a
// fenced store ([Store.Demote]) refuses them with [ErrReadOnly], after a
// restart too. [Store.Promote] raises the epoch durably, records the
// history the store continued ([Store.Predecessors], the newest
// Options.MaxPredecessors of them, 8 by default: a replica still on a
// history forgotten since compares in full instead of resuming) and takes
// local writes; it is idempotent. [Store.Orphans] lists the messages appended
// after a point of a history (an old primary's acknowledged tail), and
// [Store.KeepOrphan] keeps another node's orphan as a new message.
//
// # Mailbox digests
//
// Every mailbox keeps a [SetDigest]: the XOR of a 128-bit hash per message
// over its UID, mod-sequence, body digest, size, internal date and flags,
// updated in O(1) by every change. Equal status and digest on two stores
// mean equal mailboxes; [Store.RangeDigest] narrows a difference down to UID
// ranges.
//
// # Storage (format version 2)
//
// A store is one folder:
//
//	VERSION           "resilmail-store 2\n", or "resilmail-store 3\n" once
//	                  a load may have written packs (the journal and the
//	                  checkpoint are the same); Open refuses another
//	                  version with [ErrFormat], version 1 (bodies fsynced
//	                  on their own, outside the journal) included: it is
//	                  not converted
//	LOCK              keeps a second process out (flock)
//	HISTORY           history id, role, epoch-start table, predecessors
//	                  and upstream history (see history.go), written
//	                  atomically
//	journal/          the change journal: internal/wal segments of kind
//	                  "rstore" (length and CRC-32C per record, torn tail
//	                  truncated at Open); records are described in record.go:
//	                  batches of changes, and the bytes of every new body
//	                  (until a checkpoint has fsynced its file)
//	checkpoint        the index at one position (checksummed; see
//	                  checkpoint.go), written atomically
//	retention         the retention holds and the tombstones up to the
//	                  checkpoint (its own version, checksummed; see
//	                  retention.go), written atomically before the
//	                  checkpoint and when a hold is set or released
//	bodies/xx/<hex>   one file per distinct body, named by the hex SHA-256,
//	                  in 256 folders by its first byte; shared by every
//	                  message with that content and removed once the last
//	                  one is expunged (after the expunge is durable);
//	                  written through tmp/ and a rename, fsynced only by
//	                  the next checkpoint (the journal has the bytes until
//	                  then), rewritten from the journal at Open if missing
//	                  or damaged
//	packs/NNNNNNNN.pack
//	                  bodies written by a load, one after the other
//	packs/NNNNNNNN.idx
//	                  the pack's index: digest, offset and size of each
//	                  body, SHA-256 checksummed (packs.go); a body with its
//	                  own file under bodies/ is read from that file
//	tmp/              bodies being written; emptied at Open
//	corrupt/          damaged journal regions and bodies moved aside
//
// Open loads the checkpoint and replays the journal after it (restoring
// body files from the journal's body records as said above); changes
// missing in the middle of the journal make Open fail with [ErrCorrupt]
// (Options.Salvage opens anyway). The index lives in memory (about 150
// bytes per message), so Open reads it all; this is the reference store,
// sized for tens of thousands of mailboxes on one node.
//
// # Goroutines
//
// Open starts none. [Store.Run] does the background work (checkpoints,
// scrubs) in the caller's goroutine until its context is done. Close
// refuses new calls, waits for those in progress, and wakes [Store.Wait].
package store
