// Package etcdtest starts a real etcd cluster for tests: members of the
// Debian etcd-server binary (installed by .ci/run) on loopback ports, each a
// child process that a test can kill with SIGKILL and start again. A test
// fails, never skips, when the binary is missing.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Binary is the etcd server the members run.
const Binary = "/usr/bin/etcd"

// A Member is one etcd process.
type Member struct {
	Name      string
	ClientURL string
	PeerURL   string
	dir       string
	cluster   string
	cmd       *exec.Cmd
	exited    chan struct{}
}

// A Cluster is a set of members started together.
type Cluster struct {
	Members []*Member
	t       testing.TB
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Start starts n members and waits until the cluster answers. They are
// killed when the test ends. A member that exits while the cluster starts
// (a port taken by another test between freePort and etcd's bind) makes it
// start again on new ports, up to three times.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Fatalf("etcdtest: %v (install the Debian package etcd-server)", err)
	}
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var c *Cluster
		if c, err = try(t, n); err == nil {
			return c
		}
		t.Logf("etcdtest: start %d of 3: %v", attempt, err)
	}
	t.Fatalf("etcdtest: %v", err)
	return nil
}

func try(t testing.TB, n int) (*Cluster, error) {
	t.Helper()
	c := &Cluster{t: t}
	var peers []string
	for i := range n {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
			dir:       t.TempDir(),
		}
		peers = append(peers, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	t.Cleanup(func() {
		for _, m := range c.Members {
			m.Kill()
		}
	})
	for _, m := range c.Members {
		m.cluster = strings.Join(peers, ",")
		m.start(t, "new")
	}
	if err := c.waitHealthy(30 * time.Second); err != nil {
		for _, m := range c.Members {
			m.Kill()
		}
		return nil, err
	}
	return c, nil
}

func (m *Member) start(t testing.TB, state string) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(m.dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(Binary,
		"--name", m.Name, "--data-dir", filepath.Join(m.dir, "data"),
		"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", m.cluster, "--initial-cluster-state", state,
		"--heartbeat-interval", "50", "--election-timeout", "500",
		"--logger", "zap", "--log-level", "warn")
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("etcdtest: start %s: %v", m.Name, err)
	}
	m.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); logf.Close(); close(done) }(m.cmd, m.exited)
}

// Kill sends SIGKILL to the member's process and waits for it to exit.
func (m *Member) Kill() {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.exited
}

// Restart starts a killed member again on its data.
func (m *Member) Restart(t testing.TB) {
	t.Helper()
	m.start(t, "existing")
}

// Healthy reports whether the member answers /health with true.
func (m *Member) Healthy() bool {
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get(m.ClientURL + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var b [64]byte
	n, _ := resp.Body.Read(b[:])
	return resp.StatusCode == 200 && strings.Contains(string(b[:n]), `"true"`)
}

// WaitHealthy waits until every running member is healthy.
func (c *Cluster) WaitHealthy(d time.Duration) {
	c.t.Helper()
	if err := c.waitHealthy(d); err != nil {
		c.t.Fatal(err)
	}
}

func (c *Cluster) waitHealthy(d time.Duration) error {
	deadline := time.Now().Add(d)
	for _, m := range c.Members {
		for !m.Healthy() {
			select {
			case <-m.exited:
				return fmt.Errorf("etcdtest: member %s exited; its log ends:\n%s", m.Name, m.logTail())
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("etcdtest: member %s not healthy after %v; its log ends:\n%s", m.Name, d, m.logTail())
			}
		}
	}
	return nil
}

// logTail is the end of the member's log, for a failure message that
// outlives the test's temporary folder.
func (m *Member) logTail() string {
	b, _ := os.ReadFile(filepath.Join(m.dir, "etcd.log"))
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return string(b)
}

// Endpoints returns the members' client URLs.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.ClientURL)
	}
	return eps
}

// Client returns a client of the given endpoints (all members when none),
// closed when the test ends.
func (c *Cluster) Client(endpoints ...string) *clientv3.Client {
	c.t.Helper()
	if len(endpoints) == 0 {
		endpoints = c.Endpoints()
	}
	cl, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// Leader returns the member that is etcd's raft leader now.
func (c *Cluster) Leader(ctx context.Context) (*Member, error) {
	for _, m := range c.Members {
		cl, err := clientv3.New(clientv3.Config{Endpoints: []string{m.ClientURL}, DialTimeout: time.Second, Logger: zap.NewNop()})
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cl.Status(sctx, m.ClientURL)
		cancel()
		cl.Close()
		if err == nil && st.Header.MemberId == st.Leader {
			return m, nil
		}
	}
	return nil, fmt.Errorf("etcdtest: no leader")
}
