package mxpool

// Route sends the mail for a domain to a fixed next hop instead of the
// domain's MX hosts: the pool's own domains to the active mail server over
// LMTP, or every domain to a smart host.
type Route struct {
	// Domain is the recipient domain in lower-case A-label form, or "*"
	// for every domain without a route of its own.
	Domain string `json:"domain"`
	// Host is the next hop as host or host:port (port 25, or 24 for LMTP,
	// when absent). Several hosts separated by commas are tried in order.
	Host string `json:"host"`
	// LMTP delivers with LMTP instead of SMTP.
	LMTP bool `json:"lmtp,omitempty"`
}
