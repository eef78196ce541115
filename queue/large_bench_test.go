package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
)

// BenchmarkEnqueueLarge measures durable enqueues of 4 MiB messages
// (spooled, then copied into the log with wal.Reserve and Pending.Fill)
// by 4 writers, while one writer enqueues 4 KiB messages one after the
// other: the small ones' latency shows that a large copy holds neither
// the queue's lock nor the log's.
func BenchmarkEnqueueLarge(b *testing.B) {
	big := bytes.Repeat([]byte("x"), 4<<20)
	small := bytes.Repeat([]byte("s"), 4096)
	q, err := queue.Open(b.TempDir(), newSink(nil), quietOpts())
	require.NoError(b, err)
	defer q.Close()
	ctx := context.Background()
	stop := make(chan struct{})
	var lat []time.Duration
	var smallDone sync.WaitGroup
	smallDone.Add(1)
	go func() {
		defer smallDone.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			env := resilmail.Envelope{ID: fmt.Sprint("s", i), From: "s@example.net", To: []resilmail.Recipient{{Addr: "r@example.org"}}}
			t0 := time.Now()
			if _, err := q.Enqueue(ctx, env, bytes.NewReader(small)); err != nil {
				b.Error(err)
				return
			}
			lat = append(lat, time.Since(t0))
		}
	}()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.SetBytes(int64(len(big)))
	b.ResetTimer()
	start := time.Now()
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				env := resilmail.Envelope{ID: fmt.Sprint("b", i), From: "s@example.net", To: []resilmail.Recipient{{Addr: "r@example.org"}}}
				if _, err := q.Enqueue(ctx, env, bytes.NewReader(big)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	close(stop)
	smallDone.Wait()
	b.ReportMetric(float64(b.N)/el.Seconds(), "large/s")
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "small-p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "small-p99-ms")
		b.ReportMetric(float64(len(lat))/el.Seconds(), "small/s")
	}
}
