package replicate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/resilmail/resilmail/internal/bearer"

	"github.com/resilmail/resilmail"
)

// InventoryPurpose labels the bearer token of the inventory API: the token
// is HMAC-SHA256(secret, InventoryPurpose), so that a secret shared by
// several APIs gives each its own token.
const InventoryPurpose = "resilmail/replicate/inventory/v1"

// MaxInventoryRange is the most messages one MessageRange request of the
// inventory API may ask for.
const MaxInventoryRange = 10_000

// InventoryToken returns the bearer token the inventory API expects for
// secret: hex(HMAC-SHA256(secret, InventoryPurpose)).
func InventoryToken(secret []byte) string {
	return bearer.Token(secret, InventoryPurpose)
}

// InventoryHandler returns the HTTP API a primary serves so that replicas
// compare with it through [NewRemoteInventory]. Mounted at a base URL, it
// answers GET requests with JSON:
//
//	/users                                         {"users": [...]}
//	/mailboxes?user=U                              {"mailboxes": [MailboxState...]}
//	/subscriptions?user=U                          {"subscriptions": [...]}
//	/digest?user=U&mailbox=ID&lo=L&hi=H            {"digest": "hex", "count": N}
//	/messages?user=U&mailbox=ID&lo=L&hi=H&limit=N  {"messages": [MessageState...]}
//
// Errors are {"error": "...", "code": "..."} with status 400 (bad
// request), 401 (not authenticated), 404 (no such user or mailbox, code
// "not_found") or 500. It refuses a request without a valid token before
// reading anything else.
func InventoryHandler(inv Inventory, opts *InventoryHandlerOptions) (http.Handler, error) {
	var o InventoryHandlerOptions
	if opts != nil {
		o = *opts
	}
	if len(o.Secret) == 0 && o.Authenticate == nil {
		return nil, errors.New("replicate: inventory handler needs a Secret or an Authenticate hook")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	h := &inventoryHandler{inv: inv, opts: o, token: InventoryToken(o.Secret)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users", h.users)
	mux.HandleFunc("GET /mailboxes", h.mailboxes)
	mux.HandleFunc("GET /subscriptions", h.subscriptions)
	mux.HandleFunc("GET /digest", h.digest)
	mux.HandleFunc("GET /messages", h.messages)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.authenticate(r); err != nil {
			o.Logger.Warn("replicate: inventory request refused", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
			writeError(w, http.StatusUnauthorized, "unauthorized", "not authenticated")
			return
		}
		mux.ServeHTTP(w, r)
	}), nil
}

type inventoryHandler struct {
	inv   Inventory
	opts  InventoryHandlerOptions
	token string
}

func (h *inventoryHandler) authenticate(r *http.Request) error {
	if h.opts.Authenticate != nil {
		return h.opts.Authenticate(r)
	}
	return bearer.Check(r, h.token)
}

type errorResponse struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(errorResponse{Error: msg, Code: code})
}

func (h *inventoryHandler) reply(w http.ResponseWriter, r *http.Request, v any, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case err != nil:
		h.opts.Logger.Error("replicate: inventory request failed", "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
	default:
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(v); err != nil {
			h.opts.Logger.Warn("replicate: writing inventory response", "path", r.URL.Path, "err", err)
		}
	}
}

func (h *inventoryHandler) badRequest(w http.ResponseWriter, r *http.Request, err error) {
	h.opts.Logger.Warn("replicate: bad inventory request", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusBadRequest, "bad_request", err.Error())
}

// params parses the query parameters a request needs.
type params struct {
	user   string
	id     resilmail.MailboxID
	lo, hi uint32
	limit  int
}

func parseParams(q url.Values, mailbox, rng, limit bool) (params, error) {
	var p params
	p.user = q.Get("user")
	if err := checkName("user", p.user, resilmail.MaxUserLen); err != nil {
		return p, err
	}
	if mailbox {
		id, err := resilmail.ParseMailboxID(q.Get("mailbox"))
		if err != nil {
			return p, err
		}
		p.id = id
	}
	if rng {
		for _, f := range []struct {
			name string
			v    *uint32
		}{{"lo", &p.lo}, {"hi", &p.hi}} {
			n, err := strconv.ParseUint(q.Get(f.name), 10, 32)
			if err != nil {
				return p, fmt.Errorf("parameter %s: %w", f.name, err)
			}
			*f.v = uint32(n)
		}
	}
	if limit {
		n, err := strconv.Atoi(q.Get("limit"))
		if err != nil || n < 1 || n > MaxInventoryRange {
			return p, fmt.Errorf("parameter limit %q is not between 1 and %d", q.Get("limit"), MaxInventoryRange)
		}
		p.limit = n
	}
	return p, nil
}

