// Command cluster runs the reference deployment on one machine, on
// loopback: an etcd member embedded in this process
// (go.etcd.io/etcd/server/v3/embed: nothing to install) that holds the
// failover lease, two mail-server nodes (examples/primary, the same
// promotable program: mail1 starts primary, mail2 standby) that elect their
// primary on it, two relays (MX 10 and MX 20) that deliver over LMTP to
// whichever node is primary, and the status page. Each node also forwards
// the IMAP and LMTP clients that reach it to the active node (with the
// client's address in a PROXY v2 header, sent from 127.0.0.2, the one
// address the nodes trust for it), following role changes. It builds the
// example commands, starts each as its own process with its data under
// -dir, prints every address, the status page's URL and the operator's
// commands, and runs until interrupted.
//
//	go run ./examples/cluster -dir resilmail-cluster
//	go run ./examples/cluster -demo
//	go run ./examples/cluster -etcd-endpoints http://10.0.0.1:2379,http://10.0.0.2:2379
//
// The embedded member listens on loopback only, keeps its data in
// -dir/etcd (removed and created again at each run: the lease's revisions
// start again and the nodes keep their epochs above them), logs to
// -dir/etcd.log, and is closed after every node has stopped (a node stopped
// cleanly releases its lease). -etcd-endpoints uses an existing etcd
// cluster instead (comma-separated client URLs, as the nodes' -etcd) and
// starts none.
//
// With -demo it sends mail through both relays, performs a controlled
// switchover to mail2 and a failback to mail1 (each timed: the window in
// which writes were refused), kills the primary's process with SIGKILL
// while mail keeps arriving and times the automatic promotion of the
// standby (kill to the first LMTP 250 on the new primary), starts the
// old primary again, which rejoins as a standby with any unreplicated
// deliveries reported as orphans, and reads every acknowledged message
// back over IMAP through a forwarded port: it prints what happened, the
// times, and that nothing was lost.
//
// The nodes run with -ack one: a delivery is answered 250 once the standby
// has it too. While one node is down the other waits -ack-timeout (1 s
// here) and then accepts alone (-on-timeout accept; counted, and kept as
// orphans if that node dies before the other returns).
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
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/resilmail/resilmail/internal/cli"
)

type config struct {
	dir           string
	demo          bool
	etcdEndpoints string
	verbose       bool
	out           io.Writer
}

func parseFlags(args []string) (config, error) {
	c := config{out: os.Stdout}
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	fs.StringVar(&c.dir, "dir", "resilmail-cluster", "folder for every node's data, created if missing and kept")
	fs.BoolVar(&c.demo, "demo", false, "send mail, switch over, fail back, kill the primary, let the standby take over, read everything back, print what happened and stop")
	fs.StringVar(&c.etcdEndpoints, "etcd-endpoints", "", "comma-separated client URLs of an existing etcd cluster to hold the lease (default: an etcd member embedded in this process)")
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

// freeAddr returns a loopback address whose port is free now. The
// processes bind it later, so it is taken below the kernel's ephemeral
// range (ip_local_port_range): an outgoing connection of another node
// (to etcd, a peer's status) never takes it in between, as it could a
// port the kernel handed out for ":0".
func (cl *cluster) freeAddr() (string, error) {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				low = n
			}
		}
	}
	for range 100 {
		port := 10000 + mrand.IntN(low-10000)
		if cl.used[port] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		ln.Close()
		cl.used[port] = true
		return ln.Addr().String(), nil
	}
	return "", errors.New("cluster: no free port below the ephemeral range")
}

// node is one started process.
type node struct {
	name string
	prog string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

type cluster struct {
	c        config
	log      *slog.Logger
	bin      string
	env      []string
	nodes    []*node
	byName   map[string]*node
	addr     map[string]string
	pass     string
	operator string
	expected []string        // subjects of the messages answered 250
	tag      string          // this run's, in every subject
	used     map[int]bool    // ports handed out by freeAddr
	etcdStop <-chan struct{} // closed if the embedded etcd stops; nil for an external one
}

// build compiles the example commands into dir/bin.
func (cl *cluster) build(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return errors.New("cluster: run it from the resilmail module (go run ./examples/cluster)")
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	cl.bin = filepath.Join(cl.c.dir, "bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", cl.bin+string(filepath.Separator), "./examples/primary", "./examples/relay", "./examples/status")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cluster: building the examples: %v\n%s", err, b)
	}
	return nil
}

