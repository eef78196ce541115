package smtpout_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/smtpout"
)

// exampleSession accepts mail for bob@example.com only.
type exampleSession struct{}

func (exampleSession) Reset()        {}
func (exampleSession) Logout() error { return nil }
func (exampleSession) Mail(from string, _ *smtp.MailOptions) error {
	fmt.Println("server: mail from", from)
	return nil
}
func (exampleSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if to != "bob@example.com" {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	return nil
}
func (exampleSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	fmt.Printf("server: %d bytes received\n", len(b))
	return err
}

func Example() {
	// A go-smtp server stands for the next hop.
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return exampleSession{}, nil
	}))
	srv.Domain = "mx.example.com"
	srv.ErrorLog = log.New(io.Discard, "", 0)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()

	d, err := smtpout.New(&smtpout.Options{
		Addr:      l.Addr().String(),
		LocalName: "relay.example.net",
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()

	env := resilmail.Envelope{
		ID:   "example-1",
		From: "alice@example.net",
		To:   []resilmail.Recipient{{Addr: "bob@example.com"}, {Addr: "nobody@example.com"}},
	}
	err = d.Deliver(context.Background(), env, strings.NewReader("Subject: hello\r\n\r\nHello, Bob.\r\n"))
	outcomes := resilmail.Outcomes(env.Recipients(), err)
	for _, rcpt := range env.Recipients() {
		switch de := outcomes[rcpt]; {
		case de == nil:
			fmt.Println(rcpt, "delivered")
		case de.Permanent:
			fmt.Println(rcpt, "bounced:", de.Reply())
		default:
			fmt.Println(rcpt, "deferred:", de.Reply())
		}
	}
	// Output:
	// server: mail from alice@example.net
	// server: 31 bytes received
	// bob@example.com delivered
	// nobody@example.com bounced: 550 5.1.1 no such user
}
