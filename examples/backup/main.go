// Command backup backs up a resilmail mailbox store (replicate/store) into
// a repository of package backup, and verifies, lists, prunes and restores
// from it. The repository is a folder (a disk of another machine) or a
// remote repository that `backup serve` runs on the backup machine.
//
//	backup run     -store /var/lib/resilmail/store -repo /backup/mail [-follow]
//	backup list    -repo /backup/mail [-user alice -mailbox INBOX] [-deleted-from 2026-03-01T00:00:00Z]
//	backup restore -repo /backup/mail -store /var/lib/resilmail/store -user alice -mailbox INBOX -uid 42
//	backup restore -repo /backup/mail -store /srv/new/store -keep-uids   # rebuild a lost server
//	backup verify  -repo /backup/mail [-sample 1/7]
//	backup prune   -repo /backup/mail [-keep 7 -retention 168h]
//	backup serve   -dir /backup/mail -listen :8443 -tls-cert c.pem -tls-key k.pem -secret-file /etc/resilmail/backup.secret
//
// -repo https://host:8443/ reaches a served repository (with -secret-file,
// and -ca for a private CA). -key-file encrypts a new repository and opens
// an encrypted one (AES-256-GCM; the key never goes in a flag). Output is a
// table, or JSON with -json; long operations show a progress bar with the
// rate and the time left on a terminal, and every command ends with a
// summary.
//
// run opens the store itself, so the store must not be open in another
// process (a mail server runs the backup inside itself instead: see
// examples/primary -backup).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/resilmail/resilmail/backup"
	"github.com/resilmail/resilmail/internal/cli"
	"github.com/resilmail/resilmail/replicate/store"
)

const usage = `usage: backup run|list|restore|verify|prune|serve [flags]; backup COMMAND -h for its flags`

func main() { os.Exit(realMain(os.Args[1:], os.Stdout)) }

type config struct {
	cmd        string
	repo       string
	keyFile    string
	secretFile string
	caFile     string
	storeDir   string
	jsonOut    bool
	progress   bool
	verbose    bool
	// run
	follow        bool
	flushEvery    time.Duration
	snapshotEvery time.Duration
	// selection
	user, mailbox          string
	uid                    uint
	snapshot, at           string
	deletedFrom, deletedTo string
	keepUIDs               bool
	dryRun                 bool
	// verify, prune
	sample    string
	keep      int
	retention time.Duration
	// serve
	listen, dir, tlsCert, tlsKey string
}

