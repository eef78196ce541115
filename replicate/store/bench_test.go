package store_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

// BenchmarkAppend measures durable appends of distinct 10 KiB messages
// (body and change in the journal, fsynced by its group commit, before
// Append returns; body files fsynced only by checkpoints) by 1 and 16
// concurrent writers.
func BenchmarkAppend(b *testing.B) {
	for _, writers := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			ctx := context.Background()
			s := open(b, b.TempDir(), quietOpts())
			require.NoError(b, s.CreateUser(ctx, "bench"))
			body := bytes.Repeat([]byte("0123456789abcdef"), 640) // 10 KiB
			var next atomic.Int64
			before := s.Stats()
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					buf := bytes.Clone(body)
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						binary.BigEndian.PutUint64(buf, uint64(i)) // distinct bodies
						if _, err := s.Append(ctx, "bench", "INBOX", nil, time.Time{}, bytes.NewReader(buf)); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			st := s.Stats()
			b.ReportMetric(float64(b.N)/el.Seconds(), "appends/s")
			b.ReportMetric(float64(st.Fsyncs-before.Fsyncs)/float64(b.N), "fsyncs/append")
			b.ReportMetric(float64(st.JournalFsyncs-before.JournalFsyncs)/float64(b.N), "journal-fsyncs/append")
		})
	}
}

// buildStore makes a store with users x mailboxes x perMailbox messages
// cheaply: distinct bodies are appended once into INBOX, then copied in
// batches (a COPY is one journal record, one fsync).
func buildStore(b *testing.B, dir string, users, mailboxes, perMailbox, distinct int) *store.Store {
	b.Helper()
	ctx := context.Background()
	s := open(b, dir, quietOpts())
	for u := 0; u < users; u++ {
		user := fmt.Sprintf("user%d", u)
		require.NoError(b, s.CreateUser(ctx, user))
		for i := 0; i < distinct; i++ {
			appendMsg(b, s, user, "INBOX", msg("bench", fmt.Sprintf("%d %s", i, bytes.Repeat([]byte("m"), 1000))), `\Seen`)
		}
		for m := 0; m < mailboxes; m++ {
			name := fmt.Sprintf("box%d", m)
			_, err := s.CreateMailbox(ctx, user, name)
			require.NoError(b, err)
			for n := 0; n < perMailbox; n += distinct {
				_, err := s.Copy(ctx, user, "INBOX", resilmail.UIDSet{}.AddRange(1, uint32(min(distinct, perMailbox-n))), name)
				require.NoError(b, err)
			}
		}
	}
	return s
}

// BenchmarkFullComparison compares a primary and a replica of 100 000
// messages (10 users x 10 mailboxes x 1 000) that differ by one flag on one
// message: every mailbox status and digest is compared, and the differing
// mailbox is bisected by range digests down to the UID.
func BenchmarkFullComparison(b *testing.B) {
	ctx := context.Background()
	primary := buildStore(b, b.TempDir(), 10, 10, 1000, 100)
	replica := open(b, b.TempDir(), quietOpts())
	replicateAll(b, primary, replica, 0)
	_, err := primary.AddFlags(ctx, "user7", "box3", resilmail.NewUIDSet(517), []string{`\Flagged`})
	require.NoError(b, err)
	total := primary.Stats().Messages
	require.GreaterOrEqual(b, total, 100_000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var diffs []string
		pu, err := primary.Users(ctx)
		require.NoError(b, err)
		for _, u := range pu {
			pl, err := primary.ListMailboxes(ctx, u)
			require.NoError(b, err)
			rl, err := replica.ListMailboxes(ctx, u)
			require.NoError(b, err)
			for k, p := range pl {
				if k < len(rl) && rl[k] == p {
					continue
				}
				d := bisect(b, primary, replica, u, p.Name, 1, p.UIDNext-1)
				diffs = append(diffs, fmt.Sprintf("%s/%s:%s", u, p.Name, d))
			}
		}
		if len(diffs) != 1 || diffs[0] != "user7/box3:517" {
			b.Fatalf("differences found: %v", diffs)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(total), "messages")
}

// BenchmarkMailboxDigest measures recomputing a mailbox's digest from its
// per-message hashes over the whole UID range (what a bisection's first
// step costs) for a mailbox of 100 000 messages.
func BenchmarkMailboxDigest(b *testing.B) {
	ctx := context.Background()
	s := buildStore(b, b.TempDir(), 1, 1, 100_000, 1000)
	st, err := s.MailboxStatus(ctx, "user0", "box0")
	require.NoError(b, err)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		sum, n, err := s.RangeDigest(ctx, "user0", "box0", 1, 1<<32-2)
		if err != nil || n != 100_000 || sum != st.Digest {
			b.Fatalf("range digest %s over %d messages, want %s: %v", sum, n, st.Digest, err)
		}
	}
	b.ReportMetric(100_000, "messages")
}

