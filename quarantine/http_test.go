package quarantine

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
)

func (f *accessFixture) handler(mod func(*HandlerOptions)) http.Handler {
	f.t.Helper()
	o := &HandlerOptions{
		Authenticate: headerAuth,
		LinkKey:      accessLinkKey,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if mod != nil {
		mod(o)
	}
	h, err := NewHandler(f.s, o)
	require.NoError(f.t, err)
	return h
}

// request runs one request through h as who ("" for none).
func request(h http.Handler, method, target, who string, body string, hdr ...string) *httptest.ResponseRecorder {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, r)
	if who != "" {
		req.Header.Set("X-Test-User", who)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func decodeJSON[T any](t *testing.T, w *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	require.Equal(t, "application/json; charset=utf-8", w.Header().Get("Content-Type"), w.Body.String())
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &v), w.Body.String())
	return v
}

type listAnswer struct {
	Entries []Entry `json:"entries"`
	Next    *string `json:"next"`
}

func TestAPIListScopes(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)

	tests := []struct {
		who   string
		query string
		want  []string
	}{
		{"alice@example.org", "", []string{"e5", "e4", "e1"}},
		{"bob@example.org", "", []string{"e4", "e2"}},
		{"carol@example.com", "", []string{"e3"}},
		{"pm-org", "", []string{"e5", "e4", "e2", "e1"}},
		{"root@example.net", "", []string{"e5", "e4", "e3", "e2", "e1"}},
		{"root@example.net", "?domain=example.com", []string{"e3"}},
		{"root@example.net", "?rcpt=bob@example.org", []string{"e4", "e2"}},
		{"root@example.net", "?kind=policy", []string{"e4"}},
		{"root@example.net", "?sender=spammer@bad.example", []string{"e3", "e2", "e1"}},
		{"alice@example.org", "?status=held&kind=spam", []string{"e1"}},
		{"root@example.net", "?since=2026-03-10T08:30:00Z&until=2026-03-10T10:30:00Z", []string{"e4", "e3"}},
		{"pm-org", "?rcpt=alice@example.org", []string{"e5", "e4", "e1"}},
		{"nobody@example.org", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.who+tt.query, func(t *testing.T) {
			w := request(h, "GET", "/api/entries"+tt.query, tt.who, "")
			require.Equal(t, http.StatusOK, w.Code, w.Body.String())
			got := decodeJSON[listAnswer](t, w)
			require.NotNil(t, got.Entries, "entries is [] rather than null")
			assert.Equal(t, tt.want, entryIDs(got.Entries))
			require.NotNil(t, got.Next, "next is always present")
			for _, e := range got.Entries {
				if tt.who == "alice@example.org" {
					assert.Equal(t, []string{"alice@example.org"}, rcptAddrs(e), "alice sees only herself among the recipients of %s", e.ID)
				}
				if tt.who == "pm-org" {
					for _, a := range rcptAddrs(e) {
						assert.True(t, strings.HasSuffix(a, "@example.org"), a)
					}
				}
			}
		})
	}
}

func TestAPIPaging(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)
	var all []string
	cursor := ""
	for range 10 {
		w := request(h, "GET", "/api/entries?limit=2&cursor="+url.QueryEscape(cursor), "root@example.net", "")
		require.Equal(t, http.StatusOK, w.Code, w.Body.String())
		page := decodeJSON[listAnswer](t, w)
		assert.LessOrEqual(t, len(page.Entries), 2)
		all = append(all, entryIDs(page.Entries)...)
		if *page.Next == "" {
			break
		}
		cursor = *page.Next
	}
	assert.Equal(t, []string{"e5", "e4", "e3", "e2", "e1"}, all)
}

