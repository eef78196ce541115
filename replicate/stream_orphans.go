package replicate

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
)

// Orphans are messages a node acknowledged that never reached the primary
// that replaced it: the tail of an old primary's journal after the point
// where the new primary's history parts from it (what it delivered and
// answered 250 for while its replica was behind), or messages a repair
// would remove because only one side had them. They are never deleted:
// before the node's state is aligned with the new primary, each is
// re-delivered into the new primary as a new message, in a mailbox the
// operator and the user can see (by default "Orphaned", see
// [DefaultOrphanMailbox]) with a header that says where it came from and
// why ([OrphanHeader]), counted, and listed for the operator.
//
// The entry point is [KeepOrphans]: it reads each orphan's body from a
// [BodyReader] (verified), hands it to an [OrphanSink] (the new primary's
// store, or [RemoteOrphanSink] over the stream's HTTP API), and returns
// the orphans with where they now are. Delivering the same orphan twice
// keeps one copy: a sink recognises it by its origin.

// DefaultOrphanMailbox is the mailbox orphans are re-delivered into.
const DefaultOrphanMailbox = "Orphaned"

// OrphanHeader is the header field added to an orphan's message when it
// is re-delivered; its value names the origin and the reason.
const OrphanHeader = "X-Resilmail-Orphan"

// An Orphan is a message that only a node being aligned with a new
// primary holds, as that node saw it.
type Orphan struct {
	// Origin is the position of the change that appended it, in the
	// history of the node that acknowledged it.
	Origin Position `json:"origin"`
	// User, Mailbox (its name when collected), UID and the mailbox's
	// UIDVALIDITY locate it on that node.
	User        string `json:"user"`
	Mailbox     string `json:"mailbox"`
	UIDValidity uint32 `json:"uidvalidity"`
	UID         uint32 `json:"uid"`
	// Digest, Size, Flags and InternalDate are the message's.
	Digest       resilmail.Digest `json:"digest"`
	Size         int64            `json:"size"`
	Flags        []string         `json:"flags,omitempty"`
	InternalDate time.Time        `json:"internal_date"`
	// Reason says why it is an orphan, for the header and the operator.
	Reason string `json:"reason"`

	// Kept says where it was re-delivered: filled by KeepOrphans.
	Kept *KeptOrphan `json:"kept,omitempty"`
}

// A KeptOrphan says where an orphan now is.
type KeptOrphan struct {
	Mailbox string           `json:"mailbox"`
	UID     uint32           `json:"uid"`
	Digest  resilmail.Digest `json:"digest"` // of the message with OrphanHeader
	At      time.Time        `json:"at"`
	// Again reports that the sink held it already (a second delivery).
	Again bool `json:"again,omitempty"`
}

// ID returns a stable name of the orphan: its origin.
func (o *Orphan) ID() string { return o.Origin.String() }

// String describes the orphan for logs.
func (o *Orphan) String() string {
	return fmt.Sprintf("%s/%s UID %d (%s, %d bytes) from %s", o.User, o.Mailbox, o.UID, o.Digest, o.Size, o.Origin)
}

// OrphanMessage returns body with OrphanHeader naming o's origin and
// reason put first: the message a sink stores. It is the same bytes for
// the same orphan, so that a sink recognises a second delivery by its
// digest.
func OrphanMessage(o *Orphan, body []byte) []byte {
	v := fmt.Sprintf("origin=%s; user=%s; mailbox=%s; uidvalidity=%d; uid=%d; reason=%s",
		o.Origin, strconv.QuoteToASCII(o.User), strconv.QuoteToASCII(o.Mailbox), o.UIDValidity, o.UID, strconv.QuoteToASCII(o.Reason))
	var b bytes.Buffer
	b.Grow(len(OrphanHeader) + len(v) + 4 + len(body))
	b.WriteString(OrphanHeader + ": " + v + "\r\n")
	b.Write(body)
	return b.Bytes()
}

