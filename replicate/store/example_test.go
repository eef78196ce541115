package store_test

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
	"github.com/resilmail/resilmail/replicate/store"
)

// A primary store takes a delivery and a flag change; a replica applies the
// primary's change journal, fetching (and verifying) the body it lacks, and
// ends with the same mailbox digest.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "store-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	opts := &store.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}

	primary, err := store.Open(dir+"/primary", opts)
	if err != nil {
		log.Fatal(err)
	}
	defer primary.Close()
	if err := primary.SetEpoch(ctx, 1); err != nil {
		log.Fatal(err)
	}
	if err := primary.CreateUser(ctx, "alice"); err != nil {
		log.Fatal(err)
	}
	body := "Subject: hello\r\n\r\nHi Alice!\r\n"
	uid, err := primary.Append(ctx, "alice", "INBOX", nil, time.Now(), strings.NewReader(body))
	if err != nil {
		log.Fatal(err) // not stored: answer 451 and let the sender retry
	}
	// The message is on stable storage: LMTP may answer 250 now.
	if _, err := primary.AddFlags(ctx, "alice", "INBOX", resilmail.NewUIDSet(uid), []string{store.FlagSeen}); err != nil {
		log.Fatal(err)
	}
	msgs, err := primary.Fetch(ctx, "alice", "INBOX", store.Query{})
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range msgs {
		b, err := primary.Body(ctx, m.Digest) // verified against m.Digest
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("UID %d %v modseq %d: %q\n", m.UID, m.Flags, m.ModSeq, strings.SplitN(string(b), "\r\n", 2)[0])
	}

	// Replication: the replica applies the journal from position 0.
	replica, err := store.Open(dir+"/replica", opts)
	if err != nil {
		log.Fatal(err)
	}
	defer replica.Close()
	replica.SetReadOnly(true)
	changes, err := primary.Changes(ctx, 0, 100)
	if err != nil {
		log.Fatal(err)
	}
	for _, c := range changes {
		fmt.Println(strings.TrimSpace(fmt.Sprintf("%d %s %s %s", c.Seq, c.Kind, c.User, c.Mailbox)))
	}
	fetch := func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error) {
		b, err := primary.Body(ctx, d)
		if err != nil {
			return nil, err
		}
		return io.NopCloser(strings.NewReader(string(b))), nil
	}
	if err := replica.Apply(ctx, changes, fetch); err != nil {
		log.Fatal(err)
	}
	p, _ := primary.MailboxStatus(ctx, "alice", "INBOX")
	r, _ := replica.MailboxStatus(ctx, "alice", "INBOX")
	fmt.Println("same mailbox:", p == r, "epoch:", replica.Epoch(), "UIDNEXT:", r.UIDNext)
	// Output:
	// UID 1 [\Seen] modseq 3: "Subject: hello"
	// 1 epoch
	// 2 user-create alice
	// 3 mailbox-create alice INBOX
	// 4 append alice INBOX
	// 5 flags alice INBOX
	// same mailbox: true epoch: 1 UIDNEXT: 2
}
