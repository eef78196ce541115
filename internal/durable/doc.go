// Package durable holds resilmail's small helpers for writing files that
// survive a crash: [WriteFile] replaces a whole file atomically (temporary
// file, write, fsync, rename, fsync the folder), [SyncDir] makes a folder's
// entries durable, and [Lock] keeps a second process off a data folder.
//
// The append-only record log for hot paths is the sibling package
// internal/wal.
//
// Every function takes an [FS] so that tests can inject failures; [OS] is the
// real file system.
package durable
