// Package intake is an SMTP (and LMTP) server front end for a durable
// queue: a go-smtp Backend that answers 250 to a message only once the
// queue holds it on stable storage, and a Listener that makes go-smtp
// answer exactly. Anyone embedding package queue gets a correct SMTP intake
// from it without copying the relay example.
//
// # Guarantees
//
//   - Durability: DATA (or BDAT LAST) is answered 250 "OK: queued as ID"
//     only after [Enqueuer.Enqueue] returned nil, which for a *queue.Queue
//     means the message is fsynced. Every other outcome is a 4xx or 5xx the
//     client can act on; nothing is acknowledged and then lost.
//   - Admission before data: when the Enqueuer is also an [Admitter] (a
//     *queue.Queue is), MAIL FROM (with its SIZE) and every RCPT ask it
//     first: a full queue or disk answers 452 4.3.1, an announced size over
//     the limit 552 5.3.4, before the client sends the message.
//   - Memory: the Backend streams the body into the queue; the queue holds
//     at most 256 KiB of a message in memory and spools the rest to disk
//     (see queue.Options.MaxMessageSize). A session costs about 300 KiB at
//     most, whatever the message size, plus Backend.ScanLimit (1 MiB by
//     default) when a Scanner is set.
//   - Loops: a Received header naming this node and the queue id is added
//     to every message (one grep of the id finds it on every node); a
//     message that arrives with more than Backend.MaxHops Received headers
//     is refused with 554 5.4.6 (RFC 5321 section 6.3).
//
// # Replies
//
//	situation                                 reply
//	message queued                            250 2.0.0 OK: queued as ID
//	command out of sequence (e.g. RCPT first) 503 5.5.1   (Listener; go-smtp says 502)
//	line that is no command                   500 5.5.2   (Listener; go-smtp says 501)
//	recipient refused by Backend.Accept       its own reply (451 if Rejected cannot record it)
//	too many recipients (Server.MaxRecipients) 452 4.5.3
//	recipient of another ScanPolicy class     452 4.5.3   (sent again in the next transaction)
//	queue or disk full                        452 4.3.1   (at MAIL, RCPT or DATA)
//	message over the size limit               552 5.3.4   (permanent: never 451)
//	mail loop                                 554 5.4.6
//	queue storage failed                      451 4.3.0
//	scanner verdict reject                    550 5.7.1 with the scanner's message
//	scanner verdict tempfail                  451 4.7.1 with the scanner's message
//	scanner down, slow, or answering garbage  451 4.7.1 (or 250 and tagged: ScanFailAcceptTag)
//	quarantine verdict, message kept          250 2.0.0 (or the Quarantine hook's own reply)
//	discard verdict                           250 2.0.0, and the message is dropped
//	sender refused by Backend.CheckSender     its own reply at MAIL (451 4.7.1 for a plain error)
//	quarantine verdict, cannot be kept        451 4.3.0 (550 5.7.1 without a Quarantine hook)
//	client silent (command, data timeout)     421 4.4.2, connection closed
//	too many errors in a session              421 4.7.0, connection closed
//	too many sessions from one address        421 4.7.0 at connect
//	submission: AUTH before TLS               538 5.7.11  (AUTH is not even offered)
//	submission: MAIL FROM before AUTH         530 5.7.0
//	submission: wrong password                535 5.7.8   (after the LoginGuard's delay)
//	submission: too many failed logins        454 4.7.0   (password not checked)
//	submission: sender not the user's         553 5.7.1   (Submission.SendAs; MAIL FROM and header From)
//	submission: From twice, header malformed  550 5.6.0
//	submission: header over 64 KiB            552 5.3.4
//	submission: message cannot be signed      451 4.3.0
//
// Past Listener's soft error limit every error reply is delayed by a delay
// growing with each error (Postfix's smtpd_error_sleep_time, growing).
//
// # Content scanning
//
// Backend.Data hands the body to the queue through a chain of readers (the
// Received header, the hop counter, the size limit). When Backend.Scanner
// is set, Data first reads up to Backend.ScanLimit bytes of the message
// into memory and asks the [Scanner] for a [Verdict], within
// Backend.ScanTimeout, before Enqueue; the client's reply follows the
// verdict's Action:
//
//   - accept: enqueued as it is;
//   - tag: enqueued with X-Spam-Flag, X-Spam-Status (score, required
//     score, symbols) and X-Spam-Checker-Version header fields after the
//     Received field;
//   - quarantine: handed, tagged, to Backend.Quarantine and not enqueued;
//   - discard: answered 250 and dropped (a milter's discard): never
//     delivered, logged with its queue id;
//   - tempfail and reject: refused, nothing is kept.
//
// No verdict (an error, the timeout, an unknown action, or a verdict that
// came after the deadline) is never answered 250 unless Backend.ScanFailure
// is ScanFailAcceptTag, which enqueues with "X-Spam-Status: No, unchecked"
// (and the edits of a [FailedScan], which must be made to anything let
// through).
// A message longer than ScanLimit is scanned on its first ScanLimit bytes
// (ScanEnvelope.Truncated) or, with ScanSkip, not scanned and tagged
// "unchecked". A policy that holds for every recipient wraps a Scanner as
// a [ScanMiddleware] and rewrites the verdict's Action; one that differs
// per recipient (per-domain thresholds and actions) is a [ScanPolicy]:
// recipients that would need different replies are kept apart at RCPT
// (452 4.5.3, the client sends them in another transaction), and a
// message quarantined for some recipients and accepted for others is read
// once into both the queue and Backend.Quarantine, 250 only when both kept
// it.
//
// A verdict may carry header edits ([HeaderEdit]: append, insert, change
// or remove a field, as a milter asks). They apply to the header the
// client sent, below this node's Received field, before the message is
// enqueued or quarantined; edits that cannot be applied safely (a bad
// name or value, a header longer than ScanLimit) make the scan count as
// no verdict. Sender authentication (package auth) is such a Scanner
// middleware, plus Backend.CheckSender at MAIL FROM.
//
// # Submission
//
// With Backend.Submission the Backend is a message submission server (RFC
// 6409, port 587 semantics). AUTH PLAIN and AUTH LOGIN (RFC 4954) are
// offered and accepted only inside TLS: the Listener terminates STARTTLS,
// so the Backend asks the Listener's [Conn.TLS], not go-smtp, and go-smtp's
// Server needs AllowInsecureAuth (without it AUTH fails closed). Every
// password goes through Submission.Guard, which delays failures and
// refuses an address after too many. MAIL FROM needs an authenticated
// user and an address the user may send as ([SendAsSelf] by default: the
// login name itself, or with a +detail; never "<>"), and so must every
// address of the header's From, since the message is signed for the
// domain: a user cannot have mail signed as a colleague. An authenticated
// user may send to any recipient (Backend.Accept, when set, still
// applies). The Received header says "with ESMTPSA" (RFC 3848). A message
// without From, Date or Message-ID gets them at the top of its header (RFC
// 6409 section 8; From is the envelope sender), before it is signed. The
// header is held to be checked: one longer than 64 KiB is refused, as is
// one that is not header fields followed by an empty line.
//
// With Submission.Signer (a [DKIMSigner], say) every submitted message is
// signed as the client sent it and queued with the signature below the
// Received header. The signature needs the whole message, so the session
// keeps a copy while it signs: 256 KiB in memory, the rest in a file of
// Submission.SpoolDir removed before the reply (in memory when SpoolDir is
// ""), plus the message's header, which go-msgauth holds in memory. A
// message that cannot be signed is refused with 451: nothing leaves
// unsigned.
//
// # Goroutines
//
// The package starts none of its own: go-smtp runs one goroutine per
// session and calls the Backend from it; the Listener's Conn is used by
// that goroutine alone. A DKIMSigner runs go-msgauth's signer, which has
// one goroutine per message being signed, ended before Sign returns.
package intake
