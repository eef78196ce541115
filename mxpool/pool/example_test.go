package pool_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"

	"github.com/resilmail/resilmail/mxpool/pool"
)

// The primary MX publishes the pool's policy; a secondary MX follows it
// over HTTP (long polling, on loopback here) and answers RCPT TO as the
// primary would, including a recipient added later.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "pool-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	secret := []byte("the pool's shared secret, 16+ bytes")

	pub, err := pool.OpenPublisher(filepath.Join(dir, "publisher"), secret, &pool.PublisherOptions{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	pol := &pool.Policy{Domains: map[string]*pool.DomainPolicy{
		"example.org": {Recipients: []string{"alice"}, Subaddress: "+"},
	}}
	if err := pol.Normalize(); err != nil {
		log.Fatal(err)
	}
	if _, err := pub.Publish(ctx, pol); err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewServer(pub) // an http.Server on the pool's network
	defer srv.Close()

	// The follower trusts only the publisher's public key.
	applied := make(chan uint64, 8)
	f, err := pool.OpenFollower(srv.URL, secret, filepath.Join(dir, "follower"), &pool.FollowerOptions{
		Logger:  quiet,
		Trust:   pool.Trust{Keys: []ed25519.PublicKey{pub.PublicKey()}},
		OnApply: func(v uint64) { applied <- v }, // from Run's goroutine
	})
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	fmt.Println(f.Check("alice@example.org")) // nothing heard yet
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.Run(runCtx) }()
	defer func() { stop(); <-done }()

	fmt.Println("applied version", <-applied)
	for _, rcpt := range []string{"alice@example.org", "Alice+news@example.org", "bob@example.org", "bob@example.net"} {
		fmt.Println(rcpt+":", f.Check(rcpt))
	}

	// A change on the publisher reaches the follower within one long poll.
	if _, err := pub.Update(ctx, func(p *pool.Policy) error { return p.AddRecipient("bob@example.org") }); err != nil {
		log.Fatal(err)
	}
	fmt.Println("applied version", <-applied)
	fmt.Println("bob@example.org:", f.Check("bob@example.org"))
	// Output:
	// 451 4.3.0 policy not loaded yet; try again later
	// applied version 1
	// alice@example.org: 250 2.1.5 recipient <alice@example.org> ok
	// Alice+news@example.org: 250 2.1.5 recipient <alice+news@example.org> ok
	// bob@example.org: 550 5.1.1 recipient <bob@example.org> unknown
	// bob@example.net: 550 5.7.1 relay access denied: domain example.net is not served here
	// applied version 2
	// bob@example.org: 250 2.1.5 recipient <bob@example.org> ok
}
