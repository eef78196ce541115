// Package faultproxy is a TCP proxy for fault tests: it stands between a
// client and a server on loopback and, as told, delays, corrupts and cuts
// the bytes that pass, at random but reproducibly (a seed), so that tests
// can prove that replication and shipping survive a bad network.
package faultproxy

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Faults says what happens to each chunk of bytes (one read, at most 32
// KiB) that passes in either direction. The zero value passes everything
// untouched.
type Faults struct {
	// Corrupt is the probability that one byte of a chunk is flipped.
	Corrupt float64
	// Cut is the probability that the connection is closed, both ways,
	// instead of passing a chunk (the chunk is lost).
	Cut float64
	// MaxDelay delays each chunk by a random time up to it.
	MaxDelay time.Duration
	// Truncate is the probability that only a random prefix of a chunk is
	// passed before the connection is cut: a frame torn in the middle.
	Truncate float64
}

// Stats counts what the proxy did.
type Stats struct {
	Conns, Bytes, Corrupted, Cuts, Truncated uint64
}

// A Proxy forwards connections to a target address, with faults.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	faults Faults
	rng    *rand.Rand
	conns  map[net.Conn]struct{}
	closed bool

	wg                                        sync.WaitGroup
	nconns, bytes, corrupted, cuts, truncated atomic.Uint64
}

// New listens on a free loopback port and forwards every connection to
// target with faults drawn from seed.
func New(target string, seed uint64) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients dial instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetFaults changes the faults from now on, for open connections too.
func (p *Proxy) SetFaults(f Faults) {
	p.mu.Lock()
	p.faults = f
	p.mu.Unlock()
}

// CutAll closes every open connection (a network partition's start).
func (p *Proxy) CutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	return Stats{Conns: p.nconns.Load(), Bytes: p.bytes.Load(), Corrupted: p.corrupted.Load(), Cuts: p.cuts.Load(), Truncated: p.truncated.Load()}
}

// Close stops listening, closes every connection and waits for the
// goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.CutAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			s.Close()
			return
		}
		p.conns[c], p.conns[s] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.nconns.Add(1)
		var once sync.Once
		cut := func() {
			once.Do(func() {
				c.Close()
				s.Close()
				p.mu.Lock()
				delete(p.conns, c)
				delete(p.conns, s)
				p.mu.Unlock()
			})
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			var pair sync.WaitGroup
			pair.Go(func() { p.pipe(s, c, cut) })
			pair.Go(func() { p.pipe(c, s, cut) })
			pair.Wait()
			cut()
		}()
	}
}

// decide draws the fate of one chunk of n bytes.
func (p *Proxy) decide(n int) (delay time.Duration, flip int, keep int, cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.faults
	if f.MaxDelay > 0 {
		delay = time.Duration(p.rng.Int64N(int64(f.MaxDelay) + 1))
	}
	flip, keep = -1, n
	if f.Cut > 0 && p.rng.Float64() < f.Cut {
		return delay, -1, 0, true
	}
	if f.Truncate > 0 && n > 1 && p.rng.Float64() < f.Truncate {
		return delay, -1, p.rng.IntN(n), true
	}
	if f.Corrupt > 0 && p.rng.Float64() < f.Corrupt {
		flip = p.rng.IntN(n)
	}
	return delay, flip, keep, false
}

// pipe copies from src to dst, chunk by chunk, with faults. A fault or
// an error cuts both ways; an end of stream is passed on as a half-close.
func (p *Proxy) pipe(dst, src net.Conn, cut func()) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			delay, flip, keep, doCut := p.decide(n)
			if delay > 0 {
				time.Sleep(delay)
			}
			if flip >= 0 {
				buf[flip] ^= byte(1 << uint(flip%8))
				p.corrupted.Add(1)
			}
			if keep > 0 {
				if _, werr := dst.Write(buf[:keep]); werr != nil {
					cut()
					return
				}
				p.bytes.Add(uint64(keep))
			}
			if doCut {
				if keep > 0 {
					p.truncated.Add(1)
				} else {
					p.cuts.Add(1)
				}
				cut()
				return
			}
		}
		if err != nil {
			if tc, ok := dst.(*net.TCPConn); ok && errors.Is(err, io.EOF) {
				tc.CloseWrite() // the other way stays open
				return
			}
			cut()
			return
		}
	}
}
