package mxpool_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/mxpool"
	"github.com/resilmail/resilmail/queue"
	"github.com/resilmail/resilmail/smtpout"
)

// exampleMX is a one-mailbox SMTP server that reports what it receives.
type exampleMX struct{ got chan string }

func (m exampleMX) NewSession(*smtp.Conn) (smtp.Session, error) { return &exampleSession{m: m}, nil }

type exampleSession struct {
	m    exampleMX
	rcpt []string
}

func (s *exampleSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *exampleSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.rcpt = append(s.rcpt, to)
	return nil
}
func (s *exampleSession) Data(r io.Reader) error {
	io.Copy(io.Discard, r)
	for _, to := range s.rcpt {
		s.m.got <- to
	}
	return nil
}
func (s *exampleSession) Reset()        { s.rcpt = nil }
func (s *exampleSession) Logout() error { return nil }

// An outbound queue that delivers by MX: the queue retries, the Deliverer
// plans each domain's hosts and tries them in order.
func Example() {
	mx := exampleMX{got: make(chan string, 1)}
	srv := smtp.NewServer(mx)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Close()

	// A zone of our own instead of the DNS: example.org's MX is
	// mx.example.org at 198.51.100.1 (the dialler connects to the test
	// server instead).
	zone := &mxpool.StaticResolver{}
	zone.AddMX("example.org", 10, "mx.example.org")
	zone.AddAddr("mx.example.org", netip.MustParseAddr("198.51.100.1"))
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	planner, _ := mxpool.NewPlanner(zone, nil)
	plan, _ := planner.Plan(context.Background(), "EXAMPLE.org")
	fmt.Println(plan.Domain, "via", plan.Hops[0].Host, plan.Hops[0].Source)

	port25 := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, ln.Addr().String())
	}
	out, _ := mxpool.NewDeliverer(planner, &mxpool.DelivererOptions{
		SMTP: &smtpout.Options{LocalName: "relay.example.net", Dial: port25, Logger: quiet}, Logger: quiet})
	defer out.Close()

	dir, _ := os.MkdirTemp("", "mxpool-example")
	defer os.RemoveAll(dir)
	q, err := queue.Open(dir, out, &queue.Options{Logger: quiet})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer q.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	env := resilmail.Envelope{From: "alice@example.net", To: []resilmail.Recipient{{Addr: "bob@example.org"}}}
	if _, err := q.Enqueue(ctx, env, strings.NewReader("Subject: hi\r\n\r\nhello\r\n")); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("delivered to", <-mx.got)
	// Output:
	// example.org via mx.example.org mx
	// delivered to bob@example.org
}
