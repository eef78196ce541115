package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/etcdtest"
	"github.com/resilmail/resilmail/internal/freeport"
)

const operatorSecret = "operator test secret, not the replication one"

// pairNode is one mail-server node of a pair, run as a real process (this
// test binary re-executed) that the test can kill with SIGKILL and start
// again on the same folder and ports.
type pairNode struct {
	t                     *testing.T
	name                  string
	dir, lmtp, http, imap string
	fwd                   string // -forward imap: to the active node
	args                  []string
	logPath               string // the node's log, kept across restarts
	mu                    sync.Mutex
	cmd                   *exec.Cmd
	exited                chan struct{}
}

func (n *pairNode) start() {
	t := n.t
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+strings.Join(n.args, "\n"), "RESILMAIL_OPERATOR_SECRET="+operatorSecret)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	serving := make(chan struct{})
	exited := make(chan struct{})
	if n.logPath == "" {
		n.logPath = filepath.Join(t.TempDir(), "node-"+n.name+".log")
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("the last lines of node %s's log:\n%s", n.name, lastLines(n.logPath, 150))
			}
		})
	}
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	require.NoError(t, err)
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if strings.Contains(sc.Text(), "primary: serving") {
				once.Do(func() { close(serving) })
			}
		}
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	select {
	case <-serving:
	case <-exited:
		t.Fatalf("node %s exited at start:\n%s", n.name, lastLines(n.logPath, 150))
	case <-time.After(60 * time.Second):
		t.Fatalf("node %s did not start", n.name)
	}
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
}

// kill sends SIGKILL and waits for the process to be gone.
func (n *pairNode) kill() {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	cmd.Process.Kill()
	<-exited
}

