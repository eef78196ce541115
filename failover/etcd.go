package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// EtcdOptions configure an [Etcd] lease. The zero value is usable.
type EtcdOptions struct {
	// Prefix is the election's key prefix. Empty means
	// "/resilmail/failover/primary/".
	Prefix string
	// Timers are the lease's durations; zero fields take defaults.
	Timers Timers
	// Logger receives a line per campaign, term and loss. Nil means
	// slog.Default().
	Logger *slog.Logger
	// AfterCampaign, when set, is called after a campaign returns and
	// before the ownership check (tests use it to let the session expire
	// right there).
	AfterCampaign func(lease clientv3.LeaseID)
}

// EtcdStats count what an [Etcd] lease did.
type EtcdStats struct {
	// Terms is the number of terms acquired.
	Terms uint64
	// StaleCampaigns counts campaigns that returned although their session
	// had expired (or their key was gone): the pitfall of etcd's
	// Election.Campaign. They were not turned into terms.
	StaleCampaigns uint64
}

// Etcd is a [Lease] held by winning an election (etcd's concurrency
// package) on an etcd cluster. A term's fencing token is the etcd revision
// at which its election key was created: every later term's key is created
// later, at a higher revision.
//
// A campaign that returns after its session expired does not become a
// term: Acquire checks, after the campaign, that the lease is alive (a
// renewal) and that its key is still the oldest under the prefix with the
// campaign's revision, and campaigns again otherwise.
//
// A term is valid until TTL - Margin after the last renewal that succeeded
// was sent; etcd expires the lease no earlier than TTL after it received
// that renewal, so a holder that cannot renew sees Lost closed before
// another node can win.
type Etcd struct {
	client *clientv3.Client
	name   string
	prefix string
	timers Timers
	log    *slog.Logger
	after  func(clientv3.LeaseID)

	terms, stale atomic.Uint64
}

var (
	_ Lease  = (*Etcd)(nil)
	_ Leader = (*Etcd)(nil)
)

// NewEtcd returns a lease for the node name on the etcd cluster that client
// reaches. It checks the timers and does no I/O.
func NewEtcd(client *clientv3.Client, name string, opts *EtcdOptions) (*Etcd, error) {
	if opts == nil {
		opts = &EtcdOptions{}
	}
	if client == nil || name == "" {
		return nil, errors.New("failover: NewEtcd needs a client and a node name")
	}
	t, err := opts.Timers.Check()
	if err != nil {
		return nil, err
	}
	e := &Etcd{client: client, name: name, prefix: opts.Prefix, timers: t, log: opts.Logger, after: opts.AfterCampaign}
	if e.prefix == "" {
		e.prefix = "/resilmail/failover/primary/"
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	return e, nil
}

// Timers returns the lease's timers with defaults filled in.
func (e *Etcd) Timers() Timers { return e.timers }

// Stats returns the counters.
func (e *Etcd) Stats() EtcdStats {
	return EtcdStats{Terms: e.terms.Load(), StaleCampaigns: e.stale.Load()}
}

// Leader returns the name and token of the current holder; name is empty
// when nobody holds the lease.
func (e *Etcd) Leader(ctx context.Context) (string, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, e.timers.RequestTimeout)
	defer cancel()
	resp, err := e.client.Get(ctx, e.prefix, append(clientv3.WithFirstCreate(), clientv3.WithPrefix())...)
	if err != nil {
		return "", 0, fmt.Errorf("failover: etcd leader: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0, nil
	}
	return string(resp.Kvs[0].Value), uint64(resp.Kvs[0].CreateRevision), nil
}

// Acquire campaigns until this node wins the election with a live session,
// or ctx ends.
func (e *Etcd) Acquire(ctx context.Context) (Term, error) {
	for {
		t, err := e.campaign(ctx)
		if err == nil {
			e.terms.Add(1)
			e.log.Info("failover: lease acquired", "node", e.name, "token", t.token, "valid_for", time.Until(t.validUntil()).Round(time.Millisecond))
			return t, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !errors.Is(err, ErrLeaseLost) {
			return nil, err
		}
		e.stale.Add(1)
		e.log.Warn("failover: campaign returned without a live session; campaigning again", "node", e.name, "err", err)
	}
}

func (e *Etcd) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.timers.RequestTimeout)
}

