package backup_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/backup"
	"github.com/resilmail/resilmail/replicate/store"
)

// benchStore builds a store of n messages of about 4 KiB in 20 mailboxes
// through RestoreChanges (one fsync per batch) and backs it up once.
func benchStore(b *testing.B, n int) (*store.Store, *backup.Repo, *backup.Folder) {
	b.Helper()
	ctx := context.Background()
	st := openStore(b, b.TempDir(), nil)
	rng := rand.New(rand.NewPCG(1, 1))
	words := strings.Fields("the of and to in is that for it as was with be by on not this are or from at which but have an they you were")
	for box := 0; box < 20; box++ {
		user, name := fmt.Sprintf("user%d@example.org", box/5), fmt.Sprintf("Box%d", box)
		require.NoError(b, st.EnsureMailbox(ctx, user, name))
		status, err := st.MailboxStatus(ctx, user, name)
		require.NoError(b, err)
		bodies := map[resilmail.Digest]string{}
		var changes []resilmail.Change
		for i := 0; i < n/20; i++ {
			var sb strings.Builder
			fmt.Fprintf(&sb, "Subject: %d\r\nMessage-ID: <%x@example.net>\r\n\r\n", i, rng.Uint64())
			for sb.Len() < 4096 {
				sb.WriteString(words[rng.IntN(len(words))] + " ")
			}
			d := resilmail.DigestOf([]byte(sb.String()))
			bodies[d] = sb.String()
			changes = append(changes, resilmail.Change{Kind: resilmail.ChangeAppend, Time: time.Now().UTC(), User: user, Mailbox: name,
				MailboxID: status.ID, UIDValidity: status.UIDValidity, UID: uint32(i + 1), Digest: d, Size: int64(sb.Len()), ModSeq: uint64(i + 2), Flags: []string{`\Seen`}})
		}
		require.NoError(b, st.RestoreChanges(ctx, changes, func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader(bodies[d])), nil
		}))
	}
	f := newFolder(b)
	repo, err := backup.Open(ctx, f, &backup.Options{Logger: quiet()})
	require.NoError(b, err)
	_, err = repo.Backup(ctx, st)
	require.NoError(b, err)
	return st, repo, f
}

// BenchmarkIncremental: a run after 1% of 20 000 messages changed (100
// appends, 50 expunges, 50 flag changes), with the repository opened
// anew as a command would.
func BenchmarkIncremental(b *testing.B) {
	ctx := context.Background()
	st, _, f := benchStore(b, 20000)
	rng := rand.New(rand.NewPCG(2, 2))
	for b.Loop() {
		b.StopTimer()
		for i := 0; i < 200; i++ {
			user, name := fmt.Sprintf("user%d@example.org", i%4), fmt.Sprintf("Box%d", i%20)
			if i%20/5 != i%4 {
				user = fmt.Sprintf("user%d@example.org", i%20/5)
			}
			switch {
			case i < 100:
				_, err := st.Append(ctx, user, name, nil, time.Time{}, strings.NewReader(fmt.Sprintf("Subject: new %d %d\r\n\r\n%s\r\n", i, rng.Uint64(), strings.Repeat("x ", 2000))))
				require.NoError(b, err)
			case i < 150:
				st.Expunge(ctx, user, name, resilmail.NewUIDSet(uint32(1+rng.IntN(1000))))
			default:
				st.AddFlags(ctx, user, name, resilmail.NewUIDSet(uint32(1+rng.IntN(1000))), []string{`\Flagged`})
			}
		}
		b.StartTimer()
		repo, err := backup.Open(ctx, f, &backup.Options{Logger: quiet()})
		require.NoError(b, err)
		sum, err := repo.Backup(ctx, st)
		require.NoError(b, err)
		require.False(b, sum.Full)
	}
}

// BenchmarkRestoreOne restores one message of 20 000 into an open store,
// opening the repository as a command would.
func BenchmarkRestoreOne(b *testing.B) {
	ctx := context.Background()
	_, _, f := benchStore(b, 20000)
	dst := openStore(b, b.TempDir(), nil)
	for b.Loop() {
		repo, err := backup.Open(ctx, f, &backup.Options{Logger: quiet()})
		require.NoError(b, err)
		sum, err := repo.Restore(ctx, dst, backup.Selection{User: "user2@example.org", Mailbox: "Box11", UID: 500}, backup.RestoreOptions{})
		require.NoError(b, err)
		require.Equal(b, 1, sum.Messages+sum.Present)
	}
}

// BenchmarkFullRestore rebuilds an empty store of 20 000 messages from the
// backup alone (one bulk load), opening the repository as a command would;
// BenchmarkFullRestore/journal is the same through RestoreChanges, into a
// store that is not empty (mailbox by mailbox, through the journal).
func BenchmarkFullRestore(b *testing.B) {
	ctx := context.Background()
	_, _, f := benchStore(b, 20000)
	for _, load := range []bool{true, false} {
		name := "load"
		if !load {
			name = "journal"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				dst := openStore(b, b.TempDir(), nil)
				if !load {
					require.NoError(b, dst.CreateUser(ctx, "someone@example.org"))
				}
				b.StartTimer()
				repo, err := backup.Open(ctx, f, &backup.Options{Logger: quiet()})
				require.NoError(b, err)
				sum, err := repo.Restore(ctx, dst, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
				require.NoError(b, err)
				require.Equal(b, 20000, sum.Messages)
				b.StopTimer()
				require.NoError(b, dst.Close())
				b.StartTimer()
			}
		})
	}
}
