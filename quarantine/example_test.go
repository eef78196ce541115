package quarantine_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/quarantine"
)

// An MX rejected a message as spam; the central store keeps it. Alice lists
// what was held for her and releases it: it is delivered once, unchanged,
// to her only.
func Example() {
	dir, err := os.MkdirTemp("", "quarantine-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// Released mail goes back into delivery; here it is just printed.
	deliver := resilmail.DelivererFunc(func(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
		b, _ := io.ReadAll(body)
		fmt.Printf("delivered %s to %s (%d bytes)\n", env.ID, env.To[0].Addr, len(b))
		return nil
	})
	auth := &quarantine.StaticAuthorizer{Admins: []string{"admin"}}
	s, err := quarantine.Open(dir, auth, &quarantine.Options{Deliverer: deliver, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()

	e := quarantine.Entry{
		ID:         "mx2-0001",
		Envelope:   resilmail.Envelope{From: "offers@bad.example", To: []resilmail.Recipient{{Addr: "alice@example.org"}, {Addr: "bob@example.org"}}},
		Recipients: []quarantine.RecipientState{{Addr: "alice@example.org"}, {Addr: "bob@example.org"}},
		Time:       time.Now(),
		Node:       "mx2",
		Reason:     quarantine.Reason{Kind: quarantine.KindSpam, Score: 7.5, Threshold: 5, Reply: "550 5.7.1 spam"},
	}
	body := "From: offers@bad.example\r\nSubject: You won\r\n\r\nNot really.\r\n"
	if err := s.Put(ctx, e, strings.NewReader(body)); err != nil {
		log.Fatal(err)
	}

	page, err := s.List(ctx, "alice@example.org", quarantine.Query{Status: quarantine.Held})
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range page.Entries {
		fmt.Printf("%s %q %s score %.1f, for %d recipient(s)\n", e.ID, e.Subject, e.Reason.Kind, e.Reason.Score, len(e.Recipients))
	}
	for range 2 { // the second release does nothing
		r, err := s.Release(ctx, "alice@example.org", "mx2-0001", nil)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("changed:", r.Changed)
	}
	// Output:
	// mx2-0001 "You won" spam score 7.5, for 1 recipient(s)
	// delivered mx2-0001.r1 to alice@example.org (59 bytes)
	// changed: [alice@example.org]
	// changed: []
}
