package mxpool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/mxpool/sts"
	"github.com/resilmail/resilmail/smtpout"
)

// Deliverer is a [resilmail.Deliverer] that delivers through a [Planner]:
// for each recipient domain it plans the next hops, applies the TLS policy,
// and tries the hosts in order, skipping those whose circuit is open,
// until one takes the transaction; then the fallback relays. It is safe for
// concurrent use and ready to plug into the queue.
//
// A failure of the session (no connection, a refusal of the whole session,
// 421, a TLS failure) moves on to the next host with the same recipients.
// Anything a host says about a recipient or the message is final for this
// attempt: a temporary refusal of a recipient is retried by the queue
// later, not sent to a worse MX; and a message that may have been
// delivered (the connection was lost after the final ".") is never sent to
// another host.
type Deliverer struct {
	planner  *Planner
	tls      *sts.TLSPolicy
	health   *Health
	smtp     *smtpout.Deliverer
	lmtp     *smtpout.Deliverer
	maxAddrs int
	log      *slog.Logger
}

var _ resilmail.Deliverer = (*Deliverer)(nil)

// NewDeliverer returns a Deliverer that plans with p.
func NewDeliverer(p *Planner, opts *DelivererOptions) (*Deliverer, error) {
	if p == nil {
		return nil, errors.New("mxpool: NewDeliverer needs a Planner")
	}
	var o DelivererOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxAddrs < 0 {
		return nil, errors.New("mxpool: negative DelivererOptions.MaxAddrs")
	}
	if o.MaxAddrs == 0 {
		o.MaxAddrs = 5
	}
	if o.Health == nil {
		o.Health = NewHealth(&HealthOptions{Logger: o.Logger})
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	var so smtpout.Options
	if o.SMTP != nil {
		so = *o.SMTP
	}
	so.Addr, so.TLS = "", smtpout.TLSOpportunistic
	if so.Logger == nil {
		so.Logger = o.Logger
	}
	so.LMTP = false
	s, err := smtpout.New(&so)
	if err != nil {
		return nil, err
	}
	so.LMTP = true
	l, err := smtpout.New(&so)
	if err != nil {
		s.Close()
		return nil, err
	}
	return &Deliverer{planner: p, tls: o.TLS, health: o.Health, smtp: s, lmtp: l, maxAddrs: o.MaxAddrs, log: o.Logger}, nil
}

// Health returns the host health the Deliverer records into.
func (d *Deliverer) Health() *Health { return d.health }

// Close closes the pooled sessions.
func (d *Deliverer) Close() error {
	return errors.Join(d.smtp.Close(), d.lmtp.Close())
}

// Deliver delivers the message to every recipient, a plan per recipient
// domain, and reports one outcome per recipient as [resilmail.Deliverer]
// says.
func (d *Deliverer) Deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	msg, err := Rereadable(body)
	if err != nil {
		return &resilmail.DeliveryError{Command: "queue", Message: "cannot read the message", Err: err}
	}
	var domains []string
	groups := map[string][]resilmail.Recipient{}
	for _, r := range env.To {
		dom := strings.ToLower(resilmail.Domain(r.Addr))
		if _, ok := groups[dom]; !ok {
			domains = append(domains, dom)
		}
		groups[dom] = append(groups[dom], r)
	}
	var errs []error
	for _, dom := range domains {
		e := env
		e.To = groups[dom]
		if err := d.deliverDomain(ctx, dom, e, msg); err != nil {
			errs = append(errs, forEach(e.Recipients(), err)...)
		}
	}
	return errors.Join(errs...)
}

// forEach turns err into one DeliveryError per recipient in rcpts, so that
// outcomes of several domains can be joined without a general error of one
// domain touching the recipients of another.
func forEach(rcpts []string, err error) []error {
	out := resilmail.Outcomes(rcpts, err)
	var errs []error
	for _, r := range rcpts {
		if de := out[r]; de != nil {
			c := *de
			c.Recipient = r
			errs = append(errs, &c)
		}
	}
	return errs
}

// hopTry is one address to try, with how.
type hopTry struct {
	hop    Hop
	target smtpout.Target
}

// SizedReaderAt is a message body that can be read again from its start
// for each host tried: an *io.SectionReader (what the queue hands its
// Deliverer) or a *bytes.Reader.
type SizedReaderAt interface {
	io.ReaderAt
	Size() int64
}

// Rereadable returns body as a [SizedReaderAt]: as it is when it is one,
// else read into memory.
func Rereadable(body io.Reader) (SizedReaderAt, error) {
	if r, ok := body.(SizedReaderAt); ok {
		return r, nil
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return nil, err
	}
	return bytes.NewReader(b), nil
}

