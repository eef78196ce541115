package sts

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/smtpout"
)

// stsLogBuffer collects log output for assertions.
type stsLogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *stsLogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *stsLogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTestTLSPolicy(t testing.TB, e *stsEnv, opts *TLSPolicyOptions) *TLSPolicy {
	t.Helper()
	if opts == nil {
		opts = &TLSPolicyOptions{}
	}
	if opts.Logger == nil {
		opts.Logger = stsTestLogger(t)
	}
	p, err := NewTLSPolicy(e.new(t), opts)
	require.NoError(t, err)
	return p
}

func TestTLSPolicyEnforceDropsNonMatching(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.publish("example.com", "id1", Enforce, 86400, "mx1.example.com", "*.backup.example.net")
	p := newTestTLSPolicy(t, e, nil)

	hosts := []string{"MX1.example.com.", "mx.attacker.example", "b1.backup.example.net", "a.b1.backup.example.net"}
	dec, err := p.Decide(stsCtx(t), "example.com", hosts)
	require.NoError(t, err)
	require.NotNil(t, dec.STS)
	assert.Equal(t, "id1", dec.STS.ID)
	require.Len(t, dec.Hosts, 4)

	allowed := []TLSHost{dec.Hosts[0], dec.Hosts[2]}
	assert.Equal(t, allowed, dec.Allowed())
	for _, h := range allowed {
		assert.True(t, h.Allowed, h.Host)
		assert.Equal(t, smtpout.TLSRequired, h.TLS, h.Host)
		assert.False(t, h.STSMismatch, h.Host)
	}
	assert.Equal(t, "mx1.example.com", dec.Hosts[0].ServerName, "verified against the MX name, normalised")
	assert.Equal(t, "b1.backup.example.net", dec.Hosts[2].ServerName)

	for _, i := range []int{1, 3} {
		h := dec.Hosts[i]
		assert.Equal(t, hosts[i], h.Host)
		assert.False(t, h.Allowed, h.Host)
		assert.True(t, h.STSMismatch, h.Host)
		assert.Contains(t, h.Reason, "matches no mx pattern")
		assert.Contains(t, h.Reason, "id1")
		assert.Contains(t, h.Reason, "enforce")
	}
}

func TestTLSPolicyEnforceAllDropped(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
	p := newTestTLSPolicy(t, e, nil)

	dec, err := p.Decide(stsCtx(t), "example.com", []string{"evil1.example", "evil2.example"})
	require.Error(t, err)
	var de *resilmail.DeliveryError
	require.ErrorAs(t, err, &de)
	assert.True(t, de.Temporary(), "mail waits rather than bounces")
	assert.False(t, de.Permanent)
	assert.Equal(t, "mta-sts", de.Command)
	assert.Equal(t, "4.7.5", de.EnhancedCode)
	assert.Contains(t, de.Message, "evil1.example")
	assert.ErrorIs(t, err, ErrNoAllowedMX)
	assert.Empty(t, dec.Allowed())
	assert.Len(t, dec.Hosts, 2, "the decision still says why each host was dropped")
}

func TestTLSPolicyTestingReportsOnly(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	var logs stsLogBuffer
	e.publish("example.com", "t1", Testing, 86400, "mx.example.com")
	p := newTestTLSPolicy(t, e, &TLSPolicyOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))})

	dec, err := p.Decide(stsCtx(t), "example.com", []string{"mx.example.com", "other.example"})
	require.NoError(t, err)
	require.NotNil(t, dec.STS)
	require.Len(t, dec.Allowed(), 2, "testing mode drops nothing")
	for _, h := range dec.Hosts {
		assert.Equal(t, smtpout.TLSOpportunistic, h.TLS, "testing mode requires nothing")
	}
	assert.False(t, dec.Hosts[0].STSMismatch)
	assert.True(t, dec.Hosts[1].STSMismatch, "mismatch reported")
	assert.Contains(t, dec.Hosts[1].Reason, "matches no mx pattern")
	assert.Contains(t, logs.String(), "host=other.example")
	assert.Contains(t, logs.String(), "would be dropped")
}

