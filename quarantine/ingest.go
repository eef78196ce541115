package quarantine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/resilmail/resilmail/internal/bearer"
)

// IngestVersion is the version of the ingest response ([IngestResponse]).
const IngestVersion = 1

// batchHeader carries a batch's id in a request, for the logs of both ends.
const batchHeader = "Resilmail-Batch"

// IngestStatus is the centre's verdict on one item of a batch.
type IngestStatus string

// The verdicts. The edge forgets an entry after IngestStored, keeps it
// aside (and logs it) after IngestInvalid or IngestConflict, and sends it
// again later after IngestRetry.
const (
	// IngestStored: the entry is on stable storage at the centre, stored
	// now or already before with the same digest.
	IngestStored IngestStatus = "stored"
	// IngestInvalid: the entry is malformed, its body does not match its
	// digest, or it is over a size limit; sending it again cannot help.
	IngestInvalid IngestStatus = "invalid"
	// IngestConflict: the centre holds this entry id with another digest.
	IngestConflict IngestStatus = "conflict"
	// IngestRetry: the entry was not stored (a storage problem at the
	// centre); send it again later.
	IngestRetry IngestStatus = "retry"
)

// IngestResult is the centre's answer for one item of a batch.
type IngestResult struct {
	// ID is the entry id as the centre read it (empty if unreadable).
	ID     string       `json:"id"`
	Status IngestStatus `json:"status"`
	// Error says why, for any status but IngestStored.
	Error string `json:"error,omitempty"`
}

// IngestResponse is the JSON body of the centre's answer to a batch (HTTP
// 200, or 503 when no item could be stored): one result per item, in the
// batch's order.
type IngestResponse struct {
	Version int            `json:"version"`
	Results []IngestResult `json:"results"`
}

// IngestOptions configure [Store.IngestHandler]. The zero value accepts no
// request: set Secret, Authenticate or Identify.
type IngestOptions struct {
	// Secret is the secret shared with the edges: a request must carry
	// "Authorization: Bearer " + ShipToken(Secret), compared in constant
	// time. The secret itself never travels.
	Secret []byte
	// Authenticate, when not nil, decides instead of Secret: a nil error
	// accepts the request. Use it for TLS client certificates (configure
	// the http.Server's TLSConfig with ClientCAs and ClientAuth, and check
	// r.TLS.VerifiedChains here) or to accept either. The error is logged,
	// not sent.
	Authenticate func(r *http.Request) error
	// Identify, when not nil, authenticates instead of Authenticate and
	// Secret, and names the edge the request is from (the user of its
	// own shipping credential, or the name in its verified client
	// certificate): an error refuses the request with 401. The entries of
	// the batch are then recorded under that name only: one without a
	// Node gets it, and one naming another node is answered IngestInvalid
	// and logged, so that an edge cannot file entries as another node.
	// With Secret or Authenticate, Node is what the entries say.
	Identify func(r *http.Request) (node string, err error)
	// Logger receives a line per batch and per refused request or item;
	// nil means slog.Default(). Bodies and secrets are never logged.
	Logger *slog.Logger
	// MaxBatchBytes bounds a request's body; zero means 128 MiB. It must
	// exceed the edges' ShipperOptions.MaxBatchBytes and the largest body.
	MaxBatchBytes int64
	// MaxItems bounds the items of one batch; zero means 1024.
	MaxItems int
	// MaxBodySize is the largest body accepted; zero means the store's
	// Options.MaxSize. A larger one is answered IngestInvalid.
	MaxBodySize int64
}

// batchPutter is the part of *Store that ingestion needs; tests fake it.
type batchPutter interface {
	PutBatch(ctx context.Context, items []Item) []error
}

var _ batchPutter = (*Store)(nil)

// IngestHandler returns the handler through which edges' [Shipper]s hand
// their outboxes to this store: POST a batch in the wire format (see
// [BatchWriter]) and receive an [IngestResponse]. Ingestion is idempotent
// by entry id and digest: a batch sent again stores nothing twice. An
// entry must arrive with every recipient held: statuses change only here.
//
// Answers: 200 with one result per item (even when some items are
// invalid: the others are stored); 401 without valid credentials; 405 for
// a method other than POST; 400 for a malformed or unknown-version batch
// and 413 for one over MaxBatchBytes or MaxItems, logged, with nothing
// stored; 503 when
// no item could be stored because of a storage problem, so that the edge
// tries again.
func (s *Store) IngestHandler(opts *IngestOptions) http.Handler {
	return newIngestHandler(s, s.opts.MaxSize, opts)
}

type ingestHandler struct {
	p     batchPutter
	opts  IngestOptions
	log   *slog.Logger
	token string
	lim   BatchLimits
}

func newIngestHandler(p batchPutter, maxBody int64, opts *IngestOptions) *ingestHandler {
	h := &ingestHandler{p: p}
	if opts != nil {
		h.opts = *opts
	}
	h.log = h.opts.Logger
	if h.log == nil {
		h.log = slog.Default()
	}
	if len(h.opts.Secret) > 0 {
		h.token = ShipToken(h.opts.Secret)
	}
	if h.opts.MaxBodySize > 0 {
		maxBody = h.opts.MaxBodySize
	}
	h.lim = (&BatchLimits{MaxItems: h.opts.MaxItems, MaxBody: maxBody, MaxBytes: h.opts.MaxBatchBytes}).withDefaults()
	return h
}

