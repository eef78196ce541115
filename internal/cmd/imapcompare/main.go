// Command imapcompare measures resilmail's IMAP server (examples/primary
// as a process, over replicate/store) and Dovecot's (Debian's
// dovecot-imapd and dovecot-lmtpd, a private instance on loopback with a
// Maildir) side by side on the same machine and the same messages:
//
//   - SELECT of a mailbox of -messages messages of about -size bytes
//     (the first one after a start, and again);
//   - FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER]);
//   - FETCH BODY.PEEK[] of -fetch messages;
//   - UID SEARCH TEXT of a word in one message in a thousand;
//   - -idle sessions in IDLE on one INBOX while messages are delivered
//     over LMTP: the delay from the LMTP 250 to the EXISTS in every
//     session, and the server's memory per idle session (RSS of its
//     processes before and after).
//
// It needs root (Dovecot drops to the vmail user, created if missing) and
// writes under -dir (default a new folder in /var/tmp, removed at the
// end). Example:
//
//	go build -o /tmp/primary ./examples/primary
//	sudo go run ./internal/cmd/imapcompare -primary /tmp/primary -messages 100000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail/replicate/store"
)

func main() {
	primary := flag.String("primary", "", "the examples/primary binary (go build -o FILE ./examples/primary)")
	messages := flag.Int("messages", 100000, "messages in the big mailbox")
	size := flag.Int("size", 8192, "approximate size of a message, bytes")
	fetchN := flag.Int("fetch", 1000, "messages fetched whole")
	idleN := flag.Int("idle", 200, "sessions in IDLE")
	deliveries := flag.Int("deliveries", 20, "deliveries while the sessions idle")
	systems := flag.String("systems", "resilmail,dovecot", "systems to measure")
	dirFlag := flag.String("dir", "", "work folder (default: a new one in /var/tmp, removed at the end)")
	flag.Parse()
	dir := *dirFlag
	if dir == "" {
		d, err := os.MkdirTemp("/var/tmp", "imapcompare-")
		if err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(d)
		dir = d
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		log.Fatal(err)
	}
	msgs := makeMessages(*messages, *size)
	ctx := context.Background()
	for _, name := range strings.Split(*systems, ",") {
		var sys system
		switch name {
		case "resilmail":
			if *primary == "" {
				log.Fatal("-primary is needed for resilmail")
			}
			sys = &resilmail{bin: *primary}
		case "dovecot":
			sys = &dovecot{}
		default:
			log.Fatalf("unknown system %q", name)
		}
		sdir := filepath.Join(dir, name)
		if err := os.MkdirAll(sdir, 0o755); err != nil {
			log.Fatal(err)
		}
		start := time.Now()
		if err := sys.populate(ctx, sdir, msgs); err != nil {
			log.Fatalf("%s: populate: %v", name, err)
		}
		fmt.Printf("%s: %d messages stored in %v\n", name, len(msgs), time.Since(start).Round(time.Millisecond))
		if err := sys.start(ctx, sdir); err != nil {
			log.Fatalf("%s: start: %v", name, err)
		}
		err := measure(name, sys, *fetchN, *idleN, *deliveries)
		sys.stop()
		if err != nil {
			log.Fatalf("%s: %v", name, err)
		}
	}
}

// system is a server under test.
type system interface {
	populate(ctx context.Context, dir string, msgs [][]byte) error
	start(ctx context.Context, dir string) error
	imapAddr() string
	lmtpAddr() string
	pids() []int
	stop()
}

const needle = "zebrafishneedle"

// makeMessages returns n plain-text messages of about size bytes; one in
// a thousand holds the needle.
func makeMessages(n, size int) [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	words := strings.Fields("the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were her she there been one all we their has would when if so no will more out up into do any your what some can other than about then them these may only first new our over such time most even years")
	out := make([][]byte, n)
	for i := range out {
		var b strings.Builder
		fmt.Fprintf(&b, "From: Sender %d <sender%d@example.net>\r\nTo: bench@example.org\r\nSubject: message %d about %s\r\n", i%97, i%97, i, words[i%len(words)])
		fmt.Fprintf(&b, "Date: %s\r\nMessage-ID: <%d.bench@example.net>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
			time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i)*time.Minute).Format(time.RFC1123Z), i)
		col := 0
		for b.Len() < size {
			w := words[r.IntN(len(words))]
			if i%1000 == 7 && b.Len() > size/2 && !strings.Contains(b.String(), needle) {
				w = needle
			}
			b.WriteString(w)
			col += len(w) + 1
			if col > 70 {
				b.WriteString("\r\n")
				col = 0
			} else {
				b.WriteByte(' ')
			}
		}
		b.WriteString("\r\n")
		out[i] = []byte(b.String())
	}
	return out
}