// An OrphanSource lists the orphans of a node being aligned with a new
// primary: the messages appended after position agreed of history h (its
// own journal's, or the history it followed) that it still holds.
// replicate/store's Store is one. It returns an error wrapping
// ErrTooFarBehind when its journal no longer reaches back to agreed.
type OrphanSource interface {
	Orphans(ctx context.Context, h HistoryID, agreed uint64, reason string) ([]Orphan, error)
}

// An OrphanSink keeps an orphan as a new message: it stores
// OrphanMessage(o, body) for o.User in mailbox (created if need be) with
// o's flags and internal date, durably before it returns, and returns
// where. A sink that holds that message in that mailbox already returns
// it with Again set, storing nothing. replicate/store's Store is one (a
// primary's); [RemoteOrphanSink] reaches one over HTTP.
type OrphanSink interface {
	KeepOrphan(ctx context.Context, o *Orphan, body []byte, mailbox string) (KeptOrphan, error)
}

// KeepOrphans re-delivers orphans into sink, in mailbox (empty means
// DefaultOrphanMailbox), reading each body from bodies (which verifies
// it): the one way orphans leave a node. It returns the orphans with Kept
// set, in order, and stops at the first error (those before it are kept;
// calling it again with the same orphans keeps one copy of each). A body
// that bodies reports as not found (an orphan expunged since it was
// listed) is skipped and logged.
func KeepOrphans(ctx context.Context, orphans []Orphan, bodies BodyReader, sink OrphanSink, mailbox string, log *slog.Logger) ([]Orphan, error) {
	if mailbox == "" {
		mailbox = DefaultOrphanMailbox
	}
	if log == nil {
		log = slog.Default()
	}
	out := make([]Orphan, 0, len(orphans))
	for i := range orphans {
		o := orphans[i]
		body, err := bodies.Body(ctx, o.Digest)
		if errors.Is(err, ErrNotFound) {
			log.Warn("replicate: orphan gone before it could be kept", "orphan", o.String())
			continue
		}
		if err != nil {
			return out, fmt.Errorf("replicate: reading orphan %s: %w", o.String(), err)
		}
		if resilmail.DigestOf(body) != o.Digest {
			return out, fmt.Errorf("replicate: orphan %s: body does not match its digest", o.String())
		}
		k, err := sink.KeepOrphan(ctx, &o, body, mailbox)
		if err != nil {
			return out, fmt.Errorf("replicate: keeping orphan %s: %w", o.String(), err)
		}
		o.Kept = &k
		log.Warn("replicate: orphan kept on the primary", "orphan", o.String(), "mailbox", k.Mailbox, "uid", k.UID,
			"again", k.Again, "reason", o.Reason)
		out = append(out, o)
	}
	return out, nil
}

// RemoteOrphanSink returns an OrphanSink that posts orphans to the
// primary whose stream's Handler is at baseURL (POST orphan), with client
// (which carries the stream's credentials, as [Replica.Comparer]'s does).
func RemoteOrphanSink(baseURL string, client *http.Client, replicaName string) OrphanSink {
	return &remoteOrphanSink{base: strings.TrimSuffix(baseURL, "/"), client: client, name: replicaName}
}

type remoteOrphanSink struct {
	base   string
	client *http.Client
	name   string
}

