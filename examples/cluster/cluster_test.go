package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDemo runs the README's first command: the whole deployment on
// loopback, mail through both relays, read back over IMAP through the
// standby, the status page showing every node and one primary.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), config{dir: t.TempDir(), demo: true, out: &out}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err, "%s", out.String())
	t.Log(out.String())
	assert.Contains(t, out.String(), "demo: IMAP through the standby's forwarded port: INBOX holds 20 messages")
	assert.Contains(t, out.String(), "4 nodes reachable, one primary; nothing lost")
}

func TestFlags(t *testing.T) {
	c, err := parseFlags([]string{"-demo"})
	require.NoError(t, err)
	assert.True(t, c.demo)
	assert.Equal(t, "resilmail-cluster", c.dir)
	_, err = parseFlags([]string{"extra"})
	assert.Error(t, err)
}
