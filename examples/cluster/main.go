// Command cluster runs the reference deployment on one machine, on
// loopback: two relays (MX 10 and MX 20) that deliver over LMTP to
// whichever mail server is primary, a primary mail server, a standby that
// replicates it and forwards the IMAP and LMTP clients that reach it to
// the primary (with the client's address in a PROXY v2 header, sent from
// 127.0.0.2, the one address the primary trusts for it), and the status
// page. It builds the example commands, starts each as its own
// process with its data under -dir, prints every address and the status
// page's URL, and runs until interrupted.
//
//	go run ./examples/cluster -dir resilmail-cluster
//	go run ./examples/cluster -demo
//
// With -demo it sends mail through both relays, waits until the standby
// has it, reads it back over IMAP through the standby, prints what
// happened and stops.
//
// Not yet: switchover, failback and automatic failover (the embedded etcd
// and a standby that can be promoted) wait for examples/primary and
// examples/secondary to become one promotable mail server; the failover
// package and failover/storenode already do it in-process.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail/internal/cli"
)

type config struct {
	dir     string
	demo    bool
	verbose bool
	out     io.Writer
}

func parseFlags(args []string) (config, error) {
	c := config{out: os.Stdout}
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	fs.StringVar(&c.dir, "dir", "resilmail-cluster", "folder for every node's data, created if missing and kept")
	fs.BoolVar(&c.demo, "demo", false, "send mail through the relays, read it back through the standby, print what happened and stop")
	fs.BoolVar(&c.verbose, "v", false, "show the nodes' logs")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return c, nil
}

func main() {
	c, err := parseFlags(os.Args[1:])
	os.Exit(cli.Main("cluster", err, c.verbose, func(ctx context.Context, log *slog.Logger) error { return run(ctx, c, log) }))
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// node is one started process.
type node struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

type cluster struct {
	c     config
	log   *slog.Logger
	bin   string
	env   []string
	nodes []*node
	addr  map[string]string
	pass  string
}

// build compiles the example commands into dir/bin.
func (cl *cluster) build(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return errors.New("cluster: run it from the resilmail module (go run ./examples/cluster)")
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	cl.bin = filepath.Join(cl.c.dir, "bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", cl.bin+string(filepath.Separator), "./examples/primary", "./examples/secondary", "./examples/relay", "./examples/status")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cluster: building the examples: %v\n%s", err, b)
	}
	return nil
}

func (cl *cluster) start(name string, args ...string) error {
	prog := map[string]string{"primary": "primary", "standby": "secondary", "mx1": "relay", "mx2": "relay", "status": "status"}[name]
	cmd := exec.Command(filepath.Join(cl.bin, prog), args...)
	cmd.Env = append(os.Environ(), cl.env...)
	logf, err := os.OpenFile(filepath.Join(cl.c.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if cl.c.verbose {
		w := io.MultiWriter(logf, prefixWriter{name, os.Stderr})
		cmd.Stdout, cmd.Stderr = w, w
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("cluster: start %s: %w", name, err)
	}
	n := &node{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(n.done) }()
	cl.nodes = append(cl.nodes, n)
	return nil
}

type prefixWriter struct {
	name string
	w    io.Writer
}

func (p prefixWriter) Write(b []byte) (int, error) {
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) > 0 {
			fmt.Fprintf(p.w, "%-8s %s", p.name, line)
		}
	}
	return len(b), nil
}

// waitListening waits until addr accepts connections or the node exits.
func (cl *cluster) waitListening(ctx context.Context, addr string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		for _, n := range cl.nodes {
			select {
			case <-n.done:
				return fmt.Errorf("cluster: %s exited; see %s", n.name, filepath.Join(cl.c.dir, n.name+".log"))
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster: nothing listens on %s", addr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // polls a process we do not control
		}
	}
}