func (s *remoteOrphanSink) KeepOrphan(ctx context.Context, o *Orphan, body []byte, mailbox string) (KeptOrphan, error) {
	meta, err := json.Marshal(o)
	if err != nil {
		return KeptOrphan{}, err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", s.base+"/orphan?replica="+url.QueryEscape(s.name)+
		"&mailbox="+url.QueryEscape(mailbox), bytes.NewReader(body))
	if err != nil {
		return KeptOrphan{}, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set(orphanMetaHeader, base64.RawURLEncoding.EncodeToString(meta))
	resp, err := s.client.Do(req)
	if err != nil {
		return KeptOrphan{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return KeptOrphan{}, statusError("keeping an orphan", resp)
	}
	var k KeptOrphan
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&k); err != nil {
		return KeptOrphan{}, fmt.Errorf("replicate: the primary's answer to an orphan: %w", err)
	}
	return k, nil
}

// orphanMetaHeader carries an orphan's description (base64url JSON) with
// its body in POST orphan.
const orphanMetaHeader = "Resilmail-Orphan-Meta"

// maxOrphanBody bounds an orphan's body the primary reads.
const maxOrphanBody = 1 << 30

// serveOrphan keeps a replica's orphan in the Source, if it is an
// OrphanSink.
func (p *Primary) serveOrphan(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("replica")
	sink, ok := p.src.(OrphanSink)
	if !ok {
		writeError(w, http.StatusMethodNotAllowed, "not_supported", "this primary's source cannot keep orphans")
		return
	}
	meta, err := base64.RawURLEncoding.DecodeString(r.Header.Get(orphanMetaHeader))
	var o Orphan
	if err == nil {
		err = json.Unmarshal(meta, &o)
	}
	if err != nil {
		p.badRequest(w, r, fmt.Errorf("orphan description: %w", err))
		return
	}
	mailbox := r.URL.Query().Get("mailbox")
	if mailbox == "" {
		mailbox = DefaultOrphanMailbox
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxOrphanBody))
	if err != nil {
		p.badRequest(w, r, fmt.Errorf("orphan body: %w", err))
		return
	}
	if resilmail.DigestOf(body) != o.Digest {
		p.badRequest(w, r, errors.New("orphan body does not match its digest"))
		return
	}
	k, err := sink.KeepOrphan(r.Context(), &o, body, mailbox)
	if err != nil {
		p.log.Error("replicate: keeping a replica's orphan", "replica", name, "orphan", o.String(), "err", err)
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	p.mu.Lock()
	if !k.Again {
		p.orphans++
	}
	p.mu.Unlock()
	p.log.Warn("replicate: kept an orphan of a rejoining node", "replica", name, "orphan", o.String(),
		"mailbox", k.Mailbox, "uid", k.UID, "again", k.Again)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(k)
}

// orphanLog is the file in a replica's folder listing the orphans it
// re-delivered, for the operator: a JSON array, rewritten atomically.
const orphanLog = "orphans.json"

// recordOrphans adds kept to the replica's list of orphans, durably.
func (r *Replica) recordOrphans(kept []Orphan) error {
	if len(kept) == 0 {
		return nil
	}
	r.orphanMu.Lock()
	defer r.orphanMu.Unlock()
	list, err := readOrphanLog(r.dir)
	if err != nil {
		return err
	}
	for _, o := range kept {
		if !slices.ContainsFunc(list, func(x Orphan) bool { return x.Origin == o.Origin }) {
			list = append(list, o)
		}
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	if err := durable.WriteFile(durable.OS, filepath.Join(r.dir, orphanLog), b, 0o640); err != nil {
		return fmt.Errorf("replicate: recording orphans: %w", err)
	}
	r.mu.Lock()
	r.stats.Orphans = len(list)
	r.mu.Unlock()
	return nil
}

func readOrphanLog(dir string) ([]Orphan, error) {
	b, err := os.ReadFile(filepath.Join(dir, orphanLog))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("replicate: reading the orphan list: %w", err)
	}
	var list []Orphan
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("replicate: the orphan list %s: %w", filepath.Join(dir, orphanLog), err)
	}
	return list, nil
}

// Orphans returns the orphans this replica re-delivered into its primary
// when it rejoined (see [KeepOrphans]), oldest first: the operator's list.
func (r *Replica) Orphans() ([]Orphan, error) {
	r.orphanMu.Lock()
	defer r.orphanMu.Unlock()
	return readOrphanLog(r.dir)
}

