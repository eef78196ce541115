package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/failover"
	"github.com/resilmail/resilmail/smtpout"
)

// mailServer is one -mailserver: a mailbox server the relay delivers to
// over LMTP while it is primary.
type mailServer struct {
	name, lmtp, status string
}

type mailServerFlag struct{ list *[]mailServer }

func (f mailServerFlag) String() string { return "" }

// Set parses name=host:port,http://host:port (the LMTP address, then the
// HTTP base whose /status says the node's role).
func (f mailServerFlag) Set(s string) error {
	name, rest, ok := strings.Cut(s, "=")
	lmtp, status, ok2 := strings.Cut(rest, ",")
	if !ok || !ok2 || name == "" {
		return fmt.Errorf("want name=lmtp-host:port,http://status-host:port, got %q", s)
	}
	if _, _, err := net.SplitHostPort(lmtp); err != nil {
		return fmt.Errorf("%q: LMTP address: %w", s, err)
	}
	u, err := url.Parse(status)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q: want the node's http:// or https:// address after the comma", s)
	}
	*f.list = append(*f.list, mailServer{name: name, lmtp: lmtp, status: strings.TrimSuffix(status, "/") + "/status"})
	return nil
}

// follower delivers to whichever -mailserver is primary now.
type follower struct {
	deliverer resilmail.Deliverer
	watcher   *failover.Watcher
	close     func()
}

// destination names the queue's destination: the active node, so that
// a failover starts a new destination with fresh health.
func (f *follower) destination(string) string {
	if n, _, ok := f.watcher.Active(); ok {
		return n
	}
	return "no-primary"
}

func newFollower(c config, log *slog.Logger) (*follower, error) {
	by := map[string]resilmail.Deliverer{}
	var nodes []failover.WatchedNode
	var outs []*smtpout.Deliverer
	closeAll := func() {
		for _, o := range outs {
			o.Close()
		}
	}
	for _, s := range c.servers {
		out, err := smtpout.New(&smtpout.Options{Addr: s.lmtp, LMTP: true, LocalName: c.hostname, MaxIdle: c.concurrency, Logger: log})
		if err != nil {
			closeAll()
			return nil, err
		}
		outs = append(outs, out)
		by[s.name] = out
		nodes = append(nodes, failover.WatchedNode{Name: s.name, StatusURL: s.status})
	}
	w := failover.NewWatcher(nodes, &failover.WatcherOptions{Interval: time.Second, Logger: log})
	f := &follower{watcher: w, close: closeAll}
	f.deliverer = failover.FollowDeliverer(func() (string, bool) { n, _, ok := w.Active(); return n, ok }, by)
	return f, nil
}

func (f *follower) run(ctx context.Context) error { return f.watcher.Run(ctx) }
