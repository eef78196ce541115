// Package cli is what the example commands share: how they log, and how
// they run until SIGINT or SIGTERM and turn the outcome into an exit code.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// Logger returns a command's logger on w: warnings and errors, and with
// verbose everything from Info up.
func Logger(w io.Writer, verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if !verbose {
		level = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// Main runs a command whose flags parsed with parseErr: 0 after -h, 2 and
// the error on standard error (prefixed by name) for bad flags; otherwise
// it runs serve with a Logger until serve returns, its context cancelled
// by SIGINT or SIGTERM, and returns 1 with the error printed if serve
// fails, 0 if not.
func Main(name string, parseErr error, verbose bool, serve func(ctx context.Context, log *slog.Logger) error) int {
	switch {
	case errors.Is(parseErr, flag.ErrHelp):
		return 0
	case parseErr != nil:
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, parseErr)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, Logger(os.Stderr, verbose)); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	}
	return 0
}
