// Command relay is a durable SMTP relay: a go-smtp server in front of a
// resilmail queue that delivers everything to one next hop over SMTP (or
// LMTP), or with -mx to each domain's MX hosts. It answers 250 only once a
// message is on stable storage, and keeps retrying until the next hop
// takes the message.
//
//	go run ./examples/relay -listen 127.0.0.1:2525 -next 127.0.0.1:25
//
// With -mx it delivers outbound mail itself instead: each recipient's mail
// goes to its domain's MX hosts, best preference first, planned from the
// DNS by mxpool (-dns, else /etc/resolv.conf; -fallback-relay after the MX
// hosts), never to itself (-hostname, or one of this machine's addresses).
// Either way a message's recipients go in transactions of at most
// -rcpts-per-transaction (50), the rest at once in another after a 452,
// and -dest-limit sets a destination's own concurrency, recipients per
// transaction and rate:
//
//	relay -listen :25 -mx -hostname mx.example.org -dest-limit gmail.com=concurrency:5,rate:10
//
// The queue lives in -queue ("relay-queue" in the working folder by
// default), created if missing and never removed by the relay: what it
// holds was acknowledged. The relay is no open relay: without a pool
// policy it accepts only recipients of -relay-domains, and clients of
// -mynetworks (loopback by default) may relay anywhere; others get
// 554 5.7.1. With -tls-cert and -tls-key it offers STARTTLS. Every message
// gets a Received header carrying its queue id (one grep finds it on every
// node), and one with more than -max-hops Received headers is refused as
// a loop (554 5.4.6). Commands out of sequence get 503, timeouts 421, and
// a client making errors is slowed down, then dropped (queue/intake). A
// recipient with NOTIFY=SUCCESS handed to a next hop that does not offer
// DSN gets its sender a "relayed" notice; an 8-bit body (BODY=8BITMIME)
// for a next hop without 8BITMIME bounces with 5.6.3, never rewritten
// (smtpout).
//
// With -submission the relay also serves message submission (port 587
// semantics; default off) for the users of a Dovecot passwd-file:
//
//	relay -listen :25 -submission :587 -tls-cert mx.pem -tls-key mx.key -passwd users.passwd \
//	      -dkim-key dkim.pem -dkim-selector mail -dkim-domain example.org
//
// AUTH PLAIN and LOGIN are offered and accepted only after STARTTLS; a
// failed login waits a second, and an address with ten failures in five
// minutes is refused without its password being checked. Without AUTH
// nothing is taken (530 5.7.0). An authenticated user may send to any
// recipient, as the login name itself or with a +detail
// (alice+news@example.org for alice@example.org), never as another address
// or "<>" (553 5.7.1), in MAIL FROM and in the header's From alike. With -dkim-key (a PEM file only its owner may read;
// ed25519 or RSA) every submitted message is DKIM-signed for -dkim-domain
// before it is queued; the relay logs the TXT record to publish at start.
//
// The relay runs Go's garbage collector at GOGC=400 unless $GOGC says
// otherwise: a larger heap (about 50 MiB at peak under smtp-source, with
// 20 sessions of 4 KiB messages or 200 of 32 MiB) for a tenth less CPU
// per message. The live heap grows with the ids the queue remembers
// against duplicates (about 250 bytes each, up to a million), and GOGC=400
// lets the heap reach five times it; so, unless $GOMEMLIMIT says
// otherwise, a soft limit of 512 MiB makes the collector work harder
// instead once the heap nears it.
//
// -debug-addr (loopback only) serves Go's profiler and /status: the
// queue's messages, held and deferred counts and oldest age, the pool
// policy's version and age, and the quarantine outbox's backlog, as JSON.
// The policy's and the outbox's figures are on /metrics too.
//
// Several relays form an MX pool that accepts and rejects exactly the same
// recipients: one publishes the pool's policy from a JSON file, the others
// follow it (adding an MX is starting one more follower):
//
//	relay -listen :25 -http :8025 -tls-cert mx1.pem -tls-key mx1.key -tls-ca pool-ca.pem \
//	      -policy pool.json -secret-file /etc/resilmail/pool.secret
//	relay -listen :25 -tls-cert mx2.pem -tls-key mx2.key -tls-ca pool-ca.pem \
//	      -follow https://mx1:8025/policy -policy-key HEX -secret-file /etc/resilmail/pool.secret
//
// Between machines everything travels over TLS: -http serves HTTPS with
// -tls-cert, the other nodes verify it with -tls-ca (a private CA; the
// system's roots without it), and a node's certificate signed by that CA
// is accepted instead of a token or password (mutual TLS). Plain HTTP is
// refused beyond loopback unless -insecure-http says otherwise.
//
// The publisher signs the policy with an ed25519 key that it makes on first
// start and keeps in its queue folder; it logs the public key, which every
// follower is given with -policy-key. The pool's secret only authorises
// fetching the policy; it comes from -secret-file (a file only its owner
// may read) or $RESILMAIL_POOL_SECRET, never from the command line, which
// every user of the machine can read: the relay refuses -secret.
//
// pool.json holds the domains and their recipients (local parts), e.g.
// {"domains": {"example.org": {"recipients": ["alice", "bob"]}}}, and may
// set max_message_size, which then applies on every MX instead of its
// -max-size, and routes, which send a domain's mail (or every domain's,
// "*") to fixed hosts on every MX instead of its -next or -mailserver:
// "routes": [{"domain": "example.org", "host": "mail.internal:24", "lmtp": true}].
//
// What the pool refuses is kept in one quarantine: each MX records a
// refused recipient before it answers 5xx (and answers 451 if it cannot),
// and ships the record to the node that keeps the quarantine, which serves
// it at /quarantine/ on its -http address to the operators of -admin-passwd
// (a Dovecot passwd-file). Each edge ships with a credential of its own,
// which opens the ingest endpoint only: its certificate, or its password
// (-ship-secret-file) checked against the centre's -quarantine-edges
// passwd-file under the edge's -hostname:
//
//	relay ... -policy pool.json -quarantine /var/lib/quarantine -admin-passwd ops.passwd -quarantine-edges edges.passwd
//	relay ... -follow https://mx1:8025/policy -quarantine-ship https://mx1:8025/quarantine/ingest -ship-secret-file mx2.ship
//
// Content scanning with rspamd: with -rspamd every message is scanned by rspamd's
// normal worker at the end of DATA, before the reply, and the pool's
// policy decides per recipient's domain what the verdict does
// (spam_threshold, spam_action: quarantine with the evidence and 250,
// quarantine-refuse, reject with 550 5.7.1, deliver tagged, accept); a
// verdict of a scanner other than the policy's "scanner" profile, or none
// at all (rspamd down, slow, garbage), is 451 4.7.1, or 250 tagged
// "unchecked" with -scan-failure accept. Recipients whose domains would
// need different replies go in separate transactions (452 4.5.3). With
// -rspamd-controller a message released from quarantine is taught to
// rspamd as ham. /metrics counts scans, errors, verdicts by action and
// actions per recipient (both labelled with this MX's -hostname) and
// the scan latency. -milter and -rspamd exclude each other.
//
//	relay ... -policy pool.json -rspamd http://127.0.0.1:11333 -rspamd-controller http://127.0.0.1:11334
//
// Content scanning and sender authentication: -milter inet:127.0.0.1:11332
// asks a milter (rspamd's proxy worker, spamass-milter, ...) about every
// message before the reply, and the pool's policy decides what its
// verdicts do as it does -rspamd's (-milter-name says which scanner it is,
// checked against the policy's profile); -authserv-id mx.example.org checks SPF, DKIM
// and DMARC, adds an Authentication-Results header (removing incoming ones
// that claim that id) and refuses null-MX senders with 550 5.7.27;
// -dmarc-reject says what a p=reject failure does (reject, quarantine, tag).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/cli"
	"github.com/resilmail/resilmail/internal/secret"
	"github.com/resilmail/resilmail/mxpool"
	"github.com/resilmail/resilmail/mxpool/pool"
	"github.com/resilmail/resilmail/queue"
	"github.com/resilmail/resilmail/queue/intake"
	"github.com/resilmail/resilmail/smtpout"
)

