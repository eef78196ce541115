package intake_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
	"github.com/resilmail/resilmail/queue/intake"
)

// An SMTP server that queues durably before it answers 250, in front of a
// queue that delivers to the next hop.
func Example() {
	dir, _ := os.MkdirTemp("", "intake-example-")
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	next := resilmail.DelivererFunc(func(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
		return nil // the next hop: smtpout, mxpool, an LMTP store ...
	})
	q, err := queue.Open(dir, next, &queue.Options{Logger: quiet, MinFreeBytes: -1})
	if err != nil {
		panic(err)
	}
	defer q.Close()

	srv := smtp.NewServer(&intake.Backend{Queue: q, Hostname: "mx.example.org", Logger: quiet})
	srv.Domain = "mx.example.org"
	srv.MaxMessageBytes = 32 << 20
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	ln := intake.NewListener(tcp, &intake.ListenerOptions{Logger: quiet})
	ln.Configure(srv)
	go srv.Serve(ln)
	defer srv.Close()

	// A client sends a message; the 250 means it is on disk.
	c, err := smtp.Dial(tcp.Addr().String())
	if err != nil {
		panic(err)
	}
	defer c.Close()
	c.Hello("client.example.net")
	err = c.SendMail("alice@example.net", []string{"bob@example.org"}, strings.NewReader("Subject: hello\r\n\r\nhello\r\n"))
	fmt.Println("sent:", err == nil)
	fmt.Println("queued:", len(q.List(queue.Filter{})))

	// A command out of sequence gets 503, not go-smtp's 502.
	err = c.Rcpt("bob@example.org", nil)
	fmt.Println(err.(*smtp.SMTPError).Code)
	// Output:
	// sent: true
	// queued: 1
	// 503
}
