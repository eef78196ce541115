package replicate_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// ExampleCompare compares a replica with its primary, repairs it, and
// compares again.
func ExampleCompare() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	primary, _ := store.Open(dir+"/primary", &store.Options{Logger: quiet})
	defer primary.Close()
	replica, _ := store.Open(dir+"/replica", &store.Options{Logger: quiet})
	defer replica.Close()

	primary.CreateUser(ctx, "alice")
	primary.Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	replica.CreateUser(ctx, "bob") // not on the primary

	report, err := replicate.Compare(ctx, primary, replica, &replicate.CompareOptions{Logger: quiet})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(report)
	res, err := replicate.Repair(ctx, report, primary, replicate.BodiesFrom(primary), replica, &replicate.RepairOptions{Logger: quiet})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("repaired: %d users created, %d deleted, %d messages appended\n", res.UsersCreated, res.UsersDeleted, res.Appended)
	again, _ := replicate.Compare(ctx, primary, replica, &replicate.CompareOptions{Logger: quiet})
	fmt.Println("equal:", again.Equal())
	// Output:
	// user alice: missing
	// user bob: extra (0 messages)
	// alice/INBOX: missing (1 messages)
	// repaired: 1 users created, 1 deleted, 1 messages appended
	// equal: true
}
