package quarantine_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/quarantine"
)

// BenchmarkIngest stores 20 KiB messages, each with its own body, in
// batches of 100 as shippers send them, from 1 and from 4 edges at once:
// the centre's ingest rate.
func BenchmarkIngest(b *testing.B) {
	filler := strings.Repeat("spam spam spam spam spam spam spam spam spam spam spam\r\n", 20<<10/57)
	const batch = 100
	for _, edges := range []int{1, 4} {
		b.Run(fmt.Sprintf("edges=%d", edges), func(b *testing.B) {
			s := openTestStore(b, b.TempDir(), nil)
			ctx := context.Background()
			var n atomic.Int64
			start := time.Now()
			b.SetParallelism(edges)
			b.SetBytes(batch * int64(len(filler)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					items := make([]quarantine.Item, batch)
					for j := range items {
						k := n.Add(1)
						id := fmt.Sprintf("ing-%d", k)
						items[j] = quarantine.Item{
							Entry: testEntry(id, t0.Add(time.Duration(k)*time.Millisecond), "x@bad.example", fmt.Sprintf("u%d@example.org", k%1000)),
							Body:  []byte(testBody(id) + filler),
						}
					}
					for _, err := range s.PutBatch(ctx, items) {
						if err != nil {
							b.Error(err)
							return
						}
					}
				}
			})
			b.ReportMetric(float64(n.Load())/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// BenchmarkListRecipientPage lists a page of 50 for one recipient among
// 1,000,000 metadata entries (10,000 recipients, 100 entries each), and
// the next page from its cursor.
func BenchmarkListRecipientPage(b *testing.B) {
	const total, rcpts = 1_000_000, 10_000
	s := openTestStore(b, b.TempDir(), &quarantine.Options{QuotaCount: -1})
	ctx := context.Background()
	fill(b, s, total, rcpts, t0.Add(-time.Duration(total)*time.Second), time.Second)
	var lat []time.Duration
	i := 0
	for b.Loop() {
		rcpt := fmt.Sprintf("u%d@example.org", (i*7919)%rcpts)
		i++
		t := time.Now()
		p, err := s.List(ctx, rcpt, quarantine.Query{Limit: 50})
		if err != nil || len(p.Entries) != 50 || p.Next == "" {
			b.Fatalf("page: %d entries, %v", len(p.Entries), err)
		}
		p, err = s.List(ctx, rcpt, quarantine.Query{Limit: 50, Cursor: p.Next})
		if err != nil || len(p.Entries) != 50 {
			b.Fatalf("second page: %d entries, %v", len(p.Entries), err)
		}
		lat = append(lat, time.Since(t)/2)
	}
	sort.Slice(lat, func(a, c int) bool { return lat[a] < lat[c] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkExpireDay removes one day's partition (100,000 entries out of
// 300,000 spread over three days).
func BenchmarkExpireDay(b *testing.B) {
	const perDay = 100_000
	for b.Loop() {
		b.StopTimer()
		clock := &testClock{now: t0}
		s := openTestStore(b, b.TempDir(), &quarantine.Options{Now: clock.Now, MaxAge: 48 * time.Hour, QuotaCount: -1})
		day := 24 * time.Hour / perDay
		fill(b, s, 3*perDay, 1000, t0.Add(-72*time.Hour), day)
		b.StartTimer()
		st, err := s.Expire(context.Background())
		require.NoError(b, err)
		require.InDelta(b, perDay, st.Removed, 1)
	}
	b.ReportMetric(perDay, "entries/op")
}

// BenchmarkExpireIdle is the round Store.Run makes every few minutes when
// nothing is due, among 300 000 entries: it must not scan them.
func BenchmarkExpireIdle(b *testing.B) {
	clock := &testClock{now: t0}
	s := openTestStore(b, b.TempDir(), &quarantine.Options{Now: clock.Now, MaxAge: 14 * 24 * time.Hour, QuotaCount: -1})
	fill(b, s, 300_000, 1000, t0.Add(-72*time.Hour), 72*time.Hour/300_000)
	b.ResetTimer()
	for b.Loop() {
		st, err := s.Expire(context.Background())
		require.NoError(b, err)
		require.Zero(b, st.Removed)
	}
}

// fill stores n metadata-only entries, one every step from start, for
// rcpts recipients in turn, in large batches.
func fill(b *testing.B, s *quarantine.Store, n, rcpts int, start time.Time, step time.Duration) {
	b.Helper()
	ctx := context.Background()
	const batch = 20_000
	for i := 0; i < n; i += batch {
		items := make([]quarantine.Item, 0, batch)
		for j := i; j < min(n, i+batch); j++ {
			e := testEntry(fmt.Sprintf("m%07d", j), start.Add(time.Duration(j)*step), "x@bad.example", fmt.Sprintf("u%d@example.org", j%rcpts))
			e.Reason = quarantine.Reason{Kind: quarantine.KindRecipient, Reply: "550 5.1.1 no such user"}
			items = append(items, quarantine.Item{Entry: e})
		}
		for _, err := range s.PutBatch(ctx, items) {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}
