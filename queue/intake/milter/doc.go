// Package milter is an intake.Scanner that asks a milter (Sendmail's mail
// filter protocol, as Postfix speaks it: spamass-milter, clamav-milter,
// OpenDKIM, rspamd's proxy worker in milter mode) about each message at
// the end of DATA. The protocol's codec is github.com/d--j/go-milter's
// client; this package drives one conversation per message and turns its
// outcome into an intake.Verdict.
//
// # Conversation
//
// Each Scan dials the milter (its context bounds the dial and every read
// and write; Options.Timeout bounds each read and write too), negotiates
// protocol version 6 offering only header changes and quarantine, then
// sends connect (client IP, "[IP]" as its name), HELO, MAIL FROM, one
// RCPT per recipient, DATA, the header fields as the client sent them
// (values without the one space after the colon, as Sendmail sends them),
// end of header, the body in chunks of 64 KiB, and end of message. The
// macros sent are j (Options.Hostname), {daemon_name}, i (the queue id
// the client is told) and {auth_authen} when the session authenticated.
// The milter's answer at any step ends the conversation.
//
// # Verdicts
//
//	milter answer                      verdict
//	accept, continue at the end        accept, with the header changes asked
//	quarantine (SMFIR_QUARANTINE)      quarantine, reason as the message
//	discard                            discard: 250, then dropped
//	reject                             reject: 550 5.7.1
//	tempfail                           tempfail: 451 4.7.1
//	reply code 5xx / 4xx with text     reject / tempfail with that text (codes stripped)
//	add, insert, change header         intake.HeaderEdit (applied by intake; unsafe ones refused)
//	X-Spamd-Result or X-Spam-Status    the verdict's Score, Required and Symbols (rspamd's
//	among the headers added            "[3.70 / 15.00]; SYM(0.20)...", SpamAssassin's
//	                                   "score=7.1 required=5.0 tests=A,B"); none: all zero
//	add or remove a recipient, change
//	the sender or the body             no verdict: this MTA does not carry them out
//	refused connection, reset, timeout,
//	garbage, out-of-protocol answer    no verdict (error wrapping ErrMilter)
//
// No verdict means 451 4.7.1 by default (intake.Backend.ScanFailure), as
// Postfix's milter_default_action = tempfail.
//
// # Goroutines
//
// None: Scan runs in the caller's goroutine and closes its connection
// before it returns (context.AfterFunc closes it when the context ends
// first). A Scanner is safe for concurrent use.
package milter
