// Command replcompare measures mailbox replication side by side on one
// machine: LMTP deliveries of 10 KiB to one user on a primary at a steady
// rate, and the time until each message is on the replica (lag p50, p99,
// max), for Dovecot's replicator (dsync over TCP; Debian's dovecot-core and
// dovecot-lmtpd), Cyrus IMAP's rolling replication at its defaults
// (sync_log, sync_client -r, sync_server; Debian's cyrus-imapd,
// cyrus-replication and sasl2-bin) and resilmail: examples/primary and
// examples/secondary run as processes, as Dovecot and Cyrus run (each with
// its own store, checkpoints and scrub; the stream over HTTP), either
// asynchronously or with every delivery answered only once the replica has
// it (-ack one). The tool builds both commands (run it from the module's
// root) unless -primary-bin and -secondary-bin name them. The systems
// resilmail-lib and resilmail-lib-ack run the same pair as a library in
// this process, for comparison with earlier figures. Each runs as a private
// pair on loopback, under $TMPDIR (put it on the file system to measure).
//
//	sudo TMPDIR=/mnt/bench go run ./internal/cmd/replcompare -rates 50,200,500 -duration 20s
//
// It needs root (Dovecot drops to the vmail user, which it creates if
// missing; Cyrus to its cyrus user) and leaves the system's own servers
// alone. Each message names itself in its Message-ID, which the tool reads
// back from the replica's files as they appear.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// A system is a primary and a replica under test.
type system interface {
	// start runs both and returns the primary's LMTP address.
	start(ctx context.Context, dir string) (string, error)
	// rcpt is the LMTP recipient of the benchmark's user.
	rcpt() string
	// seen calls found with the number of every message now on the
	// replica that it did not report before (see message).
	seen(found func(n int)) error
	stop()
}

func main() {
	rates := flag.String("rates", "50,200", "delivery rates to try, messages per second")
	duration := flag.Duration("duration", 20*time.Second, "how long to deliver at each rate")
	size := flag.Int("size", 10<<10, "message size in bytes (each message adds its number)")
	conns := flag.Int("conns", 8, "LMTP connections")
	systems := flag.String("systems", "resilmail,resilmail-ack,dovecot,cyrus", "systems to measure, comma separated: resilmail (examples/primary and examples/secondary as processes, asynchronous), resilmail-ack (LMTP answered once the replica has it), resilmail-lib and resilmail-lib-ack (the same as a library in this process), dovecot, cyrus")
	flag.StringVar(&bins.primary, "primary-bin", "", "examples/primary binary (default: built from ./examples/primary)")
	flag.StringVar(&bins.secondary, "secondary-bin", "", "examples/secondary binary (default: built from ./examples/secondary)")
	flag.Parse()
	defer bins.remove()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	var rs []int
	for _, f := range strings.Split(*rates, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r <= 0 {
			fmt.Fprintln(os.Stderr, "replcompare: bad rate", f)
			os.Exit(2)
		}
		rs = append(rs, r)
	}
	fmt.Printf("%-10s %8s %10s %9s %9s %9s %10s\n", "system", "rate/s", "achieved", "p50 ms", "p99 ms", "max ms", "lost")
	for _, name := range strings.Split(*systems, ",") {
		for _, r := range rs {
			res, err := measure(ctx, name, r, *duration, *size, *conns)
			if err != nil {
				fmt.Fprintf(os.Stderr, "replcompare: %s at %d/s: %v\n", name, r, err)
				bins.remove()
				os.Exit(1)
			}
			fmt.Printf("%-10s %8d %10.1f %9.1f %9.1f %9.1f %10d\n", name, r, res.achieved, res.p50, res.p99, res.max, res.missing)
		}
	}
}

// bins are the resilmail commands the process systems run.
var bins binaries

// An expecter is told, before a run, the messages it will deliver.
type expecter interface {
	expect(n, size int)
}

type result struct {
	achieved      float64
	p50, p99, max float64
	missing       int
}

func newSystem(name string) (system, error) {
	switch name {
	case "dovecot":
		return &dovecot{}, nil
	case "cyrus":
		return &cyrus{}, nil
	case "resilmail":
		return &processPair{bins: &bins}, nil
	case "resilmail-ack":
		return &processPair{ack: true, bins: &bins}, nil
	case "resilmail-lib":
		return &resilmailPair{}, nil
	case "resilmail-lib-ack":
		return &resilmailPair{ack: true}, nil
	}
	return nil, fmt.Errorf("unknown system %q", name)
}

