// Command primary is the mailbox server of the reference deployment, as a
// node that can be primary or standby and change role without a restart:
// it takes mail over LMTP into resilmail's mailbox store (replicate/store)
// and, while primary, streams every change within milliseconds to its
// replicas; while standby it follows the primary's stream, verifying every
// body, and refuses writes (LMTP answers 451, IMAP writes NO).
//
//	export RESILMAIL_SECRET=...   # or -secret-file; never on the command line
//	go run ./examples/primary -dir /var/lib/resilmail -users alice,bob -ack one \
//	    -replicas mail2 -tls-cert cert.pem -tls-key key.pem -http :8026
//	go run ./examples/primary -replica-secret mail2 > mail2.secret  # for mail2's -secret-file
//
// A relay (examples/relay -lmtp -next 127.0.0.1:2424) delivers into it.
// Each recipient is answered on its own: 250 once the message is durable in
// the user's INBOX and, with -ack one (a replica) or -ack all (every replica
// in -replicas), durable on the replicas too. When they do not answer within
// -ack-timeout the answer is 451 and the relay delivers again later
// (-on-timeout refuse, the default), or 250 with the window counted and
// logged (-on-timeout accept). With -ack async (the default) replicas catch
// up on their own.
//
// # Roles, epochs and failover
//
// The node's role (primary, standby, fenced) and epoch are its store's,
// durable across restarts: it starts in the role it had. A new store is a
// primary, or a standby with -standby (or -primary URL, which follows that
// fixed primary as examples/secondary does). Two nodes name each other
// with -peer, share the replication secret (each follows with the secret
// derived for its -name) and run the same command line but for -name,
// -peer and their addresses:
//
//	primary -name mail1 -peer mail2=https://mail2:8026 -lease etcd -etcd https://etcd1:2379,... -ack one ...
//	primary -name mail2 -peer mail1=https://mail1:8026 -lease etcd -etcd ... -standby ...
//
// A standby follows whichever peer says it is primary with the highest
// epoch. A node that starts as primary while a peer is primary at a higher
// epoch (it was superseded while down) fences itself and rejoins as that
// peer's standby, its unreplicated tail handed over as orphans (the new
// primary's "Orphaned" mailbox); one whose peer is the primary of its own
// history (a copied data folder) or of the same epoch refuses to start: it
// would be a second writable primary.
//
// With -lease manual (the default) the operator decides; with -lease etcd
// the nodes hold an election on etcd (-lease-ttl, default 2 s): the holder
// is primary at an epoch of at least the election's revision, demotes
// itself when it cannot renew in time, and a standby lagging more than
// -max-lag changes is not eligible. A node stopped cleanly releases the
// lease without fencing its store: the standby takes over, and a pair
// stopped and started again elects a primary again.
//
// On its -http address (HTTPS and HTTP/2 with -tls-cert and -tls-key, as
// it must be between machines: plain HTTP beyond loopback is refused
// unless -insecure-http) it serves the replication stream and inventory at
// /replicate/ (503 while not primary), its state as JSON at /status (name,
// role, epoch, history, the peer it follows) and Prometheus metrics at
// /metrics. Each replica named in -replicas or -peer has its own secret,
// derived from this node's (-replica-secret NAME prints it), so that its
// name is bound to its credential and one replica cannot acknowledge for
// another (-ack all requires it); without them the replicas use the
// primary's secret itself.
//
// The operators' endpoints need the bearer token of -operator-secret-file
// (or $RESILMAIL_OPERATOR_SECRET; never the replication secret; without it
// they answer 403):
//
//	POST /operator/switchover?to=NAME  move the primary role to peer NAME: drain, wait until it
//	                                   has everything, raise the epoch, promote it, follow it
//	                                   (under etcd the lease moves with it); the report, timed
//	POST /operator/promote[?epoch=N]   manual failover: promote this standby; says how far behind it was
//	POST /operator/demote              fence this primary
//	POST /operator/follow?primary=NAME a fenced node rejoins as NAME's standby
//	POST /operator/grant?token=N       grant the manual lease (its elector promotes the node)
//	POST /operator/revoke              end the manual lease's term (the node is demoted)
//	GET  /operator/held                destructive changes the standby's guard delays (-guard-share,
//	                                   -guard-min: a mass expunge, a delete, a flag wipe)
//	POST /operator/confirm?user=U&seq=N apply one of them
//	/operator/member/...               a switchover's steps, driven by the peer that runs it
//
// -forward relays the clients of a protocol that reach this node to the
// active node (proto,listen,node=addr,node=addr...: each node's port; the
// proxy follows role changes and drains the old connections), with the
// client's address in a PROXY v2 header with -forward-proxy for nodes that
// trust this one (-proxy-trust).
//
// Users read their mail over IMAP (-imap, default 127.0.0.1:1143; -imaps
// for implicit TLS) and POP3 (-pop3, default 127.0.0.1:1110; -pop3s) once
// -passwd names a Dovecot-format passwd-file ({PLAIN}, {BLF-CRYPT},
// {SHA512-CRYPT}; read again when it changes):
//
//	go run ./examples/primary -passwd /etc/resilmail/passwd -tls-cert cert.pem -tls-key key.pem -imaps :993
//
// Passwords are taken over TLS (STARTTLS, STLS or the implicit-TLS ports,
// with -tls-cert) or from loopback only; failed logins are delayed and
// rate-limited per client address. IMAP sessions see deliveries at once
// (IDLE); a user's Drafts, Sent, Trash, Junk and Archive are created at the
// first login.
package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/sync/errgroup"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/failover"
	"github.com/resilmail/resilmail/internal/cli"
	"github.com/resilmail/resilmail/internal/lmtpstore"
	"github.com/resilmail/resilmail/internal/secret"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

