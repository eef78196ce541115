package replicate_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
)

var testSecret = []byte("correct horse battery staple")

func serveInventory(t testing.TB, inv replicate.Inventory, opts *replicate.InventoryHandlerOptions) *httptest.Server {
	t.Helper()
	if opts == nil {
		opts = &replicate.InventoryHandlerOptions{Secret: testSecret, Logger: quietLogger()}
	}
	h, err := replicate.InventoryHandler(inv, opts)
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func remote(t testing.TB, url string, secret []byte) *replicate.RemoteInventory {
	t.Helper()
	ri, err := replicate.NewRemoteInventory(url, &replicate.RemoteInventoryOptions{Secret: secret})
	require.NoError(t, err)
	return ri
}

func TestRemoteInventoryEqualsLocal(t *testing.T) {
	ctx := context.Background()
	primary, replica, _, _ := divergent(t)
	srv := serveInventory(t, primary, nil)
	ri := remote(t, srv.URL+"/", testSecret)
	opts := &replicate.CompareOptions{Logger: quietLogger(), LeafSize: 2}

	local, err := replicate.Compare(ctx, primary, replica, opts)
	require.NoError(t, err)
	over, err := replicate.Compare(ctx, ri, replica, opts)
	require.NoError(t, err)
	assert.Equal(t, local.String(), over.String())
	assert.Equal(t, local.MailboxDiffs, over.MailboxDiffs)
	assert.Equal(t, local.UserDiffs, over.UserDiffs)

	res, err := replicate.Repair(ctx, over, ri, replicate.BodiesFrom(primary), replica, &replicate.RepairOptions{Logger: quietLogger()})
	require.NoError(t, err)
	require.NotEmpty(t, res.Held)
	over, err = replicate.Compare(ctx, ri, replica, opts)
	require.NoError(t, err)
	_, err = replicate.Repair(ctx, over, ri, replicate.BodiesFrom(primary), replica, &replicate.RepairOptions{Logger: quietLogger(), Confirmed: res.Held})
	require.NoError(t, err)
	requireSame(t, primary, replica)
	again, err := replicate.Compare(ctx, ri, replica, opts)
	require.NoError(t, err)
	assert.True(t, again.Equal(), again.String())

	_, err = ri.Mailboxes(ctx, "nobody")
	assert.ErrorIs(t, err, replicate.ErrNotFound)
	_, _, err = ri.DigestRange(ctx, "alice", resilmail.MailboxID{9}, 1, 5)
	assert.ErrorIs(t, err, replicate.ErrNotFound)
}

func TestInventoryHandlerAuth(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir())
	require.NoError(t, s.CreateUser(ctx, "alice"))
	srv := serveInventory(t, s, nil)

	users, err := remote(t, srv.URL, testSecret).Users(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"alice"}, users)
	for name, secret := range map[string][]byte{"wrong secret": []byte("guess"), "no token": nil} {
		t.Run(name, func(t *testing.T) {
			_, err := remote(t, srv.URL, secret).Users(ctx)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "401")
			assert.NotErrorIs(t, err, replicate.ErrNotFound)
		})
	}
	t.Run("raw secret is not the token", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/users", nil)
		req.Header.Set("Authorization", "Bearer "+string(testSecret))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	})
	t.Run("bad parameters", func(t *testing.T) {
		for _, q := range []string{"/mailboxes?user=", "/digest?user=alice&mailbox=zz&lo=1&hi=2",
			"/messages?user=alice&mailbox=00000000000000000000000000000001&lo=1&hi=2&limit=0",
			"/digest?user=alice&mailbox=00000000000000000000000000000001&lo=-1&hi=2",
			"/mailboxes?user=a%00b"} {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+q, nil)
			req.Header.Set("Authorization", "Bearer "+replicate.InventoryToken(testSecret))
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusBadRequest, resp.StatusCode, q)
		}
	})
	t.Run("authenticate hook", func(t *testing.T) {
		srv := serveInventory(t, s, &replicate.InventoryHandlerOptions{Logger: quietLogger(), Authenticate: func(r *http.Request) error {
			if r.Header.Get("X-Test-Peer") != "replica" {
				return errors.New("unknown peer")
			}
			return nil
		}})
		_, err := remote(t, srv.URL, nil).Users(ctx)
		require.Error(t, err)
		client := &http.Client{Transport: headerTransport{"X-Test-Peer", "replica"}}
		ri, err := replicate.NewRemoteInventory(srv.URL, &replicate.RemoteInventoryOptions{Client: client})
		require.NoError(t, err)
		users, err := ri.Users(ctx)
		require.NoError(t, err)
		assert.Equal(t, []string{"alice"}, users)
	})
	_, err = replicate.InventoryHandler(s, &replicate.InventoryHandlerOptions{})
	require.Error(t, err, "a handler without authentication is refused")
	_, err = replicate.NewRemoteInventory("ftp://x", nil)
	require.Error(t, err)
}

