// Command backupcompare measures resilmail's backup side by side with
// restic (Debian's restic) on the same data, in one run: a store of
// -messages messages of about -size bytes in -mailboxes mailboxes (spread
// over users of 10 mailboxes each), exported as a Maildir for restic
// (flags in the file names, as Dovecot and mbsync write them); a first
// backup with each; then 1% of changes (new messages, deletions and flag
// changes, 2:1:1) applied to both and an incremental backup with each;
// restoring one message; a full restore; and the repositories' sizes.
//
//	go run ./internal/cmd/backupcompare -dir /mnt/bk/run1
//
// It prints one table and writes the same figures as JSON to -json. The
// restic repository gets its password from the environment of the restic
// processes only (RESTIC_PASSWORD, set by this program), and its cache is
// under -dir.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/backup"
	"github.com/resilmail/resilmail/replicate/store"
)

type config struct {
	dir       string
	messages  int
	mailboxes int
	size      int
	change    float64
	jsonOut   string
	keep      bool
	profile   string
}

func main() {
	var c config
	flag.StringVar(&c.dir, "dir", "", "empty working folder (on the file system to measure)")
	flag.IntVar(&c.messages, "messages", 100_000, "messages in the store")
	flag.IntVar(&c.mailboxes, "mailboxes", 200, "mailboxes (users of 10 mailboxes each)")
	flag.IntVar(&c.size, "size", 8<<10, "approximate message size in bytes")
	flag.Float64Var(&c.change, "change", 0.01, "share of messages changed between the backups")
	flag.StringVar(&c.jsonOut, "json", "", "also write the figures as JSON to this file")
	flag.BoolVar(&c.keep, "keep", false, "keep the working folder's content")
	flag.StringVar(&c.profile, "cpuprofile", "", "write a CPU profile of resilmail's backup and restores to this file")
	flag.Parse()
	if c.dir == "" {
		fmt.Fprintln(os.Stderr, "backupcompare: -dir is required")
		os.Exit(2)
	}
	if err := run(context.Background(), c); err != nil {
		fmt.Fprintln(os.Stderr, "backupcompare:", err)
		os.Exit(1)
	}
}

// figures are one system's measurements.
type figures struct {
	First       time.Duration `json:"first_backup"`
	Incremental time.Duration `json:"incremental"`
	RestoreOne  time.Duration `json:"restore_one"`
	RestoreAll  time.Duration `json:"restore_all"`
	RepoBytes   int64         `json:"repo_bytes"`      // apparent size of the files
	RepoDisk    int64         `json:"repo_disk_bytes"` // blocks used
	RestoredOK  bool          `json:"restored_ok"`
}

type box struct {
	user, name string
	uids       []uint32
}

var words = strings.Fields(`the of and to in a is that for it as was with be by on not he I this are or his from at which but have an they you were her she there one all we their been has when who will more no if out so said what up its about into than them can only other new some could time these two may then do first any my now such like our over man me even most made after also did many before must through back years where much your way well down should because each just those people how too little state good very make world still own see men work long get here between both life being under never day same another know while last might us great old year off come since against go came right used take three`)

// message returns a deterministic message of about size bytes.
func message(rng *rand.Rand, user string, n, size int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Return-Path: <sender%d@example.net>\r\nReceived: from mx%d.example.net (mx%d.example.net [192.0.2.%d])\r\n\tby mail.example.org with LMTP id %016x\r\n\tfor <%s>; Mon, 2 Mar 2026 10:%02d:%02d +0000\r\n",
		n%97, n%5, n%5, n%250, rng.Uint64(), user, n%60, (n/60)%60)
	fmt.Fprintf(&b, "From: Sender %d <sender%d@example.net>\r\nTo: <%s>\r\nSubject: %s %s %s %d\r\nDate: Mon, 2 Mar 2026 10:%02d:%02d +0000\r\nMessage-ID: <%016x.%d@example.net>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
		n%97, n%97, user, words[rng.IntN(len(words))], words[rng.IntN(len(words))], words[rng.IntN(len(words))], n, n%60, (n/60)%60, rng.Uint64(), n)
	line := 0
	for b.Len() < size {
		w := words[rng.IntN(len(words))]
		b.WriteString(w)
		line += len(w) + 1
		if line > 70 {
			b.WriteString("\r\n")
			line = 0
		} else {
			b.WriteByte(' ')
		}
	}
	b.WriteString("\r\n")
	return b.String()
}

