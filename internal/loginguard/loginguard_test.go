package loginguard

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type fakeConn struct {
	net.Conn
	remote net.Addr
}

func (c fakeConn) RemoteAddr() net.Addr { return c.remote }

func conn(ip string) net.Conn {
	return fakeConn{remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 4000}}
}

func TestGuard(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	g := New(&Options{Delay: 20 * time.Millisecond, MaxFailures: 3, Window: time.Minute, Now: func() time.Time { return now },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx := context.Background()
	bad := errors.New("bad password")
	checks := 0
	wrong := func() error { checks++; return bad }
	right := func() error { checks++; return nil }

	c := conn("127.0.0.1")
	require.NoError(t, g.Login(ctx, c, "alice", right))
	for i := 0; i < 3; i++ {
		start := time.Now()
		assert.ErrorIs(t, g.Login(ctx, c, "alice", wrong), bad)
		assert.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond, "a failure is answered only after the delay")
	}
	// Over budget: refused without checking, even the right password.
	checks = 0
	assert.ErrorIs(t, g.Login(ctx, c, "alice", right), ErrTooMany)
	assert.Zero(t, checks)
	// Another address is not affected; the same /64 in IPv6 is.
	require.NoError(t, g.Login(ctx, conn("127.0.0.2"), "alice", right))
	for i := 0; i < 3; i++ {
		g.Login(ctx, conn("::1"), "a", wrong)
	}
	assert.ErrorIs(t, g.Login(ctx, fakeConn{remote: &net.TCPAddr{IP: net.ParseIP("::1"), Port: 1}}, "a", right), ErrTooMany)
	// The window passes.
	now = now.Add(2 * time.Minute)
	require.NoError(t, g.Login(ctx, c, "alice", right))
	// Cleartext off loopback is refused before anything is checked.
	checks = 0
	assert.ErrorIs(t, g.Login(ctx, conn("192.0.2.7"), "alice", right), ErrNeedTLS)
	assert.Zero(t, checks)
}
