package smtpout_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/smtpout"
)

func TestTLS(t *testing.T) {
	serverTLS, roots := newCert(t)
	brokenTLS := serverTLS.Clone()
	brokenTLS.MaxVersion = tls.VersionTLS11 // the client wants 1.2 or later

	starttls := func(cfg *tls.Config) func(t *testing.T, be *backend) *testServer {
		return func(t *testing.T, be *backend) *testServer {
			return startServer(t, be, func(s *smtp.Server) { s.TLSConfig = cfg }, nil)
		}
	}
	plain := starttls(nil)
	implicit := func(t *testing.T, be *backend) *testServer {
		return startServer(t, be, nil, func(l net.Listener) net.Listener { return tls.NewListener(l, serverTLS) })
	}
	verifying := &tls.Config{RootCAs: roots}

	tests := []struct {
		name      string
		server    func(t *testing.T, be *backend) *testServer
		opts      smtpout.Options
		wantTLS   bool
		wantConns int
		fail      string // Command of the expected temporary failure
	}{
		{name: "opportunistic, offered", server: starttls(serverTLS), wantTLS: true, wantConns: 1},
		{name: "opportunistic, not offered", server: plain, wantConns: 1},
		{name: "opportunistic, handshake fails", server: starttls(brokenTLS), wantConns: 2},
		{name: "opportunistic, caller's config does not verify", server: starttls(serverTLS),
			opts: smtpout.Options{TLSConfig: &tls.Config{RootCAs: x509.NewCertPool()}}, wantConns: 2},
		{name: "required, verified", server: starttls(serverTLS),
			opts: smtpout.Options{TLS: smtpout.TLSRequired, TLSConfig: verifying}, wantTLS: true, wantConns: 1},
		{name: "required, not offered", server: plain,
			opts: smtpout.Options{TLS: smtpout.TLSRequired}, wantConns: 1, fail: "STARTTLS"},
		{name: "required, not verified", server: starttls(serverTLS),
			opts: smtpout.Options{TLS: smtpout.TLSRequired}, wantConns: 1, fail: "STARTTLS"},
		{name: "required, handshake fails", server: starttls(brokenTLS),
			opts: smtpout.Options{TLS: smtpout.TLSRequired, TLSConfig: verifying}, wantConns: 1, fail: "STARTTLS"},
		{name: "none", server: starttls(serverTLS), opts: smtpout.Options{TLS: smtpout.TLSNone}, wantConns: 1},
		{name: "implicit", server: implicit,
			opts: smtpout.Options{TLS: smtpout.TLSImplicit, TLSConfig: verifying}, wantTLS: true, wantConns: 1},
		{name: "implicit, not verified", server: implicit,
			opts: smtpout.Options{TLS: smtpout.TLSImplicit}, wantConns: 1, fail: "connect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tt.server(t, newBackend())
			opts := tt.opts
			opts.Addr = srv.addr
			d := newDeliverer(t, opts)
			env := envelope("a@example.com")
			err := d.Deliver(context.Background(), env, body())
			if tt.fail != "" {
				checkOutcomes(t, env, host, err, map[string]outcome{"a@example.com": {command: tt.fail}})
				assert.Empty(t, srv.be.messages())
			} else {
				require.NoError(t, err)
				msgs := srv.be.messages()
				require.Len(t, msgs, 1)
				assert.Equal(t, tt.wantTLS, msgs[0].TLS, "TLS")
				// Delivered twice over the same session.
				require.NoError(t, d.Deliver(context.Background(), envelope("b@example.com"), body()))
			}
			assert.Equal(t, tt.wantConns, srv.ln.accepted(), "connections")
			srv.be.mu.Lock()
			for _, h := range srv.be.helos {
				assert.Equal(t, "client.test", h, "EHLO name")
			}
			srv.be.mu.Unlock()
		})
	}
}