func (h *inventoryHandler) users(w http.ResponseWriter, r *http.Request) {
	users, err := h.inv.Users(r.Context())
	h.reply(w, r, usersResponse{Users: users}, err)
}

func (h *inventoryHandler) mailboxes(w http.ResponseWriter, r *http.Request) {
	p, err := parseParams(r.URL.Query(), false, false, false)
	if err != nil {
		h.badRequest(w, r, err)
		return
	}
	l, err := h.inv.Mailboxes(r.Context(), p.user)
	h.reply(w, r, mailboxesResponse{Mailboxes: l}, err)
}

func (h *inventoryHandler) subscriptions(w http.ResponseWriter, r *http.Request) {
	p, err := parseParams(r.URL.Query(), false, false, false)
	if err != nil {
		h.badRequest(w, r, err)
		return
	}
	l, err := h.inv.Subscriptions(r.Context(), p.user)
	h.reply(w, r, subscriptionsResponse{Subscriptions: l}, err)
}

func (h *inventoryHandler) digest(w http.ResponseWriter, r *http.Request) {
	p, err := parseParams(r.URL.Query(), true, true, false)
	if err != nil {
		h.badRequest(w, r, err)
		return
	}
	d, n, err := h.inv.DigestRange(r.Context(), p.user, p.id, p.lo, p.hi)
	h.reply(w, r, digestResponse{Digest: d, Count: n}, err)
}

func (h *inventoryHandler) messages(w http.ResponseWriter, r *http.Request) {
	p, err := parseParams(r.URL.Query(), true, true, true)
	if err != nil {
		h.badRequest(w, r, err)
		return
	}
	l, err := h.inv.MessageRange(r.Context(), p.user, p.id, p.lo, p.hi, p.limit)
	h.reply(w, r, messagesResponse{Messages: l}, err)
}

type usersResponse struct {
	Users []string `json:"users"`
}

type mailboxesResponse struct {
	Mailboxes []MailboxState `json:"mailboxes"`
}

type subscriptionsResponse struct {
	Subscriptions []string `json:"subscriptions"`
}

type digestResponse struct {
	Digest SetDigest `json:"digest"`
	Count  int       `json:"count"`
}

type messagesResponse struct {
	Messages []MessageState `json:"messages"`
}

// checkName checks a user or mailbox name or a flag from the other side:
// not empty, at most maxLen bytes, UTF-8, no control characters.
func checkName(what, s string, maxLen int) error {
	if s == "" {
		return fmt.Errorf("empty %s", what)
	}
	if len(s) > maxLen {
		return fmt.Errorf("%s longer than %d bytes", what, maxLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not UTF-8", what)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("%s contains a control character", what)
	}
	return nil
}

// checkSortedNames checks a sorted list of distinct names.
func checkSortedNames(what string, l []string, maxLen int) error {
	for i, s := range l {
		if err := checkName(what, s, maxLen); err != nil {
			return err
		}
		if i > 0 && l[i-1] >= s {
			return fmt.Errorf("%ss not sorted and distinct at %q", what, s)
		}
	}
	return nil
}

func badAnswer(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadInventory, fmt.Sprintf(format, args...))
}

func decodeJSON(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return badAnswer("%v", err)
	}
	return nil
}

func decodeUsers(b []byte) ([]string, error) {
	var r usersResponse
	if err := decodeJSON(b, &r); err != nil {
		return nil, err
	}
	if err := checkSortedNames("user", r.Users, resilmail.MaxUserLen); err != nil {
		return nil, badAnswer("%v", err)
	}
	return r.Users, nil
}

func decodeSubscriptions(b []byte) ([]string, error) {
	var r subscriptionsResponse
	if err := decodeJSON(b, &r); err != nil {
		return nil, err
	}
	if err := checkSortedNames("subscription", r.Subscriptions, resilmail.MaxMailboxLen); err != nil {
		return nil, badAnswer("%v", err)
	}
	return r.Subscriptions, nil
}