type config struct {
	dir        string
	lmtp       string
	httpAddr   string
	secret     []byte
	secretSrc  secret.Source
	users      []string
	mode       replicate.AckMode
	replicas   []string
	ackTimeout time.Duration
	onTimeout  replicate.TimeoutPolicy
	hostname   string
	maxSize    int64
	tlsCert    string
	tlsKey     string
	insecure   bool
	verbose    bool
	// printSecret names the replica whose secret -replica-secret prints.
	printSecret string
	imap        string
	imaps       string
	passwdFile  string
	backup      backupConfig
	pop3        string
	pop3s       string
	proxyTrust  []netip.Prefix // -proxy-trust: proxies whose PROXY v2 headers are read
	node        nodeConfig
}

// parseFlags reads the command line (without the program name); getenv
// supplies the secret's default.
func parseFlags(args []string, getenv func(string) string) (config, error) {
	var c config
	fs := flag.NewFlagSet("primary", flag.ContinueOnError)
	fs.StringVar(&c.dir, "dir", "resilmail-primary", "data folder, created if missing and never removed by the program: the store under store/, IMAP's parse cache in imap-structure.cache")
	fs.StringVar(&c.lmtp, "lmtp", "127.0.0.1:2424", "LMTP listen address, host:port or the path of a Unix socket")
	fs.StringVar(&c.httpAddr, "http", "127.0.0.1:8026", "HTTP listen address: /replicate/, /status, /metrics")
	fs.StringVar(&c.secretSrc.File, "secret-file", "", "file (mode 600) holding the replication secret (default: $RESILMAIL_SECRET)")
	refuse := secret.Refuse(fs, "secret", "RESILMAIL_SECRET", "secret-file")
	fs.StringVar(&c.printSecret, "replica-secret", "", "print the secret of the replica of this name (for its -secret-file) and exit")
	fs.BoolVar(&c.insecure, "insecure-http", false, "allow -http beyond loopback without -tls-cert (the stream in clear)")
	users := fs.String("users", "", "comma-separated users to create if missing, e.g. alice,bob")
	mode := fs.String("ack", "async", "what a delivery waits for before 250: async, one (a replica), all (every replica in -replicas)")
	replicas := fs.String("replicas", "", "comma-separated names of the replicas -ack all waits for")
	fs.DurationVar(&c.ackTimeout, "ack-timeout", replicate.DefaultAckTimeout, "how long a delivery waits for the replicas")
	onTimeout := fs.String("on-timeout", "refuse", "when the replicas do not answer in time: refuse (451, the client retries) or accept (250, the window is counted)")
	fs.StringVar(&c.hostname, "hostname", "", "name in the LMTP greeting (default: the host name)")
	fs.Int64Var(&c.maxSize, "max-size", 64<<20, "largest message accepted, in bytes")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "serve -http as HTTPS (HTTP/2) with this PEM certificate chain; between machines the stream should never travel in clear")
	fs.StringVar(&c.tlsKey, "tls-key", "", "the PEM private key of -tls-cert")
	fs.BoolVar(&c.verbose, "v", false, "log every delivery")
	fs.StringVar(&c.imap, "imap", "127.0.0.1:1143", "IMAP listen address (STARTTLS with -tls-cert; passwords in clear only from loopback); empty: none")
	fs.StringVar(&c.imaps, "imaps", "", "IMAP over implicit TLS listen address (needs -tls-cert), e.g. :993")
	fs.StringVar(&c.pop3, "pop3", "127.0.0.1:1110", "POP3 listen address (STLS with -tls-cert; passwords in clear only from loopback); empty: none")
	fs.StringVar(&c.pop3s, "pop3s", "", "POP3 over implicit TLS listen address (needs -tls-cert), e.g. :995")
	proxyTrust := fs.String("proxy-trust", "", "comma-separated addresses or CIDR prefixes of the client proxies (a standby's) whose PROXY protocol v2 header gives the client's address on the LMTP, IMAP and POP3 ports; a connection from them without a valid header is refused; others never send one")
	fs.StringVar(&c.passwdFile, "passwd", "", "Dovecot-format passwd-file of the IMAP and POP3 users (reloaded when it changes); without it IMAP and POP3 are off")
	fs.StringVar(&c.backup.repo, "backup", "", "back the store up continuously into this repository: a folder, or https://host:port/ of `backup serve` (see examples/backup)")
	fs.StringVar(&c.backup.keyFile, "backup-key-file", "", "file holding the backup's encryption key")
	fs.StringVar(&c.backup.secretFile, "backup-secret-file", "", "file holding the secret shared with the served repository")
	fs.StringVar(&c.backup.caFile, "backup-ca", "", "PEM CA of the served repository's certificate")
	fs.DurationVar(&c.backup.flushEvery, "backup-flush", 10*time.Second, "how often the backup writes what it has read")
	fs.DurationVar(&c.backup.snapshotEvery, "backup-snapshot-every", 24*time.Hour, "how often the backup writes a snapshot")
	nodeFlags(fs, &c.node)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if c.proxyTrust, err = parsePrefixes(*proxyTrust); err != nil {
		return c, fmt.Errorf("-proxy-trust: %w", err)
	}
	if err := refuse(); err != nil {
		return c, err
	}
	c.secretSrc.Env, c.secretSrc.Flag = "RESILMAIL_SECRET", "secret-file"
	sec, err := c.secretSrc.Read(getenv)
	if err != nil {
		return c, fmt.Errorf("no usable secret: %w", err)
	}
	c.secret = sec
	c.users, c.replicas = splitList(*users), splitList(*replicas)
	switch *mode {
	case "async":
		c.mode = replicate.AckAsync
	case "one":
		c.mode = replicate.AckOne
	case "all":
		c.mode = replicate.AckAll
		if len(c.replicas) == 0 {
			return c, errors.New("-ack all needs -replicas: the names of the replicas to wait for (each gets its own secret, see -replica-secret)")
		}
	default:
		return c, fmt.Errorf("-ack %q: want async, one or all", *mode)
	}
	switch *onTimeout {
	case "refuse":
		c.onTimeout = replicate.TimeoutRefuse
	case "accept":
		c.onTimeout = replicate.TimeoutAccept
	default:
		return c, fmt.Errorf("-on-timeout %q: want refuse or accept", *onTimeout)
	}
	if c.ackTimeout <= 0 {
		return c, errors.New("-ack-timeout must be positive")
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return c, errors.New("-tls-cert and -tls-key go together")
	}
	if err := cli.CheckListen("http", c.httpAddr, c.tlsCert != "", c.insecure); err != nil {
		return c, err
	}
	if (c.imaps != "" || c.pop3s != "") && c.tlsCert == "" {
		return c, errors.New("-imaps and -pop3s need -tls-cert and -tls-key")
	}
	if err := c.node.check(getenv, c.secret, c.insecure); err != nil {
		return c, err
	}
	return c, nil
}

