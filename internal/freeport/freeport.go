// Package freeport hands tests the loopback addresses of programs that
// must be told their port before they bind it: a child process started
// again on the same address, a peer such as rspamd or smtp-sink that
// cannot report the port it was given by the kernel.
//
// A port taken from the kernel (listen on port 0, close, pass it on) is in
// the ephemeral range, which the kernel also gives any outgoing connection
// on the machine as its local port: under a parallel go test ./..., one of
// them can take it before the program binds it. The ports handed out here
// are below that range (read from /proc/sys/net/ipv4/ip_local_port_range,
// 32768 when it cannot be read), checked free when handed out, and never
// handed out twice by one process. Two test processes may still pick the
// same port at random, rarely; a program that then fails to bind it says
// so.
//
// Its functions are safe for concurrent use.
package freeport

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

const lowest = 10000 // the ports under it are left to well-known services

var (
	mu   sync.Mutex
	used = map[int]bool{}
)

// Port returns a free loopback TCP port below the ephemeral range.
func Port() (int, error) {
	high := ephemeralLow()
	mu.Lock()
	defer mu.Unlock()
	for range 200 {
		port := lowest + rand.IntN(high-lowest)
		if used[port] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		ln.Close()
		used[port] = true
		return port, nil
	}
	return 0, errors.New("freeport: no free port below the ephemeral range")
}

// Addr returns "127.0.0.1:port" for a port from [Port], failing t if there
// is none.
func Addr(t testing.TB) string {
	t.Helper()
	port, err := Port()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// ephemeralLow is the lowest port of the kernel's ephemeral range.
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > lowest+1000 {
				low = n
			}
		}
	}
	return low
}