func measure(name string, sys system, fetchN, idleN, deliveries int) error {
	report := func(what string, d time.Duration, extra string) {
		fmt.Printf("%-10s %-40s %12v %s\n", name, what, d.Round(10*time.Microsecond), extra)
	}
	// Sessions in IDLE first, on a fresh server, so that its memory is
	// not what the big mailbox's commands left.
	if err := measureIdle(name, sys, idleN, deliveries, report); err != nil {
		return err
	}
	c, err := imapclient.DialInsecure(sys.imapAddr(), nil)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Login("bench@example.org", "bench-pw").Wait(); err != nil {
		return fmt.Errorf("login: %w", err)
	}
	for i, label := range []string{"SELECT INBOX (first)", "SELECT INBOX (again)"} {
		start := time.Now()
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil {
			return err
		}
		report(label, time.Since(start), fmt.Sprintf("%d messages", sel.NumMessages))
		if i == 0 {
			if err := c.Unselect().Wait(); err != nil {
				return err
			}
		}
	}
	for _, label := range []string{"FETCH 1:* headers (first)", "FETCH 1:* headers (again)"} {
		start := time.Now()
		n, bytes := 0, 0
		cmd := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true, RFC822Size: true,
			BodySection: []*imap.FetchItemBodySection{{Specifier: imap.PartSpecifierHeader, Peek: true}}})
		for m := cmd.Next(); m != nil; m = cmd.Next() {
			for item := m.Next(); item != nil; item = m.Next() {
				if bs, ok := item.(imapclient.FetchItemDataBodySection); ok {
					b, _ := io.ReadAll(bs.Literal)
					bytes += len(b)
				}
			}
			n++
		}
		if err := cmd.Close(); err != nil {
			return err
		}
		report(label, time.Since(start), fmt.Sprintf("%d messages, %d header bytes", n, bytes))
	}
	{
		start := time.Now()
		cmd := c.Fetch(imap.SeqSet{{Start: 1, Stop: uint32(fetchN)}}, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}})
		n, bytes := 0, 0
		for m := cmd.Next(); m != nil; m = cmd.Next() {
			for item := m.Next(); item != nil; item = m.Next() {
				if bs, ok := item.(imapclient.FetchItemDataBodySection); ok {
					b, _ := io.ReadAll(bs.Literal)
					bytes += len(b)
				}
			}
			n++
		}
		if err := cmd.Close(); err != nil {
			return err
		}
		report(fmt.Sprintf("FETCH BODY.PEEK[] of %d", fetchN), time.Since(start), fmt.Sprintf("%d bytes", bytes))
	}
	for _, label := range []string{"UID SEARCH TEXT (first)", "UID SEARCH TEXT (again)"} {
		start := time.Now()
		sd, err := c.UIDSearch(&imap.SearchCriteria{Text: []string{needle}}, nil).Wait()
		if err != nil {
			return err
		}
		report(label, time.Since(start), fmt.Sprintf("%d found", len(sd.AllUIDs())))
	}
	return nil
}

func rss(pids []int) int64 {
	var total int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				total += n << 10
			}
		}
	}
	return total
}

