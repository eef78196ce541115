package quarantine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
)

func TestIngestAuth(t *testing.T) {
	st := shStore(t)
	batch := shBatch(t, Item{Entry: shEntry("a1")})
	tests := []struct {
		name   string
		opts   IngestOptions
		header string
		want   int
	}{
		{"right token", IngestOptions{Secret: shSecret}, "Bearer " + ShipToken(shSecret), http.StatusOK},
		{"scheme is case-insensitive", IngestOptions{Secret: shSecret}, "bearer " + ShipToken(shSecret), http.StatusOK},
		{"no token", IngestOptions{Secret: shSecret}, "", http.StatusUnauthorized},
		{"wrong token", IngestOptions{Secret: shSecret}, "Bearer " + ShipToken([]byte("other")), http.StatusUnauthorized},
		{"the secret itself is no token", IngestOptions{Secret: shSecret}, "Bearer " + string(shSecret), http.StatusUnauthorized},
		{"basic auth", IngestOptions{Secret: shSecret}, "Basic " + ShipToken(shSecret), http.StatusUnauthorized},
		{"nothing configured refuses all", IngestOptions{}, "Bearer " + ShipToken(nil), http.StatusUnauthorized},
		{"custom accepts", IngestOptions{Authenticate: func(r *http.Request) error { return nil }}, "", http.StatusOK},
		{"custom refuses", IngestOptions{Secret: shSecret, Authenticate: func(r *http.Request) error { return errors.New("no certificate") }},
			"Bearer " + ShipToken(shSecret), http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Logger = shLogger()
			h := st.IngestHandler(&tt.opts)
			req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(batch))
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			assert.Equal(t, tt.want, w.Code, w.Body.String())
			if tt.want == http.StatusUnauthorized {
				assert.NotContains(t, w.Body.String(), ShipToken(shSecret))
			}
		})
	}

	h := st.IngestHandler(&IngestOptions{Secret: shSecret, Logger: shLogger()})
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	assert.Equal(t, http.StatusMethodNotAllowed, w.Code)
}

func TestIngestResults(t *testing.T) {
	c := shStartCentre(t, &IngestOptions{MaxBodySize: 10 << 10}, nil)
	ctx := context.Background()
	// "conflict" is already stored with another body.
	require.NoError(t, c.store.Put(ctx, shEntry("conflict"), strings.NewReader("the first body")))

	forged := shEntry("forged")
	forged.Digest, forged.Size = resilmail.DigestOf([]byte("the real one")), int64(len("tampered one"))
	fmeta := mustJSON(t, forged)
	good := Item{Entry: shEntry("good"), Body: shBody("good", 2000)}
	meta := Item{Entry: shEntry("metaonly")}
	big := Item{Entry: shEntry("big"), Body: shBody("big", 20<<10)}
	conflict := Item{Entry: shEntry("conflict"), Body: []byte("another body")}

	var buf bytes.Buffer
	buf.Write(shHeader(1))
	for _, it := range []Item{good, meta} {
		b := shBatch(t, it)
		buf.Write(b[len(batchMagic)+2 : len(b)-5])
	}
	buf.Write(shFrame(fmeta, uint64(len("tampered one")), []byte("tampered one")))
	for _, it := range []Item{big, conflict} {
		b := shBatch(t, it)
		buf.Write(b[len(batchMagic)+2 : len(b)-5])
	}
	buf.Write(shEnd(5))

	code, resp := shPost(t, c.srv.URL, buf.Bytes())
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, IngestVersion, resp.Version)
	require.Len(t, resp.Results, 5)
	want := []struct {
		id string
		st IngestStatus
	}{{"good", IngestStored}, {"metaonly", IngestStored}, {"forged", IngestInvalid}, {"big", IngestInvalid}, {"conflict", IngestConflict}}
	for i, w := range want {
		assert.Equal(t, w.id, resp.Results[i].ID, "item %d", i)
		assert.Equal(t, w.st, resp.Results[i].Status, "item %d: %s", i, resp.Results[i].Error)
		if w.st != IngestStored {
			assert.NotEmpty(t, resp.Results[i].Error)
		}
	}
	body, err := c.store.Body(ctx, "admin", "good")
	require.NoError(t, err)
	assert.Equal(t, good.Body, body)
	_, err = c.store.Get(ctx, "admin", "forged")
	assert.ErrorIs(t, err, ErrNotFound)
	body, err = c.store.Body(ctx, "admin", "conflict")
	require.NoError(t, err)
	assert.Equal(t, "the first body", string(body), "a conflicting entry changes nothing")
}