// A HighWater is how far a mailbox of a rejoining node has gone: the UIDs
// it gave (below UIDNext) and its HIGHESTMODSEQ. The new primary raises
// its own mailbox (same id and UIDVALIDITY) to at least these before the
// node is aligned, so that a UID the node gave to an orphan is never given
// to another message (IMAP clients of the node may have cached it), and
// the node's mod-sequences stay behind the primary's.
type HighWater struct {
	User          string              `json:"user"`
	MailboxID     resilmail.MailboxID `json:"mailbox_id"`
	UIDValidity   uint32              `json:"uidvalidity"`
	UIDNext       uint32              `json:"uidnext"`
	HighestModSeq uint64              `json:"highestmodseq"`
}

// A Reserver is a Source that raises its mailboxes to a rejoining node's
// high-water marks (POST reserve): replicate/store's Store is one. Reserve
// raises the mailbox hw names (if it has it, with that UIDVALIDITY) to
// UIDNEXT hw.UIDNext and HIGHESTMODSEQ hw.HighestModSeq at least, durably,
// and reports whether it changed anything.
type Reserver interface {
	Reserve(ctx context.Context, hw HighWater) (bool, error)
}

// highWaters returns the high-water marks of every mailbox of inv.
func highWaters(ctx context.Context, inv Inventory) ([]HighWater, error) {
	users, err := inv.Users(ctx)
	if err != nil {
		return nil, err
	}
	var out []HighWater
	for _, u := range users {
		list, err := inv.Mailboxes(ctx, u)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, mb := range list {
			out = append(out, HighWater{User: u, MailboxID: mb.ID, UIDValidity: mb.UIDValidity, UIDNext: mb.UIDNext, HighestModSeq: mb.HighestModSeq})
		}
	}
	return out, nil
}

// postHighWaters sends hws to the primary's POST reserve.
func (r *Replica) postHighWaters(ctx context.Context, hws []HighWater) (int, error) {
	b, err := json.Marshal(hws)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := r.request(ctx, "POST", "/reserve?replica="+url.QueryEscape(r.opts.Name), bytes.NewReader(b))
	if err != nil {
		return 0, fmt.Errorf("replicate: reserving UIDs on the primary: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, statusError("reserving UIDs on the primary", resp)
	}
	var n struct {
		Raised int `json:"raised"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&n); err != nil {
		return 0, fmt.Errorf("replicate: the primary's answer to reserve: %w", err)
	}
	return n.Raised, nil
}

// maxHighWaters bounds the marks one POST reserve carries.
const maxHighWaters = 1 << 20

// serveReserve raises the Source's mailboxes to a rejoining node's
// high-water marks, if it is a Reserver.
func (p *Primary) serveReserve(w http.ResponseWriter, r *http.Request) {
	rs, ok := p.src.(Reserver)
	if !ok {
		writeError(w, http.StatusMethodNotAllowed, "not_supported", "this primary's source cannot reserve UIDs")
		return
	}
	var hws []HighWater
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 256<<20)).Decode(&hws); err != nil || len(hws) > maxHighWaters {
		p.badRequest(w, r, fmt.Errorf("reserve: %v (%d marks)", err, len(hws)))
		return
	}
	raised := 0
	for _, hw := range hws {
		ok, err := rs.Reserve(r.Context(), hw)
		if err != nil {
			p.log.Error("replicate: reserving a rejoining node's UIDs", "user", hw.User, "mailbox", hw.MailboxID, "err", err)
			writeError(w, http.StatusInternalServerError, "internal", err.Error())
			return
		}
		if ok {
			raised++
		}
	}
	if raised > 0 {
		p.log.Warn("replicate: mailboxes raised to a rejoining node's UIDs and mod-sequences", "replica", r.URL.Query().Get("replica"), "mailboxes", raised)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]int{"raised": raised})
}
