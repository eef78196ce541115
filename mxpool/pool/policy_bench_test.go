package pool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// polBigPolicy is a pool of n recipients in one domain, with aliases and a
// second domain.
func polBigPolicy(n int) *Policy {
	p := &Policy{Domains: map[string]*DomainPolicy{
		"example.org": {Aliases: map[string][]string{}, Subaddress: "+", SpamThreshold: 5},
		"example.net": {Recipients: []string{"info", "sales"}},
	}}
	d := p.Domains["example.org"]
	for i := range n {
		d.Recipients = append(d.Recipients, fmt.Sprintf("user%06d", i))
	}
	for i := range 100 {
		d.Aliases[fmt.Sprintf("list%03d", i)] = []string{fmt.Sprintf("user%06d@example.org", i), "info@example.net"}
	}
	return p
}

// BenchmarkPropagation measures the time from the start of a one-address
// Update on a publisher of 50 000 recipients until 5 followers, over
// loopback HTTP, have all applied (and stored) it. It reports the median
// and 99th percentile; the goal is a p99 under one second.
func BenchmarkPropagation(b *testing.B) {
	const followers = 5
	ctx := context.Background()
	p := pubOpen(b, b.TempDir(), nil)
	srv := pubServe(b, p)
	_, err := p.Publish(ctx, polBigPolicy(50000))
	require.NoError(b, err)

	var versions [followers]atomic.Uint64
	notify := make(chan struct{}, 1)
	fs := make([]*Follower, followers)
	for i := range followers {
		fs[i] = folOpen(b, srv.URL, b.TempDir(), &FollowerOptions{
			PollWait: 30 * time.Second,
			OnApply: func(v uint64) {
				versions[i].Store(v)
				select {
				case notify <- struct{}{}:
				default:
				}
			},
		})
		folRun(b, fs[i])
	}
	waitAll := func(v uint64) {
		deadline := time.After(30 * time.Second)
		for {
			all := true
			for i := range versions {
				all = all && versions[i].Load() >= v
			}
			if all {
				return
			}
			select {
			case <-notify:
			case <-deadline:
				b.Fatalf("followers did not reach version %d", v)
			}
		}
	}
	waitAll(1)

	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		addr := fmt.Sprintf("new%06d@example.org", i)
		start := time.Now()
		v, err := p.Update(ctx, func(q *Policy) error { return q.AddRecipient(addr) })
		if err != nil {
			b.Fatal(err)
		}
		waitAll(v)
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	for _, f := range fs {
		if st := f.Status(); st.Deltas == 0 && b.N > 1 {
			b.Errorf("follower applied no delta: %+v", st)
		}
	}
	slices.Sort(lat)
	pct := func(q float64) float64 {
		i := min(len(lat)-1, int(float64(len(lat))*q))
		return float64(lat[i]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/float64(time.Millisecond), "max-ms")
}

// BenchmarkCheck measures one recipient check against a pool of 50 000
// recipients, from a static policy and from a follower.
func BenchmarkCheck(b *testing.B) {
	pol := polBigPolicy(50000)
	require.NoError(b, pol.Normalize())
	rcpts := []string{
		"user012345@example.org", "USER049999@Example.ORG", "user000001+tag@example.org",
		"list042@example.org", "nobody@example.org", "user1@other.test", "info@example.net",
	}
	b.Run("policy", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			pol.Check(rcpts[i%len(rcpts)])
		}
	})
	b.Run("follower", func(b *testing.B) {
		s, err := NewSnapshot(pol, 1, DefaultPool, polTestKey, time.Now())
		require.NoError(b, err)
		data, err := s.Encode()
		require.NoError(b, err)
		dir := b.TempDir()
		require.NoError(b, os.WriteFile(filepath.Join(dir, polSnapshotFile), data, 0o600))
		f := folOpen(b, "http://127.0.0.1:1", dir, nil)
		require.Equal(b, uint64(1), f.Status().Version)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			f.Check(rcpts[i%len(rcpts)])
		}
	})
}
