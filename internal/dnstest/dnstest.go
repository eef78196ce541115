// Package dnstest serves a small DNS zone on 127.0.0.1 for tests, so that
// code resolving through a *net.Resolver runs against a real DNS server
// with no network: NXDOMAIN for names the zone does not hold, NOERROR with
// no answer for types it does not hold, SERVFAIL for names made to fail.
package dnstest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Server is a running DNS server over UDP on loopback.
type Server struct {
	// Addr is its address, "127.0.0.1:PORT".
	Addr string

	srv  *dns.Server
	mu   sync.Mutex
	rrs  []dns.RR
	fail map[string]bool
}

// Start starts a server holding zone, given in master-file lines
// (`example.net. 60 IN MX 0 .`).
func Start(zone ...string) (*Server, error) {
	s := &Server{fail: map[string]bool{}}
	if err := s.Add(zone...); err != nil {
		return nil, err
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.Addr = pc.LocalAddr().String()
	s.srv = &dns.Server{PacketConn: pc, Handler: s}
	started := make(chan struct{})
	s.srv.NotifyStartedFunc = func() { close(started) }
	go s.srv.ActivateAndServe()
	<-started
	return s, nil
}

// Close stops the server.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.srv.ShutdownContext(ctx)
}

// Add adds records in master-file lines.
func (s *Server) Add(lines ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			return fmt.Errorf("dnstest: %q: %w", l, err)
		}
		s.rrs = append(s.rrs, rr)
	}
	return nil
}

// Fail makes the server answer SERVFAIL for name.
func (s *Server) Fail(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[dns.Fqdn(strings.ToLower(name))] = true
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail[name] {
		m.Rcode = dns.RcodeServerFailure
		w.WriteMsg(m)
		return
	}
	exists := false
	for _, rr := range s.rrs {
		if !strings.EqualFold(rr.Header().Name, name) {
			continue
		}
		exists = true
		if rr.Header().Rrtype == q.Qtype {
			m.Answer = append(m.Answer, dns.Copy(rr))
		}
	}
	if !exists {
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}

// Resolver returns a *net.Resolver that asks only this server.
func (s *Server) Resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", s.Addr)
	}}
}