func TestAPIErrors(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)
	tests := []struct {
		name   string
		method string
		target string
		who    string
		body   string
		want   int
	}{
		{"no authentication", "GET", "/api/entries", "", "", http.StatusUnauthorized},
		{"user who is not an address", "GET", "/api/entries", "mallory", "", http.StatusForbidden},
		{"other user's recipient", "GET", "/api/entries?rcpt=bob@example.org", "alice@example.org", "", http.StatusForbidden},
		{"domain admin, other domain", "GET", "/api/entries?domain=example.com", "pm-org", "", http.StatusForbidden},
		{"bad since", "GET", "/api/entries?since=yesterday", "alice@example.org", "", http.StatusBadRequest},
		{"bad limit", "GET", "/api/entries?limit=-1", "alice@example.org", "", http.StatusBadRequest},
		{"bad status", "GET", "/api/entries?status=lost", "alice@example.org", "", http.StatusBadRequest},
		{"bad cursor", "GET", "/api/entries?cursor=%21%21", "alice@example.org", "", http.StatusBadRequest},
		{"other user's entry", "GET", "/api/entries/e2", "alice@example.org", "", http.StatusNotFound},
		{"other domain's entry", "GET", "/api/entries/e3", "pm-org", "", http.StatusNotFound},
		{"missing entry", "GET", "/api/entries/nope", "alice@example.org", "", http.StatusNotFound},
		{"path trick id", "GET", "/api/entries/a%2F..%2Fe1", "alice@example.org", "", http.StatusBadRequest},
		{"dot id", "GET", "/api/entries/.x", "alice@example.org", "", http.StatusBadRequest},
		{"other user's preview", "GET", "/api/entries/e2/preview", "alice@example.org", "", http.StatusNotFound},
		{"preview without body", "GET", "/api/entries/e5/preview", "alice@example.org", "", http.StatusConflict},
		{"other user's audit", "GET", "/api/entries/e3/audit", "bob@example.org", "", http.StatusNotFound},
		{"other user's release", "POST", "/api/entries/e2/release", "alice@example.org", "", http.StatusNotFound},
		{"other user's delete", "POST", "/api/entries/e2/delete", "alice@example.org", "", http.StatusNotFound},
		{"release to another's recipient", "POST", "/api/entries/e4/release", "alice@example.org", `{"rcpts":["bob@example.org"]}`, http.StatusForbidden},
		{"release to a stranger", "POST", "/api/entries/e4/release", "root@example.net", `{"rcpts":["eve@example.org"]}`, http.StatusBadRequest},
		{"release without body", "POST", "/api/entries/e5/release", "alice@example.org", "", http.StatusConflict},
		{"bad JSON", "POST", "/api/entries/e1/release", "alice@example.org", `{"rcpts":`, http.StatusBadRequest},
		{"unknown field", "POST", "/api/entries/e1/release", "alice@example.org", `{"to":["x"]}`, http.StatusBadRequest},
		{"body too large", "POST", "/api/entries/e1/release", "alice@example.org", `{"rcpts":["` + strings.Repeat("a", maxRequestBody) + `"]}`, http.StatusRequestEntityTooLarge},
		{"unknown call", "GET", "/api/whatever", "alice@example.org", "", http.StatusNotFound},
		{"wrong method", "DELETE", "/api/entries/e1", "alice@example.org", "", http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := request(h, tt.method, tt.target, tt.who, tt.body)
			require.Equal(t, tt.want, w.Code, w.Body.String())
			got := decodeJSON[map[string]string](t, w)
			assert.NotEmpty(t, got["error"])
		})
	}
	assert.Empty(t, f.deliveries(), "no refused request delivered anything")
	e, err := f.s.Get(context.Background(), "root@example.net", "e2")
	require.NoError(t, err)
	assert.Equal(t, Held, e.Recipients[0].Status, "no refused request changed anything")
}

