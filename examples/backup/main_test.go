package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/backup"
	"github.com/resilmail/resilmail/replicate/store"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "backup-cmd-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "backup")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		panic(fmt.Sprintf("go build: %v\n%s", err, out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cmd runs the built command and returns its standard output; it fails the
// test unless the exit code is want.
func cmd(t *testing.T, want int, args ...string) string {
	t.Helper()
	c := exec.Command(binary, args...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %v: %v", args, err)
	}
	require.Equal(t, want, code, "backup %s\nstdout: %s\nstderr: %s", strings.Join(args, " "), out.String(), errb.String())
	return out.String()
}

func withStore(t *testing.T, dir string, fn func(s *store.Store)) {
	t.Helper()
	s, err := store.Open(dir, &store.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	defer s.Close()
	fn(s)
}

func TestCommands(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	storeDir, repoDir := filepath.Join(dir, "store"), filepath.Join(dir, "repo")
	keyFile := filepath.Join(dir, "key")
	require.NoError(t, os.WriteFile(keyFile, []byte("8d0b7ff5c5d6f1b0b7c4a7e3b39e8f1a2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e0f\n"), 0o600))
	withStore(t, storeDir, func(s *store.Store) {
		require.NoError(t, s.CreateUser(ctx, "alice"))
		for i := 0; i < 20; i++ {
			_, err := s.Append(ctx, "alice", "INBOX", nil, time.Time{}, strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i)))
			require.NoError(t, err)
		}
	})
	var sum backup.Summary
	require.NoError(t, json.Unmarshal([]byte(cmd(t, 0, "run", "-store", storeDir, "-repo", repoDir, "-key-file", keyFile, "-json")), &sum))
	assert.True(t, sum.Full)
	assert.Equal(t, 20, sum.NewBodies)
	// Without the key: refused, clearly.
	cmd(t, 1, "list", "-repo", repoDir)

	before := time.Now().UTC().Add(-time.Second)
	withStore(t, storeDir, func(s *store.Store) {
		_, err := s.Expunge(ctx, "alice", "INBOX", resilmail.NewUIDSet(5, 6))
		require.NoError(t, err)
	})
	out := cmd(t, 0, "run", "-store", storeDir, "-repo", repoDir, "-key-file", keyFile)
	assert.Contains(t, out, "incremental")
	assert.Contains(t, out, "18 / 2")

	out = cmd(t, 0, "list", "-repo", repoDir, "-key-file", keyFile)
	assert.Contains(t, out, "2 snapshots")
	out = cmd(t, 0, "list", "-repo", repoDir, "-key-file", keyFile, "-deleted-from", before.Format(time.RFC3339))
	assert.Contains(t, out, "2 messages")
	var msgs []backup.MessageInfo
	require.NoError(t, json.Unmarshal([]byte(cmd(t, 0, "list", "-repo", repoDir, "-key-file", keyFile, "-user", "alice", "-json")), &msgs))
	assert.Len(t, msgs, 18)

	// Restore one deleted message into the live store, as new.
	out = cmd(t, 0, "restore", "-repo", repoDir, "-key-file", keyFile, "-store", storeDir, "-user", "alice", "-mailbox", "INBOX", "-uid", "5")
	assert.Regexp(t, `messages restored\s+1`, out)
	withStore(t, storeDir, func(s *store.Store) {
		m, err := s.Fetch(ctx, "alice", "INBOX", store.Query{})
		require.NoError(t, err)
		assert.Len(t, m, 19)
	})

	out = cmd(t, 0, "verify", "-repo", repoDir, "-key-file", keyFile)
	assert.Regexp(t, `bodies checked\s+20`, out)
	cmd(t, 0, "verify", "-repo", repoDir, "-key-file", keyFile, "-sample", "auto/7")
	cmd(t, 2, "verify", "-repo", repoDir, "-key-file", keyFile, "-sample", "9/7", "-badflag")
	cmd(t, 1, "verify", "-repo", repoDir, "-key-file", keyFile, "-sample", "9/7")
	out = cmd(t, 0, "prune", "-repo", repoDir, "-key-file", keyFile, "-keep", "1")
	assert.Regexp(t, `snapshots removed\s+1`, out)

	// Rebuild a lost server from the backup alone, same UIDs.
	rebuilt := filepath.Join(dir, "rebuilt")
	cmd(t, 0, "restore", "-repo", repoDir, "-key-file", keyFile, "-store", rebuilt, "-keep-uids")
	withStore(t, rebuilt, func(s *store.Store) {
		m, err := s.Fetch(ctx, "alice", "INBOX", store.Query{})
		require.NoError(t, err)
		require.Len(t, m, 18)
		assert.Equal(t, uint32(1), m[0].UID)
		assert.Equal(t, uint32(7), m[4].UID)
	})
}

// serve runs the repository server on loopback and a backup to it.
func TestServe(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	require.NoError(t, os.WriteFile(secret, []byte("a shared secret of the backup machine\n"), 0o600))
	cmd(t, 2, "serve", "-dir", filepath.Join(dir, "served"))
	srv := exec.Command(binary, "serve", "-dir", filepath.Join(dir, "served"), "-listen", "127.0.0.1:0", "-secret-file", secret)
	stderr, err := srv.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	defer func() { srv.Process.Kill(); srv.Wait() }()
	line := make([]byte, 256)
	n, err := stderr.Read(line)
	require.NoError(t, err)
	_, addr, ok := strings.Cut(strings.TrimSpace(string(line[:n])), " on ")
	require.True(t, ok, "%q", line[:n])
	url := "http://" + addr + "/"

	storeDir := filepath.Join(dir, "store")
	withStore(t, storeDir, func(s *store.Store) {
		require.NoError(t, s.CreateUser(ctx, "bob"))
		_, err := s.Append(ctx, "bob", "INBOX", nil, time.Time{}, strings.NewReader("Subject: hi\r\n\r\nhi\r\n"))
		require.NoError(t, err)
	})
	out := cmd(t, 0, "run", "-store", storeDir, "-repo", url, "-secret-file", secret)
	assert.Contains(t, out, "first run")
	other := filepath.Join(dir, "other")
	require.NoError(t, os.WriteFile(other, []byte("not the secret of this machine\n"), 0o600))
	cmd(t, 1, "list", "-repo", url, "-secret-file", other)
	out = cmd(t, 0, "list", "-repo", url, "-secret-file", secret, "-user", "bob")
	assert.Contains(t, out, "1 messages")
}