func measureIdle(name string, sys system, idleN, deliveries int, report func(string, time.Duration, string)) error {
	type sess struct {
		c      *imapclient.Client
		exists chan uint32
	}
	before := rss(sys.pids())
	var sessions []*sess
	defer func() {
		for _, s := range sessions {
			s.c.Close()
		}
	}()
	for i := 0; i < idleN; i++ {
		s := &sess{exists: make(chan uint32, 64)}
		c, err := imapclient.DialInsecure(sys.imapAddr(), &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					s.exists <- *d.NumMessages
				}
			},
		}})
		if err != nil {
			return err
		}
		s.c = c
		sessions = append(sessions, s)
		if err := c.Login("idle@example.org", "bench-pw").Wait(); err != nil {
			return fmt.Errorf("idle login %d: %w", i, err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			return err
		}
		if _, err := c.Idle(); err != nil {
			return err
		}
	}
	time.Sleep(2 * time.Second) // let the servers settle before reading RSS
	after := rss(sys.pids())
	report(fmt.Sprintf("%d sessions in IDLE", idleN), 0, fmt.Sprintf("RSS %d MiB -> %d MiB: %.1f KiB per session", before>>20, after>>20, float64(after-before)/float64(idleN)/1024))

	conn, err := net.Dial("tcp", sys.lmtpAddr())
	if err != nil {
		return err
	}
	lc := smtp.NewClientLMTP(conn)
	defer lc.Close()
	if err := lc.Hello("imapcompare"); err != nil {
		return err
	}
	var lat []time.Duration
	for i := 1; i <= deliveries; i++ {
		if err := lc.Mail("sender@example.net", nil); err != nil {
			return err
		}
		if err := lc.Rcpt("idle@example.org", nil); err != nil {
			return err
		}
		w, err := lc.Data()
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "Subject: idle %d\r\n\r\nhello\r\n", i)
		if _, err := w.CloseWithLMTPResponse(); err != nil {
			return err
		}
		acked := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var worst time.Duration
		for _, s := range sessions {
			wg.Go(func() {
				for {
					select {
					case n := <-s.exists:
						if n < uint32(i) {
							continue
						}
						d := time.Since(acked)
						mu.Lock()
						worst = max(worst, d)
						mu.Unlock()
						return
					case <-time.After(30 * time.Second):
						mu.Lock()
						worst = 30 * time.Second
						mu.Unlock()
						return
					}
				}
			})
		}
		wg.Wait()
		lat = append(lat, worst)
	}
	slices.Sort(lat)
	report(fmt.Sprintf("delivery seen by all %d idlers", idleN), lat[len(lat)/2], fmt.Sprintf("p50; max %v over %d deliveries", lat[len(lat)-1].Round(100*time.Microsecond), len(lat)))
	return nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func waitListen(addr string) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s does not answer", addr)
}

// resilmail is examples/primary as a process over a store populated
// through the store API (8 writers, group commit).
type resilmail struct {
	bin              string
	imap, lmtp, http string
	cmd              *exec.Cmd
}

