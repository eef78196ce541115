package main

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/freeport"
)

// mailNode is a primary run as a child process with IMAP on.
type mailNode struct {
	dir, lmtp, http, imap, pop3 string
	passwd                      string
	cmd                         *exec.Cmd
}

// startMailNode starts examples/primary as a real process (this test
// binary re-executed) with a passwd-file of alice (PLAIN) and bob
// (SHA512-CRYPT), and waits until it serves.
func startMailNode(t *testing.T, extra ...string) *mailNode {
	t.Helper()
	return startMailNodeIn(t, t.TempDir(), extra...)
}

// startMailNodeIn is startMailNode with its data in dir.
func startMailNodeIn(t *testing.T, dir string, extra ...string) *mailNode {
	t.Helper()
	n := &mailNode{dir: dir, lmtp: freeport.Addr(t), http: freeport.Addr(t), imap: freeport.Addr(t), pop3: freeport.Addr(t)}
	n.passwd = filepath.Join(n.dir, "passwd")
	require.NoError(t, os.WriteFile(n.passwd, []byte(
		"alice@example.org:{PLAIN}alice-pw\n"+
			// doveadm pw -s SHA512-CRYPT -p 'pässword'
			"bob@example.org:{SHA512-CRYPT}$6$yUrh2Ml5j1qx7b/t$WsPSnRRW772gq2K.orCQfI9iWsIN8npgs46MYqpIjNP3I/6VXU5CzfR12lt5dO72OSIJggI1/yhXTl0iFbKDc.\n"), 0o600))
	args := append([]string{"-dir", n.dir, "-secret-file", secretFile(t), "-lmtp", n.lmtp, "-http", n.http,
		"-imap", n.imap, "-pop3", n.pop3, "-passwd", n.passwd, "-users", "alice@example.org"}, extra...)
	n.cmd = exec.Command(os.Args[0])
	n.cmd.Env = append(os.Environ(), childEnv+"="+strings.Join(args, "\n"))
	stderr, err := n.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, n.cmd.Start())
	serving := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "primary: serving") {
				close(serving)
			}
			if testing.Verbose() {
				t.Log(sc.Text())
			}
		}
	}()
	t.Cleanup(func() {
		n.cmd.Process.Signal(os.Interrupt)
		n.cmd.Wait()
	})
	select {
	case <-serving:
	case <-time.After(30 * time.Second):
		t.Fatal("the primary did not start")
	}
	return n
}

