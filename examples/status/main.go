// Command status is the deployment's status page, meant for a third
// machine that neither datacentre's failure takes down: it polls every
// node's /status and /metrics and serves, at / on -listen, one row per
// node (role, epoch, reachable and since when, replication lag, queue
// depth and oldest message, policy version and age, quarantine outbox
// backlog, certificate expiry) in HTML that needs no script, and the same
// data as JSON at /status.json.
//
//	status -listen 127.0.0.1:8080 -node a=https://mail-a:8026 -node b=https://mail-b:8026 \
//	       -node mx1=http://mx1:8025 -node mx2=http://mx2:8025 -ca /etc/resilmail/ca.pem
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
	"os"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail/failover/statuspage"
	"github.com/resilmail/resilmail/internal/cli"
)

type config struct {
	listen   string
	nodes    []statuspage.Node
	interval time.Duration
	ca       string
	verbose  bool
}

type nodeFlag struct{ nodes *[]statuspage.Node }

func (f nodeFlag) String() string { return "" }
func (f nodeFlag) Set(s string) error {
	name, url, ok := strings.Cut(s, "=")
	if !ok || name == "" || url == "" {
		return fmt.Errorf("want name=http://host:port, got %q", s)
	}
	*f.nodes = append(*f.nodes, statuspage.Node{Name: name, URL: strings.TrimSuffix(url, "/")})
	return nil
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:8080", "HTTP listen address of the page")
	fs.Var(nodeFlag{&c.nodes}, "node", "a node to poll, as name=URL of its HTTP port (repeat for each node)")
	fs.DurationVar(&c.interval, "interval", 2*time.Second, "poll every node this often")
	fs.StringVar(&c.ca, "ca", "", "PEM certificates that sign the https:// nodes' certificates (default: the system's)")
	fs.BoolVar(&c.verbose, "v", false, "log every poll round's changes")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if len(c.nodes) == 0 {
		return c, errors.New("no -node to poll")
	}
	if c.interval < 100*time.Millisecond {
		return c, errors.New("-interval must be at least 100ms")
	}
	return c, nil
}

func main() {
	c, err := parseFlags(os.Args[1:])
	os.Exit(cli.Main("status", err, c.verbose, func(ctx context.Context, log *slog.Logger) error { return run(ctx, c, log, nil) }))
}

func run(ctx context.Context, c config, log *slog.Logger, ready chan<- net.Addr) error {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if c.ca != "" {
		pem, err := os.ReadFile(c.ca)
		if err != nil {
			return fmt.Errorf("-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("-ca %s: no PEM certificate in it", c.ca)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	p, err := statuspage.NewPoller(c.nodes, &statuspage.Options{Interval: c.interval, Client: &http.Client{Transport: tr, Timeout: c.interval}, Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: statuspage.Handler(p), ReadHeaderTimeout: 10 * time.Second}
	log.Info("status: serving", "addr", ln.Addr().String(), "nodes", len(c.nodes))
	if ready != nil {
		ready <- ln.Addr()
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.Run(gctx) })
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return g.Wait()
}