func TestAuth(t *testing.T) {
	serverTLS, _ := newCert(t)
	check := func(username, password string) error {
		if username != "user" || password != "secret" {
			return errors.New("bad credentials")
		}
		return nil
	}
	authAs := func(password string) func(string) (sasl.Client, error) {
		return func(string) (sasl.Client, error) { return sasl.NewPlainClient("", "user", password), nil }
	}
	tests := []struct {
		name      string
		tls       *tls.Config
		smarthost string // a name dialled as the test server's address
		auth      func(string) (sasl.Client, error)
		fail      *outcome
	}{
		{name: "loopback in plain text", auth: authAs("secret")},
		{name: "wrong password", auth: authAs("wrong"), fail: &outcome{command: "AUTH", code: 535, enhanced: "5.7.8"}},
		{name: "remote host in plain text", smarthost: "smarthost.test", auth: authAs("secret"),
			fail: &outcome{command: "AUTH"}},
		{name: "remote host over TLS", smarthost: "smarthost.test", tls: serverTLS, auth: authAs("secret")},
		{name: "no client for this host", smarthost: "smarthost.test",
			auth: func(string) (sasl.Client, error) { return nil, nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			be := newBackend()
			be.auth = check
			srv := startServer(t, be, func(s *smtp.Server) { s.TLSConfig = tt.tls }, nil)
			opts := smtpout.Options{Auth: tt.auth}
			addr, h := srv.addr, host
			if tt.smarthost != "" {
				addr, h = net.JoinHostPort(tt.smarthost, "25"), tt.smarthost
				opts.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, network, srv.addr)
				}
			}
			d := newDeliverer(t, opts)
			env := envelope("a@example.com")
			err := d.DeliverTo(context.Background(), addr, env, body())
			if tt.fail != nil {
				checkOutcomes(t, env, h, err, map[string]outcome{"a@example.com": *tt.fail})
				assert.Empty(t, be.messages())
				return
			}
			require.NoError(t, err)
			assert.Len(t, be.messages(), 1)
		})
	}
}

func TestDeliverTargetVerifiesPerDestination(t *testing.T) {
	serverTLS, roots := newCert(t) // valid for mx.test, localhost and 127.0.0.1
	srv := startServer(t, newBackend(), func(s *smtp.Server) { s.TLSConfig = serverTLS }, nil)
	// The deliverer's own configuration trusts the test roots but, like
	// opportunistic TLS, does not check names.
	d := newDeliverer(t, smtpout.Options{TLSConfig: &tls.Config{RootCAs: roots, InsecureSkipVerify: true}})
	ctx := context.Background()

	// Dialled by address, verified against the MX name: accepted.
	env := envelope("a@example.com")
	err := d.DeliverTarget(ctx, smtpout.Target{Addr: srv.addr, ServerName: "mx.test", TLS: smtpout.TLSRequired, Verify: true}, env, body())
	require.NoError(t, err)
	msgs := srv.be.messages()
	require.Len(t, msgs, 1)
	assert.True(t, msgs[0].TLS)

	// A name the certificate does not cover: refused before MAIL, as a
	// temporary failure, in spite of the deliverer's InsecureSkipVerify.
	env = envelope("b@example.com")
	err = d.DeliverTarget(ctx, smtpout.Target{Addr: srv.addr, ServerName: "mx.other.test", TLS: smtpout.TLSRequired, Verify: true}, env, body())
	checkOutcomes(t, env, "mx.other.test", err, map[string]outcome{"b@example.com": {command: "STARTTLS"}})
	var herr x509.HostnameError
	assert.ErrorAs(t, err, &herr)
	assert.Len(t, srv.be.messages(), 1, "nothing sent to a host that failed verification")

	// Without Verify the same target is opportunistic as configured.
	env = envelope("c@example.com")
	require.NoError(t, d.DeliverTarget(ctx, smtpout.Target{Addr: srv.addr, ServerName: "mx.other.test"}, env, body()))
	assert.Len(t, srv.be.messages(), 2)
}
