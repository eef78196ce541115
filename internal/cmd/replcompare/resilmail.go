package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail/internal/lmtpstore"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// resilmailPair is a primary (the reference store behind its LMTP front
// end, serving the replication stream over HTTP) and a replica following
// it, in this process, on loopback. With ack set, an LMTP delivery is
// answered only once the replica has the message durably (AckOne).
type resilmailPair struct {
	ack bool

	primary, replica *store.Store
	lmtp             *smtp.Server
	web              *http.Server
	r                *replicate.Replica
	cancel           context.CancelFunc
	done             chan error
	lastUID          uint32
}

const benchUser = "bench@example.org"

func (s *resilmailPair) rcpt() string { return benchUser }

func (s *resilmailPair) start(ctx context.Context, dir string) (string, error) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var err error
	if s.primary, err = store.Open(filepath.Join(dir, "primary"), &store.Options{Logger: quiet}); err != nil {
		return "", err
	}
	if s.replica, err = store.Open(filepath.Join(dir, "replica"), &store.Options{Logger: quiet}); err != nil {
		return "", err
	}
	if err := s.primary.CreateUser(ctx, benchUser); err != nil {
		return "", err
	}
	secret := []byte("replcompare")
	mode := replicate.AckAsync
	if s.ack {
		mode = replicate.AckOne
	}
	p, err := replicate.NewPrimary(s.primary, &replicate.PrimaryOptions{Secret: secret, Mode: mode, Logger: quiet})
	if err != nil {
		return "", err
	}
	webLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	s.web = &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go s.web.Serve(webLn)

	be := &lmtpstore.Backend{Store: s.primary, Logger: quiet}
	if s.ack {
		be.Commit = p.Await
	}
	s.lmtp = smtp.NewServer(be)
	s.lmtp.LMTP = true
	s.lmtp.Domain = "primary.replcompare"
	lmtpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go s.lmtp.Serve(lmtpLn)

	s.r, err = replicate.NewReplica(s.replica, "http://"+webLn.Addr().String(), filepath.Join(dir, "inbox"),
		&replicate.ReplicaOptions{Name: "replica", Secret: secret, Logger: quiet})
	if err != nil {
		return "", err
	}
	rctx, stop := context.WithCancel(context.Background())
	s.cancel, s.done = stop, make(chan error, 1)
	go func() { s.done <- s.r.Run(rctx) }()
	return lmtpLn.Addr().String(), nil
}

func (s *resilmailPair) seen(found func(n int)) error {
	ctx := context.Background()
	msgs, err := s.replica.Fetch(ctx, benchUser, store.Inbox, store.Query{})
	if errors.Is(err, store.ErrNotFound) {
		return nil // the user has not reached the replica yet
	}
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.UID <= s.lastUID {
			continue
		}
		head, err := s.replica.Header(ctx, m.Digest, 2048)
		if err != nil {
			return err
		}
		s.lastUID = m.UID
		if n, ok := messageNumber(head); ok {
			found(n)
		}
	}
	return nil
}

func (s *resilmailPair) stop() {
	if s.lmtp != nil {
		s.lmtp.Close()
	}
	if s.web != nil {
		s.web.Close()
	}
	if s.r != nil {
		s.cancel()
		s.r.Close()
		<-s.done
	}
	for _, st := range []*store.Store{s.primary, s.replica} {
		if st != nil {
			st.Close()
		}
	}
}
