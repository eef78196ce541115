// Package dsn builds and parses delivery status notifications: the bounces
// ("failed"), delay warnings ("delayed") and success notices ("delivered",
// "relayed", "expanded") that a mail server sends back to the sender of a
// message.
//
// [Build] writes a [Message] as a multipart/report message whose parts are a
// human-readable explanation, the machine-readable [Report] and the original
// message or its header. [Parse] reads one back into a [Parsed], from this
// package or from other servers (Postfix, Exim, ...).
//
// # Format
//
// A notification written by Build looks like this (abridged: each part also
// has a Content-Description and a Content-Transfer-Encoding; lines end in
// CRLF):
//
//	Date: Tue, 02 Jan 2024 10:00:00 +0000
//	From: Mail Delivery System <MAILER-DAEMON@relay.example.org>
//	To: <alice@example.com>
//	Subject: Undelivered Mail Returned to Sender
//	Message-Id: <bounce.1@relay.example.org>
//	Auto-Submitted: auto-replied
//	Mime-Version: 1.0
//	Content-Type: multipart/report; boundary="dsn=_..."; report-type=delivery-status
//
//	--dsn=_...
//	Content-Type: text/plain; charset=utf-8
//
//	(the explanation)
//	--dsn=_...
//	Content-Type: message/delivery-status
//
//	Reporting-MTA: dns; relay.example.org
//	Arrival-Date: Tue, 02 Jan 2024 09:58:00 +0000
//
//	Final-Recipient: rfc822; bob@example.net
//	Action: failed
//	Status: 5.1.1
//	Remote-MTA: dns; mx.example.net
//	Diagnostic-Code: smtp; 550 5.1.1 no such user
//
//	--dsn=_...
//	Content-Type: text/rfc822-headers
//
//	(the header of the original message)
//	--dsn=_...--
//
// When an address, a value the remote server sent or the original header is
// not ASCII, the parts are message/global-delivery-status, message/global
// and message/global-headers instead (RFC 6533), and a non-ASCII
// Final-Recipient is written "utf-8; addr".
//
// # Guarantees
//
// Values that come from outside (a remote server's reply and host name, the
// sender's ENVID and ORCPT) cannot change the structure of a notification:
// control characters, CR and LF among them, become spaces, invalid UTF-8
// becomes '?', long values are folded at spaces and cut so that no line
// reaches 998 octets, and the original message is returned with CRLF line
// ends and its long lines broken. Build validates what it writes (status
// codes, actions, required fields) and writes nothing when a [Message] is
// invalid; it caps the returned message at [Message].MaxOriginal bytes,
// falling back to its header.
//
// Parse never panics, reads at most [MaxParseSize] bytes and at most
// [MaxParseRecipients] recipients, and returns values in the same sanitised
// form Build writes, so that Build and Parse round-trip. It is lenient; use
// [Report.Validate] to check what it returns.
//
// The package does no I/O beyond the reader and writer it is given, keeps
// no state and starts no goroutine; its functions are safe for concurrent
// use.
//
// # Standards
//
//   - RFC 3464, an extensible message format for DSNs: the
//     message/delivery-status fields.
//   - RFC 3461, the SMTP DSN extension: ENVID, ORCPT, RET.
//   - RFC 3463, enhanced mail system status codes.
//   - RFC 6522, the multipart/report media type, and text/rfc822-headers.
//   - RFC 6533, internationalized DSNs: the utf-8 address type and the
//     message/global* media types.
//   - RFC 3834, Auto-Submitted: auto-replied.
//   - RFC 5322, RFC 2045 and RFC 2046 for the message itself.
//
// # Example
//
//	err := dsn.Build(w, &dsn.Message{
//		From:      "MAILER-DAEMON@relay.example.org",
//		To:        env.From,
//		MessageID: "bounce.1@relay.example.org",
//		Report: dsn.Report{
//			ReportingMTA: "relay.example.org",
//			Recipients: []dsn.RecipientStatus{
//				dsn.FromDeliveryError(deliveryErr, dsn.Failed),
//			},
//		},
//		Original:    body,
//		HeadersOnly: env.Return != resilmail.ReturnFull,
//	})
package dsn
