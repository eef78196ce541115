package dsn

import (
	"fmt"
	"strings"
)

// Default subjects, by the most serious action reported.
const (
	subjectFailed  = "Undelivered Mail Returned to Sender"
	subjectDelayed = "Delayed Mail (still being retried)"
	subjectSuccess = "Successful Mail Delivery Report"
)

func (r *Report) has(a Action) bool {
	for _, rs := range r.Recipients {
		if rs.Action == a {
			return true
		}
	}
	return false
}

func defaultSubject(r *Report) string {
	switch {
	case r.has(Failed):
		return subjectFailed
	case r.has(Delayed):
		return subjectDelayed
	}
	return subjectSuccess
}

// What the default text says of each action, before listing its recipients.
var intro = []struct {
	action Action
	text   string
}{
	{Failed, "Your message could not be delivered to the recipients below, and\n" +
		"delivery will not be retried."},
	{Delayed, "Your message has not been delivered yet to the recipients below. It is\n" +
		"still queued and delivery will be retried: you do not need to send it again."},
	{Delivered, "Your message was delivered to the recipients below."},
	{Relayed, "Your message was relayed to the recipients below, to a system that does\n" +
		"not report delivery: you will hear no more of it."},
	{Expanded, "Your message was delivered to the recipients below, which are lists or\n" +
		"aliases, and forwarded to their members."},
}

// defaultText explains, for each recipient, what happened and why.
func (p *prepared) defaultText() string {
	r := &p.report
	var b strings.Builder
	fmt.Fprintf(&b, "This is the mail system at %s.\n", r.ReportingMTA)
	for _, in := range intro {
		if !r.has(in.action) {
			continue
		}
		fmt.Fprintf(&b, "\n%s\n", in.text)
		for _, rs := range r.Recipients {
			if rs.Action != in.action {
				continue
			}
			fmt.Fprintf(&b, "\n<%s>: %s (status %s)\n", rs.FinalRecipient, rs.Action, rs.Status)
			if rs.DiagnosticCode != "" {
				if rs.RemoteMTA != "" {
					fmt.Fprintf(&b, "    %s said: %s\n", rs.RemoteMTA, rs.DiagnosticCode)
				} else {
					fmt.Fprintf(&b, "    %s\n", rs.DiagnosticCode)
				}
			} else if rs.RemoteMTA != "" {
				fmt.Fprintf(&b, "    reported by %s\n", rs.RemoteMTA)
			}
			if !rs.WillRetryUntil.IsZero() {
				fmt.Fprintf(&b, "    Delivery will be tried until %s.\n", formatDate(rs.WillRetryUntil))
			}
		}
	}
	switch {
	case p.original == nil:
	case p.originalCut:
		b.WriteString("\nYour message was too large to be returned whole: its header is attached.\n")
	case p.headersOnly:
		b.WriteString("\nThe header of your message is attached.\n")
	default:
		b.WriteString("\nYour message is attached.\n")
	}
	return b.String()
}
