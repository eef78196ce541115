// Package rspamdtest starts a private rspamd (Debian's rspamd package) for
// tests: its own ports on 127.0.0.1, its own pid, log and database
// folders, and DNS pointed at a closed loopback port so that nothing
// leaves the machine. The normal worker answers HTTP (/checkv2), the
// proxy worker speaks the milter protocol in front of it.
//
// rspamd compiles its rules before it answers (about 20 s, more under
// load), so a test binary starts one rspamd and shares it: call Start
// from the tests that need it and Stop from TestMain (or use [Shared] and
// [Main]). A missing rspamd is an error, never a skip. The controller
// worker takes [Password] (it trusts loopback clients without it).
package rspamdtest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/resilmail/resilmail/internal/freeport"
)

// Password is the controller's password.
const Password = "rspamdtest-controller-password"

// Rspamd is a running private rspamd.
type Rspamd struct {
	// URL is the normal worker's base URL ("http://127.0.0.1:PORT").
	URL string
	// Milter is the proxy worker's address in milter mode ("127.0.0.1:PORT").
	Milter string
	// Controller is the controller worker's base URL, which learns
	// (/learnham, /learnspam).
	Controller string
	// Dir holds its configuration overrides, logs and databases.
	Dir string

	cmd    *exec.Cmd
	exited chan struct{}
}

var (
	once    sync.Once
	shared  *Rspamd
	sharedE error
)

// Start returns the test binary's rspamd, starting it on first use and
// waiting until both workers answer (at most 3 minutes).
func Start() (*Rspamd, error) {
	once.Do(func() { shared, sharedE = start() })
	return shared, sharedE
}

// Shared is Start for a test or benchmark: it fails tb when rspamd is
// missing or does not start.
func Shared(tb testing.TB) *Rspamd {
	tb.Helper()
	r, err := Start()
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// Main runs the tests, stops the shared rspamd and exits: TestMain's body.
func Main(m *testing.M) {
	code := m.Run()
	Stop()
	os.Exit(code)
}

// Stop stops the rspamd Start started, if any, by its process group.
func Stop() {
	if shared == nil {
		return
	}
	syscall.Kill(-shared.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-shared.exited:
	case <-time.After(10 * time.Second):
		syscall.Kill(-shared.cmd.Process.Pid, syscall.SIGKILL)
		<-shared.exited
	}
	os.RemoveAll(shared.Dir)
}

func start() (*Rspamd, error) {
	bin, err := exec.LookPath("rspamd")
	if err != nil {
		return nil, fmt.Errorf("rspamd is not installed (apt-get install rspamd): %w", err)
	}
	dir, err := os.MkdirTemp("", "rspamdtest-")
	if err != nil {
		return nil, err
	}
	var ports [3]int
	for i := range ports {
		if ports[i], err = freeport.Port(); err != nil { // rspamd binds them later
			return nil, err
		}
	}
	normal, controller, proxy := ports[0], ports[1], ports[2]
	files := map[string]string{
		"override.d/worker-normal.inc":     fmt.Sprintf("bind_socket = \"127.0.0.1:%d\";\ncount = 1;\n", normal),
		"override.d/worker-controller.inc": fmt.Sprintf("bind_socket = \"127.0.0.1:%d\";\ncount = 1;\npassword = %q;\nenable_password = %q;\n", controller, Password, Password),
		"override.d/worker-proxy.inc": fmt.Sprintf("bind_socket = \"127.0.0.1:%d\";\nmilter = yes;\ntimeout = 120s;\ncount = 1;\n"+
			"upstream \"local\" {\n  default = yes;\n  hosts = \"127.0.0.1:%d\";\n}\n"+
			"discard_on_reject = false;\nquarantine_on_reject = false;\nspam_header = \"X-Spam\";\nreject_message = \"Spam message rejected\";\n", proxy, normal),
		"override.d/logging.inc": "type = \"file\";\nfilename = \"" + filepath.Join(dir, "log", "rspamd.log") + "\";\nlevel = \"info\";\n",
		"local.d/options.inc":    "dns { nameserver = [\"127.0.0.1:1\"]; timeout = 0.5s; retransmits = 1; }\nenable_test_patterns = true;\n",
		// The proxy in milter mode reports the score in X-Spamd-Result
		// (the clients here are on loopback, which it skips by default).
		"local.d/milter_headers.conf": "use = [\"x-spamd-result\"];\nskip_local = false;\nskip_authenticated = false;\n",
	}
	for _, d := range []string{"override.d", "local.d", "db", "run", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(bin, "-f", "-i", "-c", "/etc/rspamd/rspamd.conf",
		"--var", "LOCAL_CONFDIR="+dir, "--var", "DBDIR="+filepath.Join(dir, "db"),
		"--var", "RUNDIR="+filepath.Join(dir, "run"), "--var", "LOGDIR="+filepath.Join(dir, "log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &Rspamd{URL: fmt.Sprintf("http://127.0.0.1:%d", normal), Controller: fmt.Sprintf("http://127.0.0.1:%d", controller), Milter: fmt.Sprintf("127.0.0.1:%d", proxy), Dir: dir, cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(r.exited) }()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-r.exited:
			b, _ := os.ReadFile(filepath.Join(dir, "stderr"))
			return nil, fmt.Errorf("rspamd exited: %s", b)
		default:
		}
		if ready(r) {
			return r, nil
		}
		time.Sleep(200 * time.Millisecond) // polling a process we do not control, with a deadline
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-r.exited
	return nil, errors.New("rspamd did not answer within 3 minutes (see " + dir + ")")
}

// ready says whether both workers answer.
func ready(r *Rspamd) bool {
	resp, err := http.Get(r.URL + "/ping")
	if err != nil {
		return false
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false
	}
	c, err := net.DialTimeout("tcp", r.Milter, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
