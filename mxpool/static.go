package mxpool

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
)

// StaticResolver is a [Resolver] over an in-memory zone: for tests, and for
// deployments with no DNS of their own, such as a pool on loopback
// addresses.
//
// It answers as a recursive server would: a name with no records at all
// does not exist (a [DNSError] with NotFound); a name with records, but none
// of the type asked, gives an empty Result (NODATA); a name with a CNAME is
// an alias whose target is looked up in its place, with Result.CNAME set to
// the last name of the chain. A CNAME loop, or a chain longer than 16, fails
// temporarily. A name made to fail with SetTemporaryFailure gives a
// DNSError with Temporary. Answers have a zero TTL, as the zone can change
// at any time.
//
// Names are case-insensitive and may end with a dot; names in results are
// lower case without the trailing dot, except a null MX target, which
// stays ".". No IDNA conversion is done: give names in A-label form.
//
// The zero value is an empty zone, ready to use. A StaticResolver is safe for
// concurrent use; a change is seen by every lookup that starts after it.
type StaticResolver struct {
	mu    sync.RWMutex
	names map[string]*staticName
}

// staticName is what the zone holds for one name.
type staticName struct {
	mx    []MX
	addrs []netip.Addr
	txt   []string
	cname string
	// fail lists the types that fail temporarily; failAll makes every type
	// fail.
	fail    []Type
	failAll bool
}

func (n *staticName) empty() bool {
	return len(n.mx) == 0 && len(n.addrs) == 0 && len(n.txt) == 0 && n.cname == ""
}

func (n *staticName) fails(t Type) bool {
	if n.failAll {
		return true
	}
	for _, f := range n.fail {
		if f == t {
			return true
		}
	}
	return false
}

var _ Resolver = (*StaticResolver)(nil)

// staticMaxChain bounds the CNAME chain a StaticResolver follows.
const staticMaxChain = 16

// staticKey is the form names are kept in.
func staticKey(name string) string {
	if name == "." || name == "" {
		return "."
	}
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// entryLocked returns name's entry, creating it.
func (s *StaticResolver) entryLocked(name string) *staticName {
	if s.names == nil {
		s.names = make(map[string]*staticName)
	}
	k := staticKey(name)
	n := s.names[k]
	if n == nil {
		n = new(staticName)
		s.names[k] = n
	}
	return n
}

// AddMX adds an MX record to name: mail for name goes to host with
// preference pref. A host of "." makes a null MX (RFC 7505).
func (s *StaticResolver) AddMX(name string, pref uint16, host string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.entryLocked(name)
	n.mx = append(n.mx, MX{Host: staticKey(host), Pref: pref})
}

// AddAddr adds A records (IPv4 addresses, IPv4-mapped IPv6 addresses
// included) and AAAA records (other IPv6 addresses) to name. The zero Addr
// is ignored.
func (s *StaticResolver) AddAddr(name string, addrs ...netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.entryLocked(name)
	for _, a := range addrs {
		if a.IsValid() {
			n.addrs = append(n.addrs, a.Unmap())
		}
	}
}

// AddTXT adds TXT records to name, one per string.
func (s *StaticResolver) AddTXT(name string, txt ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.entryLocked(name)
	n.txt = append(n.txt, txt...)
}

// SetCNAME makes name an alias of target. Lookups of name then answer with
// target's records, whatever other records name has.
func (s *StaticResolver) SetCNAME(name, target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entryLocked(name).cname = staticKey(target)
}

// SetTemporaryFailure makes lookups of name fail temporarily, for the types
// given, or for every type when none is given, until ClearTemporaryFailure
// or Remove.
func (s *StaticResolver) SetTemporaryFailure(name string, types ...Type) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.entryLocked(name)
	if len(types) == 0 {
		n.failAll = true
		return
	}
	n.fail = append(n.fail, types...)
}

// ClearTemporaryFailure undoes SetTemporaryFailure for name.
func (s *StaticResolver) ClearTemporaryFailure(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.names[staticKey(name)]; n != nil {
		n.fail, n.failAll = nil, false
	}
}

// Remove deletes every record of name and its temporary failure: name then
// no longer exists.
func (s *StaticResolver) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.names, staticKey(name))
}

// errStaticCNAMELoop is the cause of the failure of a looping or too long
// CNAME chain.
var errStaticCNAMELoop = errors.New("CNAME loop or chain too long")

// lookupCached is Lookup: a StaticResolver never blocks. The Planner uses
// it to avoid starting goroutines for lookups.
func (s *StaticResolver) lookupCached(ctx context.Context, name string, t Type) (Result, bool, error) {
	res, err := s.Lookup(ctx, name, t)
	return res, true, err
}

// Lookup answers from the zone. It fails temporarily, wrapping the
// context's error, when ctx is done.
func (s *StaticResolver) Lookup(ctx context.Context, name string, t Type) (Result, error) {
	qname := staticKey(name)
	if err := ctx.Err(); err != nil {
		return Result{}, &DNSError{Name: qname, Type: t, Temporary: true, Err: err}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var res Result
	cur := qname
	for hops := 0; ; hops++ {
		n := s.names[cur]
		if n != nil && n.fails(t) {
			return Result{}, &DNSError{Name: qname, Type: t, Temporary: true}
		}
		if n == nil || n.empty() {
			return Result{}, &DNSError{Name: qname, Type: t, NotFound: true}
		}
		if n.cname == "" {
			switch t {
			case TypeMX:
				res.MX = append([]MX(nil), n.mx...)
			case TypeA, TypeAAAA:
				for _, a := range n.addrs {
					if a.Is4() == (t == TypeA) {
						res.Addrs = append(res.Addrs, a)
					}
				}
			case TypeTXT:
				res.TXT = append([]string(nil), n.txt...)
			}
			return res, nil
		}
		if n.cname == qname || n.cname == res.CNAME || hops >= staticMaxChain {
			return Result{}, &DNSError{Name: qname, Type: t, Temporary: true, Err: errStaticCNAMELoop}
		}
		cur = n.cname
		res.CNAME = cur
	}
}
