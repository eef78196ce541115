package failover

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
)

// TestSwitchoverThroughRemoteMember runs a switchover and a failback whose
// target is reached over HTTP, as the example mail server does between
// machines, and one whose remote step fails and is rolled back.
func TestSwitchoverThroughRemoteMember(t *testing.T) {
	p, a, b := newFakePair(t)
	srv := httptest.NewServer(MemberHandler(b, quietLog()))
	defer srv.Close()
	rb := NewRemoteMember("b", srv.URL, nil)
	assert.Equal(t, "b", rb.Name())

	rep, err := Switchover(context.Background(), a, rb, &SwitchoverOptions{Logger: quietLog()})
	require.NoError(t, err)
	assert.Equal(t, resilmail.Epoch(4), rep.Epoch)
	assert.Equal(t, []string{"b"}, p.writable())
	p.mu.Lock()
	assert.Equal(t, uint64(100), b.seq, "b caught up through /wait before it was promoted")
	p.mu.Unlock()

	// Failback: the remote node is the one drained, demoted and made to
	// follow.
	rep, err = Switchover(context.Background(), rb, a, &SwitchoverOptions{Logger: quietLog()})
	require.NoError(t, err)
	assert.Equal(t, resilmail.Epoch(5), rep.Epoch)
	assert.Equal(t, []string{"a"}, p.writable())
	p.mu.Lock()
	assert.Equal(t, "a", b.follows)
	// A remote step's error comes back with its text, and rolls back.
	b.fail["promote"] = errors.New("disk full")
	p.mu.Unlock()
	rep, err = Switchover(context.Background(), a, rb, &SwitchoverOptions{Logger: quietLog()})
	require.ErrorIs(t, err, ErrSwitchover)
	require.ErrorContains(t, err, "disk full")
	assert.True(t, rep.RolledBack)
	assert.Equal(t, []string{"a"}, p.writable())

	// Bad requests are refused, not acted on.
	_, err = rb.Drain(context.Background())
	require.NoError(t, err)
	require.NoError(t, rb.call(context.Background(), "POST", "/resume", nil, nil, nil))
	require.ErrorContains(t, rb.call(context.Background(), "POST", "/resume", nil, nil, nil), "not drained")
	require.ErrorContains(t, rb.call(context.Background(), "POST", "/promote", nil, nil, nil), "epoch")
	require.ErrorContains(t, rb.call(context.Background(), "POST", "/follow", nil, nil, nil), "primary")
}
