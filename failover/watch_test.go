package failover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
)

type fakeStatus struct {
	mu   sync.Mutex
	body string
	srv  *httptest.Server
}

func newFakeStatus(t *testing.T, body string) *fakeStatus {
	f := &fakeStatus{body: body}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.body == "" {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, f.body)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeStatus) set(body string) { f.mu.Lock(); f.body = body; f.mu.Unlock() }

func TestWatcherFollowsThePrimary(t *testing.T) {
	a := newFakeStatus(t, `{"role":"primary","epoch":3}`)
	b := newFakeStatus(t, `{"role":"secondary","epoch":3}`)
	var changes []string
	w := NewWatcher([]WatchedNode{{"a", a.srv.URL}, {"b", b.srv.URL}}, &WatcherOptions{Logger: quietLog(), OnChange: func(n string, e resilmail.Epoch) {
		changes = append(changes, fmt.Sprintf("%s@%d", n, e))
	}})
	var got []string
	d := FollowDeliverer(func() (string, bool) { n, _, ok := w.Active(); return n, ok }, map[string]resilmail.Deliverer{
		"a": resilmail.DelivererFunc(func(context.Context, resilmail.Envelope, io.Reader) error { got = append(got, "a"); return nil }),
		"b": resilmail.DelivererFunc(func(context.Context, resilmail.Envelope, io.Reader) error { got = append(got, "b"); return nil }),
	})
	send := func() error { return d.Deliver(context.Background(), resilmail.Envelope{}, strings.NewReader("x")) }

	w.PollOnce(context.Background())
	require.NoError(t, send())

	// The primary goes away: nobody is active, deliveries wait (temporary).
	a.set("")
	w.PollOnce(context.Background())
	err := send()
	var de *resilmail.DeliveryError
	require.True(t, errors.As(err, &de))
	assert.False(t, de.Permanent, "no active node is a temporary failure: the mail stays queued")

	// b is promoted; a comes back still saying primary at the old epoch.
	b.set(`{"role":"primary","epoch":4}`)
	a.set(`{"role":"primary","epoch":3}`)
	w.PollOnce(context.Background())
	require.NoError(t, send())
	assert.Equal(t, []string{"a", "b"}, got, "the highest epoch wins")
	assert.Equal(t, []string{"a@3", "@0", "b@4"}, changes)
}
