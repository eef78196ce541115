package replicate_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// Example_stream replicates a mailbox from a primary store to a replica
// store over the stream, on loopback.
func Example_stream() {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir, _ := os.MkdirTemp("", "stream-example")
	defer os.RemoveAll(dir)
	primary, _ := store.Open(dir+"/primary", &store.Options{Logger: quiet})
	defer primary.Close()
	replica, _ := store.Open(dir+"/replica", &store.Options{Logger: quiet})
	defer replica.Close()

	secret := []byte("shared secret")
	p, _ := replicate.NewPrimary(primary, &replicate.PrimaryOptions{Secret: secret, Mode: replicate.AckOne, Logger: quiet})
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	defer srv.CloseClientConnections()

	r, _ := replicate.NewReplica(replica, srv.URL, dir+"/inbox", &replicate.ReplicaOptions{Name: "r1", Secret: secret, Logger: quiet})
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()

	primary.CreateUser(ctx, "alice")
	primary.Append(ctx, "alice", "INBOX", []string{`\Seen`}, time.Time{}, strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	fmt.Println("acknowledged:", p.Await(ctx, primary.Position()) == nil)

	for r.Stats().Applied < primary.Position() {
		time.Sleep(5 * time.Millisecond)
	}
	a, _ := primary.MailboxStatus(ctx, "alice", "INBOX")
	b, _ := replica.MailboxStatus(ctx, "alice", "INBOX")
	fmt.Println("messages:", b.Messages, "same digest:", a.Digest == b.Digest)
	r.Close()
	<-done
	// Output:
	// acknowledged: true
	// messages: 1 same digest: true
}
