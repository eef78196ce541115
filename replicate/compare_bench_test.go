package replicate_test

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// buildPair makes a primary and an equal replica of users x mailboxes x
// perMailbox messages quickly: the same synthetic changes (with distinct
// bodies per user, shared by the mailboxes) are applied to both stores in
// large batches.
func buildPair(b *testing.B, users, mailboxes, perMailbox, distinct int) (primary, replica *store.Store) {
	b.Helper()
	ctx := context.Background()
	primary, replica = openStore(b, b.TempDir()), openStore(b, b.TempDir())
	bodies := make(map[resilmail.Digest]string)
	body := func(u, i int) (resilmail.Digest, int64) {
		s := msgText(fmt.Sprintf("user%d message %d", u, i), strings.Repeat("x", 1000))
		d := resilmail.DigestOf([]byte(s))
		bodies[d] = s
		return d, int64(len(s))
	}
	fetch := func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(bodies[d])), nil
	}
	date := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var batch []resilmail.Change
	flush := func() {
		for _, s := range []*store.Store{primary, replica} {
			require.NoError(b, s.Apply(ctx, batch, fetch))
		}
		batch = batch[:0]
	}
	for u := range users {
		user := fmt.Sprintf("user%d", u)
		batch = append(batch, resilmail.Change{Kind: resilmail.ChangeUserCreate, User: user})
		for m := range mailboxes {
			var id resilmail.MailboxID
			id[0], id[1], id[15] = byte(u), byte(m), 1
			name := fmt.Sprintf("box%d", m)
			if m == 0 {
				name = "INBOX"
			}
			batch = append(batch, resilmail.Change{Kind: resilmail.ChangeMailboxCreate, User: user, Mailbox: name,
				MailboxID: id, UIDValidity: uint32(1000 + m), ModSeq: 1})
			for i := range perMailbox {
				d, size := body(u, i%distinct)
				var flags []string
				if i%3 == 0 {
					flags = []string{`\Seen`}
				}
				batch = append(batch, resilmail.Change{Kind: resilmail.ChangeAppend, User: user, Mailbox: name, MailboxID: id,
					UIDValidity: uint32(1000 + m), UID: uint32(i + 1), Digest: d, Size: size, InternalDate: date,
					Flags: flags, ModSeq: uint64(i + 2)})
				if len(batch) >= 20_000 {
					flush()
				}
			}
		}
	}
	flush()
	return primary, replica
}

// BenchmarkFullComparison compares a primary and a replica of 100 000
// messages (10 users x 10 mailboxes x 1 000), in process and over loopback
// HTTP, equal and with a few differences (one flag, one missing message,
// one extra message, in three mailboxes).
func BenchmarkFullComparison(b *testing.B) {
	ctx := context.Background()
	start := time.Now()
	primary, replica := buildPair(b, 10, 10, 1000, 100)
	require.GreaterOrEqual(b, primary.Stats().Messages, 100_000)
	b.Logf("setup: %v", time.Since(start))
	srv := httptest.NewServer(must(replicate.InventoryHandler(primary, &replicate.InventoryHandlerOptions{Secret: testSecret, Logger: quietLogger()})))
	defer srv.Close()
	ri := remote(b, srv.URL, testSecret)
	opts := &replicate.CompareOptions{Logger: quietLogger()}

	run := func(b *testing.B, p replicate.Inventory, want int) {
		var rep *replicate.Report
		start := time.Now()
		for b.Loop() {
			var err error
			rep, err = replicate.Compare(ctx, p, replica, opts)
			require.NoError(b, err)
		}
		require.Equal(b, want, rep.Differences(), rep.String())
		b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/comparison")
		b.ReportMetric(float64(rep.DigestCalls), "digests/comparison")
		b.ReportMetric(float64(rep.Listed), "listed/comparison")
	}
	b.Run("equal/local", func(b *testing.B) { run(b, primary, 0) })
	b.Run("equal/http", func(b *testing.B) { run(b, ri, 0) })

	_, err := primary.AddFlags(ctx, "user7", "box3", resilmail.NewUIDSet(517), []string{`\Flagged`})
	require.NoError(b, err)
	add(b, primary, "user2", "INBOX", msgText("new", "one more"))
	_, err = primary.Expunge(ctx, "user5", "box9", resilmail.NewUIDSet(250))
	require.NoError(b, err)
	b.Run("3diffs/local", func(b *testing.B) { run(b, primary, 3) })
	b.Run("3diffs/http", func(b *testing.B) { run(b, ri, 3) })
}

// BenchmarkBisectLargeMailbox compares one mailbox of 100 000 messages
// that differs by one flag: bisection by range digests finds the UID.
func BenchmarkBisectLargeMailbox(b *testing.B) {
	ctx := context.Background()
	primary, replica := buildPair(b, 1, 1, 100_000, 100)
	_, err := primary.AddFlags(ctx, "user0", "INBOX", resilmail.NewUIDSet(77_777), []string{`\Flagged`})
	require.NoError(b, err)
	var rep *replicate.Report
	start := time.Now()
	for b.Loop() {
		rep, err = replicate.Compare(ctx, primary, replica, &replicate.CompareOptions{Logger: quietLogger()})
		require.NoError(b, err)
	}
	require.Equal(b, "user0/INBOX: UID 77777 flags differ\n", rep.String())
	b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/comparison")
	b.ReportMetric(float64(rep.DigestCalls), "digests/comparison")
	b.ReportMetric(float64(rep.Listed), "listed/comparison")
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// BenchmarkRepairOneLostUID repairs a mailbox of 10 000 messages whose
// replica lost one message below its UIDNEXT: Repair compares the user
// again and restores that one message in its place (the mailbox was
// replaced whole before ChangeRestore).
func BenchmarkRepairOneLostUID(b *testing.B) {
	ctx := context.Background()
	primary, replica := buildPair(b, 1, 1, 10_000, 10_000)
	id := mailboxID(b, primary, "user0", "INBOX")
	for b.Loop() {
		b.StopTimer()
		st, err := replica.MailboxStatus(ctx, "user0", "INBOX")
		require.NoError(b, err)
		require.NoError(b, replica.Apply(ctx, []resilmail.Change{{Epoch: replica.Epoch(), Kind: resilmail.ChangeExpunge, User: "user0",
			Mailbox: "INBOX", MailboxID: id, UIDValidity: st.UIDValidity, UIDs: resilmail.NewUIDSet(5_000), ModSeq: st.HighestModSeq}}, nil))
		b.StartTimer()
		rep, err := replicate.Compare(ctx, primary, replica, &replicate.CompareOptions{Logger: quietLogger()})
		require.NoError(b, err)
		res, err := replicate.Repair(ctx, rep, primary, replicate.BodiesFrom(primary), replica, &replicate.RepairOptions{Logger: quietLogger()})
		require.NoError(b, err)
		require.Equal(b, 1, res.Appended)
		require.Zero(b, res.MailboxesReplaced)
	}
}
