package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/smtpin"
	"github.com/resilmail/resilmail/quarantine"
	"github.com/resilmail/resilmail/queue"
)

// quarantineAdmin is the user name of the quarantine pages' administrator;
// the password is the pool's secret.
const quarantineAdmin = "admin"

// pen is this relay's part in the pool's quarantine: the centre's store
// (-quarantine DIR), or an edge's outbox and shipper (-quarantine-ship
// URL), or nothing (rejects are not kept).
type pen struct {
	record  func(ctx context.Context, r smtpin.Rejection) error // nil: not kept
	handler http.Handler                                        // the centre's, served at /quarantine/
	run     func(ctx context.Context) error
	close   func() error
}

// openQuarantine opens what c asks for. The centre releases through q.
func openQuarantine(c config, q *queue.Queue, log *slog.Logger) (*pen, error) {
	if c.quarantine == "" && c.quarantineShip == "" {
		return &pen{}, nil
	}
	if c.quarantine != "" && c.quarantineShip != "" {
		return nil, errors.New("-quarantine and -quarantine-ship exclude each other: one node keeps the quarantine, the others ship to it")
	}
	secret, err := poolSecret(c)
	if err != nil {
		return nil, fmt.Errorf("the quarantine: %w", err)
	}
	node := c.hostname
	if c.quarantineShip != "" {
		ob, err := quarantine.OpenOutbox(filepath.Join(c.dir, "quarantine-outbox"), &quarantine.OutboxOptions{Logger: log, Node: node, MaxSize: c.maxSize})
		if err != nil {
			return nil, err
		}
		sh, err := quarantine.NewShipper(ob, c.quarantineShip, &quarantine.ShipperOptions{Logger: log, Secret: secret})
		if err != nil {
			ob.Close()
			return nil, err
		}
		add := func(ctx context.Context, e quarantine.Entry) error { return ob.Add(ctx, e, nil) }
		return &pen{record: recorder(add, node), run: sh.Run, close: ob.Close}, nil
	}

	if c.httpAddr == "" {
		return nil, errors.New("-quarantine takes the other MXs' rejects on the -http address: set -http")
	}
	st, err := quarantine.Open(c.quarantine, &quarantine.StaticAuthorizer{Admins: []string{quarantineAdmin}}, &quarantine.Options{Logger: log, Deliverer: q, MaxSize: c.maxSize})
	if err != nil {
		return nil, err
	}
	ui, err := quarantine.NewHandler(st, &quarantine.HandlerOptions{
		Authenticate: basicAdmin(secret),
		BaseURL:      "http://" + httpHost(c.httpAddr) + "/quarantine",
		Realm:        "resilmail quarantine",
		Logger:       log,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/quarantine/ingest", st.IngestHandler(&quarantine.IngestOptions{Secret: secret, Logger: log}))
	mux.Handle("/quarantine/", http.StripPrefix("/quarantine", ui))
	put := func(ctx context.Context, e quarantine.Entry) error {
		return st.Put(ctx, e, nil)
	}
	return &pen{record: recorder(put, node), handler: mux, run: st.Run, close: st.Close}, nil
}

// recorder turns a refused recipient into a metadata-only entry, kept
// durably by keep before the client sees the refusal.
func recorder(keep func(context.Context, quarantine.Entry) error, node string) func(context.Context, smtpin.Rejection) error {
	return func(ctx context.Context, r smtpin.Rejection) error {
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
		return keep(ctx, e)
	}
}

// replyText is the reply as the client sees it, e.g. "550 5.1.1 no such user".
func replyText(r smtpin.Rejection) string {
	if r.Reply == nil {
		return ""
	}
	s := fmt.Sprint(r.Reply.Code)
	if ec := r.Reply.EnhancedCode; ec[0] > 0 {
		s += fmt.Sprintf(" %d.%d.%d", ec[0], ec[1], ec[2])
	}
	return s + " " + r.Reply.Message
}

// basicAdmin authenticates the pages' administrator with HTTP basic
// authentication: user quarantineAdmin, the pool's secret as password.
func basicAdmin(secret []byte) func(*http.Request) (string, error) {
	return func(r *http.Request) (string, error) {
		user, pass, ok := r.BasicAuth()
		if !ok {
			return "", errors.New("no credentials")
		}
		u := subtle.ConstantTimeCompare([]byte(user), []byte(quarantineAdmin))
		p := subtle.ConstantTimeCompare([]byte(pass), secret)
		if u&p != 1 {
			return "", errors.New("bad credentials")
		}
		return quarantineAdmin, nil
	}
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
