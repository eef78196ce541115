package smtpout_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/smtpout"
)

// TestSMTPSink delivers to Postfix's smtp-sink, a real SMTP server that
// accepts and discards mail. CI installs it; a missing binary fails.
func TestSMTPSink(t *testing.T) {
	const bin = "/usr/sbin/smtp-sink"
	_, err := exec.LookPath(bin)
	require.NoError(t, err, "smtp-sink comes with Debian's postfix package")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()

	cmd := exec.Command(bin, "-u", "nobody", "-c", addr, "100")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("smtp-sink stderr: %s", stderr.String())
		}
	})
	// -c writes counters, "sess=.. quit=.. mesg=N", separated by \r.
	counters := make(chan string, 100)
	go func() {
		defer close(counters)
		sc := bufio.NewScanner(stdout)
		sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
			if i := bytes.IndexByte(data, '\r'); i >= 0 {
				return i + 1, data[:i], nil
			}
			if atEOF && len(data) > 0 {
				return len(data), data, nil
			}
			return 0, nil, nil
		})
		for sc.Scan() {
			counters <- sc.Text()
		}
	}()

	// smtp-sink says nothing when it is ready: wait until it accepts.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		require.True(t, time.Now().Before(deadline), "smtp-sink does not listen: %v", err)
		<-time.After(10 * time.Millisecond)
	}

	d := newDeliverer(t, smtpout.Options{Addr: addr, LocalName: "client.example.net"})
	const n = 5
	for i := range n {
		env := envelope("a@example.com", "b@example.com")
		env.Return = resilmail.ReturnHeaders
		env.EnvID = fmt.Sprintf("env-%d", i)
		env.To[0].Notify = resilmail.NotifySuccess | resilmail.NotifyFailure
		env.To[0].ORCPT = "rfc822;a@example.com"
		env.Size = int64(len(testBody))
		require.NoError(t, d.Deliver(context.Background(), env, strings.NewReader(testBody)))
	}

	want := fmt.Sprintf("mesg=%d", n)
	timeout := time.After(10 * time.Second)
	for {
		select {
		case c, ok := <-counters:
			require.True(t, ok, "smtp-sink exited")
			if strings.HasSuffix(c, want) {
				require.NoError(t, d.Close())
				return
			}
		case <-timeout:
			t.Fatalf("smtp-sink did not count %d messages", n)
		}
	}
}