func TestTLSPolicyOpportunistic(t *testing.T) {
	tests := []struct {
		name  string
		setup func(e *stsEnv)
	}{
		{"no record", func(e *stsEnv) {}},
		{"mode none", func(e *stsEnv) { e.publish("example.com", "n1", None, 86400) }},
		{"policy cannot be fetched", func(e *stsEnv) {
			e.res.setID("example.com", "x1")
			e.srv.set("example.com", stsReply{status: http.StatusInternalServerError})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newSTSEnv(t, "example.com")
			tt.setup(e)
			p := newTestTLSPolicy(t, e, nil)
			dec, err := p.Decide(stsCtx(t), "example.com", []string{"mx1.other.example", "mx2.other.example"})
			require.NoError(t, err)
			assert.Nil(t, dec.STS)
			assert.False(t, dec.Required)
			require.Len(t, dec.Allowed(), 2)
			for _, h := range dec.Hosts {
				assert.Equal(t, smtpout.TLSOpportunistic, h.TLS)
				assert.Equal(t, h.Host, h.ServerName)
				assert.False(t, h.STSMismatch)
			}
			if tt.name == "policy cannot be fetched" {
				var se *Error
				assert.ErrorAs(t, dec.STSErr, &se, "failure reported for TLSRPT-style reporting")
			} else {
				assert.NoError(t, dec.STSErr)
			}
		})
	}
}

func TestTLSPolicyRequired(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	p := newTestTLSPolicy(t, e, &TLSPolicyOptions{Required: []string{"Bank.Example.", "example.com"}})
	ctx := stsCtx(t)

	dec, err := p.Decide(ctx, "bank.example", []string{"mx.bank.example", "Backup.Provider.example."})
	require.NoError(t, err)
	assert.True(t, dec.Required)
	require.Len(t, dec.Allowed(), 2)
	assert.Equal(t, smtpout.TLSRequired, dec.Hosts[0].TLS)
	assert.Equal(t, "mx.bank.example", dec.Hosts[0].ServerName)
	assert.Equal(t, smtpout.TLSRequired, dec.Hosts[1].TLS)
	assert.Equal(t, "backup.provider.example", dec.Hosts[1].ServerName)

	// Not a subdomain.
	dec, err = p.Decide(ctx, "sub.bank.example", []string{"mx.bank.example"})
	require.NoError(t, err)
	assert.False(t, dec.Required)
	assert.Equal(t, smtpout.TLSOpportunistic, dec.Hosts[0].TLS)

	// Required and MTA-STS enforce together: both apply.
	e.publish("example.com", "id1", Enforce, 86400, "mx.example.com")
	dec, err = p.Decide(ctx, "example.com", []string{"mx.example.com", "other.example"})
	require.NoError(t, err)
	assert.Equal(t, smtpout.TLSRequired, dec.Hosts[0].TLS)
	assert.True(t, dec.Hosts[0].Allowed)
	assert.False(t, dec.Hosts[1].Allowed)

	_, err = NewTLSPolicy(nil, &TLSPolicyOptions{Required: []string{"not a domain"}})
	assert.Error(t, err)
}

func TestTLSPolicyWithoutMTASTS(t *testing.T) {
	p, err := NewTLSPolicy(nil, &TLSPolicyOptions{Logger: stsTestLogger(t)})
	require.NoError(t, err)
	dec, err := p.Decide(context.Background(), "example.com", []string{"mx.example.com"})
	require.NoError(t, err)
	assert.Equal(t, smtpout.TLSOpportunistic, dec.Hosts[0].TLS)
}

func TestTLSPolicyContextDone(t *testing.T) {
	e := newSTSEnv(t, "example.com")
	e.res.setID("example.com", "id1")
	p := newTestTLSPolicy(t, e, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := p.Decide(ctx, "example.com", []string{"mx.example.com"})
	assert.True(t, errors.Is(err, context.Canceled), "got %v", err)
}

func BenchmarkTLSPolicyCached(b *testing.B) {
	e := newSTSEnv(b, "example.com")
	e.opts.Logger = slog.New(slog.DiscardHandler)
	e.publish("example.com", "id1", Enforce, 86400, "mx1.example.com", "*.example.net")
	m, err := Open(e.res, &e.opts)
	require.NoError(b, err)
	p, err := NewTLSPolicy(m, &TLSPolicyOptions{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(b, err)
	ctx := context.Background()
	hosts := []string{"mx1.example.com", "mx2.example.net", "mx3.example.net"}
	_, err = p.Decide(ctx, "example.com", hosts) // warm the cache
	require.NoError(b, err)
	e.clock.Advance(time.Minute)

	b.ReportAllocs()
	for b.Loop() {
		dec, err := p.Decide(ctx, "example.com", hosts)
		if err != nil || len(dec.Hosts) != 3 || !dec.Hosts[2].Allowed {
			b.Fatalf("Decide: %v %+v", err, dec)
		}
	}
	b.StopTimer()
	if n := e.srv.requests.Load(); n != 1 {
		b.Fatalf("%d fetches, want 1", n)
	}
}