// ServeHTTP implements http.Handler.
func (h *ingestHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	batch := cleanHeader(r.Header.Get(batchHeader))
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	node, err := h.authenticate(r)
	if err != nil {
		h.log.Warn("quarantine: ingest request refused", "remote", r.RemoteAddr, "batch", batch, "err", err)
		w.Header().Set("WWW-Authenticate", `Bearer realm="quarantine"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	body := http.MaxBytesReader(w, r.Body, h.lim.MaxBytes)
	br, err := NewBatchReader(body, &h.lim)
	if err != nil {
		h.badBatch(w, r, batch, err)
		return
	}
	var (
		items   []Item
		idx     []int // position in results of each item in items
		results []IngestResult
	)
	for {
		it, err := br.Next()
		if err == io.EOF {
			break
		}
		var ie *ItemError
		if errors.As(err, &ie) {
			results = append(results, IngestResult{ID: cleanHeader(ie.ID), Status: IngestInvalid, Error: errText(ie.Err)})
			h.log.Warn("quarantine: batch item refused", "batch", batch, "remote", r.RemoteAddr, "entry", ie.ID, "item", ie.Index, "err", ie.Err)
			continue
		}
		if err != nil {
			h.badBatch(w, r, batch, err)
			return
		}
		if node != "" && it.Entry.Node == "" {
			it.Entry.Node = node
		}
		if node != "" && it.Entry.Node != node {
			err := fmt.Errorf("%w: the entry names node %q, the edge authenticated as %q", ErrInvalid, it.Entry.Node, node)
			results = append(results, IngestResult{ID: it.Entry.ID, Status: IngestInvalid, Error: errText(err)})
			h.log.Warn("quarantine: batch item refused: an edge shipped an entry under another node's name", "batch", batch, "remote", r.RemoteAddr, "entry", it.Entry.ID, "node", node, "claimed", it.Entry.Node)
			continue
		}
		if err := checkHeld(&it.Entry); err != nil {
			results = append(results, IngestResult{ID: it.Entry.ID, Status: IngestInvalid, Error: errText(err)})
			h.log.Warn("quarantine: batch item refused", "batch", batch, "remote", r.RemoteAddr, "entry", it.Entry.ID, "err", err)
			continue
		}
		idx = append(idx, len(results))
		results = append(results, IngestResult{ID: it.Entry.ID})
		items = append(items, it)
	}
	var errs []error
	if len(items) > 0 {
		errs = h.p.PutBatch(r.Context(), items)
	}
	var stored, refused, retry int
	var retryErr error
	for i := range items {
		var err error
		if len(errs) != len(items) {
			err = fmt.Errorf("quarantine: store answered %d results for %d items", len(errs), len(items))
		} else {
			err = errs[i]
		}
		res := &results[idx[i]]
		switch {
		case err == nil:
			res.Status = IngestStored
			stored++
		case errors.Is(err, ErrConflict):
			res.Status, res.Error = IngestConflict, errText(err)
			refused++
		case errors.Is(err, ErrInvalid), errors.Is(err, ErrTooLarge):
			res.Status, res.Error = IngestInvalid, errText(err)
			refused++
		default:
			res.Status, res.Error = IngestRetry, errText(err)
			retry++
			if retryErr == nil {
				retryErr = err
			}
		}
	}
	refused += len(results) - len(items)
	code := http.StatusOK
	if retry > 0 {
		if stored+refused == 0 {
			code = http.StatusServiceUnavailable
			w.Header().Set("Retry-After", "1")
		}
		h.log.Error("quarantine: batch partly not stored; the edge will send it again", "batch", batch, "remote", r.RemoteAddr,
			"items", len(results), "stored", stored, "refused", refused, "retry", retry, "err", retryErr)
	} else {
		h.log.Debug("quarantine: batch ingested", "batch", batch, "remote", r.RemoteAddr, "items", len(results), "stored", stored, "refused", refused)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if err := json.NewEncoder(w).Encode(IngestResponse{Version: IngestVersion, Results: results}); err != nil {
		h.log.Warn("quarantine: writing ingest response", "batch", batch, "remote", r.RemoteAddr, "err", err)
	}
}

// authenticate checks the request's credentials and returns the node they
// name, empty unless IngestOptions.Identify names one.
func (h *ingestHandler) authenticate(r *http.Request) (string, error) {
	if h.opts.Identify != nil {
		node, err := h.opts.Identify(r)
		if err == nil && node == "" {
			err = errors.New("the edge's credential names no node")
		}
		return node, err
	}
	if h.opts.Authenticate != nil {
		return "", h.opts.Authenticate(r)
	}
	if h.token == "" {
		return "", errors.New("no Secret, Authenticate or Identify configured: every request is refused")
	}
	return "", bearer.Check(r, h.token)
}

// badBatch answers a batch that cannot be read.
func (h *ingestHandler) badBatch(w http.ResponseWriter, r *http.Request, batch string, err error) {
	code := http.StatusBadRequest
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) || errors.Is(err, ErrTooLarge) {
		code = http.StatusRequestEntityTooLarge
	}
	h.log.Warn("quarantine: batch refused", "batch", batch, "remote", r.RemoteAddr, "status", code, "err", err)
	http.Error(w, err.Error(), code)
}

// cleanHeader makes a client-supplied identifier safe to log: at most 64
// bytes of letters, digits and "-_.".
func cleanHeader(s string) string {
	if len(s) > maxID {
		s = s[:maxID]
	}
	return strings.Map(func(r rune) rune {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '?'
	}, s)
}

// errText is an error's text for a result, at most 512 bytes.
func errText(err error) string {
	s := err.Error()
	if len(s) <= 512 {
		return s
	}
	n := 512
	for n > 0 && s[n]&0xC0 == 0x80 { // not in the middle of a UTF-8 sequence
		n--
	}
	return s[:n]
}