func mustJSON(t *testing.T, e Entry) []byte {
	t.Helper()
	b, err := json.Marshal(e)
	require.NoError(t, err)
	return b
}

func TestIngestIdempotent(t *testing.T) {
	c := shStartCentre(t, nil, nil)
	var items []Item
	for _, id := range []string{"i1", "i2", "i3"} {
		items = append(items, Item{Entry: shEntry(id), Body: shBody(id, 1000)})
	}
	items = append(items, Item{Entry: shEntry("i4")})
	batch := shBatch(t, items...)
	for range 2 {
		code, resp := shPost(t, c.srv.URL, batch)
		require.Equal(t, http.StatusOK, code)
		for _, r := range resp.Results {
			assert.Equal(t, IngestStored, r.Status, "a repeat is acknowledged as stored")
		}
	}
	st := c.store.Stats()
	assert.Equal(t, uint64(4), st.Stored, "stored once")
	assert.Equal(t, uint64(4), st.Duplicates, "the second batch stored nothing")
	assert.Equal(t, int64(4), st.Entries)
}

func TestIngestBadBatches(t *testing.T) {
	c := shStartCentre(t, &IngestOptions{MaxBatchBytes: 64 << 10, MaxItems: 4}, nil)
	good := shBatch(t, Item{Entry: shEntry("b1"), Body: shBody("b1", 1000)}, Item{Entry: shEntry("b2")})
	var five []Item
	for _, id := range []string{"f1", "f2", "f3", "f4", "f5"} {
		five = append(five, Item{Entry: shEntry(id)})
	}
	tests := []struct {
		name string
		data []byte
		want int
	}{
		{"empty", nil, http.StatusBadRequest},
		{"garbage", []byte("hello"), http.StatusBadRequest},
		{"truncated", good[:len(good)-3], http.StatusBadRequest},
		{"unknown version", append(shHeader(9), shEnd(0)...), http.StatusBadRequest},
		{"over MaxBatchBytes", shBatch(t, Item{Entry: shEntry("o1"), Body: shBody("o1", 70<<10)}), http.StatusRequestEntityTooLarge},
		{"over MaxItems", shBatch(t, five...), http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _ := shPost(t, c.srv.URL, tt.data)
			assert.Equal(t, tt.want, code)
		})
	}
	assert.Zero(t, c.store.Stats().Entries, "nothing of a bad batch is stored")
	code, _ := shPost(t, c.srv.URL, good)
	assert.Equal(t, http.StatusOK, code, "the handler goes on")
}

// shFailingPutter fails items whose id starts with "fail" with a storage
// error, and passes the others to a store.
type shFailingPutter struct{ p batchPutter }

func (f shFailingPutter) PutBatch(ctx context.Context, items []Item) []error {
	errs := make([]error, len(items))
	var pass []Item
	var idx []int
	for i, it := range items {
		if strings.HasPrefix(it.Entry.ID, "fail") {
			errs[i] = errors.New("disk full")
			continue
		}
		pass = append(pass, it)
		idx = append(idx, i)
	}
	if len(pass) > 0 {
		for j, err := range f.p.PutBatch(ctx, pass) {
			errs[idx[j]] = err
		}
	}
	return errs
}

