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
