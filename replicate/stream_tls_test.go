package replicate_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/replicate"
)

// TestStreamOverHTTP2WithTLS replicates over HTTP/2 and TLS, first
// authenticated by the shared secret, then by client certificates alone.
func TestStreamOverHTTP2WithTLS(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir())
	require.NoError(t, src.CreateUser(ctx, "alice"))
	addN(t, src, "alice", "INBOX", 5)

	for _, auth := range []string{"secret", "client certificate"} {
		t.Run(auth, func(t *testing.T) {
			var h2, plain atomic.Int64
			opts := &replicate.PrimaryOptions{Secret: streamSecret, Heartbeat: 50 * time.Millisecond, Logger: quietLogger()}
			if auth == "client certificate" {
				opts.Secret = nil
				opts.Authenticate = func(r *http.Request) error {
					if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
						return errors.New("no client certificate")
					}
					return nil
				}
			}
			p, err := replicate.NewPrimary(src, opts)
			require.NoError(t, err)
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.ProtoMajor == 2 {
					h2.Add(1)
				} else {
					plain.Add(1)
				}
				p.Handler().ServeHTTP(w, r)
			}))
			srv.EnableHTTP2 = true
			if auth == "client certificate" {
				srv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
			}
			srv.StartTLS()
			defer srv.Close()

			client := srv.Client()
			ropts := &replicate.ReplicaOptions{HTTPClient: client}
			if auth == "client certificate" {
				ropts.Secret = []byte("not the secret: the certificate decides")
				tr := client.Transport.(*http.Transport)
				tr.TLSClientConfig.Certificates = []tls.Certificate{srv.TLS.Certificates[0]}
			}
			dst := openStore(t, t.TempDir())
			r, stop := startReplica(t, dst, srv.URL, t.TempDir(), ropts)
			defer stop() // before srv.Close, which waits for the stream to end
			waitApplied(t, r, src)
			requireSame(t, src, dst)
			assert.NotZero(t, h2.Load(), "requests over HTTP/2")
			assert.Zero(t, plain.Load(), "no request over HTTP/1")
		})
	}
}