func (n *pairNode) stop() {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

func (n *pairNode) status() (statusReport, error) {
	var s statusReport
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + n.http + "/status")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// operator posts to the node's /operator/ path with the operator's token.
func (n *pairNode) operator(path string, out any) error {
	req, _ := http.NewRequest(http.MethodPost, "http://"+n.http+"/operator/"+path, nil)
	req.Header.Set("Authorization", "Bearer "+operatorSecret)
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e errorReply
		json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("%s: %s: %s", path, resp.Status, e.Error)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// operatorGet gets the node's /operator/ path with the operator's token.
func (n *pairNode) operatorGet(path string, out any) error {
	req, _ := http.NewRequest(http.MethodGet, "http://"+n.http+"/operator/"+path, nil)
	req.Header.Set("Authorization", "Bearer "+operatorSecret)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// newPair prepares two nodes a and b that name each other as peers, with
// extra flags for both; a's store starts primary, b's standby.
func newPair(t *testing.T, extra ...string) (a, b *pairNode) {
	root := t.TempDir()
	fa := func() string { return freeport.Addr(t) } // bound again by each restart
	a = &pairNode{t: t, name: "a", dir: filepath.Join(root, "a"), lmtp: fa(), http: fa(), imap: fa(), fwd: fa()}
	b = &pairNode{t: t, name: "b", dir: filepath.Join(root, "b"), lmtp: fa(), http: fa(), imap: fa(), fwd: fa()}
	passwd := filepath.Join(root, "passwd")
	require.NoError(t, os.WriteFile(passwd, []byte("alice@example.org:{PLAIN}alice-pw\n"), 0o600))
	sec := secretFile(t)
	for _, p := range [][2]*pairNode{{a, b}, {b, a}} {
		n, peer := p[0], p[1]
		n.args = append([]string{"-dir", n.dir, "-name", n.name, "-secret-file", sec, "-lmtp", n.lmtp, "-http", n.http, "-imap", n.imap, "-pop3", "",
			"-passwd", passwd, "-users", "alice@example.org", "-peer", peer.name + "=http://" + peer.http, "-hostname", n.name + ".test",
			"-forward", "imap," + n.fwd + ",a=" + a.imap + ",b=" + b.imap}, extra...)
	}
	b.args = append(b.args, "-standby")
	t.Cleanup(func() { a.stop(); b.stop() })
	return a, b
}

// waitRoles waits until want (node name -> role) holds, every standby
// connected to its primary.
func waitRoles(t *testing.T, d time.Duration, want map[*pairNode]string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok := true
		var got []string
		for n, role := range want {
			s, err := n.status()
			got = append(got, fmt.Sprintf("%s=%s/%d (err %v)", n.name, s.Role, s.Epoch, err))
			if err != nil || s.Role != role || (role == "standby" && (s.Standby == nil || !s.Standby.Connected)) {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("roles not reached in %v: %v", d, got)
		}
		time.Sleep(20 * time.Millisecond) // polls other processes
	}
}

// lmtpLoad delivers numbered messages from several writers to whichever
// node answers 250, trying a then b, and records every acknowledgement.
type lmtpLoad struct {
	nodes []*pairNode
	stop  atomic.Bool
	wg    sync.WaitGroup
	seq   atomic.Int64

	mu    sync.Mutex
	acked map[string]string    // subject -> node
	at    map[string]time.Time // node -> last 250
	first map[string]time.Time // node -> first 250 after mark
	mark  time.Time
	gaps  []time.Duration
	last  time.Time
}

func startLoad(writers int, nodes ...*pairNode) *lmtpLoad {
	l := &lmtpLoad{nodes: nodes, acked: map[string]string{}, at: map[string]time.Time{}, first: map[string]time.Time{}}
	for range writers {
		l.wg.Go(func() {
			for !l.stop.Load() {
				subj := fmt.Sprintf("load %d", l.seq.Add(1))
				for !l.stop.Load() {
					if node := l.deliver(subj); node != "" {
						break
					}
					time.Sleep(5 * time.Millisecond) // a sender's retry pace
				}
			}
		})
	}
	return l
}

// deliver tries each node once and returns the one that answered 250.
func (l *lmtpLoad) deliver(subj string) string {
	for _, n := range l.nodes {
		conn, err := net.DialTimeout("tcp", n.lmtp, time.Second)
		if err != nil {
			continue
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		c := smtp.NewClientLMTP(conn)
		msg := "From: load@example.net\r\nTo: alice@example.org\r\nSubject: " + subj + "\r\n\r\nbody of " + subj + "\r\n"
		err = lmtpSend(c, msg)
		c.Close()
		if err == nil {
			now := time.Now()
			l.mu.Lock()
			l.acked[subj] = n.name
			if !l.last.IsZero() {
				l.gaps = append(l.gaps, now.Sub(l.last))
			}
			l.last = now
			l.at[n.name] = now
			if !l.mark.IsZero() && l.first[n.name].IsZero() && now.After(l.mark) {
				l.first[n.name] = now
			}
			l.mu.Unlock()
			return n.name
		}
	}
	return ""
}

// markNow forgets the first 250s seen so far and returns the instant.
func (l *lmtpLoad) markNow() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mark = time.Now()
	l.first = map[string]time.Time{}
	l.gaps = nil
	return l.mark
}

// firstOn waits until node answered 250 after the mark.
func (l *lmtpLoad) firstOn(t *testing.T, node string, d time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		l.mu.Lock()
		at := l.first[node]
		l.mu.Unlock()
		if !at.IsZero() {
			return at
		}
		if time.Now().After(deadline) {
			t.Fatalf("no 250 from %s within %v", node, d)
		}
		time.Sleep(5 * time.Millisecond) // polls the writers' record
	}
}

// maxGap is the longest time without any 250 since the mark.
func (l *lmtpLoad) maxGap() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Max(append(l.gaps, 0))
}

func (l *lmtpLoad) finish() map[string]string {
	l.stop.Store(true)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked
}

// subjects reads every message's subject in every mailbox of alice on
// the node, over IMAP.
func subjects(t *testing.T, n *pairNode) map[string]string {
	t.Helper()
	c := dialIMAP(t, n.imap, nil)
	require.NoError(t, c.Login("alice@example.org", "alice-pw").Wait())
	boxes, err := c.List("", "*", nil).Collect()
	require.NoError(t, err)
	got := map[string]string{}
	for _, b := range boxes {
		sel, err := c.Select(b.Mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
		require.NoError(t, err)
		if sel.NumMessages == 0 {
			continue
		}
		var all imap.SeqSet
		all.AddRange(1, sel.NumMessages)
		msgs, err := c.Fetch(all, &imap.FetchOptions{Envelope: true}).Collect()
		require.NoError(t, err)
		for _, m := range msgs {
			got[m.Envelope.Subject] = b.Mailbox
		}
	}
	return got
}

// TestPairFailoverUnderLMTPLoad runs two real mail-server processes on a
// real three-member etcd under LMTP load with -ack one: a controlled
// switchover, a failback, a kill -9 of the primary followed by automatic
// promotion of the standby, the old primary's restart as a standby, and a
// kill -9 of etcd's raft leader. Every message answered 250 is readable
// over IMAP on the primary at the end; the times are measured through
// LMTP.
func TestPairFailoverUnderLMTPLoad(t *testing.T) {
	etcd := etcdtest.Start(t, 3)
	a, b := newPair(t, "-lease", "etcd", "-etcd", strings.Join(etcd.Endpoints(), ","), "-lease-ttl", "2s",
		"-ack", "one", "-ack-timeout", "1s", "-on-timeout", "accept")
	a.start()
	b.start()
	waitRoles(t, 30*time.Second, map[*pairNode]string{a: "primary", b: "standby"})

	load := startLoad(4, a, b)
	defer load.finish()
	load.markNow()
	load.firstOn(t, "a", 20*time.Second)

	// Controlled switchover: the window without a 250 through LMTP.
	type report struct {
		Epoch         uint64  `json:"Epoch"`
		WriteWindowMS float64 `json:"write_window_ms"`
	}
	var rep report
	mark := load.markNow()
	require.NoError(t, a.operator("switchover?to=b", &rep))
	first := load.firstOn(t, "b", 20*time.Second)
	time.Sleep(300 * time.Millisecond) // let the writers run on the new primary
	switchGap := load.maxGap()
	t.Logf("switchover a->b: epoch %d, refused-write window %.0f ms (switchover report); through LMTP: first 250 on b %v after the call, longest gap without a 250 %v",
		rep.Epoch, rep.WriteWindowMS, first.Sub(mark).Round(time.Millisecond), switchGap.Round(time.Millisecond))
	waitRoles(t, 30*time.Second, map[*pairNode]string{a: "standby", b: "primary"})

	// Failback, once a has caught up.
	mark = load.markNow()
	require.NoError(t, b.operator("switchover?to=a", &rep))
	first = load.firstOn(t, "a", 20*time.Second)
	time.Sleep(300 * time.Millisecond)
	backGap := load.maxGap()
	t.Logf("failback b->a: epoch %d, refused-write window %.0f ms; through LMTP: first 250 on a %v after the call, longest gap %v",
		rep.Epoch, rep.WriteWindowMS, first.Sub(mark).Round(time.Millisecond), backGap.Round(time.Millisecond))
	waitRoles(t, 30*time.Second, map[*pairNode]string{a: "primary", b: "standby"})

	// kill -9 of the primary under load: b takes over on its own.
	time.Sleep(200 * time.Millisecond)
	mark = load.markNow()
	a.kill()
	var promoted time.Duration
	for promoted == 0 {
		if s, err := b.status(); err == nil && s.Role == "primary" {
			promoted = time.Since(mark)
		}
		require.Less(t, time.Since(mark), 30*time.Second, "b was not promoted")
		time.Sleep(5 * time.Millisecond) // polls b
	}
	first = load.firstOn(t, "b", 30*time.Second)
	failover := first.Sub(mark)
	t.Logf("automatic failover: kill -9 of a to b primary (its /status): %v; to the first 250 on b: %v (lease TTL 2s; b has no replica then, so a delivery waits -ack-timeout 1s and is accepted unreplicated)",
		promoted.Round(time.Millisecond), failover.Round(time.Millisecond))
	s, err := b.status()
	require.NoError(t, err)
	assert.Equal(t, "primary", s.Role)
	assert.Greater(t, s.Epoch, rep.Epoch, "promoted at a higher epoch")

	// The old primary comes back (a supervisor's restart): etcd names b
	// the leader, so a fences itself before it serves, and rejoins as b's
	// standby.
	a.start()
	conn, err := net.DialTimeout("tcp", a.lmtp, 5*time.Second)
	require.NoError(t, err)
	lc := smtp.NewClientLMTP(conn)
	err = lmtpSend(lc, "From: t@example.net\r\nTo: alice@example.org\r\nSubject: to the old primary\r\n\r\nhello\r\n")
	lc.Close()
	require.ErrorContains(t, err, "451", "the old primary took a write while b holds the lease")
	waitRoles(t, 30*time.Second, map[*pairNode]string{a: "standby", b: "primary"})

	// etcd's raft leader is killed under load: the lease may stay with b
	// or move, but at the end one node is primary, the other its standby.
	leader, err := etcd.Leader(t.Context())
	require.NoError(t, err)
	leader.Kill()
	t.Logf("etcd leader %s killed", leader.Name)
	time.Sleep(3 * time.Second) // the load runs through etcd's election
	primary, standby := b, a
	require.Eventually(t, func() bool {
		sa, errA := a.status()
		sb, errB := b.status()
		switch {
		case errA != nil || errB != nil:
			return false
		case sa.Role == "primary" && sb.Role == "standby":
			primary, standby = a, b
			return sb.Standby.Connected
		case sb.Role == "primary" && sa.Role == "standby":
			primary, standby = b, a
			return sa.Standby.Connected
		}
		return false
	}, 30*time.Second, 20*time.Millisecond, "one primary and its standby after etcd's leader was killed")
	t.Logf("after etcd's leader was killed: %s primary", primary.name)
	time.Sleep(500 * time.Millisecond)
	acked := load.finish()

	// Every 250 is readable on the primary once the standby has caught up.
	waitCaughtUp(t, primary, standby, 30*time.Second)
	got := subjects(t, primary)
	var lost []string
	orphans := 0
	for subj := range acked {
		box, ok := got[subj]
		if !ok {
			lost = append(lost, subj)
		}
		if box != "INBOX" && ok {
			orphans++
		}
	}
	t.Logf("%d deliveries answered 250 (%d on a, %d on b); %d read back on %s, %d of them as orphans", len(acked),
		count(acked, "a"), count(acked, "b"), len(acked)-len(lost), primary.name, orphans)
	assert.Empty(t, lost, "acknowledged deliveries missing on the primary")
	assert.Less(t, failover, 10*time.Second)

	// Both nodes stopped cleanly and started again: one is primary, the
	// other its standby (a clean stop releases the lease without fencing
	// the store, so the pair is not left with no eligible node).
	primary.stop()
	standby.stop()
	a.start()
	b.start()
	require.Eventually(t, func() bool {
		sa, errA := a.status()
		sb, errB := b.status()
		return errA == nil && errB == nil && (sa.Role == "primary" && sb.Role == "standby" && sb.Standby.Connected ||
			sb.Role == "primary" && sa.Role == "standby" && sa.Standby.Connected)
	}, 30*time.Second, 20*time.Millisecond, "one primary and its standby after both were restarted")
}

func count(m map[string]string, v string) int {
	n := 0
	for _, x := range m {
		if x == v {
			n++
		}
	}
	return n
}

// lmtpSend delivers msg to alice and returns nil on her 250.
func lmtpSend(c *smtp.Client, msg string) error {
	if err := c.Hello("load.test"); err != nil {
		return err
	}
	if err := c.Mail("load@example.net", nil); err != nil {
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
		return fmt.Errorf("%d answers", len(ok))
	}
	return nil
}

// deliverTo delivers one message with subject subj to alice at n's LMTP
// port and fails the test unless it is answered 250.
func deliverTo(t *testing.T, n *pairNode, subj string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", n.lmtp, 5*time.Second)
	require.NoError(t, err)
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	require.NoError(t, lmtpSend(c, "From: t@example.net\r\nTo: alice@example.org\r\nSubject: "+subj+"\r\n\r\nhello\r\n"), "delivering %q to %s", subj, n.name)
}

// TestManualFailoverAndRejoin runs a pair under the manual lease as real
// processes: the operator's credential guards /operator/; after a kill -9
// of the primary the operator promotes the standby, which says how far
// behind it was; the old primary, started again, finds its peer primary
// at a higher epoch, fences itself and rejoins as its standby; a copy of
// the primary's folder refuses to start as a second writable primary; the
// manual lease's grant and revoke move the role, and so does a
// switchover. Every delivery answered 250 is on the primary at the end.
func TestManualFailoverAndRejoin(t *testing.T) {
	a, b := newPair(t, "-ack", "async", "-guard-min", "2")
	a.start()
	b.start()
	waitRoles(t, 30*time.Second, map[*pairNode]string{a: "primary", b: "standby"})

	// The operator's endpoints want the operator's token.
	for _, h := range []string{"", "Bearer " + testSecret, "Bearer nope"} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+b.http+"/operator/promote", nil)
		if h != "" {
			req.Header.Set("Authorization", h)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "Authorization %q", h)
	}
	// A mailbox deleted on the primary is delayed on the standby until
	// the operator confirms it there.
	ic := dialIMAP(t, a.imap, nil)
	require.NoError(t, ic.Login("alice@example.org", "alice-pw").Wait())
	require.NoError(t, ic.Create("Old", nil).Wait())
	for range 3 {
		const msg = "Subject: old\r\n\r\nold\r\n"
		cmd := ic.Append("Old", int64(len(msg)), nil)
		io.WriteString(cmd, msg)
		require.NoError(t, cmd.Close())
		_, err := cmd.Wait()
		require.NoError(t, err)
	}
	// The standby must hold "Old" and its messages before the delete, or
	// there is nothing for its guard to protect (a standby still copying
	// its first state, as on a slow machine, would simply never see them).
	waitCaughtUp(t, a, b, 30*time.Second)
	require.NoError(t, ic.Delete("Old").Wait())
	ic.Logout().Wait()
	var held []heldChange
	require.Eventually(t, func() bool {
		held = nil
		return b.operatorGet("held", &held) == nil && len(held) == 1
	}, 20*time.Second, 10*time.Millisecond, "the standby delays the delete")
	assert.Equal(t, "Old", held[0].Mailbox)
	require.NoError(t, b.operator(fmt.Sprintf("confirm?user=%s&seq=%d", held[0].User, held[0].Seq), nil))
	require.Eventually(t, func() bool {
		held = nil
		return b.operatorGet("held", &held) == nil && len(held) == 0
	}, 20*time.Second, 10*time.Millisecond)

	var sent []string
	for i := range 5 {
		sent = append(sent, fmt.Sprintf("before the kill %d", i))
		deliverTo(t, a, sent[len(sent)-1])
	}
	sa, err := a.status()
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		sb, err := b.status()
		return err == nil && sb.Standby != nil && sb.Standby.Applied >= sa.Position
	}, 20*time.Second, 10*time.Millisecond)

	// The primary dies; the operator promotes the standby.
	a.kill()
	var promoted roleReply
	require.NoError(t, b.operator("promote", &promoted))
	assert.Equal(t, "primary", promoted.Role)
	assert.Greater(t, promoted.Epoch, sa.Epoch)
	assert.Zero(t, promoted.LagChanges, "b had everything a acknowledged")
	for i := range 3 {
		sent = append(sent, fmt.Sprintf("after the promotion %d", i))
		deliverTo(t, b, sent[len(sent)-1])
	}

	// The old primary comes back: b is primary at a higher epoch, so a
	// fences its store and follows b, before it serves: its first
	// delivery is refused.
	a.start()
	conn, err := net.DialTimeout("tcp", a.lmtp, 5*time.Second)
	require.NoError(t, err)
	lc := smtp.NewClientLMTP(conn)
	err = lmtpSend(lc, "From: t@example.net\r\nTo: alice@example.org\r\nSubject: to the old primary\r\n\r\nhello\r\n")
	lc.Close()
	require.ErrorContains(t, err, "451", "the old primary took a write after its peer was promoted")
	waitRoles(t, 30*time.Second, map[*pairNode]string{a: "standby", b: "primary"})

	// A copy of b's folder would be a second writable primary of b's
	// history: it refuses to start.
	b.stop()
	cdir := filepath.Join(t.TempDir(), "c")
	require.NoError(t, exec.Command("cp", "-a", b.dir, cdir).Run())
	b.start()
	waitRoles(t, 30*time.Second, map[*pairNode]string{a: "standby", b: "primary"})
	c, err := parseFlags([]string{"-dir", cdir, "-name", "c", "-secret-file", secretFile(t), "-lmtp", "127.0.0.1:0", "-http", "127.0.0.1:0",
		"-imap", "", "-pop3", "", "-peer", "b=http://" + b.http}, func(string) string { return "" })
	require.NoError(t, err)
	err = run(t.Context(), c, quiet, nil)
	require.ErrorIs(t, err, ErrSecondPrimary)
	assert.ErrorContains(t, err, "copied")

	// The manual lease: a grant promotes a above b's epoch, and b, seeing
	// it, fences itself and follows a.
	sb, err := b.status()
	require.NoError(t, err)
	var granted roleReply
	require.NoError(t, a.operator(fmt.Sprintf("grant?token=%d", sb.Epoch+10), &granted))
	assert.Equal(t, "primary", granted.Role)
	assert.GreaterOrEqual(t, granted.Epoch, sb.Epoch+10)
	waitRoles(t, 30*time.Second, map[*pairNode]string{a: "primary", b: "standby"})
	sent = append(sent, "after the grant")
	deliverTo(t, a, sent[len(sent)-1])
	// IMAP clients of either node reach the primary, a: a write through
	// the standby's forwarded port is taken (the standby refuses writes).
	waitActive(t, "a", a, b)
	for _, n := range []*pairNode{a, b} {
		sent = append(sent, "appended through "+n.name+"'s forwarded port to a")
		appendVia(t, n.fwd, sent[len(sent)-1])
	}

	// A switchover back to b, then every delivery is read on b.
	var rep struct {
		Epoch uint64 `json:"Epoch"`
	}
	require.NoError(t, a.operator("switchover?to=b", &rep))
	assert.Greater(t, rep.Epoch, granted.Epoch)
	waitRoles(t, 30*time.Second, map[*pairNode]string{a: "standby", b: "primary"})
	sent = append(sent, "after the switchover")
	deliverTo(t, b, sent[len(sent)-1])
	// The proxies followed the role to b without a restart.
	waitActive(t, "b", a, b)
	for _, n := range []*pairNode{a, b} {
		sent = append(sent, "appended through "+n.name+"'s forwarded port to b")
		appendVia(t, n.fwd, sent[len(sent)-1])
	}
	got := subjects(t, b)
	for _, s := range sent {
		assert.Contains(t, got, s)
	}
}

