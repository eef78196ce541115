package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// python runs a Python 3 script with the node's addresses as arguments
// and returns its output; the script fails the test by exiting non-zero.
func python(t *testing.T, script string, args ...string) string {
	t.Helper()
	cmd := exec.Command("python3", append([]string{"-c", script}, args...)...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "python:\n%s", out)
	return string(out)
}

func hostPort(addr string) (string, string) {
	h, p, _ := net.SplitHostPort(addr)
	return h, p
}

const imaplibScript = `
import imaplib, sys
host, port = sys.argv[1], int(sys.argv[2])
m = imaplib.IMAP4(host, port)
try:
    m.login("alice@example.org", "wrong")
    sys.exit("wrong password accepted")
except imaplib.IMAP4.error:
    pass
m.login("alice@example.org", "alice-pw")
typ, boxes = m.list()
assert typ == "OK", boxes
names = b" ".join(boxes)
for n in (b"Sent", b"Trash", b"Drafts", b"Junk", b"Archive"):
    assert n in names, names
typ, data = m.append("INBOX", "(\\Seen)", None, b"Subject: from imaplib\r\nFrom: py@example.net\r\n\r\nhello from python\r\n")
assert typ == "OK", data
typ, data = m.select("INBOX")
assert typ == "OK" and int(data[0]) == 2, data
typ, data = m.uid("SEARCH", None, "SUBJECT", "imaplib")
assert data[0].split() == [b"2"], data
typ, data = m.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
assert typ == "OK", data
assert b"from imaplib" in b"".join(x[1] for x in data if isinstance(x, tuple)), data
typ, data = m.fetch("2", "(BODY[TEXT])")
assert b"hello from python" in data[0][1], data
typ, data = m.store("1", "+FLAGS", "(\\Deleted)")
assert typ == "OK", data
typ, data = m.expunge()
assert typ == "OK" and data == [b"1"], data
typ, data = m.create("Py/Sub")
assert typ == "OK", data
typ, data = m.status("INBOX", "(MESSAGES UIDNEXT UNSEEN)")
assert b"MESSAGES 1" in data[0] and b"UIDNEXT 3" in data[0], data
typ, data = m.create("bad/../name")
assert typ == "NO", data
m.logout()
print("imaplib ok")
`

const poplibScript = `
import poplib, sys
host, port = sys.argv[1], int(sys.argv[2])
p = poplib.POP3(host, port)
caps = p.capa()
assert "UIDL" in caps and "SASL" in caps, caps
try:
    p.user("alice@example.org"); p.pass_("wrong")
    sys.exit("wrong password accepted")
except poplib.error_proto:
    pass
p.user("alice@example.org"); p.pass_("alice-pw")
count, size = p.stat()
assert count == 2, (count, size)
resp, listing, _ = p.list()
sizes = [int(l.split()[1]) for l in listing]
assert sum(sizes) == size, (listing, size)
resp, uidls, _ = p.uidl()
uids = [l.split()[1] for l in uidls]
assert len(set(uids)) == 2, uids
resp, lines, octets = p.retr(1)
assert octets == sizes[0], (octets, sizes[0])
assert b".starts with a dot" in lines, lines
resp, lines, _ = p.top(2, 0)
assert lines[-1] == b"", lines
p.dele(1)
p.quit()
p = poplib.POP3(host, port)
p.user("alice@example.org"); p.pass_("alice-pw")
assert p.stat()[0] == 1
resp, uidls2, _ = p.uidl()
assert uidls2[0].split()[1] == uids[1], (uidls2, uids)
p.quit()
print("poplib ok")
`

// condstoreScript drives CONDSTORE and QRESYNC (RFC 7162) with imaplib's
// raw commands: a writes and reads with mod-sequences while b expunges and
// flags behind its back.
const condstoreScript = `
import imaplib, sys
host, port = sys.argv[1], int(sys.argv[2])
a = imaplib.IMAP4(host, port)
assert "CONDSTORE" not in a.capabilities, a.capabilities
a.login("alice@example.org", "alice-pw")
typ, data = a.capability()
assert b" CONDSTORE" in data[0] and b" QRESYNC" in data[0], data
a.capabilities = tuple(data[0].decode().upper().split())  # imaplib keeps the greeting's
typ, data = a.enable("QRESYNC")
assert typ == "OK" and a.response("ENABLED")[1] == [b"QRESYNC"], (typ, data)
assert a.create("CS")[0] == "OK"
for i in range(3):
    a.append("CS", None, None, b"Subject: m%d\r\n\r\nbody\r\n" % i)
typ, data = a.select("CS")
assert typ == "OK" and int(data[0]) == 3, data
h = int(a.response("HIGHESTMODSEQ")[1][0])
typ, data = a.fetch("1:*", "(FLAGS MODSEQ)")
assert typ == "OK" and len(data) == 3 and all(b"MODSEQ (" in d for d in data), data

b = imaplib.IMAP4(host, port)
b.login("alice@example.org", "alice-pw")
b.select("CS")
b.store("1", "+FLAGS.SILENT", "(\\Deleted)")
b.expunge()
b.store("1", "+FLAGS.SILENT", "(\\Flagged)")
b.logout()

typ, data = a.noop()
assert a.response("VANISHED")[1] == [b"1"], "no VANISHED"
assert a.response("EXPUNGE")[1] == [None], "EXPUNGE with QRESYNC on"
fetch = a.response("FETCH")[1]
assert len(fetch) == 1 and b"UID 2 FLAGS (\\Flagged) MODSEQ (" in fetch[0], fetch

typ, data = a.uid("FETCH", "1:*", "(FLAGS) (CHANGEDSINCE %d VANISHED)" % h)
assert a.response("VANISHED")[1] == [b"(EARLIER) 1"], "no VANISHED (EARLIER)"
assert typ == "OK" and len(data) == 1 and b"UID 2 FLAGS (\\Flagged)" in data[0], data

typ, data = a.uid("STORE", "2:3", "(UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % h)
assert typ == "OK", data
assert a.response("MODIFIED")[1] == [b"2"], "no MODIFIED"
assert len(data) == 1 and b"UID 3" in data[0] and b"\\Seen" in data[0], data

typ, data = a.status("CS", "(MESSAGES HIGHESTMODSEQ)")
assert typ == "OK" and b"HIGHESTMODSEQ" in data[0], data
typ, data = a.uid("SEARCH", "MODSEQ", str(h + 1))
assert typ == "OK" and data[0].startswith(b"2 3 (MODSEQ "), data
a.logout()
print("condstore ok")
`

