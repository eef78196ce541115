package quarantine

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkShipLag measures the shipping lag: from Add returning (the
// entry durable in the edge's outbox) to the entry being durable in a real
// central Store, over loopback HTTP, with 20 KiB bodies. "one-by-one" adds
// the next entry once the previous one is stored (latency alone);
// "stream" adds back to back from one goroutine while the shipper batches.
// It reports the p50 and p99 lag in milliseconds.
func BenchmarkShipLag(b *testing.B) {
	for _, mode := range []string{"one-by-one", "stream"} {
		b.Run(mode, func(b *testing.B) {
			c := shStartCentre(b, nil, nil)
			o := shOutbox(b, b.TempDir(), nil)
			s, err := NewShipper(o, c.srv.URL, &ShipperOptions{Logger: shLogger(), Secret: shSecret})
			require.NoError(b, err)
			shRun(b, s)
			body := bytes.Repeat([]byte("0123456789abcdef"), 20<<10/16)
			ctx := context.Background()
			added := make(map[string]time.Time, b.N)
			ids := make([]string, 0, b.N)
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id := fmt.Sprintf("lag-%d", i)
				e := shEntry(id)
				require.NoError(b, o.Add(ctx, e, bytes.NewReader(body)))
				added[id] = time.Now()
				ids = append(ids, id)
				if mode == "one-by-one" {
					c.rec.wait(b, ids[len(ids)-1:], time.Minute)
				}
			}
			c.rec.wait(b, ids, time.Minute)
			b.StopTimer()
			lags := make([]float64, 0, len(ids))
			c.rec.mu.Lock()
			for _, id := range ids {
				lags = append(lags, float64(c.rec.at[id].Sub(added[id]))/float64(time.Millisecond))
			}
			c.rec.mu.Unlock()
			slices.Sort(lags)
			b.ReportMetric(lags[len(lags)/2], "p50-ms")
			b.ReportMetric(lags[min(len(lags)-1, len(lags)*99/100)], "p99-ms")
			b.ReportMetric(lags[len(lags)-1], "max-ms")
			st := s.Stats()
			b.ReportMetric(float64(len(ids))/float64(max(st.Batches, 1)), "entries/batch")
		})
	}
}

// BenchmarkOutboxAdd measures durable Adds of 20 KiB entries from parallel
// goroutines (group commit), and reports the fsyncs per Add.
func BenchmarkOutboxAdd(b *testing.B) {
	o := shOutbox(b, b.TempDir(), nil)
	body := bytes.Repeat([]byte("0123456789abcdef"), 20<<10/16)
	var n atomic.Int64
	var mu sync.Mutex
	var errs []error
	b.SetBytes(int64(len(body)))
	b.SetParallelism(8) // 8 × GOMAXPROCS concurrent SMTP sessions rejecting
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("add-%d", n.Add(1))
			if err := o.Add(context.Background(), shEntry(id), bytes.NewReader(body)); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}
	})
	b.StopTimer()
	require.Empty(b, errs)
	st := o.Stats()
	b.ReportMetric(float64(st.Fsyncs)/float64(b.N), "fsyncs/op")
}
