package storenode_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/resilmail/resilmail/failover"
	"github.com/resilmail/resilmail/failover/storenode"
	"github.com/resilmail/resilmail/replicate/store"
)

// Two stores as nodes on loopback: a is primary, b follows its replication
// stream. A switchover moves the primary role to b: a is drained, b catches
// up with every acknowledged message, a is demoted, b promoted at a higher
// epoch, and a follows b.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "storenode-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	secret := []byte("the replication secret, 32 bytes")
	peers := map[string]string{} // node name -> base URL of its Handler
	var servers []*httptest.Server
	node := func(name string) *storenode.Node {
		st, err := store.Open(filepath.Join(dir, name, "store"), &store.Options{Logger: quiet, ScrubInterval: -1})
		if err != nil {
			log.Fatal(err)
		}
		n := storenode.New(st, storenode.Options{Name: name, Secret: secret, Dir: filepath.Join(dir, name, "replica"), Peers: peers, Logger: quiet})
		srv := httptest.NewServer(n.Handler())
		servers = append(servers, srv)
		peers[name] = srv.URL
		return n
	}
	a, b := node("a"), node("b")
	defer func() {
		for _, srv := range servers {
			srv.CloseClientConnections()
			srv.Close()
		}
		for _, n := range []*storenode.Node{a, b} {
			n.Close()
			n.Store().Close()
		}
	}()

	if err := a.Store().SetEpoch(ctx, 1); err != nil { // a starts as primary
		log.Fatal(err)
	}
	if err := b.Store().SetReadOnly(true); err != nil {
		log.Fatal(err)
	}
	if err := a.Serve(); err != nil {
		log.Fatal(err)
	}
	if err := b.Follow(ctx, "a"); err != nil {
		log.Fatal(err)
	}
	if err := a.Store().CreateUser(ctx, "alice"); err != nil {
		log.Fatal(err)
	}
	if _, err := a.Store().Append(ctx, "alice", store.Inbox, nil, time.Now(), strings.NewReader("Subject: hello\r\n\r\nHi\r\n")); err != nil {
		log.Fatal(err)
	}

	rep, err := failover.Switchover(ctx, a, b, &failover.SwitchoverOptions{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range rep.Steps {
		fmt.Println("step:", s.Name, s.Err == "")
	}
	fmt.Println("new primary:", rep.To, "epoch:", b.Store().Epoch())
	msgs, err := b.Store().Fetch(ctx, "alice", store.Inbox, store.Query{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("messages on b:", len(msgs))
	for _, n := range []*storenode.Node{a, b} {
		_, err := n.Store().Append(ctx, "alice", store.Inbox, nil, time.Now(), strings.NewReader("Subject: next\r\n\r\nHi\r\n"))
		fmt.Println(n.Name(), "takes writes:", err == nil, "follows:", n.Replica() != nil)
	}
	// Output:
	// step: check true
	// step: drain true
	// step: position true
	// step: catch-up true
	// step: epoch true
	// step: demote true
	// step: promote true
	// step: follow true
	// new primary: b epoch: 2
	// messages on b: 1
	// a takes writes: false follows: true
	// b takes writes: true follows: false
}
