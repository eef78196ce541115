package auth_test

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// sendRaw sends msg with a raw SMTP client and returns the first failing
// reply, or the reply to the end of DATA.
func sendRaw(t *testing.T, addr, sender, msg string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	reply := func() string {
		var last string
		for {
			l, err := r.ReadString('\n')
			require.NoError(t, err)
			last = strings.TrimRight(l, "\r\n")
			if len(last) < 4 || last[3] != '-' {
				return last
			}
		}
	}
	cmd := func(s string) string {
		_, err := c.Write([]byte(s + "\r\n"))
		require.NoError(t, err)
		return reply()
	}
	reply()
	for _, step := range []struct{ cmd, want string }{
		{"EHLO client.example.net", "250"}, {"MAIL FROM:<" + sender + ">", "250"}, {"RCPT TO:<alice@example.org>", "250"}, {"DATA", "354"},
	} {
		if got := cmd(step.cmd); !strings.HasPrefix(got, step.want) {
			return got
		}
	}
	return cmd(strings.TrimSuffix(msg, "\r\n") + "\r\n.")
}
