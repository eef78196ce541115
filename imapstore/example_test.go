package imapstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/resilmail/resilmail/imapstore"
	"github.com/resilmail/resilmail/replicate/store"
)

type passwords map[string]string

func (p passwords) Authenticate(user, password string) error {
	if want, ok := p[user]; ok && want == password {
		return nil
	}
	return errors.New("unknown user or wrong password")
}

// An IMAP server over a store on loopback: a message is delivered to the
// store (as LMTP would), and a go-imap client logs in, selects INBOX and
// fetches the message's subject and flags.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "imapstore-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.Open(dir, &store.Options{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	if err := st.CreateUser(ctx, "alice"); err != nil {
		log.Fatal(err)
	}
	body := "From: bob@example.net\r\nSubject: lunch?\r\n\r\nAt noon.\r\n"
	if _, err := st.Append(ctx, "alice", store.Inbox, nil, time.Now(), strings.NewReader(body)); err != nil {
		log.Fatal(err)
	}

	srv, err := imapstore.New(st, passwords{"alice": "secret"}, &imapstore.Options{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	defer func() { srv.Close(); <-done }()

	// LOGIN in clear is allowed from a loopback peer only.
	c, err := imapclient.DialInsecure(ln.Addr().String(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice", "secret").Wait(); err != nil {
		log.Fatal(err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("INBOX messages:", sel.NumMessages)
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{UID: true, Envelope: true, Flags: true}).Collect()
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range msgs {
		fmt.Printf("UID %d from %s: %q flags %v\n", m.UID, m.Envelope.From[0].Addr(), m.Envelope.Subject, m.Flags)
	}
	if err := c.Logout().Wait(); err != nil {
		log.Fatal(err)
	}
	// Output:
	// INBOX messages: 1
	// UID 1 from bob@example.net: "lunch?" flags []
}
