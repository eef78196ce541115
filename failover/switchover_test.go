package failover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
)

// fakePair is two in-memory nodes; it fails the test whenever both accept
// writes.
type fakePair struct {
	t     *testing.T
	mu    sync.Mutex
	nodes map[string]*fakeNode
}

type fakeNode struct {
	p       *fakePair
	name    string
	role    Role
	epoch   resilmail.Epoch
	seq     uint64 // primary: own journal; standby: applied upstream seq
	drained bool
	follows string
	history string           // the history its Position names (empty: none)
	fail    map[string]error // method name -> error
	block   map[string]bool  // method name -> wait for ctx
}

func newFakePair(t *testing.T) (*fakePair, *fakeNode, *fakeNode) {
	p := &fakePair{t: t, nodes: map[string]*fakeNode{}}
	a := &fakeNode{p: p, name: "a", role: RolePrimary, epoch: 3, seq: 100, fail: map[string]error{}, block: map[string]bool{}}
	b := &fakeNode{p: p, name: "b", role: RoleStandby, epoch: 3, seq: 90, follows: "a", fail: map[string]error{}, block: map[string]bool{}}
	p.nodes["a"], p.nodes["b"] = a, b
	return p, a, b
}

func (p *fakePair) checkLocked() {
	n := 0
	for _, x := range p.nodes {
		if x.role == RolePrimary && !x.drained {
			n++
		}
	}
	if n > 1 {
		p.t.Errorf("two nodes accept writes")
	}
}

func (p *fakePair) writable() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var w []string
	for _, x := range []string{"a", "b"} {
		if n := p.nodes[x]; n.role == RolePrimary && !n.drained {
			w = append(w, x)
		}
	}
	return w
}

