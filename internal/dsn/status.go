package dsn

import "github.com/resilmail/resilmail"

// DiagnosticTypeResilmail is the diagnostic type [FromDeliveryError] gives a
// failure that is not an SMTP reply: a refused connection, a DNS error.
const DiagnosticTypeResilmail = "X-Resilmail"

// FromDeliveryError returns the status to report with action a for the
// recipient de names: its RemoteMTA is de.Host, its DiagnosticCode the SMTP
// reply (or, when there was none, the error's text, with diagnostic type
// [DiagnosticTypeResilmail]), its Status de.EnhancedCode when that is a
// valid code that fits a, and otherwise a default:
//
//   - Failed: 5.0.0 for a permanent error, 4.4.7 (delivery time expired)
//     for a temporary one;
//   - Delayed: 4.0.0;
//   - Delivered, Relayed, Expanded: 2.0.0.
//
// A nil de gives the default status and no diagnostic. FinalRecipient is
// de.Recipient; the caller sets OriginalRecipient and the dates.
func FromDeliveryError(de *resilmail.DeliveryError, a Action) RecipientStatus {
	rs := RecipientStatus{Action: a}
	permanent := false
	if de != nil {
		rs.FinalRecipient = de.Recipient
		rs.RemoteMTA = de.Host
		permanent = de.Permanent
		if ValidStatus(de.EnhancedCode) && fitsAction(a, de.EnhancedCode[0]) {
			rs.Status = de.EnhancedCode
		}
		rs.DiagnosticCode = de.Reply()
		if de.Code == 0 && rs.DiagnosticCode != "" {
			rs.DiagnosticType = DiagnosticTypeResilmail
		}
	}
	if rs.Status == "" {
		switch {
		case a == Failed && permanent:
			rs.Status = "5.0.0"
		case a == Failed:
			rs.Status = "4.4.7"
		case a == Delayed:
			rs.Status = "4.0.0"
		default:
			rs.Status = "2.0.0"
		}
	}
	return rs
}