func run(ctx context.Context, c config) error {
	if err := os.MkdirAll(c.dir, 0o750); err != nil {
		return err
	}
	if _, err := exec.LookPath("restic"); err != nil {
		return fmt.Errorf("restic is not installed (apt-get install restic): %w", err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	storeDir := filepath.Join(c.dir, "store")
	maildir := filepath.Join(c.dir, "maildir")
	rng := rand.New(rand.NewPCG(1, 2))

	fmt.Fprintf(os.Stderr, "building a store of %d messages in %d mailboxes ...\n", c.messages, c.mailboxes)
	st, err := store.Open(storeDir, &store.Options{Logger: quiet})
	if err != nil {
		return err
	}
	boxes, err := build(ctx, st, rng, c)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "exporting it as a Maildir ...")
	if err := exportMaildir(ctx, st, boxes, maildir); err != nil {
		return err
	}
	syncFS()

	var ours, theirs figures
	repoDir := filepath.Join(c.dir, "repo-resilmail")
	resticRepo := filepath.Join(c.dir, "repo-restic")
	restic := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "restic", append([]string{"-r", resticRepo, "--quiet"}, args...)...)
		cmd.Env = append(os.Environ(), "RESTIC_PASSWORD=backupcompare", "RESTIC_CACHE_DIR="+filepath.Join(c.dir, "restic-cache"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("restic %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	timed := func(what string, d *time.Duration, fn func() error) error {
		syncFS()
		if c.profile != "" && strings.HasPrefix(what, "resilmail") {
			pf, err := os.Create(c.profile + "." + strings.ReplaceAll(strings.TrimPrefix(what, "resilmail: "), " ", "-"))
			if err != nil {
				return err
			}
			pprof.StartCPUProfile(pf)
			defer func() { pprof.StopCPUProfile(); pf.Close() }()
		}
		start := time.Now()
		err := fn()
		*d = time.Since(start)
		fmt.Fprintf(os.Stderr, "%-40s %v\n", what, d.Round(time.Millisecond))
		return err
	}

	folder, err := backup.NewFolder(repoDir)
	if err != nil {
		return err
	}
	openRepo := func() (*backup.Repo, error) { return backup.Open(ctx, folder, &backup.Options{Logger: quiet}) }
	if err := timed("resilmail: first backup", &ours.First, func() error {
		repo, err := openRepo()
		if err == nil {
			_, err = repo.Backup(ctx, st)
		}
		return err
	}); err != nil {
		return err
	}
	if err := restic("init"); err != nil {
		return err
	}
	if err := timed("restic: first backup", &theirs.First, func() error { return restic("backup", maildir) }); err != nil {
		return err
	}

	fmt.Fprintln(os.Stderr, "changing 1% ...")
	if err := change(ctx, st, boxes, maildir, rng, c); err != nil {
		return err
	}
	if err := timed("resilmail: incremental", &ours.Incremental, func() error {
		repo, err := openRepo()
		if err == nil {
			var sum backup.Summary
			sum, err = repo.Backup(ctx, st)
			if err == nil && sum.Full {
				err = fmt.Errorf("the incremental run read everything: %s", sum.Reason)
			}
		}
		return err
	}); err != nil {
		return err
	}
	if err := timed("restic: incremental", &theirs.Incremental, func() error { return restic("backup", maildir) }); err != nil {
		return err
	}

	// One message: the middle of a mailbox, into the live store (as new)
	// for resilmail, into a folder for restic.
	b := boxes[len(boxes)/2]
	uid := b.uids[len(b.uids)/2]
	// The live store the message goes back into is open already, as in a
	// mail server, and has the mailbox.
	dst, err := store.Open(filepath.Join(c.dir, "restore-one"), &store.Options{Logger: quiet})
	if err != nil {
		return err
	}
	defer dst.Close()
	if err := dst.EnsureMailbox(ctx, b.user, b.name); err != nil {
		return err
	}
	if err := timed("resilmail: restore one message", &ours.RestoreOne, func() error {
		repo, err := openRepo()
		if err != nil {
			return err
		}
		sum, err := repo.Restore(ctx, dst, backup.Selection{User: b.user, Mailbox: b.name, UID: uid}, backup.RestoreOptions{})
		if err == nil && sum.Messages != 1 {
			err = fmt.Errorf("restored %d messages", sum.Messages)
		}
		return err
	}); err != nil {
		return err
	}
	file, err := maildirFile(maildir, b, uid)
	if err != nil {
		return err
	}
	if err := timed("restic: restore one message", &theirs.RestoreOne, func() error {
		return restic("restore", "latest", "--target", filepath.Join(c.dir, "restic-one"), "--include", file)
	}); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(c.dir, "restic-one", file)); err != nil {
		return fmt.Errorf("restic restored nothing: %w", err)
	}

	if err := timed("resilmail: full restore", &ours.RestoreAll, func() error {
		repo, err := openRepo()
		if err != nil {
			return err
		}
		dst, err := store.Open(filepath.Join(c.dir, "restore-all"), &store.Options{Logger: quiet})
		if err != nil {
			return err
		}
		defer dst.Close()
		_, err = repo.Restore(ctx, dst, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
		if err == nil {
			ours.RestoredOK, err = sameStores(ctx, st, dst)
		}
		return err
	}); err != nil {
		return err
	}
	if err := timed("restic: full restore", &theirs.RestoreAll, func() error {
		return restic("restore", "latest", "--target", filepath.Join(c.dir, "restic-all"))
	}); err != nil {
		return err
	}
	theirs.RestoredOK = true
	st.Close()

	ours.RepoBytes, ours.RepoDisk = du(repoDir)
	theirs.RepoBytes, theirs.RepoDisk = du(resticRepo)
	storeBytes, storeDisk := du(storeDir)
	mdBytes, mdDisk := du(maildir)

	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%d messages, %d mailboxes, %.1f%% changed\tresilmail\trestic\tratio\t\n", c.messages, c.mailboxes, 100*c.change)
	row := func(name string, a, b time.Duration) {
		fmt.Fprintf(tw, "%s\t%v\t%v\t%.1fx\t\n", name, a.Round(time.Millisecond), b.Round(time.Millisecond), float64(b)/float64(a))
	}
	row("first backup", ours.First, theirs.First)
	row("incremental", ours.Incremental, theirs.Incremental)
	row("restore one message", ours.RestoreOne, theirs.RestoreOne)
	row("full restore", ours.RestoreAll, theirs.RestoreAll)
	fmt.Fprintf(tw, "repository (MiB, apparent / on disk)\t%.1f / %.1f\t%.1f / %.1f\t\t\n", mib(ours.RepoBytes), mib(ours.RepoDisk), mib(theirs.RepoBytes), mib(theirs.RepoDisk))
	fmt.Fprintf(tw, "data (MiB): store %.1f / %.1f, Maildir %.1f / %.1f\t\t\t\t\n", mib(storeBytes), mib(storeDisk), mib(mdBytes), mib(mdDisk))
	tw.Flush()
	if c.jsonOut != "" {
		b, _ := json.MarshalIndent(map[string]any{"config": map[string]any{"messages": c.messages, "mailboxes": c.mailboxes, "size": c.size, "change": c.change},
			"resilmail": ours, "restic": theirs}, "", "  ")
		if err := os.WriteFile(c.jsonOut, b, 0o640); err != nil {
			return err
		}
	}
	if !c.keep {
		os.RemoveAll(c.dir)
	}
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func syncFS() { exec.Command("sync").Run() }

// du returns the apparent size and the disk usage of a folder.
func du(dir string) (apparent, disk int64) {
	filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			apparent += info.Size()
		}
		return nil
	})
	out, err := exec.Command("du", "-s", "--block-size=1", dir).Output()
	if err == nil {
		disk, _ = strconv.ParseInt(strings.Fields(string(out))[0], 10, 64)
	}
	return apparent, disk
}

