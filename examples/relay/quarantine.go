package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/passwd"
	"github.com/resilmail/resilmail/internal/secret"
	"github.com/resilmail/resilmail/quarantine"
	"github.com/resilmail/resilmail/queue/intake"
)

// pen is this relay's part in the pool's quarantine: the centre's store
// (-quarantine DIR), or an edge's outbox and shipper (-quarantine-ship
// URL), or nothing (rejects are not kept).
type pen struct {
	record  func(ctx context.Context, r intake.Rejection) error                 // nil: not kept
	keep    func(ctx context.Context, e quarantine.Entry, body io.Reader) error // a message with its body; nil: not kept
	handler http.Handler                                                        // the centre's, served at /quarantine/
	run     func(ctx context.Context) error
	close   func() error
	outbox  func() quarantine.OutboxStats // an edge's; nil elsewhere
}

// openQuarantine opens what c asks for. The centre releases through
// release (the queue); nt is how this node talks to the others.
//
// Every party has a credential of its own: an edge ships with its own
// password (-ship-secret-file, checked against -quarantine-edges on the
// centre) or its certificate from the private CA, and that credential
// opens the ingest endpoint only; the operator logs in to the pages with
// an account of the -admin-passwd file. The pool's secret opens neither.
func openQuarantine(c config, release resilmail.Deliverer, nt *nodeTLS, log *slog.Logger) (*pen, error) {
	if c.quarantine == "" && c.quarantineShip == "" {
		return &pen{}, nil
	}
	if c.quarantine != "" && c.quarantineShip != "" {
		return nil, errors.New("-quarantine and -quarantine-ship exclude each other: one node keeps the quarantine, the others ship to it")
	}
	node := c.hostname
	if node == "" {
		node, _ = os.Hostname()
	}
	if c.quarantineShip != "" {
		if err := checkURL("quarantine-ship", c.quarantineShip, c.insecureHTTP); err != nil {
			return nil, err
		}
		client := nt.client
		pass, err := c.shipSecret.Read(nil)
		switch {
		case err == nil:
			client = &http.Client{Transport: &basicAuthTransport{user: node, password: string(pass), next: nt.client.Transport}}
		case errors.Is(err, secret.ErrMissing) && c.tlsCert != "":
			// The node's certificate is its credential, and the centre
			// records this edge's entries under the certificate's name.
			if cn, err := certName(c.tlsCert, c.tlsKey); err != nil {
				return nil, err
			} else if cn != node {
				return nil, fmt.Errorf("-quarantine-ship with -tls-cert: -hostname %q is not the certificate's name %q, under which the centre records this edge's entries", node, cn)
			}
		default:
			return nil, fmt.Errorf("-quarantine-ship: this edge's shipping credential: %w (or give -tls-cert for a client certificate)", err)
		}
		ob, err := quarantine.OpenOutbox(filepath.Join(c.dir, "quarantine-outbox"), &quarantine.OutboxOptions{Logger: log, Node: node, MaxSize: c.maxSize,
			// Bounded while the centre is away or a flood of rejects
			// comes in; beyond, refusals go out unrecorded.
			MaxPending: 100_000, MaxPendingBytes: 1 << 30})
		if err != nil {
			return nil, err
		}
		sh, err := quarantine.NewShipper(ob, c.quarantineShip, &quarantine.ShipperOptions{Logger: log, HTTPClient: client})
		if err != nil {
			ob.Close()
			return nil, err
		}
		add := func(ctx context.Context, e quarantine.Entry) error { return ob.Add(ctx, e, nil) }
		return &pen{record: recorder(add, node, log), keep: ob.Add, run: sh.Run, close: ob.Close, outbox: ob.Stats}, nil
	}

	if c.httpAddr == "" {
		return nil, errors.New("-quarantine takes the other MXs' rejects on the -http address: set -http")
	}
	if c.adminPasswd == "" {
		return nil, errors.New("-quarantine needs -admin-passwd, the operators' accounts (a Dovecot passwd-file)")
	}
	admins, err := passwd.Open(c.adminPasswd, &passwd.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("-admin-passwd: %w", err)
	}
	var edges *passwd.File
	if c.quarantineEdges != "" {
		if edges, err = passwd.Open(c.quarantineEdges, &passwd.Options{Logger: log}); err != nil {
			return nil, fmt.Errorf("-quarantine-edges: %w", err)
		}
	}
	// Whoever logs in with an operator's account sees everything.
	auth := quarantine.AuthorizerFunc(func(_ context.Context, who string) (quarantine.Scope, error) {
		if slices.Contains(admins.Users().Names(), who) {
			return quarantine.Scope{All: true}, nil
		}
		return quarantine.Scope{}, quarantine.ErrForbidden
	})
	// About 2.2 KB of index per recorded reject: the cap keeps a flood of
	// them near half a gigabyte.
	st, err := quarantine.Open(c.quarantine, auth, &quarantine.Options{Logger: log, Deliverer: release, MaxSize: c.maxSize, MaxEntries: 250_000})
	if err != nil {
		return nil, err
	}
	scheme := "http://"
	if nt.server != nil {
		scheme = "https://"
	}
	ui, err := quarantine.NewHandler(st, &quarantine.HandlerOptions{
		Authenticate: basicLogin(admins),
		BaseURL:      scheme + httpHost(c.httpAddr) + "/quarantine",
		Realm:        "resilmail quarantine",
		Logger:       log,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/quarantine/ingest", st.IngestHandler(&quarantine.IngestOptions{Identify: edgeLogin(edges, nt.verifiedClients), Logger: log}))
	mux.Handle("/quarantine/", http.StripPrefix("/quarantine", ui))
	put := func(ctx context.Context, e quarantine.Entry) error {
		return st.Put(ctx, e, nil)
	}
	return &pen{record: recorder(put, node, log), keep: st.Put, handler: mux, run: st.Run, close: st.Close}, nil
}

// basicLogin authenticates an operator with HTTP basic authentication
// against the passwd-file f.
func basicLogin(f *passwd.File) func(*http.Request) (string, error) {
	return func(r *http.Request) (string, error) {
		user, pass, ok := r.BasicAuth()
		if !ok {
			return "", errors.New("no credentials")
		}
		if err := f.Authenticate(user, pass); err != nil {
			return "", err
		}
		return user, nil
	}
}

// edgeLogin authenticates an edge at the ingest endpoint and names it: the
// user of the edge's own password in the edges' passwd-file (when edges is
// not nil), or the name of a client certificate the server verified
// against the private CA (when certs is set). The centre records the
// edge's entries under that name only.
func edgeLogin(edges *passwd.File, certs bool) func(*http.Request) (string, error) {
	return func(r *http.Request) (string, error) {
		if user, pass, ok := r.BasicAuth(); ok && edges != nil {
			return user, edges.Authenticate(user, pass)
		}
		if name := verifiedPeer(r); certs && name != "" {
			return name, nil
		}
		return "", errors.New("no edge credential (a client certificate or the edge's password)")
	}
}

// recorder turns a refused recipient into a metadata-only entry, kept
// durably by keep before the client sees the refusal.
//
// What costs a disk write is bounded: a recipient refused for its syntax or
// because its domain is not the pool's (a relay probe) is not kept, only one
// unknown in a domain of the pool is, whose owner may want to see it; and
// when the outbox or the store is full, the refusal goes out unrecorded
// (counted in dropped, logged once per thousand) rather than turning the
// answer into 451 for everyone.
func recorder(keep func(context.Context, quarantine.Entry) error, node string, log *slog.Logger) func(context.Context, intake.Rejection) error {
	var dropped atomic.Uint64
	return func(ctx context.Context, r intake.Rejection) error {
		if !worthKeeping(r) {
			return nil
		}
		now := time.Now()
		e := quarantine.Entry{
			ID:         quarantine.NewID(now),
			Envelope:   resilmail.Envelope{From: r.From, To: []resilmail.Recipient{{Addr: r.Rcpt}}},
			ClientAddr: r.ClientAddr,
			HELO:       r.HELO,
			Node:       node,
			Time:       now,
			Reason:     quarantine.Reason{Kind: quarantine.KindRecipient, Reply: replyText(r)},
		}
		e.Recipients = []quarantine.RecipientState{{Addr: r.Rcpt, Status: quarantine.Held, Changed: now}}
		err := keep(ctx, e)
		if errors.Is(err, quarantine.ErrFull) || errors.Is(err, quarantine.ErrOutboxFull) {
			if n := dropped.Add(1); n%1000 == 1 {
				log.Warn("relay: quarantine full, refused recipients go unrecorded", "dropped", n, "err", err)
			}
			return nil
		}
		return err
	}
}

// worthKeeping reports whether a refusal is kept in the quarantine: not a
// relay probe (5.7.1) nor a malformed address (5.1.2, 5.1.3).
func worthKeeping(r intake.Rejection) bool {
	if r.Reply == nil {
		return true
	}
	switch r.Reply.EnhancedCode {
	case smtp.EnhancedCode{5, 7, 1}, smtp.EnhancedCode{5, 1, 2}, smtp.EnhancedCode{5, 1, 3}:
		return false
	}
	return true
}

// replyText is the reply as the client sees it, e.g. "550 5.1.1 no such user".
func replyText(r intake.Rejection) string {
	if r.Reply == nil {
		return ""
	}
	s := fmt.Sprint(r.Reply.Code)
	if ec := r.Reply.EnhancedCode; ec[0] > 0 {
		s += fmt.Sprintf(" %d.%d.%d", ec[0], ec[1], ec[2])
	}
	return s + " " + r.Reply.Message
}

// httpHost is the host:port at which addr is reached: the wildcard
// address becomes localhost.
func httpHost(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "localhost"
	}
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}

// certName is the common name of the certificate in certFile, the name a
// centre that verifies it knows this node by.
func certName(certFile, keyFile string) (string, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return "", fmt.Errorf("-tls-cert/-tls-key: %w", err)
	}
	return cert.Leaf.Subject.CommonName, nil
}