func (d *Deliverer) deliverDomain(ctx context.Context, domain string, env resilmail.Envelope, msg SizedReaderAt) error {
	plan, err := d.planner.Plan(ctx, domain)
	if err != nil {
		return err
	}
	tries, err := d.tries(ctx, plan)
	if err != nil {
		return err
	}
	var last error
	var failed []string
	addrs := 0
	for _, t := range tries {
		if addrs >= d.maxAddrs {
			break
		}
		key := t.hop.Host + " " + t.target.Addr
		if !d.health.Allow(key) {
			failed = append(failed, t.hop.Host+" ["+t.target.Addr+"] skipped: circuit open")
			continue
		}
		addrs++
		sd := d.smtp
		if t.hop.LMTP {
			sd = d.lmtp
		}
		err := sd.DeliverTarget(ctx, t.target, env, io.NewSectionReader(msg, 0, msg.Size()))
		if ctx.Err() != nil {
			return err
		}
		if !sessionFailure(err) {
			d.health.Success(key)
			return err
		}
		d.health.Failure(key, err)
		d.log.Info("mxpool: host failed, trying the next", "msg_id", env.ID, "domain", domain, "host", t.hop.Host, "addr", t.target.Addr, "source", t.hop.Source.String(), "err", err)
		failed = append(failed, t.hop.Host+" ["+t.target.Addr+"]: "+err.Error())
		last = err
	}
	msgText := fmt.Sprintf("no host of %s took the message", domain)
	if len(failed) > 0 {
		msgText += ": " + strings.Join(failed, "; ")
	}
	de := &resilmail.DeliveryError{Command: "connect", Message: msgText, Err: last}
	var lde *resilmail.DeliveryError
	if errors.As(last, &lde) {
		de.Host, de.Command, de.Code, de.EnhancedCode = lde.Host, lde.Command, lde.Code, lde.EnhancedCode
	}
	return de
}

// tries lists the addresses to try for plan, in order, with the TLS that
// each needs: the plan's hops filtered by the TLS policy, then the
// fallback relays.
func (d *Deliverer) tries(ctx context.Context, plan *Plan) ([]hopTry, error) {
	var out []hopTry
	hops := plan.Hops
	var tlsFor map[string]sts.TLSHost
	verified := false // the domain's mail may only travel over verified TLS
	if d.tls != nil && len(hops) > 0 && (hops[0].Source == HopMX || hops[0].Source == HopImplicitMX) {
		names := make([]string, len(hops))
		for i, h := range hops {
			names[i] = h.Host
		}
		dec, err := d.tls.Decide(ctx, plan.Domain, names)
		if err != nil {
			return nil, err
		}
		verified = dec.Required || dec.STS != nil && dec.STS.Mode == sts.Enforce
		tlsFor = make(map[string]sts.TLSHost, len(dec.Hosts))
		for _, th := range dec.Hosts {
			tlsFor[th.Host] = th
		}
	}
	for _, h := range hops {
		t := smtpout.Target{ServerName: h.Host, TLS: smtpout.TLSOpportunistic}
		if tlsFor != nil {
			th, ok := tlsFor[h.Host]
			if ok && !th.Allowed {
				d.log.Info("mxpool: host not allowed by the TLS policy", "domain", plan.Domain, "host", h.Host, "reason", th.Reason)
				continue
			}
			if ok {
				t.TLS = th.TLS
				if th.ServerName != "" {
					t.ServerName = th.ServerName
				}
				t.Verify = th.TLS == smtpout.TLSRequired
			}
		}
		for _, ap := range h.AddrPorts() {
			t.Addr = ap.String()
			out = append(out, hopTry{hop: h, target: t})
		}
	}
	// A fallback relay inherits the domain's decision: where the domain
	// demands verified TLS, the relay gets it too, checked against the
	// relay's own name, or an attacker who strips STARTTLS from the real
	// MX would have the mail sent on in clear.
	for _, h := range plan.Fallback {
		t := smtpout.Target{ServerName: strings.ToLower(strings.TrimSuffix(h.Host, ".")), TLS: smtpout.TLSOpportunistic}
		if verified {
			t.TLS, t.Verify = smtpout.TLSRequired, true
		}
		for _, ap := range h.AddrPorts() {
			t.Addr = ap.String()
			out = append(out, hopTry{hop: h, target: t})
		}
	}
	return out, nil
}

// sessionFailure reports whether err says the host failed as a whole (no
// connection, a refused or broken session), so the recipients can go to the
// next host, rather than something about a recipient or the message.
func sessionFailure(err error) bool {
	if err == nil {
		return false
	}
	named, general := resilmail.SplitErrors(err)
	if len(named) > 0 && general == nil {
		return false
	}
	var de *resilmail.DeliveryError
	if !errors.As(general, &de) {
		return general != nil // not a DeliveryError: treat as the session's
	}
	if de.MaybeDelivered || de.Permanent {
		return false
	}
	switch de.Command {
	case "connect", "greeting", "EHLO", "LHLO", "HELO", "STARTTLS", "AUTH":
		return true
	}
	return de.Code == 421
}
