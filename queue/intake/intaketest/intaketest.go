// Package intaketest helps test Scanners and other intake stages through
// a real SMTP session: an Enqueuer that keeps what it is given, and a
// go-smtp server for a Backend on loopback.
package intaketest

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue/intake"
)

// Recorder is an intake.Enqueuer that keeps every message it is given, in
// memory. It is safe for concurrent use.
type Recorder struct {
	mu     sync.Mutex
	envs   []resilmail.Envelope
	bodies []string
}

var _ intake.Enqueuer = (*Recorder)(nil)

// Enqueue reads body and keeps it with env; the id is env.ID.
func (r *Recorder) Enqueue(_ context.Context, env resilmail.Envelope, body io.Reader) (string, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.envs = append(r.envs, env)
	r.bodies = append(r.bodies, string(b))
	return env.ID, nil
}

// Bodies returns the messages kept so far, in order.
func (r *Recorder) Bodies() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bodies...)
}

// Serve serves be over SMTP on 127.0.0.1 (the server's name is
// mx.example.org) until the test ends, and returns its address.
func Serve(t testing.TB, be *intake.Backend) string {
	t.Helper()
	srv := smtp.NewServer(be)
	srv.Domain = "mx.example.org"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
