package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/resilmail/resilmail/internal/bearer"
)

// The remote repository protocol (HTTPS, served by [NewHandler] under any
// path prefix, which the caller strips):
//
//	GET    blob/<name>            the blob; a "Range: bytes=a-b" header asks for part (206)
//	PUT    blob/<name>            store the blob (durable when answered 204);
//	                              "If-None-Match: *" makes it conditional (412 if it exists)
//	DELETE blob/<name>            remove it (204, also when missing)
//	GET    list?prefix=<p>        JSON [{"name": ..., "size": ...}]
//
// Every request carries "Authorization: Bearer <token>", the token derived
// from the shared secret (a file on both machines), unless the server
// verifies client certificates (mutual TLS) and was given no secret.
// Errors: 400 bad name, 401, 404 missing blob, 412 exists, 413 too large,
// 500 with a short text.

// tokenLabel names the remote target's token among those derived from a
// shared secret.
const tokenLabel = "resilmail/backup target token 1"

// HandlerOptions configure [NewHandler].
type HandlerOptions struct {
	// Secret, if not nil, is the shared secret whose derived token every
	// request must carry. Nil: the server must verify client certificates
	// (tls.RequireAndVerifyClientCert), and a request without a verified
	// certificate is refused.
	Secret []byte
	// MaxBlob is the largest blob a PUT may carry; zero means 256 MiB.
	MaxBlob int64
	// Logger receives a line per refused or failed request; nil means
	// slog.Default().
	Logger *slog.Logger
}