func (e *Etcd) campaign(ctx context.Context) (*etcdTerm, error) {
	rctx, cancel := e.request(ctx)
	g, err := e.client.Grant(rctx, int64(e.timers.TTL/time.Second))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("failover: etcd grant: %w", err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	sess, err := concurrency.NewSession(e.client, concurrency.WithLease(g.ID), concurrency.WithContext(sctx))
	if err != nil {
		scancel()
		e.revoke(g.ID)
		return nil, fmt.Errorf("failover: etcd session: %w", err)
	}
	t := &etcdTerm{e: e, sess: sess, cancel: scancel, lease: g.ID, lost: make(chan struct{})}
	t.el = concurrency.NewElection(sess, e.prefix)
	if err := t.el.Campaign(ctx, e.name); err != nil {
		t.close(context.Background())
		return nil, fmt.Errorf("failover: etcd campaign: %w", err)
	}
	if e.after != nil {
		e.after(g.ID)
	}
	t.token = uint64(t.el.Rev())
	t.key = t.el.Key()
	until, err := t.renew(ctx)
	if err != nil {
		t.close(context.Background())
		return nil, err
	}
	t.setValid(until)
	return t, nil
}

func (e *Etcd) revoke(id clientv3.LeaseID) {
	ctx, cancel := e.request(context.Background())
	defer cancel()
	e.client.Revoke(ctx, id)
}

type etcdTerm struct {
	e      *Etcd
	sess   *concurrency.Session
	el     *concurrency.Election
	cancel context.CancelFunc
	lease  clientv3.LeaseID
	token  uint64
	key    string

	mu     sync.Mutex
	until  time.Time
	timer  *time.Timer
	lost   chan struct{}
	closed bool
}

func (t *etcdTerm) Token() uint64         { return t.token }
func (t *etcdTerm) Lost() <-chan struct{} { return t.lost }

func (t *etcdTerm) validUntil() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.until
}

// renew renews the lease once and checks that the term's key is still the
// leader's. It returns the new validity.
func (t *etcdTerm) renew(ctx context.Context) (time.Time, error) {
	start := time.Now()
	rctx, cancel := t.e.request(ctx)
	defer cancel()
	ka, err := t.e.client.KeepAliveOnce(rctx, t.lease)
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return time.Time{}, fmt.Errorf("%w: etcd lease %x expired", ErrLeaseLost, t.lease)
		}
		return time.Time{}, fmt.Errorf("failover: etcd renew: %w", err)
	}
	if ka.TTL <= 0 {
		return time.Time{}, fmt.Errorf("%w: etcd lease %x expired", ErrLeaseLost, t.lease)
	}
	resp, err := t.e.client.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(t.key), "=", int64(t.token)),
			clientv3.Compare(clientv3.LeaseValue(t.key), "=", t.lease)).
		Then(clientv3.OpGet(t.e.prefix, append(clientv3.WithFirstCreate(), clientv3.WithPrefix())...)).
		Commit()
	if err != nil {
		return time.Time{}, fmt.Errorf("failover: etcd ownership check: %w", err)
	}
	if !resp.Succeeded {
		return time.Time{}, fmt.Errorf("%w: election key %s is gone", ErrLeaseLost, t.key)
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 || string(kvs[0].Key) != t.key {
		return time.Time{}, fmt.Errorf("%w: election key %s is not the oldest", ErrLeaseLost, t.key)
	}
	ttl := min(t.e.timers.TTL, time.Duration(ka.TTL)*time.Second)
	return start.Add(ttl - t.e.timers.Margin), nil
}

func (t *etcdTerm) setValid(until time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || !until.After(t.until) {
		return
	}
	t.until = until
	d := time.Until(until)
	if t.timer == nil {
		t.timer = time.AfterFunc(d, t.expire)
	} else {
		t.timer.Reset(d)
	}
}

// expire runs when the validity may have run out.
func (t *etcdTerm) expire() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	if d := time.Until(t.until); d > 0 {
		t.timer.Reset(d)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	t.e.log.Warn("failover: lease validity ran out without renewal", "node", t.e.name, "token", t.token)
	t.markLost()
}

// markLost closes Lost and stops the session's keep-alive, so that etcd
// expires the lease if it has not yet.
func (t *etcdTerm) markLost() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	t.closed = true
	if t.timer != nil {
		t.timer.Stop()
	}
	close(t.lost)
	t.cancel()
}

func (t *etcdTerm) KeepAlive(ctx context.Context) (time.Time, error) {
	select {
	case <-t.lost:
		return time.Time{}, fmt.Errorf("%w: term %d is over", ErrLeaseLost, t.token)
	default:
	}
	until, err := t.renew(ctx)
	if err != nil {
		if errors.Is(err, ErrLeaseLost) {
			t.e.log.Warn("failover: lease lost", "node", t.e.name, "token", t.token, "err", err)
			t.markLost()
		}
		return time.Time{}, err
	}
	t.setValid(until)
	return until, nil
}

func (t *etcdTerm) Release(ctx context.Context) error {
	t.markLost()
	return t.close(ctx)
}

// close deletes the election key and revokes the lease.
func (t *etcdTerm) close(ctx context.Context) error {
	t.cancel()
	rctx, cancel := t.e.request(ctx)
	defer cancel()
	_, err := t.e.client.Revoke(rctx, t.lease)
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("failover: etcd revoke: %w", err)
	}
	return nil
}
