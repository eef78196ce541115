package failover

import (
	"bytes"
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
	"sync"

	"github.com/resilmail/resilmail"
)

// MemberHandler serves m's methods over HTTP, so that a [Switchover] run on
// one machine can drive a [Member] on another through a [RemoteMember].
// It checks no credential: serve it only behind the operator's
// authentication (and TLS between machines). The paths, relative to where
// it is mounted:
//
//	GET  /position            the Position, as JSON
//	POST /drain               Drain; the resume function is kept
//	POST /resume              calls the kept resume function
//	POST /wait                WaitCaughtUp to the Position in the body
//	POST /promote?epoch=N     Promote
//	POST /demote?epoch=N      Demote
//	POST /follow?primary=NAME Follow
//
// A failure answers 409 with {"error": "..."}. Each call runs under the
// request's context, so a client that gives up (its deadline) cancels it.
func MemberHandler(m Member, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	var mu sync.Mutex
	var resume func(context.Context) error
	answer := func(w http.ResponseWriter, v any, err error) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if err != nil {
			w.WriteHeader(http.StatusConflict)
			json.NewEncoder(w).Encode(struct {
				Error string `json:"error"`
			}{err.Error()})
			return
		}
		if v == nil {
			v = struct{}{}
		}
		json.NewEncoder(w).Encode(v)
	}
	epoch := func(r *http.Request, zero bool) (resilmail.Epoch, error) {
		e, err := strconv.ParseUint(r.URL.Query().Get("epoch"), 10, 64)
		if err != nil || (e == 0 && !zero) {
			return 0, fmt.Errorf("want ?epoch=N (a promotion's above 0), got %q", r.URL.Query().Get("epoch"))
		}
		return resilmail.Epoch(e), nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /position", func(w http.ResponseWriter, r *http.Request) {
		p, err := m.Position(r.Context())
		answer(w, p, err)
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		res, err := m.Drain(r.Context())
		if err == nil {
			mu.Lock()
			resume = res
			mu.Unlock()
		}
		log.Warn("failover: remote switchover step", "node", m.Name(), "step", StepDrain, "err", err)
		answer(w, nil, err)
	})
	mux.HandleFunc("POST /resume", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		res := resume
		resume = nil
		mu.Unlock()
		var err error
		if res == nil {
			err = errors.New("not drained")
		} else {
			err = res(r.Context())
		}
		log.Warn("failover: remote switchover step", "node", m.Name(), "step", StepResume, "err", err)
		answer(w, nil, err)
	})
	mux.HandleFunc("POST /wait", func(w http.ResponseWriter, r *http.Request) {
		var p Position
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&p); err != nil {
			answer(w, nil, fmt.Errorf("want a position as JSON: %w", err))
			return
		}
		answer(w, nil, m.WaitCaughtUp(r.Context(), p))
	})
	mux.HandleFunc("POST /promote", func(w http.ResponseWriter, r *http.Request) {
		e, err := epoch(r, false)
		if err == nil {
			err = m.Promote(r.Context(), e)
		}
		log.Warn("failover: remote switchover step", "node", m.Name(), "step", StepPromote, "epoch", uint64(e), "err", err)
		answer(w, nil, err)
	})
	mux.HandleFunc("POST /demote", func(w http.ResponseWriter, r *http.Request) {
		e, err := epoch(r, true)
		if err == nil {
			err = m.Demote(r.Context(), e)
		}
		log.Warn("failover: remote switchover step", "node", m.Name(), "step", StepDemote, "epoch", uint64(e), "err", err)
		answer(w, nil, err)
	})
	mux.HandleFunc("POST /follow", func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Query().Get("primary")
		var err error
		if p == "" {
			err = errors.New("want ?primary=NAME")
		} else {
			err = m.Follow(r.Context(), p)
		}
		log.Warn("failover: remote switchover step", "node", m.Name(), "step", StepFollow, "primary", p, "err", err)
		answer(w, nil, err)
	})
	return mux
}

// RemoteMemberOptions configure a [RemoteMember]. The zero value is usable.
type RemoteMemberOptions struct {
	// Client makes the requests. Nil means http.DefaultClient; each call
	// is bounded by its context (a Switchover's step timeout).
	Client *http.Client
	// Header is added to every request (an operator's Authorization).
	Header http.Header
}

// A RemoteMember is a [Member] on another machine, reached through the
// [MemberHandler] served at a base URL. It is safe for concurrent use.
type RemoteMember struct {
	name string
	base string
	opts RemoteMemberOptions
}

var _ Member = (*RemoteMember)(nil)

// NewRemoteMember returns the member called name whose [MemberHandler] is
// served at base (for example "https://mail2:8026/operator/member"). It
// does no I/O.
func NewRemoteMember(name, base string, opts *RemoteMemberOptions) *RemoteMember {
	m := &RemoteMember{name: name, base: strings.TrimSuffix(base, "/")}
	if opts != nil {
		m.opts = *opts
	}
	if m.opts.Client == nil {
		m.opts.Client = http.DefaultClient
	}
	return m
}

// Name returns the member's name.
func (m *RemoteMember) Name() string { return m.name }

func (m *RemoteMember) call(ctx context.Context, method, path string, q url.Values, body, out any) error {
	u := m.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	for k, v := range m.opts.Header {
		req.Header[k] = v
	}
	resp, err := m.opts.Client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", m.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s: %w", m.name, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s: %s", m.name, e.Error)
		}
		return fmt.Errorf("%s: %s %s: %s", m.name, method, path, resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s: %s: %w", m.name, path, err)
		}
	}
	return nil
}

// Drain drains the remote member; resume undoes it.
func (m *RemoteMember) Drain(ctx context.Context) (func(context.Context) error, error) {
	if err := m.call(ctx, http.MethodPost, "/drain", nil, nil, nil); err != nil {
		return nil, err
	}
	return func(ctx context.Context) error { return m.call(ctx, http.MethodPost, "/resume", nil, nil, nil) }, nil
}

// Position reads the remote member's position.
func (m *RemoteMember) Position(ctx context.Context) (Position, error) {
	var p Position
	err := m.call(ctx, http.MethodGet, "/position", nil, nil, &p)
	return p, err
}

// WaitCaughtUp waits until the remote member holds pos.
func (m *RemoteMember) WaitCaughtUp(ctx context.Context, pos Position) error {
	return m.call(ctx, http.MethodPost, "/wait", nil, pos, nil)
}

// Promote promotes the remote member at epoch.
func (m *RemoteMember) Promote(ctx context.Context, epoch resilmail.Epoch) error {
	return m.call(ctx, http.MethodPost, "/promote", url.Values{"epoch": {strconv.FormatUint(uint64(epoch), 10)}}, nil, nil)
}

// Demote demotes the remote member at epoch.
func (m *RemoteMember) Demote(ctx context.Context, epoch resilmail.Epoch) error {
	return m.call(ctx, http.MethodPost, "/demote", url.Values{"epoch": {strconv.FormatUint(uint64(epoch), 10)}}, nil, nil)
}

// Follow makes the remote member follow primary.
func (m *RemoteMember) Follow(ctx context.Context, primary string) error {
	return m.call(ctx, http.MethodPost, "/follow", url.Values{"primary": {primary}}, nil, nil)
}
