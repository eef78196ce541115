package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/domainname"
	"github.com/resilmail/resilmail/mxpool"
	"github.com/resilmail/resilmail/smtpout"
)

// poolRoutes delivers the mail of the domains that the pool's policy routes
// to the route's hosts, and the rest to this relay's own next hop (-next or
// -mailserver): every MX of the pool routes a domain alike, whatever its
// flags. The policy's routes are read at each delivery, so a new policy
// applies to the next attempt.
type poolRoutes struct {
	routes  func() []mxpool.Route // the policy's routes in force; nil result: none
	def     resilmail.Deliverer
	defDest func(rcpt string) string
	smtp    smtpout.Options // the template of the routes' sessions
	log     *slog.Logger

	mu    sync.Mutex
	cur   []mxpool.Route      // the routes d was built for
	d     *mxpool.Deliverer   // delivers along cur; nil before the first routed message
	spent []*mxpool.Deliverer // built for earlier routes, closed by close
}

// route returns the policy's route for the domain of rcpt: the domain's
// own, else "*", else none.
func (r *poolRoutes) route(routes []mxpool.Route, rcpt string) (mxpool.Route, bool) {
	if len(routes) == 0 {
		return mxpool.Route{}, false
	}
	d, err := domainname.ToASCII(resilmail.Domain(rcpt))
	if err != nil {
		d = "" // an address literal or a name no route can name: only "*" applies
	}
	var wild *mxpool.Route
	for i := range routes {
		switch routes[i].Domain {
		case d:
			return routes[i], true
		case "*":
			wild = &routes[i]
		}
	}
	if wild != nil {
		return *wild, true
	}
	return mxpool.Route{}, false
}

// destination is the queue's concurrency key for rcpt: the route's hosts
// for a routed domain, else the relay's own.
func (r *poolRoutes) destination(rcpt string) string {
	if rt, ok := r.route(r.routes(), rcpt); ok {
		if rt.LMTP {
			return "route lmtp:" + rt.Host
		}
		return "route:" + rt.Host
	}
	return r.defDest(rcpt)
}

// deliverer returns the Deliverer for routes, building one when the
// policy's routes changed.
func (r *poolRoutes) deliverer(routes []mxpool.Route) (*mxpool.Deliverer, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.d != nil && slices.Equal(r.cur, routes) {
		return r.d, nil
	}
	// Only routed domains are planned, and a route's hosts are the
	// policy's: the DNS is asked for their addresses only.
	res, err := mxpool.NewDNSResolver(nil)
	if err != nil {
		return nil, err
	}
	p, err := mxpool.NewPlanner(res, &mxpool.PlannerOptions{Routes: routes, NoInterfaceAddrs: true, Logger: r.log})
	if err != nil {
		return nil, err
	}
	smtp := r.smtp
	d, err := mxpool.NewDeliverer(p, &mxpool.DelivererOptions{SMTP: &smtp, Logger: r.log})
	if err != nil {
		return nil, err
	}
	if r.d != nil {
		r.spent = append(r.spent, r.d)
	}
	r.cur, r.d = slices.Clone(routes), d
	return d, nil
}

// Deliver sends the routed recipients of env along their routes and the
// others to the relay's own next hop, and reports one outcome per
// recipient.
func (r *poolRoutes) Deliver(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
	routes := r.routes()
	var routed, own []resilmail.Recipient
	for _, rc := range env.To {
		if _, ok := r.route(routes, rc.Addr); ok {
			routed = append(routed, rc)
		} else {
			own = append(own, rc)
		}
	}
	if len(routed) == 0 {
		return r.def.Deliver(ctx, env, body)
	}
	msg, err := mxpool.Rereadable(body) // the queue's body, read in place: never whole in memory
	if err != nil {
		return &resilmail.DeliveryError{Command: "queue", Message: "cannot read the message", Err: err}
	}
	var errs []error
	part := func(rcpts []resilmail.Recipient, via func(resilmail.Envelope) error) {
		if len(rcpts) == 0 {
			return
		}
		e := env
		e.To = rcpts
		if err := via(e); err != nil {
			errs = append(errs, perRecipient(e.Recipients(), err)...)
		}
	}
	part(routed, func(e resilmail.Envelope) error {
		d, err := r.deliverer(routes)
		if err != nil {
			return &resilmail.DeliveryError{Command: "route", Code: 451, EnhancedCode: "4.3.5", Message: "the pool's route cannot be used", Err: err}
		}
		return d.Deliver(ctx, e, io.NewSectionReader(msg, 0, msg.Size()))
	})
	part(own, func(e resilmail.Envelope) error {
		return r.def.Deliver(ctx, e, io.NewSectionReader(msg, 0, msg.Size()))
	})
	return errors.Join(errs...)
}

// perRecipient restates err, a Deliverer's answer for rcpts, as one error
// naming each recipient that was not delivered, so that the answers of
// two Deliverers can be joined.
func perRecipient(rcpts []string, err error) []error {
	out := resilmail.Outcomes(rcpts, err)
	var errs []error
	for _, rc := range rcpts {
		if de := out[rc]; de != nil {
			c := *de
			c.Recipient = rc
			errs = append(errs, &c)
		}
	}
	return errs
}

// close closes the routes' sessions.
func (r *poolRoutes) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, d := range append(r.spent, r.d) {
		if d != nil {
			errs = append(errs, d.Close())
		}
	}
	r.spent, r.d = nil, nil
	return errors.Join(errs...)
}