// NewHandler returns the HTTP handler of a remote repository that stores
// its blobs in t (a [Folder] on the backup machine). It is the "separate
// system" of a deployment: the mail servers back up to it over HTTPS.
func NewHandler(t Target, opts *HandlerOptions) http.Handler {
	var o HandlerOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxBlob == 0 {
		o.MaxBlob = 256 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	token := ""
	if o.Secret != nil {
		token = bearer.Token(o.Secret, tokenLabel)
	}
	return &handler{t: t, o: o, token: token}
}

type handler struct {
	t     Target
	o     HandlerOptions
	token string
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.token != "" {
		if err := bearer.Check(r, h.token); err != nil {
			h.o.Logger.Warn("backup: remote request refused", "remote", r.RemoteAddr, "err", err)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
	} else if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		h.o.Logger.Warn("backup: remote request without a verified client certificate refused", "remote", r.RemoteAddr)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	ctx := r.Context()
	path := strings.TrimPrefix(r.URL.Path, "/")
	switch {
	case path == "list" && r.Method == http.MethodGet:
		list, err := h.t.List(ctx, r.URL.Query().Get("prefix"))
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if list == nil {
			list = []BlobInfo{}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(list)
	case strings.HasPrefix(path, "blob/"):
		name := strings.TrimPrefix(path, "blob/")
		if err := ValidName(name); err != nil {
			h.fail(w, r, err)
			return
		}
		switch r.Method {
		case http.MethodGet:
			off, length, err := parseRange(r.Header.Get("Range"))
			if err != nil {
				http.Error(w, err.Error(), http.StatusRequestedRangeNotSatisfiable)
				return
			}
			b, err := h.t.Get(ctx, name, off, length)
			if err != nil {
				h.fail(w, r, err)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			if r.Header.Get("Range") != "" {
				w.WriteHeader(http.StatusPartialContent)
			}
			w.Write(b)
		case http.MethodPut:
			if r.ContentLength > h.o.MaxBlob {
				http.Error(w, "blob too large", http.StatusRequestEntityTooLarge)
				return
			}
			b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.o.MaxBlob))
			if err != nil {
				var mbe *http.MaxBytesError
				if errors.As(err, &mbe) {
					http.Error(w, "blob too large", http.StatusRequestEntityTooLarge)
					return
				}
				http.Error(w, "reading the blob failed", http.StatusBadRequest)
				return
			}
			if r.Header.Get("If-None-Match") == "*" {
				err = h.t.PutIfAbsent(ctx, name, b)
			} else {
				err = h.t.Put(ctx, name, b)
			}
			if err != nil {
				h.fail(w, r, err)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		case http.MethodDelete:
			if err := h.t.Delete(ctx, name); err != nil {
				h.fail(w, r, err)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		default:
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		}
	default:
		http.NotFound(w, r)
	}
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrNotExist):
		http.Error(w, "no such blob", http.StatusNotFound)
	case errors.Is(err, ErrExists):
		http.Error(w, "blob exists", http.StatusPreconditionFailed)
	case errors.Is(err, ErrBadName):
		http.Error(w, "bad blob name", http.StatusBadRequest)
	default:
		h.o.Logger.Error("backup: remote request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		http.Error(w, "storage failed", http.StatusInternalServerError)
	}
}

// parseRange parses "bytes=a-b" (or nothing: the whole blob).
func parseRange(s string) (off, length int64, err error) {
	if s == "" {
		return 0, -1, nil
	}
	a, b, ok := strings.Cut(strings.TrimPrefix(s, "bytes="), "-")
	if !ok || !strings.HasPrefix(s, "bytes=") {
		return 0, 0, fmt.Errorf("bad range %q", s)
	}
	off, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || off < 0 || end < off-1 {
		return 0, 0, fmt.Errorf("bad range %q", s)
	}
	return off, end - off + 1, nil
}

// Remote is a [Target] on another machine, served by [NewHandler] over
// HTTPS. Plain HTTP is allowed to a loopback address only (tests).
type Remote struct {
	base   *url.URL
	token  string
	client *http.Client
}

var _ Target = (*Remote)(nil)

// NewRemote returns the Remote at base (for example
// "https://backup.example.net:8443/repo/"). secret is the shared secret
// (nil when client is configured with a client certificate instead);
// client nil means http.DefaultClient.
func NewRemote(base string, secret []byte, client *http.Client) (*Remote, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("backup: remote %q: %w", base, err)
	}
	switch u.Scheme {
	case "https":
	case "http":
		ip := net.ParseIP(u.Hostname())
		if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("backup: remote %q: plain HTTP is allowed to loopback only", base)
		}
	default:
		return nil, fmt.Errorf("backup: remote %q: not an https URL", base)
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	if client == nil {
		client = http.DefaultClient
	}
	r := &Remote{base: u, client: client}
	if secret != nil {
		r.token = bearer.Token(secret, tokenLabel)
	}
	return r, nil
}

func (r *Remote) do(ctx context.Context, method, rel string, body []byte, hdr map[string]string) (*http.Response, error) {
	rel, query, _ := strings.Cut(rel, "?")
	u := r.base.JoinPath(rel)
	u.RawQuery = query
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	if r.token != "" {
		req.Header.Set("Authorization", bearer.Header(r.token))
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("backup: remote %s %s: %w", method, rel, err)
	}
	return resp, nil
}

// status turns a response's status into the Target's errors.
func status(resp *http.Response, what string) error {
	switch resp.StatusCode {
	case http.StatusOK, http.StatusNoContent, http.StatusPartialContent:
		return nil
	case http.StatusNotFound:
		return fmt.Errorf("%w: %s", ErrNotExist, what)
	case http.StatusPreconditionFailed:
		return fmt.Errorf("%w: %s", ErrExists, what)
	case http.StatusBadRequest:
		return fmt.Errorf("%w: %s", ErrBadName, what)
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	return fmt.Errorf("backup: remote %s: %s: %s", what, resp.Status, strings.TrimSpace(string(msg)))
}

// Put implements [Target].
func (r *Remote) Put(ctx context.Context, name string, data []byte) error {
	return r.put(ctx, name, data, nil)
}

// PutIfAbsent implements [Target] with "If-None-Match: *".
func (r *Remote) PutIfAbsent(ctx context.Context, name string, data []byte) error {
	return r.put(ctx, name, data, map[string]string{"If-None-Match": "*"})
}

func (r *Remote) put(ctx context.Context, name string, data []byte, hdr map[string]string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	resp, err := r.do(ctx, http.MethodPut, "blob/"+name, data, hdr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return status(resp, "put "+name)
}

// Get implements [Target].
func (r *Remote) Get(ctx context.Context, name string, off, length int64) ([]byte, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	var hdr map[string]string
	if off != 0 || length >= 0 {
		if length < 0 {
			return nil, fmt.Errorf("backup: remote get %s: an offset needs a length", name)
		}
		if length == 0 {
			return []byte{}, nil
		}
		hdr = map[string]string{"Range": fmt.Sprintf("bytes=%d-%d", off, off+length-1)}
	}
	resp, err := r.do(ctx, http.MethodGet, "blob/"+name, nil, hdr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := status(resp, "get "+name); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("backup: remote get %s: %w", name, err)
	}
	if length >= 0 && int64(len(b)) != length {
		return nil, fmt.Errorf("backup: remote get %s: %d bytes, asked for %d", name, len(b), length)
	}
	return b, nil
}

// List implements [Target].
func (r *Remote) List(ctx context.Context, prefix string) ([]BlobInfo, error) {
	resp, err := r.do(ctx, http.MethodGet, "list?prefix="+url.QueryEscape(prefix), nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := status(resp, "list "+prefix); err != nil {
		return nil, err
	}
	var out []BlobInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<30)).Decode(&out); err != nil {
		return nil, fmt.Errorf("backup: remote list %s: %w", prefix, err)
	}
	return out, nil
}

// Delete implements [Target].
func (r *Remote) Delete(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	resp, err := r.do(ctx, http.MethodDelete, "blob/"+name, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return status(resp, "delete "+name)
}
