package replicate

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/bearer"
	"github.com/resilmail/resilmail/replicate/internal/wire"
)

// StreamPurpose labels the bearer token of the replication stream: the
// token is HMAC-SHA256(secret, StreamPurpose).
const StreamPurpose = "resilmail/replicate/stream 1"

// StreamToken returns the bearer token the replication stream expects for
// secret.
func StreamToken(secret []byte) string { return bearer.Token(secret, StreamPurpose) }

// heartbeatHeader tells a replica, in milliseconds, how often the stream
// carries a heartbeat, so that it can tell a silent connection from a
// quiet primary.
const heartbeatHeader = "Resilmail-Heartbeat"

// A Primary serves its Source's change journal and bodies to replicas over
// HTTP, records their acknowledgements, and lets writers wait for them. It
// is safe for concurrent use and starts no goroutine: the streams run in
// the HTTP server's handlers and end with their requests.
type Primary struct {
	src   Source
	opts  PrimaryOptions
	token string
	log   *slog.Logger
	// replicaTokens are the bearer tokens of ReplicaSecrets, by name.
	replicaTokens map[string]string

	mu       sync.Mutex
	acked    chan struct{} // closed and replaced at every acknowledgement
	replicas map[string]*link
	fencedBy resilmail.Epoch // epoch of the primary that superseded this one
	ended    string          // why the streams ended (Demote, fenced); "" while serving
	// stopStreams is closed when the streams must end (see ended).
	stopStreams chan struct{}
	ring        [ringSize]posTime
	ringLen     int
	ringNext    int
	accepted    uint64 // Await calls accepted after a timeout
	refused     uint64 // Await calls refused after a timeout
	corrupt     uint64 // corrupt bodies refused
	restored    uint64 // damaged bodies restored from a replica's copy
	refusedAcks uint64 // acknowledgements refused (unknown name, beyond the end)
	orphans     uint64 // orphans of rejoining nodes kept
}

const ringSize = 1 << 14

type posTime struct {
	pos uint64
	t   time.Time
}

// link is what the primary knows of one replica.
type link struct {
	connected     int
	streams       uint64 // streams ever opened
	acked         uint64
	ackedAt       time.Time
	lastErr       string
	lastErrAt     time.Time
	bytes         uint64
	changes       uint64
	bodies        uint64
	corruptBodies uint64
	// missing are the changes the replica received without their body,
	// by seq, with when the primary learned of each (see covers).
	missing map[uint64]time.Time
}

// covers reports whether the replica has pos for an Await that started at
// started: it acknowledged pos, and no change up to pos that it names as
// missing its body was learned of after started. A missing change holds
// back the Awaits that were waiting when the primary learned of it (the
// writer of that change among them), never a later one: a body the
// primary cannot serve must not stall every later writer.
func (l *link) covers(pos uint64, started time.Time) bool {
	if l == nil || l.acked < pos {
		return false
	}
	for seq, learned := range l.missing {
		if seq <= pos && started.Before(learned) {
			return false
		}
	}
	return true
}

