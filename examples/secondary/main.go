// Command secondary is a replica of the reference deployment's mailbox
// server (examples/primary), on another machine, that is never promoted (a
// guarded or delayed copy; for a standby that can take over, run
// examples/primary with -standby and -peer): it follows the primary's
// replication stream, verifies every body against its digest before
// keeping it, acknowledges each change once it is durable here, and applies
// the changes to a store of its own, in order per user.
//
//	export RESILMAIL_SECRET=...   # or -secret-file: mail2's (primary -replica-secret mail2)
//	go run ./examples/secondary -primary https://mail1:8026 -ca ca.pem -dir /var/lib/resilmail -name mail2 \
//	    -admin-passwd ops.passwd -tls-cert cert.pem -tls-key key.pem -http :8027
//
// Guard rails: an expunge of more than -guard-share of a mailbox (or a
// mailbox or user delete) is held until an operator confirms it, so that a
// client deleting everything on the primary does not delete it here too;
// -apply-delay keeps the store that far behind on purpose. A comparison
// with the primary (per-mailbox digests, bisected down to UIDs) runs every
// -compare and repairs what differs, holding large removals likewise.
//
// Its secret is its own when the primary names it in -replicas (the
// primary's -replica-secret NAME prints it), else the primary's; it comes
// from -secret-file or $RESILMAIL_SECRET, never from the command line. An
// http:// primary on another machine is refused unless -insecure-http.
//
// On its -http address (HTTPS and HTTP/2 with -tls-cert and -tls-key;
// plain HTTP beyond loopback is refused unless -insecure-http) it serves
// /status (JSON) and /metrics to anyone; its inventory at /inventory/
// (bearer token derived from its secret); and to the operators of
// -admin-passwd (a Dovecot-format passwd-file: {PLAIN}, {BLF-CRYPT},
// {SHA512-CRYPT}; HTTP basic auth; without it these answer 403):
//
//	GET  /held                      held changes and removals
//	POST /confirm?user=U&seq=N      apply a held change
//	POST /compare                   compare and repair now; a JSON body
//	                                {"confirm": [held removals...]} confirms
//	                                removals the last comparison held
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail/failover"
	"github.com/resilmail/resilmail/internal/cli"
	"github.com/resilmail/resilmail/internal/passwd"
	"github.com/resilmail/resilmail/internal/secret"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

type config struct {
	dir        string
	primary    string
	name       string
	secret     []byte
	secretSrc  secret.Source
	adminFile  string
	tlsCert    string
	tlsKey     string
	insecure   bool
	httpAddr   string
	applyDelay time.Duration
	compare    time.Duration
	guardShare float64
	guardMin   int
	ca         string
	verbose    bool

	forwards     []forward // -forward: client proxies to the active node
	forwardProxy bool      // -forward-proxy: send a PROXY v2 header
	forwardFrom  string    // -forward-from: local address to connect from
}

