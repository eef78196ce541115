package quarantine_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/quarantine"
)

// An edge MX keeps a copy of what it rejects in its outbox before it
// answers, and a Shipper hands the outbox to the central store.
func ExampleShipper() {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir, err := os.MkdirTemp("", "quarantine-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	secret := []byte("the pool's shared secret")

	// The centre: a store, served over HTTP (TLS in production).
	store, err := quarantine.Open(filepath.Join(dir, "centre"), &quarantine.StaticAuthorizer{Admins: []string{"admin"}}, &quarantine.Options{Logger: quiet})
	if err != nil {
		panic(err)
	}
	defer store.Close()
	srv := httptest.NewServer(store.IngestHandler(&quarantine.IngestOptions{Secret: secret, Logger: quiet}))
	defer srv.Close()

	// The edge: an outbox and its shipper.
	outbox, err := quarantine.OpenOutbox(filepath.Join(dir, "outbox"), &quarantine.OutboxOptions{Node: "mx2", Logger: quiet})
	if err != nil {
		panic(err)
	}
	defer outbox.Close()
	stored := make(chan struct{}, 1)
	shipper, err := quarantine.NewShipper(outbox, srv.URL, &quarantine.ShipperOptions{
		Secret: secret, Logger: quiet,
		OnBatch: func(ev quarantine.ShipEvent) {
			if ev.Stored > 0 {
				stored <- struct{}{}
			}
		},
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- shipper.Run(ctx) }()

	// An SMTP session decides to reject a message as spam.
	e := quarantine.Entry{
		ID: quarantine.NewID(time.Now()),
		Envelope: resilmail.Envelope{ID: "m1", From: "seller@example.net",
			To: []resilmail.Recipient{{Addr: "alice@example.org"}}},
		Reason: quarantine.Reason{Kind: quarantine.KindSpam, Score: 11, Threshold: 5, Reply: "550 5.7.1 spam"},
	}
	if err := outbox.Add(ctx, e, strings.NewReader("Subject: cheap pills\r\n\r\nbuy now\r\n")); err != nil {
		fmt.Println("451 4.3.0 try again later") // no copy kept: the sender must retry
	} else {
		fmt.Println(e.Reason.Reply) // the copy is safe
	}

	<-stored
	got, err := store.Get(ctx, "admin", e.ID)
	if err != nil {
		panic(err)
	}
	fmt.Println(got.Node, got.Subject, got.Recipients[0].Status)
	cancel()
	if err := <-done; err != nil {
		panic(err)
	}
	// Output:
	// 550 5.7.1 spam
	// mx2 cheap pills held
}
