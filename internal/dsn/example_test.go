package dsn_test

import (
	"bytes"
	"fmt"
	"log"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/dsn"
)

// A queue gives up on one recipient and bounces the message to its sender,
// returning the header only as RET=HDRS asks; then the bounce is read back.
func Example() {
	env := resilmail.Envelope{
		ID:     "q1",
		From:   "alice@example.com",
		To:     []resilmail.Recipient{{Addr: "bob@example.net", ORCPT: "rfc822;bob@example.net"}},
		Return: resilmail.ReturnHeaders,
		EnvID:  "QQ314159",
	}
	body := []byte("From: alice@example.com\r\nTo: bob@example.net\r\nSubject: lunch\r\n\r\nShall we?\r\n")
	failure := &resilmail.DeliveryError{
		Recipient: "bob@example.net", Host: "mx.example.net", Command: "RCPT TO",
		Code: 550, EnhancedCode: "5.1.1", Message: "no such user", Permanent: true,
	}

	status := dsn.FromDeliveryError(failure, dsn.Failed)
	status.OriginalRecipient = env.To[0].ORCPT
	status.LastAttemptDate = time.Date(2024, 1, 2, 10, 0, 0, 0, time.UTC)

	var b bytes.Buffer
	err := dsn.Build(&b, &dsn.Message{
		From:      "MAILER-DAEMON@relay.example.org",
		To:        env.From,
		MessageID: "bounce.q1@relay.example.org",
		Date:      time.Date(2024, 1, 2, 10, 0, 1, 0, time.UTC),
		Report: dsn.Report{
			ReportingMTA:       "relay.example.org",
			OriginalEnvelopeID: env.EnvID,
			ArrivalDate:        time.Date(2024, 1, 2, 9, 59, 0, 0, time.UTC),
			Recipients:         []dsn.RecipientStatus{status},
		},
		Original:    body,
		HeadersOnly: env.Return != resilmail.ReturnFull,
	})
	if err != nil {
		log.Fatal(err)
	}

	p, err := dsn.Parse(&b)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("To:", p.To)
	fmt.Println("Subject:", p.Subject)
	fmt.Println("Envelope:", p.Report.OriginalEnvelopeID)
	for _, r := range p.Report.Recipients {
		fmt.Printf("%s %s %s via %s: %s\n", r.FinalRecipient, r.Action, r.Status, r.RemoteMTA, r.DiagnosticCode)
	}
	fmt.Printf("Headers only: %v\n%s", p.HeadersOnly, bytes.ReplaceAll(p.Original, []byte("\r\n"), []byte("\n")))
	// Output:
	// To: alice@example.com
	// Subject: Undelivered Mail Returned to Sender
	// Envelope: QQ314159
	// bob@example.net failed 5.1.1 via mx.example.net: 550 5.1.1 no such user
	// Headers only: true
	// From: alice@example.com
	// To: bob@example.net
	// Subject: lunch
}