func parseFlags(args []string) (config, error) {
	var c config
	if len(args) == 0 {
		return c, errors.New(usage)
	}
	c.cmd = args[0]
	fs := flag.NewFlagSet("backup "+c.cmd, flag.ContinueOnError)
	repoFlags := func() {
		fs.StringVar(&c.repo, "repo", "", "the repository: a folder, or https://host:port/ of `backup serve`")
		fs.StringVar(&c.keyFile, "key-file", "", "file holding the encryption key (at least 32 bytes, e.g. `openssl rand -hex 32`)")
		fs.StringVar(&c.secretFile, "secret-file", "", "file holding the secret shared with `backup serve` (https repositories)")
		fs.StringVar(&c.caFile, "ca", "", "PEM CA certificate that signs the served repository's certificate (default: the system's)")
		fs.BoolVar(&c.jsonOut, "json", false, "print JSON instead of tables")
		fs.BoolVar(&c.progress, "progress", isTerminal(os.Stderr), "show a progress bar on standard error")
		fs.BoolVar(&c.verbose, "v", false, "log what happens")
	}
	selFlags := func() {
		fs.StringVar(&c.user, "user", "", "only this user (list: without -user and the other selectors, the snapshots are listed)")
		fs.StringVar(&c.mailbox, "mailbox", "", "only this mailbox (with -user)")
		fs.UintVar(&c.uid, "uid", 0, "only this message (with -user and -mailbox)")
		fs.StringVar(&c.snapshot, "snapshot", "", "read this snapshot (default: the newest state)")
		fs.StringVar(&c.at, "at", "", "read the state at this time (RFC 3339)")
		fs.StringVar(&c.deletedFrom, "deleted-from", "", "take the messages deleted from this time (RFC 3339) instead")
		fs.StringVar(&c.deletedTo, "deleted-to", "", "... up to this time (RFC 3339)")
	}
	switch c.cmd {
	case "run":
		repoFlags()
		fs.StringVar(&c.storeDir, "store", "", "the store's folder (not open in another process)")
		fs.BoolVar(&c.follow, "follow", false, "keep following the store's journal until interrupted")
		fs.DurationVar(&c.flushEvery, "flush-every", 10*time.Second, "with -follow: how often what was read is written")
		fs.DurationVar(&c.snapshotEvery, "snapshot-every", 24*time.Hour, "with -follow: how often a snapshot is written")
	case "list":
		repoFlags()
		selFlags()
	case "restore":
		repoFlags()
		selFlags()
		fs.StringVar(&c.storeDir, "store", "", "the store to restore into (created if missing; not open in another process)")
		fs.BoolVar(&c.keepUIDs, "keep-uids", false, "rebuild whole mailboxes with their UIDs and UIDVALIDITY (a new or emptied store)")
		fs.BoolVar(&c.dryRun, "n", false, "dry run: list what would be restored")
	case "verify":
		repoFlags()
		fs.StringVar(&c.sample, "sample", "", "read only a part of the bodies: N/M (part N of M), or auto/M (today's part)")
	case "prune":
		repoFlags()
		fs.IntVar(&c.keep, "keep", 7, "snapshots to keep")
		fs.DurationVar(&c.retention, "retention", 7*24*time.Hour, "how long deleted messages are kept after their deletion")
	case "serve":
		fs.StringVar(&c.dir, "dir", "", "the folder holding the repositories' blobs")
		fs.StringVar(&c.listen, "listen", "127.0.0.1:8443", "HTTPS listen address")
		fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM certificate chain (required off loopback)")
		fs.StringVar(&c.tlsKey, "tls-key", "", "PEM private key of -tls-cert")
		fs.StringVar(&c.secretFile, "secret-file", "", "file holding the shared secret clients present a token of")
		fs.StringVar(&c.caFile, "client-ca", "", "PEM CA of client certificates: mutual TLS instead of a secret")
		fs.BoolVar(&c.verbose, "v", false, "log what happens")
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(os.Stderr, usage)
		return c, flag.ErrHelp
	default:
		return c, fmt.Errorf("unknown command %q; %s", c.cmd, usage)
	}
	if err := fs.Parse(args[1:]); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch {
	case c.cmd == "serve" && c.dir == "":
		return c, errors.New("serve needs -dir")
	case c.cmd == "serve" && c.secretFile == "" && c.caFile == "":
		return c, errors.New("serve needs -secret-file or -client-ca: a repository is never served without authentication")
	case c.cmd == "serve" && (c.tlsCert == "") != (c.tlsKey == ""):
		return c, errors.New("-tls-cert and -tls-key go together")
	case c.cmd != "serve" && c.repo == "":
		return c, errors.New("-repo is required")
	case (c.cmd == "run" || c.cmd == "restore" && !c.dryRun) && c.storeDir == "":
		return c, errors.New("-store is required")
	}
	return c, nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func realMain(args []string, stdout io.Writer) int {
	c, err := parseFlags(args)
	return cli.Main("backup", err, c.verbose, func(ctx context.Context, log *slog.Logger) error {
		return run(ctx, c, log, stdout)
	})
}

// openRepo opens the repository -repo names.
func openRepo(ctx context.Context, c config, log *slog.Logger, progress func(backup.Progress)) (*backup.Repo, error) {
	opts := &backup.Options{Logger: log, Progress: progress}
	if c.keyFile != "" {
		key, err := backup.ReadKeyFile(c.keyFile)
		if err != nil {
			return nil, err
		}
		opts.Key = key
	}
	if c.cmd == "prune" {
		opts.KeepSnapshots, opts.Retention = c.keep, c.retention
	}
	if c.cmd == "run" {
		opts.FlushEvery, opts.SnapshotEvery = c.flushEvery, c.snapshotEvery
	}
	var to backup.TargetOptions
	if c.secretFile != "" {
		b, err := os.ReadFile(c.secretFile)
		if err != nil {
			return nil, err
		}
		to.Secret = []byte(strings.TrimSpace(string(b)))
	}
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return nil, err
		}
		to.RootCAs = x509.NewCertPool()
		if !to.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-ca %s: no certificate", c.caFile)
		}
	}
	t, err := backup.NewTarget(c.repo, &to)
	if err != nil {
		return nil, err
	}
	return backup.Open(ctx, t, opts)
}

// bar drives a progress bar from backup's Progress reports.
type bar struct {
	on  bool
	bar *progressbar.ProgressBar
	max int64
}

func (b *bar) report(p backup.Progress) {
	if !b.on || p.Total <= 0 {
		return
	}
	if b.bar == nil {
		b.bar = progressbar.NewOptions64(p.Total, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetDescription(p.Phase),
			progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("items"),
			progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
		b.max = p.Total
	}
	if p.Total != b.max {
		b.bar.ChangeMax64(p.Total)
		b.max = p.Total
	}
	b.bar.Set64(p.Done)
}

func (b *bar) done() {
	if b.bar != nil {
		b.bar.Finish()
	}
}

func parseTime(flagName, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return t, fmt.Errorf("-%s: %w", flagName, err)
	}
	return t, nil
}

