package quarantine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// HandlerOptions configure the handler of [NewHandler]. Authenticate is
// required; the zero value of the others gives the defaults documented on
// each field.
type HandlerOptions struct {
	// Authenticate names the caller of a request (the name the store's
	// Authorizer is asked about), from a header set by a proxy, a session
	// cookie, basic authentication, a client certificate. An error
	// answers 401. Release links do not call it: their token is their
	// authority.
	Authenticate func(*http.Request) (who string, err error)
	// LinkKey verifies release links (see [ReleaseToken]); the Reporter
	// signs them with the same key. At least MinLinkKeyLen bytes; nil
	// disables the /release/ pages.
	LinkKey []byte
	// BaseURL is the handler's public address, e.g.
	// "https://mail.example.org/quarantine": its path prefixes the links
	// of the pages (the handler itself sees paths without it, as after
	// http.StripPrefix), and its origin is trusted for form posts. Empty
	// means the handler is served at the root of the origin it is reached
	// at.
	BaseURL string
	// Realm, if set, is sent in a "WWW-Authenticate: Basic" challenge with
	// 401 answers, so that a browser asks for a user name and password.
	Realm string
	// Logger receives a line per refused or failed request; nil means
	// slog.Default(). Tokens, credentials and message bodies are never
	// logged.
	Logger *slog.Logger
	// Now returns the current time, to check link expiry; nil means the
	// store's clock.
	Now func() time.Time
}

// contentSecurityPolicy lets pages load nothing at all (no script, image,
// font or frame), style themselves inline, and post forms only to
// themselves.
const contentSecurityPolicy = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// maxRequestBody bounds the JSON body of an action.
const maxRequestBody = 64 << 10

type handler struct {
	s      *Store
	opts   HandlerOptions
	log    *slog.Logger
	prefix string // path of BaseURL, without a trailing slash
	pages  *template.Template
}