// TestNodeFlags: the operator's secret is never the replication secret,
// -lease etcd needs -etcd and -peer, -forward names known nodes.
func TestNodeFlags(t *testing.T) {
	env := func(op string) func(string) string {
		return func(k string) string {
			return map[string]string{"RESILMAIL_SECRET": testSecret, "RESILMAIL_OPERATOR_SECRET": op}[k]
		}
	}
	_, err := parseFlags(nil, env(testSecret))
	assert.ErrorContains(t, err, "operator secret is the replication secret")
	c, err := parseFlags([]string{"-name", "a"}, env(operatorSecret))
	require.NoError(t, err)
	assert.Equal(t, []byte(operatorSecret), c.node.operator)
	c, err = parseFlags([]string{"-name", "a"}, env(""))
	require.NoError(t, err)
	assert.Nil(t, c.node.operator, "no operator secret: /operator/ answers 403")
	for args, want := range map[string]string{
		"-lease etcd -peer b=http://127.0.0.1:1":                                    "needs -etcd",
		"-lease etcd -etcd http://127.0.0.1:2379":                                   "needs -peer",
		"-lease etcd -etcd http://x:1 -peer b=http://127.0.0.1:1 -lease-ttl 1500ms": "whole number of seconds",
		"-lease raft":                  "want manual or etcd",
		"-peer a=http://127.0.0.1:1":   "names this node itself",
		"-peer b=http://10.0.0.2:8026": "plain HTTP to another machine",
		"-peer b=ftp://x":              "name=http",
		"-primary http://127.0.0.1:1 -peer b=http://127.0.0.1:2": "do not go together",
		"-forward imap,127.0.0.1:1,a=127.0.0.1:2,z=127.0.0.1:3":  `node "z"`,
		"-forward imap,127.0.0.1:1,127.0.0.1:2,127.0.0.1:3":      "each is node=host:port",
	} {
		_, err := parseFlags(append([]string{"-name", "a"}, strings.Fields(args)...), env(operatorSecret))
		assert.ErrorContains(t, err, want, args)
	}
}