// BenchmarkChanges measures reading the journal as a replica catching up
// does, 1 000 changes per call.
func BenchmarkChanges(b *testing.B) {
	ctx := context.Background()
	s := buildStore(b, b.TempDir(), 1, 20, 1000, 1000)
	last := s.Position()
	b.ResetTimer()
	read := 0
	for i := 0; i < b.N; i++ {
		pos := uint64(0)
		for pos < last {
			changes, err := s.Changes(ctx, pos, 1000)
			if err != nil || len(changes) == 0 {
				b.Fatalf("at %d: %d changes, %v", pos, len(changes), err)
			}
			pos = changes[len(changes)-1].Seq
			read += len(changes)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "changes/s")
}

// BenchmarkApply measures a replica applying appends of 10 KiB messages
// (each body fetched, verified and written into the journal) in batches of
// 100.
func BenchmarkApply(b *testing.B) {
	ctx := context.Background()
	primary := open(b, b.TempDir(), quietOpts())
	require.NoError(b, primary.CreateUser(ctx, "bench"))
	body := bytes.Repeat([]byte("0123456789abcdef"), 640)
	for i := 0; i < b.N; i++ {
		binary.BigEndian.PutUint64(body, uint64(i))
		_, err := primary.Append(ctx, "bench", "INBOX", nil, time.Time{}, bytes.NewReader(body))
		require.NoError(b, err)
	}
	replica := open(b, b.TempDir(), quietOpts())
	before := replica.Stats()
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start := time.Now()
	pos := uint64(0)
	for {
		changes, err := primary.Changes(ctx, pos, 100)
		require.NoError(b, err)
		if len(changes) == 0 {
			break
		}
		require.NoError(b, replica.Apply(ctx, changes, bodyFrom(primary)))
		pos = changes[len(changes)-1].Seq
	}
	el := time.Since(start)
	b.StopTimer()
	st := replica.Stats()
	b.ReportMetric(float64(b.N)/el.Seconds(), "appends/s")
	b.ReportMetric(float64(st.Fsyncs-before.Fsyncs)/float64(b.N), "fsyncs/append")
}

// BenchmarkCheckpointAndOpen measures writing a checkpoint of 100 000
// messages and opening the store from it (recovery reads the checkpoint and
// recomputes every mailbox digest).
func BenchmarkCheckpointAndOpen(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	s := buildStore(b, dir, 10, 10, 1000, 100)
	var ckpt, reopen time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		require.NoError(b, s.Compact(ctx))
		ckpt += time.Since(start)
		require.NoError(b, s.Close())
		start = time.Now()
		var err error
		s, err = store.Open(dir, quietOpts())
		require.NoError(b, err)
		reopen += time.Since(start)
	}
	require.NoError(b, s.Close())
	b.ReportMetric(float64(ckpt.Milliseconds())/float64(b.N), "checkpoint-ms")
	b.ReportMetric(float64(reopen.Milliseconds())/float64(b.N), "open-ms")
}