// NewPrimary returns a Primary serving src.
func NewPrimary(src Source, opts *PrimaryOptions) (*Primary, error) {
	var o PrimaryOptions
	if opts != nil {
		o = *opts
	}
	if len(o.Secret) == 0 && o.Authenticate == nil && len(o.ReplicaSecrets) == 0 && o.Identify == nil {
		return nil, errors.New("replicate: primary needs a Secret, ReplicaSecrets, or an Identify or Authenticate hook")
	}
	if o.Mode < AckAsync || o.Mode > AckAll {
		return nil, fmt.Errorf("replicate: unknown ack mode %d", o.Mode)
	}
	if len(o.Replicas) == 0 {
		for name := range o.ReplicaSecrets {
			o.Replicas = append(o.Replicas, name)
		}
		slices.Sort(o.Replicas)
	}
	if o.Mode == AckAll && len(o.Replicas) == 0 {
		return nil, errors.New("replicate: AckAll needs the names of the replicas")
	}
	if o.Mode == AckAll && len(o.ReplicaSecrets) == 0 && o.Identify == nil {
		return nil, errors.New("replicate: AckAll needs names bound to credentials (ReplicaSecrets or Identify): with a shared secret, one replica could acknowledge for another")
	}
	if o.OnTimeout != TimeoutRefuse && o.OnTimeout != TimeoutAccept {
		return nil, fmt.Errorf("replicate: unknown timeout policy %d", o.OnTimeout)
	}
	o.Replicas = slices.Clone(o.Replicas)
	o.Secret = slices.Clone(o.Secret)
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.Batch <= 0 {
		o.Batch = DefaultBatch
	}
	if o.InlineBody == 0 {
		o.InlineBody = DefaultInlineBody
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	p := &Primary{src: src, opts: o, token: StreamToken(o.Secret), log: o.Logger,
		acked: make(chan struct{}), replicas: make(map[string]*link), replicaTokens: make(map[string]string),
		stopStreams: make(chan struct{})}
	for name, secret := range o.ReplicaSecrets {
		if err := checkName("replica", name, resilmail.MaxUserLen); err != nil {
			return nil, fmt.Errorf("replicate: ReplicaSecrets: %w", err)
		}
		if len(secret) == 0 {
			return nil, fmt.Errorf("replicate: ReplicaSecrets: empty secret for %q", name)
		}
		p.replicaTokens[name] = StreamToken(secret)
	}
	o.ReplicaSecrets = nil // the tokens are kept, not the secrets
	for _, name := range o.Replicas {
		if err := checkName("replica", name, resilmail.MaxUserLen); err != nil {
			return nil, fmt.Errorf("replicate: %w", err)
		}
		p.replicas[name] = &link{}
	}
	return p, nil
}

// linkLocked returns the state of replica name, creating it.
func (p *Primary) linkLocked(name string) *link {
	l := p.replicas[name]
	if l == nil {
		l = &link{}
		p.replicas[name] = l
	}
	return l
}

// Handler returns the HTTP API of the stream, to mount at a base URL:
//
//	GET  changes?after=N&replica=NAME[&v=V]  the stream of changes after N,
//	                                   in version V (3) if given, else 2
//	GET  body/{hex digest}?replica=NAME the body, verified by the Source
//	POST ack  {"replica":..., "position":N, "epoch":E}
//	GET  position                      {"position":N, "epoch":E}
//	GET  inventory/...                 the Source's [InventoryHandler], if
//	                                   it is an [Inventory]: replicas compare
//	                                   and repair from it when the stream
//	                                   cannot resume or a change conflicts
//	PUT  body/{hex digest}?replica=NAME a replica's good copy of a body the
//	                                   Source holds damaged, if it is a
//	                                   [BodyRestorer]: 204 once restored
//	POST orphan?replica=NAME&mailbox=M  an orphan of a rejoining node (see
//	                                   [KeepOrphans]), if the Source is an
//	                                   [OrphanSink]: 200 with a [KeptOrphan]
//	POST reserve?replica=NAME          a rejoining node's [HighWater] marks
//	                                   (JSON list), if the Source is a
//	                                   [Reserver]: 200 {"raised": N}
//
// A replica that names its position's history (&history=H&epoch=E) is
// checked against the Source's journal if it is a [HistorySource]: a
// position the journal does not hold is answered 409 with a [Divergence]
// (code "diverged"), and a stream carries the primary's history in the
// Resilmail-History header. A demoted or fenced primary answers 503
// ("fenced") and ends its streams with an error frame saying why.
//
// Errors are {"error": "...", "code": "..."} with status 400
// ("bad_request"), 401 ("unauthorized"), 403 ("unknown_replica": an
// acknowledgement from a name the primary does not know; "wrong_replica":
// a name another replica's credential is bound to), 404 ("not_found"), 409
// ("position": the replica followed another history, or acknowledged a
// position beyond the journal's end), 410
// ("too_far_behind": compare in full) or 500 ("corrupt": the primary's
// copy of a body is damaged and is never sent; "internal").
func (p *Primary) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /changes", p.serveChanges)
	mux.HandleFunc("GET /body/{digest}", p.serveBody)
	mux.HandleFunc("PUT /body/{digest}", p.restoreBody)
	mux.HandleFunc("POST /ack", p.serveAck)
	mux.HandleFunc("POST /orphan", p.serveOrphan)
	mux.HandleFunc("POST /reserve", p.serveReserve)
	mux.HandleFunc("GET /position", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(positionResponse{Position: p.src.Position(), Epoch: p.src.Epoch()})
	})
	if inv, ok := p.src.(Inventory); ok {
		// Requests are authenticated below, with the stream's token.
		ih, _ := InventoryHandler(inv, &InventoryHandlerOptions{Authenticate: func(*http.Request) error { return nil }, Logger: p.log})
		mux.Handle("/inventory/", http.StripPrefix("/inventory", ih))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := p.authenticate(r)
		if err != nil {
			p.log.Warn("replicate: stream request refused", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
			writeError(w, http.StatusUnauthorized, "unauthorized", "not authenticated")
			return
		}
		mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey{}, id)))
	})
}