func TestAPIGetPreviewAudit(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)

	w := request(h, "GET", "/api/entries/e4", "bob@example.org", "")
	require.Equal(t, http.StatusOK, w.Code)
	e := decodeJSON[Entry](t, w)
	assert.Equal(t, []string{"bob@example.org"}, rcptAddrs(e))

	w = request(h, "GET", "/api/entries/e1/preview", "alice@example.org", "")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	p := decodeJSON[Preview](t, w)
	assert.Equal(t, "Cheap <script>alert(1)</script> pills", p.Subject)
	require.Len(t, p.Text, 1)
	assert.Equal(t, "Buy now.\n", p.Text[0].Text)
	assert.NotContains(t, w.Body.String(), "<script>", "JSON escapes < and >")

	// The alias sees what is addressed to it.
	f.put("a1", time.Minute, KindSpam, "x@bad.example", []string{"info@example.org"}, accessMessage("x@bad.example", "info@example.org", "alias", "hi"))
	w = request(h, "GET", "/api/entries/a1/preview", "alice@example.org", "")
	assert.Equal(t, http.StatusOK, w.Code)

	w = request(h, "POST", "/api/entries/e4/release", "alice@example.org", "")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	w = request(h, "GET", "/api/entries/e4/audit", "bob@example.org", "")
	require.Equal(t, http.StatusOK, w.Code)
	audit := decodeJSON[map[string][]AuditRecord](t, w)
	assert.Empty(t, audit["audit"], "bob does not see alice's release")
	w = request(h, "GET", "/api/entries/e4/audit", "alice@example.org", "")
	audit = decodeJSON[map[string][]AuditRecord](t, w)
	require.NotEmpty(t, audit["audit"])
	assert.Equal(t, "release", audit["audit"][0].Action)
	assert.Equal(t, "alice@example.org", audit["audit"][0].Who)
}

func TestAPIReleaseAndDelete(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)

	// Alice releases the shared entry: only to herself.
	w := request(h, "POST", "/api/entries/e4/release", "alice@example.org", "")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	res := decodeJSON[actionResult](t, w)
	assert.Equal(t, []string{"alice@example.org"}, res.Changed)
	assert.Equal(t, Released, res.Entry.Recipients[0].Status)
	require.Len(t, f.deliveries(), 1)
	d := f.deliveries()[0]
	assert.Equal(t, []string{"alice@example.org"}, d.Env.Recipients())
	assert.Contains(t, string(d.Body), "Subject: Newsletter")

	// Again: nothing to do, nothing delivered.
	w = request(h, "POST", "/api/entries/e4/release", "alice@example.org", `{"rcpts":[]}`)
	require.Equal(t, http.StatusOK, w.Code)
	res = decodeJSON[actionResult](t, w)
	assert.Empty(t, res.Changed)
	assert.NotNil(t, res.Changed)
	assert.Len(t, f.deliveries(), 1)

	// Bob's copy is still held; bob deletes it.
	w = request(h, "POST", "/api/entries/e4/delete", "bob@example.org", `{"rcpts":["bob@example.org"]}`)
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	res = decodeJSON[actionResult](t, w)
	assert.Equal(t, []string{"bob@example.org"}, res.Changed)
	assert.Equal(t, Deleted, res.Entry.Recipients[0].Status)

	// A domain admin releases e1 (alice's).
	w = request(h, "POST", "/api/entries/e1/release", "pm-org", "")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	assert.Len(t, f.deliveries(), 2)
}

func TestAPIReleaseDeliveryFailures(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)

	f.setFail(func(resilmail.Envelope) error { return errors.New("connection refused") })
	w := request(h, "POST", "/api/entries/e1/release", "alice@example.org", "")
	require.Equal(t, http.StatusAccepted, w.Code, w.Body.String())
	res := decodeJSON[actionResult](t, w)
	assert.True(t, res.Pending)
	assert.Equal(t, Releasing, res.Entry.Recipients[0].Status)

	f.setFail(func(env resilmail.Envelope) error {
		return &resilmail.DeliveryError{Recipient: env.To[0].Addr, Code: 550, Message: "no thanks", Permanent: true}
	})
	w = request(h, "POST", "/api/entries/e2/release", "bob@example.org", "")
	require.Equal(t, http.StatusBadGateway, w.Code, w.Body.String())
	e, err := f.s.Get(context.Background(), "bob@example.org", "e2")
	require.NoError(t, err)
	assert.Equal(t, Held, e.Recipients[0].Status, "held again")
	assert.Empty(t, f.deliveries())
}

