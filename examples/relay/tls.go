package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"
)

// nodeTLS is how this relay talks to the other nodes of the pool over HTTP:
// the server side of -http, and the client that follows the policy and
// ships the quarantine.
type nodeTLS struct {
	// server is the -http listener's TLS configuration; nil means plain
	// HTTP, which is only allowed on loopback or with -insecure-http.
	server *tls.Config
	// client talks to the publisher and the centre: it verifies them with
	// -tls-ca (or the system's roots) and presents this node's
	// certificate, when it has one, for mutual TLS.
	client *http.Client
	// verifiedClients is set when the server verifies client certificates
	// against -tls-ca: a node may then authenticate with its certificate
	// instead of a token or password.
	verifiedClients bool
}

// loadNodeTLS reads -tls-cert, -tls-key and -tls-ca.
func loadNodeTLS(c config) (*nodeTLS, error) {
	n := &nodeTLS{}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	var certs []tls.Certificate
	if c.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("-tls-cert/-tls-key: %w", err)
		}
		certs = []tls.Certificate{cert}
	}
	var pool *x509.CertPool
	if c.tlsCA != "" {
		pem, err := os.ReadFile(c.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("-tls-ca: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-tls-ca %s: no PEM certificate in it", c.tlsCA)
		}
	}
	if certs != nil {
		n.server = &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS12}
		if pool != nil {
			// Nodes may prove who they are with a certificate from
			// the private CA; the handlers decide what it allows.
			n.server.ClientCAs = pool
			n.server.ClientAuth = tls.VerifyClientCertIfGiven
			n.verifiedClients = true
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, Certificates: certs, MinVersion: tls.VersionTLS12}
	n.client = &http.Client{Transport: tr}
	return n, nil
}

// checkListen refuses a plain HTTP listener beyond loopback unless the
// operator asked for it with -insecure-http.
func (n *nodeTLS) checkListen(addr string, insecure bool) error {
	if n.server != nil || insecure {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-http %q: %w", addr, err)
	}
	if !isLoopback(host) {
		return fmt.Errorf("-http %s would serve the pool's policy, quarantine and credentials in clear beyond this machine: give -tls-cert and -tls-key, or -insecure-http to do it anyway", addr)
	}
	return nil
}

// checkURL refuses an http:// URL of another machine unless the operator
// asked for it with -insecure-http.
func checkURL(flag, raw string, insecure bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("-%s %q: %w", flag, raw, err)
	}
	if u.Scheme == "http" && !insecure && !isLoopback(u.Hostname()) {
		return fmt.Errorf("-%s %s is plain HTTP to another machine: use https (with -tls-ca for a private CA), or -insecure-http to do it anyway", flag, raw)
	}
	return nil
}

// isLoopback reports whether host is a loopback name or address.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// basicAuthTransport adds HTTP basic authentication to every request: an
// edge's own shipping credential.
type basicAuthTransport struct {
	user, password string
	next           http.RoundTripper
}

func (t *basicAuthTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.SetBasicAuth(t.user, t.password)
	return t.next.RoundTrip(r)
}

// verifiedPeer returns the common name of the client certificate that the
// server verified for r, or "".
func verifiedPeer(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return ""
	}
	return r.TLS.VerifiedChains[0][0].Subject.CommonName
}

// httpTimeouts are the -http server's.
const httpReadHeaderTimeout = 10 * time.Second
