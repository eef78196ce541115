package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/failover/statuspage"
)

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"-node", "a=http://127.0.0.1:1/", "-node", "b=http://127.0.0.1:2"})
	require.NoError(t, err)
	assert.Equal(t, []statuspage.Node{{Name: "a", URL: "http://127.0.0.1:1"}, {Name: "b", URL: "http://127.0.0.1:2"}}, c.nodes)
	for _, bad := range [][]string{{}, {"-node", "a"}, {"-node", "=http://x"}, {"-node", "a=http://x", "-interval", "1ms"}, {"-node", "a=http://x", "extra"}} {
		_, err := parseFlags(bad)
		assert.Error(t, err, bad)
	}
}

func TestServesThePage(t *testing.T) {
	node := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/status" {
			io.WriteString(w, `{"role":"primary","epoch":3}`)
			return
		}
		http.NotFound(w, r)
	}))
	defer node.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, config{listen: "127.0.0.1:0", nodes: []statuspage.Node{{Name: "a", URL: node.URL}}, interval: 100 * time.Millisecond}, slog.New(slog.NewTextHandler(io.Discard, nil)), ready)
	}()
	addr := (<-ready).String()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/status.json")
		require.NoError(t, err)
		var r statuspage.Report
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&r))
		resp.Body.Close()
		if r.Primaries == 1 {
			assert.Equal(t, "primary", r.Nodes[0].Role)
			break
		}
		require.True(t, time.Now().Before(deadline), "the page never showed the primary")
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Contains(t, string(b), "One primary: mail flows.")
	cancel()
	require.NoError(t, <-done)
}
