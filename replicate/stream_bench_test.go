package replicate_test

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// benchPair is a primary store served over loopback HTTP and a replica
// store following it.
type benchPair struct {
	primary, replica *store.Store
	p                *replicate.Primary
	r                *replicate.Replica
}

func newBenchPair(b *testing.B, mode replicate.AckMode, primary *store.Store) *benchPair {
	return newBenchPairInline(b, mode, primary, 0)
}

// newBenchPairInline is newBenchPair with PrimaryOptions.InlineBody set.
func newBenchPairInline(b *testing.B, mode replicate.AckMode, primary *store.Store, inline int) *benchPair {
	b.Helper()
	dir := b.TempDir()
	if primary == nil {
		var err error
		primary, err = store.Open(dir+"/primary", &store.Options{Logger: quietLogger(), ScrubInterval: -1})
		require.NoError(b, err)
		b.Cleanup(func() { primary.Close() })
	}
	replica, err := store.Open(dir+"/replica", &store.Options{Logger: quietLogger(), ScrubInterval: -1})
	require.NoError(b, err)
	b.Cleanup(func() { replica.Close() })
	secret := []byte("bench")
	p, err := replicate.NewPrimary(primary, &replicate.PrimaryOptions{Secret: secret, Mode: mode, AckTimeout: 30 * time.Second, InlineBody: inline, Logger: quietLogger()})
	require.NoError(b, err)
	srv := httptest.NewServer(p.Handler())
	r, err := replicate.NewReplica(replica, srv.URL, dir+"/inbox", &replicate.ReplicaOptions{Name: "r1", Secret: secret, Logger: quietLogger()})
	require.NoError(b, err)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	b.Cleanup(func() {
		stop()
		r.Close()
		<-done
		srv.CloseClientConnections()
		srv.Close()
	})
	return &benchPair{primary: primary, replica: replica, p: p, r: r}
}

// body10K is message i: about 10 KiB of text lines.
func body10K(i int) string {
	return msgText(fmt.Sprintf("bench %d", i), strings.Repeat(fmt.Sprintf("line of message %08d, some text to fill it\r\n", i), 230))
}

// BenchmarkReplicationLag appends 10 KiB messages to one user at a steady
// rate for two seconds per iteration, with a flag change after every
// fourth append, and measures how long each change takes from the
// primary's acknowledgement to being applied on the replica (async mode:
// the writers do not wait for the replica).
func BenchmarkReplicationLag(b *testing.B) {
	for _, rate := range []int{500, 1000} {
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) {
			bp := newBenchPair(b, replicate.AckAsync, nil)
			ctx := context.Background()
			require.NoError(b, bp.primary.CreateUser(ctx, "alice"))
			var (
				mu      sync.Mutex
				pending = map[uint64]time.Time{} // position -> when the primary had it
				lags    []time.Duration
			)
			stopPoll := make(chan struct{})
			polled := make(chan struct{})
			go func() {
				defer close(polled)
				for {
					applied := bp.r.Stats().Applied
					now := time.Now()
					mu.Lock()
					for pos, at := range pending {
						if pos <= applied {
							lags = append(lags, now.Sub(at))
							delete(pending, pos)
						}
					}
					n := len(pending)
					mu.Unlock()
					select {
					case <-stopPoll:
						if n == 0 {
							return
						}
					default:
					}
					time.Sleep(100 * time.Microsecond)
				}
			}()
			const writers = 4
			start := time.Now()
			ops := 0
			for b.Loop() {
				total := rate * 2
				var wg sync.WaitGroup
				for w := range writers {
					wg.Go(func() {
						var uids []uint32
						for i := w; i < total; i += writers {
							if d := time.Until(start.Add(time.Duration(ops+i) * time.Second / time.Duration(rate))); d > 0 {
								time.Sleep(d)
							}
							uid, err := bp.primary.Append(ctx, "alice", store.Inbox, nil, time.Time{}, strings.NewReader(body10K(ops+i)))
							if err != nil {
								b.Error(err)
								return
							}
							at := time.Now()
							pos := bp.primary.Position()
							uids = append(uids, uid)
							if len(uids)%4 == 0 {
								if _, err := bp.primary.AddFlags(ctx, "alice", store.Inbox, resilmail.NewUIDSet(uids[len(uids)/2]), []string{`\Seen`}); err != nil {
									b.Error(err)
									return
								}
								at, pos = time.Now(), bp.primary.Position()
							}
							mu.Lock()
							pending[pos] = at
							mu.Unlock()
						}
					})
				}
				wg.Wait()
				ops += total
			}
			elapsed := time.Since(start)
			close(stopPoll)
			select {
			case <-polled:
			case <-time.After(60 * time.Second):
				b.Fatalf("the replica never caught up: applied %d of %d", bp.r.Stats().Applied, bp.primary.Position())
			}
			slices.Sort(lags)
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			b.ReportMetric(float64(ops)/elapsed.Seconds(), "appends/s")
			b.ReportMetric(ms(lags[len(lags)/2]), "p50-ms")
			b.ReportMetric(ms(lags[len(lags)*99/100]), "p99-ms")
			b.ReportMetric(ms(lags[len(lags)-1]), "max-ms")
		})
	}
}

