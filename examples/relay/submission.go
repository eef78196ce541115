package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail/internal/loginguard"
	"github.com/resilmail/resilmail/internal/passwd"
	"github.com/resilmail/resilmail/internal/secret"
	"github.com/resilmail/resilmail/queue"
	"github.com/resilmail/resilmail/queue/intake"
)

// submission is the -submission listener: a message submission server
// (port 587 semantics, RFC 6409) in front of the relay's queue.
type submission struct {
	srv *smtp.Server
	ln  net.Listener
}

// checkSubmissionFlags refuses a submission setup that could never work or
// would be unsafe, before anything starts.
func checkSubmissionFlags(c config) error {
	dkim := c.dkimKey != "" || c.dkimSelector != "" || c.dkimDomain != ""
	if dkim && (c.dkimKey == "" || c.dkimSelector == "" || c.dkimDomain == "") {
		return errors.New("-dkim-key, -dkim-selector and -dkim-domain go together")
	}
	if c.submission == "" {
		if c.passwdFile != "" || dkim {
			return errors.New("-passwd and -dkim-* apply to the -submission listener: give -submission too")
		}
		return nil
	}
	if c.passwdFile == "" {
		return errors.New("-submission needs -passwd, the Dovecot passwd-file of the users who may submit")
	}
	if c.tlsCert == "" {
		return errors.New("-submission needs -tls-cert and -tls-key: passwords are only accepted inside TLS")
	}
	return nil
}

// loadDKIMKey reads -dkim-key, which only its owner may read.
func loadDKIMKey(c config) (*intake.DKIMSigner, error) {
	if c.dkimKey == "" {
		return nil, nil
	}
	data, err := secret.Source{File: c.dkimKey, Flag: "dkim-key"}.Read(func(string) string { return "" })
	if err != nil {
		return nil, fmt.Errorf("-dkim-key: %w", err)
	}
	key, err := intake.ParseDKIMKey(data)
	if err != nil {
		return nil, fmt.Errorf("-dkim-key %s: %w", c.dkimKey, err)
	}
	return &intake.DKIMSigner{Domain: c.dkimDomain, Selector: c.dkimSelector, Key: key}, nil
}

// openSubmission listens on -submission. Users of -passwd log in with AUTH
// PLAIN or LOGIN inside STARTTLS, may send as their own address
// (intake.SendAsSelf) to anyone, and their mail is signed with -dkim-key
// when it is given.
func openSubmission(c config, q *queue.Queue, tlsConfig *tls.Config, maxSize func() int64, policyLimit bool, log *slog.Logger) (*submission, error) {
	if c.submission == "" {
		return nil, nil
	}
	users, err := passwd.Open(c.passwdFile, &passwd.Options{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("-passwd: %w", err)
	}
	signer, err := loadDKIMKey(c)
	if err != nil {
		return nil, err
	}
	sub := &intake.Submission{Auth: users, Guard: loginguard.New(&loginguard.Options{Logger: log, Delay: c.loginDelay})}
	if signer != nil {
		// Copies of messages being signed, beyond 256 KiB: never
		// acknowledged, so a start clears them.
		spool := filepath.Join(c.dir, "submission-spool")
		if err := os.RemoveAll(spool); err != nil {
			return nil, err
		}
		if err := os.Mkdir(spool, 0o700); err != nil {
			return nil, err
		}
		sub.Signer, sub.SpoolDir = signer, spool
		rec, err := intake.DKIMRecord(signer.Key)
		if err != nil {
			return nil, err
		}
		log.Warn("relay: signing submitted mail with DKIM; publish this TXT record", "name", c.dkimSelector+"._domainkey."+c.dkimDomain, "record", rec)
	}
	be := &intake.Backend{Queue: q, Logger: log, MaxSize: maxSize, Hostname: c.hostname, MaxHops: c.maxHops, Submission: sub}
	srv := newSMTPServer(be, c, policyLimit)
	// go-smtp cannot see the TLS the Listener terminates; the Backend
	// refuses AUTH outside TLS itself.
	srv.AllowInsecureAuth = true
	tcp, err := listenSMTP(context.Background(), c.submission)
	if err != nil {
		return nil, err
	}
	ln := intake.NewListener(tcp, &intake.ListenerOptions{Logger: log, TLSConfig: tlsConfig, ErrorDelay: c.errorDelay, MaxConnsPerClient: c.maxPerClient})
	ln.Configure(srv)
	log.Warn("relay: submission listening", "addr", ln.Addr().String(), "users", users.Users().Len(), "dkim", signer != nil)
	return &submission{srv: srv, ln: ln}, nil
}

// newSMTPServer returns the go-smtp server of a listener of the relay.
// policyLimit says the pool's policy sets the size limit, which the backend
// checks.
func newSMTPServer(be smtp.Backend, c config, policyLimit bool) *smtp.Server {
	srv := smtp.NewServer(be)
	srv.Domain = c.hostname
	if srv.Domain == "" {
		srv.Domain = "localhost"
	}
	srv.MaxMessageBytes = c.maxSize
	if policyLimit {
		srv.MaxMessageBytes = 0
	}
	srv.MaxRecipients = 1000
	srv.WriteTimeout = 5 * time.Minute
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	srv.EnableBINARYMIME = false
	return srv
}