// build fills the store: users of 10 mailboxes each. Messages go in through
// Apply in batches (as a replica or a restore writes), which shares one
// fsync per batch.
func build(ctx context.Context, st *store.Store, rng *rand.Rand, c config) ([]*box, error) {
	var boxes []*box
	perBox := c.messages / c.mailboxes
	for i := 0; i < c.mailboxes; i++ {
		user := fmt.Sprintf("user%03d@example.org", i/10)
		name := "INBOX"
		if i%10 != 0 {
			name = fmt.Sprintf("Folder%d", i%10)
		}
		if err := st.EnsureMailbox(ctx, user, name); err != nil {
			return nil, err
		}
		b := &box{user: user, name: name}
		bodies := make(map[resilmail.Digest][]byte)
		var changes []resilmail.Change
		status, err := st.MailboxStatus(ctx, user, name)
		if err != nil {
			return nil, err
		}
		for j := 0; j < perBox; j++ {
			body := []byte(message(rng, user, i*perBox+j, c.size))
			d := resilmail.DigestOf(body)
			bodies[d] = body
			uid := uint32(j + 1)
			flags := []string{`\Seen`}
			if j%7 == 0 {
				flags = nil
			}
			changes = append(changes, resilmail.Change{Kind: resilmail.ChangeAppend, Epoch: st.Epoch(), Time: time.Now().UTC(), User: user,
				Mailbox: name, MailboxID: status.ID, UIDValidity: status.UIDValidity, UID: uid, Digest: d, Size: int64(len(body)),
				InternalDate: time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC).Add(time.Duration(j) * time.Minute), Flags: flags, ModSeq: status.HighestModSeq + uint64(j) + 1})
			b.uids = append(b.uids, uid)
		}
		err = st.RestoreChanges(ctx, changes, func(ctx context.Context, d resilmail.Digest) (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader(string(bodies[d]))), nil
		})
		if err != nil {
			return nil, err
		}
		boxes = append(boxes, b)
	}
	return boxes, nil
}

