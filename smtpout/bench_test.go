package smtpout_test

import (
	"bytes"
	"context"
	"log/slog"
	"runtime"
	"strings"
	"testing"

	"github.com/resilmail/resilmail/smtpout"
)

// BenchmarkDeliver sends 4 KiB messages to a local go-smtp server that
// discards them, over reused connections.
func BenchmarkDeliver(b *testing.B) {
	msg := benchMessage()
	run := func(b *testing.B, parallel bool) {
		be := newBackend()
		be.discard = true
		srv := startServer(b, be, nil, nil)
		opts := smtpout.Options{Addr: srv.addr, Logger: slog.New(slog.DiscardHandler)}
		if parallel {
			opts.MaxIdle = runtime.GOMAXPROCS(0)
		}
		d := newDeliverer(b, opts)
		deliver := func(b *testing.B) {
			env := envelope("a@example.com")
			env.Size = int64(len(msg))
			if err := d.Deliver(context.Background(), env, bytes.NewReader(msg)); err != nil {
				b.Error(err) // RunParallel's goroutines must not call Fatal
			}
		}
		b.SetBytes(int64(len(msg)))
		b.ReportAllocs()
		b.ResetTimer()
		if parallel {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					deliver(b)
				}
			})
		} else {
			for range b.N {
				deliver(b)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	}
	b.Run("serial", func(b *testing.B) { run(b, false) })
	b.Run("parallel", func(b *testing.B) { run(b, true) })
}

// BenchmarkDeliverPipelined compares pipelined transactions with one
// command at a time, serially over one reused session, with 4 KiB
// messages of two recipients: against go-smtp's server (which offers
// PIPELINING; "one-at-a-time" turns it off on the client) and against
// Postfix's smtp-sink (offering PIPELINING or not, -p).
func BenchmarkDeliverPipelined(b *testing.B) {
	msg := benchMessage()
	run := func(b *testing.B, addr string, pipelined bool) {
		d := newDeliverer(b, smtpout.Options{Addr: addr, Logger: slog.New(slog.DiscardHandler)})
		if !pipelined {
			smtpout.DisablePipelining(d)
		}
		b.SetBytes(int64(len(msg)))
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			env := envelope("a@example.com", "b@example.com")
			env.Size = int64(len(msg))
			if err := d.Deliver(context.Background(), env, bytes.NewReader(msg)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	}
	for _, pipelined := range []bool{true, false} {
		name := "pipelined"
		if !pipelined {
			name = "one-at-a-time"
		}
		b.Run("go-smtp/"+name, func(b *testing.B) {
			be := newBackend()
			be.discard = true
			run(b, startServer(b, be, nil, nil).addr, pipelined)
		})
		b.Run("smtp-sink/"+name, func(b *testing.B) {
			var flags []string
			if !pipelined {
				flags = []string{"-p"}
			}
			addr, _ := startSink(b, flags...)
			run(b, addr, true) // pipelined if the server offers it
		})
	}
}

// benchMessage is a 4 KiB message of 78-byte lines.
func benchMessage() []byte {
	msg := []byte("From: sender@example.net\r\nTo: a@example.com\r\nSubject: bench\r\n\r\n")
	line := strings.Repeat("x", 76) + "\r\n"
	for len(msg)+len(line) <= 4096 {
		msg = append(msg, line...)
	}
	msg = append(msg, bytes.Repeat([]byte("y"), 4096-len(msg)-2)...)
	return append(msg, "\r\n"...)
}