func dialIMAP(t *testing.T, addr string, o *imapclient.Options) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, o)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestIMAPWithTheGoIMAPClient(t *testing.T) {
	n := startMailNode(t)
	c := dialIMAP(t, n.imap, nil)
	require.Error(t, c.Login("alice@example.org", "wrong").Wait())
	require.NoError(t, c.Login("alice@example.org", "alice-pw").Wait())

	// Special-use mailboxes exist for a new user.
	list, err := c.List("", "*", &imap.ListOptions{ReturnSpecialUse: true}).Collect()
	require.NoError(t, err)
	attrs := map[string][]imap.MailboxAttr{}
	for _, l := range list {
		attrs[l.Mailbox] = l.Attrs
	}
	for name, a := range map[string]imap.MailboxAttr{"Drafts": imap.MailboxAttrDrafts, "Sent": imap.MailboxAttrSent,
		"Trash": imap.MailboxAttrTrash, "Junk": imap.MailboxAttrJunk, "Archive": imap.MailboxAttrArchive} {
		assert.Contains(t, attrs[name], a, name)
	}
	assert.Contains(t, attrs, "INBOX")

	// A delivery over LMTP, then APPEND of a multipart message.
	out := swaks(t, n.lmtp, "hello from lmtp", "alice@example.org")
	require.Contains(t, out, "250 ", out)
	mime := "From: Carol <carol@example.net>\r\nTo: alice@example.org\r\nSubject: two parts\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>second</p>\r\n--b--\r\n"
	ap := c.Append("INBOX", int64(len(mime)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagFlagged}})
	_, err = ap.Write([]byte(mime))
	require.NoError(t, err)
	require.NoError(t, ap.Close())
	ad, err := ap.Wait()
	require.NoError(t, err)
	assert.Equal(t, imap.UID(2), ad.UID)

	sel, err := c.Select("INBOX", nil).Wait()
	require.NoError(t, err)
	assert.Equal(t, uint32(2), sel.NumMessages)
	assert.Equal(t, imap.UID(3), sel.UIDNext)

	msgs, err := c.Fetch(imap.UIDSetNum(2), &imap.FetchOptions{
		UID: true, Flags: true, Envelope: true, BodyStructure: &imap.FetchItemBodyStructure{Extended: true}, RFC822Size: true,
		BodySection: []*imap.FetchItemBodySection{{Peek: true}, {Part: []int{2}, Peek: true}, {Peek: true, Partial: &imap.SectionPartial{Offset: 6, Size: 5}}},
	}).Collect()
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	m := msgs[0]
	assert.Equal(t, "two parts", m.Envelope.Subject)
	assert.Equal(t, "carol", m.Envelope.From[0].Mailbox)
	assert.Equal(t, int64(len(mime)), m.RFC822Size)
	mp, ok := m.BodyStructure.(*imap.BodyStructureMultiPart)
	require.True(t, ok)
	assert.Len(t, mp.Children, 2)
	assert.Contains(t, m.Flags, imap.FlagFlagged)
	assert.NotContains(t, m.Flags, imap.FlagSeen)
	for _, bs := range m.BodySection {
		sec, b := bs.Section, bs.Bytes
		switch {
		case sec.Partial != nil:
			assert.Equal(t, "Carol", string(b))
		case len(sec.Part) == 1:
			assert.Equal(t, "<p>second</p>", string(b))
		default:
			assert.Equal(t, mime, string(b))
		}
	}

	// BODY[] without PEEK sets \Seen.
	msgs, err = c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	assert.Contains(t, msgs[0].Flags, imap.FlagSeen)

	// SEARCH by text, header and flag.
	sd, err := c.UIDSearch(&imap.SearchCriteria{Text: []string{"HELLO FROM LMTP"}}, nil).Wait()
	require.NoError(t, err)
	assert.Equal(t, []imap.UID{1}, sd.AllUIDs())
	sd, err = c.UIDSearch(&imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "From", Value: "carol"}}}, nil).Wait()
	require.NoError(t, err)
	assert.Equal(t, []imap.UID{2}, sd.AllUIDs())
	sd, err = c.UIDSearch(&imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}}, nil).Wait()
	require.NoError(t, err)
	assert.Equal(t, []imap.UID{2}, sd.AllUIDs())

	// COPY, MOVE, STORE, EXPUNGE.
	cd, err := c.Copy(imap.UIDSetNum(1), "Archive").Wait()
	require.NoError(t, err)
	assert.Equal(t, "1", cd.DestUIDs.String())
	md, err := c.Move(imap.UIDSetNum(2), "Trash").Wait()
	require.NoError(t, err)
	assert.Equal(t, "1", md.DestUIDs.String())
	require.NoError(t, c.Store(imap.UIDSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close())
	require.NoError(t, c.Expunge().Close())
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true, UIDNext: true}).Wait()
	require.NoError(t, err)
	assert.Equal(t, uint32(0), *st.NumMessages)
	st, err = c.Status("Archive", &imap.StatusOptions{NumMessages: true}).Wait()
	require.NoError(t, err)
	assert.Equal(t, uint32(1), *st.NumMessages)

	// CREATE, RENAME, DELETE; bad names are refused.
	require.NoError(t, c.Create("Projects/2026", nil).Wait())
	require.NoError(t, c.Rename("Projects", "Work", nil).Wait())
	list, err = c.List("", "Work/*", nil).Collect()
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, "Work/2026", list[0].Mailbox)
	require.NoError(t, c.Delete("Work/2026").Wait())
	for _, bad := range []string{"a/../b", "..", "/x", "x//y", "a\x01b"} {
		assert.Error(t, c.Create(bad, nil).Wait(), bad)
	}
	// The SHA512-CRYPT user logs in too.
	c2 := dialIMAP(t, n.imap, nil)
	require.NoError(t, c2.Login("bob@example.org", "pässword").Wait())

	// The IMAP counters are on /metrics.
	resp, err := http.Get("http://" + n.http + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Contains(t, string(body), "resilmail_imap_failed_logins_total 1\n")
	assert.Contains(t, string(body), "resilmail_imap_sessions 2\n")
}

// TestIdleAnnouncesADeliveryAtOnce delivers over LMTP while a session
// idles: the store's notification wakes the session, which announces the
// EXISTS at once, with no polling interval in between. Most announcements
// (the median of 20) arrive within 20 ms of the LMTP 250, which a poll
// of 50 ms or more would not meet, and every one within a second: the
// rest is the scheduler's (four goroutines hand the news on, in a test
// process that shares two cores with the others under go test -race
// ./..., where one wait of 191 ms was seen).
func TestIdleAnnouncesADeliveryAtOnce(t *testing.T) {
	n := startMailNode(t)
	exists := make(chan uint32, 16)
	c := dialIMAP(t, n.imap, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				exists <- *d.NumMessages
			}
		},
	}})
	require.NoError(t, c.Login("alice@example.org", "alice-pw").Wait())
	_, err := c.Select("INBOX", nil).Wait()
	require.NoError(t, err)
	idle, err := c.Idle()
	require.NoError(t, err)
	l := &lmtpClient{addr: n.lmtp}
	defer func() {
		if l.c != nil {
			l.c.Close()
		}
	}()
	var delays []time.Duration
	for i := 1; i <= 20; i++ {
		ok, err := l.deliver("alice@example.org", "Subject: idle\r\n\r\nidle test\r\n")
		require.NoError(t, err)
		require.True(t, ok)
		acked := time.Now()
		select {
		case got := <-exists:
			assert.Equal(t, uint32(i), got)
			delays = append(delays, time.Since(acked))
		case <-time.After(5 * time.Second):
			t.Fatalf("delivery %d not announced", i)
		}
	}
	slices.Sort(delays)
	median, worst := delays[len(delays)/2], delays[len(delays)-1]
	t.Logf("announcement delay after the LMTP 250: median %v, worst %v", median, worst)
	assert.Less(t, median, 20*time.Millisecond, "announced at once, not polled")
	assert.Less(t, worst, time.Second)
	require.NoError(t, idle.Close())
	require.NoError(t, idle.Wait())
}