// maildirFlags maps IMAP flags to Maildir's info letters, sorted.
func maildirFlags(flags []string) string {
	var l []byte
	for _, f := range flags {
		switch strings.ToLower(f) {
		case `\seen`:
			l = append(l, 'S')
		case `\flagged`:
			l = append(l, 'F')
		case `\answered`:
			l = append(l, 'R')
		case `\deleted`:
			l = append(l, 'T')
		case `\draft`:
			l = append(l, 'D')
		}
	}
	slices.Sort(l)
	return string(l)
}

func boxDir(maildir string, b *box) string { return filepath.Join(maildir, b.user, b.name, "cur") }

func maildirName(uid uint32, flags []string) string {
	return fmt.Sprintf("%d.M%dP1.mail.example.org,U=%d:2,%s", uid, uid, uid, maildirFlags(flags))
}

// exportMaildir writes every message of the store as a Maildir file.
func exportMaildir(ctx context.Context, st *store.Store, boxes []*box, maildir string) error {
	for _, b := range boxes {
		dir := boxDir(maildir, b)
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return err
		}
		msgs, err := st.Fetch(ctx, b.user, b.name, store.Query{})
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if err := writeMaildir(ctx, st, dir, m); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeMaildir(ctx context.Context, st *store.Store, dir string, m store.Message) error {
	body, err := st.Body(ctx, m.Digest)
	if err != nil {
		return err
	}
	p := filepath.Join(dir, maildirName(m.UID, m.Flags))
	if err := os.WriteFile(p, body, 0o640); err != nil {
		return err
	}
	return os.Chtimes(p, m.InternalDate, m.InternalDate)
}

func maildirFile(maildir string, b *box, uid uint32) (string, error) {
	matches, err := filepath.Glob(filepath.Join(boxDir(maildir, b), fmt.Sprintf("%d.M*", uid)))
	if err != nil || len(matches) != 1 {
		return "", fmt.Errorf("maildir file of UID %d: %v %v", uid, matches, err)
	}
	return matches[0], nil
}

// change applies the same changes to the store and the Maildir: new
// messages, expunges and flag changes in the ratio 2:1:1.
func change(ctx context.Context, st *store.Store, boxes []*box, maildir string, rng *rand.Rand, c config) error {
	n := int(float64(c.messages) * c.change)
	adds, dels, flags := n, n/2, n/2
	for i := 0; i < adds; i++ {
		b := boxes[rng.IntN(len(boxes))]
		body := message(rng, b.user, c.messages+i, c.size)
		uid, err := st.Append(ctx, b.user, b.name, nil, time.Time{}, strings.NewReader(body))
		if err != nil {
			return err
		}
		b.uids = append(b.uids, uid)
		msgs, err := st.Fetch(ctx, b.user, b.name, store.Query{UIDs: resilmail.NewUIDSet(uid)})
		if err != nil {
			return err
		}
		if err := writeMaildir(ctx, st, boxDir(maildir, b), msgs[0]); err != nil {
			return err
		}
	}
	for i := 0; i < dels; i++ {
		b := boxes[rng.IntN(len(boxes))]
		if len(b.uids) < 2 {
			continue
		}
		k := rng.IntN(len(b.uids) - 1) // never the last: the restore-one target stays
		uid := b.uids[k]
		b.uids = slices.Delete(b.uids, k, k+1)
		if _, err := st.Expunge(ctx, b.user, b.name, resilmail.NewUIDSet(uid)); err != nil {
			return err
		}
		f, err := maildirFile(maildir, b, uid)
		if err != nil {
			return err
		}
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	for i := 0; i < flags; i++ {
		b := boxes[rng.IntN(len(boxes))]
		uid := b.uids[rng.IntN(len(b.uids))]
		if _, err := st.AddFlags(ctx, b.user, b.name, resilmail.NewUIDSet(uid), []string{`\Flagged`, `\Answered`}); err != nil {
			return err
		}
		msgs, err := st.Fetch(ctx, b.user, b.name, store.Query{UIDs: resilmail.NewUIDSet(uid)})
		if err != nil {
			return err
		}
		f, err := maildirFile(maildir, b, uid)
		if err != nil {
			return err
		}
		if err := os.Rename(f, filepath.Join(filepath.Dir(f), maildirName(uid, msgs[0].Flags))); err != nil {
			return err
		}
	}
	return nil
}

// sameStores compares the restored store with the original: users,
// mailboxes (ids, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, digests over every
// message's UID, MODSEQ, body, size, date and flags).
func sameStores(ctx context.Context, a, b *store.Store) (bool, error) {
	ua, err := a.Users(ctx)
	if err != nil {
		return false, err
	}
	ub, err := b.Users(ctx)
	if err != nil {
		return false, err
	}
	if !slices.Equal(ua, ub) {
		return false, fmt.Errorf("restored users differ")
	}
	for _, u := range ua {
		ma, err := a.ListMailboxes(ctx, u)
		if err != nil {
			return false, err
		}
		mb, err := b.ListMailboxes(ctx, u)
		if err != nil {
			return false, err
		}
		if !slices.Equal(ma, mb) {
			return false, fmt.Errorf("restored mailboxes of %s differ:\n%+v\n%+v", u, ma, mb)
		}
	}
	return true, nil
}
