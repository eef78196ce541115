// Package pop3 serves the INBOX of a [store.Store] over POP3: RFC 1939
// with CAPA and response codes (RFC 2449, RFC 3206), STLS (RFC 2595),
// USER/PASS and AUTH PLAIN (RFC 5034).
//
// Serving a store's INBOXes to the users an [Authenticator] knows:
//
//	srv, err := pop3.New(st, auth, &pop3.Options{Hostname: "pop.example.org"})
//	go srv.Serve(ln) // USER/PASS, STAT, LIST, UIDL, RETR, DELE, QUIT ...
//	defer srv.Close()
//
// # Behaviour
//
//   - Passwords (USER/PASS, AUTH PLAIN) only over TLS (STLS or an
//     implicit-TLS listener) or from a loopback peer; failures are delayed
//     and rate-limited per client address (internal/loginguard).
//   - One maildrop lock per user: a second session of a user gets
//     "-ERR [IN-USE]" until the first ends.
//   - The maildrop is the INBOX as it was at login; messages delivered
//     meanwhile appear at the next session.
//   - UIDL is the mailbox's UIDVALIDITY and the message's UID, 16
//     hexadecimal digits: stable across sessions, restarts and a failover
//     (a replica keeps both).
//   - DELE only marks; the marked messages are expunged at QUIT, in the
//     UPDATE state, durably before "+OK". A connection that ends without
//     QUIT deletes nothing. On a standby (Options.ReadOnly) DELE is refused.
//   - RETR and TOP send lines ending in CRLF (a bare LF in the stored
//     message is sent as CRLF) and dot-stuffed; sizes in STAT and LIST are
//     the octets RETR sends (without the stuffing and the final "."),
//     computed once per body and cached by the store.
//   - A command line over 255 octets is answered "-ERR" and the rest of it
//     discarded; a line of over 64 KiB, an unknown or out-of-state command
//     after too many errors, or 10 minutes of silence close the session.
//     A client that stops reading is cut after a minute.
//
// # Goroutines
//
// [Server.Serve] runs in the caller's goroutine with one goroutine per
// connection; [Server.Close] closes listeners and connections and waits
// for them.
package pop3
