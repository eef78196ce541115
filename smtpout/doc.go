// Package smtpout is resilmail's outbound SMTP and LMTP [resilmail.Deliverer]:
// it hands a message to one next hop and says per recipient what became of
// it. go-smtp's client says EHLO, AUTH and QUIT; the mail transaction itself
// is written and read here, pipelined when the server allows.
//
// A [Deliverer] sends to the fixed address of [Options].Addr with
// [Deliverer.Deliver] (a smart host, the LMTP server of the mail store), or
// to any "host:port" with [Deliverer.DeliverTo] (what an MX-selection layer
// calls once per host it tries). One call is one mail transaction for all
// of the envelope's recipients.
//
// # Guarantees
//
//   - Every recipient gets exactly one outcome, reported as
//     [resilmail.Outcomes] decodes it: nil (accepted), or a
//     [*resilmail.DeliveryError] naming the recipient, or one without a
//     recipient that applies to all recipients not named. Errors are joined
//     with [errors.Join]; Host is always the host part of the address.
//   - A failure is permanent only when no retry can succeed: a 5xx reply,
//     or a message the server cannot carry. Everything else (4xx, I/O,
//     timeouts, cancellation, anything unknown) is temporary.
//   - Once the final "." has left and before its reply is read, a lost
//     connection, a timeout or a cancellation is never reported as a plain
//     failure: every recipient whose RCPT was accepted gets a DeliveryError
//     with MaybeDelivered set and Command "end of data". A write of the
//     final "." that failed is not maybe-delivered: the server cannot have
//     the whole message.
//   - A body that cannot be read to its end is never terminated with ".":
//     the connection is dropped, so the server discards the partial message.
//   - Deliver returns promptly when its context is done: the connection is
//     closed under any I/O in flight (go-smtp's client takes no context), and
//     each reply timeout is capped by the context's deadline.
//   - The message leaves as given but for dot-stuffing (RFC 5321 §4.5.2):
//     a line starting with "." gets another, and a message that does not
//     end with CRLF gets one before the final ".". As net/textproto's
//     DotWriter, which go-smtp used, did, a bare LF is sent as CRLF.
//   - The body is never logged, nor are credentials. Log lines carry msg_id
//     (the envelope's ID), rcpt, host and err.
//
// # Classification
//
//	step                        outcome                        permanent  Command
//	dial, DNS, refused, timeout all, no recipient              no         connect
//	greeting not 220 (even 5xx) all                            no         greeting
//	EHLO/LHLO 4xx / 5xx         all                            no / yes   EHLO, LHLO
//	STARTTLS, TLSRequired:      all                            no         STARTTLS
//	  not offered, refused,
//	  handshake failed
//	AUTH (any failure)          all                            no         AUTH
//	needs SMTPUTF8, not offered all, 5.6.7                     yes        MAIL FROM
//	8BITMIME body, not offered  all, 5.6.3                     yes        MAIL FROM
//	BINARYMIME body (no BDAT)   all, 5.6.3                     yes        MAIL FROM
//	Size > server's SIZE        all, 5.3.4                     yes        MAIL FROM
//	bad sender syntax           all, 5.1.7                     yes        MAIL FROM
//	bad recipient syntax        that recipient, 5.1.3          yes        RCPT TO
//	MAIL FROM 4xx / 5xx         all                            no / yes   MAIL FROM
//	RCPT TO 4xx / 5xx           that recipient                 no / yes   RCPT TO
//	RCPT TO 552                 that recipient (RFC 5321       no         RCPT TO
//	                            §4.5.3.1.10: "too many
//	                            recipients")
//	all RCPT refused            as above; no message is sent
//	                            (pipelined, DATA is, and its
//	                            refusal is expected)
//	DATA 4xx / 5xx              all accepted                   no / yes   DATA
//	body write fails, body      all accepted                   no         DATA
//	  read fails (no "." sent)
//	write of the final "."      all accepted                   no         end of data
//	  fails
//	final reply 4xx / 5xx       all accepted                   no / yes   end of data
//	LMTP reply per recipient    that recipient                 no / yes   end of data
//	no reply after "."          each accepted one, maybe       no         end of data
//	                            delivered
//	421 at any step             all not yet refused; the       no         that step
//	                            session is dropped
//	I/O error, timeout or       all not yet refused            no         the first
//	  cancellation before the                                             command of
//	  final "."                                                           the group
//	                                                                      without a
//	                                                                      reply
//
// "All" and "all accepted" are one DeliveryError without a recipient: it
// applies to every recipient that no other error names. The other rows
// name their recipient. Code and EnhancedCode come from the reply when there was one;
// refusals decided here have Code 0 and the enhanced code shown.
//
// # Sessions and TLS
//
// With [TLSOpportunistic] (the default) STARTTLS (RFC 3207) is used when
// offered; if its handshake fails the delivery is retried once, on a new
// connection, in plain text, as Postfix does at its "may" level.
// go-smtp exports STARTTLS only as its NewClientStartTLS, which would say
// EHLO as "localhost" before TLS. So smtpout reads the greeting itself (which
// also tells a refusing greeting from a refused EHLO), go-smtp's client says
// EHLO with LocalName behind a synthetic greeting, STARTTLS is sent and its
// reply read on the connection itself, and after the handshake a new client
// continues over TLS, again behind a synthetic greeting. A server that does
// not offer STARTTLS costs no extra connection or round trip; one that does
// costs none either.
//
// Credentials (Options.Auth) are sent only over TLS or to a loopback host.
//
// # Pipelining
//
// When the server offers PIPELINING (RFC 2920), and always over LMTP (RFC
// 2033 §4.2 requires it), MAIL FROM, every RCPT TO and DATA leave in one
// write, and their replies are read in order: a transaction costs two
// round trips (the group, then the message) instead of three plus one per
// recipient. More than 100 recipients go in groups of 100, their replies
// read between groups, so that neither side can fill the other's buffers
// and block (RFC 2920 §3.2); DATA is always the last command of a group.
//
// A refused MAIL FROM is the general failure, as without pipelining; the
// refusals of the RCPTs and DATA sent with it are read and dropped, and
// the session goes on. When every RCPT is refused, the server refuses DATA
// too (RFC 2920 §3.1): no message is sent, and RSET makes the session
// clean for the next transaction. A server that accepts DATA all the same
// gets no "." (that would deliver an empty message) but a dropped
// connection. A 421 or a lost connection anywhere in the group drops the
// session; since the replies of a group are read in order, an I/O failure
// or a timeout is reported at the first command whose reply did not come,
// which may be MAIL FROM while the server is busy with a RCPT.
//
// The message is then written, dot-stuffed, through a 64 KiB buffer that
// leaves only when full and, with the final ".", at the end: a message
// that fits leaves in one write. The final write is watched: if it fails,
// the message cannot have arrived whole and the failure is temporary; once
// it has left, a lost reply is maybe-delivered.
//
// Without PIPELINING every command waits for its reply, as before, and
// the message leaves the same way.
//
// # Connection reuse
//
// After a transaction a session goes back to a per-address pool of at most
// MaxIdle idle sessions, directly after a success or a refused MAIL FROM,
// after RSET otherwise (RSET needs no new EHLO). A
// session is QUIT once it has been idle for IdleTimeout, once it has carried
// MaxPerConn transactions, after a 421, and by Close. A pooled session that
// turns out dead (an I/O error other than a timeout, or a 421, before the
// reply to MAIL FROM) is dropped and the delivery retried once on a new
// connection.
//
// # Goroutines
//
// Deliver runs on the caller's goroutine. While a session is in use,
// [context.AfterFunc] watches the context; an idle session has a
// [time.AfterFunc] timer that QUITs it. [Deliverer.Close] stops those
// timers, waits for any that already fired, and QUITs the idle sessions;
// after Close returns the Deliverer runs nothing.
//
// # Envelope parameters
//
// MAIL FROM carries SIZE when the server offers SIZE and the size is known
// (RFC 1870), BODY=8BITMIME when the server offers 8BITMIME (RFC 6152),
// SMTPUTF8 when the envelope says so or an address is not ASCII (RFC 6531),
// and RET and ENVID when the server offers DSN (RFC 3461); RCPT TO carries
// NOTIFY and ORCPT then. They are written byte for byte as go-smtp's client
// (v0.25) writes them, ENVID and rfc822 ORCPT as xtext, utf-8 ORCPT as
// utf-8-addr-unitext to a server that offers SMTPUTF8 and as
// utf-8-addr-xtext otherwise (RFC 6533 §3). ORCPT is taken in decoded form, "rfc822;addr" or
// "utf-8;addr" (RFC 6533); an rfc822 address that is not ASCII travels as
// utf-8. A parameter the server could not parse (ENVID that is not
// printable ASCII, RET of another value, ORCPT of another type) is left
// out, not failed on.
//
// A server that does not offer DSN takes on no notification duty: every
// recipient it accepts is reported through [resilmail.ReportRelayed], for
// the caller to send the "relayed" DSN that a NOTIFY=SUCCESS asks for. An
// 8-bit body (BODY=8BITMIME) to a server that does not offer 8BITMIME is
// refused before MAIL FROM with 5.6.3, which bounces with that reason: it
// is never downgraded, since a quoted-printable rewrite would break the
// DKIM signatures the message carries.
//
// RFCs: 5321 (SMTP), 2033 (LMTP), 2920 (PIPELINING), 3207 (STARTTLS), 8314 (implicit TLS),
// 4954 (AUTH), 1870 (SIZE), 6152 (8BITMIME), 6531 (SMTPUTF8), 3461 and
// 6533 (DSN), 3463 and 2034 (enhanced status codes), 7435 (opportunistic
// security).
package smtpout