func (cl *cluster) stop() {
	for i := len(cl.nodes) - 1; i >= 0; i-- {
		n := cl.nodes[i]
		n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.done:
		case <-time.After(15 * time.Second):
			n.cmd.Process.Kill()
			<-n.done
		}
	}
}

func run(ctx context.Context, c config, log *slog.Logger) error {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return err
	}
	cl := &cluster{c: c, log: log, addr: map[string]string{}}
	if err := cl.build(ctx); err != nil {
		return err
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	cl.env = []string{"RESILMAIL_SECRET=" + hex.EncodeToString(secret)}
	pass := make([]byte, 12)
	rand.Read(pass)
	cl.pass = hex.EncodeToString(pass)
	passwdFile := filepath.Join(c.dir, "passwd")
	if err := os.WriteFile(passwdFile, []byte("alice@example.org:{PLAIN}"+cl.pass+"\n"), 0o600); err != nil {
		return err
	}
	for _, k := range []string{"primary-lmtp", "primary-http", "primary-imap", "standby-http", "standby-imap", "standby-lmtp", "mx1", "mx1-http", "mx2", "mx2-http", "status"} {
		a, err := freeAddr()
		if err != nil {
			return err
		}
		cl.addr[k] = a
	}
	a := cl.addr
	defer cl.stop()
	steps := []struct {
		name   string
		listen string
		args   []string
	}{
		{"primary", a["primary-http"], []string{"-dir", filepath.Join(c.dir, "primary"), "-lmtp", a["primary-lmtp"], "-http", a["primary-http"], "-imap", a["primary-imap"], "-pop3", "",
			"-passwd", passwdFile, "-users", "alice@example.org", "-ack", "one", "-hostname", "primary.cluster", "-proxy-trust", "127.0.0.2"}},
		{"standby", a["standby-http"], []string{"-dir", filepath.Join(c.dir, "standby"), "-primary", "http://" + a["primary-http"], "-name", "standby", "-http", a["standby-http"],
			"-forward", "imap," + a["standby-imap"] + "," + a["primary-imap"], "-forward", "lmtp," + a["standby-lmtp"] + "," + a["primary-lmtp"], "-forward-proxy", "-forward-from", "127.0.0.2"}},
	}
	for i, mx := range []string{"mx1", "mx2"} {
		steps = append(steps, struct {
			name   string
			listen string
			args   []string
		}{mx, a[mx], []string{"-listen", a[mx], "-queue", filepath.Join(c.dir, mx+"-queue"), "-hostname", mx + ".cluster", "-relay-domains", "example.org",
			"-mailserver", "primary=" + a["primary-lmtp"] + ",http://" + a["primary-http"], "-http", a[mx+"-http"], "-retry", fmt.Sprint(time.Duration(i+1) * time.Second)}})
	}
	steps = append(steps, struct {
		name   string
		listen string
		args   []string
	}{"status", a["status"], []string{"-listen", a["status"], "-interval", "1s", "-node", "primary=http://" + a["primary-http"], "-node", "standby=http://" + a["standby-http"],
		"-node", "mx1=http://" + a["mx1-http"], "-node", "mx2=http://" + a["mx2-http"]}})
	for _, s := range steps {
		if err := cl.start(s.name, s.args...); err != nil {
			return err
		}
		if err := cl.waitListening(ctx, s.listen); err != nil {
			return err
		}
	}
	fmt.Fprintf(c.out, `resilmail cluster in %s (logs: *.log there)
  MX 10   mx1      smtp://%s   metrics http://%s/metrics
  MX 20   mx2      smtp://%s   metrics http://%s/metrics
  primary          lmtp %s   imap %s   http://%s/status
  standby          imap %s and lmtp %s (forwarded to the primary)   http://%s/status
  status page      http://%s/
  user             alice@example.org, password in %s
`, c.dir, a["mx1"], a["mx1-http"], a["mx2"], a["mx2-http"], a["primary-lmtp"], a["primary-imap"], a["primary-http"],
		a["standby-imap"], a["standby-lmtp"], a["standby-http"], a["status"], passwdFile)
	if c.demo {
		return cl.demo(ctx)
	}
	<-ctx.Done()
	return nil
}

