package sts

// TLSPolicy: which MX hosts of a destination may be used, and with what
// TLS, from configuration and MTA-STS.

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/smtpout"
)

// TLSPolicy decides, per destination domain, which of its MX hosts may be
// used and how TLS is required with each. It is safe for concurrent use.
//
// The default is opportunistic TLS with every host. A domain listed in
// TLSPolicyOptions.Required gets TLS with certificate verification against
// the MX host name. A domain whose MTA-STS policy is in mode enforce loses
// the hosts that match none of the policy's mx patterns, and gets verified
// TLS with the others (RFC 8461 §4, §5). Mode testing changes nothing but
// reports and logs the hosts that enforce would drop; mode none, no policy,
// and a policy that cannot be learnt leave TLS opportunistic.
type TLSPolicy struct {
	sts      *MTASTS
	required map[string]struct{}
	log      *slog.Logger
}

// NewTLSPolicy returns a TLSPolicy that learns MTA-STS policies from sts;
// a nil sts means MTA-STS is not used.
func NewTLSPolicy(sts *MTASTS, opts *TLSPolicyOptions) (*TLSPolicy, error) {
	var o TLSPolicyOptions
	if opts != nil {
		o = *opts
	}
	p := &TLSPolicy{sts: sts, required: make(map[string]struct{}, len(o.Required)), log: o.Logger}
	for _, d := range o.Required {
		n, err := stsDomain(d)
		if err != nil {
			return nil, fmt.Errorf("sts: TLSPolicyOptions.Required: %w", err)
		}
		p.required[n] = struct{}{}
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	return p, nil
}

// TLSHost is the decision for one MX host.
type TLSHost struct {
	// Host is the MX host name as given.
	Host string
	// Allowed says whether mail may be delivered to the host.
	Allowed bool
	// Reason explains the decision: why the host was dropped or, in
	// MTA-STS mode testing, why enforce would have dropped it; otherwise
	// where the TLS requirement comes from.
	Reason string
	// STSMismatch is set when the host matches none of the mx patterns of
	// the domain's MTA-STS policy (whatever its mode but none).
	STSMismatch bool
	// TLS is the mode the SMTP client must use: smtpout.TLSRequired or
	// smtpout.TLSOpportunistic.
	TLS smtpout.TLSMode
	// ServerName is the name to send as SNI and, when TLS is
	// smtpout.TLSRequired, to verify the certificate against: the host
	// name in lower case without a trailing dot. Give it as the
	// tls.Config's ServerName when dialling the host by address.
	ServerName string
}

// A TLSDecision is what [TLSPolicy.Decide] decided for one domain.
type TLSDecision struct {
	// Domain is the recipient domain, normalised.
	Domain string
	// Required is set when the domain is in TLSPolicyOptions.Required.
	Required bool
	// STS is the MTA-STS policy that applied, nil if none.
	STS *Policy
	// STSErr is set when the domain's policy could not be learnt (an
	// *Error): delivery goes ahead as without a policy, as RFC 8461
	// §3.3 says, but the failure should be reported.
	STSErr error
	// Hosts holds one entry per host given, in the same order.
	Hosts []TLSHost
}

// Allowed returns the hosts that may be used, in order.
func (d TLSDecision) Allowed() []TLSHost {
	var out []TLSHost
	for _, h := range d.Hosts {
		if h.Allowed {
			out = append(out, h)
		}
	}
	return out
}

// Decide decides, for mail to domain (A-label form) whose MX hosts are
// hosts in order of preference, which hosts may be used and how TLS is
// required with each. Hosts not allowed stay in the decision with the
// reason. When a policy in mode enforce allows none of the hosts, the
// decision comes with a temporary *resilmail.DeliveryError (Command
// "mta-sts", EnhancedCode "4.7.5", Err wrapping ErrNoAllowedMX): the
// mail waits for the domain, or the operator, to mend the policy rather
// than bounce. Decide returns ctx's error when ctx is done. With a cached
// policy it costs one TXT lookup and no fetch.
func (p *TLSPolicy) Decide(ctx context.Context, domain string, hosts []string) (TLSDecision, error) {
	d, err := stsDomain(domain)
	if err != nil {
		return TLSDecision{Domain: domain}, err
	}
	dec := TLSDecision{Domain: d, Hosts: make([]TLSHost, len(hosts))}
	_, dec.Required = p.required[d]
	if p.sts != nil {
		pol, err := p.sts.Policy(ctx, d)
		switch {
		case err != nil && ctx.Err() != nil:
			return dec, ctx.Err()
		case err != nil:
			dec.STSErr = err
			p.log.Warn("mta-sts: policy unknown, delivering without it", "domain", d, "err", err)
		case pol != nil && pol.Mode != None:
			dec.STS = pol
		}
	}
	enforce := dec.STS != nil && dec.STS.Mode == Enforce
	allowed := 0
	for i, host := range hosts {
		name := strings.ToLower(strings.TrimSuffix(host, "."))
		h := TLSHost{Host: host, Allowed: true, TLS: smtpout.TLSOpportunistic, ServerName: name, Reason: "opportunistic TLS"}
		if dec.Required {
			h.TLS, h.Reason = smtpout.TLSRequired, "verified TLS required by configuration"
		}
		if dec.STS != nil {
			match := dec.STS.Match(name)
			h.STSMismatch = !match
			switch {
			case enforce && match:
				h.TLS, h.Reason = smtpout.TLSRequired, "verified TLS required by MTA-STS policy in mode enforce"
			case enforce:
				h.Allowed = false
				h.Reason = "host matches no mx pattern (" + strings.Join(dec.STS.MX, ", ") + ") of MTA-STS policy id " + dec.STS.ID + " in mode enforce"
				p.log.Warn("mta-sts: host dropped", "domain", d, "host", host, "sts_id", dec.STS.ID)
			case !match:
				h.Reason = "host matches no mx pattern (" + strings.Join(dec.STS.MX, ", ") + ") of MTA-STS policy id " + dec.STS.ID + "; mode testing, used anyway with " + h.Reason
				p.log.Info("mta-sts: host would be dropped in mode enforce", "domain", d, "host", host, "sts_id", dec.STS.ID)
			}
		}
		if h.Allowed {
			allowed++
		}
		dec.Hosts[i] = h
	}
	if enforce && allowed == 0 && len(hosts) > 0 {
		return dec, &resilmail.DeliveryError{
			Command:      "mta-sts",
			EnhancedCode: "4.7.5",
			Message: fmt.Sprintf("MTA-STS policy id %s of %s (mx %s) allows none of the MX hosts %s",
				dec.STS.ID, d, strings.Join(dec.STS.MX, ", "), strings.Join(hosts, ", ")),
			Err: ErrNoAllowedMX,
		}
	}
	return dec, nil
}
