package failover_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/resilmail/resilmail/failover"
	"github.com/resilmail/resilmail/internal/etcdtest"
	"github.com/resilmail/resilmail/internal/faultproxy"
)

var fastTimers = failover.Timers{TTL: 2 * time.Second, Renew: 300 * time.Millisecond, RequestTimeout: 250 * time.Millisecond, Margin: 300 * time.Millisecond}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newEtcd(t *testing.T, cl *clientv3.Client, name string, opts *failover.EtcdOptions) *failover.Etcd {
	t.Helper()
	if opts == nil {
		opts = &failover.EtcdOptions{Timers: fastTimers}
	}
	if opts.Logger == nil {
		opts.Logger = quiet()
	}
	e, err := failover.NewEtcd(cl, name, opts)
	require.NoError(t, err)
	return e
}

func TestEtcdLeaseElection(t *testing.T) {
	c := etcdtest.Start(t, 3)
	a := newEtcd(t, c.Client(), "a", nil)
	b := newEtcd(t, c.Client(), "b", nil)
	ctx := context.Background()

	ta, err := a.Acquire(ctx)
	require.NoError(t, err)
	name, tok, err := b.Leader(ctx)
	require.NoError(t, err)
	assert.Equal(t, "a", name)
	assert.Equal(t, ta.Token(), tok)

	got := make(chan failover.Term, 1)
	go func() {
		tb, err := b.Acquire(ctx)
		assert.NoError(t, err)
		got <- tb
	}()
	// b campaigns while a holds and renews: it must not win.
	for range 5 {
		_, err := ta.KeepAlive(ctx)
		require.NoError(t, err)
		select {
		case <-got:
			t.Fatal("b won while a held the lease")
		case <-time.After(fastTimers.Renew):
		}
	}
	require.NoError(t, ta.Release(ctx))
	<-ta.Lost()
	tb := <-got
	assert.Greater(t, tb.Token(), ta.Token(), "the fencing token rises with every term")
	name, _, err = a.Leader(ctx)
	require.NoError(t, err)
	assert.Equal(t, "b", name)
	_, err = ta.KeepAlive(ctx)
	require.ErrorIs(t, err, failover.ErrLeaseLost)
	require.NoError(t, tb.Release(ctx))
}

// TestEtcdStaleCampaign lets the session expire between the campaign's
// return and its use: the term must not be handed out.
func TestEtcdStaleCampaign(t *testing.T) {
	c := etcdtest.Start(t, 1)
	cl := c.Client()
	var once sync.Once
	var first clientv3.LeaseID
	e := newEtcd(t, cl, "a", &failover.EtcdOptions{Timers: fastTimers, AfterCampaign: func(id clientv3.LeaseID) {
		once.Do(func() {
			first = id
			_, err := cl.Revoke(context.Background(), id) // as if the session had expired
			assert.NoError(t, err)
		})
	}})
	term, err := e.Acquire(context.Background())
	require.NoError(t, err)
	defer term.Release(context.Background())
	assert.Equal(t, uint64(1), e.Stats().StaleCampaigns, "the campaign that returned without a live session was refused")
	assert.NotZero(t, first)
	ttl, err := cl.TimeToLive(context.Background(), first)
	require.NoError(t, err)
	assert.Equal(t, int64(-1), ttl.TTL, "the stale campaign's lease is gone")
	_, tok, err := e.Leader(context.Background())
	require.NoError(t, err)
	assert.Equal(t, term.Token(), tok, "the term handed out is the live election key's")
}

// writers counts nodes that accept writes; it fails the test when two do.
type writers struct {
	t   *testing.T
	n   atomic.Int32
	max atomic.Int32
}

func (w *writers) candidate(name string, promoted, demoted chan<- string) failover.Candidate {
	var primary atomic.Bool
	return failover.CandidateFuncs{
		PromoteFunc: func(ctx context.Context, token uint64) error {
			if n := w.n.Add(1); n > 1 {
				w.max.Store(n)
				w.t.Errorf("%s promoted while another node is primary", name)
			}
			primary.Store(true)
			promoted <- name
			return nil
		},
		DemoteFunc: func(ctx context.Context, reason error) error {
			if !primary.Swap(false) {
				return nil // not writing: nothing to stop
			}
			w.n.Add(-1)
			demoted <- name
			return nil
		},
	}
}