func TestHandlerHeaders(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)
	tok := f.token("e1", "alice@example.org", time.Hour)
	for _, target := range []string{"/", "/entry/e1", "/api/entries", "/release/" + tok, "/nope"} {
		t.Run(target, func(t *testing.T) {
			w := request(h, "GET", target, "alice@example.org", "")
			hd := w.Header()
			assert.Equal(t, contentSecurityPolicy, hd.Get("Content-Security-Policy"))
			assert.Contains(t, hd.Get("Content-Security-Policy"), "default-src 'none'")
			assert.Equal(t, "nosniff", hd.Get("X-Content-Type-Options"))
			assert.Equal(t, "no-referrer", hd.Get("Referrer-Policy"))
			assert.Equal(t, "no-store", hd.Get("Cache-Control"))
		})
	}
}

func TestCrossOriginPostsRefused(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)
	tok := f.token("e1", "alice@example.org", time.Hour)
	for _, target := range []string{"/api/entries/e1/release", "/entry/e1/release", "/entry/e1/delete", "/release/" + tok} {
		t.Run(target, func(t *testing.T) {
			w := request(h, "POST", target, "alice@example.org", "", "Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example")
			assert.Equal(t, http.StatusForbidden, w.Code)
			w = request(h, "POST", target, "alice@example.org", "", "Origin", "https://evil.example")
			assert.Equal(t, http.StatusForbidden, w.Code, "Origin alone is checked too")
		})
	}
	assert.Empty(t, f.deliveries())
	e, err := f.s.Get(context.Background(), "alice@example.org", "e1")
	require.NoError(t, err)
	assert.Equal(t, Held, e.Recipients[0].Status)

	// Same origin is fine.
	w := request(h, "POST", "/entry/e1/release", "alice@example.org", "", "Sec-Fetch-Site", "same-origin", "Content-Type", "application/x-www-form-urlencoded")
	assert.Equal(t, http.StatusSeeOther, w.Code, w.Body.String())
	assert.Len(t, f.deliveries(), 1)
}

func TestHTMLPagesEscapeContent(t *testing.T) {
	f := newAccessFixture(t)
	f.put("h1", time.Hour, KindSpam, "evil@bad.example", []string{"alice@example.org"}, []byte(
		"From: \"<b>Boss</b>\" <evil@bad.example>\r\nTo: alice@example.org\r\nSubject: <img src=x onerror=alert(1)>\r\n"+
			"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"+
			"--b\r\nContent-Type: text/html\r\n\r\n<p>Hi <script>steal()</script><img src=\"http://tracker.example/pixel.gif\" alt=\"logo\"> <a href=\"http://phish.example/\">your bank</a></p>\r\n"+
			"--b\r\nContent-Type: application/octet-stream; name=\"<svg onload=alert(1)>.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n"+
			"--b--\r\n"))
	h := f.handler(nil)

	for _, target := range []string{"/", "/entry/h1"} {
		w := request(h, "GET", target, "alice@example.org", "")
		require.Equal(t, http.StatusOK, w.Code, w.Body.String())
		assert.Equal(t, "text/html; charset=utf-8", w.Header().Get("Content-Type"))
		body := w.Body.String()
		assert.NotContains(t, body, "<img", target)
		assert.NotContains(t, body, "<script", target)
		assert.NotContains(t, body, "<svg", target)
		assert.NotContains(t, body, "<b>Boss", target)
		assert.NotRegexp(t, `<[^>]*\ssrc=`, body, target)
		assert.Contains(t, body, "&lt;img src=x onerror=alert(1)&gt;", target)
	}
	body := request(h, "GET", "/entry/h1", "alice@example.org", "").Body.String()
	assert.Contains(t, body, "your bank [http://phish.example/]", "the link target is shown as text")
	assert.NotContains(t, body, `href="http://phish.example`, "and is not a link")
	assert.NotContains(t, body, "steal()")
	assert.Contains(t, body, "&lt;svg onload=alert(1)&gt;.exe")
	assert.Contains(t, body, "[logo]")
}