// start starts the program prog as the node name.
func (cl *cluster) start(name, prog string, args ...string) error {
	n := &node{name: name, prog: prog, args: args}
	cl.nodes = append(cl.nodes, n)
	cl.byName[name] = n
	return cl.launch(n)
}

func (cl *cluster) launch(n *node) error {
	path := n.prog
	if !filepath.IsAbs(path) {
		path = filepath.Join(cl.bin, n.prog)
	}
	cmd := exec.Command(path, n.args...)
	cmd.Env = append(os.Environ(), cl.env...)
	logf, err := os.OpenFile(filepath.Join(cl.c.dir, n.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if cl.c.verbose {
		w := io.MultiWriter(logf, prefixWriter{n.name, os.Stderr})
		cmd.Stdout, cmd.Stderr = w, w
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("cluster: start %s: %w", n.name, err)
	}
	done := make(chan struct{})
	n.cmd, n.done = cmd, done
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	return nil
}

// kill sends SIGKILL to the node's process and waits until it is gone.
func (cl *cluster) kill(name string) {
	n := cl.byName[name]
	n.cmd.Process.Kill()
	<-n.done
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

// waitListening waits until addr accepts connections or a node exits.
func (cl *cluster) waitListening(ctx context.Context, addr string) error {
	return cl.poll(ctx, 60*time.Second, "nothing listens on "+addr, func() (bool, error) {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return true, nil
		}
		return false, nil
	})
}

// poll calls cond every 20 ms until it is true, it fails, a node exits
// or d passes.
func (cl *cluster) poll(ctx context.Context, d time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		for _, n := range cl.nodes {
			select {
			case <-n.done:
				return fmt.Errorf("cluster: %s exited; see %s", n.name, filepath.Join(cl.c.dir, n.name+".log"))
			default:
			}
		}
		select {
		case <-cl.etcdStop:
			return fmt.Errorf("cluster: the embedded etcd stopped; see %s", filepath.Join(cl.c.dir, "etcd.log"))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster: after %v: %s", d, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // polls processes we do not control
		}
	}
}

// stop ends every process at once: stopped one by one, a primary that
// stops first hands its lease to a standby still running, which begins a
// promotion that its own stop then cuts short (and leaves it fenced).
func (cl *cluster) stop() {
	for _, n := range cl.nodes {
		select {
		case <-n.done:
		default:
			n.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	deadline := time.After(15 * time.Second)
	for i := len(cl.nodes) - 1; i >= 0; i-- {
		n := cl.nodes[i]
		select {
		case <-n.done:
		case <-deadline:
			n.cmd.Process.Kill()
			<-n.done
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func run(ctx context.Context, c config, log *slog.Logger) error {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return err
	}
	var err error
	cl := &cluster{c: c, log: log, addr: map[string]string{}, byName: map[string]*node{}, used: map[int]bool{}, tag: "run " + randomHex(3)}
	if err := cl.build(ctx); err != nil {
		return err
	}
	cl.operator = randomHex(24)
	cl.env = []string{"RESILMAIL_SECRET=" + randomHex(32), "RESILMAIL_OPERATOR_SECRET=" + cl.operator}
	operatorFile := filepath.Join(c.dir, "operator.secret")
	if err := os.WriteFile(operatorFile, []byte(cl.operator+"\n"), 0o600); err != nil {
		return err
	}
	cl.pass = randomHex(12)
	passwdFile := filepath.Join(c.dir, "passwd")
	if err := os.WriteFile(passwdFile, []byte("alice@example.org:{PLAIN}"+cl.pass+"\n"), 0o600); err != nil {
		return err
	}
	for _, k := range []string{"etcd", "etcd-peer", "mx1", "mx1-http", "mx2", "mx2-http", "status"} {
		if cl.addr[k], err = cl.freeAddr(); err != nil {
			return err
		}
	}
	for _, n := range []string{"mail1", "mail2"} {
		for _, k := range []string{"lmtp", "http", "imap", "fwd-imap", "fwd-lmtp"} {
			if cl.addr[n+"-"+k], err = cl.freeAddr(); err != nil {
				return err
			}
		}
	}
	a := cl.addr
	etcdURLs, etcdWhat := c.etcdEndpoints, "(external, the failover lease)"
	if etcdURLs == "" {
		closeEtcd, err := cl.startEtcd(ctx)
		if err != nil {
			return err
		}
		defer closeEtcd() // after cl.stop: the nodes release their leases on it
		etcdURLs, etcdWhat = "http://"+a["etcd"], "(embedded, the failover lease)"
	}
	defer cl.stop()
	mailNode := func(name, peer string, extra ...string) []string {
		args := []string{"-name", name, "-dir", filepath.Join(c.dir, name), "-peer", peer + "=http://" + a[peer+"-http"],
			"-lease", "etcd", "-etcd", etcdURLs, "-lease-ttl", "2s",
			"-lmtp", a[name+"-lmtp"], "-http", a[name+"-http"], "-imap", a[name+"-imap"], "-pop3", "",
			"-passwd", passwdFile, "-users", "alice@example.org", "-ack", "one", "-ack-timeout", "1s", "-on-timeout", "accept",
			"-hostname", name + ".cluster", "-proxy-trust", "127.0.0.2",
			"-forward", "imap," + a[name+"-fwd-imap"] + ",mail1=" + a["mail1-imap"] + ",mail2=" + a["mail2-imap"],
			"-forward", "lmtp," + a[name+"-fwd-lmtp"] + ",mail1=" + a["mail1-lmtp"] + ",mail2=" + a["mail2-lmtp"],
			"-forward-proxy", "-forward-from", "127.0.0.2"}
		return append(args, extra...)
	}
	steps := []struct {
		name, prog, listen string
		args               []string
	}{
		{"mail1", "primary", a["mail1-http"], mailNode("mail1", "mail2")},
		{"mail2", "primary", a["mail2-http"], mailNode("mail2", "mail1", "-standby")},
	}
	for i, mx := range []string{"mx1", "mx2"} {
		steps = append(steps, struct {
			name, prog, listen string
			args               []string
		}{mx, "relay", a[mx], []string{"-listen", a[mx], "-queue", filepath.Join(c.dir, mx+"-queue"), "-hostname", mx + ".cluster", "-relay-domains", "example.org",
			"-mailserver", "mail1=" + a["mail1-lmtp"] + ",http://" + a["mail1-http"],
			"-mailserver", "mail2=" + a["mail2-lmtp"] + ",http://" + a["mail2-http"],
			"-http", a[mx+"-http"], "-retry", fmt.Sprint(time.Duration(i+1) * 500 * time.Millisecond)}})
	}
	steps = append(steps, struct {
		name, prog, listen string
		args               []string
	}{"status", "status", a["status"], []string{"-listen", a["status"], "-interval", "1s",
		"-node", "mail1=http://" + a["mail1-http"], "-node", "mail2=http://" + a["mail2-http"],
		"-node", "mx1=http://" + a["mx1-http"], "-node", "mx2=http://" + a["mx2-http"]}})
	for _, s := range steps {
		if err := cl.start(s.name, s.prog, s.args...); err != nil {
			return err
		}
		if err := cl.waitListening(ctx, s.listen); err != nil {
			return err
		}
	}
	// A folder of an earlier run may have left mail2 the primary.
	primary, err := cl.waitOnePrimary(ctx)
	if err != nil {
		return err
	}
	role := map[string]string{"mail1": "standby", "mail2": "standby"}
	role[primary] = "primary"
	fmt.Fprintf(c.out, `resilmail cluster in %s (logs: *.log there)
  etcd             %s %s
  MX 10   mx1      smtp://%s   metrics http://%s/metrics
  MX 20   mx2      smtp://%s   metrics http://%s/metrics
  mail1 (%s)  lmtp %s   imap %s   http://%s/status
  mail2 (%s)  lmtp %s   imap %s   http://%s/status
  forwarded        imap %s and %s, lmtp %s and %s (to whichever is primary)
  status page      http://%s/
  user             alice@example.org, password in %s
  operator         curl -X POST -H "Authorization: Bearer $(cat %s)" http://%s/operator/switchover?to=%s
`, c.dir, etcdURLs, etcdWhat, a["mx1"], a["mx1-http"], a["mx2"], a["mx2-http"],
		role["mail1"], a["mail1-lmtp"], a["mail1-imap"], a["mail1-http"], role["mail2"], a["mail2-lmtp"], a["mail2-imap"], a["mail2-http"],
		a["mail1-fwd-imap"], a["mail2-fwd-imap"], a["mail1-fwd-lmtp"], a["mail2-fwd-lmtp"], a["status"], passwdFile, operatorFile,
		a[primary+"-http"], map[string]string{"mail1": "mail2", "mail2": "mail1"}[primary])
	if c.demo {
		if primary == "mail2" {
			epoch, window, err := cl.switchover("mail2", "mail1")
			if err != nil {
				return err
			}
			fmt.Fprintf(c.out, "demo: an earlier run left mail2 primary: switched over to mail1 at epoch %d (writes refused for %v)\n", epoch, window.Round(time.Millisecond))
			if err := cl.waitRoles(ctx, "mail1", "mail2"); err != nil {
				return err
			}
		}
		return cl.demo(ctx)
	}
	<-ctx.Done()
	return nil
}

// startEtcd starts the embedded etcd member: one, on loopback, its data
// in -dir/etcd, new at each run (its ports are), its log in -dir/etcd.log
// (and on stderr with -v). It returns once the member serves clients, with
// the function that stops it.
func (cl *cluster) startEtcd(ctx context.Context) (func(), error) {
	dir := filepath.Join(cl.c.dir, "etcd")
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(cl.c.dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	var w io.Writer = logf
	if cl.c.verbose {
		w = io.MultiWriter(logf, prefixWriter{"etcd", os.Stderr})
	}
	lg := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(w), zapcore.InfoLevel))
	client, peer := url.URL{Scheme: "http", Host: cl.addr["etcd"]}, url.URL{Scheme: "http", Host: cl.addr["etcd-peer"]}
	cfg := embed.NewConfig()
	cfg.Name = "cluster"
	cfg.Dir = dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("cluster: embedded etcd: %w", err)
	}
	closeAll := func() { e.Close(); lg.Sync(); logf.Close() }
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		closeAll()
		return nil, fmt.Errorf("cluster: embedded etcd: %w", err)
	case <-time.After(60 * time.Second):
		closeAll()
		return nil, fmt.Errorf("cluster: the embedded etcd did not start in 60s; see %s", logf.Name())
	case <-ctx.Done():
		closeAll()
		return nil, ctx.Err()
	}
	cl.etcdStop = e.Server.StopNotify()
	return closeAll, nil
}

// nodeStatus is what the demo reads of a mail node's /status.
type nodeStatus struct {
	Role     string `json:"role"`
	Epoch    uint64 `json:"epoch"`
	Position uint64 `json:"position"`
	Messages int    `json:"messages"`
	Standby  *struct {
		Connected bool   `json:"connected"`
		Applied   uint64 `json:"applied"`
		Orphans   int    `json:"orphans"`
	} `json:"standby"`
}

func (cl *cluster) status(name string) (nodeStatus, error) {
	var s nodeStatus
	err := getJSON("http://"+cl.addr[name+"-http"]+"/status", &s)
	return s, err
}

// waitRoles waits until primary is primary and standby its connected
// standby.
func (cl *cluster) waitRoles(ctx context.Context, primary, standby string) error {
	return cl.poll(ctx, 60*time.Second, primary+" primary and "+standby+" its standby", func() (bool, error) {
		p, err1 := cl.status(primary)
		s, err2 := cl.status(standby)
		return err1 == nil && err2 == nil && p.Role == "primary" && s.Role == "standby" && s.Standby != nil && s.Standby.Connected, nil
	})
}

// waitOnePrimary waits until one mail node is primary and the other its
// connected standby, and returns the primary's name.
func (cl *cluster) waitOnePrimary(ctx context.Context) (string, error) {
	var primary string
	err := cl.poll(ctx, 60*time.Second, "one mail node primary, the other its standby", func() (bool, error) {
		for _, p := range [][2]string{{"mail1", "mail2"}, {"mail2", "mail1"}} {
			a, err1 := cl.status(p[0])
			b, err2 := cl.status(p[1])
			if err1 == nil && err2 == nil && a.Role == "primary" && b.Role == "standby" && b.Standby != nil && b.Standby.Connected {
				primary = p[0]
				return true, nil
			}
		}
		return false, nil
	})
	return primary, err
}

// waitCaughtUp waits until the standby has applied everything the primary
// holds and holds at least want messages.
func (cl *cluster) waitCaughtUp(ctx context.Context, primary, standby string, want int) error {
	return cl.poll(ctx, 90*time.Second, fmt.Sprintf("%s with %d messages, replicated to %s", primary, want, standby), func() (bool, error) {
		p, err1 := cl.status(primary)
		s, err2 := cl.status(standby)
		return err1 == nil && err2 == nil && p.Messages >= want && s.Standby != nil && s.Standby.Applied >= p.Position && s.Messages >= p.Messages, nil
	})
}

// switchover asks from's operator endpoint to move the primary role to to.
func (cl *cluster) switchover(from, to string) (epoch uint64, window time.Duration, err error) {
	req, _ := http.NewRequest(http.MethodPost, "http://"+cl.addr[from+"-http"]+"/operator/switchover?to="+to, nil)
	req.Header.Set("Authorization", "Bearer "+cl.operator)
	resp, err := (&http.Client{Timeout: 90 * time.Second}).Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var rep struct {
		Epoch         uint64  `json:"Epoch"`
		WriteWindowMS float64 `json:"write_window_ms"`
		Error         string  `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return 0, 0, fmt.Errorf("switchover %s to %s: %s", from, to, resp.Status)
	}
	if rep.Error != "" {
		return 0, 0, fmt.Errorf("switchover %s to %s: %s", from, to, rep.Error)
	}
	return rep.Epoch, time.Duration(rep.WriteWindowMS * float64(time.Millisecond)), nil
}

// sendThroughRelays sends n messages through mx1 and mx2 in turn, with
// subjects prefixed by tag.
func (cl *cluster) sendThroughRelays(tag string, n int) error {
	for i := range n {
		mx := []string{"mx1", "mx2"}[i%2]
		subj := fmt.Sprintf("%s %s %d", cl.tag, tag, i)
		msg := fmt.Sprintf("From: demo@example.net\r\nTo: alice@example.org\r\nSubject: %s\r\n\r\nsent through %s\r\n", subj, mx)
		if err := send(cl.addr[mx], msg); err != nil {
			return fmt.Errorf("demo: send through %s: %w", mx, err)
		}
		cl.expected = append(cl.expected, subj)
	}
	return nil
}

// demo runs the failover story and checks nothing was lost.
func (cl *cluster) demo(ctx context.Context) error {
	out := cl.c.out
	// The folder may hold an earlier run's messages: count from here.
	first, err := cl.status("mail1")
	if err != nil {
		return err
	}
	sent := first.Messages
	start := time.Now()
	if err := cl.sendThroughRelays("before", 20); err != nil {
		return err
	}
	sent += 20
	if err := cl.waitCaughtUp(ctx, "mail1", "mail2", sent); err != nil {
		return err
	}
	fmt.Fprintf(out, "demo: 20 messages accepted by mx1 and mx2, delivered to mail1 and replicated to mail2 in %v\n", time.Since(start).Round(time.Millisecond))

	// Controlled switchover, then failback, each while mail arrives.
	for _, sw := range [][2]string{{"mail1", "mail2"}, {"mail2", "mail1"}} {
		from, to := sw[0], sw[1]
		epoch, window, err := cl.switchover(from, to)
		if err != nil {
			return err
		}
		if err := cl.waitRoles(ctx, to, from); err != nil {
			return err
		}
		if err := cl.sendThroughRelays("after switchover to "+to, 10); err != nil {
			return err
		}
		sent += 10
		if err := cl.waitCaughtUp(ctx, to, from, sent); err != nil {
			return err
		}
		what := "switchover"
		if to == "mail1" {
			what = "failback"
		}
		fmt.Fprintf(out, "demo: %s %s -> %s at epoch %d: writes refused for %v; 10 more messages delivered to %s and replicated\n",
			what, from, to, epoch, window.Round(time.Millisecond), to)
	}

	// Automatic failover: mail1's process is killed while a prober
	// delivers straight to mail2 over LMTP, answered 451 until mail2 is
	// primary.
	before, err := cl.status("mail1")
	if err != nil {
		return err
	}
	killed := time.Now()
	cl.kill("mail1")
	var promoted time.Duration
	probes := 0
	for {
		if s, err := cl.status("mail2"); err == nil && s.Role == "primary" && promoted == 0 {
			promoted = time.Since(killed)
		}
		probes++
		subj := fmt.Sprintf("%s probe %d", cl.tag, probes)
		msg := fmt.Sprintf("From: probe@example.net\r\nTo: alice@example.org\r\nSubject: %s\r\n\r\nwho takes this?\r\n", subj)
		if lmtpDeliver(cl.addr["mail2-lmtp"], msg) == nil {
			cl.expected = append(cl.expected, subj)
			break
		}
		if time.Since(killed) > 60*time.Second {
			return errors.New("demo: mail2 accepted nothing for a minute after mail1 was killed")
		}
		time.Sleep(20 * time.Millisecond) // a sender's retry pace
	}
	firstOK := time.Since(killed)
	s2, err := cl.status("mail2")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "demo: kill -9 of mail1 (primary, epoch %d): mail2 promoted by the election after %v, at epoch %d; first LMTP 250 on mail2 %v after the kill (lease TTL 2 s; alone, mail2 waits -ack-timeout 1 s, then accepts)\n",
		before.Epoch, promoted.Round(time.Millisecond), s2.Epoch, firstOK.Round(time.Millisecond))
	if err := cl.sendThroughRelays("while mail1 is down", 10); err != nil {
		return err
	}
	sent += 10 + 1 // and the probe answered 250

	// mail1 comes back: fenced by the lease, it rejoins as mail2's
	// standby; what it acknowledged and never replicated is kept.
	restarted := time.Now()
	if err := cl.launch(cl.byName["mail1"]); err != nil {
		return err
	}
	if err := cl.waitRoles(ctx, "mail2", "mail1"); err != nil {
		return err
	}
	s1, err := cl.status("mail1")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "demo: mail1 restarted and rejoined as mail2's standby in %v; orphans (deliveries it had acknowledged that mail2 never got) kept on mail2: %d\n",
		time.Since(restarted).Round(time.Millisecond), s1.Standby.Orphans)
	if err := cl.waitCaughtUp(ctx, "mail2", "mail1", sent); err != nil {
		return err
	}

	// Every acknowledged message, read over IMAP through mail1's
	// forwarded port (mail1 is the standby: the proxy reaches mail2).
	got, err := cl.subjectsIMAP(cl.addr["mail1-fwd-imap"])
	if err != nil {
		return err
	}
	var lost []string
	for _, subj := range cl.expected {
		if got[subj] == 0 {
			lost = append(lost, subj)
		}
	}
	total := 0
	for _, n := range got {
		total += n
	}
	fmt.Fprintf(out, "demo: IMAP through mail1's forwarded port: all %d acknowledged messages readable (%d copies in alice's mailboxes)\n", len(cl.expected)-len(lost), total)
	if len(lost) > 0 {
		return fmt.Errorf("demo: %d acknowledged messages are not readable: %q", len(lost), lost)
	}
	var report struct {
		Primaries int `json:"primaries"`
		Nodes     []struct {
			Reachable bool `json:"reachable"`
		} `json:"nodes"`
	}
	err = cl.poll(ctx, 30*time.Second, "the status page showing every node up and one primary", func() (bool, error) {
		if err := getJSON("http://"+cl.addr["status"]+"/status.json", &report); err != nil {
			return false, err
		}
		up := 0
		for _, n := range report.Nodes {
			if n.Reachable {
				up++
			}
		}
		return up == len(report.Nodes) && report.Primaries == 1, nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "demo: status page: %d nodes reachable, one primary; nothing lost\n", len(report.Nodes))
	return nil
}

// subjectsIMAP counts the messages of each subject in every mailbox of
// alice (the orphans' mailbox included).
func (cl *cluster) subjectsIMAP(addr string) (map[string]int, error) {
	ic, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		return nil, fmt.Errorf("demo: IMAP: %w", err)
	}
	defer ic.Close()
	if err := ic.Login("alice@example.org", cl.pass).Wait(); err != nil {
		return nil, fmt.Errorf("demo: IMAP login: %w", err)
	}
	boxes, err := ic.List("", "*", nil).Collect()
	if err != nil {
		return nil, err
	}
	got := map[string]int{}
	for _, b := range boxes {
		sel, err := ic.Select(b.Mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil {
			return nil, err
		}
		if sel.NumMessages == 0 {
			continue
		}
		var all imap.SeqSet
		all.AddRange(1, sel.NumMessages)
		msgs, err := ic.Fetch(all, &imap.FetchOptions{Envelope: true}).Collect()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			got[m.Envelope.Subject]++
		}
	}
	ic.Logout().Wait()
	return got, nil
}

// lmtpDeliver delivers one message to alice over LMTP; nil on her 250.
func lmtpDeliver(addr, msg string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("cluster.demo"); err != nil {
		return err
	}
	if err := c.Mail("probe@example.net", nil); err != nil {
		return err
	}
	if err := c.Rcpt("alice@example.org", nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return err
	}
	ok, err := w.CloseWithLMTPResponse()
	if err != nil {
		return err
	}
	if len(ok) != 1 {
		return errors.New("no answer for the recipient")
	}
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