func decodeMailboxes(b []byte) ([]MailboxState, error) {
	var r mailboxesResponse
	if err := decodeJSON(b, &r); err != nil {
		return nil, err
	}
	ids := make(map[resilmail.MailboxID]bool, len(r.Mailboxes))
	for i := range r.Mailboxes {
		m := &r.Mailboxes[i]
		if err := checkName("mailbox name", m.Name, resilmail.MaxMailboxLen); err != nil {
			return nil, badAnswer("%v", err)
		}
		switch {
		case i > 0 && r.Mailboxes[i-1].Name >= m.Name:
			return nil, badAnswer("mailboxes not sorted and distinct at %q", m.Name)
		case m.ID.IsZero() || ids[m.ID]:
			return nil, badAnswer("mailbox %q has a zero or repeated id", m.Name)
		case m.UIDValidity == 0 || m.UIDNext == 0:
			return nil, badAnswer("mailbox %q has a zero UIDVALIDITY or UIDNEXT", m.Name)
		case m.Messages < 0 || m.Size < 0 || m.Corrupt < 0 || m.Corrupt > m.Messages || uint64(m.Messages) >= uint64(m.UIDNext):
			return nil, badAnswer("mailbox %q has impossible counts", m.Name)
		}
		ids[m.ID] = true
	}
	return r.Mailboxes, nil
}

func decodeDigest(b []byte) (SetDigest, int, error) {
	var r digestResponse
	if err := decodeJSON(b, &r); err != nil {
		return SetDigest{}, 0, err
	}
	if r.Count < 0 {
		return SetDigest{}, 0, badAnswer("negative count %d", r.Count)
	}
	return r.Digest, r.Count, nil
}

func decodeMessages(b []byte, lo, hi uint32, limit int) ([]MessageState, error) {
	var r messagesResponse
	if err := decodeJSON(b, &r); err != nil {
		return nil, err
	}
	if len(r.Messages) > limit {
		return nil, badAnswer("%d messages, more than the %d asked", len(r.Messages), limit)
	}
	for i := range r.Messages {
		m := &r.Messages[i]
		switch {
		case m.UID < lo || m.UID > hi || m.UID == 0:
			return nil, badAnswer("UID %d outside [%d, %d]", m.UID, lo, hi)
		case i > 0 && r.Messages[i-1].UID >= m.UID:
			return nil, badAnswer("UIDs not ascending at %d", m.UID)
		case m.Digest.IsZero() || m.Size < 0:
			return nil, badAnswer("UID %d has no digest or a negative size", m.UID)
		case len(m.Flags) > resilmail.MaxFlags:
			return nil, badAnswer("UID %d has %d flags", m.UID, len(m.Flags))
		}
		for _, f := range m.Flags {
			if err := checkName("flag", f, resilmail.MaxFlagLen); err != nil {
				return nil, badAnswer("UID %d: %v", m.UID, err)
			}
		}
		if !m.InternalDate.IsZero() {
			m.InternalDate = m.InternalDate.UTC()
		}
	}
	return r.Messages, nil
}

// A RemoteInventory is an [Inventory] reached over HTTP, served by
// [InventoryHandler]. It checks every answer (sizes, order, ranges, names)
// and returns an error wrapping ErrBadInventory for one that breaks the
// contract, never the bad data. It is safe for concurrent use.
type RemoteInventory struct {
	base   *url.URL
	token  string
	client *http.Client
	max    int64
}

var _ Inventory = (*RemoteInventory)(nil)

