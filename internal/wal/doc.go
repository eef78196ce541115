// Package wal is resilmail's append-only record log for hot paths: the
// queue's envelopes and bodies, journals. Concurrent writers share fsyncs
// (group commit) instead of skipping them.
//
// # Guarantees
//
// A record passed to [Log.Append] is durable once a later [Log.Sync] (or
// [Log.AppendSync]) returns nil. A crash at any instant loses no synced
// record, and replay after a crash never shows a record that is only partly
// written. Records are replayed in the order they were appended.
//
// Sync is a group commit: while one caller's fsync runs, others append and
// then wait; the next fsync covers all of them. No timer delays a commit.
// [Log.SyncWithin] is for records that may wait a little: it rides other
// callers' commits and leads one of its own only when none came within its
// delay. While fsyncs are quick, a commit's fsync keeps the goroutine's
// scheduler slot instead of handing it to another thread and back, which
// cost a busy relay 5-7% of its CPU; a slow disk gets the ordinary call.
// A failed write or fsync is never retried (the kernel may have dropped the
// dirty pages): the Log becomes failed, every pending and later Sync returns
// the error, and the caller must reopen it, which replays what did reach the
// disk.
//
// # On-disk format (version 2)
//
// A log is a folder (mode 0700, created with its parents fsynced) of
// segment files (mode 0600) named by a 16-digit hexadecimal sequence
// number, "0000000000000001.wal", ... Each segment starts with a 40-byte
// header: the magic "RMWAL\n", the log format version (uint16), the
// caller's kind (up to 16 bytes, NUL-padded), the caller's format version
// (uint16), two zero bytes, an 8-byte random salt, and a CRC-32C of the
// preceding bytes. Records follow, each as:
//
//	length  uint32  payload length
//	hcrc    uint32  CRC-32C of the salt and the 4 length bytes
//	crc     uint32  CRC-32C of the salt and the payload
//	payload [length]byte
//
// The salt makes every record's CRCs depend on a secret of the segment:
// bytes inside a payload (a message body) shaped as a record never pass for
// one when Open resynchronises after a damaged region. Version 1 segments
// (a 32-byte header without salt, plain CRC-32C) are still read.
//
// All integers are big-endian. The header CRC lets Open find the next record
// after a damaged one without trusting a damaged length. A read error that
// is not a record cut short (too many open files, an I/O error) is returned
// as such, never as ErrCorrupt.
//
// A segment is sealed (fsynced, never written again) before the next one is
// created, so only the last segment can end in a torn write. Open truncates a
// torn tail of the last segment silently (those records were never synced).
// A damaged region followed by valid records is corruption, not a torn
// write: Open skips it, reports it through Options.Logger and [Stats], and
// keeps every valid record after it.
//
// A large record can be reserved ([Log.Reserve]) and filled later without
// the log's lock ([Pending.Fill]): the records appended meanwhile come
// after it, and its segment is not sealed before it is filled. A crash
// during the fill leaves a region that Open skips as damaged; that record
// was never synced. [Log.OpenRecord] reads a record in place through a
// file handle of its own, which outlives the removal of its segment.
//
// Open refuses a segment whose log version or kind it does not know, and a
// caller version newer than the caller supports.
package wal
