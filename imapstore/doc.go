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
// SEARCH (every key go-imap parses; ESEARCH and SEARCHRES), STORE, COPY
// and MOVE (UIDPLUS COPYUID), EXPUNGE, UID EXPUNGE, APPEND (LITERAL+,
// APPENDLIMIT), IDLE, UNSELECT, UNAUTHENTICATE.
//
// Not served, because go-imap v2.0.0-beta.8's server does not parse them:
// CONDSTORE and QRESYNC (the store keeps mod-sequences and the expunged
// UIDs VANISHED needs: [store.Store.MailboxDelta]), QUOTA, and mailbox
// names in UTF-8 beyond what UTF8=ACCEPT gives.
//
// # Sessions and updates
//
// Every selected mailbox has one shared view (its UIDs in order) followed
// by one goroutine that waits on [store.Store.Watch] and reads what
// changed with [store.Store.MailboxDelta]: deliveries (LMTP), other
// sessions' writes and a replica's applied changes reach every session
// that has the mailbox selected as EXISTS, EXPUNGE and FETCH FLAGS, at the
// next command or at once in IDLE. A session's own writes are in its next
// response. The goroutine ends when the last session unselects.
//
// # Bodies
//
// BODY[] is streamed from the body's file, never loaded whole, and hashed
// as it goes: a body that does not match its digest cuts the connection
// before the literal ends (so no client keeps damaged bytes), and the store
// marks it corrupt. ENVELOPE and BODYSTRUCTURE are parsed once per body and
// kept in the store's [store.Store.Derived] cache. Sections and BINARY are
// extracted from partial reads.
//
// # Standby
//
// With Options.ReadOnly reporting true (a standby), every SELECT is an
// EXAMINE ([READ-ONLY]) and every write (APPEND, STORE, COPY, MOVE,
// EXPUNGE, CREATE, DELETE, RENAME, SUBSCRIBE, and the \Seen a FETCH would
// set) is refused with NO before it reaches the store, which refuses local
// writes on a replica as well: nothing is accepted that the primary would
// not see. Clients are not proxied to the primary.
//
// # Goroutines
//
// [Server.Serve] runs in the caller's goroutine and starts go-imap's
// connection goroutines and one watcher per selected mailbox; [Server.Close]
// ends all of them.
package imapstore
