package smtpout_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/smtpout"
)

func TestConnectionReuse(t *testing.T) {
	tests := []struct {
		name      string
		opts      smtpout.Options
		refuseOdd bool // refuse the only recipient of every other message
		wantConns int
	}{
		{name: "default", wantConns: 1},
		{name: "RSET after failed transactions", refuseOdd: true, wantConns: 1},
		{name: "MaxPerConn", opts: smtpout.Options{MaxPerConn: 3}, wantConns: 4},
		{name: "no reuse", opts: smtpout.Options{MaxIdle: -1}, wantConns: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			be := newBackend()
			be.rcpt = func(to string, _ *smtp.RcptOptions) error {
				if strings.HasPrefix(to, "bad") {
					return reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
				}
				return nil
			}
			srv := startServer(t, be, nil, nil)
			opts := tt.opts
			opts.Addr = srv.addr
			d := newDeliverer(t, opts)
			want := 0
			for i := range 10 {
				rcpt := "a@example.com"
				if tt.refuseOdd && i%2 == 1 {
					rcpt = "bad@example.com"
				}
				env := envelope(rcpt)
				err := d.Deliver(context.Background(), env, strings.NewReader(testBody))
				if rcpt == "bad@example.com" {
					checkOutcomes(t, env, host, err, map[string]outcome{
						rcpt: {permanent: true, command: "RCPT TO", code: 550, enhanced: "5.1.1"},
					})
				} else {
					require.NoError(t, err)
					want++
				}
			}
			assert.Len(t, be.messages(), want)
			assert.Equal(t, tt.wantConns, srv.ln.accepted())
		})
	}
}

func TestDeadPooledConnection(t *testing.T) {
	tests := []struct {
		name      string
		configure func(*smtp.Server)
		kill      func(srv *testServer)
	}{
		{name: "closed by the server", kill: func(srv *testServer) { srv.ln.closeAll() }},
		{
			// The server times the idle session out with "421 4.4.2
			// Idle timeout" and closes it.
			name:      "421 on the pooled connection",
			configure: func(s *smtp.Server) { s.ReadTimeout = 300 * time.Millisecond },
			kill:      func(*testServer) {},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, newBackend(), tt.configure, nil)
			d := newDeliverer(t, smtpout.Options{Addr: srv.addr})
			require.NoError(t, d.Deliver(context.Background(), envelope("a@example.com"), body()))
			tt.kill(srv)
			srv.be.waitLogouts(t, 1)
			require.NoError(t, d.Deliver(context.Background(), envelope("b@example.com"), body()))
			assert.Len(t, srv.be.messages(), 2)
			assert.Equal(t, 2, srv.ln.accepted())
		})
	}
}

func TestServerGoneAfterPooling(t *testing.T) {
	be := newBackend()
	srv := startServer(t, be, nil, nil)
	d := newDeliverer(t, smtpout.Options{Addr: srv.addr})
	require.NoError(t, d.Deliver(context.Background(), envelope("a@example.com"), body()))
	srv.ln.Close()
	srv.ln.closeAll()
	be.waitLogouts(t, 1)
	env := envelope("a@example.com")
	err := d.Deliver(context.Background(), env, body())
	checkOutcomes(t, env, host, err, map[string]outcome{"a@example.com": {command: "connect"}})
}

func TestIdleTimeout(t *testing.T) {
	srv := startServer(t, newBackend(), nil, nil)
	d := newDeliverer(t, smtpout.Options{Addr: srv.addr, IdleTimeout: 50 * time.Millisecond})
	require.NoError(t, d.Deliver(context.Background(), envelope("a@example.com"), body()))
	// The idle session is QUIT by its timer.
	srv.be.waitLogouts(t, 1)
	require.NoError(t, d.Deliver(context.Background(), envelope("a@example.com"), body()))
	assert.Equal(t, 2, srv.ln.accepted())
	require.NoError(t, d.Close())
	srv.be.waitLogouts(t, 1)
	requireNoLeak(t)
}

func TestMaxIdle(t *testing.T) {
	be := newBackend()
	entered := make(chan struct{}, 3)
	release := make(chan struct{})
	be.rcpt = func(string, *smtp.RcptOptions) error {
		entered <- struct{}{}
		<-release
		return nil
	}
	srv := startServer(t, be, nil, nil)
	d := newDeliverer(t, smtpout.Options{Addr: srv.addr, MaxIdle: 2})
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- d.Deliver(context.Background(), envelope("a@example.com"), body()) }()
	}
	for range 3 {
		<-entered
	}
	close(release)
	for range 3 {
		require.NoError(t, <-errs)
	}
	// Three sessions were open at once; one was QUIT, two are idle.
	assert.Equal(t, 3, srv.ln.accepted())
	be.waitLogouts(t, 1)
	require.NoError(t, d.Close())
	be.waitLogouts(t, 2)
}

func TestClose(t *testing.T) {
	srv1 := startServer(t, newBackend(), nil, nil)
	srv2 := startServer(t, newBackend(), nil, nil)
	d := newDeliverer(t, smtpout.Options{})
	for _, srv := range []*testServer{srv1, srv2} {
		for range 3 {
			require.NoError(t, d.DeliverTo(context.Background(), srv.addr, envelope("a@example.com"), body()))
		}
	}
	require.NoError(t, d.Close())
	// Every idle session was QUIT.
	srv1.be.waitLogouts(t, 1)
	srv2.be.waitLogouts(t, 1)
	requireNoLeak(t)

	require.NoError(t, d.Close())
	err := d.DeliverTo(context.Background(), srv1.addr, envelope("a@example.com"), body())
	assert.ErrorIs(t, err, smtpout.ErrClosed)
	assert.Equal(t, 1, srv1.ln.accepted())
}

func TestConcurrentDeliveries(t *testing.T) {
	be := newBackend()
	be.rcpt = func(to string, _ *smtp.RcptOptions) error {
		if strings.HasPrefix(to, "bad") {
			return reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
		}
		return nil
	}
	srv := startServer(t, be, nil, nil)
	d := newDeliverer(t, smtpout.Options{Addr: srv.addr, MaxIdle: 4, MaxPerConn: 7})
	const workers, each = 8, 10
	errs := make(chan error, workers*each)
	for w := range workers {
		go func() {
			for i := range each {
				env := envelope("a@example.com")
				if (w+i)%3 == 0 {
					env = envelope("bad@example.com", "a@example.com")
				}
				errs <- d.Deliver(context.Background(), env, body())
			}
		}()
	}
	for range workers * each {
		err := <-errs
		for _, de := range deliveryErrors(err) {
			assert.Equal(t, "bad@example.com", de.Recipient, "%v", err)
		}
	}
	assert.Len(t, be.messages(), workers*each)
	require.NoError(t, d.Close())
	requireNoLeak(t)
}