// NewHandler returns the HTTP interface of the store: a JSON API for
// programs and plain HTML pages for people. Every request but the release
// links is authenticated with HandlerOptions.Authenticate and authorised by
// the store's Authorizer, so a user sees and acts on their own recipients
// only.
//
// The JSON API (errors are {"error": "..."} with 400 for invalid input,
// 401, 403, 404, 409 for an entry without a body, 413, 500, 502 for a
// release the next hop refused, and 503):
//
//	GET  /api/entries?rcpt=&domain=&sender=&kind=&status=&since=&until=&limit=&cursor=
//	                                   {"entries": [...], "next": "cursor"}
//	GET  /api/entries/{id}             the entry
//	GET  /api/entries/{id}/preview     its [Preview]
//	GET  /api/entries/{id}/audit       {"audit": [...]}
//	POST /api/entries/{id}/release     {"rcpts": [...]} optional (default:
//	POST /api/entries/{id}/delete      every held recipient in scope);
//	                                   answers {"entry", "changed", "pending"}
//
// since and until are RFC 3339 times (a date, or a date and a time without
// zone, is taken as UTC). A release whose delivery failed temporarily
// answers 202 with pending set: the store finishes it.
//
// The pages: / lists entries newest first with a filter form and paging;
// /entry/{id} shows an entry, its preview (as escaped text: nothing in a
// message is rendered as HTML or loaded) and its audit trail; both carry
// release and delete buttons. /release/{token} is a release link: GET only
// shows what it would release, for whom, and a button (mail scanners open
// every link), and POST releases that one entry to that one recipient, once.
//
// Every answer forbids loading anything (Content-Security-Policy), sniffing,
// framing, sending a Referer and caching; every POST is checked against
// cross-origin forgery with [http.CrossOriginProtection].
func NewHandler(s *Store, opts *HandlerOptions) (http.Handler, error) {
	if s == nil {
		return nil, errors.New("quarantine: NewHandler: nil Store")
	}
	var o HandlerOptions
	if opts != nil {
		o = *opts
	}
	if o.Authenticate == nil {
		return nil, fmt.Errorf("%w: HandlerOptions.Authenticate is required", ErrInvalid)
	}
	if o.LinkKey != nil && len(o.LinkKey) < MinLinkKeyLen {
		return nil, fmt.Errorf("%w: LinkKey of %d bytes, need %d", ErrInvalid, len(o.LinkKey), MinLinkKeyLen)
	}
	o.LinkKey = slices.Clone(o.LinkKey)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = s.now
	}
	base, err := parseBaseURL(o.BaseURL)
	if err != nil {
		return nil, err
	}
	h := &handler{s: s, opts: o, log: o.Logger}
	cop := http.NewCrossOriginProtection()
	if base != nil {
		h.prefix = strings.TrimSuffix(base.Path, "/")
		if err := cop.AddTrustedOrigin(base.Scheme + "://" + base.Host); err != nil {
			return nil, fmt.Errorf("%w: BaseURL: %v", ErrInvalid, err)
		}
	}
	h.pages, err = template.New("pages").Funcs(template.FuncMap{
		"time":   formatTime,
		"sender": senderText,
		"reason": reasonText,
		"short":  shortText,
		"size":   formatSize,
		"held":   anyHeld,
		"path":   func(p string) string { return h.prefix + p },
	}).Parse(pageTemplates)
	if err != nil {
		return nil, err
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/entries", h.apiList)
	mux.HandleFunc("GET /api/entries/{id}", entryAPI(h, "get", h.s.Get))
	mux.HandleFunc("GET /api/entries/{id}/preview", entryAPI(h, "preview", h.s.Preview))
	mux.HandleFunc("GET /api/entries/{id}/audit", entryAPI(h, "audit", h.auditJSON))
	mux.HandleFunc("POST /api/entries/{id}/release", h.apiAction)
	mux.HandleFunc("POST /api/entries/{id}/delete", h.apiAction)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		h.apiError(w, r, "api", "", "", fmt.Errorf("%w: no such API call: %s %s", ErrNotFound, r.Method, r.URL.Path))
	})
	mux.HandleFunc("GET /{$}", h.pageList)
	mux.HandleFunc("GET /entry/{id}", h.pageEntry)
	mux.HandleFunc("POST /entry/{id}/release", h.pageAction)
	mux.HandleFunc("POST /entry/{id}/delete", h.pageAction)
	if o.LinkKey != nil {
		mux.HandleFunc("GET /release/{token}", h.linkConfirm)
		mux.HandleFunc("POST /release/{token}", h.linkRelease)
	}
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.log.Info("quarantine: cross-origin request refused", "origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"))
		err := fmt.Errorf("%w: cross-origin request", ErrForbidden)
		if isAPI(r) {
			h.writeJSON(w, http.StatusForbidden, map[string]string{"error": err.Error()})
			return
		}
		h.page(w, http.StatusForbidden, "error", errorPage{Title: "Not allowed", Message: "This form was sent from another site."})
	}))
	return securityHeaders(cop.Handler(mux)), nil
}

// parseBaseURL checks an absolute http(s) URL; "" gives nil.
func parseBaseURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w: BaseURL %q is not an absolute http(s) URL", ErrInvalid, s)
	}
	return u, nil
}

func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

func isAPI(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/api/") }

// authenticate returns the caller, or answers 401 and returns false.
func (h *handler) authenticate(w http.ResponseWriter, r *http.Request) (string, bool) {
	who, err := h.opts.Authenticate(r)
	if err == nil && who != "" {
		return who, true
	}
	if err == nil {
		err = errors.New("no user")
	}
	h.log.Info("quarantine: authentication failed", "err", err)
	if h.opts.Realm != "" {
		w.Header().Set("WWW-Authenticate", "Basic realm="+strconv.Quote(h.opts.Realm)+`, charset="UTF-8"`)
	}
	if isAPI(r) {
		h.writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "authentication required"})
	} else {
		h.page(w, http.StatusUnauthorized, "error", errorPage{Title: "Sign in", Message: "Authentication is required."})
	}
	return "", false
}

