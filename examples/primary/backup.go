package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/resilmail/resilmail/backup"
	"github.com/resilmail/resilmail/replicate/store"
)

// backupConfig is the -backup flags: the store backed up continuously
// from inside the server (the store's folder is locked by the server, so
// examples/backup run cannot read it while the server runs).
type backupConfig struct {
	repo          string
	keyFile       string
	secretFile    string
	caFile        string
	flushEvery    time.Duration
	snapshotEvery time.Duration
}

// startBackup opens the repository and returns the worker that follows
// the store into it until ctx is done; a failing run is logged and started
// again after a pause, never stopping the mail server.
func startBackup(ctx context.Context, c backupConfig, st *store.Store, log *slog.Logger) (func(ctx context.Context) error, error) {
	opts := &backup.Options{Logger: log, FlushEvery: c.flushEvery, SnapshotEvery: c.snapshotEvery}
	if c.keyFile != "" {
		key, err := backup.ReadKeyFile(c.keyFile)
		if err != nil {
			return nil, err
		}
		opts.Key = key
	}
	var to backup.TargetOptions
	if c.secretFile != "" {
		b, err := os.ReadFile(c.secretFile)
		if err != nil {
			return nil, fmt.Errorf("-backup-secret-file: %w", err)
		}
		to.Secret = []byte(strings.TrimSpace(string(b)))
	}
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return nil, fmt.Errorf("-backup-ca: %w", err)
		}
		to.RootCAs = x509.NewCertPool()
		if !to.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-backup-ca %s: no certificate", c.caFile)
		}
	}
	t, err := backup.NewTarget(c.repo, &to)
	if err != nil {
		return nil, fmt.Errorf("-backup: %w", err)
	}
	repo, err := backup.Open(ctx, t, opts)
	if err != nil {
		return nil, fmt.Errorf("-backup: %w", err)
	}
	return func(ctx context.Context) error {
		for {
			err := repo.Follow(ctx, st)
			if ctx.Err() != nil {
				return nil
			}
			log.Error("primary: the backup stopped; starting it again in 30 s", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(30 * time.Second):
			}
		}
	}, nil
}
