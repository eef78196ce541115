package queue_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/dsn"
	"github.com/resilmail/resilmail/queue"
)

func TestRelayedNoticeForNotifySuccess(t *testing.T) {
	// The next hop offers no DSN for "relayed.example": the Deliverer
	// reports what it handed there; "dsn.example" took NOTIFY itself.
	s := newSink(nil)
	d := resilmail.DelivererFunc(func(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
		if env.From != "" {
			for _, r := range env.To {
				if strings.HasSuffix(r.Addr, "@relayed.example") {
					resilmail.ReportRelayed(ctx, r.Addr)
				}
			}
		}
		return s.Deliver(ctx, env, body)
	})
	q := open(t, t.TempDir(), d, nil)
	run(t, q)
	env := envelope("ok1", "a@relayed.example", "b@relayed.example", "c@dsn.example", "d@relayed.example")
	env.EnvID = "env-ok1"
	env.To[0].Notify = resilmail.NotifySuccess | resilmail.NotifyFailure
	env.To[0].ORCPT = "rfc822;A@relayed.example"
	env.To[2].Notify = resilmail.NotifySuccess
	env.To[3].Notify = resilmail.NotifyFailure // did not ask
	_, err := q.Enqueue(context.Background(), env, body("relay-me"))
	require.NoError(t, err)

	waitFor(t, "a success notice", func() bool { return len(s.delivered("sender@example.net")) == 1 })
	waitFor(t, "queue empty", func() bool { return len(q.List(queue.Filter{})) == 0 })
	notices := s.delivered("sender@example.net")
	require.Len(t, notices, 1, "one notice, for a only")
	p, err := dsn.Parse(strings.NewReader(s.bodies[notices[0]]))
	require.NoError(t, err)
	require.NoError(t, p.Report.Validate())
	assert.Equal(t, "env-ok1", p.Report.OriginalEnvelopeID)
	require.Len(t, p.Report.Recipients, 1)
	r := p.Report.Recipients[0]
	assert.Equal(t, dsn.Relayed, r.Action)
	assert.Equal(t, "2.0.0", r.Status)
	assert.Equal(t, "a@relayed.example", r.FinalRecipient)
	assert.Equal(t, "rfc822;A@relayed.example", r.OriginalRecipient)
	assert.True(t, p.HeadersOnly, "a success notice returns the headers only")
	assert.Contains(t, string(p.Original), "Subject: relay-me")
	assert.NotContains(t, string(p.Original), "relay-me\r\n\r\n")
	st := q.Stats()
	assert.Equal(t, uint64(1), st.Notifications)
}