func (n *fakeNode) enter(ctx context.Context, m string) error {
	n.p.mu.Lock()
	err, block := n.fail[m], n.block[m]
	n.p.mu.Unlock()
	if block {
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}

func (n *fakeNode) Name() string { return n.name }

func (n *fakeNode) Drain(ctx context.Context) (func(context.Context) error, error) {
	if err := n.enter(ctx, "drain"); err != nil {
		return nil, err
	}
	n.p.mu.Lock()
	defer n.p.mu.Unlock()
	n.drained = true
	return func(ctx context.Context) error {
		if err := n.enter(ctx, "resume"); err != nil {
			return err
		}
		n.p.mu.Lock()
		defer n.p.mu.Unlock()
		n.drained = false
		n.p.checkLocked()
		return nil
	}, nil
}

func (n *fakeNode) Position(ctx context.Context) (Position, error) {
	if err := n.enter(ctx, "position"); err != nil {
		return Position{}, err
	}
	n.p.mu.Lock()
	defer n.p.mu.Unlock()
	return Position{History: n.history, Epoch: n.epoch, Seq: n.seq}, nil
}

func (n *fakeNode) WaitCaughtUp(ctx context.Context, pos Position) error {
	if err := n.enter(ctx, "catchup"); err != nil {
		return err
	}
	n.p.mu.Lock()
	defer n.p.mu.Unlock()
	n.seq = max(n.seq, pos.Seq)
	return nil
}

func (n *fakeNode) Promote(ctx context.Context, e resilmail.Epoch) error {
	if err := n.enter(ctx, "promote"); err != nil {
		return err
	}
	n.p.mu.Lock()
	defer n.p.mu.Unlock()
	if e < n.epoch || (e == n.epoch && n.role != RolePrimary) {
		return fmt.Errorf("epoch %d not above %d", e, n.epoch)
	}
	n.role, n.epoch, n.drained, n.follows = RolePrimary, e, false, ""
	n.p.checkLocked()
	return nil
}

func (n *fakeNode) Demote(ctx context.Context, e resilmail.Epoch) error {
	if err := n.enter(ctx, "demote"); err != nil {
		return err
	}
	n.p.mu.Lock()
	defer n.p.mu.Unlock()
	n.role, n.epoch = RoleStandby, max(n.epoch, e)
	return nil
}

func (n *fakeNode) Follow(ctx context.Context, primary string) error {
	if err := n.enter(ctx, "follow"); err != nil {
		return err
	}
	n.p.mu.Lock()
	defer n.p.mu.Unlock()
	n.follows, n.drained = primary, false
	return nil
}

func steps(r Report) []string {
	var s []string
	for _, st := range r.Steps {
		s = append(s, st.Name)
	}
	return s
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestSwitchoverAndFailback(t *testing.T) {
	p, a, b := newFakePair(t)
	var seen []string
	opts := &SwitchoverOptions{Logger: quietLog(), OnStep: func(s Step) { seen = append(seen, s.Name) }}
	rep, err := Switchover(context.Background(), a, b, opts)
	require.NoError(t, err)
	assert.Equal(t, []string{StepCheck, StepDrain, StepPosition, StepCatchUp, StepEpoch, StepDemote, StepPromote, StepFollow}, steps(rep))
	assert.Equal(t, steps(rep), seen, "every step is observable as it happens")
	assert.Equal(t, resilmail.Epoch(4), rep.Epoch)
	assert.Equal(t, uint64(10), rep.Lag)
	assert.Equal(t, []string{"b"}, p.writable())
	assert.Equal(t, "b", a.follows)
	assert.Equal(t, uint64(100), b.seq, "b caught up before it was promoted")
	assert.Positive(t, rep.WriteWindow)

	// Failback, refused while a lags beyond the bound.
	b.seq = 5000
	_, err = Switchover(context.Background(), b, a, &SwitchoverOptions{Logger: quietLog(), MaxLag: 100})
	require.ErrorIs(t, err, ErrNotEligible)
	assert.Equal(t, []string{"b"}, p.writable(), "a refused failback changes nothing")
	a.seq = 4950
	rep, err = Switchover(context.Background(), b, a, &SwitchoverOptions{Logger: quietLog(), MaxLag: 100})
	require.NoError(t, err)
	assert.Equal(t, resilmail.Epoch(5), rep.Epoch)
	assert.Equal(t, []string{"a"}, p.writable())
}

// TestSwitchoverWaitsForTheTargetToJoinTheHistory: a target that does not
// follow the primary's history (an old primary still aligning with the
// new one, which needs the primary to take a write) is waited for before
// anything is drained, however small its lag, and refused if it does not
// join it within the step timeout; once it has, the switchover runs.
func TestSwitchoverWaitsForTheTargetToJoinTheHistory(t *testing.T) {
	p, a, b := newFakePair(t)
	a.history, b.history = "h2", "h1"
	rep, err := Switchover(context.Background(), a, b, &SwitchoverOptions{Logger: quietLog(), StepTimeout: 50 * time.Millisecond})
	require.ErrorIs(t, err, ErrNotEligible)
	assert.Equal(t, []string{StepCheck}, steps(rep), "nothing drained")
	assert.Equal(t, []string{"a"}, p.writable())

	joined := time.AfterFunc(30*time.Millisecond, func() {
		p.mu.Lock()
		b.history = "h2"
		p.mu.Unlock()
	})
	defer joined.Stop()
	rep, err = Switchover(context.Background(), a, b, &SwitchoverOptions{Logger: quietLog()})
	require.NoError(t, err)
	assert.Equal(t, []string{"b"}, p.writable())
	assert.GreaterOrEqual(t, rep.Steps[0].Took, 30*time.Millisecond, "the check waited for b to join a's history")
}

func TestSwitchoverRollsBack(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name     string
		node     string // which node fails
		method   string
		block    bool
		rollback []string
		epoch    resilmail.Epoch // the old primary's epoch after rollback
	}{
		{"drain fails", "a", "drain", false, nil, 3},
		{"catch-up times out", "b", "catchup", true, []string{"rollback:resume"}, 3},
		{"catch-up fails", "b", "catchup", false, []string{"rollback:resume"}, 3},
		{"demote fails", "a", "demote", false, []string{"rollback:demote", "rollback:promote", "rollback:resume"}, 6},
		{"promote fails", "b", "promote", false, []string{"rollback:demote", "rollback:promote", "rollback:resume"}, 6},
		{"promote times out", "b", "promote", true, []string{"rollback:demote", "rollback:promote", "rollback:resume"}, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, a, b := newFakePair(t)
			n := map[string]*fakeNode{"a": a, "b": b}[tc.node]
			if tc.block {
				n.block[tc.method] = true
			} else {
				n.fail[tc.method] = boom
			}
			rep, err := Switchover(context.Background(), a, b, &SwitchoverOptions{Logger: quietLog(), StepTimeout: 100 * time.Millisecond, CatchUpTimeout: 100 * time.Millisecond})
			require.ErrorIs(t, err, ErrSwitchover)
			if !tc.block {
				require.ErrorIs(t, err, boom)
			}
			assert.True(t, rep.RolledBack)
			var rb []string
			for _, s := range steps(rep) {
				if len(s) > len(StepRollback) && s[:len(StepRollback)] == StepRollback {
					rb = append(rb, s)
				}
			}
			assert.Equal(t, tc.rollback, rb)
			// The old primary serves again; the target is not primary.
			n.block, n.fail = map[string]bool{}, map[string]error{}
			assert.Equal(t, []string{"a"}, p.writable())
			assert.Equal(t, tc.epoch, a.epoch)
			assert.Greater(t, a.epoch+1, b.epoch, "the target is fenced below the restored primary")
		})
	}
}

func TestSwitchoverFollowFailureIsNotRolledBack(t *testing.T) {
	p, a, b := newFakePair(t)
	a.fail["follow"] = errors.New("unreachable")
	rep, err := Switchover(context.Background(), a, b, &SwitchoverOptions{Logger: quietLog()})
	require.Error(t, err)
	assert.NotErrorIs(t, err, ErrSwitchover)
	assert.False(t, rep.RolledBack)
	assert.Equal(t, []string{"b"}, p.writable())
}