// measure runs a fresh pair of name, delivers at rate for d, and waits up
// to a minute for the replica to have everything.
func measure(ctx context.Context, name string, rate int, d time.Duration, size, conns int) (result, error) {
	sys, err := newSystem(name)
	if err != nil {
		return result{}, err
	}
	dir, err := os.MkdirTemp("", "replcompare-")
	if err != nil {
		return result{}, err
	}
	if err := os.Chmod(dir, 0o755); err != nil { // Dovecot's vmail walks through it
		return result{}, err
	}
	if os.Getenv("REPLCOMPARE_KEEP") == "" {
		defer os.RemoveAll(dir)
	}
	addr, err := sys.start(ctx, dir)
	defer sys.stop()
	if err != nil {
		return result{}, err
	}
	total := int(float64(rate) * d.Seconds())
	if e, ok := sys.(expecter); ok {
		e.expect(total, size)
	}

	var (
		mu    sync.Mutex
		acked = map[int]time.Time{}
		found = map[int]time.Time{}
	)
	pollCtx, stopPoll := context.WithCancel(ctx)
	polled := make(chan error, 1)
	go func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			err := sys.seen(func(n int) {
				mu.Lock()
				if _, ok := found[n]; !ok {
					found[n] = time.Now()
				}
				mu.Unlock()
			})
			if err != nil {
				polled <- err
				return
			}
			select {
			case <-pollCtx.Done():
				polled <- nil
				return
			case <-t.C:
			}
		}
	}()

	jobs := make(chan int)
	var wg sync.WaitGroup
	var sendErr error
	var errOnce sync.Once
	for range conns {
		wg.Go(func() {
			c, err := dialLMTP(addr)
			if err != nil {
				errOnce.Do(func() { sendErr = err })
				for range jobs {
				}
				return
			}
			defer c.Close()
			for i := range jobs {
				if err := c.SendMail("sender@example.net", []string{sys.rcpt()}, strings.NewReader(message(i, size))); err != nil {
					errOnce.Do(func() { sendErr = fmt.Errorf("message %d: %w", i, err) })
					continue
				}
				mu.Lock()
				acked[i] = time.Now()
				mu.Unlock()
			}
		})
	}
	start := time.Now()
	tick := time.Second / time.Duration(rate)
	for i := range total {
		if w := time.Until(start.Add(time.Duration(i) * tick)); w > 0 {
			time.Sleep(w)
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	if sendErr != nil {
		stopPoll()
		return result{}, sendErr
	}
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		n := len(found)
		mu.Unlock()
		if n >= total || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopPoll()
	if err := <-polled; err != nil {
		return result{}, err
	}

	mu.Lock()
	defer mu.Unlock()
	var lags []float64
	missing := 0
	for i, at := range acked {
		f, ok := found[i]
		if !ok {
			missing++
			continue
		}
		lags = append(lags, max(0, f.Sub(at).Seconds()*1000))
	}
	slices.Sort(lags)
	res := result{achieved: float64(len(acked)) / elapsed.Seconds(), missing: missing}
	if len(lags) > 0 {
		res.p50 = lags[len(lags)/2]
		res.p99 = lags[len(lags)*99/100]
		res.max = lags[len(lags)-1]
	}
	return res, nil
}

// message is message i: a header that names it and text lines, about
// size bytes in all.
func message(i, size int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: sender@example.net\r\nTo: bench@example.org\r\nSubject: replication %d\r\nMessage-ID: <%d@replcompare>\r\n\r\n", i, i)
	line := strings.Repeat("0123456789abcdef", 4) + "\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	return b.String()
}

// messageNumber finds the number message gave a message in its header.
func messageNumber(head []byte) (int, bool) {
	const tag = "@replcompare>"
	h := string(head)
	j := strings.Index(h, tag)
	if j < 0 {
		return 0, false
	}
	i := strings.LastIndexByte(h[:j], '<')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.Atoi(h[i+1 : j])
	return n, err == nil
}

func dialLMTP(addr string) (*smtp.Client, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := smtp.NewClientLMTP(conn)
	if err := c.Hello("replcompare"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// freePort returns a loopback port nobody listens on now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func waitListen(ctx context.Context, addr string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("nothing listens on %s: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dovecot is two private Dovecot instances: the primary replicates every
// change to the replica with dsync over TCP (the replicator service with
// the notify and replication plugins).
type dovecot struct {
	procs   []*exec.Cmd
	replica string // the replica's maildir of the user
	known   map[string]bool
}

func (d *dovecot) start(ctx context.Context, dir string) (string, error) {
	if _, err := exec.LookPath("dovecot"); err != nil {
		return "", errors.New("dovecot is not installed (apt-get install dovecot-core dovecot-lmtpd)")
	}
	if err := exec.Command("id", "vmail").Run(); err != nil {
		if out, err := exec.Command("useradd", "-r", "-M", "-s", "/usr/sbin/nologin", "vmail").CombinedOutput(); err != nil {
			return "", fmt.Errorf("creating the vmail user: %v: %s", err, out)
		}
	}
	ports := make([]int, 4)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return "", err
		}
		ports[i] = p
	}
	primLMTP, primAdm, replLMTP, replAdm := ports[0], ports[1], ports[2], ports[3]
	for _, inst := range []struct {
		name            string
		lmtp, adm, repl int
	}{{"replica", replLMTP, replAdm, 0}, {"primary", primLMTP, primAdm, replAdm}} {
		base := filepath.Join(dir, inst.name)
		for _, sub := range []string{"run", "state", "mail"} {
			if err := os.MkdirAll(filepath.Join(base, sub), 0o755); err != nil {
				return "", err
			}
		}
		if out, err := exec.Command("chown", "-R", "vmail:vmail", filepath.Join(base, "mail")).CombinedOutput(); err != nil {
			return "", fmt.Errorf("chown: %v: %s", err, out)
		}
		conf := filepath.Join(base, "dovecot.conf")
		if err := os.WriteFile(conf, []byte(dovecotConf(base, inst.name, inst.lmtp, inst.adm, inst.repl)), 0o644); err != nil {
			return "", err
		}
		cmd := exec.CommandContext(ctx, "dovecot", "-F", "-c", conf)
		cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
		if err := cmd.Start(); err != nil {
			return "", err
		}
		d.procs = append(d.procs, cmd)
		if err := waitListen(ctx, fmt.Sprintf("127.0.0.1:%d", inst.lmtp)); err != nil {
			return "", fmt.Errorf("dovecot %s: %w (log: %s)", inst.name, err, filepath.Join(base, "log"))
		}
	}
	d.replica = filepath.Join(dir, "replica", "mail", "bench")
	d.known = map[string]bool{}
	return fmt.Sprintf("127.0.0.1:%d", primLMTP), nil
}

func dovecotConf(base, name string, lmtp, adm, replicaAdm int) string {
	conf := fmt.Sprintf(`protocols = lmtp
listen = 127.0.0.1
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/log
instance_name = replcompare-%[2]s
mail_location = maildir:%[1]s/mail/%%n
first_valid_uid = 1
ssl = no
passdb {
  driver = static
  args = password=unused
}
userdb {
  driver = static
  args = uid=vmail gid=vmail home=%[1]s/mail/%%n
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %[3]d
  }
}
service doveadm {
  inet_listener {
    address = 127.0.0.1
    port = %[4]d
  }
}
doveadm_password = replcompare
`, base, name, lmtp, adm)
	if replicaAdm != 0 {
		conf += fmt.Sprintf(`mail_plugins = $mail_plugins notify replication
doveadm_port = %d
replication_max_conns = 10
service aggregator {
  fifo_listener replication-notify-fifo {
    user = vmail
  }
  unix_listener replication-notify {
    user = vmail
  }
}
service replicator {
  process_min_avail = 1
  unix_listener replicator-doveadm {
    mode = 0600
    user = vmail
  }
}
plugin {
  mail_replica = tcp:127.0.0.1:%d
}
`, replicaAdm, replicaAdm)
	}
	return conf
}

func (d *dovecot) rcpt() string { return "bench@example.org" }

func (d *dovecot) seen(found func(n int)) error {
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(d.replica, sub))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		for _, e := range ents {
			name := e.Name()
			base, _, _ := strings.Cut(name, ":2,") // cur/ adds flags
			if d.known[base] {
				continue
			}
			head, err := readHead(filepath.Join(d.replica, sub, name))
			if err != nil {
				continue // moved between new/ and cur/: seen next round
			}
			if n, ok := messageNumber(head); ok {
				d.known[base] = true
				found(n)
			}
		}
	}
	return nil
}

// readHead reads the start of a file, where the header is.
func readHead(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 2048)
	n, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, err
	}
	return b[:n], nil
}

func (d *dovecot) stop() {
	for _, p := range d.procs {
		p.Process.Signal(os.Interrupt)
	}
	for _, p := range d.procs {
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
}