func TestHTMLListFiltersAndPaging(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(func(o *HandlerOptions) { o.BaseURL = "https://mail.example.org/quarantine/" })
	srv := http.StripPrefix("/quarantine", h)

	w := request(srv, "GET", "/quarantine/?limit=2", "root@example.net", "")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	body := w.Body.String()
	assert.Equal(t, 2, strings.Count(body, `class="entry"`))
	assert.Contains(t, body, `href="/quarantine/entry/e5"`)
	assert.Contains(t, body, `action="/quarantine/entry/e4/release"`)
	next := regexp.MustCompile(`class="next" href="([^"]+)"`).FindStringSubmatch(body)
	require.Len(t, next, 2, "an Older link")
	nextURL := strings.ReplaceAll(next[1], "&amp;", "&")
	assert.True(t, strings.HasPrefix(nextURL, "/quarantine/?"), nextURL)

	w = request(srv, "GET", nextURL, "root@example.net", "")
	require.Equal(t, http.StatusOK, w.Code)
	assert.Contains(t, w.Body.String(), `data-entry="e3"`)
	assert.NotContains(t, w.Body.String(), `data-entry="e5"`)
	assert.Contains(t, w.Body.String(), "Newest")

	w = request(srv, "GET", "/quarantine/?kind=policy&since=2026-03-10", "root@example.net", "")
	require.Equal(t, http.StatusOK, w.Code)
	assert.Equal(t, 1, strings.Count(w.Body.String(), `class="entry"`))
	assert.Contains(t, w.Body.String(), `<option selected>policy</option>`)

	w = request(srv, "GET", "/quarantine/?since=soon", "root@example.net", "")
	assert.Equal(t, http.StatusBadRequest, w.Code)

	w = request(srv, "GET", "/quarantine/", "", "")
	assert.Equal(t, http.StatusUnauthorized, w.Code)

	// Alice sees only her own entries, with only her own status.
	w = request(srv, "GET", "/quarantine/", "alice@example.org", "")
	body = w.Body.String()
	assert.NotContains(t, body, "e2")
	assert.NotContains(t, body, "bob@example.org")
	assert.Contains(t, body, `data-entry="e4"`)
}

func TestHTMLActions(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)
	form := "application/x-www-form-urlencoded"

	w := request(h, "POST", "/entry/e1/release", "alice@example.org", "back="+url.QueryEscape("/?status=held"), "Content-Type", form)
	require.Equal(t, http.StatusSeeOther, w.Code, w.Body.String())
	assert.Equal(t, "/?status=held", w.Header().Get("Location"))
	require.Len(t, f.deliveries(), 1)

	// A redirect elsewhere is not followed.
	for _, back := range []string{"https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"} {
		w = request(h, "POST", "/entry/e4/delete", "bob@example.org", "back="+url.QueryEscape(back), "Content-Type", form)
		require.Equal(t, http.StatusSeeOther, w.Code, back)
		assert.Equal(t, "/entry/e4", w.Header().Get("Location"), back)
	}

	w = request(h, "GET", "/entry/e4", "bob@example.org", "")
	assert.Contains(t, w.Body.String(), `bob@example.org: <span class="status status-deleted">deleted</span>`)

	// Another user's entry.
	w = request(h, "POST", "/entry/e2/release", "alice@example.org", "", "Content-Type", form)
	assert.Equal(t, http.StatusNotFound, w.Code)
	w = request(h, "GET", "/entry/e2", "alice@example.org", "")
	assert.Equal(t, http.StatusNotFound, w.Code)
	assert.NotContains(t, w.Body.String(), "Bob")

	// Per-recipient release by the administrator.
	w = request(h, "POST", "/entry/e4/release", "root@example.net", "rcpt=alice@example.org", "Content-Type", form)
	require.Equal(t, http.StatusSeeOther, w.Code, w.Body.String())
	require.Len(t, f.deliveries(), 2)
	assert.Equal(t, []string{"alice@example.org"}, f.deliveries()[1].Env.Recipients())

	// The page of an entry without a body says so and offers no release.
	w = request(h, "GET", "/entry/e5", "alice@example.org", "")
	require.Equal(t, http.StatusOK, w.Code)
	assert.Contains(t, w.Body.String(), "refused before its content arrived")
	assert.NotContains(t, w.Body.String(), `e5/release`)
}