type config struct {
	listen      string
	next        string
	lmtp        bool
	dir         string
	hostname    string
	concurrency int
	maxSize     int64
	retryMin    time.Duration
	httpAddr    string
	debugAddr   string
	policyFile  string
	follow      string
	policyKeys  string // the publisher's public keys, hex, comma-separated
	pool        string
	secret      []byte        // the pool's secret when set (tests); else read from secretSrc
	secretSrc   secret.Source // -secret-file or $RESILMAIL_POOL_SECRET
	verbose     bool
	auth        senderAuth // -milter, -authserv-id, -dmarc-*

	quarantine      string
	quarantineShip  string
	quarantineEdges string        // the centre's passwd-file of the edges' shipping credentials
	shipSecret      secret.Source // an edge's own shipping password
	adminPasswd     string        // the operators' passwd-file

	servers []mailServer // -mailserver: deliver to whichever is primary

	relayDomains string // comma-separated domains accepted from anyone without a policy
	mynetworks   string // comma-separated prefixes whose clients may relay anywhere
	tlsCert      string // this node's certificate: STARTTLS, -http, and as a client
	tlsKey       string
	tlsCA        string // the private CA that signs the nodes' certificates
	insecureHTTP bool
	maxHops      int
	maxPerClient int

	submission   string // the submission listener's address; "": none
	passwdFile   string // the Dovecot passwd-file of the users who may submit
	dkimKey      string // the DKIM private key (PEM, mode 600)
	dkimSelector string
	dkimDomain   string

	mx              bool   // -mx: deliver to each domain's MX hosts instead of -next
	dns             string // -dns: the resolvers -mx asks
	fallbackRelay   string // -fallback-relay: tried after a domain's MX hosts
	rcptsPerTx      int
	destLimits      map[string]queue.DestinationLimits
	resolver        mxpool.Resolver // tests: in place of the DNS
	dial            dialFunc        // tests: in place of a net.Dialer
	mxOnThisMachine bool            // tests: the MX hosts are on this machine's addresses
	mxTLS           *tls.Config     // tests: the outbound TLS template (their CA)
	tlsRequired     string          // -tls-required-domains

	rspamd           string        // -rspamd: the rspamd normal worker that scans every message
	rspamdController string        // -rspamd-controller: rspamd's controller, taught the released false positives
	rspamdPassword   secret.Source // the controller's password
	scanFailure      string        // "tempfail" (451) or "accept" (tagged unchecked)
	scanLimit        int64
	scanTimeout      time.Duration

	onPolicyError func(error)   // tests: called when -policy's file is read and refused
	errorDelay    time.Duration // the tarpit's first delay; zero: the listener's default (tests shorten it)
	loginDelay    time.Duration // the delay of a failed login; zero: loginguard's default (tests shorten it)
}

