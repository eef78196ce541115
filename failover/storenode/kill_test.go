package storenode_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/resilmail/resilmail/failover"
	"github.com/resilmail/resilmail/failover/storenode"
	"github.com/resilmail/resilmail/internal/etcdtest"
	"github.com/resilmail/resilmail/internal/freeport"
	"github.com/resilmail/resilmail/replicate/store"
)

const childEnv = "STORENODE_TEST_CHILD" // etcd endpoints|store dir|listen address|peer b's URL

func TestMain(m *testing.M) {
	if v := os.Getenv(childEnv); v != "" {
		runChild(strings.Split(v, "|"))
		return
	}
	os.Exit(m.Run())
}

// runChild is node a in its own process: an elector on etcd, the stream
// on addr, following b when not primary, and, while primary, a writer that
// prints "ACK id" once each append is durable.
func runChild(args []string) {
	eps, dir, addr, peerB := strings.Split(args[0], ","), args[1], args[2], args[3]
	fail := func(err error) { fmt.Println("ERR", err); os.Exit(1) }
	st, err := store.Open(dir, &store.Options{Logger: quiet(), ScrubInterval: -1})
	if err != nil {
		fail(err)
	}
	n := storenode.New(st, storenode.Options{Name: "a", Secret: secret, Dir: dir + ".inbox", Peers: map[string]string{"b": peerB}, Heartbeat: 50 * time.Millisecond, Logger: quiet()})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fail(err)
	}
	go http.Serve(ln, n.Handler())
	cl, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fail(err)
	}
	lease, err := failover.NewEtcd(cl, "a", &failover.EtcdOptions{Timers: timers, Logger: quiet()})
	if err != nil {
		fail(err)
	}
	el, err := failover.NewElector(lease, n.Candidate(1000), &failover.ElectorOptions{Timers: timers, Logger: quiet()})
	if err != nil {
		fail(err)
	}
	ctx := context.Background()
	if err := n.CheckLeader(ctx, lease); err != nil {
		fail(err)
	}
	go n.FollowLeader(ctx, lease, 100*time.Millisecond)
	go el.Run(ctx)
	fmt.Println("READY", st.Role())
	out := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		if st.Role() != store.RolePrimary {
			time.Sleep(5 * time.Millisecond) // waits for a promotion; the parent decides what happens
			continue
		}
		if err := st.CreateUser(ctx, "alice"); err != nil && !strings.Contains(err.Error(), "exist") {
			continue
		}
		id := fmt.Sprintf("a%d-%d", os.Getpid(), i)
		if _, err := st.Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader("Subject: "+id+"\r\n\r\n"+id+"\r\n")); err == nil {
			fmt.Fprintln(out, "ACK", id)
			out.Flush()
		}
	}
}

type child struct {
	cmd  *exec.Cmd
	acks chan string
}

func startChild(t *testing.T, env string) *child {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+env)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	c := &child{cmd: cmd, acks: make(chan string, 1<<20)}
	sc := bufio.NewScanner(out)
	require.True(t, sc.Scan())
	require.True(t, strings.HasPrefix(sc.Text(), "READY"), sc.Text())
	go func() {
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "ACK "); ok {
				c.acks <- id
			}
		}
		close(c.acks)
	}()
	return c
}

// TestKilledPrimaryFailsOver kills the primary's process with SIGKILL
// while it acknowledges writes: the standby (this process) takes over,
// the time from the kill to its first accepted write is measured, and the
// old primary, started again on its folder, rejoins as a standby and hands
// over every write it acknowledged that the standby lacked.
func TestKilledPrimaryFailsOver(t *testing.T) {
	c := etcdtest.Start(t, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sb, err := store.Open(t.TempDir(), &store.Options{Logger: quiet(), ScrubInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { sb.Close() })
	require.NoError(t, sb.SetReadOnly(true))
	addrA := freeport.Addr(t) // a binds it again after each kill
	b := storenode.New(sb, storenode.Options{Name: "b", Secret: secret, Dir: t.TempDir(), Peers: map[string]string{"a": "http://" + addrA}, Heartbeat: 50 * time.Millisecond, Logger: quiet()})
	lnB, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srvB := &http.Server{Handler: b.Handler()}
	go srvB.Serve(lnB)
	t.Cleanup(func() { srvB.Close(); b.Close() })

	dirA := t.TempDir()
	env := strings.Join([]string{strings.Join(c.Endpoints(), ","), dirA + "/store", addrA, "http://" + lnB.Addr().String()}, "|")
	a := startChild(t, env)
	var acked []string
	for len(acked) < 50 {
		acked = append(acked, <-a.acks)
	}
	lease, err := failover.NewEtcd(c.Client(), "b", &failover.EtcdOptions{Timers: timers, Logger: quiet()})
	require.NoError(t, err)
	el, err := failover.NewElector(lease, b.Candidate(1000), &failover.ElectorOptions{Timers: timers, Logger: quiet()})
	require.NoError(t, err)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { el.Run(ctx) })
	wg.Go(func() { b.FollowLeader(ctx, lease, 100*time.Millisecond) })
	require.Eventually(t, func() bool { r := b.Replica(); return r != nil && r.Stats().Applied > 10 }, 10*time.Second, 5*time.Millisecond)
	for len(acked) < 300 {
		acked = append(acked, <-a.acks)
	}

	killed := time.Now()
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGKILL))
	before := len(acked)
	for id := range a.acks {
		acked = append(acked, id) // what it printed before it died
	}
	t.Logf("acknowledged by a after the 300th read: %d", len(acked)-before)
	var first time.Duration
	for i := 0; ; i++ {
		_, err := sb.Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader(fmt.Sprintf("Subject: b%d\r\n\r\nb\r\n", i)))
		if err == nil {
			first = time.Since(killed)
			acked = append(acked, fmt.Sprintf("b%d", i))
			break
		}
		require.Less(t, time.Since(killed), 4*timers.TTL, "b never took writes: %v", err)
		time.Sleep(time.Millisecond) // polls for the first accepted write
	}
	t.Logf("primary killed (SIGKILL): first write accepted on the standby after %v (TTL %v, renew %v, margin %v); %d writes acknowledged", first.Round(time.Millisecond), timers.TTL, timers.Renew, timers.Margin, len(acked))

	// The old primary comes back and rejoins.
	startChild(t, env)
	ids := map[string]bool{}
	for _, id := range acked {
		ids[id] = true
	}
	require.Eventually(t, func() bool { return len(missing(t, sb, ids)) == 0 }, 30*time.Second, 20*time.Millisecond,
		"acknowledged writes missing on the new primary")
}
