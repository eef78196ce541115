// Package backup keeps incremental, deduplicated, compressed, optionally
// encrypted and verifiable backups of a mailbox store, driven by the
// store's change journal: a run costs in proportion to what changed since
// the last one, not to the size of the store. Deleted messages are kept
// for a retention period counted from their deletion (7 days by default),
// and anything can be restored: one message, one mailbox, one user or
// everything, as of a snapshot or a point in time, into a live store as new
// messages or into an empty one with the same UIDs and UIDVALIDITY.
//
// A [Repo] lives on a [Target] (a [Folder] by default, or a [Remote]
// repository on another machine served by [NewHandler]) and reads a
// [Source] (replicate/store's *Store, through methods that use only the
// root package's vocabulary: this package does not import replicate).
//
//	repo, err := backup.Open(ctx, backup.NewFolder("/backup/mail"), &backup.Options{Key: key})
//	sum, err := repo.Backup(ctx, st)  // first run: everything; then: the journal since
//	_, err = repo.Restore(ctx, newStore, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
//
// # What a run does
//
// The first run (and any run whose store is of another history, or whose
// journal no longer reaches back to the backup's position) reads the
// store's whole state at one journal position ([Source.FullState]); what
// the backup held that the store no longer has is then recorded as
// deleted at the time of that run. Other runs read the journal's changes
// after the backup's position ([Source.Changes]). For every appended
// message whose body the repository lacks, the body is read
// ([Source.Body], which checks its SHA-256), compressed with zstd, sealed
// and appended to a pack; a body is stored once whatever the number of
// messages, mailboxes and users that hold it. Then the changes are
// written as a segment, and at the end of a run ([Repo.Backup]) or on a
// schedule ([Repo.Follow]) a snapshot manifest. A message that the store
// no longer gives when the backup reads it (expunged since) is counted as
// lost; replicate/store prevents that by holding its journal and the
// bodies of expunged messages at the backup's position ([Holder]), which
// every run moves on. A corrupt body is logged and never stored, and later runs
// read again the bodies of live messages the repository lacks.
//
// # Guarantees
//
//   - Order: a pack and its index (written at once: a crash may leave one
//     without the other, which nothing refers to and Prune removes) are
//     durable before the change segment or the snapshot that refers to
//     their bodies. A run that fails or is
//     killed at any instant leaves no snapshot or segment that refers to
//     something missing; the next run continues from the newest of the
//     last segment and the last snapshot written (bodies already written
//     are not written again). A run's last segment and its snapshot are
//     written at once, each complete without the other.
//   - Integrity: every object carries a CRC-32C or, when encrypted, an
//     AES-256-GCM tag that also covers its kind; every body read back is
//     checked against its SHA-256. A missing or damaged blob, a wrong key,
//     a torn manifest: a clear error naming the blob, never bytes that do
//     not match.
//   - Retention: a message deleted at time T (its expunge, or the deletion
//     of its mailbox or user, in the journal) stays in every snapshot
//     written before T+Retention, and Prune keeps the newest
//     Options.KeepSnapshots snapshots and every body, index and segment
//     they need. Prune removes nothing a kept snapshot refers to and is
//     safe to kill at any instant.
//   - One writer: Backup, Follow and Prune take the repository's lock, a
//     blob created with [Target.PutIfAbsent] and refreshed while held. A
//     lock whose holder stopped refreshing it for Options.LockTTL, or whose
//     process no longer runs on this host, is taken over, so a crashed
//     run never leaves the repository locked for good. Restore, Verify and
//     listings take no lock; a restore that finds a pack or a manifest
//     removed by a concurrent Prune reads the repository's indexes again
//     and goes on (a body a kept snapshot needs is never removed, only
//     moved to a rewritten pack).
//   - Restore into an empty store keeping UIDs is one bulk load (see
//     [Loader]): nothing of it is visible until all of it is durable.
//
// # Repository format (version 1)
//
// A repository is a set of blobs on a Target:
//
//	config                   JSON: {"format": "resilmail-backup", "version": 1,
//	                         "id", "created", "encryption": "none" or
//	                         "aes-256-gcm", "key_check"}; Open refuses another
//	                         version with ErrFormat
//	lock                     JSON: owner, host, pid, operation, acquired, expires
//	packs/<id>               sealed bodies, one after the other
//	index/<id>               the index of pack <id>: digest, offset, length,
//	                         size of each body (sealed)
//	changes/<L>-<first>-<last>  the journal's changes first..last of lineage L
//	                         (sealed; each change in resilmail.Change's binary
//	                         encoding)
//	snapshots/<time>-<L>-<pos>  the manifest of the store at journal position
//	                         pos (sealed)
//
// Numbers in names are hexadecimal: L on 8 digits, positions and times
// (Unix nanoseconds) on 16. A lineage starts at every full read; a
// state at a point in time is the newest snapshot at or before it plus the
// changes of its lineage after it.
//
// Every object but config and lock is sealed: the bytes "RB", the format
// version 1, its kind ('b' body, 'i' index, 'c' changes, 's' snapshot), a
// flags byte (1: zstd-compressed, 2: encrypted), then either the payload
// and its CRC-32C (big-endian), or a 12-byte random nonce and the
// payload sealed with AES-256-GCM, with the five header bytes as
// additional data. The key is derived from the operator's key
// ([ReadKeyFile]) with HKDF-SHA-256, salted with the repository's id; the
// config holds an HMAC of it so that a wrong key is refused up front
// ([ErrWrongKey]). Names reveal no digest of a body.
//
// A manifest (version 1; see encodeManifest in manifest.go) holds the
// journal position, the store's history id and epoch, then every user
// (with subscriptions and deletion time), every mailbox (id, user, name,
// UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, creation and deletion times) and
// every message (UID, MODSEQ, body digest and size, internal date, flags,
// when it was backed up and when it was deleted). Decoders refuse unknown
// versions, truncated or trailing bytes and broken structure; they are
// fuzzed.
//
// # Goroutines
//
// [Repo.Backup], [Repo.Follow], [Repo.Prune], [Repo.Verify] and
// [Repo.Restore] run in the caller's goroutine and start helpers (body
// reads, compression, lock refresh) that have all exited when they
// return. Follow runs until its context is done, then reads what the
// journal holds by then, writes it and returns nil. Open starts no goroutine.
package backup