// appendVia appends a message with subject subj to alice's INBOX over
// IMAP at addr; it fails the test unless the server takes it (only the
// primary does).
func appendVia(t *testing.T, addr, subj string) {
	t.Helper()
	c := dialIMAP(t, addr, nil)
	require.NoError(t, c.Login("alice@example.org", "alice-pw").Wait())
	msg := "From: t@example.net\r\nTo: alice@example.org\r\nSubject: " + subj + "\r\n\r\nappended\r\n"
	cmd := c.Append("INBOX", int64(len(msg)), nil)
	_, err := io.WriteString(cmd, msg)
	require.NoError(t, err)
	require.NoError(t, cmd.Close())
	_, err = cmd.Wait()
	require.NoError(t, err, "APPEND through %s", addr)
	c.Logout().Wait()
}

// waitActive waits until every node's watcher (and so its -forward
// proxies) names name the active node.
func waitActive(t *testing.T, name string, nodes ...*pairNode) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, n := range nodes {
			if s, err := n.status(); err != nil || s.Active != name {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond, "every node's proxies following %s", name)
}

// waitCaughtUp waits until standby has applied everything primary has
// journaled at the time of each check, and fails the test after timeout.
func waitCaughtUp(t *testing.T, primary, standby *pairNode, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ss, errS := standby.status()
		sp, errP := primary.status()
		if errS == nil && errP == nil && ss.Standby != nil && ss.Standby.Applied >= sp.Position {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not catch up with %s", standby.name, primary.name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lastLines returns the last n lines of the file at path, or why it cannot.
func lastLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.SplitAfter(string(b), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "")
}