func (p *Primary) badRequest(w http.ResponseWriter, r *http.Request, err error) {
	p.log.Warn("replicate: bad stream request", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusBadRequest, "bad_request", err.Error())
}

func (p *Primary) noteError(name string, err error) {
	p.mu.Lock()
	l := p.linkLocked(name)
	l.lastErr, l.lastErrAt = err.Error(), time.Now()
	p.mu.Unlock()
}

// remember keeps the times of changes for the lag age.
func (p *Primary) remember(changes []resilmail.Change) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range changes {
		c := &changes[i]
		if p.ringLen > 0 && p.ring[(p.ringNext+ringSize-1)%ringSize].pos >= c.Seq {
			continue
		}
		p.ring[p.ringNext] = posTime{c.Seq, c.Time}
		p.ringNext = (p.ringNext + 1) % ringSize
		p.ringLen = min(p.ringLen+1, ringSize)
	}
}

// requestName is the replica name a request acts as (see replicaName).
func (p *Primary) requestName(r *http.Request) (string, error) {
	id, _ := r.Context().Value(identityKey{}).(identity)
	return p.replicaName(id, r.URL.Query().Get("replica"))
}

func (p *Primary) serveChanges(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	name, err := p.requestName(r)
	if err != nil {
		p.log.Warn("replicate: stream refused", "remote", r.RemoteAddr, "err", err)
		writeError(w, http.StatusForbidden, "wrong_replica", err.Error())
		return
	}
	if err := checkName("replica", name, resilmail.MaxUserLen); err != nil {
		p.badRequest(w, r, err)
		return
	}
	after, err := strconv.ParseUint(q.Get("after"), 10, 64)
	if err != nil {
		p.badRequest(w, r, fmt.Errorf("parameter after: %w", err))
		return
	}
	claim, hasClaim, err := claimFromQuery(q, after)
	if err != nil {
		p.badRequest(w, r, err)
		return
	}
	if p.refuseEnded(w) {
		return
	}
	version := 2
	if v := q.Get("v"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 {
			p.badRequest(w, r, fmt.Errorf("parameter v: %q is not a stream version", v))
			return
		}
		version = min(n, wire.CurrentVersion)
	}
	if hs, ok := p.src.(HistorySource); ok {
		if hasClaim {
			if d, fenced := checkClaim(hs, claim); d != nil {
				p.noteError(name, errors.New(d.Error))
				p.log.Warn("replicate: replica's position is not in this primary's history", "replica", name,
					"claim", claim.String(), "agreed", d.Agreed, "known", d.Known, "resume", d.Resume, "why", d.Error)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusConflict)
				json.NewEncoder(w).Encode(d)
				if fenced {
					p.fence(claim.Epoch, name)
				}
				return
			}
		}
		w.Header().Set(historyHeader, hs.History().String())
	}
	ctx := r.Context()
	changes, err := p.src.Changes(ctx, after, p.opts.Batch)
	if err != nil {
		p.noteError(name, err)
		switch {
		case errors.Is(err, ErrTooFarBehind):
			p.log.Warn("replicate: replica too far behind", "replica", name, "after", after, "err", err)
			writeError(w, http.StatusGone, "too_far_behind", err.Error())
		case errors.Is(err, ErrPosition):
			p.log.Warn("replicate: replica beyond the journal", "replica", name, "after", after, "err", err)
			writeError(w, http.StatusConflict, "position", err.Error())
		default:
			p.log.Error("replicate: reading changes", "replica", name, "after", after, "err", err)
			writeError(w, http.StatusInternalServerError, "internal", err.Error())
		}
		return
	}
	p.mu.Lock()
	l := p.linkLocked(name)
	if l.connected > 0 {
		// Two replicas with one name (or a reconnection before the
		// old stream noticed): their acknowledgements mix.
		p.log.Warn("replicate: a second stream for the same replica name", "replica", name, "remote", r.RemoteAddr)
	}
	l.connected++
	l.streams++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.linkLocked(name).connected--
		p.mu.Unlock()
	}()
	w.Header().Set(heartbeatHeader, strconv.FormatInt(p.opts.Heartbeat.Milliseconds(), 10))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if err := p.stream(ctx, w, name, version, after, changes); err != nil && ctx.Err() == nil {
		p.noteError(name, err)
		p.log.Warn("replicate: stream ended", "replica", name, "err", err)
	}
}

