package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail/mxpool"
	"github.com/resilmail/resilmail/mxpool/pool"
)

// poolRole is this relay's part in the MX pool's shared policy: the publisher
// (-policy FILE) or a follower (-follow URL), or nothing (every recipient
// accepted).
type poolRole struct {
	check    pool.Checker          // nil: no pool policy (relayCheck decides)
	snapshot func() *pool.Snapshot // the policy in use; nil without a pool
	status   func() policyState    // for /status and /metrics; nil without a pool
	handler  http.Handler          // the publisher's, served at /policy
	run      func(ctx context.Context) error
	close    func() error
}

// openPool opens the publisher or follower that c asks for, keeping its
// state under the queue folder.
func openPool(c config, nt *nodeTLS, log *slog.Logger) (*poolRole, error) {
	if c.policyFile == "" && c.follow == "" {
		return &poolRole{}, nil
	}
	if c.policyFile != "" && c.follow != "" {
		return nil, errors.New("-policy and -follow exclude each other: one node publishes, the others follow")
	}
	secret, err := poolSecret(c)
	if err != nil {
		return nil, fmt.Errorf("the pool's policy: %w", err)
	}
	if c.follow != "" {
		keys, err := parsePublicKeys(c.policyKeys)
		if err != nil {
			return nil, err
		}
		if err := checkURL("follow", c.follow, c.insecureHTTP); err != nil {
			return nil, err
		}
		trust := pool.Trust{Pool: c.pool, Keys: keys}
		f, err := pool.OpenFollower(c.follow, secret, filepath.Join(c.dir, "policy-follower"), &pool.FollowerOptions{Logger: log, Name: c.hostname, Trust: trust, HTTPClient: nt.client})
		if err != nil {
			return nil, err
		}
		status := func() policyState {
			st := f.Status()
			return policyState{role: "follower", version: st.Version, appliedAt: st.AppliedAt, heard: st.LastHeard, stale: st.Stale}
		}
		return &poolRole{check: f, snapshot: f.Snapshot, status: status, run: f.Run, close: f.Close}, nil
	}
	if c.httpAddr == "" {
		return nil, errors.New("-policy publishes the policy on the -http address: set -http")
	}
	auth := pool.AuthToken
	if nt.verifiedClients {
		auth = pool.AuthTokenOrClientCert
	}
	p, err := pool.OpenPublisher(filepath.Join(c.dir, "policy-publisher"), secret, &pool.PublisherOptions{Logger: log, Pool: c.pool, Auth: auth})
	if err != nil {
		return nil, err
	}
	log.Warn("relay: the pool's policy is signed; give every follower -policy-key "+hex.EncodeToString(p.PublicKey()), "pool", c.pool, "key_id", pool.KeyID(p.PublicKey()))
	w := &policyWatcher{file: c.policyFile, pub: p, log: log, onError: c.onPolicyError}
	if err := w.load(context.Background()); err != nil {
		p.Close()
		return nil, err
	}
	status := func() policyState {
		st := p.Status()
		ps := policyState{role: "publisher", version: st.Version, appliedAt: st.UpdatedAt}
		if s := p.Snapshot(); s != nil {
			ps.heard = s.Issued
		}
		return ps
	}
	return &poolRole{check: p, snapshot: p.Snapshot, status: status, handler: p, run: w.run, close: p.Close}, nil
}

// parsePublicKeys reads -policy-key: the publisher's ed25519 public keys in
// hexadecimal, separated by commas (two while the publisher's key is
// replaced).
func parsePublicKeys(s string) ([]ed25519.PublicKey, error) {
	if s == "" {
		return nil, errors.New("-follow needs -policy-key, the publisher's public key (the publisher logs it at start)")
	}
	var keys []ed25519.PublicKey
	for _, h := range strings.Split(s, ",") {
		b, err := hex.DecodeString(strings.TrimSpace(h))
		if err != nil || len(b) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("-policy-key %q: not a hex-encoded ed25519 public key", h)
		}
		keys = append(keys, b)
	}
	return keys, nil
}

// poolSecret is the pool's shared secret: from -secret-file, or
// $RESILMAIL_POOL_SECRET.
func poolSecret(c config) ([]byte, error) {
	if len(c.secret) > 0 {
		return c.secret, nil
	}
	return c.secretSrc.Read(nil)
}

// policyWatcher publishes the policy file whenever it changes. A file that
// does not parse is logged and the last good policy stays in force.
type policyWatcher struct {
	file    string
	pub     *pool.Publisher
	log     *slog.Logger
	last    []byte
	onError func(error) // tests: a policy file was read and refused
}

func (w *policyWatcher) load(ctx context.Context) error {
	data, err := os.ReadFile(w.file)
	if err != nil {
		return err
	}
	if bytes.Equal(data, w.last) {
		return nil
	}
	var pol pool.Policy
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pol); err != nil {
		return fmt.Errorf("policy file %s: %w", w.file, err)
	}
	v, err := w.pub.Publish(ctx, &pol)
	if err != nil {
		return fmt.Errorf("policy file %s: %w", w.file, err)
	}
	w.last = data
	w.log.Warn("relay: pool policy published", "file", w.file, "version", v, "domains", len(pol.Domains))
	return nil
}

func (w *policyWatcher) run(ctx context.Context) error {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := w.load(ctx); err != nil && ctx.Err() == nil {
			if w.onError != nil {
				w.onError(err)
			}
			if err.Error() != lastErr {
				w.log.Error("relay: policy file not published; the last good policy stays in force", "err", err)
			}
			lastErr = err.Error()
			continue
		}
		lastErr = ""
	}
}

// maxPolicySize is the largest limit a pool's policy may set for this
// relay: the queue holds a message in memory while it stores it.
const maxPolicySize = 256 << 20

// maxSize returns the message size limit in force: the pool's policy's,
// when it sets one, so that every MX of the pool answers alike whatever
// its -max-size, else def.
func (pl *poolRole) maxSize(def int64) func() int64 {
	return func() int64 {
		if pl.snapshot == nil {
			return def
		}
		if s := pl.snapshot(); s != nil && s.Policy.MaxMessageSize > 0 {
			return min(s.Policy.MaxMessageSize, maxPolicySize)
		}
		return def
	}
}

// routes returns the routes of the pool's policy in force, none before
// the policy is known.
func (pl *poolRole) routes() []mxpool.Route {
	if s := pl.snapshot(); s != nil {
		return s.Policy.Routes
	}
	return nil
}

func enhanced(s string) smtp.EnhancedCode {
	var e smtp.EnhancedCode
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return smtp.NoEnhancedCode
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return smtp.NoEnhancedCode
		}
		e[i] = n
	}
	return e
}