// parseFlags reads the command line (without the program name); getenv
// supplies the secret's default.
func parseFlags(args []string, getenv func(string) string) (config, error) {
	var c config
	fs := flag.NewFlagSet("secondary", flag.ContinueOnError)
	fs.StringVar(&c.dir, "dir", "resilmail-secondary", "data folder, created if missing and never removed by the program: the store under store/, the replication inbox under inbox/")
	fs.StringVar(&c.primary, "primary", "http://127.0.0.1:8026", "the primary's HTTP address (examples/primary -http)")
	fs.StringVar(&c.name, "name", "", "this replica's name, as the primary's -replicas and status know it (default: the host name)")
	fs.StringVar(&c.secretSrc.File, "secret-file", "", "file (mode 600) holding this replica's secret: its own (primary -replica-secret NAME) or the primary's (default: $RESILMAIL_SECRET)")
	refuse := secret.Refuse(fs, "secret", "RESILMAIL_SECRET", "secret-file")
	fs.StringVar(&c.adminFile, "admin-passwd", "", "Dovecot passwd-file of the operators who may use /held, /confirm and /compare (default: nobody)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "serve -http as HTTPS (HTTP/2) with this PEM certificate chain")
	fs.StringVar(&c.tlsKey, "tls-key", "", "the PEM private key of -tls-cert")
	fs.BoolVar(&c.insecure, "insecure-http", false, "allow plain HTTP between machines: -http beyond loopback without -tls-cert, an http:// -primary on another host")
	fs.StringVar(&c.httpAddr, "http", "127.0.0.1:8027", "HTTP listen address: /status, /metrics, /inventory/, /held, /confirm, /compare")
	fs.DurationVar(&c.applyDelay, "apply-delay", 0, "apply each change only once it is this old (a delayed replica); it is acknowledged at once")
	fs.DurationVar(&c.compare, "compare", time.Hour, "compare with the primary and repair this often; 0 compares only on demand (POST /compare)")
	fs.Float64Var(&c.guardShare, "guard-share", replicate.DefaultGuardShare, "hold an expunge of more than this share of a mailbox until confirmed")
	fs.IntVar(&c.guardMin, "guard-min", replicate.DefaultGuardMinMessages, "smallest mailbox the guard watches, and smallest delete it holds")
	fs.StringVar(&c.ca, "ca", "", "PEM certificates that sign an https:// primary's certificate (default: the system's)")
	fs.Var(forwardFlag{&c.forwards}, "forward", "relay the clients of a protocol that reach this standby to the active node, as proto,listen-host:port,target-host:port with proto imap, pop3, lmtp or submission (repeat for each)")
	fs.BoolVar(&c.forwardProxy, "forward-proxy", false, "with -forward: send the client's address in a PROXY protocol v2 header (the active node must trust this node: examples/primary -proxy-trust)")
	fs.StringVar(&c.forwardFrom, "forward-from", "", "with -forward: the local IP address to connect to the active node from (the address it trusts for PROXY headers; default: the system's choice)")
	fs.BoolVar(&c.verbose, "v", false, "log every reconnection and repair")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := refuse(); err != nil {
		return c, err
	}
	c.secretSrc.Env, c.secretSrc.Flag = "RESILMAIL_SECRET", "secret-file"
	sec, err := c.secretSrc.Read(getenv)
	if err != nil {
		return c, fmt.Errorf("no usable secret: %w", err)
	}
	c.secret = sec
	u, err := url.Parse(c.primary)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return c, fmt.Errorf("-primary %q: want the primary's http:// or https:// address", c.primary)
	}
	if err := cli.CheckURL("primary", c.primary, c.insecure); err != nil {
		return c, err
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return c, errors.New("-tls-cert and -tls-key go together")
	}
	if err := cli.CheckListen("http", c.httpAddr, c.tlsCert != "", c.insecure); err != nil {
		return c, err
	}
	c.primary = strings.TrimSuffix(c.primary, "/")
	if c.name == "" {
		if c.name, err = os.Hostname(); err != nil || c.name == "" {
			return c, errors.New("no -name, and no host name to use instead")
		}
	}
	if c.applyDelay < 0 || c.compare < 0 {
		return c, errors.New("-apply-delay and -compare cannot be negative")
	}
	if c.guardShare <= 0 || c.guardShare > 1 {
		return c, fmt.Errorf("-guard-share %v: want a share above 0 and at most 1", c.guardShare)
	}
	if c.guardMin < 1 {
		return c, errors.New("-guard-min must be at least 1")
	}
	return c, nil
}

func main() {
	c, err := parseFlags(os.Args[1:], os.Getenv)
	os.Exit(cli.Main("secondary", err, c.verbose, func(ctx context.Context, log *slog.Logger) error { return run(ctx, c, log, nil) }))
}

// httpClient is the client of the stream: HTTP/2 over TLS to an https://
// primary, verified with the certificates in the PEM file ca if set.
func httpClient(ca string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = true
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-ca %s: no PEM certificate in it", ca)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr}, nil
}

// node is what the HTTP endpoints read and act on.
type node struct {
	c        config
	st       *store.Store
	replica  *replicate.Replica
	comparer *replicate.Comparer
	admins   *passwd.File // -admin-passwd; nil: no operator
	log      *slog.Logger
}

