package pop3_test

import (
	"bufio"
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

	"github.com/resilmail/resilmail/pop3"
	"github.com/resilmail/resilmail/replicate/store"
)

type passwords map[string]string

func (p passwords) Authenticate(user, password string) error {
	if want, ok := p[user]; ok && want == password {
		return nil
	}
	return errors.New("unknown user or wrong password")
}

// A POP3 server over a store on loopback: a client logs in with USER/PASS,
// asks STAT, retrieves the one message delivered to the INBOX and quits.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "pop3-example-")
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
	body := "Subject: hello\r\n\r\nHi Alice!\r\n"
	if _, err := st.Append(ctx, "alice", store.Inbox, nil, time.Now(), strings.NewReader(body)); err != nil {
		log.Fatal(err)
	}

	srv, err := pop3.New(st, passwords{"alice": "secret"}, &pop3.Options{Logger: quiet, Hostname: "pop.example.org"})
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

	// A raw client; passwords are allowed in clear from a loopback peer.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	line := func() string {
		l, err := r.ReadString('\n')
		if err != nil {
			log.Fatal(err)
		}
		return strings.TrimSuffix(l, "\r\n")
	}
	fmt.Println(strings.HasPrefix(line(), "+OK")) // the greeting
	for _, cmd := range []string{"USER alice", "PASS secret", "STAT", "RETR 1", "QUIT"} {
		fmt.Fprintf(c, "%s\r\n", cmd)
		fmt.Println("C:", cmd)
		reply := line()
		fmt.Println("S:", reply)
		if cmd == "RETR 1" && strings.HasPrefix(reply, "+OK") {
			for l := line(); l != "."; l = line() {
				fmt.Println(strings.TrimSpace("S: " + l)) // the message, dot-stuffed
			}
			fmt.Println("S: .")
		}
	}
	// Output:
	// true
	// C: USER alice
	// S: +OK send PASS
	// C: PASS secret
	// S: +OK maildrop locked and ready, 1 messages
	// C: STAT
	// S: +OK 1 29
	// C: RETR 1
	// S: +OK 29 octets
	// S: Subject: hello
	// S:
	// S: Hi Alice!
	// S: .
	// C: QUIT
	// S: +OK bye, 0 messages deleted
}
