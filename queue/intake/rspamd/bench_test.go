package rspamd_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/resilmail/resilmail/internal/rspamdtest"
	"github.com/resilmail/resilmail/queue/intake/rspamd"
)

// BenchmarkScan measures one /checkv2 round trip to a real rspamd (its
// packaged rules, DNS off, client 127.0.0.1) for a 4 KiB message, with 1
// and 20 scans in flight, and reports the latency's p50 and p99.
//
//	go test -run '^$' -bench BenchmarkScan -benchtime 2000x ./queue/intake/rspamd
func BenchmarkScan(b *testing.B) {
	s, err := rspamd.New(rspamdtest.Shared(b).URL, nil)
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(message("bench@example.net", strings.Repeat("The quarterly figures are attached; see the notes below.\r\n", 70)))
	for _, inFlight := range []int{1, 20} {
		b.Run(fmt.Sprintf("inflight=%d", inFlight), func(b *testing.B) {
			var (
				mu   sync.Mutex
				lats = make([]time.Duration, 0, b.N)
				next = make(chan struct{})
				wg   sync.WaitGroup
				errs = make(chan error, inFlight)
			)
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			for range inFlight {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range next {
						start := time.Now()
						ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
						_, err := s.Scan(ctx, envelope("QB"), body)
						cancel()
						if err != nil {
							select {
							case errs <- err:
							default:
							}
							continue
						}
						mu.Lock()
						lats = append(lats, time.Since(start))
						mu.Unlock()
					}
				}()
			}
			for range b.N {
				next <- struct{}{}
			}
			close(next)
			wg.Wait()
			b.StopTimer()
			select {
			case err := <-errs:
				b.Fatal(err)
			default:
			}
			slices.Sort(lats)
			q := func(p float64) float64 {
				return float64(lats[min(len(lats)-1, int(p*float64(len(lats))))].Microseconds()) / 1000
			}
			b.ReportMetric(q(0.50), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "scans/s")
		})
	}
}
