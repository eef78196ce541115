package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail/failover/proxyproto"
	"github.com/resilmail/resilmail/imapstore"
	"github.com/resilmail/resilmail/internal/loginguard"
	"github.com/resilmail/resilmail/internal/passwd"
	"github.com/resilmail/resilmail/pop3"
	"github.com/resilmail/resilmail/replicate/store"
)

// mailServers are the servers users read their mail with: IMAP and POP3
// (and over implicit TLS), with logins from one passwd-file and one guard
// against password guessing.
type mailServers struct {
	imap            *imapstore.Server
	pop3            *pop3.Server
	imapLn, imapsLn net.Listener
	pop3Ln, pop3sLn net.Listener
	closed          bool
}

func addrString(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

// startMailServers opens the passwd-file and the listeners; without
// -passwd nothing is served.
func startMailServers(c config, st *store.Store, log *slog.Logger) (*mailServers, error) {
	ms := &mailServers{}
	if c.passwdFile == "" {
		if c.imaps != "" || c.pop3s != "" {
			return nil, errors.New("-imaps and -pop3s need -passwd")
		}
		log.Warn("primary: no -passwd: IMAP and POP3 are off")
		return ms, nil
	}
	pf, err := passwd.Open(c.passwdFile, &passwd.Options{Logger: log})
	if err != nil {
		return nil, err
	}
	var tc *tls.Config
	if c.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("-tls-cert, -tls-key: %w", err)
		}
		tc = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	guard := loginguard.New(&loginguard.Options{Logger: log})
	ms.imap, err = imapstore.New(st, pf, &imapstore.Options{Logger: log, TLSConfig: tc, Guard: guard, MaxMessageSize: c.maxSize,
		ParseCache: filepath.Join(c.dir, "imap-structure.cache")})
	if err != nil {
		return nil, err
	}
	ms.pop3, err = pop3.New(st, pf, &pop3.Options{Logger: log, TLSConfig: tc, Guard: guard, Hostname: c.hostname})
	if err != nil {
		return nil, err
	}
	for _, l := range []struct {
		addr string
		tls  bool
		ln   *net.Listener
	}{{c.imap, false, &ms.imapLn}, {c.imaps, true, &ms.imapsLn}, {c.pop3, false, &ms.pop3Ln}, {c.pop3s, true, &ms.pop3sLn}} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			ms.close()
			return nil, err
		}
		ln = trustProxies(ln, c.proxyTrust, log) // the header comes before TLS
		if l.tls {
			ln = tls.NewListener(ln, tc)
		}
		*l.ln = ln
	}
	return ms, nil
}

// serve runs the servers in g.
func (ms *mailServers) serve(g *errgroup.Group) {
	for _, ln := range []net.Listener{ms.imapLn, ms.imapsLn} {
		if ln == nil {
			continue
		}
		g.Go(func() error {
			if err := ms.imap.Serve(ln); err != nil && !errors.Is(err, imapstore.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				return err
			}
			return nil
		})
	}
	for _, ln := range []net.Listener{ms.pop3Ln, ms.pop3sLn} {
		if ln == nil {
			continue
		}
		g.Go(func() error {
			if err := ms.pop3.Serve(ln); err != nil && !errors.Is(err, pop3.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				return err
			}
			return nil
		})
	}
}

func (ms *mailServers) close() {
	if ms.closed {
		return
	}
	ms.closed = true
	if ms.imap != nil {
		ms.imap.Close()
	}
	if ms.pop3 != nil {
		ms.pop3.Close()
	}
	for _, ln := range []net.Listener{ms.imapLn, ms.imapsLn, ms.pop3Ln, ms.pop3sLn} {
		if ln != nil {
			ln.Close()
		}
	}
}

// trustProxies reads a PROXY protocol v2 header on the connections from
// the prefixes in trust (none: ln as is).
func trustProxies(ln net.Listener, trust []netip.Prefix, log *slog.Logger) net.Listener {
	if len(trust) == 0 {
		return ln
	}
	return &proxyproto.Listener{Listener: ln, Trusted: trust, Logger: log}
}

// parsePrefixes reads comma-separated addresses or CIDR prefixes.
func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an address nor a CIDR prefix", f)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}