// gcPercent is the relay's GOGC unless the environment sets one: under
// load its heap is mostly short-lived (tens of MiB), and Go's default of
// 100 spent a tenth of its CPU collecting it.
const gcPercent = 400

// memLimit is the relay's soft memory limit when it sets GOGC and the
// environment sets no GOMEMLIMIT: the ids the queue remembers (about 250
// bytes each, up to its DedupMax of a million) are long-lived, and
// gcPercent alone would let a busy relay's heap grow to five times them.
const memLimit = 512 << 20

// tuneGC applies gcPercent and memLimit unless getenv names GOGC or
// GOMEMLIMIT.
func tuneGC(getenv func(string) string) {
	if getenv("GOGC") != "" {
		return
	}
	debug.SetGCPercent(gcPercent)
	if getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memLimit)
	}
}

func main() {
	tuneGC(os.Getenv)
	c, err := parseFlags(os.Args[1:])
	os.Exit(cli.Main("relay", err, c.verbose, func(ctx context.Context, log *slog.Logger) error { return run(ctx, c, log, nil) }))
}

// listenSMTP listens for SMTP sessions without TCP keepalive: the intake
// times out an idle or silent client itself (command and data timeouts),
// and Go's keepalive cost four setsockopt calls on every connection.
func listenSMTP(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(ctx, "tcp", addr)
}

