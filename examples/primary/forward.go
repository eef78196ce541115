package main

import (
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/resilmail/resilmail/failover"
)

// forward is one -forward: the clients of a protocol that reach this node
// are relayed to the active node. targets maps node names to the address
// of that protocol's port on the node; a single target without a name
// ("" key) is fixed, whatever the roles.
type forward struct {
	proto, listen string
	targets       map[string]string
}

// unavailable is what each protocol's client is told when the active node
// cannot be reached.
var unavailable = map[string]string{
	"imap":       "* BYE the active mail server cannot be reached; try again shortly\r\n",
	"pop3":       "-ERR the active mail server cannot be reached; try again shortly\r\n",
	"lmtp":       "421 4.3.2 the active mail server cannot be reached; try again shortly\r\n",
	"submission": "421 4.3.2 the active mail server cannot be reached; try again shortly\r\n",
}

type forwardFlag struct{ list *[]forward }

func (f forwardFlag) String() string { return "" }

// Set parses proto,listen,target or proto,listen,name=addr,name=addr,...
func (f forwardFlag) Set(s string) error {
	parts := strings.Split(s, ",")
	if len(parts) < 3 {
		return fmt.Errorf("want proto,listen-host:port,target-host:port or proto,listen-host:port,node=host:port,node=host:port..., got %q", s)
	}
	if _, ok := unavailable[parts[0]]; !ok {
		return fmt.Errorf("%q: protocol %q: want imap, pop3, lmtp or submission", s, parts[0])
	}
	if _, _, err := net.SplitHostPort(parts[1]); err != nil {
		return fmt.Errorf("%q: %w", s, err)
	}
	fw := forward{proto: parts[0], listen: parts[1], targets: map[string]string{}}
	for _, t := range parts[2:] {
		name, addr, named := strings.Cut(t, "=")
		if !named {
			name, addr = "", t
		}
		if !named && len(parts) > 3 {
			return fmt.Errorf("%q: with several targets, each is node=host:port", s)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%q: %w", s, err)
		}
		fw.targets[name] = addr
	}
	*f.list = append(*f.list, fw)
	return nil
}

// forwarder runs the client proxies of -forward; those with named targets
// follow the active node (setActive).
type forwarder struct {
	proxies []*failover.Proxy
	lns     []net.Listener
	fws     []forward
	proxy   bool
	log     *slog.Logger

	mu     sync.Mutex
	active string
}

func openForwards(fws []forward, sendProxy bool, from, initial string, log *slog.Logger) (*forwarder, error) {
	f := &forwarder{fws: fws, proxy: sendProxy, log: log, active: initial}
	for _, fw := range fws {
		ln, err := net.Listen("tcp", fw.listen)
		if err != nil {
			f.close()
			return nil, err
		}
		target, ok := fw.targets[""]
		if !ok {
			target = fw.targets[initial]
		}
		p := failover.NewProxy(failover.Backend{Addr: target, SendProxy: sendProxy},
			&failover.ProxyOptions{Unavailable: []byte(unavailable[fw.proto]), LocalAddr: from, Logger: log})
		f.proxies = append(f.proxies, p)
		f.lns = append(f.lns, ln)
		log.Warn("node: forwarding clients to the active node", "proto", fw.proto, "listen", ln.Addr().String(), "to", target, "proxy_protocol", sendProxy)
	}
	return f, nil
}

// setActive points the proxies with named targets at node name's address;
// an empty name (no primary known) keeps the last one, whose clients are
// told to try again shortly while it is down.
func (f *forwarder) setActive(name string) {
	if name == "" {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if name == f.active {
		return
	}
	f.active = name
	for i, fw := range f.fws {
		if _, fixed := fw.targets[""]; fixed {
			continue
		}
		addr, ok := fw.targets[name]
		if !ok {
			f.log.Warn("node: -forward names no address for the active node", "proto", fw.proto, "node", name)
			continue
		}
		f.proxies[i].SetBackend(failover.Backend{Addr: addr, SendProxy: f.proxy})
		f.log.Warn("node: forwarded clients follow the active node", "proto", fw.proto, "node", name, "to", addr)
	}
}

func (f *forwarder) close() {
	for _, p := range f.proxies {
		p.Close()
	}
	for _, ln := range f.lns {
		ln.Close()
	}
}
