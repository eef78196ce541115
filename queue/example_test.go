package queue_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
)

func Example() {
	dir, _ := os.MkdirTemp("", "queue-example")
	defer os.RemoveAll(dir)

	delivered := make(chan string)
	next := resilmail.DelivererFunc(func(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
		b, _ := io.ReadAll(body)
		delivered <- fmt.Sprintf("%s to %s: %d bytes", env.ID, env.Recipients()[0], len(b))
		return nil
	})
	q, err := queue.Open(dir, next, &queue.Options{Logger: discardLogger()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer q.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)

	// Enqueue returns once the message is on stable storage.
	env := resilmail.Envelope{ID: "msg-1", From: "alice@example.net", To: []resilmail.Recipient{{Addr: "bob@example.org"}}}
	if _, err := q.Enqueue(ctx, env, strings.NewReader("Subject: hi\r\n\r\nhello\r\n")); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(<-delivered)
	// Output: msg-1 to bob@example.org: 22 bytes
}
