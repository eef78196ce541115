package cli

import (
	"fmt"
	"net"
	"net/url"
)

// CheckListen refuses a plain HTTP listener (withTLS false) on addr beyond
// loopback unless insecure (a command's -insecure-http) asks for it: what
// the node serves (replication, credentials) would travel in clear.
func CheckListen(flag, addr string, withTLS, insecure bool) error {
	if withTLS || insecure {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-%s %q: %w", flag, addr, err)
	}
	if !IsLoopback(host) {
		return fmt.Errorf("-%s %s would serve in clear beyond this machine: give -tls-cert and -tls-key, or -insecure-http to do it anyway", flag, addr)
	}
	return nil
}

// CheckURL refuses an http:// URL of another machine unless insecure asks
// for it.
func CheckURL(flag, raw string, insecure bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("-%s %q: %w", flag, raw, err)
	}
	if u.Scheme == "http" && !insecure && !IsLoopback(u.Hostname()) {
		return fmt.Errorf("-%s %s is plain HTTP to another machine: use https:// (with -ca for a private CA), or -insecure-http to do it anyway", flag, raw)
	}
	return nil
}

// IsLoopback reports whether host is "localhost" or a loopback address.
// An empty host (a listener on every interface) is not.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