// NewRemoteInventory returns an Inventory that asks the inventory API at
// baseURL (http or https). It does no I/O.
func NewRemoteInventory(baseURL string, opts *RemoteInventoryOptions) (*RemoteInventory, error) {
	var o RemoteInventoryOptions
	if opts != nil {
		o = *opts
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("replicate: remote inventory URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("replicate: remote inventory URL %q is not an http or https URL with a host", baseURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	ri := &RemoteInventory{base: u, client: o.Client, max: o.MaxResponseBytes}
	if len(o.Secret) > 0 {
		ri.token = InventoryToken(o.Secret)
	}
	if ri.client == nil {
		ri.client = &http.Client{Timeout: 30 * time.Second}
	}
	if ri.max <= 0 {
		ri.max = 64 << 20
	}
	return ri, nil
}

// get sends a GET request and returns the body of a 200 answer.
func (ri *RemoteInventory) get(ctx context.Context, path string, q url.Values) ([]byte, error) {
	u := *ri.base
	u.Path += path
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("replicate: remote inventory: %w", err)
	}
	if ri.token != "" {
		req.Header.Set("Authorization", bearer.Header(ri.token))
	}
	resp, err := ri.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("replicate: remote inventory: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, ri.max+1))
	if err != nil {
		return nil, fmt.Errorf("replicate: remote inventory %s: %w", path, err)
	}
	if int64(len(b)) > ri.max {
		return nil, fmt.Errorf("replicate: remote inventory %s: %w", path, badAnswer("response longer than %d bytes", ri.max))
	}
	if resp.StatusCode != http.StatusOK {
		var e errorResponse
		json.Unmarshal(b, &e)
		msg := e.Error
		if msg == "" {
			msg = strconv.Quote(string(b[:min(len(b), 200)]))
		}
		err := fmt.Errorf("replicate: remote inventory %s: %s: %s", path, resp.Status, msg)
		if resp.StatusCode == http.StatusNotFound && e.Code == "not_found" {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, err
	}
	return b, nil
}

func userQuery(user string) url.Values { return url.Values{"user": {user}} }

func rangeQuery(user string, id resilmail.MailboxID, lo, hi uint32) url.Values {
	return url.Values{"user": {user}, "mailbox": {id.String()},
		"lo": {strconv.FormatUint(uint64(lo), 10)}, "hi": {strconv.FormatUint(uint64(hi), 10)}}
}

func wrapRemote(path string, err error) error {
	if err != nil {
		return fmt.Errorf("replicate: remote inventory %s: %w", path, err)
	}
	return nil
}

// Users implements [Inventory].
func (ri *RemoteInventory) Users(ctx context.Context) ([]string, error) {
	b, err := ri.get(ctx, "/users", nil)
	if err != nil {
		return nil, err
	}
	l, err := decodeUsers(b)
	return l, wrapRemote("/users", err)
}

// Mailboxes implements [Inventory].
func (ri *RemoteInventory) Mailboxes(ctx context.Context, user string) ([]MailboxState, error) {
	b, err := ri.get(ctx, "/mailboxes", userQuery(user))
	if err != nil {
		return nil, err
	}
	l, err := decodeMailboxes(b)
	return l, wrapRemote("/mailboxes", err)
}

// Subscriptions implements [Inventory].
func (ri *RemoteInventory) Subscriptions(ctx context.Context, user string) ([]string, error) {
	b, err := ri.get(ctx, "/subscriptions", userQuery(user))
	if err != nil {
		return nil, err
	}
	l, err := decodeSubscriptions(b)
	return l, wrapRemote("/subscriptions", err)
}

// DigestRange implements [Inventory].
func (ri *RemoteInventory) DigestRange(ctx context.Context, user string, id resilmail.MailboxID, lo, hi uint32) (SetDigest, int, error) {
	b, err := ri.get(ctx, "/digest", rangeQuery(user, id, lo, hi))
	if err != nil {
		return SetDigest{}, 0, err
	}
	d, n, err := decodeDigest(b)
	return d, n, wrapRemote("/digest", err)
}

// MessageRange implements [Inventory]; it asks for at most
// MaxInventoryRange messages per request.
func (ri *RemoteInventory) MessageRange(ctx context.Context, user string, id resilmail.MailboxID, lo, hi uint32, limit int) ([]MessageState, error) {
	if limit < 1 {
		return nil, fmt.Errorf("replicate: message range limit %d is below 1", limit)
	}
	var out []MessageState
	for lo <= hi && len(out) < limit {
		n := min(limit-len(out), MaxInventoryRange)
		q := rangeQuery(user, id, lo, hi)
		q.Set("limit", strconv.Itoa(n))
		b, err := ri.get(ctx, "/messages", q)
		if err != nil {
			return nil, err
		}
		page, err := decodeMessages(b, lo, hi, n)
		if err != nil {
			return nil, wrapRemote("/messages", err)
		}
		out = append(out, page...)
		if len(page) < n || page[len(page)-1].UID == hi {
			break
		}
		lo = page[len(page)-1].UID + 1
	}
	return out, nil
}
