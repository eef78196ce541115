package lmtpstore_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/lmtpstore"
)

// deliver sends one message to rcpts over a new LMTP session and returns
// the recipients answered 250 and the failures.
func deliver(t *testing.T, addr, from, body string, opts *smtp.MailOptions, rcpts ...string) ([]string, smtp.LMTPDataError) {
	t.Helper()
	c := dialLMTP(t, addr)
	defer c.Close()
	require.NoError(t, c.Hello("relay.test"))
	require.NoError(t, c.Mail(from, opts))
	for _, r := range rcpts {
		require.NoError(t, c.Rcpt(r, nil))
	}
	w, err := c.Data()
	require.NoError(t, err)
	_, err = io.WriteString(w, body)
	require.NoError(t, err)
	ok, err := w.CloseWithLMTPResponse()
	var failed smtp.LMTPDataError
	if err != nil {
		require.ErrorAs(t, err, &failed)
	}
	var accepted []string
	for r := range ok {
		accepted = append(accepted, r)
	}
	return accepted, failed
}

// TestRetryAfter451StoredOnce: the replicas do not acknowledge in time, so
// the message is stored and answered 451; the relay delivers it again
// (after a restart of the server, the log read back from disk): it is
// answered 250 for the copy stored the first time, not stored twice. A
// different message from the same sender is stored as usual.
func TestRetryAfter451StoredOnce(t *testing.T) {
	st := openStore(t, "alice@example.org", "bob@example.org")
	logPath := filepath.Join(t.TempDir(), "deliveries")
	var failing atomic.Bool
	commit := func(ctx context.Context, pos uint64) error {
		if failing.Load() {
			return errors.New("no replica answered within 2s")
		}
		return nil
	}
	backend := func() *lmtpstore.Backend {
		dl, err := lmtpstore.OpenDeliveryLog(logPath, &lmtpstore.DeliveryLogOptions{Logger: quiet})
		require.NoError(t, err)
		return &lmtpstore.Backend{Store: st, Logger: quiet, Commit: commit, Deliveries: dl}
	}
	msg := "Received: from mx.example.net by relay.test with ESMTP id Q123\r\nMessage-ID: <m1@example.net>\r\nSubject: once\r\n\r\nbody\r\n"
	rcpts := []string{"alice@example.org", "bob@example.org"}

	failing.Store(true)
	addr := serve(t, backend())
	ok, failed := deliver(t, addr, "sender@example.net", msg, nil, rcpts...)
	assert.Empty(t, ok)
	require.Len(t, failed, 2)
	assert.Equal(t, 451, failed["alice@example.org"].Code)
	assert.Len(t, inbox(t, st, "alice@example.org"), 1, "stored before the 451")

	failing.Store(false)
	be := backend() // a restarted server reads the log back
	addr = serve(t, be)
	ok, failed = deliver(t, addr, "sender@example.net", msg, nil, rcpts...)
	assert.Empty(t, failed)
	assert.ElementsMatch(t, rcpts, ok)
	for _, r := range rcpts {
		assert.Len(t, inbox(t, st, r), 1, "%s: stored once", r)
	}
	assert.Equal(t, uint64(2), be.Deliveries.Duplicates())

	// Another message (here the same Message-ID, another body, as a
	// list's copy has) is another delivery.
	ok, _ = deliver(t, addr, "sender@example.net", msg+"-- \r\nlist footer\r\n", nil, "alice@example.org")
	assert.Len(t, ok, 1)
	assert.Len(t, inbox(t, st, "alice@example.org"), 2)
}

// TestDamagedDeliveryLog: a log that does not parse is moved aside and
// the server starts with an empty one.
func TestDamagedDeliveryLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "deliveries")
	require.NoError(t, os.WriteFile(path, []byte("resilmail-deliveries 1\ngarbage"), 0o600))
	dl, err := lmtpstore.OpenDeliveryLog(path, &lmtpstore.DeliveryLogOptions{Logger: quiet})
	require.NoError(t, err)
	assert.Zero(t, dl.Duplicates())
	aside, err := filepath.Glob(path + ".damaged-*")
	require.NoError(t, err)
	assert.Len(t, aside, 1)
}
