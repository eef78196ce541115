package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDemo runs the README's first command: the whole deployment on
// loopback with a real etcd (embedded in the test process), mail through both relays, a switchover and a
// failback, a kill -9 of the primary and the standby's automatic
// promotion, the old primary's rejoin, every acknowledged message read
// back over IMAP through a forwarded port, the status page showing every
// node and one primary.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	dir := t.TempDir()
	err := run(context.Background(), config{dir: dir, demo: true, out: &out}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("%s (end):\n%s", filepath.Base(l), b)
		}
	}
	require.NoError(t, err, "%s", out.String())
	t.Log(out.String())
	for _, want := range []string{
		"demo: switchover mail1 -> mail2 at epoch ",
		"demo: failback mail2 -> mail1 at epoch ",
		"demo: kill -9 of mail1 (primary, epoch ",
		"demo: mail1 restarted and rejoined as mail2's standby",
		"acknowledged messages readable",
		"4 nodes reachable, one primary; nothing lost",
	} {
		assert.Contains(t, out.String(), want)
	}
}

func TestFlags(t *testing.T) {
	c, err := parseFlags([]string{"-demo"})
	require.NoError(t, err)
	assert.True(t, c.demo)
	assert.Equal(t, "resilmail-cluster", c.dir)
	assert.Empty(t, c.etcdEndpoints, "embedded etcd by default")
	c, err = parseFlags([]string{"-etcd-endpoints", "http://127.0.0.1:2379"})
	require.NoError(t, err)
	assert.Equal(t, "http://127.0.0.1:2379", c.etcdEndpoints)
	_, err = parseFlags([]string{"extra"})
	assert.Error(t, err)
}
