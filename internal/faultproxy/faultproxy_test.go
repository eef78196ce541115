package faultproxy_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/faultproxy"
)

// echo serves a loopback echo server until the test ends.
func echo(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// roundTrip sends data through addr and reads back what the echo returns
// until the connection ends.
func roundTrip(t *testing.T, addr string, data []byte) ([]byte, error) {
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	return io.ReadAll(c)
}

func newProxy(t *testing.T, target string, seed uint64) *faultproxy.Proxy {
	p, err := faultproxy.New(target, seed)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

func TestPassesBytesUntouchedWithoutFaults(t *testing.T) {
	p := newProxy(t, echo(t), 1)
	data := make([]byte, 1<<20)
	rand.Read(data)
	got, err := roundTrip(t, p.Addr(), data)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(data, got), "1 MiB through and back, untouched, half-close passed on")
	assert.Equal(t, uint64(2<<20), p.Stats().Bytes)
}

func TestCorruptsCutsAndTruncates(t *testing.T) {
	target := echo(t)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)

	p := newProxy(t, target, 2)
	p.SetFaults(faultproxy.Faults{Corrupt: 1})
	got, err := roundTrip(t, p.Addr(), data)
	require.NoError(t, err)
	assert.Len(t, got, len(data), "corruption changes bytes, not lengths")
	assert.False(t, bytes.Equal(data, got))
	assert.NotZero(t, p.Stats().Corrupted)

	p.SetFaults(faultproxy.Faults{Cut: 1})
	got, _ = roundTrip(t, p.Addr(), data)
	assert.Empty(t, got, "cut before the first chunk")
	assert.NotZero(t, p.Stats().Cuts)

	p.SetFaults(faultproxy.Faults{Truncate: 1})
	got, _ = roundTrip(t, p.Addr(), data)
	assert.Less(t, len(got), len(data), "torn in the middle")
	assert.Equal(t, data[:len(got)], got, "what passed before the tear is intact")
	assert.NotZero(t, p.Stats().Truncated)
}

func TestDelayAndCutAll(t *testing.T) {
	p := newProxy(t, echo(t), 3)
	p.SetFaults(faultproxy.Faults{MaxDelay: 20 * time.Millisecond})
	got, err := roundTrip(t, p.Addr(), []byte("slow but whole"))
	require.NoError(t, err)
	assert.Equal(t, "slow but whole", string(got))

	c, err := net.Dial("tcp", p.Addr())
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("x"))
	require.NoError(t, err)
	buf := make([]byte, 1)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	p.CutAll()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(buf)
	assert.Error(t, err, "a partition ends open connections")
}