// run serves until ctx is done. ready, if not nil, receives the HTTP
// listening address.
func run(ctx context.Context, c config, log *slog.Logger, ready chan<- net.Addr) error {
	if c.dir == "" {
		return errors.New("-dir is empty: the data folder holds mail and is never a temporary one")
	}
	st, err := store.Open(filepath.Join(c.dir, "store"), &store.Options{Logger: log})
	if err != nil {
		return err
	}
	defer st.Close()
	// Only the primary writes; the replica applies its changes. The role
	// is durable: a store that was a primary (it rejoins) stays refusing
	// local writes after a restart. A store that is a primary with
	// changes of its own (promoted by examples/primary, the promotable
	// node) is not silently demoted by starting the replica on it.
	if st.Role() == store.RolePrimary && st.Position() > 0 {
		return fmt.Errorf("the store in %s is a primary (epoch %d, %d changes): run examples/primary on it, or demote it there first (POST /operator/demote); examples/secondary only follows", c.dir, st.Epoch(), st.Position())
	}
	if err := st.SetReadOnly(true); err != nil {
		return err
	}
	repair := &replicate.RepairOptions{MaxRemoveShare: c.guardShare, MinHeldMessages: c.guardMin, Logger: log}
	client, err := httpClient(c.ca)
	if err != nil {
		return err
	}
	r, err := replicate.NewReplica(st, c.primary+"/replicate", filepath.Join(c.dir, "inbox"), &replicate.ReplicaOptions{
		Name:       c.name,
		Secret:     c.secret,
		HTTPClient: client,
		ApplyDelay: c.applyDelay,
		Hold:       replicate.NewExpungeGuard(st, &replicate.ExpungeGuardOptions{MaxShare: c.guardShare, MinMessages: c.guardMin, Logger: log}),
		Repair:     repair,
		Logger:     log,
	})
	if err != nil {
		return err
	}
	// With -compare 0 the comparer only runs on demand.
	cmp, err := r.Comparer(&replicate.ComparerOptions{Interval: c.compare, Repair: repair, Logger: log})
	if err != nil {
		return err
	}
	n := &node{c: c, st: st, replica: r, comparer: cmp, log: log}
	if c.adminFile != "" {
		if n.admins, err = passwd.Open(c.adminFile, &passwd.Options{Logger: log}); err != nil {
			return fmt.Errorf("-admin-passwd: %w", err)
		}
	}
	scheme := "http"
	if c.tlsCert != "" {
		// Load now, so that a bad certificate stops the start.
		if _, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey); err != nil {
			return fmt.Errorf("-tls-cert, -tls-key: %w", err)
		}
		scheme = "https"
	}
	h, err := n.handler()
	if err != nil {
		return err
	}
	hln, err := net.Listen("tcp", c.httpAddr)
	if err != nil {
		return err
	}
	fwd, err := openForwards(c, log)
	if err != nil {
		hln.Close()
		return err
	}
	defer fwd.close()
	hsrv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	log.Warn("secondary: following", "primary", c.primary, "name", c.name, "http", scheme+"://"+hln.Addr().String(),
		"position", st.Position(), "apply_delay", c.applyDelay)
	if ready != nil {
		ready <- hln.Addr()
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return st.Run(gctx) })
	g.Go(func() error { return r.Run(gctx) })
	for i, p := range fwd.proxies {
		ln := fwd.lns[i]
		g.Go(func() error {
			if err := p.Serve(ln); err != nil && !errors.Is(err, failover.ErrProxyClosed) {
				return err
			}
			return nil
		})
	}
	if c.compare > 0 {
		g.Go(func() error {
			// The first comparison waits one interval: at start the
			// stream itself catches up, or falls back to a full one.
			select {
			case <-gctx.Done():
				return nil
			case <-time.After(c.compare):
			}
			return cmp.Run(gctx)
		})
	}
	g.Go(func() error {
		var err error
		if c.tlsCert != "" {
			err = hsrv.ServeTLS(hln, c.tlsCert, c.tlsKey) // HTTP/2 negotiated by ALPN
		} else {
			err = hsrv.Serve(hln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		fwd.close()
		return hsrv.Shutdown(sctx)
	})
	err = g.Wait()
	s := r.Stats()
	log.Warn("secondary: stopped", "received", s.Received, "applied", s.Applied)
	return err
}