// stream writes frames until ctx is done or an error.
func (p *Primary) stream(ctx context.Context, w http.ResponseWriter, name string, version int, after uint64, changes []resilmail.Change) error {
	rc := http.NewResponseController(w)
	bw := bufio.NewWriterSize(w, 64<<10)
	fw, err := wire.NewWriterVersion(bw, version)
	if err != nil {
		return err
	}
	var (
		sent   int64
		inline = make(map[resilmail.Digest]struct{})
	)
	flush := func(n int) error {
		if err := bw.Flush(); err != nil {
			return err
		}
		if err := rc.Flush(); err != nil {
			return err
		}
		p.mu.Lock()
		l := p.linkLocked(name)
		l.bytes += uint64(fw.Written() - sent)
		l.changes += uint64(n)
		p.mu.Unlock()
		sent = fw.Written()
		return nil
	}
	var lastBeat time.Time
	beat := func() error {
		lastBeat = time.Now()
		return fw.WriteHeartbeat(wire.Heartbeat{Position: p.src.Position(), Epoch: p.src.Epoch(), Time: lastBeat})
	}
	if err := beat(); err != nil {
		return err
	}
	for {
		if p.streamsEnded() {
			p.mu.Lock()
			why := p.ended
			p.mu.Unlock()
			fw.WriteError(why)
			flush(0)
			return errors.New(why)
		}
		p.remember(changes)
		for i := range changes {
			if err := p.inline(ctx, fw, name, &changes[i], inline); err != nil {
				return err
			}
			if err := fw.WriteChange(&changes[i]); err != nil {
				return err
			}
			after = changes[i].Seq
		}
		// A version 3 stream ends every batch with a heartbeat: a replica
		// makes what it received durable and acknowledges it there.
		if len(changes) == 0 || fw.Version() >= 3 || time.Since(lastBeat) >= p.opts.Heartbeat {
			if err := beat(); err != nil {
				return err
			}
		}
		if err := flush(len(changes)); err != nil {
			return err
		}
		if len(changes) == 0 {
			wctx, cancel := context.WithTimeout(ctx, p.opts.Heartbeat)
			go func() {
				select {
				case <-p.stopStreams:
					cancel()
				case <-wctx.Done():
				}
			}()
			_, err := p.src.Wait(wctx, after)
			cancel()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if p.streamsEnded() {
				continue // the loop's head ends the stream
			}
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				fw.WriteError(err.Error())
				flush(0)
				return err
			}
		}
		changes, err = p.src.Changes(ctx, after, p.opts.Batch)
		if err != nil {
			if ctx.Err() == nil {
				fw.WriteError(err.Error())
				flush(0)
			}
			return err
		}
	}
}

