package quarantine

import (
	"context"
	"slices"
	"strings"

	"github.com/resilmail/resilmail"
)

// An Authorizer decides what a caller may see and act on. The store asks it
// on every read and every action, with the caller's name as the HTTP handler
// (or the program) authenticated it. It is safe for concurrent use.
//
// An error wrapping ErrForbidden denies access (an unknown caller). Any
// other error means the Authorizer could not decide (its directory is
// down): access is denied for now and the caller told to try again later,
// as ErrUnavailable (HTTP 503), not that it is forbidden.
type Authorizer interface {
	Scope(ctx context.Context, who string) (Scope, error)
}

// AuthorizerFunc adapts a function to an Authorizer.
type AuthorizerFunc func(ctx context.Context, who string) (Scope, error)

// Scope implements Authorizer.
func (f AuthorizerFunc) Scope(ctx context.Context, who string) (Scope, error) { return f(ctx, who) }

var _ Authorizer = AuthorizerFunc(nil)

// A Scope is what one caller may see: every entry (an administrator), the
// entries addressed to some domains (a domain administrator), or the entries
// addressed to some addresses (a user and their aliases). Outside All, an
// entry is shown with only the recipients in scope.
type Scope struct {
	All     bool
	Domains []string
	Addrs   []string
}

// Allows reports whether the scope covers recipient addr.
func (sc Scope) Allows(addr string) bool {
	if sc.All {
		return true
	}
	addr = strings.ToLower(addr)
	if slices.Contains(sc.Addrs, addr) {
		return true
	}
	return slices.Contains(sc.Domains, strings.ToLower(resilmail.Domain(addr)))
}

// admin reports whether sc is an administrator's: everything, or at least
// one whole domain.
func (sc Scope) admin() bool { return sc.All || len(sc.Domains) > 0 }

// normal returns sc with lower-cased, sorted, deduplicated lists.
func (sc Scope) normal() Scope {
	low := func(in []string) []string {
		out := make([]string, 0, len(in))
		for _, s := range in {
			if s = strings.ToLower(strings.TrimSpace(s)); s != "" {
				out = append(out, s)
			}
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	return Scope{All: sc.All, Domains: low(sc.Domains), Addrs: low(sc.Addrs)}
}

// StaticAuthorizer is an Authorizer from fixed lists, for small deployments
// and tests. A caller named in Admins sees everything; one named in
// DomainAdmins sees the listed domains; any other caller that is an address
// sees that address plus the aliases listed for it in Aliases. Anyone else
// sees nothing.
type StaticAuthorizer struct {
	Admins       []string
	DomainAdmins map[string][]string
	Aliases      map[string][]string
}

// Scope implements Authorizer.
func (a *StaticAuthorizer) Scope(_ context.Context, who string) (Scope, error) {
	if who == "" {
		return Scope{}, ErrForbidden
	}
	if slices.Contains(a.Admins, who) {
		return Scope{All: true}, nil
	}
	if d, ok := a.DomainAdmins[who]; ok {
		return Scope{Domains: d}.normal(), nil
	}
	if resilmail.CheckAddress(who) != nil {
		return Scope{}, ErrForbidden
	}
	return Scope{Addrs: append([]string{who}, a.Aliases[strings.ToLower(who)]...)}.normal(), nil
}