// BenchmarkReplicatedAppends is the highest append rate of 10 KiB messages
// when every append waits for the replica to have it durably (AckOne),
// from 16 and 64 writers (LMTP sessions), each to its own user:
// replication keeps up by construction. append-ms and await-ms are the
// mean times of the primary's Append and of the wait for the replica. The
// bodies travel in the stream; "fetch" has the replica fetch each one
// instead (InlineBody < 0), as a version 2 stream does.
func BenchmarkReplicatedAppends(b *testing.B) {
	for _, tc := range []struct {
		name    string
		writers int
		inline  int
	}{{"writers=16", 16, 0}, {"writers=64", 64, 0}, {"writers=64/fetch", 64, -1}} {
		writers := tc.writers
		b.Run(tc.name, func(b *testing.B) {
			bp := newBenchPairInline(b, replicate.AckOne, nil, tc.inline)
			ctx := context.Background()
			for u := range writers {
				require.NoError(b, bp.primary.CreateUser(ctx, fmt.Sprintf("user%d", u)))
			}
			const perIteration = 3000
			var appendNS, awaitNS atomic.Int64
			start := time.Now()
			n := 0
			for b.Loop() {
				var wg sync.WaitGroup
				for w := range writers {
					wg.Go(func() {
						user := fmt.Sprintf("user%d", w)
						for i := w; i < perIteration; i += writers {
							t0 := time.Now()
							if _, err := bp.primary.Append(ctx, user, store.Inbox, nil, time.Time{}, strings.NewReader(body10K(n+i))); err != nil {
								b.Error(err)
								return
							}
							t1 := time.Now()
							if err := bp.p.Await(ctx, bp.primary.Position()); err != nil {
								b.Error(err)
								return
							}
							appendNS.Add(int64(t1.Sub(t0)))
							awaitNS.Add(int64(time.Since(t1)))
						}
					})
				}
				wg.Wait()
				n += perIteration
			}
			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "appends/s")
			b.ReportMetric(float64(appendNS.Load())/float64(n)/1e6, "append-ms")
			b.ReportMetric(float64(awaitNS.Load())/float64(n)/1e6, "await-ms")
		})
	}
}

// BenchmarkCatchUp starts an empty replica against a primary that holds
// 100 000 changes (10 000 appends of 1 KiB messages with 100 distinct
// bodies, 90 000 flag changes, over 10 users) and measures how fast it
// catches up.
func BenchmarkCatchUp(b *testing.B) {
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		primary := buildJournal(b, 10, 1000, 9)
		require.GreaterOrEqual(b, primary.Position(), uint64(100_000))
		b.StartTimer()
		start := time.Now()
		bp := newBenchPair(b, replicate.AckAsync, primary)
		for bp.r.Stats().Applied < primary.Position() {
			time.Sleep(time.Millisecond)
		}
		took := time.Since(start)
		b.ReportMetric(float64(primary.Position())/took.Seconds(), "changes/s")
		a, err := primary.MailboxStatus(ctx, "user3", store.Inbox)
		require.NoError(b, err)
		c, err := bp.replica.MailboxStatus(ctx, "user3", store.Inbox)
		require.NoError(b, err)
		require.Equal(b, a.Digest, c.Digest)
	}
}

// buildJournal makes a primary whose journal holds, per user, perUser
// appends (100 distinct bodies) and flagsPer flag changes per append,
// written in large batches through Apply.
func buildJournal(b *testing.B, users, perUser, flagsPer int) *store.Store {
	b.Helper()
	ctx := context.Background()
	s, err := store.Open(b.TempDir(), &store.Options{Logger: quietLogger(), ScrubInterval: -1})
	require.NoError(b, err)
	b.Cleanup(func() { s.Close() })
	bodies := map[resilmail.Digest]string{}
	fetch := func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(bodies[d])), nil
	}
	date := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var batch []resilmail.Change
	flush := func() {
		require.NoError(b, s.Apply(ctx, batch, fetch))
		batch = batch[:0]
	}
	seen := []string{`\Seen`, `\Flagged`, `$Label1`}
	for u := range users {
		user := fmt.Sprintf("user%d", u)
		var id resilmail.MailboxID
		id[0], id[15] = byte(u), 1
		batch = append(batch,
			resilmail.Change{Kind: resilmail.ChangeUserCreate, User: user},
			resilmail.Change{Kind: resilmail.ChangeMailboxCreate, User: user, Mailbox: store.Inbox, MailboxID: id, UIDValidity: 1000, ModSeq: 1})
		modseq := uint64(1)
		for i := range perUser {
			text := msgText(fmt.Sprintf("catch-up %d", i%100), strings.Repeat("x", 1000))
			d := resilmail.DigestOf([]byte(text))
			bodies[d] = text
			modseq++
			batch = append(batch, resilmail.Change{Kind: resilmail.ChangeAppend, User: user, Mailbox: store.Inbox, MailboxID: id,
				UIDValidity: 1000, UID: uint32(i + 1), Digest: d, Size: int64(len(text)), InternalDate: date, ModSeq: modseq})
			for f := range flagsPer {
				modseq++
				batch = append(batch, resilmail.Change{Kind: resilmail.ChangeFlags, User: user, Mailbox: store.Inbox, MailboxID: id,
					UIDValidity: 1000, UIDs: resilmail.NewUIDSet(uint32(i + 1)), FlagOp: resilmail.FlagsSet,
					Flags: []string{seen[f%len(seen)]}, ModSeq: modseq})
			}
			if len(batch) >= 20_000 {
				flush()
			}
		}
	}
	flush()
	return s
}
