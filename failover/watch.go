package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/resilmail/resilmail"
)

// A WatchedNode is a mailbox server whose role a [Watcher] reads.
type WatchedNode struct {
	// Name names the node (as its Deliverer or Backend is known).
	Name string
	// StatusURL answers GET with a JSON object carrying "role" and
	// "epoch" (the example programs' /status).
	StatusURL string
}

// WatcherOptions configure a [Watcher]. The zero value is usable.
type WatcherOptions struct {
	// Interval between polls. Zero means 1 s.
	Interval time.Duration
	// Client makes the requests. Nil means a client with a timeout of
	// Interval.
	Client *http.Client
	// OnChange is called (from the Watcher's goroutine) when the active
	// node changes; name is empty when none is.
	OnChange func(name string, epoch resilmail.Epoch)
	// Logger receives a line per change. Nil means slog.Default().
	Logger *slog.Logger
}

// A Watcher follows which node is primary, for those that send work to it
// (a relay's LMTP deliveries, the client [Proxy]) and cannot hold a lease
// themselves: it polls each node's status and takes as active the
// reachable node that says it is primary with the highest epoch (a lower
// one is fenced by the stores and about to learn it). It is safe for
// concurrent use.
type Watcher struct {
	nodes []WatchedNode
	opts  WatcherOptions
	log   *slog.Logger

	mu     sync.Mutex
	active string
	epoch  resilmail.Epoch
}

// NewWatcher returns a watcher of nodes; [Watcher.Run] polls them.
func NewWatcher(nodes []WatchedNode, opts *WatcherOptions) *Watcher {
	if opts == nil {
		opts = &WatcherOptions{}
	}
	w := &Watcher{nodes: slices.Clone(nodes), opts: *opts, log: opts.Logger}
	if w.opts.Interval == 0 {
		w.opts.Interval = time.Second
	}
	if w.opts.Client == nil {
		w.opts.Client = &http.Client{Timeout: w.opts.Interval}
	}
	if w.log == nil {
		w.log = slog.Default()
	}
	return w
}

// Active returns the active node's name and epoch; ok is false when no
// node is known to be primary.
func (w *Watcher) Active() (name string, epoch resilmail.Epoch, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.active, w.epoch, w.active != ""
}

// Run polls until ctx ends, then returns nil.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.opts.Interval)
	defer t.Stop()
	for {
		w.PollOnce(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// PollOnce polls every node once and updates the active node.
func (w *Watcher) PollOnce(ctx context.Context) {
	type answer struct {
		role  string
		epoch resilmail.Epoch
		err   error
	}
	answers := make([]answer, len(w.nodes))
	var wg sync.WaitGroup
	for i, n := range w.nodes {
		wg.Go(func() {
			var a answer
			a.role, a.epoch, a.err = w.poll(ctx, n)
			answers[i] = a
		})
	}
	wg.Wait()
	var best string
	var bestEpoch resilmail.Epoch
	for i, a := range answers {
		if a.err == nil && a.role == RolePrimary.String() && (best == "" || a.epoch > bestEpoch) {
			best, bestEpoch = w.nodes[i].Name, a.epoch
		}
	}
	w.mu.Lock()
	changed := best != w.active || bestEpoch != w.epoch
	w.active, w.epoch = best, bestEpoch
	w.mu.Unlock()
	if changed {
		w.log.Info("failover: active node", "node", best, "epoch", bestEpoch)
		if w.opts.OnChange != nil {
			w.opts.OnChange(best, bestEpoch)
		}
	}
}

func (w *Watcher) poll(ctx context.Context, n WatchedNode) (string, resilmail.Epoch, error) {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Interval)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.StatusURL, nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := w.opts.Client.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("status %s", resp.Status)
	}
	var st struct {
		Role  string          `json:"role"`
		Epoch resilmail.Epoch `json:"epoch"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
		return "", 0, err
	}
	return st.Role, st.Epoch, nil
}

// FollowDeliverer returns a [resilmail.Deliverer] that hands each message
// to the deliverer of the node active now (as active says), so that a
// relay delivers to whichever node is primary. With no active node, or one
// without a deliverer, it fails temporarily: the queue keeps the message
// and tries again.
func FollowDeliverer(active func() (string, bool), by map[string]resilmail.Deliverer) resilmail.Deliverer {
	return resilmail.DelivererFunc(func(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
		name, ok := active()
		d := by[name]
		if !ok || d == nil {
			return &resilmail.DeliveryError{Command: "connect", Code: 451, EnhancedCode: "4.4.1", Message: "no primary mail server is active; kept queued"}
		}
		return d.Deliver(ctx, env, body)
	})
}