func (r *resilmail) populate(ctx context.Context, dir string, msgs [][]byte) error {
	st, err := store.Open(filepath.Join(dir, "store"), &store.Options{Logger: nil})
	if err != nil {
		return err
	}
	defer st.Close()
	for _, u := range []string{"bench@example.org", "idle@example.org"} {
		if err := st.CreateUser(ctx, u); err != nil && !errors.Is(err, store.ErrExists) {
			return err
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range next {
				// In order per writer is enough: UIDs need not follow i.
				if _, err := st.Append(ctx, "bench@example.org", store.Inbox, nil, time.Time{}, strings.NewReader(string(msgs[i]))); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for i := range msgs {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	return st.Compact(ctx)
}

func (r *resilmail) start(ctx context.Context, dir string) error {
	pw := filepath.Join(dir, "passwd")
	if err := os.WriteFile(pw, []byte("bench@example.org:{PLAIN}bench-pw\nidle@example.org:{PLAIN}bench-pw\n"), 0o600); err != nil {
		return err
	}
	var err error
	for _, p := range []*string{&r.imap, &r.lmtp, &r.http} {
		if *p, err = freeAddr(); err != nil {
			return err
		}
	}
	r.cmd = exec.CommandContext(ctx, r.bin, "-dir", dir, "-imap", r.imap, "-lmtp", r.lmtp, "-http", r.http, "-pop3", "", "-passwd", pw)
	r.cmd.Env = append(os.Environ(), "RESILMAIL_SECRET=imapcompare-secret-imapcompare")
	r.cmd.Stderr = io.Discard
	if err := r.cmd.Start(); err != nil {
		return err
	}
	return waitListen(r.imap)
}

func (r *resilmail) imapAddr() string { return r.imap }
func (r *resilmail) lmtpAddr() string { return r.lmtp }
func (r *resilmail) pids() []int      { return []int{r.cmd.Process.Pid} }
func (r *resilmail) stop() {
	r.cmd.Process.Signal(os.Interrupt)
	r.cmd.Wait()
}

// dovecot is a private Dovecot (imap, lmtp) over Maildir, its messages
// written as Maildir files (Dovecot indexes them at the first SELECT).
type dovecot struct {
	base       string
	imap, lmtp string
	cmd        *exec.Cmd
}

func (d *dovecot) populate(ctx context.Context, dir string, msgs [][]byte) error {
	if _, err := exec.LookPath("dovecot"); err != nil {
		return errors.New("dovecot is not installed (apt-get install dovecot-imapd dovecot-lmtpd)")
	}
	if err := exec.Command("id", "vmail").Run(); err != nil {
		if out, err := exec.Command("useradd", "-r", "-M", "-s", "/usr/sbin/nologin", "vmail").CombinedOutput(); err != nil {
			return fmt.Errorf("creating the vmail user: %v: %s", err, out)
		}
	}
	d.base = dir
	for _, u := range []string{"bench@example.org", "idle@example.org"} {
		for _, sub := range []string{"cur", "new", "tmp"} {
			if err := os.MkdirAll(filepath.Join(dir, "mail", u, "Maildir", sub), 0o755); err != nil {
				return err
			}
		}
	}
	box := filepath.Join(dir, "mail", "bench@example.org", "Maildir", "cur")
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	for i, m := range msgs {
		name := fmt.Sprintf("%d.M%dP1.bench,S=%d:2,", base+int64(i), i, len(m))
		if err := os.WriteFile(filepath.Join(box, name), m, 0o600); err != nil {
			return err
		}
	}
	if out, err := exec.Command("chown", "-R", "vmail:vmail", filepath.Join(dir, "mail")).CombinedOutput(); err != nil {
		return fmt.Errorf("chown: %v: %s", err, out)
	}
	return nil
}

func (d *dovecot) start(ctx context.Context, dir string) error {
	var err error
	for _, p := range []*string{&d.imap, &d.lmtp} {
		if *p, err = freeAddr(); err != nil {
			return err
		}
	}
	for _, sub := range []string{"run", "state"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	pw := filepath.Join(dir, "passwd")
	if err := os.WriteFile(pw, []byte("bench@example.org:{PLAIN}bench-pw\nidle@example.org:{PLAIN}bench-pw\n"), 0o644); err != nil {
		return err
	}
	_, iport, _ := net.SplitHostPort(d.imap)
	_, lport, _ := net.SplitHostPort(d.lmtp)
	conf := fmt.Sprintf(`protocols = imap lmtp
listen = 127.0.0.1
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/log
instance_name = imapcompare
mail_location = maildir:%[1]s/mail/%%u/Maildir
first_valid_uid = 1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {
  driver = passwd-file
  args = %[4]s
}
userdb {
  driver = static
  args = uid=vmail gid=vmail home=%[1]s/mail/%%u
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = %[2]s
  }
  inet_listener imaps {
    port = 0
  }
  process_limit = 1000
  client_limit = 1000
}
service imap {
  process_limit = 1000
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %[3]s
  }
}
default_client_limit = 2000
default_process_limit = 1000
mail_max_userip_connections = 1000
`, dir, iport, lport, pw)
	cf := filepath.Join(dir, "dovecot.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return err
	}
	d.cmd = exec.CommandContext(ctx, "dovecot", "-F", "-c", cf)
	d.cmd.Stdout, d.cmd.Stderr = io.Discard, os.Stderr
	if err := d.cmd.Start(); err != nil {
		return err
	}
	return waitListen(d.imap)
}

func (d *dovecot) imapAddr() string { return d.imap }
func (d *dovecot) lmtpAddr() string { return d.lmtp }

// pids are the Dovecot master and every process it started.
func (d *dovecot) pids() []int {
	out := []int{d.cmd.Process.Pid}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Field 4 is the parent's pid.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 {
			if ppid, _ := strconv.Atoi(f[1]); ppid == d.cmd.Process.Pid {
				out = append(out, pid)
			}
		}
	}
	return out
}

func (d *dovecot) stop() {
	d.cmd.Process.Signal(os.Interrupt)
	d.cmd.Wait()
}
