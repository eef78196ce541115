package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// cyrusBin is where Debian installs Cyrus's programs (cyrus-imapd,
// cyrus-replication).
const cyrusBin = "/usr/lib/cyrus/bin"

// cyrus is two private Cyrus IMAP instances at their defaults: the primary
// logs every change (sync_log) and a rolling sync_client sends it to the
// replica's sync_server.
type cyrus struct {
	procs []*exec.Cmd
	spool string // the replica's spool
	known map[string]bool
}

func (c *cyrus) rcpt() string { return "bench" }

func (c *cyrus) start(ctx context.Context, dir string) (string, error) {
	for _, prog := range []string{"master", "lmtpd", "sync_client", "sync_server"} {
		if _, err := os.Stat(filepath.Join(cyrusBin, prog)); err != nil {
			return "", errors.New("cyrus is not installed (apt-get install cyrus-imapd cyrus-replication sasl2-bin)")
		}
	}
	ports := make([]int, 5)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return "", err
		}
		ports[i] = p
	}
	primLMTP, primIMAP, replLMTP, replIMAP, syncPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	for _, inst := range []struct {
		name       string
		lmtp, imap int
		primary    bool
	}{{"replica", replLMTP, replIMAP, false}, {"primary", primLMTP, primIMAP, true}} {
		base := filepath.Join(dir, inst.name)
		for _, sub := range []string{"conf", "spool", "sieve", "socket", "run"} {
			if err := os.MkdirAll(filepath.Join(base, sub), 0o755); err != nil {
				return "", err
			}
		}
		imapd, master := cyrusConf(base, inst.lmtp, inst.imap, syncPort, inst.primary)
		if err := os.WriteFile(filepath.Join(base, "imapd.conf"), []byte(imapd), 0o644); err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(base, "cyrus.conf"), []byte(master), 0o644); err != nil {
			return "", err
		}
		pw := exec.Command("saslpasswd2", "-p", "-c", "-f", filepath.Join(base, "sasldb2"), "cyrus")
		pw.Stdin = strings.NewReader("replcompare")
		if out, err := pw.CombinedOutput(); err != nil {
			return "", fmt.Errorf("saslpasswd2: %v: %s", err, out)
		}
		if out, err := exec.Command("chown", "-R", "cyrus:mail", base).CombinedOutput(); err != nil {
			return "", fmt.Errorf("chown: %v: %s", err, out)
		}
		cmd := exec.CommandContext(ctx, filepath.Join(cyrusBin, "master"), "-D",
			"-M", filepath.Join(base, "cyrus.conf"), "-C", filepath.Join(base, "imapd.conf"),
			"-p", filepath.Join(base, "run", "master.pid"))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			return "", err
		}
		c.procs = append(c.procs, cmd)
		if err := waitListen(ctx, fmt.Sprintf("127.0.0.1:%d", inst.lmtp)); err != nil {
			return "", fmt.Errorf("cyrus %s: %w", inst.name, err)
		}
	}
	c.spool = filepath.Join(dir, "replica", "spool")
	c.known = map[string]bool{}
	if err := imapCreate(fmt.Sprintf("127.0.0.1:%d", primIMAP), "user/bench"); err != nil {
		return "", err
	}
	// One message through, so that the first measured ones do not wait
	// for sync_client to find the replica.
	addr := fmt.Sprintf("127.0.0.1:%d", primLMTP)
	cl, err := dialLMTP(addr)
	if err != nil {
		return "", err
	}
	defer cl.Close()
	warm := "Subject: warm-up\r\nMessage-ID: <warm-up@replcompare-warm>\r\n\r\nwarm-up\r\n"
	if err := cl.SendMail("sender@example.net", []string{c.rcpt()}, strings.NewReader(warm)); err != nil {
		return "", fmt.Errorf("warm-up delivery: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		n := 0
		filepath.WalkDir(c.spool, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && cyrusMessage.MatchString(d.Name()) {
				n++
			}
			return nil
		})
		if n > 0 {
			return addr, nil
		}
		if time.Now().After(deadline) {
			return "", errors.New("cyrus: the warm-up message never reached the replica")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cyrusMessage matches the file of a message in a Cyrus spool: "<uid>.".
var cyrusMessage = regexp.MustCompile(`^[0-9]+\.$`)

func cyrusConf(base string, lmtp, imap, syncPort int, primary bool) (imapd, master string) {
	imapd = fmt.Sprintf(`configdirectory: %[1]s/conf
defaultpartition: default
partition-default: %[1]s/spool
sievedir: %[1]s/sieve
admins: cyrus
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: %[1]s/sasldb2
sasl_mech_list: PLAIN
unixhierarchysep: yes
lmtp_downcase_rcpt: yes
lmtpsocket: %[1]s/socket/lmtp
idlesocket: %[1]s/socket/idle
notifysocket: %[1]s/socket/notify
mboxname_lockpath: %[1]s/run/lock
proc_path: %[1]s/run/proc
master_pid_file: %[1]s/run/master.pid
`, base)
	if primary {
		imapd += fmt.Sprintf(`sync_log: 1
sync_host: 127.0.0.1
sync_port: %d
sync_authname: cyrus
sync_password: replcompare
`, syncPort)
	}
	conf := filepath.Join(base, "imapd.conf")
	master = fmt.Sprintf(`START {
  recover cmd="ctl_cyrusdb -r -C %[1]s"
}
SERVICES {
  imap cmd="imapd -C %[1]s" listen="127.0.0.1:%[2]d" prefork=1
  lmtp cmd="lmtpd -a -C %[1]s" listen="127.0.0.1:%[3]d" prefork=1 maxchild=20
`, conf, imap, lmtp)
	if !primary {
		master += fmt.Sprintf("  syncserver cmd=\"sync_server -C %s\" listen=\"127.0.0.1:%d\" prefork=1\n", conf, syncPort)
	}
	master += "}\n"
	if primary {
		master += fmt.Sprintf("DAEMON {\n  syncclient cmd=\"sync_client -r -C %s\"\n}\n", conf)
	}
	return imapd, master + "EVENTS {\n}\n"
}

// imapCreate creates mailbox as Cyrus's administrator.
func imapCreate(addr, mailbox string) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(conn)
	if _, err := r.ReadString('\n'); err != nil {
		return err
	}
	for _, cmd := range []string{"a LOGIN cyrus replcompare", "b CREATE " + mailbox, "c LOGOUT"} {
		if _, err := fmt.Fprintf(conn, "%s\r\n", cmd); err != nil {
			return err
		}
		tag := cmd[:1] + " "
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("imap %q: %w", cmd, err)
			}
			if !strings.HasPrefix(line, tag) {
				continue
			}
			if !strings.HasPrefix(line, tag+"OK") && !strings.HasPrefix(cmd, "c ") {
				return fmt.Errorf("imap %q: %s", cmd, strings.TrimSpace(line))
			}
			break
		}
	}
	return nil
}

func (c *cyrus) seen(found func(n int)) error {
	return filepath.WalkDir(c.spool, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() || c.known[path] || !cyrusMessage.MatchString(d.Name()) {
			return nil
		}
		head, err := readHead(path)
		if err != nil {
			return nil // being written: seen next round
		}
		c.known[path] = true
		if n, ok := messageNumber(head); ok {
			found(n)
		}
		return nil
	})
}

func (c *cyrus) stop() {
	for _, p := range c.procs {
		syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
	}
	for _, p := range c.procs {
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
}