// TestRemoteInventoryMalformed serves broken answers: the client returns
// errors wrapping ErrBadInventory, never the data, and never panics.
func TestRemoteInventoryMalformed(t *testing.T) {
	ctx := context.Background()
	id := resilmail.MailboxID{1}
	for _, tc := range []struct {
		name, body string
		call       func(ri *replicate.RemoteInventory) error
	}{
		{"not JSON", "<html>", func(ri *replicate.RemoteInventory) error { _, err := ri.Users(ctx); return err }},
		{"users unsorted", `{"users":["b","a"]}`, func(ri *replicate.RemoteInventory) error { _, err := ri.Users(ctx); return err }},
		{"user with NUL", `{"users":["a\u0000"]}`, func(ri *replicate.RemoteInventory) error { _, err := ri.Users(ctx); return err }},
		{"mailbox zero id", `{"mailboxes":[{"id":"00000000000000000000000000000000","name":"INBOX","uidvalidity":1,"uidnext":1}]}`,
			func(ri *replicate.RemoteInventory) error { _, err := ri.Mailboxes(ctx, "a"); return err }},
		{"mailbox more messages than UIDs", `{"mailboxes":[{"id":"00000000000000000000000000000001","name":"INBOX","uidvalidity":1,"uidnext":2,"messages":5}]}`,
			func(ri *replicate.RemoteInventory) error { _, err := ri.Mailboxes(ctx, "a"); return err }},
		{"bad digest", `{"digest":"xyz","count":1}`,
			func(ri *replicate.RemoteInventory) error { _, _, err := ri.DigestRange(ctx, "a", id, 1, 9); return err }},
		{"negative count", `{"digest":"00000000000000000000000000000000","count":-1}`,
			func(ri *replicate.RemoteInventory) error { _, _, err := ri.DigestRange(ctx, "a", id, 1, 9); return err }},
		{"UID out of range", `{"messages":[{"uid":50,"digest":"` + strings.Repeat("ab", 32) + `"}]}`,
			func(ri *replicate.RemoteInventory) error {
				_, err := ri.MessageRange(ctx, "a", id, 1, 9, 10)
				return err
			}},
		{"UIDs descending", `{"messages":[{"uid":3,"digest":"` + strings.Repeat("ab", 32) + `"},{"uid":2,"digest":"` + strings.Repeat("ab", 32) + `"}]}`,
			func(ri *replicate.RemoteInventory) error {
				_, err := ri.MessageRange(ctx, "a", id, 1, 9, 10)
				return err
			}},
		{"too many messages", `{"messages":[{"uid":1,"digest":"` + strings.Repeat("ab", 32) + `"},{"uid":2,"digest":"` + strings.Repeat("ab", 32) + `"}]}`,
			func(ri *replicate.RemoteInventory) error {
				_, err := ri.MessageRange(ctx, "a", id, 1, 9, 1)
				return err
			}},
		{"too long", `{"users":["` + strings.Repeat("a", 2000) + `"]}`, func(ri *replicate.RemoteInventory) error { _, err := ri.Users(ctx); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			ri, err := replicate.NewRemoteInventory(srv.URL, &replicate.RemoteInventoryOptions{MaxResponseBytes: 1000})
			require.NoError(t, err)
			err = tc.call(ri)
			require.Error(t, err)
			assert.ErrorIs(t, err, replicate.ErrBadInventory)
		})
	}
}

// headerTransport adds a header to every request, standing in for a
// client certificate.
type headerTransport struct{ key, value string }

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(h.key, h.value)
	return http.DefaultTransport.RoundTrip(r)
}
