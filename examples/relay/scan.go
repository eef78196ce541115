package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"

	"github.com/resilmail/resilmail/queue/intake"
	"github.com/resilmail/resilmail/queue/intake/auth"
)

// senderAuth holds the -milter, -authserv-id and -dmarc-* flags.
type senderAuth struct {
	milter       string
	milterName   string
	authservID   string
	onReject     string
	onQuarantine string
	resolver     auth.Resolver // tests: a DNS server on loopback; nil: -dns, else the system's
}

func (s *senderAuth) flags(fs *flag.FlagSet) {
	fs.StringVar(&s.milter, "milter", "", "scan every message at the end of DATA with the milter at this address (inet:host:port, unix:/path or host:port), e.g. rspamd's proxy worker; no verdict answers 451 4.7.1")
	fs.StringVar(&s.milterName, "milter-name", "", "with -milter: the scanner behind it as the pool's policy names it (\"rspamd 3.4\"), checked against the policy's scanner profile like -rspamd's own version (default: \"milter ADDRESS\")")
	fs.StringVar(&s.authservID, "authserv-id", "", "check SPF, DKIM and DMARC at DATA and add an Authentication-Results header with this authserv-id (the same on every MX of the pool; incoming ones claiming it are removed), and refuse null-MX senders (550 5.7.27)")
	fs.StringVar(&s.onReject, "dmarc-reject", "reject", "with -authserv-id: what a DMARC failure under p=reject does: reject (550 5.7.1), quarantine, tag or accept")
	fs.StringVar(&s.onQuarantine, "dmarc-quarantine", "tag", "with -authserv-id: what a DMARC failure under p=quarantine does: reject, quarantine, tag or accept")
}

// wire sets be's sender check as the flags say; sender authentication
// wraps the content scanner already set (-rspamd or -milter, see
// openScanning).
func (s *senderAuth) wire(be *intake.Backend, dns string, log *slog.Logger) error {
	sc := be.Scanner
	if s.authservID != "" {
		onReject, err := auth.ParseDisposition(s.onReject)
		if err != nil {
			return fmt.Errorf("-dmarc-reject: %w", err)
		}
		onQuarantine, err := auth.ParseDisposition(s.onQuarantine)
		if err != nil {
			return fmt.Errorf("-dmarc-quarantine: %w", err)
		}
		res := s.resolver
		if res == nil && dns != "" {
			r, err := dnsResolver(splitList(dns))
			if err != nil {
				return fmt.Errorf("-dns: %w", err)
			}
			res = r
		}
		a, err := auth.New(&auth.Options{AuthServID: s.authservID, OnReject: onReject, OnQuarantine: onQuarantine, Resolver: res, Logger: log})
		if err != nil {
			return fmt.Errorf("-authserv-id: %w", err)
		}
		be.CheckSender = a.CheckSender
		sc = a.Middleware()(sc)
	}
	if sc != nil {
		be.Scanner = sc
	}
	return nil
}

// dnsResolver is a resolver that asks servers (host[:port], port 53 by
// default) in turn, through Go's own DNS client: the SPF, DKIM and DMARC
// lookups of -authserv-id go to the same resolvers as -mx's.
func dnsResolver(servers []string) (*net.Resolver, error) {
	if len(servers) == 0 {
		return nil, errors.New("no resolver")
	}
	addrs := make([]string, len(servers))
	for i, s := range servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			s = net.JoinHostPort(strings.Trim(s, "[]"), "53")
		}
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, fmt.Errorf("resolver %q: %w", servers[i], err)
		}
		addrs[i] = s
	}
	var next atomic.Uint32
	var d net.Dialer
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, addrs[int(next.Add(1)-1)%len(addrs)])
	}}, nil
}
