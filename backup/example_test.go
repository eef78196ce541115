package backup_test

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
	"github.com/resilmail/resilmail/backup"
	"github.com/resilmail/resilmail/replicate/store"
)

// A store is backed up, a user deletes a message, the next run records
// the deletion; the message is listed among those deleted today and
// restored as a new message; then the whole store is rebuilt from the
// backup alone with the same UIDs.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "backup-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	st, err := store.Open(dir+"/store", &store.Options{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	st.CreateUser(ctx, "alice")
	for i := 1; i <= 3; i++ {
		st.Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nHello %d\r\n", i, i)))
	}

	folder, err := backup.NewFolder(dir + "/backup")
	if err != nil {
		log.Fatal(err)
	}
	repo, err := backup.Open(ctx, folder, &backup.Options{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	sum, err := repo.Backup(ctx, st)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("first run: full %v, %d bodies, %d messages\n", sum.Full, sum.NewBodies, sum.Messages)

	st.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(2))
	sum, _ = repo.Backup(ctx, st)
	fmt.Printf("second run: full %v, %d change(s), %d deleted kept\n", sum.Full, sum.Changes, sum.Deleted)

	today := backup.Selection{DeletedFrom: time.Now().Add(-24 * time.Hour)}
	gone, _ := repo.Messages(ctx, today)
	for _, m := range gone {
		fmt.Printf("deleted: %s/%s UID %d\n", m.User, m.Mailbox, m.UID)
	}
	rs, _ := repo.Restore(ctx, st, today, backup.RestoreOptions{})
	fmt.Printf("restored %d as new\n", rs.Messages)
	repo.Backup(ctx, st)

	rebuilt, err := store.Open(dir+"/rebuilt", &store.Options{Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	defer rebuilt.Close()
	repo.Restore(ctx, rebuilt, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
	msgs, _ := rebuilt.Fetch(ctx, "alice", "INBOX", store.Query{})
	for _, m := range msgs {
		fmt.Println("rebuilt UID", m.UID)
	}
	// Output:
	// first run: full true, 3 bodies, 3 messages
	// second run: full false, 1 change(s), 1 deleted kept
	// deleted: alice/INBOX UID 2
	// restored 1 as new
	// rebuilt UID 1
	// rebuilt UID 3
	// rebuilt UID 4
}