func (c config) selection() (backup.Selection, error) {
	s := backup.Selection{User: c.user, Mailbox: c.mailbox, UID: uint32(c.uid), Snapshot: c.snapshot}
	var err error
	if s.At, err = parseTime("at", c.at); err != nil {
		return s, err
	}
	if s.DeletedFrom, err = parseTime("deleted-from", c.deletedFrom); err != nil {
		return s, err
	}
	if s.DeletedTo, err = parseTime("deleted-to", c.deletedTo); err != nil {
		return s, err
	}
	return s, nil
}

func run(ctx context.Context, c config, log *slog.Logger, out io.Writer) error {
	if c.cmd == "serve" {
		return serve(ctx, c, log)
	}
	pb := &bar{on: c.progress && !c.jsonOut}
	defer pb.done()
	repo, err := openRepo(ctx, c, log, pb.report)
	if err != nil {
		return err
	}
	switch c.cmd {
	case "run":
		st, err := store.Open(c.storeDir, &store.Options{Logger: log})
		if err != nil {
			return fmt.Errorf("opening the store (a running mail server holds it: back up from inside it with examples/primary -backup): %w", err)
		}
		defer st.Close()
		if c.follow {
			return repo.Follow(ctx, st)
		}
		sum, err := repo.Backup(ctx, st)
		pb.done()
		if err != nil {
			return err
		}
		return printRun(out, c.jsonOut, sum)
	case "list":
		sel, err := c.selection()
		if err != nil {
			return err
		}
		if sel == (backup.Selection{}) {
			snaps, err := repo.Snapshots(ctx)
			if err != nil {
				return err
			}
			return printSnapshots(out, c.jsonOut, snaps)
		}
		msgs, err := repo.Messages(ctx, sel)
		if err != nil {
			return err
		}
		return printMessages(out, c.jsonOut, msgs)
	case "restore":
		sel, err := c.selection()
		if err != nil {
			return err
		}
		if c.dryRun {
			msgs, err := repo.Messages(ctx, sel)
			if err != nil {
				return err
			}
			return printMessages(out, c.jsonOut, msgs)
		}
		st, err := store.Open(c.storeDir, &store.Options{Logger: log})
		if err != nil {
			return fmt.Errorf("opening the store: %w", err)
		}
		defer st.Close()
		sum, err := repo.Restore(ctx, st, sel, backup.RestoreOptions{KeepUIDs: c.keepUIDs})
		pb.done()
		if err != nil {
			return err
		}
		return printSummary(out, c.jsonOut, sum, [][2]string{
			{"mailboxes", fmt.Sprint(sum.Mailboxes)}, {"messages restored", fmt.Sprint(sum.Messages)},
			{"already there", fmt.Sprint(sum.Present)}, {"no body in the backup", fmt.Sprint(sum.NoBody)},
			{"bytes", fmt.Sprint(sum.Bytes)}, {"took", sum.Took.Round(time.Millisecond).String()},
		})
	case "verify":
		var vo backup.VerifyOptions
		if c.sample != "" {
			a, b, ok := strings.Cut(c.sample, "/")
			if _, err := fmt.Sscan(b, &vo.Of); !ok || err != nil || vo.Of < 1 {
				return fmt.Errorf("-sample %q: want N/M or auto/M", c.sample)
			}
			if a == "auto" {
				vo.Part = time.Now().YearDay() % vo.Of
			} else if _, err := fmt.Sscan(a, &vo.Part); err != nil || vo.Part < 0 || vo.Part >= vo.Of {
				return fmt.Errorf("-sample %q: want N/M with 0 <= N < M", c.sample)
			}
		}
		rep, err := repo.Verify(ctx, vo)
		pb.done()
		perr := printSummary(out, c.jsonOut, rep, [][2]string{
			{"snapshots", fmt.Sprint(rep.Snapshots)}, {"change segments", fmt.Sprint(rep.Segments)},
			{"packs", fmt.Sprint(rep.Packs)}, {"packs read", fmt.Sprint(rep.PacksRead)}, {"bodies checked", fmt.Sprint(rep.Bodies)},
			{"bytes read", fmt.Sprint(rep.BytesRead)}, {"problems", fmt.Sprint(len(rep.Problems))}, {"took", rep.Took.Round(time.Millisecond).String()},
		})
		if !c.jsonOut {
			for _, p := range rep.Problems {
				fmt.Fprintln(out, "PROBLEM:", p)
			}
		}
		return errors.Join(err, perr)
	case "prune":
		sum, err := repo.Prune(ctx)
		pb.done()
		if err != nil {
			return err
		}
		return printSummary(out, c.jsonOut, sum, [][2]string{
			{"snapshots kept", fmt.Sprint(sum.SnapshotsKept)}, {"snapshots removed", fmt.Sprint(sum.SnapshotsRemoved)},
			{"change segments removed", fmt.Sprint(sum.SegmentsRemoved)}, {"packs removed", fmt.Sprint(sum.PacksRemoved)},
			{"packs rewritten", fmt.Sprint(sum.PacksRewritten)}, {"bodies removed", fmt.Sprint(sum.BodiesRemoved)},
			{"bytes freed", fmt.Sprint(sum.BytesFreed)}, {"took", sum.Took.Round(time.Millisecond).String()},
		})
	}
	return nil
}

func printJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printSummary(out io.Writer, asJSON bool, v any, rows [][2]string) error {
	if asJSON {
		return printJSON(out, v)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

func printRun(out io.Writer, asJSON bool, s backup.Summary) error {
	kind := "incremental"
	if s.Full {
		kind = "full (" + s.Reason + ")"
	}
	return printSummary(out, asJSON, s, [][2]string{
		{"run", kind}, {"journal", fmt.Sprintf("%d -> %d", s.From, s.To)}, {"changes", fmt.Sprint(s.Changes)},
		{"appends / expunges / flags / mailboxes", fmt.Sprintf("%d / %d / %d / %d", s.Appends, s.Expunges, s.FlagChanges, s.MailboxChanges)},
		{"new bodies", fmt.Sprintf("%d (%d bytes, %d stored)", s.NewBodies, s.BodyBytes, s.StoredBytes)},
		{"bodies already stored", fmt.Sprint(s.Reused)}, {"lost (gone before read)", fmt.Sprint(s.Lost)},
		{"snapshot", s.Snapshot}, {"messages / deleted kept", fmt.Sprintf("%d / %d", s.Messages, s.Deleted)},
		{"took", s.Took.Round(time.Millisecond).String()},
	})
}

func printSnapshots(out io.Writer, asJSON bool, snaps []backup.Snapshot) error {
	if asJSON {
		if snaps == nil {
			snaps = []backup.Snapshot{}
		}
		return printJSON(out, snaps)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SNAPSHOT\tTIME\tPOSITION\tLINEAGE\tSIZE")
	for _, s := range snaps {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\n", strings.TrimPrefix(s.Name, "snapshots/"), s.Time.Format(time.RFC3339), s.Position, s.Lineage, s.Size)
	}
	fmt.Fprintf(tw, "%d snapshots\n", len(snaps))
	return tw.Flush()
}

func printMessages(out io.Writer, asJSON bool, msgs []backup.MessageInfo) error {
	if asJSON {
		if msgs == nil {
			msgs = []backup.MessageInfo{}
		}
		return printJSON(out, msgs)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "USER\tMAILBOX\tUID\tSIZE\tFLAGS\tDATE\tDELETED")
	var size int64
	for _, m := range msgs {
		del := ""
		if !m.Deleted.IsZero() {
			del = m.Deleted.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\n", m.User, m.Mailbox, m.UID, m.Size, strings.Join(m.Flags, " "), m.InternalDate.Format(time.RFC3339), del)
		size += m.Size
	}
	fmt.Fprintf(tw, "%d messages, %d bytes\n", len(msgs), size)
	return tw.Flush()
}

// serve runs the remote repository until ctx is done.
func serve(ctx context.Context, c config, log *slog.Logger) error {
	f, err := backup.NewFolder(c.dir)
	if err != nil {
		return err
	}
	hopts := &backup.HandlerOptions{Logger: log}
	if c.secretFile != "" {
		b, err := os.ReadFile(c.secretFile)
		if err != nil {
			return err
		}
		hopts.Secret = []byte(strings.TrimSpace(string(b)))
	}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: backup.NewHandler(f, hopts), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	if c.tlsCert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.caFile != "" {
			pem, err := os.ReadFile(c.caFile)
			if err != nil {
				return err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("-client-ca %s: no certificate", c.caFile)
			}
			tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
		}
		srv.TLSConfig = tc
	} else if host, _, _ := net.SplitHostPort(ln.Addr().String()); !net.ParseIP(host).IsLoopback() {
		ln.Close()
		return errors.New("serving without -tls-cert is allowed on loopback only")
	}
	log.Info("backup: serving the repository", "addr", ln.Addr().String(), "dir", c.dir)
	fmt.Fprintf(os.Stderr, "serving %s on %s\n", c.dir, ln.Addr())
	errc := make(chan error, 1)
	go func() {
		if c.tlsCert != "" {
			errc <- srv.ServeTLS(ln, c.tlsCert, c.tlsKey)
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	}
}