// loadBench is a state of n messages of 8 KiB in 20 mailboxes, with its
// bodies.
func loadBench(n int) ([]resilmail.Change, map[resilmail.Digest][]byte) {
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	bodies := make(map[resilmail.Digest][]byte, n)
	var out []resilmail.Change
	for box := range 20 {
		user := fmt.Sprintf("u%d", box/5)
		if box%5 == 0 {
			out = append(out, resilmail.Change{Kind: resilmail.ChangeUserCreate, User: user, Epoch: 1, Time: now})
		}
		id := resilmail.MailboxID{byte(box), 1}
		name := fmt.Sprintf("Box%d", box)
		out = append(out, resilmail.Change{Kind: resilmail.ChangeMailboxCreate, User: user, Mailbox: name, MailboxID: id, UIDValidity: 7, Epoch: 1, Time: now})
		for i := range n / 20 {
			body := bytes.Repeat([]byte("0123456789abcdef"), 512) // 8 KiB
			copy(body, fmt.Sprintf("Subject: %d %d\r\n\r\n", box, i))
			d := resilmail.DigestOf(body)
			bodies[d] = body
			out = append(out, resilmail.Change{Kind: resilmail.ChangeAppend, User: user, Mailbox: name, MailboxID: id, UIDValidity: 7,
				UID: uint32(i + 1), Digest: d, Size: int64(len(body)), ModSeq: uint64(i + 1), Epoch: 1, Time: now})
		}
	}
	return out, bodies
}

// BenchmarkLoad loads 20 000 messages of 8 KiB into an empty store (the
// bodies given from 2 goroutines, as a restore does), sync included.
func BenchmarkLoad(b *testing.B) {
	ctx := context.Background()
	changes, bodies := loadBench(20000)
	var list []resilmail.Digest
	for d := range bodies {
		list = append(list, d)
	}
	b.SetBytes(int64(len(list) * 8192))
	for b.Loop() {
		b.StopTimer()
		s := open(b, b.TempDir(), quietOpts())
		b.StartTimer()
		require.NoError(b, s.Load(ctx, changes, func(ctx context.Context, put func(resilmail.Digest, []byte) error) error {
			var wg sync.WaitGroup
			errs := make([]error, 2)
			for w := range 2 {
				wg.Go(func() {
					for i := w; i < len(list) && errs[w] == nil; i += 2 {
						errs[w] = put(list[i], bodies[list[i]])
					}
				})
			}
			wg.Wait()
			return errors.Join(errs...)
		}))
		b.StopTimer()
		require.NoError(b, s.Close())
		b.StartTimer()
	}
}

// BenchmarkOpenBody opens and reads a header-sized part of a body that has
// a file of its own (appended) and of one in a pack (loaded).
func BenchmarkOpenBody(b *testing.B) {
	ctx := context.Background()
	changes, bodies := loadBench(2000)
	packed := open(b, b.TempDir(), quietOpts())
	require.NoError(b, packed.Load(ctx, changes, func(ctx context.Context, put func(resilmail.Digest, []byte) error) error {
		for d, body := range bodies {
			if err := put(d, body); err != nil {
				return err
			}
		}
		return nil
	}))
	loose := open(b, b.TempDir(), quietOpts())
	require.NoError(b, loose.CreateUser(ctx, "u"))
	var list []resilmail.Digest
	for d, body := range bodies {
		_, err := loose.Append(ctx, "u", "INBOX", nil, time.Time{}, bytes.NewReader(body))
		require.NoError(b, err)
		list = append(list, d)
	}
	for _, c := range []struct {
		name string
		s    *store.Store
	}{{"loose", loose}, {"packed", packed}} {
		b.Run(c.name, func(b *testing.B) {
			p := make([]byte, 512)
			i := 0
			for b.Loop() {
				r, err := c.s.OpenBody(ctx, list[i%len(list)])
				require.NoError(b, err)
				_, err = r.ReadAt(p, 0)
				require.NoError(b, err)
				r.Close()
				i++
			}
		})
	}
}