// replicaSecret is the secret of the replica name, derived from the
// primary's: HMAC-SHA256(secret, label, name), in hex.
func replicaSecret(secret []byte, name string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("resilmail/examples/primary replica secret 1\x00" + name))
	return []byte(hex.EncodeToString(m.Sum(nil)))
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func main() { os.Exit(realMain(os.Args[1:])) }

// realMain runs the command with args until SIGINT or SIGTERM and returns
// its exit code.
func realMain(args []string) int {
	c, err := parseFlags(args, os.Getenv)
	if err == nil && c.printSecret != "" {
		fmt.Printf("%s\n", replicaSecret(c.secret, c.printSecret))
		return 0
	}
	return cli.Main("primary", err, c.verbose, func(ctx context.Context, log *slog.Logger) error { return run(ctx, c, log, nil) })
}

// addrs are the addresses run listens on.
type addrs struct {
	lmtp, http  net.Addr
	imap, imaps net.Addr // nil when not served
	pop3, pop3s net.Addr
}

// run serves until ctx is done. ready, if not nil, receives the listening
// addresses.
func run(ctx context.Context, c config, log *slog.Logger, ready chan<- addrs) error {
	if c.dir == "" {
		return errors.New("-dir is empty: the data folder holds mail and is never a temporary one")
	}
	st, err := store.Open(filepath.Join(c.dir, "store"), &store.Options{Logger: log, MaxMessageSize: c.maxSize})
	if err != nil {
		return err
	}
	defer st.Close()
	m, err := openNode(c, st, log)
	if err != nil {
		return err
	}
	defer m.close()
	if err := m.start(ctx); err != nil {
		return err
	}
	for _, u := range c.users {
		if st.Role() != store.RolePrimary {
			break // a standby gets its users from the primary
		}
		if err := st.CreateUser(ctx, u); err != nil && !errors.Is(err, store.ErrExists) {
			return fmt.Errorf("creating user %q: %w", u, err)
		}
	}

	// Every delivery waits for Await: in async mode it returns at once,
	// unless a replica has seen a newer epoch (this node was superseded),
	// and then the delivery is refused with 451, as it is on a standby
	// (whose store refuses it first).
	// A delivery answered 451 after it was stored (the replicas did not
	// acknowledge in time) is remembered, so that the relay's retry is
	// not stored twice.
	deliveries, err := lmtpstore.OpenDeliveryLog(filepath.Join(c.dir, "lmtp-deliveries"), &lmtpstore.DeliveryLogOptions{Logger: log})
	if err != nil {
		return err
	}
	srv := smtp.NewServer(&lmtpstore.Backend{Store: st, Commit: m.n.Await, MaxSize: c.maxSize, Logger: log, Deliveries: deliveries})
	srv.LMTP = true
	srv.Domain = c.hostname
	if srv.Domain == "" {
		if h, err := os.Hostname(); err == nil {
			srv.Domain = h
		} else {
			srv.Domain = "localhost"
		}
	}
	srv.MaxMessageBytes = c.maxSize
	srv.MaxRecipients = 1000
	srv.ReadTimeout = 5 * time.Minute
	srv.WriteTimeout = 5 * time.Minute
	srv.EnableSMTPUTF8 = true
	network := "tcp"
	if strings.Contains(c.lmtp, "/") {
		network = "unix"
		os.Remove(c.lmtp) // a socket left by a killed process
	}
	ln, err := net.Listen(network, c.lmtp)
	if err != nil {
		return err
	}
	ln = trustProxies(ln, c.proxyTrust, log)
	hln, err := net.Listen("tcp", c.httpAddr)
	if err != nil {
		ln.Close()
		return err
	}
	hsrv := &http.Server{ReadHeaderTimeout: 10 * time.Second}
	scheme := "http"
	if c.tlsCert != "" {
		// Load now, so that a bad certificate stops the start.
		if _, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey); err != nil {
			ln.Close()
			hln.Close()
			return fmt.Errorf("-tls-cert, -tls-key: %w", err)
		}
		scheme = "https"
	}
	ms, err := startMailServers(c, st, log)
	if err != nil {
		ln.Close()
		hln.Close()
		return err
	}
	defer ms.close()
	// The proxies start towards the active node: this one if it is the
	// primary, else the peer that says it is (one poll of the peers).
	var fwd *forwarder
	initial := c.node.name
	if len(c.node.peers) > 0 {
		nodes := []failover.WatchedNode{{Name: c.node.name, StatusURL: scheme + "://" + loopbackIfAny(hln.Addr()) + "/status"}}
		for _, name := range c.node.peerOrder {
			nodes = append(nodes, failover.WatchedNode{Name: name, StatusURL: c.node.peers[name] + "/status"})
		}
		client, err := peerClient(c.node.ca, time.Second)
		if err != nil {
			ln.Close()
			hln.Close()
			return err
		}
		m.watcher = failover.NewWatcher(nodes, &failover.WatcherOptions{Interval: 200 * time.Millisecond, Client: client, Logger: log,
			OnChange: func(name string, _ resilmail.Epoch) {
				if fwd != nil {
					fwd.setActive(name)
				}
			}})
		if st.Role() != store.RolePrimary {
			m.watcher.PollOnce(ctx)
			if name, _, ok := m.watcher.Active(); ok {
				initial = name
			}
		}
	}
	fwd, err = openForwards(c.node.forwards, c.node.fwdProxy, c.node.fwdFrom, initial, log)
	if err != nil {
		ln.Close()
		hln.Close()
		return err
	}
	defer fwd.close()
	m.fwd = fwd
	hsrv.Handler = handler(m, ms)
	log.Warn("primary: serving", "name", c.node.name, "role", st.Role().String(), "epoch", uint64(st.Epoch()), "lease", c.node.lease, "lmtp", ln.Addr().String(), "http", scheme+"://"+hln.Addr().String(),
		"imap", addrString(ms.imapLn), "imaps", addrString(ms.imapsLn), "pop3", addrString(ms.pop3Ln), "pop3s", addrString(ms.pop3sLn),
		"store", st.Stats().Seq, "users", st.Stats().Users, "ack", c.mode.String())
	if ready != nil {
		a := addrs{lmtp: ln.Addr(), http: hln.Addr()}
		if ms.imapLn != nil {
			a.imap = ms.imapLn.Addr()
		}
		if ms.imapsLn != nil {
			a.imaps = ms.imapsLn.Addr()
		}
		if ms.pop3Ln != nil {
			a.pop3 = ms.pop3Ln.Addr()
		}
		if ms.pop3sLn != nil {
			a.pop3s = ms.pop3sLn.Addr()
		}
		ready <- a
	}

	g, gctx := errgroup.WithContext(ctx)
	if c.backup.repo != "" {
		follow, err := startBackup(ctx, c.backup, st, log)
		if err != nil {
			ln.Close()
			hln.Close()
			return err
		}
		g.Go(func() error { return follow(gctx) })
	}
	ms.serve(g)
	g.Go(func() error { return st.Run(gctx) })
	g.Go(func() error { return m.el.Run(gctx) })
	if m.watcher != nil {
		g.Go(func() error { return m.watcher.Run(gctx) })
		if m.etcd == nil {
			g.Go(func() error {
				t := time.NewTicker(200 * time.Millisecond)
				defer t.Stop()
				for {
					select {
					case <-gctx.Done():
						return nil
					case <-t.C:
						m.reconcile(gctx)
					}
				}
			})
		}
	}
	if m.etcd != nil {
		g.Go(func() error { return m.n.FollowLeader(gctx, m.etcd, m.etcd.Timers().Renew) })
	}
	for i, p := range fwd.proxies {
		ln := fwd.lns[i]
		g.Go(func() error {
			if err := p.Serve(ln); err != nil && !errors.Is(err, failover.ErrProxyClosed) {
				return err
			}
			return nil
		})
	}
	g.Go(func() error {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, smtp.ErrServerClosed) && gctx.Err() == nil {
			return err
		}
		return nil
	})
	g.Go(func() error {
		var err error
		if c.tlsCert != "" {
			err = hsrv.ServeTLS(hln, c.tlsCert, c.tlsKey) // HTTP/2 negotiated by ALPN
		} else {
			err = hsrv.Serve(hln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// go-smtp's Shutdown closes only the listeners its Serve has
		// registered: a Serve not started yet would block in Accept for
		// ever (the relay hung so); closing ln ends it too.
		srv.Shutdown(sctx)
		ln.Close()
		ms.close()
		fwd.close()
		// The replicas' streams never end on their own.
		hsrv.Close()
		return nil
	})
	err = g.Wait()
	log.Warn("primary: stopped", "role", st.Role().String(), "epoch", uint64(st.Epoch()), "position", st.Position())
	return err
}

// loopbackIfAny is addr, with an unspecified host (a listener on every
// address) replaced by the loopback address, to reach it from here.
func loopbackIfAny(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
