package main

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"

	"github.com/resilmail/resilmail/quarantine"
	"github.com/resilmail/resilmail/queue/intake"
)

func TestRecorderBoundsTheCostOfRejects(t *testing.T) {
	var kept int
	var fail error
	rec := recorder(func(context.Context, quarantine.Entry) error { kept++; return fail }, "mx1", slog.New(slog.DiscardHandler))
	rej := func(code smtp.EnhancedCode) intake.Rejection {
		return intake.Rejection{From: "x@bad.example", Rcpt: "who@example.org", Reply: &smtp.SMTPError{Code: 550, EnhancedCode: code}}
	}
	// Relay probes and malformed addresses cost no disk write.
	for _, code := range []smtp.EnhancedCode{{5, 7, 1}, {5, 1, 2}, {5, 1, 3}} {
		assert.NoError(t, rec(context.Background(), rej(code)))
	}
	assert.Zero(t, kept)
	// An unknown user of a served domain is kept.
	assert.NoError(t, rec(context.Background(), rej(smtp.EnhancedCode{5, 1, 1})))
	assert.Equal(t, 1, kept)
	// A full store or outbox: the refusal goes out unrecorded, not as 451.
	for _, full := range []error{quarantine.ErrFull, quarantine.ErrOutboxFull} {
		fail = full
		assert.NoError(t, rec(context.Background(), rej(smtp.EnhancedCode{5, 1, 1})))
	}
	// Any other failure still makes the client try again (451).
	fail = errors.New("disk on fire")
	assert.Error(t, rec(context.Background(), rej(smtp.EnhancedCode{5, 1, 1})))
}