// status maps an error of the store to an HTTP status.
func status(err error) int {
	var (
		mbe *http.MaxBytesError
		rre *releaseRefusedError
	)
	switch {
	case errors.As(err, &rre):
		return http.StatusBadGateway
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrForbidden), errors.Is(err, ErrBadToken):
		return http.StatusForbidden
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrNoBody), errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrTooLarge), errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrClosed), errors.Is(err, ErrNoDeliverer), errors.Is(err, ErrUnavailable),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// publicError is what a caller is told of err: the store's own words for
// what the caller did wrong, nothing of internal failures.
func publicError(code int, err error) string {
	switch code {
	case http.StatusInternalServerError:
		return "internal error"
	case http.StatusRequestEntityTooLarge:
		return "request too large"
	}
	return shortText(err.Error())
}

// logError writes the log line of a refused or failed request.
func (h *handler) logError(code int, op, who, entry string, err error) {
	level, msg := slog.LevelInfo, "quarantine: request refused"
	if code >= 500 {
		level, msg = slog.LevelError, "quarantine: request failed"
	}
	h.log.Log(context.Background(), level, msg, "op", op, "who", who, "entry", entry, "status", code, "err", err)
}

func (h *handler) apiError(w http.ResponseWriter, r *http.Request, op, who, entry string, err error) {
	code := status(err)
	h.logError(code, op, who, entry, err)
	h.writeJSON(w, code, map[string]string{"error": publicError(code, err)})
}

func (h *handler) writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		h.log.Debug("quarantine: cannot write answer", "err", err)
	}
}

// parseQuery reads the filters of a listing from URL parameters.
func parseQuery(v url.Values) (Query, error) {
	q := Query{
		Rcpt:   strings.TrimSpace(v.Get("rcpt")),
		Domain: strings.TrimSpace(v.Get("domain")),
		Sender: strings.TrimSpace(v.Get("sender")),
		Kind:   Kind(strings.TrimSpace(v.Get("kind"))),
		Status: Status(strings.TrimSpace(v.Get("status"))),
		Cursor: v.Get("cursor"),
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return q, fmt.Errorf("%w: bad limit %q", ErrInvalid, shortText(s))
		}
		q.Limit = n
	}
	var err error
	if q.Since, err = parseTime("since", v.Get("since")); err != nil {
		return q, err
	}
	if q.Until, err = parseTime("until", v.Get("until")); err != nil {
		return q, err
	}
	return q, nil
}

func parseTime(name, s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%w: %s: %q is not an RFC 3339 time", ErrInvalid, name, shortText(s))
}

func (h *handler) apiList(w http.ResponseWriter, r *http.Request) {
	who, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	q, err := parseQuery(r.URL.Query())
	if err == nil {
		var page Page
		page, err = h.s.List(r.Context(), who, q)
		if err == nil {
			if page.Entries == nil {
				page.Entries = []Entry{}
			}
			h.writeJSON(w, http.StatusOK, struct {
				Entries []Entry `json:"entries"`
				Next    string  `json:"next"`
			}{page.Entries, page.Next})
			return
		}
	}
	h.apiError(w, r, "list", who, "", err)
}

// entryAPI serves a read of one entry (op names it in the log) as JSON.
func entryAPI[T any](h *handler, op string, read func(ctx context.Context, who, id string) (T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		who, ok := h.authenticate(w, r)
		if !ok {
			return
		}
		id := r.PathValue("id")
		v, err := read(r.Context(), who, id)
		if err != nil {
			h.apiError(w, r, op, who, id, err)
			return
		}
		h.writeJSON(w, http.StatusOK, v)
	}
}

// auditJSON is an entry's audit trail as the API answers it.
func (h *handler) auditJSON(ctx context.Context, who, id string) (map[string][]AuditRecord, error) {
	recs, err := h.s.Audit(ctx, who, id)
	if err != nil {
		return nil, err
	}
	if recs == nil {
		recs = []AuditRecord{}
	}
	return map[string][]AuditRecord{"audit": recs}, nil
}

// actionResult is the answer to a release or a delete.
type actionResult struct {
	Entry   Entry    `json:"entry"`
	Changed []string `json:"changed"`
	// Pending is set when a release is recorded but its delivery failed
	// for now: the store tries again.
	Pending bool `json:"pending,omitempty"`
}