// demo sends mail through both relays and reads it back through the
// standby.
func (cl *cluster) demo(ctx context.Context) error {
	a, out := cl.addr, cl.c.out
	const each = 10
	start := time.Now()
	for _, mx := range []string{"mx1", "mx2"} {
		for i := range each {
			msg := fmt.Sprintf("From: demo@example.net\r\nTo: alice@example.org\r\nSubject: demo %s %d\r\n\r\nsent through %s\r\n", mx, i, mx)
			if err := send(a[mx], msg); err != nil {
				return fmt.Errorf("demo: send through %s: %w", mx, err)
			}
		}
	}
	fmt.Fprintf(out, "demo: %d messages accepted by mx1 and mx2 in %v\n", 2*each, time.Since(start).Round(time.Millisecond))

	// The standby has them once its applied position reaches the
	// primary's with every message in.
	var pst struct {
		Messages int    `json:"messages"`
		Position uint64 `json:"position"`
	}
	var sst struct {
		Applied  uint64 `json:"applied"`
		Messages int    `json:"messages"`
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := getJSON("http://"+a["primary-http"]+"/status", &pst); err != nil {
			return err
		}
		if err := getJSON("http://"+a["standby-http"]+"/status", &sst); err != nil {
			return err
		}
		if pst.Messages >= 2*each && sst.Messages >= pst.Messages {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: after a minute the primary holds %d messages and the standby %d", pst.Messages, sst.Messages)
		}
		time.Sleep(50 * time.Millisecond) // polls other processes
	}
	fmt.Fprintf(out, "demo: delivered to the primary (%d messages) and replicated to the standby (%d, applied %d) after %v\n",
		pst.Messages, sst.Messages, sst.Applied, time.Since(start).Round(time.Millisecond))

	ic, err := imapclient.DialInsecure(a["standby-imap"], nil)
	if err != nil {
		return fmt.Errorf("demo: IMAP through the standby: %w", err)
	}
	defer ic.Close()
	if err := ic.Login("alice@example.org", cl.pass).Wait(); err != nil {
		return fmt.Errorf("demo: IMAP login through the standby: %w", err)
	}
	sel, err := ic.Select("INBOX", nil).Wait()
	if err != nil {
		return fmt.Errorf("demo: IMAP SELECT: %w", err)
	}
	ic.Logout().Wait()
	fmt.Fprintf(out, "demo: IMAP through the standby's forwarded port: INBOX holds %d messages\n", sel.NumMessages)
	if sel.NumMessages != 2*each {
		return fmt.Errorf("demo: INBOX holds %d messages, %d were sent", sel.NumMessages, 2*each)
	}
	var report struct {
		Primaries int `json:"primaries"`
		Nodes     []struct {
			Name      string `json:"name"`
			Reachable bool   `json:"reachable"`
		} `json:"nodes"`
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		if err := getJSON("http://"+a["status"]+"/status.json", &report); err != nil {
			return err
		}
		up := 0
		for _, n := range report.Nodes {
			if n.Reachable {
				up++
			}
		}
		if up == len(report.Nodes) && report.Primaries == 1 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: the status page shows %d of %d nodes up and %d primaries", up, len(report.Nodes), report.Primaries)
		}
		time.Sleep(100 * time.Millisecond) // polls the status page
	}
	fmt.Fprintf(out, "demo: status page: %d nodes reachable, one primary; nothing lost\n", len(report.Nodes))
	return nil
}

// send submits one message over plain SMTP on loopback.
func send(addr, msg string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SendMail("demo@example.net", []string{"alice@example.org"}, strings.NewReader(msg)); err != nil {
		return err
	}
	return c.Quit()
}

func getJSON(url string, v any) error {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