func TestHTMLCorruptBody(t *testing.T) {
	f := newAccessFixture(t)
	e := f.put("c1", time.Hour, KindSpam, "x@bad.example", []string{"alice@example.org"}, accessMessage("x@bad.example", "alice@example.org", "hello", "original"))
	corruptBody(t, f, e)
	h := f.handler(nil)
	w := request(h, "GET", "/entry/c1", "alice@example.org", "")
	require.Equal(t, http.StatusOK, w.Code)
	assert.Contains(t, w.Body.String(), "damaged")
	assert.NotContains(t, w.Body.String(), "tampered")
	w = request(h, "GET", "/api/entries/c1/preview", "alice@example.org", "")
	assert.Equal(t, http.StatusInternalServerError, w.Code)
	assert.Equal(t, "internal error", decodeJSON[map[string]string](t, w)["error"])
}

// token signs a release link for entry id and rcpt, valid for ttl.
func (f *accessFixture) token(id, rcpt string, ttl time.Duration) string {
	f.t.Helper()
	tok, err := ReleaseToken{ID: id, Rcpt: rcpt, Expires: f.clock().Add(ttl)}.Sign(accessLinkKey)
	require.NoError(f.t, err)
	return tok
}

func TestReleaseLinkGetChangesNothing(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)
	tok := f.token("e4", "bob@example.org", time.Hour)

	for range 3 { // a mail scanner opens a link more than once
		w := request(h, "GET", "/release/"+tok, "", "")
		require.Equal(t, http.StatusOK, w.Code, w.Body.String())
		body := w.Body.String()
		assert.Contains(t, body, "Newsletter")
		assert.Contains(t, body, `<td class="for">bob@example.org</td>`)
		assert.Contains(t, body, `<form method="post" action="/release/`+tok+`">`)
		assert.NotContains(t, body, "alice@example.org", "the link shows nothing of the other recipients")
	}
	w := request(h, "HEAD", "/release/"+tok, "", "")
	assert.Equal(t, http.StatusOK, w.Code)
	assert.Empty(t, f.deliveries())
	e, err := f.s.Get(context.Background(), "root@example.net", "e4")
	require.NoError(t, err)
	for _, r := range e.Recipients {
		assert.Equal(t, Held, r.Status)
	}
	audit, err := f.s.Audit(context.Background(), "root@example.net", "e4")
	require.NoError(t, err)
	assert.Empty(t, audit)
}

func TestReleaseLinkPost(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)
	tok := f.token("e4", "bob@example.org", time.Hour)

	w := request(h, "POST", "/release/"+tok, "", "")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	assert.Contains(t, w.Body.String(), "Released: the message was delivered to bob@example.org")
	require.Len(t, f.deliveries(), 1)
	assert.Equal(t, []string{"bob@example.org"}, f.deliveries()[0].Env.Recipients())

	w = request(h, "POST", "/release/"+tok, "", "")
	require.Equal(t, http.StatusOK, w.Code)
	assert.Contains(t, w.Body.String(), "already released")
	assert.Len(t, f.deliveries(), 1, "no second delivery")

	w = request(h, "GET", "/release/"+tok, "", "")
	assert.Contains(t, w.Body.String(), "already released")
	assert.NotContains(t, w.Body.String(), "<form")

	e, err := f.s.Get(context.Background(), "root@example.net", "e4")
	require.NoError(t, err)
	assert.Equal(t, Held, e.Recipient("alice@example.org").Status, "alice's copy is untouched")
	assert.Equal(t, Released, e.Recipient("bob@example.org").Status)
	assert.Equal(t, "link:bob@example.org", e.Recipient("bob@example.org").By)

	// A deleted entry cannot be released by link.
	_, err = f.s.Delete(context.Background(), "alice@example.org", "e4", nil)
	require.NoError(t, err)
	w = request(h, "POST", "/release/"+f.token("e4", "alice@example.org", time.Hour), "", "")
	require.Equal(t, http.StatusOK, w.Code)
	assert.Contains(t, w.Body.String(), "deleted")
	assert.Len(t, f.deliveries(), 1)
}