func (h *handler) apiAction(w http.ResponseWriter, r *http.Request) {
	who, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	op := "delete"
	if strings.HasSuffix(r.URL.Path, "/release") {
		op = "release"
	}
	var req struct {
		Rcpts []string `json:"rcpts"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if !errors.As(err, &mbe) {
			err = fmt.Errorf("%w: request body: %v", ErrInvalid, err)
		}
		h.apiError(w, r, op, who, id, err)
		return
	}
	if len(req.Rcpts) == 0 {
		req.Rcpts = nil
	}
	res, code, err := h.act(r.Context(), op, who, id, req.Rcpts)
	if err != nil {
		h.apiError(w, r, op, who, id, err)
		return
	}
	if res.Changed == nil {
		res.Changed = []string{}
	}
	h.writeJSON(w, code, res)
}

// act releases or deletes, and tells a release whose delivery failed
// temporarily (202, pending) or for good (502) from other errors.
func (h *handler) act(ctx context.Context, op, who, id string, rcpts []string) (actionResult, int, error) {
	if op == "delete" {
		res, err := h.s.Delete(ctx, who, id, rcpts)
		return actionResult{Entry: res.Entry, Changed: res.Changed}, http.StatusOK, err
	}
	res, err := h.s.Release(ctx, who, id, rcpts)
	return h.releaseOutcome(res, err)
}

// releaseOutcome interprets what a release returned.
func (h *handler) releaseOutcome(res Result, err error) (actionResult, int, error) {
	out := actionResult{Entry: res.Entry, Changed: res.Changed}
	if err == nil {
		return out, http.StatusOK, nil
	}
	if len(res.Changed) == 0 {
		return out, 0, err
	}
	// The release is recorded; its delivery failed.
	for _, a := range res.Changed {
		if rs := res.Entry.Recipient(a); rs != nil && rs.Status == Releasing {
			out.Pending = true
		}
	}
	if out.Pending {
		h.log.Warn("quarantine: release pending", "entry", res.Entry.ID, "rcpt", strings.Join(res.Changed, ","), "err", err)
		return out, http.StatusAccepted, nil
	}
	return out, 0, &releaseRefusedError{err: err}
}

// releaseRefusedError is a release the next hop refused for good: the
// recipients are held again.
type releaseRefusedError struct{ err error }

func (e *releaseRefusedError) Error() string {
	return "release refused by the next hop; the message is held again"
}
func (e *releaseRefusedError) Unwrap() error { return e.err }

// ----- pages -----

// page renders template name with data.
func (h *handler) page(w http.ResponseWriter, code int, name string, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	if err := h.pages.ExecuteTemplate(w, name, data); err != nil {
		h.log.Error("quarantine: cannot render page", "page", name, "err", err)
	}
}

type errorPage struct {
	Title   string
	Message string
}

func (h *handler) pageError(w http.ResponseWriter, op, who, entry string, err error) {
	code := status(err)
	h.logError(code, op, who, entry, err)
	msg := publicError(code, err)
	switch {
	case code == http.StatusNotFound:
		msg = "There is no such message in quarantine, or it is not yours to see."
	case errors.Is(err, ErrNoBody):
		msg = "This message was refused before its content arrived: there is nothing to release."
	}
	h.page(w, code, "error", errorPage{Title: http.StatusText(code), Message: msg})
}

type listPage struct {
	Who      string
	Form     map[string]string
	Kinds    []Kind
	Statuses []Status
	Entries  []Entry
	Next     string // URL of the next page, "" if none
	First    string // URL of the first page, "" when on it
	Back     string // this page, to come back to after an action
}

func (h *handler) pageList(w http.ResponseWriter, r *http.Request) {
	who, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	v := r.URL.Query()
	q, err := parseQuery(v)
	if err != nil {
		h.pageError(w, "list", who, "", err)
		return
	}
	page, err := h.s.List(r.Context(), who, q)
	if err != nil {
		h.pageError(w, "list", who, "", err)
		return
	}
	form := make(map[string]string)
	for _, k := range []string{"rcpt", "domain", "sender", "kind", "status", "since", "until", "limit"} {
		form[k] = v.Get(k)
	}
	data := listPage{
		Who: who, Form: form, Entries: page.Entries,
		Kinds:    []Kind{KindRecipient, KindClient, KindPolicy, KindSpam, KindVirus, KindSize},
		Statuses: []Status{Held, Releasing, Released, Deleted, Expired},
		Back:     h.prefix + "/?" + r.URL.RawQuery,
	}
	if page.Next != "" {
		nv := cloneValues(v)
		nv.Set("cursor", page.Next)
		data.Next = h.prefix + "/?" + nv.Encode()
	}
	if v.Get("cursor") != "" {
		fv := cloneValues(v)
		fv.Del("cursor")
		data.First = h.prefix + "/?" + fv.Encode()
	}
	h.page(w, http.StatusOK, "list", &data)
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = slices.Clone(vs)
	}
	return out
}

type entryPage struct {
	Who          string
	Entry        Entry
	Held         bool // some recipient in scope is held
	Preview      *Preview
	PreviewError string
	Audit        []AuditRecord
	Back         string
}

func (h *handler) pageEntry(w http.ResponseWriter, r *http.Request) {
	who, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	e, err := h.s.Get(r.Context(), who, id)
	if err != nil {
		h.pageError(w, "entry", who, id, err)
		return
	}
	data := entryPage{Who: who, Entry: e, Held: anyHeld(e), Back: h.prefix + "/entry/" + e.ID}
	p, err := h.s.Preview(r.Context(), who, id)
	switch {
	case err == nil:
		data.Preview = p
	case errors.Is(err, ErrNoBody) && e.HasBody():
		data.PreviewError = "This message was released or deleted: its content is no longer kept."
	case errors.Is(err, ErrNoBody):
		data.PreviewError = "This message was refused before its content arrived: only its envelope is known."
	case errors.Is(err, ErrCorrupt):
		h.logError(http.StatusInternalServerError, "preview", who, id, err)
		data.PreviewError = "The stored copy of this message is damaged; it cannot be shown or released."
	default:
		h.pageError(w, "preview", who, id, err)
		return
	}
	if data.Audit, err = h.s.Audit(r.Context(), who, id); err != nil {
		h.pageError(w, "audit", who, id, err)
		return
	}
	h.page(w, http.StatusOK, "entry", &data)
}

func anyHeld(e Entry) bool {
	return slices.ContainsFunc(e.Recipients, func(r RecipientState) bool { return r.Status == Held })
}

// pageAction runs a release or delete button, then sends the browser back
// where it came from (303), or shows what went wrong.
func (h *handler) pageAction(w http.ResponseWriter, r *http.Request) {
	who, ok := h.authenticate(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	op := "delete"
	if strings.HasSuffix(r.URL.Path, "/release") {
		op = "release"
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
	if err := r.ParseForm(); err != nil {
		h.pageError(w, op, who, id, fmt.Errorf("%w: form: %w", ErrInvalid, err))
		return
	}
	var rcpts []string
	for _, a := range r.PostForm["rcpt"] {
		if a = strings.TrimSpace(a); a != "" {
			rcpts = append(rcpts, a)
		}
	}
	_, _, err := h.act(r.Context(), op, who, id, rcpts)
	if err != nil {
		h.pageError(w, op, who, id, err)
		return
	}
	back := r.PostForm.Get("back")
	if !h.localPath(back) {
		back = h.prefix + "/entry/" + id
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
}

// localPath reports whether p is a path of this handler, safe to redirect
// to (no other host, no scheme).
func (h *handler) localPath(p string) bool {
	if !strings.HasPrefix(p, h.prefix+"/") || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\\r\n") {
		return false
	}
	u, err := url.Parse(p)
	return err == nil && u.Scheme == "" && u.Host == "" && u.User == nil
}

// ----- release links -----

type linkPage struct {
	Entry   Entry
	Rcpt    string
	Status  Status
	Action  string // where the confirmation form posts
	Expires time.Time
	// Done is set on the result page: Changed says whether this request
	// released it, Pending whether delivery is still to be finished.
	Done    bool
	Changed bool
	Pending bool
}

// linkEntry checks the token of a link and loads what it names.
func (h *handler) linkEntry(r *http.Request) (ReleaseToken, Entry, error) {
	tok, err := ParseReleaseToken(h.opts.LinkKey, r.PathValue("token"), h.opts.Now())
	if err != nil {
		return tok, Entry{}, err
	}
	if h.s.closed.Load() {
		return tok, Entry{}, ErrClosed
	}
	e, err := h.s.get(linkScope(tok), tok.ID)
	return tok, e, err
}

func linkScope(tok ReleaseToken) Scope { return Scope{Addrs: []string{tok.Rcpt}}.normal() }

// linkConfirm shows what a link would release. It changes nothing.
func (h *handler) linkConfirm(w http.ResponseWriter, r *http.Request) {
	tok, e, err := h.linkEntry(r)
	if err != nil {
		h.linkError(w, tok, err)
		return
	}
	data := linkPage{Entry: e, Rcpt: tok.Rcpt, Action: h.prefix + "/release/" + r.PathValue("token"), Expires: tok.Expires}
	if rs := e.Recipient(tok.Rcpt); rs != nil {
		data.Status = rs.Status
	}
	h.page(w, http.StatusOK, "link", &data)
}

// linkRelease releases the entry of a link to its recipient, once.
func (h *handler) linkRelease(w http.ResponseWriter, r *http.Request) {
	tok, _, err := h.linkEntry(r)
	if err != nil {
		h.linkError(w, tok, err)
		return
	}
	res, err := h.s.releaseAs(r.Context(), "link:"+tok.Rcpt, linkScope(tok), tok.ID, []string{tok.Rcpt})
	out, _, err := h.releaseOutcome(res, err)
	if err != nil {
		h.linkError(w, tok, err)
		return
	}
	data := linkPage{Entry: out.Entry, Rcpt: tok.Rcpt, Done: true, Changed: len(out.Changed) > 0, Pending: out.Pending, Expires: tok.Expires}
	if rs := out.Entry.Recipient(tok.Rcpt); rs != nil {
		data.Status = rs.Status
	}
	h.page(w, http.StatusOK, "link", &data)
}

func (h *handler) linkError(w http.ResponseWriter, tok ReleaseToken, err error) {
	code := status(err)
	h.logError(code, "link", "", tok.ID, err)
	msg := publicError(code, err)
	switch {
	case errors.Is(err, ErrBadToken):
		msg = "This release link is not valid, or it has expired."
	case code == http.StatusNotFound:
		msg = "This message is no longer in quarantine."
	case errors.Is(err, ErrNoBody):
		msg = "This message was refused before its content arrived: there is nothing to release."
	}
	h.page(w, code, "error", errorPage{Title: http.StatusText(code), Message: msg})
}

func formatSize(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// pageTemplates are the HTML pages. Everything they show from a message
// or an entry goes through html/template's escaping: text stays text.
const pageTemplates = `
{{define "head"}}<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{{.}} – Quarantine</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .3em .5em; border-bottom: 1px solid #ddd; }
form.inline { display: inline; }
form.filter input, form.filter select { margin-right: .5em; }
pre.text { white-space: pre-wrap; overflow-wrap: anywhere; background: #f6f6f6; padding: .8em; border: 1px solid #ddd; }
.status-held { color: #a60; } .status-released { color: #080; } .status-deleted, .status-expired { color: #777; }
.problems { color: #a00; }
.meta th { width: 10em; }
button { cursor: pointer; }
</style></head><body>
{{end}}

{{define "foot"}}</body></html>
{{end}}

{{define "rcpts"}}{{range .}}<div class="rcpt" data-rcpt="{{.Addr}}">{{.Addr}}: <span class="status status-{{.Status}}">{{.Status}}</span></div>{{end}}{{end}}

{{define "list"}}{{template "head" "Held messages"}}
<h1>Held messages</h1>
<p>Signed in as {{.Who}}.</p>
<form class="filter" method="get" action="{{path "/"}}">
<input name="rcpt" placeholder="recipient" value="{{index .Form "rcpt"}}">
<input name="domain" placeholder="domain" value="{{index .Form "domain"}}">
<input name="sender" placeholder="sender" value="{{index .Form "sender"}}">
<select name="kind"><option value="">any reason</option>{{$k := index .Form "kind"}}{{range .Kinds}}<option{{if eq (print .) $k}} selected{{end}}>{{.}}</option>{{end}}</select>
<select name="status"><option value="">any status</option>{{$s := index .Form "status"}}{{range .Statuses}}<option{{if eq (print .) $s}} selected{{end}}>{{.}}</option>{{end}}</select>
<input name="since" placeholder="since (2006-01-02)" value="{{index .Form "since"}}">
<input name="until" placeholder="until" value="{{index .Form "until"}}">
<button type="submit">Filter</button>
</form>
<table class="entries">
<tr><th>Time</th><th>From</th><th>Subject</th><th>Reason</th><th>Recipients</th><th></th></tr>
{{$back := .Back}}
{{range .Entries}}<tr class="entry" data-entry="{{.ID}}">
<td>{{time .Time}}</td>
<td>{{sender .}}</td>
<td><a class="preview" href="{{path "/entry/"}}{{.ID}}">{{with .Subject}}{{short .}}{{else}}(no subject){{end}}</a></td>
<td>{{reason .Reason}}</td>
<td>{{template "rcpts" .Recipients}}</td>
<td>{{if held .}}{{if .HasBody}}<form class="inline" method="post" action="{{path "/entry/"}}{{.ID}}/release"><input type="hidden" name="back" value="{{$back}}"><button class="release" type="submit">Release</button></form>{{end}}
<form class="inline" method="post" action="{{path "/entry/"}}{{.ID}}/delete"><input type="hidden" name="back" value="{{$back}}"><button class="delete" type="submit">Delete</button></form>{{end}}</td>
</tr>
{{else}}<tr><td colspan="6">Nothing held.</td></tr>
{{end}}</table>
<p>{{with .First}}<a href="{{.}}">Newest</a> {{end}}{{with .Next}}<a class="next" href="{{.}}">Older</a>{{end}}</p>
{{template "foot"}}{{end}}

{{define "entry"}}{{template "head" "Held message"}}
<p><a href="{{path "/"}}">All held messages</a></p>
<h1>{{with .Entry.Subject}}{{short .}}{{else}}(no subject){{end}}</h1>
<table class="meta">
<tr><th>Received</th><td>{{time .Entry.Time}}</td></tr>
<tr><th>Envelope sender</th><td>{{sender .Entry}}</td></tr>
<tr><th>Reason</th><td>{{reason .Entry.Reason}}{{with .Entry.Reason.Reply}} ({{short .}}){{end}}</td></tr>
{{with .Entry.Reason.Scanner}}<tr><th>Scanner</th><td class="scanner">{{.}}</td></tr>{{end}}
{{with .Entry.Reason.Symbols}}<tr><th>Symbols</th><td class="symbols">{{range $i, $s := .}}{{if $i}}, {{end}}{{short $s}}{{end}}</td></tr>{{end}}
{{with .Entry.Node}}<tr><th>Decided by</th><td class="node">{{.}}</td></tr>{{end}}
<tr><th>Client</th><td>{{.Entry.ClientAddr}} {{.Entry.HELO}}</td></tr>
<tr><th>Size</th><td>{{size .Entry.Size}}</td></tr>
<tr><th>Recipients</th><td>{{$e := .Entry}}{{$back := .Back}}{{range .Entry.Recipients}}<div class="rcpt" data-rcpt="{{.Addr}}">{{.Addr}}: <span class="status status-{{.Status}}">{{.Status}}</span>
{{if eq (print .Status) "held"}}{{if $e.HasBody}}<form class="inline" method="post" action="{{path "/entry/"}}{{$e.ID}}/release"><input type="hidden" name="rcpt" value="{{.Addr}}"><input type="hidden" name="back" value="{{$back}}"><button class="release" type="submit">Release</button></form>{{end}}
<form class="inline" method="post" action="{{path "/entry/"}}{{$e.ID}}/delete"><input type="hidden" name="rcpt" value="{{.Addr}}"><input type="hidden" name="back" value="{{$back}}"><button class="delete" type="submit">Delete</button></form>{{end}}</div>
{{end}}</td></tr>
</table>
{{with .PreviewError}}<p class="problems">{{.}}</p>{{end}}
{{with .Preview}}
<h2>Message</h2>
<table class="meta">
<tr><th>From</th><td>{{range $i, $a := .From}}{{if $i}}, {{end}}{{$a}}{{end}}</td></tr>
<tr><th>To</th><td>{{range $i, $a := .To}}{{if $i}}, {{end}}{{$a}}{{end}}</td></tr>
{{if .Cc}}<tr><th>Cc</th><td>{{range $i, $a := .Cc}}{{if $i}}, {{end}}{{$a}}{{end}}</td></tr>{{end}}
<tr><th>Subject</th><td>{{.Subject}}</td></tr>
<tr><th>Date</th><td>{{time .Date}}</td></tr>
</table>
{{if .Problems}}<div class="problems"><p>This message is malformed; what could be read is shown.</p><ul>{{range .Problems}}<li>{{.}}</li>{{end}}</ul></div>{{end}}
{{range .Text}}<h3>{{.ContentType}}{{if eq .ContentType "text/html"}} (shown as text){{end}}</h3>
<pre class="text">{{.Text}}</pre>{{if .Truncated}}<p>(cut short)</p>{{end}}
{{end}}
{{if .Attachments}}<h3>Attachments</h3><ul class="attachments">{{range .Attachments}}<li>{{with .Name}}{{.}}{{else}}(no name){{end}} – {{.ContentType}}, {{size .Size}}</li>{{end}}</ul>{{end}}
<details><summary>All header fields</summary><table class="header">{{range .Header}}<tr><th>{{.Name}}</th><td>{{.Value}}</td></tr>{{end}}</table></details>
{{end}}
{{if .Audit}}<h2>History</h2><table class="audit">{{range .Audit}}<tr><td>{{time .Time}}</td><td>{{.Action}}</td><td>{{.Who}}</td><td>{{range $i, $a := .Rcpts}}{{if $i}}, {{end}}{{$a}}{{end}}</td></tr>{{end}}</table>{{end}}
{{template "foot"}}{{end}}

{{define "link"}}{{template "head" "Release a message"}}
<h1>Release a held message</h1>
<table class="meta">
<tr><th>For</th><td class="for">{{.Rcpt}}</td></tr>
<tr><th>From</th><td>{{sender .Entry}}</td></tr>
<tr><th>Subject</th><td>{{with .Entry.Subject}}{{short .}}{{else}}(no subject){{end}}</td></tr>
<tr><th>Received</th><td>{{time .Entry.Time}}</td></tr>
<tr><th>Held as</th><td>{{reason .Entry.Reason}}</td></tr>
<tr><th>Status</th><td><span class="status status-{{.Status}}">{{.Status}}</span></td></tr>
</table>
{{if .Done}}
<p class="result">{{if .Changed}}{{if .Pending}}Released: the message will be delivered to {{.Rcpt}} shortly.{{else}}Released: the message was delivered to {{.Rcpt}}.{{end}}
{{else if eq (print .Status) "released" "releasing"}}This message was already released to {{.Rcpt}}.
{{else if eq (print .Status) "deleted"}}This message was deleted; it can no longer be released.
{{else if eq (print .Status) "expired"}}This message expired; it can no longer be released.
{{else}}Nothing was released.{{end}}</p>
{{else if and (eq (print .Status) "held") .Entry.HasBody}}
<p>Release this message to {{.Rcpt}}? Only release mail you trust: it was held for a reason.</p>
<form method="post" action="{{.Action}}"><button class="confirm" type="submit">Release to {{.Rcpt}}</button></form>
<p>This link works until {{time .Expires}}.</p>
{{else if eq (print .Status) "released" "releasing"}}<p class="result">This message was already released to {{.Rcpt}}.</p>
{{else if eq (print .Status) "held"}}<p class="result">This message was refused before its content arrived: there is nothing to release.</p>
{{else}}<p class="result">This message can no longer be released ({{.Status}}).</p>
{{end}}
{{template "foot"}}{{end}}

{{define "error"}}{{template "head" .Title}}
<h1>{{.Title}}</h1>
<p class="error">{{.Message}}</p>
{{template "foot"}}{{end}}
`
