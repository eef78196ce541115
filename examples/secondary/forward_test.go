package main

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/failover/proxyproto"
)

// TestForwardsClientsToTheActiveNode: -forward relays a client that
// reaches the standby to the active node, whose listener (trusting the
// standby, as the primary's -proxy-trust does) reads the client's
// address from the PROXY v2 header; with the active node gone the client
// gets its protocol's refusal.
func TestForwardsClientsToTheActiveNode(t *testing.T) {
	_, url := primary(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	active := &proxyproto.Listener{Listener: ln, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, Logger: quiet}
	defer active.Close()
	go func() {
		for {
			c, err := active.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "* OK active node sees %s\r\n", c.RemoteAddr())
				bufio.NewReader(c).ReadString('\n')
			}()
		}
	}()
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer l.Close()
		return l.Addr().String()
	}
	imapAddr, lmtpAddr := free(), free()
	startSecondary(t, t.TempDir(), url, "-forward", "imap,"+imapAddr+","+ln.Addr().String(), "-forward", "lmtp,"+lmtpAddr+","+free(), "-forward-proxy")

	c, err := net.Dial("tcp", imapAddr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "* OK active node sees "+c.LocalAddr().String()+"\r\n", line, "the active node sees the client's own address")

	c2, err := net.Dial("tcp", lmtpAddr)
	require.NoError(t, err)
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(5 * time.Second))
	line, err = bufio.NewReader(c2).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, "421 4.3.2 the active mail server cannot be reached; try again shortly\r\n", line)
}

func TestForwardFlag(t *testing.T) {
	for _, bad := range []string{"imap,127.0.0.1:1", "smtp,127.0.0.1:1,127.0.0.1:2", "imap,nohost,127.0.0.1:2"} {
		_, err := parseFlags([]string{"-name", "x", "-forward", bad}, func(k string) string {
			return map[string]string{"RESILMAIL_SECRET": testSecret}[k]
		})
		assert.ErrorContains(t, err, "forward", bad)
	}
}