func TestReleaseLinkRefused(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)
	good := f.token("e1", "alice@example.org", time.Hour)
	forged, err := ReleaseToken{ID: "e1", Rcpt: "alice@example.org", Expires: f.clock().Add(time.Hour)}.Sign(accessOtherKey)
	require.NoError(t, err)
	expired := f.token("e1", "alice@example.org", time.Minute)

	tests := []struct {
		name  string
		token string
		want  int
	}{
		{"forged", forged, http.StatusForbidden},
		{"damaged", good[:len(good)-3], http.StatusForbidden},
		{"tampered id", tamper(t, good, 11), http.StatusForbidden},
		{"other user's entry", f.token("e2", "alice@example.org", time.Hour), http.StatusNotFound},
		{"stranger's address", f.token("e1", "eve@example.org", time.Hour), http.StatusNotFound},
		{"alias of another recipient", f.token("e2", "info@example.org", time.Hour), http.StatusNotFound},
		{"missing entry", f.token("gone", "alice@example.org", time.Hour), http.StatusNotFound},
		{"path trick", "..%2Fx", http.StatusForbidden},
	}
	f.advance(2 * time.Minute)
	tests = append(tests, struct {
		name  string
		token string
		want  int
	}{"expired", expired, http.StatusForbidden})

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, method := range []string{"GET", "POST"} {
				w := request(h, method, "/release/"+tt.token, "", "")
				assert.Equal(t, tt.want, w.Code, "%s: %s", method, w.Body.String())
				assert.NotContains(t, w.Body.String(), "<form", method)
			}
		})
	}
	assert.Empty(t, f.deliveries())

	// An entry without a body: the page says so, and a POST is refused.
	noBody := f.token("e5", "alice@example.org", time.Hour)
	w := request(h, "GET", "/release/"+noBody, "", "")
	assert.Equal(t, http.StatusOK, w.Code)
	assert.Contains(t, w.Body.String(), "nothing to release")
	assert.NotContains(t, w.Body.String(), "<form")
	assert.Equal(t, http.StatusConflict, request(h, "POST", "/release/"+noBody, "", "").Code)

	// Without a LinkKey there are no link pages.
	h = f.handler(func(o *HandlerOptions) { o.LinkKey = nil })
	assert.Equal(t, http.StatusNotFound, request(h, "GET", "/release/"+good, "", "").Code)
}

