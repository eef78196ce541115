// Package auth authenticates the sender of inbound mail for the first MX:
// SPF (RFC 7208, with blitiri.com.ar/go/spf), DKIM verification (RFC
// 6376) and DMARC (RFC 7489) with github.com/emersion/go-msgauth, an
// Authentication-Results field (RFC 8601) naming this administrative
// domain, and the refusal of senders whose domain publishes a null MX
// (RFC 7505 section 4.2).
//
// # Stages
//
// An [Authenticator] hooks into an intake.Backend twice:
//
//   - at MAIL FROM, as Backend.CheckSender: a sender domain whose only MX
//     is "0 ." gets 550 5.7.27 (it accepts no mail, so no bounce could
//     reach it). A DNS failure refuses nobody.
//   - at the end of DATA, as a Scanner middleware ([Authenticator.Middleware],
//     or [Authenticator.Scanner] alone): SPF of the client for the envelope
//     sender (the HELO name for the null sender), every DKIM signature,
//     and DMARC for the one From domain (the organizational domain's record
//     when the From domain has none; relaxed or strict alignment as the
//     record says; sp= for subdomains; pct= sampling). The verdict removes
//     every incoming Authentication-Results field that claims this
//     authserv-id (forged: only this domain's MXs may write it) and adds
//     this MX's at the top. The content scanner behind the middleware sees
//     the message as it will be kept, so its own header edits count on it.
//
// # What a DMARC failure does
//
//	DMARC result       policy                   verdict (default)
//	pass, none         -                        accept
//	fail               p=reject                 Options.OnReject (reject: 550 5.7.1)
//	fail               p=reject, and an SPF or
//	                   DKIM lookup failed        tempfail: 451 4.7.1 (never 550 on a DNS failure)
//	fail               p=quarantine             Options.OnQuarantine (tag)
//	fail               p=none                   accept
//	temperror          -                        accept (the record could not be read)
//	permerror          -                        accept (no single From domain, a bad record)
//
// A disposition is reject (550 5.7.1), quarantine (intake.ActionQuarantine,
// kept by the Backend's Quarantine hook), tag (X-Spam headers) or accept.
// The middleware merges its verdict with the content scanner's: the more
// severe action wins; a message DMARC refuses is not scanned.
//
// # Limits
//
// DKIM is verified on the bytes the Backend holds in memory
// (Backend.ScanLimit): a signature on a longer message is reported
// neutral ("larger than the scan limit") and DMARC then rests on SPF
// alone. With intake.ScanSkip such a message is not authenticated at all
// (and keeps its header as sent): use the default ScanPrefix where the
// Authentication-Results field is trusted downstream. When the content
// scanner behind the middleware fails, the middleware returns an
// intake.FailedScan carrying its edits, so that a Backend that accepts
// unchecked mail (intake.ScanFailAcceptTag) still removes forged fields
// and adds this MX's.
//
// # DNS
//
// Every lookup goes through Options.Resolver (a *net.Resolver by default;
// tests point one at a DNS server on loopback) within Options.Timeout per
// check. "Not found" is an answer; any other failure is a temporary error
// (temperror), never a permanent verdict.
//
// # Goroutines
//
// None: every call runs in its caller's goroutine. An Authenticator is
// safe for concurrent use.
package auth
