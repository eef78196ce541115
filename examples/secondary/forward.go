package main

import (
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/resilmail/resilmail/failover"
)

// forward is one -forward: clients of a protocol that reach this standby
// are relayed to the active node.
type forward struct {
	proto, listen, target string
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

// Set parses proto,listen,target.
func (f forwardFlag) Set(s string) error {
	parts := strings.Split(s, ",")
	if len(parts) != 3 {
		return fmt.Errorf("want proto,listen-host:port,target-host:port, got %q", s)
	}
	if _, ok := unavailable[parts[0]]; !ok {
		return fmt.Errorf("%q: protocol %q: want imap, pop3, lmtp or submission", s, parts[0])
	}
	for _, a := range parts[1:] {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("%q: %w", s, err)
		}
	}
	*f.list = append(*f.list, forward{parts[0], parts[1], parts[2]})
	return nil
}

// forwarder runs the client proxies of -forward.
type forwarder struct {
	proxies []*failover.Proxy
	lns     []net.Listener
}

func openForwards(c config, log *slog.Logger) (*forwarder, error) {
	f := &forwarder{}
	for _, fw := range c.forwards {
		ln, err := net.Listen("tcp", fw.listen)
		if err != nil {
			f.close()
			return nil, err
		}
		p := failover.NewProxy(failover.Backend{Addr: fw.target, SendProxy: c.forwardProxy},
			&failover.ProxyOptions{Unavailable: []byte(unavailable[fw.proto]), LocalAddr: c.forwardFrom, Logger: log})
		f.proxies = append(f.proxies, p)
		f.lns = append(f.lns, ln)
		log.Warn("secondary: forwarding clients to the active node", "proto", fw.proto, "listen", ln.Addr().String(), "to", fw.target, "proxy_protocol", c.forwardProxy)
	}
	return f, nil
}

func (f *forwarder) close() {
	for _, p := range f.proxies {
		p.Close()
	}
	for _, ln := range f.lns {
		ln.Close()
	}
}