// TestElectorDemotesWhenCutFromEtcd cuts the primary from etcd: it demotes
// itself before the standby wins.
func TestElectorDemotesWhenCutFromEtcd(t *testing.T) {
	c := etcdtest.Start(t, 3)
	var proxies []*faultproxy.Proxy
	var eps []string
	for _, m := range c.Members {
		p, err := faultproxy.New(strings.TrimPrefix(m.ClientURL, "http://"), 1)
		require.NoError(t, err)
		t.Cleanup(func() { p.Close() })
		proxies = append(proxies, p)
		eps = append(eps, "http://"+p.Addr())
	}
	w := &writers{t: t}
	promoted, demoted := make(chan string, 10), make(chan string, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	run := func(name string, cl *clientv3.Client) *failover.Elector {
		el, err := failover.NewElector(newEtcd(t, cl, name, nil), w.candidate(name, promoted, demoted), &failover.ElectorOptions{Timers: fastTimers, Logger: quiet()})
		require.NoError(t, err)
		wg.Go(func() { el.Run(ctx) })
		return el
	}
	ea := run("a", c.Client(eps...))
	require.Equal(t, "a", <-promoted)
	eb := run("b", c.Client())

	cut := time.Now()
	for _, p := range proxies {
		p.SetFaults(faultproxy.Faults{Cut: 1})
		p.CutAll()
	}
	select {
	case n := <-demoted:
		require.Equal(t, "a", n)
	case <-time.After(2 * fastTimers.TTL):
		t.Fatal("the primary cut from etcd did not demote itself")
	}
	tDemote := time.Since(cut)
	select {
	case n := <-promoted:
		require.Equal(t, "b", n)
	case <-time.After(3 * fastTimers.TTL):
		t.Fatal("the standby did not take over")
	}
	t.Logf("cut at 0: a demoted after %v, b promoted after %v (TTL %v)", tDemote.Round(time.Millisecond), time.Since(cut).Round(time.Millisecond), fastTimers.TTL)
	assert.Less(t, tDemote, fastTimers.TTL, "a demotes itself before its lease can expire")
	waitPrimary(t, eb)
	assert.Greater(t, eb.Status().Token, ea.Status().Token)
	assert.Zero(t, w.max.Load())

	// Healing lets a campaign again, as a candidate behind b.
	for _, p := range proxies {
		p.SetFaults(faultproxy.Faults{})
	}
	cancel()
	wg.Wait()
}

// TestEtcdMemberKilled kills etcd's raft leader with SIGKILL: the holder
// keeps its term (two members still form a quorum).
func TestEtcdMemberKilled(t *testing.T) {
	c := etcdtest.Start(t, 3)
	timers := failover.Timers{TTL: 3 * time.Second, Renew: 300 * time.Millisecond, RequestTimeout: 250 * time.Millisecond, Margin: 300 * time.Millisecond}
	w := &writers{t: t}
	promoted, demoted := make(chan string, 10), make(chan string, 10)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	el, err := failover.NewElector(newEtcd(t, c.Client(), "a", &failover.EtcdOptions{Timers: timers}), w.candidate("a", promoted, demoted), &failover.ElectorOptions{Timers: timers, Logger: quiet()})
	require.NoError(t, err)
	wg.Go(func() { el.Run(ctx) })
	<-promoted
	leader, err := c.Leader(ctx)
	require.NoError(t, err)
	leader.Kill()
	before := el.Status().ValidUntil
	deadline := time.Now().Add(2 * timers.TTL)
	for !el.Status().ValidUntil.After(before.Add(timers.Renew)) {
		require.True(t, time.Now().Before(deadline), "no renewal after the etcd leader was killed")
		time.Sleep(20 * time.Millisecond)
	}
	assert.True(t, el.Status().Primary)
	assert.Len(t, demoted, 0, "losing one etcd member of three does not demote the primary")
	cancel()
	wg.Wait()
	assert.Equal(t, "a", <-demoted, "stopping the elector demotes its node")
}

// waitPrimary waits until el reports its node primary (its Promote
// callback runs before the status is updated).
func waitPrimary(t *testing.T, el *failover.Elector) {
	deadline := time.Now().Add(5 * time.Second)
	for !el.Status().Primary {
		require.True(t, time.Now().Before(deadline), "the elector never reported its node primary")
		time.Sleep(5 * time.Millisecond)
	}
}

const childEnv = "FAILOVER_TEST_HOLDER"

// TestMain lets the test binary act as a lease holder in a child process.
func TestMain(m *testing.M) {
	if eps := os.Getenv(childEnv); eps != "" {
		holdLease(strings.Split(eps, ","))
		return
	}
	os.Exit(m.Run())
}

func holdLease(eps []string) {
	cl, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	e, err := failover.NewEtcd(cl, "child", &failover.EtcdOptions{Timers: fastTimers, Logger: quiet()})
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	el, _ := failover.NewElector(e, failover.CandidateFuncs{PromoteFunc: func(ctx context.Context, token uint64) error {
		fmt.Println("PRIMARY", token)
		return nil
	}}, &failover.ElectorOptions{Timers: fastTimers, Logger: quiet()})
	el.Run(context.Background())
}

// TestKillHolderProcess kills the lease holder's process with SIGKILL: the
// standby takes over within about one TTL, with a higher token.
func TestKillHolderProcess(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+strings.Join(c.Endpoints(), ","))
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	f := strings.Fields(line)
	require.Equal(t, "PRIMARY", f[0], line)
	childToken, err := strconv.ParseUint(f[1], 10, 64)
	require.NoError(t, err)

	w := &writers{t: t}
	w.n.Store(1) // the child is primary
	promoted, demoted := make(chan string, 10), make(chan string, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	el, err := failover.NewElector(newEtcd(t, c.Client(), "b", nil), w.candidate("b", promoted, demoted), &failover.ElectorOptions{Timers: fastTimers, Logger: quiet()})
	require.NoError(t, err)
	wg.Go(func() { el.Run(ctx) })
	select {
	case <-promoted:
		t.Fatal("b promoted while the child holds the lease")
	case <-time.After(fastTimers.TTL):
	}
	killed := time.Now()
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	w.n.Add(-1) // a killed process writes nothing
	select {
	case <-promoted:
	case <-time.After(3 * fastTimers.TTL):
		t.Fatal("b did not take over from the killed holder")
	}
	took := time.Since(killed)
	waitPrimary(t, el)
	t.Logf("holder killed: standby primary after %v (TTL %v)", took.Round(time.Millisecond), fastTimers.TTL)
	assert.Greater(t, el.Status().Token, childToken)
	assert.Less(t, took, fastTimers.TTL+2*fastTimers.Renew+time.Second)
	cancel()
	wg.Wait()
}

// TestEtcdUnreachable kills every etcd member with SIGKILL: the primary
// cannot renew and demotes itself before its lease could have expired.
func TestEtcdUnreachable(t *testing.T) {
	c := etcdtest.Start(t, 3)
	w := &writers{t: t}
	promoted, demoted := make(chan string, 10), make(chan string, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	el, err := failover.NewElector(newEtcd(t, c.Client(), "a", nil), w.candidate("a", promoted, demoted), &failover.ElectorOptions{Timers: fastTimers, Logger: quiet()})
	require.NoError(t, err)
	wg.Go(func() { el.Run(ctx) })
	<-promoted
	waitPrimary(t, el)
	for _, m := range c.Members {
		m.Kill()
	}
	killed := time.Now()
	select {
	case <-demoted:
	case <-time.After(2 * fastTimers.TTL):
		t.Fatal("the primary did not demote itself with etcd gone")
	}
	took := time.Since(killed)
	t.Logf("etcd gone: primary demoted after %v (TTL %v)", took.Round(time.Millisecond), fastTimers.TTL)
	assert.Less(t, took, fastTimers.TTL)
	require.Eventually(t, func() bool { return !el.Status().Primary }, 5*time.Second, 5*time.Millisecond)
	assert.Contains(t, el.Status().LastError, "lease lost")
	cancel()
	wg.Wait()
}
