package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
)

// binaries builds examples/primary and examples/secondary once, into a
// temporary folder, unless -primary-bin and -secondary-bin name them.
type binaries struct {
	primary, secondary string

	once sync.Once
	dir  string
	err  error
}

func (b *binaries) build() error {
	b.once.Do(func() {
		if b.primary != "" && b.secondary != "" {
			return
		}
		if b.dir, b.err = os.MkdirTemp("", "replcompare-bin-"); b.err != nil {
			return
		}
		for _, p := range []struct {
			dst *string
			pkg string
		}{{&b.primary, "./examples/primary"}, {&b.secondary, "./examples/secondary"}} {
			if *p.dst != "" {
				continue
			}
			*p.dst = filepath.Join(b.dir, filepath.Base(p.pkg))
			out, err := exec.Command("go", "build", "-o", *p.dst, p.pkg).CombinedOutput()
			if err != nil {
				b.err = fmt.Errorf("building %s (run from the module's root, or give -primary-bin and -secondary-bin): %v: %s", p.pkg, err, out)
				return
			}
		}
	})
	return b.err
}

func (b *binaries) remove() {
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
}

// processPair is examples/primary and examples/secondary run as processes,
// as a deployment runs them (each its own store with its checkpoints and
// scrub, the stream over HTTP on loopback), as Dovecot and Cyrus run.
// With ack, the primary answers an LMTP delivery only once the secondary
// has it (-ack one). The replica's progress is read from the secondary's
// inventory (GET /inventory/, the digests of the INBOX's messages), which
// lists a message once it is applied.
type processPair struct {
	ack  bool
	bins *binaries

	procs  []*exec.Cmd
	inv    *replicate.RemoteInventory
	inbox  resilmail.MailboxID
	byBody map[resilmail.Digest]int
	next   uint32
}

func (s *processPair) rcpt() string { return benchUser }

func (s *processPair) start(ctx context.Context, dir string) (string, error) {
	if err := s.bins.build(); err != nil {
		return "", err
	}
	ports := make([]int, 3)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return "", err
		}
		ports[i] = p
	}
	lmtp := "127.0.0.1:" + strconv.Itoa(ports[0])
	primHTTP := "127.0.0.1:" + strconv.Itoa(ports[1])
	secHTTP := "127.0.0.1:" + strconv.Itoa(ports[2])
	key := make([]byte, 24)
	rand.Read(key)
	secret := hex.EncodeToString(key)
	env := append(os.Environ(), "RESILMAIL_SECRET="+secret)

	mode := "async"
	if s.ack {
		mode = "one"
	}
	if err := s.run(ctx, dir, "primary", env, s.bins.primary, "-dir", filepath.Join(dir, "primary"), "-lmtp", lmtp, "-http", primHTTP,
		"-users", benchUser, "-ack", mode, "-imap", "", "-pop3", "", "-hostname", "primary.replcompare"); err != nil {
		return "", err
	}
	if err := waitListen(ctx, lmtp); err != nil {
		return "", err
	}
	if err := waitListen(ctx, primHTTP); err != nil {
		return "", err
	}
	if err := s.run(ctx, dir, "secondary", env, s.bins.secondary, "-dir", filepath.Join(dir, "secondary"), "-primary", "http://"+primHTTP,
		"-name", "replica", "-http", secHTTP, "-compare", "0"); err != nil {
		return "", err
	}
	if err := waitListen(ctx, secHTTP); err != nil {
		return "", err
	}
	var err error
	s.inv, err = replicate.NewRemoteInventory("http://"+secHTTP+"/inventory", &replicate.RemoteInventoryOptions{
		Secret: []byte(secret), Client: &http.Client{Timeout: 10 * time.Second}})
	if err != nil {
		return "", err
	}
	s.byBody, s.next = map[resilmail.Digest]int{}, 1
	return lmtp, nil
}

// run starts one command, its output in dir/name.log, in its own process
// group.
func (s *processPair) run(ctx context.Context, dir, name string, env []string, bin string, args ...string) error {
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	s.procs = append(s.procs, cmd)
	return nil
}

// expect tells the pair the messages the run will deliver, so that it
// knows them by their digest.
func (s *processPair) expect(n, size int) {
	for i := range n {
		s.byBody[resilmail.DigestOf([]byte(message(i, size)))] = i
	}
}

func (s *processPair) seen(found func(n int)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s.inbox.IsZero() {
		l, err := s.inv.Mailboxes(ctx, benchUser)
		if errors.Is(err, replicate.ErrNotFound) {
			return nil // the user has not reached the replica yet
		}
		if err != nil {
			return err
		}
		for _, mb := range l {
			if mb.Name == "INBOX" {
				s.inbox = mb.ID
			}
		}
		if s.inbox.IsZero() {
			return nil
		}
	}
	msgs, err := s.inv.MessageRange(ctx, benchUser, s.inbox, s.next, math.MaxUint32, 1000)
	if err != nil {
		return err
	}
	for _, m := range msgs {
		s.next = m.UID + 1
		n, ok := s.byBody[m.Digest]
		if !ok {
			return fmt.Errorf("the replica holds UID %d with body %s, not one of the messages delivered", m.UID, m.Digest)
		}
		found(n)
	}
	return nil
}

func (s *processPair) stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
}