// parseFlags reads the command line (without the program name).
func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:2525", "SMTP listen address")
	fs.StringVar(&c.next, "next", "127.0.0.1:25", "next hop host:port that receives every message")
	fs.BoolVar(&c.lmtp, "lmtp", false, "speak LMTP to the next hop")
	fs.BoolVar(&c.mx, "mx", false, "deliver each recipient's mail to its domain's MX hosts (from the DNS) instead of -next")
	fs.StringVar(&c.dns, "dns", "", "recursive resolvers that -mx and -authserv-id ask, host[:port], comma-separated (default: those of /etc/resolv.conf)")
	fs.StringVar(&c.tlsRequired, "tls-required-domains", "", "with -mx: domains whose mail goes only over TLS verified for the MX host's name, comma-separated (MTA-STS applies to every domain)")
	fs.StringVar(&c.fallbackRelay, "fallback-relay", "", "with -mx: hosts to try after a domain's MX hosts failed temporarily, host[:port], comma-separated")
	fs.IntVar(&c.rcptsPerTx, "rcpts-per-transaction", 50, "most recipients of one message sent to one destination in one transaction; a 452 to the rest sends them at once in another")
	fs.Var(destLimitsFlag{&c.destLimits}, "dest-limit", "DEST=concurrency:N,rcpts:N,rate:R (attempts per second), repeatable: limits for one destination (a domain with -mx, else the next hop's host:port)")
	fs.StringVar(&c.dir, "queue", "relay-queue", "queue folder, created if missing and never removed by the relay")
	fs.StringVar(&c.hostname, "hostname", "", "name of this relay in EHLO and notifications (default: the host name)")
	fs.IntVar(&c.concurrency, "concurrency", 20, "deliveries in flight to the next hop")
	fs.Int64Var(&c.maxSize, "max-size", 32<<20, "largest message accepted, in bytes, unless the pool's policy sets max_message_size")
	fs.DurationVar(&c.retryMin, "retry", 0, "first retry delay after a temporary failure (default 5m, doubling to 67m)")
	fs.StringVar(&c.httpAddr, "http", "", "serve /metrics, and /policy and /quarantine/ when asked for, on this address (default: off)")
	fs.StringVar(&c.debugAddr, "debug-addr", "", "serve Go's profiler at /debug/pprof/ on this loopback address, e.g. 127.0.0.1:6060 or :6060 (default: off)")
	fs.StringVar(&c.policyFile, "policy", "", "publish the MX pool's policy from this JSON file (reloaded when it changes) at /policy on -http")
	fs.StringVar(&c.follow, "follow", "", "follow the pool's policy published at this URL (e.g. http://mx1:8025/policy)")
	fs.StringVar(&c.policyKeys, "policy-key", "", "with -follow: the publisher's ed25519 public key in hex, as it logs it at start (two, comma-separated, while its key is replaced)")
	fs.StringVar(&c.pool, "pool", pool.DefaultPool, "the pool's name, part of every policy signature: the same on every MX of the pool")
	fs.StringVar(&c.secretSrc.File, "secret-file", "", "file holding the pool's shared secret, readable by its owner only (default: $RESILMAIL_POOL_SECRET)")
	refuse := secret.Refuse(fs, "secret", "RESILMAIL_POOL_SECRET", "secret-file")
	fs.StringVar(&c.quarantine, "quarantine", "", "keep the pool's quarantine in this folder: this relay's rejects, and the other MXs' shipped to /quarantine/ingest on -http; pages for the administrator at /quarantine/")
	fs.StringVar(&c.quarantineShip, "quarantine-ship", "", "ship what this relay rejects to the quarantine at this URL (e.g. http://mx1:8025/quarantine/ingest)")
	fs.Var(mailServerFlag{&c.servers}, "mailserver", "a mailbox server as name=lmtp-host:port,http://host:port (repeat for each): deliver over LMTP to whichever says it is primary on its /status, keeping mail queued while none does, instead of -next")
	fs.StringVar(&c.relayDomains, "relay-domains", "", "without -policy or -follow: domains accepted from any client, comma-separated (others get 554 5.7.1 unless the client is in -mynetworks)")
	fs.StringVar(&c.mynetworks, "mynetworks", "127.0.0.0/8,::1/128", "clients in these networks (comma-separated prefixes) may relay to any domain")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "this node's certificate (PEM; with -tls-key): offered with STARTTLS, served on -http (HTTPS), and presented to the other nodes as a client certificate")
	fs.StringVar(&c.tlsKey, "tls-key", "", "the private key of -tls-cert (PEM)")
	fs.IntVar(&c.maxPerClient, "max-conns-per-client", 50, "SMTP sessions open at once from one address; more get 421 4.7.0 (negative: no limit)")
	fs.IntVar(&c.maxHops, "max-hops", 50, "refuse a message with more Received headers than this as a mail loop (554 5.4.6)")
	fs.StringVar(&c.quarantineEdges, "quarantine-edges", "", "with -quarantine: a Dovecot passwd-file of the edges' shipping credentials (user: the edge's -hostname); they open /quarantine/ingest only")
	fs.StringVar(&c.shipSecret.File, "ship-secret-file", "", "with -quarantine-ship: file holding this edge's own shipping password (default: $RESILMAIL_SHIP_SECRET); or use -tls-cert")
	fs.StringVar(&c.adminPasswd, "admin-passwd", "", "with -quarantine: a Dovecot passwd-file of the operators who may log in to /quarantine/")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "PEM certificates of a private CA: the publisher and the quarantine centre are verified with it, and nodes' client certificates it signed are accepted instead of tokens and passwords")
	fs.BoolVar(&c.insecureHTTP, "insecure-http", false, "allow plain HTTP between machines (-http beyond loopback without -tls-cert, http:// URLs of other hosts)")
	fs.StringVar(&c.submission, "submission", "", "serve message submission (port 587 semantics) on this address, e.g. :587: AUTH PLAIN/LOGIN inside STARTTLS for the users of -passwd, who may then send anywhere as their own address (needs -tls-cert; default: off)")
	fs.StringVar(&c.passwdFile, "passwd", "", "with -submission: a Dovecot passwd-file of the users who may submit (reread when it changes)")
	fs.StringVar(&c.dkimKey, "dkim-key", "", "with -submission: sign submitted mail with the DKIM private key in this PEM file (ed25519 or RSA, PKCS#8 or PKCS#1), readable by its owner only")
	fs.StringVar(&c.dkimSelector, "dkim-selector", "", "with -dkim-key: the key's selector (s=)")
	fs.StringVar(&c.dkimDomain, "dkim-domain", "", "with -dkim-key: the signing domain (d=), which publishes the key at SELECTOR._domainkey.DOMAIN")
	fs.StringVar(&c.rspamd, "rspamd", "", "scan every message at the end of DATA with the rspamd normal worker at this URL (http://127.0.0.1:11333 on loopback, https:// beyond, verified with -tls-ca); the pool's policy decides per domain what a verdict does")
	fs.StringVar(&c.rspamdController, "rspamd-controller", "", "with -rspamd: rspamd's controller URL (e.g. http://127.0.0.1:11334); a false positive released from quarantine is taught to it as ham")
	fs.StringVar(&c.rspamdPassword.File, "rspamd-password-file", "", "with -rspamd-controller: file holding the controller's password (default: $RESILMAIL_RSPAMD_PASSWORD, or none)")
	fs.StringVar(&c.scanFailure, "scan-failure", "tempfail", "when the scanner gives no verdict (down, slow, garbage, not the pool's scanner): tempfail (451 4.7.1) or accept (250, tagged unchecked)")
	fs.Int64Var(&c.scanLimit, "scan-limit", intake.DefaultScanLimit, "scan the first this many bytes of a larger message")
	fs.DurationVar(&c.scanTimeout, "scan-timeout", intake.DefaultScanTimeout, "longest wait for the scanner's verdict")
	fs.BoolVar(&c.verbose, "v", false, "log every message")
	c.auth.flags(fs)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if err := refuse(); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return c, errors.New("-tls-cert and -tls-key go together")
	}
	if err := checkSubmissionFlags(c); err != nil {
		return c, err
	}
	c.secretSrc.Env, c.secretSrc.Flag = "RESILMAIL_POOL_SECRET", "secret-file"
	c.shipSecret.Env, c.shipSecret.Flag = "RESILMAIL_SHIP_SECRET", "ship-secret-file"
	c.rspamdPassword.Env, c.rspamdPassword.Flag = "RESILMAIL_RSPAMD_PASSWORD", "rspamd-password-file"
	if c.scanFailure != "tempfail" && c.scanFailure != "accept" {
		return c, fmt.Errorf("-scan-failure %q: want tempfail or accept", c.scanFailure)
	}
	if c.scanLimit <= 0 || c.scanTimeout <= 0 {
		return c, errors.New("-scan-limit and -scan-timeout must be positive")
	}
	return c, nil
}

