package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
)

// BenchmarkEnqueue measures durable enqueues of 4 KiB messages (each one
// fsynced before Enqueue returns) by 1, 16 and 64 concurrent writers.
func BenchmarkEnqueue(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 4096)
	for _, writers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			q, err := queue.Open(b.TempDir(), newSink(nil), quietOpts())
			require.NoError(b, err)
			defer q.Close()
			var next atomic.Int64
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						env := resilmail.Envelope{ID: fmt.Sprint("b", i), From: "s@example.net", To: []resilmail.Recipient{{Addr: "r@example.org"}}}
						if _, err := q.Enqueue(context.Background(), env, bytes.NewReader(body)); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			st := q.Stats()
			b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
			b.ReportMetric(float64(st.Fsyncs)/float64(b.N), "fsyncs/msg")
		})
	}
}

// BenchmarkOpenRecovery measures Open over a queue of 100 000 messages of
// 1 KiB, and the memory the index of them takes.
func BenchmarkOpenRecovery(b *testing.B) {
	const n = 100_000
	dir := b.TempDir()
	q, err := queue.Open(dir, newSink(nil), quietOpts())
	require.NoError(b, err)
	body := bytes.Repeat([]byte("y"), 1024)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 32 {
				env := resilmail.Envelope{ID: fmt.Sprint("r", i), From: "s@example.net", To: []resilmail.Recipient{{Addr: "r@example.org"}}}
				if _, err := q.Enqueue(context.Background(), env, bytes.NewReader(body)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	require.NoError(b, q.Close())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		q, err := queue.Open(dir, newSink(nil), quietOpts())
		require.NoError(b, err)
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		require.Equal(b, n, len(q.List(queue.Filter{})))
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/msg")
		require.NoError(b, q.Close())
		b.StartTimer()
	}
	b.ReportMetric(n, "msgs")
}
