// Package imapstore serves a [store.Store] over IMAP: a go-imap/v2
// (v2.0.0-beta.8) server backend with logins from an [Authenticator]
// (a Dovecot-format passwd-file, internal/passwd).
//
//	srv, err := imapstore.New(st, auth, &imapstore.Options{TLSConfig: cfg})
//	go srv.Serve(ln) // LOGIN, SELECT INBOX, FETCH ... over st's mailboxes
//	defer srv.Close()
//
// # What it serves
//
// IMAP4rev1 and IMAP4rev2 as go-imap parses them: CAPABILITY, LOGIN and
// AUTHENTICATE PLAIN (over TLS, or in clear from loopback only; failures
// delayed and rate-limited per client address by internal/loginguard),
// STARTTLS, NAMESPACE, ENABLE, LIST (LIST-EXTENDED, LIST-STATUS, CHILDREN,
// SPECIAL-USE: Drafts, Sent, Trash, Junk and Archive are created at login
// when missing), LSUB, SUBSCRIBE, STATUS (STATUS=SIZE), CREATE (with
// parents), DELETE, RENAME (INBOX moves its messages), SELECT, EXAMINE,
// FETCH (FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODYSTRUCTURE, BODY[]
// with sections and partial ranges, BODY.PEEK, BINARY, BINARY.SIZE),
// SEARCH (every key go-imap parses; ESEARCH and SEARCHRES; text keys
// match what a reader sees: RFC 2047 words, base64 and quoted-printable
// decoded, charsets turned into UTF-8, Unicode case folding, text parts
// only), STORE, COPY
// and MOVE (UIDPLUS COPYUID), EXPUNGE, UID EXPUNGE, APPEND (LITERAL+,
// APPENDLIMIT), IDLE, UNSELECT, UNAUTHENTICATE.
//
// CONDSTORE and QRESYNC (RFC 7162), which go-imap v2.0.0-beta.8's server
// does not parse, are served by a front of our own between the client and
// go-imap (front.go): it frames each command (line segments and literals,
// streamed, never more than 64 KiB held), reads the commands with RFC
// 7162 syntax whole (ENABLE CONDSTORE/QRESYNC, SELECT/EXAMINE (CONDSTORE)
// and (QRESYNC (uidvalidity modseq [known-uids ...])), FETCH's MODSEQ item
// and (CHANGEDSINCE n [VANISHED]), STORE (UNCHANGEDSINCE n) with [MODIFIED
// set], SEARCH MODSEQ, STATUS HIGHESTMODSEQ), hands go-imap the command
// without that syntax, tells the session the rest, and adds to go-imap's
// response lines what go-imap cannot write (MODSEQ, HIGHESTMODSEQ,
// VANISHED (EARLIER), [MODIFIED]). A conditional STORE is checked and
// applied in one step in the store ([store.Store.StoreFlagsIf]). The
// front also does STARTTLS (dropping what the client sent in clear after
// the command) and writes the capability list: STARTTLS while possible,
// AUTH=PLAIN only over TLS or from loopback (else LOGINDISABLED), and
// CONDSTORE and QRESYNC once logged in. Not served: QUOTA, LIST-STATUS's
// HIGHESTMODSEQ, per-flag mod-sequences (MODSEQ's entry name is
// accepted and ignored), and mailbox names in UTF-8 beyond what
// UTF8=ACCEPT gives.
//
// # Sessions and updates
//
// Every selected mailbox has one shared list of its UIDs, followed by one
// goroutine that waits on [store.Store.Watch] and reads what changed with
// [store.Store.MailboxDelta]. Each session keeps only what its client has
// not been told (view.go): UIDs expunged, messages added, flags changed
// with their mod-sequence. Deliveries (LMTP), other sessions' writes and
// a replica's applied changes reach every session that has the mailbox
// selected as EXISTS, EXPUNGE (VANISHED once QRESYNC is enabled, never
// during FETCH, STORE or SEARCH) and FETCH FLAGS (with MODSEQ once
// CONDSTORE is enabled), at the next command or at once in IDLE. A
// session's own writes are in its next response. The goroutine ends when
// the last session unselects.
//
// # Bodies
//
// BODY[] is streamed from the body's file, never loaded whole, and hashed
// as it goes: a body that does not match its digest cuts the connection
// before the literal ends (so no client keeps damaged bytes), and the store
// marks it corrupt. ENVELOPE and BODYSTRUCTURE are parsed once per body and
// kept in the store's [store.Store.Derived] cache; with Options.ParseCache
// that cache's structures are written to a file at Close (checksummed,
// renamed into place) and loaded by New, so a restart parses none of them
// again (a kill -9 leaves the previous file, or none). Sections and BINARY are
// extracted from partial reads.
//
// # Standby
//
// With Options.ReadOnly reporting true (a standby), every SELECT is an
// EXAMINE ([READ-ONLY], over TLS too: the front rewrites the command) and every write (APPEND, STORE, COPY, MOVE,
// EXPUNGE, CREATE, DELETE, RENAME, SUBSCRIBE, and the \Seen a FETCH would
// set) is refused with NO before it reaches the store, which refuses local
// writes on a replica as well: nothing is accepted that the primary would
// not see. Clients are not proxied to the primary.
//
// # Goroutines
//
// [Server.Serve] runs in the caller's goroutine and starts go-imap's
// connection goroutines (the front runs in each: it reads when go-imap
// reads) and one watcher per selected mailbox; [Server.Close]
// ends all of them.
package imapstore