func TestPythonImaplibAndPoplib(t *testing.T) {
	n := startMailNode(t)
	require.Contains(t, swaks(t, n.lmtp, "first", "alice@example.org"), "250 ")
	h, p := hostPort(n.imap)
	assert.Contains(t, python(t, imaplibScript, h, p), "imaplib ok")
	assert.Contains(t, python(t, condstoreScript, h, p), "condstore ok")

	n = startMailNode(t)
	require.Contains(t, swaks(t, n.lmtp, ".starts with a dot\n..two", "alice@example.org"), "250 ")
	require.Contains(t, swaks(t, n.lmtp, "second", "alice@example.org"), "250 ")
	h, p = hostPort(n.pop3)
	assert.Contains(t, python(t, poplibScript, h, p), "poplib ok")
}

// TestMbsyncTwoWaySync syncs a mailbox with mbsync (isync) both ways,
// twice: the second run transfers nothing.
func TestMbsyncTwoWaySync(t *testing.T) {
	n := startMailNode(t)
	for i := range 3 {
		require.Contains(t, swaks(t, n.lmtp, fmt.Sprintf("server message %d", i), "alice@example.org"), "250 ")
	}
	dir := t.TempDir()
	maildir := filepath.Join(dir, "mail")
	require.NoError(t, os.MkdirAll(maildir, 0o700))
	// Two messages written locally, to go up.
	for i := range 2 {
		box := filepath.Join(maildir, "INBOX")
		for _, sub := range []string{"cur", "new", "tmp"} {
			require.NoError(t, os.MkdirAll(filepath.Join(box, sub), 0o700))
		}
		require.NoError(t, os.WriteFile(filepath.Join(box, "new", fmt.Sprintf("17000000%02d.local%d.test", i, i)),
			[]byte(fmt.Sprintf("From: me@example.org\r\nSubject: local %d\r\n\r\nlocal body %d\r\n", i, i)), 0o600))
	}
	h, p := hostPort(n.imap)
	rc := filepath.Join(dir, "mbsyncrc")
	require.NoError(t, os.WriteFile(rc, []byte(fmt.Sprintf(`IMAPAccount test
Host %s
Port %s
User alice@example.org
Pass alice-pw
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account test

MaildirStore local
Path %s/
Inbox %s/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
Sync All
`, h, p, maildir, maildir)), 0o600))
	run := func() string {
		// -Dn prints the IMAP traffic: what the sync transferred.
		out, err := exec.Command("mbsync", "-c", rc, "-a", "-Dn").CombinedOutput()
		require.NoError(t, err, "mbsync:\n%s", out)
		return string(out)
	}
	first := run()
	t.Logf("first sync:\n%s", first)
	// The first run uploads the two local messages and downloads the three.
	commands := func(out, verb string) int {
		return len(regexp.MustCompile(`>>> \d+ (UID )?`+regexp.QuoteMeta(verb)).FindAllString(out, -1))
	}
	assert.Equal(t, 2, commands(first, "APPEND"), "uploads in the first sync")
	assert.Equal(t, 3, strings.Count(first, "BODY[] {"), "downloads in the first sync")
	// Both sides hold the five messages.
	count, err := getIMAPCount(t, n, "INBOX")
	require.NoError(t, err)
	assert.Equal(t, 5, count)
	localNames := func() []string {
		var names []string
		for _, sub := range []string{"cur", "new"} {
			entries, err := os.ReadDir(filepath.Join(maildir, "INBOX", sub))
			require.NoError(t, err)
			for _, e := range entries {
				names = append(names, sub+"/"+e.Name())
			}
		}
		return names
	}
	before := localNames()
	assert.Len(t, before, 5)
	status := getStatus(t, n.http)

	second := run()
	for _, verb := range []string{"APPEND", "FETCH 1:5 (UID FLAGS BODY", "STORE", "EXPUNGE"} {
		assert.Zero(t, commands(second, verb), "the second sync sent %s:\n%s", verb, second)
	}
	assert.NotContains(t, second, "BODY[] {", "the second sync downloaded a message")
	assert.Equal(t, before, localNames(), "the second sync changed the local maildir")
	assert.Equal(t, status.Position, getStatus(t, n.http).Position, "the second sync changed the server's store")
	assert.NotContains(t, strings.ToLower(second), "error")
}

func getIMAPCount(t *testing.T, n *mailNode, mailbox string) (int, error) {
	t.Helper()
	c := dialIMAP(t, n.imap, nil)
	if err := c.Login("alice@example.org", "alice-pw").Wait(); err != nil {
		return 0, err
	}
	d, err := c.Select(mailbox, nil).Wait()
	if err != nil {
		return 0, err
	}
	return int(d.NumMessages), c.Logout().Wait()
}