func TestIngestStorageFailure(t *testing.T) {
	st := shStore(t)
	h := newIngestHandler(shFailingPutter{st}, st.opts.MaxSize, &IngestOptions{Secret: shSecret, Logger: shLogger()})
	srv := httptest.NewServer(h)
	defer srv.Close()

	code, resp := shPost(t, srv.URL, shBatch(t, Item{Entry: shEntry("fail1")}, Item{Entry: shEntry("fail2")}))
	assert.Equal(t, http.StatusServiceUnavailable, code, "nothing stored: the edge must retry")
	require.Len(t, resp.Results, 2)
	assert.Equal(t, IngestRetry, resp.Results[0].Status)

	code, resp = shPost(t, srv.URL, shBatch(t, Item{Entry: shEntry("fail3")}, Item{Entry: shEntry("ok1")}))
	assert.Equal(t, http.StatusOK, code)
	require.Len(t, resp.Results, 2)
	assert.Equal(t, IngestRetry, resp.Results[0].Status)
	assert.Equal(t, "disk full", resp.Results[0].Error)
	assert.Equal(t, IngestStored, resp.Results[1].Status)

	// A closed store is a temporary failure too.
	require.NoError(t, st.Close())
	code, resp = shPost(t, srv.URL, shBatch(t, Item{Entry: shEntry("ok2")}))
	assert.Equal(t, http.StatusServiceUnavailable, code)
	require.Len(t, resp.Results, 1)
	assert.Equal(t, IngestRetry, resp.Results[0].Status)
}

func TestIngestRefusesNonHeld(t *testing.T) {
	c := shStartCentre(t, nil, nil)
	released := shEntry("rel")
	released.Recipients[0].Status, released.Recipients[0].ReleaseID = Released, "rel.1"
	code, resp := shPost(t, c.srv.URL, shBatch(t, Item{Entry: released}, Item{Entry: shEntry("held")}))
	require.Equal(t, http.StatusOK, code)
	require.Len(t, resp.Results, 2)
	assert.Equal(t, IngestInvalid, resp.Results[0].Status, "an edge cannot ship a released entry")
	assert.Equal(t, IngestStored, resp.Results[1].Status)
	_, err := c.store.Get(context.Background(), "admin", "rel")
	assert.ErrorIs(t, err, ErrNotFound)
}

func TestIngestBindsEntriesToTheEdgesName(t *testing.T) {
	// With Identify, the node recorded on an entry is the one whose
	// credential shipped it: an edge cannot file entries as another node.
	st := shStore(t)
	h := st.IngestHandler(&IngestOptions{Logger: shLogger(), Identify: func(r *http.Request) (string, error) {
		user, pass, ok := r.BasicAuth()
		if !ok || pass != "mx2's own password" {
			return "", errors.New("wrong credential")
		}
		return user, nil
	}})
	own, unnamed, other := shEntry("own"), shEntry("unnamed"), shEntry("other")
	own.Node, unnamed.Node, other.Node = "mx2", "", "mx1"
	req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(shBatch(t, Item{Entry: own}, Item{Entry: unnamed}, Item{Entry: other})))
	req.SetBasicAuth("mx2", "mx2's own password")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	var resp IngestResponse
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &resp))
	require.Len(t, resp.Results, 3)
	assert.Equal(t, IngestStored, resp.Results[0].Status, resp.Results[0].Error)
	assert.Equal(t, IngestStored, resp.Results[1].Status, resp.Results[1].Error)
	assert.Equal(t, IngestInvalid, resp.Results[2].Status, "mx2 shipped an entry as mx1")
	assert.Contains(t, resp.Results[2].Error, `"mx1"`)

	ctx := context.Background()
	for id, node := range map[string]string{"own": "mx2", "unnamed": "mx2"} {
		e, err := st.Get(ctx, "admin", id)
		require.NoError(t, err)
		assert.Equal(t, node, e.Node, id)
	}
	_, err := st.Get(ctx, "admin", "other")
	assert.ErrorIs(t, err, ErrNotFound)

	// A credential that names no node opens nothing.
	h = st.IngestHandler(&IngestOptions{Logger: shLogger(), Identify: func(*http.Request) (string, error) { return "", nil }})
	w = httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(shBatch(t, Item{Entry: shEntry("x")}))))
	assert.Equal(t, http.StatusUnauthorized, w.Code)
}