// run serves until ctx is done. ready, if not nil, receives the listening
// address.
func run(ctx context.Context, c config, log *slog.Logger, ready chan<- net.Addr) error {
	if c.dir == "" {
		return errors.New("-queue is required: the folder that holds accepted mail")
	}
	if c.hostname == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			c.hostname = h
		} else {
			c.hostname = "localhost"
		}
	}
	relay, err := newRelayCheck(c)
	if err != nil {
		return err
	}
	var tlsConfig *tls.Config
	if c.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			return fmt.Errorf("-tls-cert/-tls-key: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	nt, err := loadNodeTLS(c)
	if err != nil {
		return err
	}
	if c.httpAddr != "" {
		if err := nt.checkListen(c.httpAddr, c.insecureHTTP); err != nil {
			return err
		}
	}
	pl, err := openPool(c, nt, log)
	if err != nil {
		return err
	}
	if pl.close != nil {
		defer pl.close()
	}
	// Keep a session per delivery slot: the next hop is one host, or the
	// -mailserver that is primary now.
	var deliverer resilmail.Deliverer
	next := c.next
	destination := func(string) string { return next }
	var fol *follower
	switch {
	case c.mx && len(c.servers) > 0:
		return errors.New("-mx and -mailserver exclude each other")
	case c.mx:
		d, dest, err := newMXDelivery(c, log)
		if err != nil {
			return err
		}
		defer d.Close()
		deliverer, destination, next = d, dest, "each domain's MX hosts"
	case len(c.servers) > 0:
		var err error
		if fol, err = newFollower(c, log); err != nil {
			return err
		}
		defer fol.close()
		deliverer, destination, next = fol.deliverer, fol.destination, "the primary of -mailserver"
	default:
		out, err := smtpout.New(&smtpout.Options{Addr: c.next, LMTP: c.lmtp, LocalName: c.hostname, MaxIdle: c.concurrency, Logger: log})
		if err != nil {
			return err
		}
		defer out.Close()
		deliverer = out
	}
	if pl.snapshot != nil {
		// The pool's routes apply on every MX alike, before its own next hop.
		rt := &poolRoutes{routes: pl.routes, def: deliverer, defDest: destination, log: log,
			smtp: smtpout.Options{LocalName: c.hostname, MaxIdle: c.concurrency, Logger: log}}
		defer rt.close()
		deliverer, destination = rt, rt.destination
	}
	queueMax := c.maxSize
	if c.policyFile != "" || c.follow != "" {
		queueMax = max(queueMax, maxPolicySize) // the policy's limit applies at the door
	}
	q, err := queue.Open(c.dir, deliverer, &queue.Options{
		Destination:       destination,
		MaxPerDestination: c.concurrency,
		MaxDeliveries:     c.concurrency,
		MaxMessageSize:    queueMax,
		Hostname:          c.hostname,
		Logger:            log,
		Retry:             queue.RetryPolicy{MinBackoff: c.retryMin},

		MaxRcptsPerTransaction: c.rcptsPerTx,
		PerDestination:         c.destLimits,
	})
	if err != nil {
		return err
	}
	defer q.Close()

	sc, err := openScanning(c, nt, pl.check, pl.snapshot, log)
	if err != nil {
		return err
	}
	qn, err := openQuarantine(c, sc.learner(q, c.maxSize), nt, log)
	if err != nil {
		return err
	}
	if qn.close != nil {
		defer qn.close()
	}
	if err := checkSubmissionFlags(c); err != nil {
		return err
	}
	sub, err := openSubmission(c, q, tlsConfig, pl.maxSize(c.maxSize), pl.snapshot != nil, log)
	if err != nil {
		return err
	}
	if sub != nil {
		defer sub.srv.Close()
	}
	be := &intake.Backend{Queue: q, Logger: log, Rejected: qn.record, MaxSize: pl.maxSize(c.maxSize), Hostname: c.hostname, MaxHops: c.maxHops}
	be.Accept = relay.accept(pl.check)
	sc.configure(be, c)
	if sc != nil {
		be.Quarantine = sc.quarantineHook(qn.keep, c.hostname, pl.snapshot)
	}
	if err := c.auth.wire(be, c.dns, log); err != nil {
		return err
	}
	sc.countVerdicts(be)
	srv := newSMTPServer(be, c, pl.snapshot != nil)
	srv.Addr = c.listen
	tcp, err := listenSMTP(ctx, c.listen)
	if err != nil {
		return err
	}
	// Exact answers, timeouts, the error limit and per-client limits.
	ln := intake.NewListener(tcp, &intake.ListenerOptions{Logger: log, TLSConfig: tlsConfig, ErrorDelay: c.errorDelay, MaxConnsPerClient: c.maxPerClient})
	ln.Configure(srv)
	log.Warn("relay: listening", "addr", ln.Addr().String(), "next", next, "queue", c.dir, "queued", len(q.List(queue.Filter{})))

	g, gctx := errgroup.WithContext(ctx)
	// The queue stops through Shutdown below, which lets deliveries in
	// flight finish, not by the cancellation that starts it.
	g.Go(func() error {
		// A shutdown that comes before Run starts closes the queue first.
		if err := q.Run(context.WithoutCancel(gctx)); err != nil && !(errors.Is(err, queue.ErrClosed) && gctx.Err() != nil) {
			return err
		}
		return nil
	})
	if fol != nil {
		g.Go(func() error { return fol.run(gctx) })
	}
	if pl.run != nil {
		g.Go(func() error { return pl.run(gctx) })
	}
	if qn.run != nil {
		g.Go(func() error { return qn.run(gctx) })
	}
	g.Go(func() error {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, smtp.ErrServerClosed) && gctx.Err() == nil {
			return err
		}
		return nil
	})
	if sub != nil {
		g.Go(func() error {
			if err := sub.srv.Serve(sub.ln); err != nil && !errors.Is(err, smtp.ErrServerClosed) && gctx.Err() == nil {
				return err
			}
			return nil
		})
	}
	var hsrv *http.Server
	if c.httpAddr != "" {
		hln, err := net.Listen("tcp", c.httpAddr)
		if err != nil {
			srv.Close()
			return err
		}
		log.Warn("relay: metrics", "url", "http://"+hln.Addr().String()+"/metrics")
		hsrv = &http.Server{Handler: httpHandler(q, sc, pl.status, qn.outbox, pl.handler, qn.handler), ReadHeaderTimeout: httpReadHeaderTimeout, TLSConfig: nt.server}
		if nt.server != nil {
			hln = tls.NewListener(hln, nt.server)
		}
		g.Go(func() error {
			if err := hsrv.Serve(hln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	var dsrv *http.Server
	if c.debugAddr != "" {
		dln, err := listenDebug(c.debugAddr)
		if err != nil {
			srv.Close()
			if hsrv != nil {
				hsrv.Close()
			}
			return err
		}
		log.Warn("relay: profiler and status", "url", "http://"+dln.Addr().String()+"/debug/pprof/", "status", "http://"+dln.Addr().String()+"/status")
		dsrv = &http.Server{Handler: debugHandler(statusHandler(q, pl.status, qn.outbox)), ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error {
			if err := dsrv.Serve(dln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if ready != nil {
		ready <- ln.Addr() // every listener is up
	}
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// go-smtp's Shutdown closes only the listeners its Serve has
		// registered: one whose Serve had not started yet would block in
		// Accept for ever. Closing them here ends such a Serve too.
		srv.Shutdown(sctx)
		ln.Close()
		if sub != nil {
			sub.srv.Shutdown(sctx)
			sub.ln.Close()
		}
		if err := q.Shutdown(sctx); err != nil {
			log.Warn("relay: deliveries cut short by the shutdown deadline; they are retried at the next start", "err", err)
		}
		if hsrv != nil {
			hsrv.Shutdown(sctx)
		}
		if dsrv != nil {
			dsrv.Close() // a profile in progress is not worth waiting for
		}
		return nil
	})
	err = g.Wait()
	st := q.Stats()
	log.Warn("relay: stopped", "enqueued", st.Enqueued, "delivered", st.Delivered, "deferred", st.Deferred, "queued", st.Messages)
	return err
}
