package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/domainname"
	"github.com/resilmail/resilmail/mxpool"
	"github.com/resilmail/resilmail/mxpool/sts"
	"github.com/resilmail/resilmail/queue"
	"github.com/resilmail/resilmail/smtpout"
)

// newMXDelivery returns the deliverer of -mx: every recipient's mail goes
// to its domain's MX hosts, planned by mxpool from the DNS (-dns, else
// /etc/resolv.conf), best preference first, with -fallback-relay after
// them; an MX that is this node (-hostname, or one of this machine's
// addresses) is dropped with every worse one, so mail never loops back.
// TLS follows the domain's MTA-STS policy and -tls-required-domains
// (verified TLS or no delivery), else STARTTLS when offered.
// The queue's destination is the recipient's domain, which -dest-limit
// names.
func newMXDelivery(c config, log *slog.Logger) (*mxpool.Deliverer, func(rcpt string) string, error) {
	res := c.resolver
	if res == nil {
		r, err := mxpool.NewDNSResolver(&mxpool.DNSOptions{Servers: splitList(c.dns)})
		if err != nil {
			return nil, nil, fmt.Errorf("-dns: %w", err)
		}
		res = r
	}
	p, err := mxpool.NewPlanner(res, &mxpool.PlannerOptions{
		Self: []string{c.hostname}, FallbackRelay: splitList(c.fallbackRelay), Logger: log,
		NoInterfaceAddrs: c.mxOnThisMachine,
	})
	if err != nil {
		return nil, nil, err
	}
	// TLS: MTA-STS (policies cached under the queue folder, so a restart
	// keeps enforcing them) and -tls-required-domains; opportunistic
	// STARTTLS elsewhere.
	m, err := sts.Open(mxpool.TXT(res), &sts.Options{Dir: filepath.Join(c.dir, "mta-sts"), Logger: log})
	if err != nil {
		return nil, nil, err
	}
	tp, err := sts.NewTLSPolicy(m, &sts.TLSPolicyOptions{Required: splitList(c.tlsRequired), Logger: log})
	if err != nil {
		return nil, nil, fmt.Errorf("-tls-required-domains: %w", err)
	}
	d, err := mxpool.NewDeliverer(p, &mxpool.DelivererOptions{
		SMTP:   &smtpout.Options{LocalName: c.hostname, MaxIdle: c.concurrency, Logger: log, Dial: c.dial, TLSConfig: c.mxTLS},
		TLS:    tp,
		Logger: log,
	})
	if err != nil {
		return nil, nil, err
	}
	return d, mxDestination, nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// mxDestination is the queue's destination under -mx: the recipient's
// domain in lower-case ASCII.
func mxDestination(rcpt string) string {
	dom := resilmail.Domain(rcpt)
	if a, err := domainname.ToASCII(dom); err == nil {
		return a
	}
	return strings.ToLower(dom)
}

// destLimitsFlag reads -dest-limit, repeatable:
// DEST=concurrency:N,rcpts:N,rate:R, where DEST is a destination as the
// queue keys it (a domain under -mx, the next hop's host:port otherwise)
// and R attempts per second (0.5: one every two seconds).
type destLimitsFlag struct {
	m *map[string]queue.DestinationLimits
}

func (f destLimitsFlag) String() string {
	if f.m == nil {
		return ""
	}
	var parts []string
	for k, l := range *f.m {
		parts = append(parts, fmt.Sprintf("%s=concurrency:%d,rcpts:%d,rate:%g", k, l.MaxConcurrency, l.MaxRcptsPerTransaction, l.Rate))
	}
	return strings.Join(parts, " ")
}

func (f destLimitsFlag) Set(v string) error {
	dest, spec, ok := strings.Cut(v, "=")
	dest = strings.ToLower(strings.TrimSpace(dest))
	if !ok || dest == "" || spec == "" {
		return fmt.Errorf("want DEST=concurrency:N,rcpts:N,rate:R, not %q", v)
	}
	if _, _, err := net.SplitHostPort(dest); err != nil {
		if a, err := domainname.ToASCII(dest); err == nil {
			dest = a
		} else {
			return fmt.Errorf("%q is neither a domain nor a host:port", dest)
		}
	}
	var l queue.DestinationLimits
	for kv := range strings.SplitSeq(spec, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(kv), ":")
		if !ok {
			return fmt.Errorf("%q: want name:value", kv)
		}
		var err error
		switch k {
		case "concurrency":
			l.MaxConcurrency, err = strconv.Atoi(val)
		case "rcpts":
			l.MaxRcptsPerTransaction, err = strconv.Atoi(val)
		case "rate":
			l.Rate, err = strconv.ParseFloat(val, 64)
		default:
			return fmt.Errorf("%q: unknown limit (concurrency, rcpts or rate)", k)
		}
		if err != nil || l.MaxConcurrency < 0 || l.MaxRcptsPerTransaction < 0 || !(l.Rate >= 0 && l.Rate < 1e9) {
			return fmt.Errorf("%s: %q is not a valid value", k, val)
		}
	}
	if *f.m == nil {
		*f.m = map[string]queue.DestinationLimits{}
	}
	(*f.m)[dest] = l
	return nil
}

// dialFunc is how the relay opens outbound connections (tests redirect
// port 25 of documentation addresses to their own servers).
type dialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)
