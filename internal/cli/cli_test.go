package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestMainExitCodes(t *testing.T) {
	ran := false
	serve := func(ctx context.Context, log *slog.Logger) error { ran = true; return nil }
	assert.Equal(t, 0, Main("t", flag.ErrHelp, false, serve))
	assert.Equal(t, 2, Main("t", errors.New("bad flag"), false, serve))
	assert.False(t, ran, "bad flags run nothing")
	assert.Equal(t, 0, Main("t", nil, false, serve))
	assert.True(t, ran)
	assert.Equal(t, 1, Main("t", nil, false, func(context.Context, *slog.Logger) error { return errors.New("port taken") }))
}

// TestMainStopsOnSIGTERM: a command serving until its context ends stops
// cleanly, exit code 0, when the process gets SIGTERM.
func TestMainStopsOnSIGTERM(t *testing.T) {
	done := make(chan int, 1)
	started := make(chan struct{})
	go func() {
		done <- Main("t", nil, false, func(ctx context.Context, _ *slog.Logger) error {
			close(started)
			<-ctx.Done()
			return nil
		})
	}()
	<-started
	assert.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGTERM))
	select {
	case code := <-done:
		assert.Equal(t, 0, code)
	case <-time.After(10 * time.Second):
		t.Fatal("SIGTERM did not stop the command")
	}
}

func TestLoggerLevel(t *testing.T) {
	var quiet, verbose bytes.Buffer
	Logger(&quiet, false).Info("delivered")
	Logger(&quiet, false).Warn("retrying")
	Logger(&verbose, true).Info("delivered")
	assert.NotContains(t, quiet.String(), "delivered")
	assert.Contains(t, quiet.String(), "retrying")
	assert.Contains(t, verbose.String(), "delivered")
}

func TestPlainHTTPOnlyOnLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr                  string
		withTLS, insecure, ok bool
	}{
		{"127.0.0.1:80", false, false, true},
		{"localhost:80", false, false, true},
		{"[::1]:80", false, false, true},
		{"0.0.0.0:80", false, false, false},
		{":80", false, false, false},
		{"192.0.2.1:80", false, false, false},
		{"192.0.2.1:80", true, false, true},
		{"192.0.2.1:80", false, true, true},
	} {
		err := CheckListen("http", tc.addr, tc.withTLS, tc.insecure)
		if (err == nil) != tc.ok {
			t.Errorf("CheckListen(%q, tls %v, insecure %v) = %v", tc.addr, tc.withTLS, tc.insecure, err)
		}
	}
	for _, tc := range []struct {
		url          string
		insecure, ok bool
	}{
		{"http://127.0.0.1:8026", false, true},
		{"https://mail1:8026", false, true},
		{"http://mail1:8026", false, false},
		{"http://mail1:8026", true, true},
	} {
		if err := CheckURL("primary", tc.url, tc.insecure); (err == nil) != tc.ok {
			t.Errorf("CheckURL(%q, insecure %v) = %v", tc.url, tc.insecure, err)
		}
	}
}