func TestReleaseLinkConcurrentPosts(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	srv := httptest.NewServer(f.handler(nil))
	defer srv.Close()
	tok := f.token("e1", "alice@example.org", time.Hour)

	const n = 8
	var (
		wg     sync.WaitGroup
		start  = make(chan struct{})
		bodies = make([]string, n)
		codes  = make([]int, n)
	)
	for i := range n {
		wg.Go(func() {
			<-start
			resp, err := srv.Client().Post(srv.URL+"/release/"+tok, "application/x-www-form-urlencoded", nil)
			if !assert.NoError(t, err) {
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			codes[i], bodies[i] = resp.StatusCode, string(b)
		})
	}
	close(start)
	wg.Wait()
	released, already := 0, 0
	for i := range n {
		assert.Equal(t, http.StatusOK, codes[i], bodies[i])
		switch {
		case strings.Contains(bodies[i], "Released:"):
			released++
		case strings.Contains(bodies[i], "already released"):
			already++
		}
	}
	assert.Equal(t, 1, released)
	assert.Equal(t, n-1, already)
	assert.Len(t, f.deliveries(), 1, "delivered once")
}

func TestNewHandlerOptions(t *testing.T) {
	f := newAccessFixture(t)
	tests := []struct {
		name string
		opts *HandlerOptions
	}{
		{"nil", nil},
		{"no Authenticate", &HandlerOptions{}},
		{"short key", &HandlerOptions{Authenticate: headerAuth, LinkKey: []byte("short")}},
		{"relative BaseURL", &HandlerOptions{Authenticate: headerAuth, BaseURL: "/quarantine"}},
		{"ftp BaseURL", &HandlerOptions{Authenticate: headerAuth, BaseURL: "ftp://example.org/"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewHandler(f.s, tt.opts)
			assert.ErrorIs(t, err, ErrInvalid)
		})
	}
	_, err := NewHandler(nil, &HandlerOptions{Authenticate: headerAuth})
	assert.Error(t, err)

	h := f.handler(func(o *HandlerOptions) { o.Realm = "Quarantine" })
	w := request(h, "GET", "/", "", "")
	assert.Equal(t, http.StatusUnauthorized, w.Code)
	assert.Equal(t, `Basic realm="Quarantine", charset="UTF-8"`, w.Header().Get("WWW-Authenticate"))
}

func TestHandlerAfterClose(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	h := f.handler(nil)
	tok := f.token("e1", "alice@example.org", time.Hour)
	require.NoError(t, f.s.Close())
	assert.Equal(t, http.StatusServiceUnavailable, request(h, "GET", "/api/entries", "alice@example.org", "").Code)
	assert.Equal(t, http.StatusServiceUnavailable, request(h, "GET", "/release/"+tok, "", "").Code)
}

func TestAuthorizerOutageIsUnavailableNotForbidden(t *testing.T) {
	var down atomic.Bool
	auth := AuthorizerFunc(func(ctx context.Context, who string) (Scope, error) {
		if down.Load() {
			return Scope{}, errors.New("directory server unreachable")
		}
		return accessAuthorizer().Scope(ctx, who)
	})
	s, err := Open(t.TempDir(), auth, &Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	defer s.Close()
	h, err := NewHandler(s, &HandlerOptions{Authenticate: headerAuth, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)

	require.Equal(t, http.StatusOK, request(h, "GET", "/api/entries", "alice@example.org", "").Code)
	down.Store(true)
	_, err = s.List(context.Background(), "alice@example.org", Query{})
	require.ErrorIs(t, err, ErrUnavailable)
	assert.NotErrorIs(t, err, ErrForbidden)
	w := request(h, "GET", "/api/entries", "alice@example.org", "")
	assert.Equal(t, http.StatusServiceUnavailable, w.Code, "the user may try again; nothing is forbidden")
	down.Store(false)
	assert.Equal(t, http.StatusOK, request(h, "GET", "/api/entries", "alice@example.org", "").Code)
}

func TestHTMLEntryShowsTheScannersEvidence(t *testing.T) {
	f := newAccessFixture(t)
	e := Entry{
		ID: "s1", Envelope: resilmail.Envelope{ID: "in-s1", From: "spam@bad.example", To: []resilmail.Recipient{{Addr: "alice@example.org"}}},
		Recipients: []RecipientState{{Addr: "alice@example.org"}}, Time: f.clock(), Node: "mx2",
		Reason: Reason{Kind: KindSpam, Score: 15.5, Threshold: 6, Rule: "spam_action quarantine", Symbols: []string{"GTUBE", "<script>x</script>"}, Scanner: "rspamd 3.4"},
	}
	require.NoError(t, f.s.Put(context.Background(), e, strings.NewReader("Subject: win\r\n\r\nXJS*C4JDBQADN1\r\n")))
	got, err := f.s.Get(context.Background(), "root@example.net", "s1")
	require.NoError(t, err)
	assert.Equal(t, e.Reason, got.Reason, "the evidence is stored")
	w := request(f.handler(nil), "GET", "/entry/s1", "root@example.net", "")
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	body := w.Body.String()
	assert.Contains(t, body, `<td class="scanner">rspamd 3.4</td>`)
	assert.Contains(t, body, `<td class="symbols">GTUBE, &lt;script&gt;x&lt;/script&gt;</td>`)
	assert.Contains(t, body, `<td class="node">mx2</td>`)
	assert.Contains(t, body, "spam (score 15.5 ≥ 6.0): spam_action quarantine")
}
