// Package statuspage is the independent status page of a resilmail
// deployment: a [Poller] reads every node's health endpoints from outside
// (its /status JSON and its /metrics in the Prometheus text format, over
// HTTPS when the node serves it) and a [Handler] shows, per node, its role
// and epoch, whether it is reachable and since when, replication lag,
// queue depth and oldest message, policy version and age, quarantine
// outbox backlog and certificate expiry: as HTML readable at a glance
// (colour for state, times relative to now, refreshed by the browser, no
// script) at / and as JSON at /status.json.
//
// What a node does not report is shown as unknown, never guessed. The
// fields read are documented on [NodeStatus].
//
//	p, err := statuspage.NewPoller([]statuspage.Node{{Name: "a", URL: "https://a.example.org:8443"}}, nil)
//	go p.Run(ctx)                                    // polls every Interval
//	http.ListenAndServe(addr, statuspage.Handler(p)) // / and /status.json
//
// Goroutines: [Poller.Run] owns one goroutine per poll round and node, and
// returns when its context ends.
package statuspage

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A Node is one endpoint the page polls.
type Node struct {
	// Name is shown on the page.
	Name string
	// URL is the node's HTTP base (http://host:port or https://...),
	// under which /status and /metrics are read.
	URL string
}

// NodeStatus is what the page knows of one node. Pointers are nil when the
// node does not report the value.
//
// From /status (JSON): role, epoch; lag from lag_changes and lag_seconds,
// or the largest of replicas[].lag_changes and replicas[].lag_seconds (a
// primary), or primary_position - applied (a standby); queue_messages,
// queue_oldest_age_seconds, policy_version, policy_applied_at,
// quarantine_outbox. From /metrics: resilmail_queue_messages (summed over
// states), resilmail_queue_oldest_age_seconds, resilmail_policy_version,
// resilmail_policy_age_seconds, resilmail_quarantine_outbox_entries. From
// the TLS handshake: the certificate's expiry.
type NodeStatus struct {
	Name      string    `json:"name"`
	URL       string    `json:"url"`
	Reachable bool      `json:"reachable"`
	Since     time.Time `json:"since,omitzero"`
	Polled    time.Time `json:"polled,omitzero"`
	Error     string    `json:"error,omitempty"`

	Role          string     `json:"role,omitempty"`
	Epoch         *uint64    `json:"epoch,omitempty"`
	LagChanges    *uint64    `json:"lag_changes,omitempty"`
	LagSeconds    *float64   `json:"lag_seconds,omitempty"`
	QueueMessages *uint64    `json:"queue_messages,omitempty"`
	QueueOldest   *float64   `json:"queue_oldest_age_seconds,omitempty"`
	PolicyVersion *uint64    `json:"policy_version,omitempty"`
	PolicyAge     *float64   `json:"policy_age_seconds,omitempty"`
	OutboxBacklog *uint64    `json:"quarantine_outbox,omitempty"`
	CertNotAfter  *time.Time `json:"cert_not_after,omitempty"`
}

// Report is the whole page's data.
type Report struct {
	Generated time.Time    `json:"generated"`
	Nodes     []NodeStatus `json:"nodes"`
	// Primaries counts reachable nodes that say they are primary: the page
	// shows 1 as healthy and anything else as an alarm.
	Primaries int `json:"primaries"`
}

// Options configure a [Poller]. The zero value is usable.
type Options struct {
	// Interval between polls. Zero means 2 s.
	Interval time.Duration
	// Timeout of one node's poll. Zero means Interval.
	Timeout time.Duration
	// Client makes the requests (its TLS configuration trusts the nodes'
	// CA). Nil means a client with Timeout.
	Client *http.Client
	// Logger receives a line when a node becomes unreachable or
	// reachable. Nil means slog.Default().
	Logger *slog.Logger
}

// A Poller polls nodes and keeps their last status. It is safe for
// concurrent use.
type Poller struct {
	nodes []Node
	opts  Options
	log   *slog.Logger

	mu   sync.Mutex
	last map[string]NodeStatus
}

