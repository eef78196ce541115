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
	"github.com/resilmail/resilmail/internal/freeport"
	"github.com/resilmail/resilmail/smtpout"
)

// startSink runs Postfix's smtp-sink, a real SMTP server that accepts and
// discards mail (it offers PIPELINING unless told -p), with extra flags,
// and returns its address and its counters: -c writes "sess=.. quit=..
// mesg=N", separated by \r. CI installs it; a missing binary fails.
func startSink(t testing.TB, flags ...string) (string, <-chan string) {
	t.Helper()
	const bin = "/usr/sbin/smtp-sink"
	_, err := exec.LookPath(bin)
	require.NoError(t, err, "smtp-sink comes with Debian's postfix package")

	addr := freeport.Addr(t) // smtp-sink cannot say which port the kernel gave it

	args := append(append([]string{"-u", "nobody", "-c"}, flags...), addr, "100")
	cmd := exec.Command(bin, args...)
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
	counters := make(chan string, 1000)
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
			select {
			case counters <- sc.Text():
			default: // nobody is reading: a benchmark
			}
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
	return addr, counters
}

// waitCount waits until smtp-sink has counted n messages.
func waitCount(t *testing.T, counters <-chan string, n int) {
	t.Helper()
	want := fmt.Sprintf("mesg=%d", n)
	timeout := time.After(10 * time.Second)
	for {
		select {
		case c, ok := <-counters:
			require.True(t, ok, "smtp-sink exited")
			if strings.HasSuffix(c, want) {
				return
			}
		case <-timeout:
			t.Fatalf("smtp-sink did not count %d messages", n)
		}
	}
}

// TestSMTPSink delivers to smtp-sink with DSN parameters.
func TestSMTPSink(t *testing.T) {
	addr, counters := startSink(t)
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
	waitCount(t, counters, n)
	require.NoError(t, d.Close())
}

// TestSMTPSinkPool delivers 200 messages of two recipients to smtp-sink
// from 8 goroutines over a pool of 4 sessions, pipelined and (with -p) one
// command at a time, and checks that smtp-sink counted every one.
func TestSMTPSinkPool(t *testing.T) {
	for _, flags := range [][]string{nil, {"-p"}} { // -p: no PIPELINING
		t.Run(fmt.Sprint("flags", flags), func(t *testing.T) {
			addr, counters := startSink(t, flags...)
			d := newDeliverer(t, smtpout.Options{Addr: addr, LocalName: "client.example.net", MaxIdle: 4, MaxPerConn: 60})
			const workers, n = 8, 200
			jobs := make(chan int)
			errs := make(chan error, n)
			for range workers {
				go func() {
					for i := range jobs {
						env := envelope("a@example.com", fmt.Sprintf("r%d@example.org", i))
						env.Size = int64(len(testBody))
						errs <- d.Deliver(context.Background(), env, strings.NewReader(testBody))
					}
				}()
			}
			for i := range n {
				jobs <- i
			}
			close(jobs)
			for range n {
				require.NoError(t, <-errs)
			}
			waitCount(t, counters, n)
			require.NoError(t, d.Close())
		})
	}
}