// inline writes the body of an append ahead of it when the stream carries
// bodies, the body is small enough and the stream has not sent it lately.
// A body the Source cannot give is left for the replica to fetch, which
// reports why.
func (p *Primary) inline(ctx context.Context, fw *wire.Writer, name string, c *resilmail.Change, sent map[resilmail.Digest]struct{}) error {
	if fw.Version() < 3 || c.Kind != resilmail.ChangeAppend || c.Size < 0 || c.Size > int64(p.opts.InlineBody) {
		return nil
	}
	if _, ok := sent[c.Digest]; ok {
		return nil
	}
	b, err := p.src.Body(ctx, c.Digest)
	if err != nil || resilmail.DigestOf(b) != c.Digest {
		return nil
	}
	if len(sent) >= 8192 {
		clear(sent)
	}
	sent[c.Digest] = struct{}{}
	p.mu.Lock()
	p.linkLocked(name).bodies++
	p.mu.Unlock()
	return fw.WriteBody(c.Digest, b)
}

// A BodyRestorer is a Source that takes a good copy of a body it holds
// damaged, as replicate/store's Store does (Store.RestoreBody): a replica
// whose comparison finds the primary's copy corrupt sends its own
// ([Replica.Comparer]). RestoreBody must verify that body hashes to d
// (an error wrapping a *resilmail.CorruptError if not), store it durably
// before it returns, leave an intact body alone, and return an error
// wrapping ErrNotFound for a digest no message references.
type BodyRestorer interface {
	RestoreBody(ctx context.Context, d resilmail.Digest, body io.Reader) error
}

// maxRestoreBody bounds a body a replica sends to restore; the Source
// applies its own, smaller limit.
const maxRestoreBody = 1 << 30

// restoreBody takes a replica's copy of a body the Source holds damaged.
func (p *Primary) restoreBody(w http.ResponseWriter, r *http.Request) {
	name, _ := p.requestName(r)
	d, err := resilmail.ParseDigest(r.PathValue("digest"))
	if err != nil {
		p.badRequest(w, r, err)
		return
	}
	br, ok := p.src.(BodyRestorer)
	if !ok {
		writeError(w, http.StatusMethodNotAllowed, "not_supported", "this primary's source cannot restore bodies")
		return
	}
	err = br.RestoreBody(r.Context(), d, http.MaxBytesReader(w, r.Body, maxRestoreBody))
	var ce *resilmail.CorruptError
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.As(err, &ce):
		p.log.Error("replicate: a replica's copy of a damaged body does not match its digest either", "replica", name, "digest", d)
		writeError(w, http.StatusBadRequest, "corrupt", "body does not match its digest")
	case err != nil:
		p.log.Error("replicate: restoring a body", "replica", name, "digest", d, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
	default:
		p.mu.Lock()
		p.restored++
		p.mu.Unlock()
		p.log.Warn("replicate: body restored from a replica's copy", "replica", name, "digest", d)
		w.WriteHeader(http.StatusNoContent)
	}
}

