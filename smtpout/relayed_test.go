package smtpout_test

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/smtpout"
)

// relayedCollector gathers what a Deliverer reports with
// resilmail.ReportRelayed.
type relayedCollector struct {
	mu   sync.Mutex
	got  []string
	done bool
}

func (c *relayedCollector) ctx() context.Context {
	return resilmail.WithRelayedReport(context.Background(), func(rcpt string) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.done {
			panic("reported after Deliver returned")
		}
		c.got = append(c.got, rcpt)
	})
}

func (c *relayedCollector) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = true
	sort.Strings(c.got)
	return c.got
}

func TestRelayedIsReportedOnlyWithoutDSN(t *testing.T) {
	refuseB := func(to string, _ *smtp.RcptOptions) error {
		if to == "b@example.com" {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}
	for _, c := range []struct {
		name string
		lmtp bool
		dsn  bool
		want []string
	}{
		{"smtp without DSN", false, false, []string{"a@example.com", "c@example.com"}},
		{"smtp with DSN", false, true, nil},
		{"lmtp without DSN", true, false, []string{"a@example.com", "c@example.com"}},
		{"lmtp with DSN", true, true, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			be := newBackend()
			be.rcpt = refuseB
			srv := startServer(t, be, func(s *smtp.Server) { s.EnableDSN, s.LMTP = c.dsn, c.lmtp }, nil)
			d := newDeliverer(t, smtpout.Options{Addr: srv.addr, LMTP: c.lmtp})
			env := envelope("a@example.com", "b@example.com", "c@example.com")
			env.To[0].Notify = resilmail.NotifySuccess
			var col relayedCollector
			err := d.Deliver(col.ctx(), env, body())
			var de *resilmail.DeliveryError
			require.True(t, errors.As(err, &de), "b is refused: %v", err)
			assert.Equal(t, c.want, col.list(), "the refused recipient is never reported")
		})
	}
}
