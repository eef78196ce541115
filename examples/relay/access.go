package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/mxpool/pool"
	"github.com/resilmail/resilmail/queue/intake"
)

// relayCheck keeps the relay from being an open relay: a recipient is
// accepted when the pool's policy accepts it, or (without a policy) when its
// domain is one of -relay-domains, or when the client is in -mynetworks
// (loopback by default) and the recipient's domain is not the pool's.
// Everything else gets 554 5.7.1, as Postfix answers.
type relayCheck struct {
	domains map[string]bool
	nets    []netip.Prefix
}

func newRelayCheck(c config) (*relayCheck, error) {
	r := &relayCheck{domains: map[string]bool{}}
	for _, d := range strings.Split(c.relayDomains, ",") {
		if d = strings.ToLower(strings.TrimSpace(d)); d != "" {
			r.domains[d] = true
		}
	}
	for _, n := range strings.Split(c.mynetworks, ",") {
		if n = strings.TrimSpace(n); n == "" {
			continue
		}
		p, err := netip.ParsePrefix(n)
		if err != nil {
			return nil, fmt.Errorf("-mynetworks: %w", err)
		}
		r.nets = append(r.nets, p.Masked())
	}
	return r, nil
}

func (r *relayCheck) trusted(ctx context.Context) bool {
	ip, ok := intake.ClientIP(ctx)
	if !ok {
		return false
	}
	for _, p := range r.nets {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

var relayDenied = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "relay access denied"}

// accept returns the relay's RCPT decision; check is the pool's policy,
// nil when there is none.
func (r *relayCheck) accept(check pool.Checker) func(ctx context.Context, rcpt string) error {
	return func(ctx context.Context, rcpt string) error {
		if check != nil {
			v := check.Check(rcpt)
			switch {
			case v.Action == pool.ActionAccept:
				return nil
			case v.Action == pool.ActionReject && v.EnhancedCode == "5.7.1" && r.trusted(ctx):
				return nil // not the pool's domain: outbound from a trusted client
			}
			return &smtp.SMTPError{Code: v.Code, EnhancedCode: enhanced(v.EnhancedCode), Message: v.Reason}
		}
		if r.domains[resilmail.Domain(rcpt)] || r.trusted(ctx) {
			return nil
		}
		return relayDenied
	}
}