func (p *Primary) serveBody(w http.ResponseWriter, r *http.Request) {
	name, _ := p.requestName(r)
	d, err := resilmail.ParseDigest(r.PathValue("digest"))
	if err != nil {
		p.badRequest(w, r, err)
		return
	}
	b, err := p.src.Body(r.Context(), d)
	var ce *resilmail.CorruptError
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
		return
	case errors.As(err, &ce):
		p.mu.Lock()
		p.corrupt++
		if name != "" {
			p.linkLocked(name).corruptBodies++
		}
		p.mu.Unlock()
		p.log.Error("replicate: corrupt body not served", "replica", name, "digest", d, "err", err)
		writeError(w, http.StatusInternalServerError, "corrupt", err.Error())
		return
	case err != nil:
		p.log.Error("replicate: reading body", "replica", name, "digest", d, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	if resilmail.DigestOf(b) != d {
		// The Source promised a verified body: refuse it all the same.
		p.mu.Lock()
		p.corrupt++
		p.mu.Unlock()
		p.log.Error("replicate: source returned a body that does not match its digest", "replica", name, "digest", d)
		writeError(w, http.StatusInternalServerError, "corrupt", "body does not match its digest")
		return
	}
	if name != "" && checkName("replica", name, resilmail.MaxUserLen) == nil {
		p.mu.Lock()
		p.linkLocked(name).bodies++
		p.linkLocked(name).bytes += uint64(len(b))
		p.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
}

// A positionResponse is the answer of GET position.
type positionResponse struct {
	Position uint64          `json:"position"`
	Epoch    resilmail.Epoch `json:"epoch"`
}

// An ackRequest is the body of POST ack.
type ackRequest struct {
	Replica  string          `json:"replica"`
	Position uint64          `json:"position"`
	Epoch    resilmail.Epoch `json:"epoch"`
	// Missing are changes up to Position received without their body
	// (at most maxAckMissing): not replicated yet.
	Missing []uint64 `json:"missing,omitempty"`
}

// maxAckMissing bounds the changes an acknowledgement names as missing,
// so that an acknowledgement stays within the 4 KiB that a primary of the
// previous version reads (it ignores the field); a replica with more
// acknowledges only up to the first one it does not name.
const maxAckMissing = 128

func (p *Primary) serveAck(w http.ResponseWriter, r *http.Request) {
	var a ackRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&a); err != nil {
		p.badRequest(w, r, fmt.Errorf("ack: %w", err))
		return
	}
	if len(a.Missing) > maxAckMissing {
		p.badRequest(w, r, fmt.Errorf("ack: %d missing changes named, at most %d", len(a.Missing), maxAckMissing))
		return
	}
	id, _ := r.Context().Value(identityKey{}).(identity)
	if a.Replica == "" && id.bound {
		a.Replica = id.name
	}
	if err := checkName("replica", a.Replica, resilmail.MaxUserLen); err != nil {
		p.badRequest(w, r, err)
		return
	}
	if a.Epoch > p.src.Epoch() {
		// An authenticated replica has seen a newer primary, whatever it
		// acknowledges (a position of that primary's journal, perhaps
		// beyond this one's end): this primary is fenced.
		p.fence(a.Epoch, a.Replica)
	}
	if status, code, err := p.checkAck(id, &a); err != nil {
		p.mu.Lock()
		p.refusedAcks++
		p.mu.Unlock()
		p.log.Warn("replicate: acknowledgement refused", "replica", a.Replica, "remote", r.RemoteAddr, "position", a.Position, "err", err)
		writeError(w, status, code, err.Error())
		return
	}
	if p.ack(a) {
		p.holdFor(r.Context(), a.Replica, a.Position)
	}
	w.WriteHeader(http.StatusNoContent)
}

// ack records an acknowledgement and wakes the waiters; it reports
// whether the replica's position advanced. An acknowledgement with a
// higher epoch than the Source's fences this primary.
func (p *Primary) ack(a ackRequest) (advanced bool) {
	if a.Epoch > p.src.Epoch() {
		p.fence(a.Epoch, a.Replica)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.linkLocked(a.Replica)
	if a.Position > l.acked || l.ackedAt.IsZero() {
		l.acked = a.Position
		advanced = true
	}
	now := time.Now()
	l.ackedAt = now
	var missing map[uint64]time.Time
	for _, seq := range a.Missing {
		if seq > a.Position {
			continue
		}
		if missing == nil {
			missing = make(map[uint64]time.Time, len(a.Missing))
		}
		learned, ok := l.missing[seq]
		if !ok {
			learned = now
			p.log.Warn("replicate: a replica received a change without its body; it does not count as replicated until the body arrives",
				"replica", a.Replica, "seq", seq)
		}
		missing[seq] = learned
	}
	l.missing = missing
	close(p.acked)
	p.acked = make(chan struct{})
	return advanced
}

// satisfiedLocked reports whether the acknowledgements Await waits for
// cover pos.
func (p *Primary) satisfiedLocked(pos uint64, started time.Time) bool {
	switch p.opts.Mode {
	case AckOne:
		for _, l := range p.replicas {
			if l.covers(pos, started) {
				return true
			}
		}
		return false
	case AckAll:
		for _, name := range p.opts.Replicas {
			if !p.replicas[name].covers(pos, started) {
				return false
			}
		}
		return true
	}
	return true
}

// Await waits until the replicas have acknowledged position pos, as Mode
// says, for at most AckTimeout. A change a replica received without its
// body (this primary could not serve it) is not acknowledged for the
// Awaits that were waiting when the replica said so, the writer of that
// change among them, until the replica has the body; later Awaits are
// not held back by it. After AckTimeout, by OnTimeout, it returns an error
// wrapping ErrNotReplicated or nil. Once a replica has acknowledged with an
// epoch higher than the Source's, the primary is superseded and Await
// returns an error wrapping ErrFenced, whatever the mode. It returns
// ctx.Err() if ctx is done first.
func (p *Primary) Await(ctx context.Context, pos uint64) error {
	started := time.Now()
	timer := time.NewTimer(p.opts.AckTimeout)
	defer timer.Stop()
	for {
		p.mu.Lock()
		if p.fencedBy != 0 {
			e := p.fencedBy
			p.mu.Unlock()
			return fmt.Errorf("%w: a replica has seen epoch %d, this primary has %d", ErrFenced, e, p.src.Epoch())
		}
		if p.opts.Mode == AckAsync || p.satisfiedLocked(pos, started) {
			p.mu.Unlock()
			return nil
		}
		ch := p.acked
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			p.mu.Lock()
			if p.opts.OnTimeout == TimeoutAccept {
				p.accepted++
				p.mu.Unlock()
				p.log.Warn("replicate: change accepted without acknowledgement", "position", pos,
					"mode", p.opts.Mode, "timeout", p.opts.AckTimeout)
				return nil
			}
			p.refused++
			p.mu.Unlock()
			return fmt.Errorf("%w: position %d, mode %s, after %v", ErrNotReplicated, pos, p.opts.Mode, p.opts.AckTimeout)
		}
	}
}

// Stats returns the primary's counters. Computing a replica's lag age may
// read the Source's journal when the change is older than the primary
// remembers.
func (p *Primary) Stats() PrimaryStats {
	pos, ep := p.src.Position(), p.src.Epoch()
	now := time.Now()
	p.mu.Lock()
	st := PrimaryStats{Position: pos, Epoch: ep, FencedBy: p.fencedBy,
		AcceptedUnreplicated: p.accepted, RefusedUnreplicated: p.refused, CorruptBodies: p.corrupt, BodiesRestored: p.restored,
		AcksRefused: p.refusedAcks, OrphansKept: p.orphans}
	var unknown []int
	for name, l := range p.replicas {
		rs := ReplicaLinkStats{Name: name, Connected: l.connected > 0, Acked: l.acked, AckedAt: l.ackedAt,
			LastError: l.lastErr, LastErrorTime: l.lastErrAt, BytesSent: l.bytes, ChangesSent: l.changes,
			BodiesServed: l.bodies, CorruptBodies: l.corruptBodies, Missing: len(l.missing)}
		if pos > l.acked {
			rs.LagChanges = pos - l.acked
			if t, ok := p.timeAfterLocked(l.acked); ok {
				rs.LagAge = now.Sub(t)
			} else {
				unknown = append(unknown, len(st.Replicas))
			}
		}
		st.Replicas = append(st.Replicas, rs)
	}
	p.mu.Unlock()
	for _, i := range unknown {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := p.src.Changes(ctx, st.Replicas[i].Acked, 1)
		if errors.Is(err, ErrTooFarBehind) {
			st.Replicas[i].TooFarBehind = true
			if o, ok := p.src.(interface{ OldestPosition() uint64 }); ok && o.OldestPosition() > 0 {
				c, err = p.src.Changes(ctx, o.OldestPosition()-1, 1)
			}
		}
		if err == nil && len(c) > 0 {
			st.Replicas[i].LagAge = now.Sub(c[0].Time)
		}
		cancel()
	}
	slices.SortFunc(st.Replicas, func(a, b ReplicaLinkStats) int { return strings.Compare(a.Name, b.Name) })
	return st
}

// timeAfterLocked returns the time of the first remembered change after
// pos, if the ring still holds it.
func (p *Primary) timeAfterLocked(pos uint64) (time.Time, bool) {
	if p.ringLen == 0 {
		return time.Time{}, false
	}
	oldest := (p.ringNext + ringSize - p.ringLen) % ringSize
	if p.ring[oldest].pos > pos+1 {
		return time.Time{}, false // evicted, or never seen
	}
	// Binary search the ring (ascending positions).
	lo, hi := 0, p.ringLen
	for lo < hi {
		m := (lo + hi) / 2
		if p.ring[(oldest+m)%ringSize].pos <= pos {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == p.ringLen {
		return time.Time{}, false
	}
	return p.ring[(oldest+lo)%ringSize].t, true
}