// NewPoller returns a poller of nodes; [Poller.Run] polls them.
func NewPoller(nodes []Node, opts *Options) (*Poller, error) {
	if opts == nil {
		opts = &Options{}
	}
	p := &Poller{nodes: slices.Clone(nodes), opts: *opts, log: opts.Logger, last: map[string]NodeStatus{}}
	seen := map[string]bool{}
	for _, n := range nodes {
		if n.Name == "" || !strings.HasPrefix(n.URL, "http://") && !strings.HasPrefix(n.URL, "https://") {
			return nil, fmt.Errorf("statuspage: node %q: needs a name and an http:// or https:// URL, got %q", n.Name, n.URL)
		}
		if seen[n.Name] {
			return nil, fmt.Errorf("statuspage: node %q twice", n.Name)
		}
		seen[n.Name] = true
	}
	if p.opts.Interval == 0 {
		p.opts.Interval = 2 * time.Second
	}
	if p.opts.Timeout == 0 {
		p.opts.Timeout = p.opts.Interval
	}
	if p.opts.Client == nil {
		p.opts.Client = &http.Client{Timeout: p.opts.Timeout}
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	return p, nil
}

// Run polls every Interval until ctx ends, then returns nil.
func (p *Poller) Run(ctx context.Context) error {
	t := time.NewTicker(p.opts.Interval)
	defer t.Stop()
	for {
		p.PollOnce(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// PollOnce polls every node once, in parallel, and returns when all have
// answered or timed out.
func (p *Poller) PollOnce(ctx context.Context) {
	var wg sync.WaitGroup
	for _, n := range p.nodes {
		wg.Go(func() {
			st := p.poll(ctx, n)
			p.mu.Lock()
			defer p.mu.Unlock()
			prev, ok := p.last[n.Name]
			st.Since = prev.Since
			if !ok || prev.Reachable != st.Reachable {
				st.Since = st.Polled
				if ok {
					p.log.Warn("statuspage: node reachability changed", "node", n.Name, "reachable", st.Reachable, "err", st.Error)
				}
			}
			p.last[n.Name] = st
		})
	}
	wg.Wait()
}

// Report returns the last status of every node, in the order given.
func (p *Poller) Report() Report {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := Report{Generated: time.Now()}
	for _, n := range p.nodes {
		st, ok := p.last[n.Name]
		if !ok {
			st = NodeStatus{Name: n.Name, URL: n.URL, Error: "not polled yet"}
		}
		if st.Reachable && st.Role == "primary" {
			r.Primaries++
		}
		r.Nodes = append(r.Nodes, st)
	}
	return r
}

func (p *Poller) poll(ctx context.Context, n Node) NodeStatus {
	st := NodeStatus{Name: n.Name, URL: n.URL}
	ctx, cancel := context.WithTimeout(ctx, p.opts.Timeout)
	defer cancel()
	var errs []error
	body, tlsState, err := p.get(ctx, n.URL+"/status")
	if err == nil {
		err = st.fromJSON(body)
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("/status: %w", err))
	}
	metrics, tls2, merr := p.get(ctx, n.URL+"/metrics")
	if merr == nil {
		st.fromMetrics(metrics)
	} else {
		errs = append(errs, fmt.Errorf("/metrics: %w", merr))
	}
	st.Polled = time.Now()
	st.Reachable = err == nil || merr == nil
	if tlsState == nil {
		tlsState = tls2
	}
	if tlsState != nil && len(tlsState.PeerCertificates) > 0 {
		na := tlsState.PeerCertificates[0].NotAfter
		st.CertNotAfter = &na
	}
	if !st.Reachable {
		st.Error = errors.Join(errs...).Error()
	}
	return st
}

var errNotFound = errors.New("not served")

func (p *Poller) get(ctx context.Context, url string) ([]byte, *tls.ConnectionState, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := p.opts.Client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, resp.TLS, err
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, resp.TLS, errNotFound
	}
	if resp.StatusCode != http.StatusOK {
		return nil, resp.TLS, fmt.Errorf("HTTP %s", resp.Status)
	}
	return b, resp.TLS, nil
}

func num(v any) (float64, bool) {
	f, ok := v.(float64)
	return f, ok && !math.IsNaN(f) && f >= 0
}

func unum(v any) *uint64 {
	if f, ok := num(v); ok {
		u := uint64(f)
		return &u
	}
	return nil
}

func fnum(v any) *float64 {
	if f, ok := num(v); ok {
		return &f
	}
	return nil
}

func (st *NodeStatus) fromJSON(b []byte) error {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if r, ok := m["role"].(string); ok {
		st.Role = r
	}
	st.Epoch = unum(m["epoch"])
	st.LagChanges, st.LagSeconds = unum(m["lag_changes"]), fnum(m["lag_seconds"])
	if reps, ok := m["replicas"].([]any); ok && st.LagChanges == nil {
		var lc uint64
		var ls float64
		for _, r := range reps {
			if rm, ok := r.(map[string]any); ok {
				if v := unum(rm["lag_changes"]); v != nil {
					lc = max(lc, *v)
				}
				if v := fnum(rm["lag_seconds"]); v != nil {
					ls = max(ls, *v)
				}
			}
		}
		if len(reps) > 0 {
			st.LagChanges, st.LagSeconds = &lc, &ls
		}
	}
	if st.LagChanges == nil {
		pp, ap := unum(m["primary_position"]), unum(m["applied"])
		if pp != nil && ap != nil {
			var d uint64
			if *pp > *ap {
				d = *pp - *ap
			}
			st.LagChanges = &d
		}
	}
	st.QueueMessages, st.QueueOldest = unum(m["queue_messages"]), fnum(m["queue_oldest_age_seconds"])
	st.PolicyVersion = unum(m["policy_version"])
	if s, ok := m["policy_applied_at"].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			age := time.Since(t).Seconds()
			st.PolicyAge = &age
		}
	}
	st.OutboxBacklog = unum(m["quarantine_outbox"])
	return nil
}

// fromMetrics fills what /status did not from the Prometheus text.
func (st *NodeStatus) fromMetrics(b []byte) {
	var queue float64
	var haveQueue bool
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
			_, rest, ok = strings.Cut(line, "} ")
		}
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err != nil || f < 0 || math.IsNaN(f) {
			continue
		}
		switch name {
		case "resilmail_queue_messages":
			queue += f
			haveQueue = true
		case "resilmail_queue_oldest_age_seconds":
			if st.QueueOldest == nil {
				st.QueueOldest = &f
			}
		case "resilmail_policy_version":
			if st.PolicyVersion == nil {
				u := uint64(f)
				st.PolicyVersion = &u
			}
		case "resilmail_policy_age_seconds":
			if st.PolicyAge == nil {
				st.PolicyAge = &f
			}
		case "resilmail_quarantine_outbox_entries":
			if st.OutboxBacklog == nil {
				u := uint64(f)
				st.OutboxBacklog = &u
			}
		}
	}
	if haveQueue && st.QueueMessages == nil {
		u := uint64(queue)
		st.QueueMessages = &u
	}
}
