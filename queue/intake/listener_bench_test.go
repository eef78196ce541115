package intake_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue"
	"github.com/resilmail/resilmail/queue/intake"
)

// BenchmarkListener measures messages of 4 KiB through go-smtp and the
// Backend into a queue that fsyncs each before its 250, from 8 sessions
// that each send one message per transaction, with the intake.Listener
// (exact answers, timeouts, limits) and without it (go-smtp's own
// answers): the Listener's cost per message.
func BenchmarkListener(b *testing.B) {
	msg := append([]byte("From: s@example.net\r\nTo: r@example.org\r\nSubject: bench\r\n\r\n"), bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 64)...)
	for _, wrapped := range []bool{true, false} {
		b.Run(fmt.Sprintf("listener=%v", wrapped), func(b *testing.B) {
			quiet := slog.New(slog.DiscardHandler)
			q, err := queue.Open(b.TempDir(), resilmail.DelivererFunc(func(context.Context, resilmail.Envelope, io.Reader) error {
				return &resilmail.DeliveryError{Code: 451, Message: "not delivering in this benchmark"}
			}), &queue.Options{Logger: quiet, MinFreeBytes: -1})
			require.NoError(b, err)
			defer q.Close()
			srv := smtp.NewServer(&intake.Backend{Queue: q, Logger: quiet})
			srv.Domain = "mx.test"
			srv.MaxMessageBytes = 1 << 20
			var ln net.Listener
			ln, err = net.Listen("tcp", "127.0.0.1:0")
			require.NoError(b, err)
			addr := ln.Addr().String()
			if wrapped {
				l := intake.NewListener(ln, &intake.ListenerOptions{Logger: quiet, MaxConnsPerClient: -1})
				l.Configure(srv)
				ln = l
			}
			go srv.Serve(ln)
			defer srv.Close()

			const sessions = 8
			var next atomic.Int64
			var wg sync.WaitGroup
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			start := time.Now()
			for range sessions {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := smtp.Dial(addr)
					if err != nil {
						b.Error(err)
						return
					}
					defer c.Close()
					if err := c.Hello("client.test"); err != nil {
						b.Error(err)
						return
					}
					for next.Add(1) <= int64(b.N) {
						if err := c.SendMail("s@example.net", []string{"r@example.org"}, bytes.NewReader(msg)); err != nil {
							b.Error(err)
							return
						}
					}
					c.Quit()
				}()
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
		})
	}
}
