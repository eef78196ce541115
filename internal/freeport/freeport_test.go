package freeport_test

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/freeport"
)

// TestPortsAreBelowTheEphemeralRangeAndFree: every port handed out is
// below the range the kernel gives outgoing connections, free, and
// handed out once.
func TestPortsAreBelowTheEphemeralRangeAndFree(t *testing.T) {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		low, _ = strconv.Atoi(strings.Fields(string(b))[0])
	}
	seen := map[int]bool{}
	for range 50 {
		p, err := freeport.Port()
		require.NoError(t, err)
		assert.Less(t, p, low)
		assert.GreaterOrEqual(t, p, 10000)
		assert.False(t, seen[p], "port %d handed out twice", p)
		seen[p] = true
	}
	a := freeport.Addr(t)
	ln, err := net.Listen("tcp", a)
	require.NoError(t, err, "the address is free")
	ln.Close()
}
