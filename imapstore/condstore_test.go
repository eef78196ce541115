package imapstore

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

// do sends a command and returns every line up to its tagged answer.
func (r *raw) do(tag, cmd string) []string {
	r.t.Helper()
	r.send(tag + " " + cmd + "\r\n")
	var out []string
	for {
		l := r.line()
		out = append(out, l)
		if strings.HasPrefix(l, tag+" ") {
			return out
		}
	}
}

var modseqRE = regexp.MustCompile(`MODSEQ \((\d+)\)`)

func modseqOf(t *testing.T, line string) uint64 {
	t.Helper()
	m := modseqRE.FindStringSubmatch(line)
	require.NotNil(t, m, "no MODSEQ in %q", line)
	v, err := strconv.ParseUint(m[1], 10, 64)
	require.NoError(t, err)
	return v
}

func highestOf(t *testing.T, lines []string) uint64 {
	t.Helper()
	for _, l := range lines {
		if _, rest, ok := strings.Cut(l, "[HIGHESTMODSEQ "); ok {
			v, err := strconv.ParseUint(rest[:strings.IndexByte(rest, ']')], 10, 64)
			require.NoError(t, err)
			return v
		}
	}
	t.Fatalf("no HIGHESTMODSEQ in %q", lines)
	return 0
}

func TestCondStoreRaw(t *testing.T) {
	e := newEnv(t)
	require.NoError(t, e.st.CreateUser(context.Background(), "alice"))
	for range 3 {
		e.deliver(t, "Subject: x\r\n\r\nbody\r\n")
	}
	r := dialRaw(t, e.addr)
	pre := r.do("c", "CAPABILITY")
	assert.NotContains(t, pre[0], "CONDSTORE", "advertised before login")
	require.Contains(t, r.do("l", "LOGIN alice pw")[0], "OK")
	caps := r.do("c", "CAPABILITY")
	assert.Contains(t, caps[0], " CONDSTORE")
	assert.Contains(t, caps[0], " QRESYNC")

	sel := r.do("s", "SELECT INBOX (CONDSTORE)")
	require.Contains(t, sel[len(sel)-1], "s OK")
	h := highestOf(t, sel)

	f := r.do("f", "FETCH 1:* (FLAGS MODSEQ)")
	require.Len(t, f, 4)
	for _, l := range f[:3] {
		assert.LessOrEqual(t, modseqOf(t, l), h)
	}

	st := r.do("st", "UID STORE 2 +FLAGS (\\Seen)")
	require.Contains(t, st[0], "FETCH")
	m2 := modseqOf(t, st[0])
	assert.Greater(t, m2, h)

	ch := r.do("ch", fmt.Sprintf("FETCH 1:* (FLAGS) (CHANGEDSINCE %d)", h))
	require.Len(t, ch, 2, "only message 2 changed: %q", ch)
	assert.True(t, strings.HasPrefix(ch[0], "* 2 FETCH ("), ch[0])
	assert.Equal(t, m2, modseqOf(t, ch[0]))

	// Message 2 changed after h: a STORE conditional on h leaves it.
	cs := r.do("cs", fmt.Sprintf("STORE 1:2 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)", h))
	assert.Equal(t, "cs OK [MODIFIED 2] Conditional STORE failed", cs[len(cs)-1])
	require.Len(t, cs, 2, "%q", cs)
	assert.True(t, strings.HasPrefix(cs[0], "* 1 FETCH ("), cs[0])
	m1 := modseqOf(t, cs[0])
	fl := r.do("fl", "FETCH 2 (FLAGS)")
	assert.NotContains(t, fl[0], `\Flagged`)

	se := r.do("se", fmt.Sprintf("SEARCH MODSEQ %d", m2))
	assert.Equal(t, fmt.Sprintf("* SEARCH 1 2 (MODSEQ %d)", m1), se[0])
	se = r.do("se2", fmt.Sprintf(`SEARCH OR MODSEQ "/flags/\\seen" all %d SUBJECT MODSEQ`, m1))
	assert.Equal(t, fmt.Sprintf("* SEARCH 1 (MODSEQ %d)", m1), se[0])
	se = r.do("se3", "UID SEARCH RETURN (ALL) MODSEQ 1")
	assert.Contains(t, se[0], fmt.Sprintf("MODSEQ %d", m1))

	sts := r.do("stat", "STATUS INBOX (MESSAGES HIGHESTMODSEQ)")
	assert.Equal(t, fmt.Sprintf(`* STATUS INBOX (MESSAGES 3 HIGHESTMODSEQ %d)`, m1), sts[0])

	// Literals inside a command the front reads whole.
	r.send("lit SEARCH SUBJECT {1}\r\n")
	assert.Equal(t, "+ Ready for literal data", r.line())
	r.send(fmt.Sprintf("x MODSEQ %d\r\n", m1))
	lit := r.until("lit")
	assert.Equal(t, "lit OK SEARCH completed", lit)
	assert.Contains(t, r.do("bad", "FETCH 1 (FLAGS) (CHANGEDSINCE x)")[0], "bad BAD")
	assert.Contains(t, r.do("bad2", "UID FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)")[0], "bad2 BAD", "VANISHED without QRESYNC")
}

func TestQResyncAcrossSessions(t *testing.T) {
	e := newEnv(t)
	require.NoError(t, e.st.CreateUser(context.Background(), "alice"))
	var uids []uint32
	for range 5 {
		uids = append(uids, e.deliver(t, "Subject: y\r\n\r\nbody\r\n"))
	}
	a := dialRaw(t, e.addr)
	require.Contains(t, a.do("l", "LOGIN alice pw")[0], "OK")
	assert.Contains(t, a.do("q", "SELECT INBOX (QRESYNC (1 1))")[0], "BAD", "QRESYNC before ENABLE")
	en := a.do("e", "ENABLE QRESYNC")
	assert.Equal(t, "* ENABLED QRESYNC", en[0])
	sel := a.do("s", "SELECT INBOX")
	h := highestOf(t, sel)
	var validity uint32
	for _, l := range sel {
		if _, rest, ok := strings.Cut(l, "[UIDVALIDITY "); ok {
			v, _ := strconv.ParseUint(rest[:strings.IndexByte(rest, ']')], 10, 32)
			validity = uint32(v)
		}
	}

	// Another session expunges message 2 and flags message 4.
	b := e.login(t, nil)
	_, err := b.Select("INBOX", nil).Wait()
	require.NoError(t, err)
	require.NoError(t, b.Store(imap.UIDSetNum(imap.UID(uids[1])), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close())
	require.NoError(t, b.Expunge().Close())
	require.NoError(t, b.Store(imap.UIDSetNum(imap.UID(uids[3])), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}, Silent: true}, nil).Close())

	noop := a.do("n", "NOOP")
	joined := strings.Join(noop, "\n")
	assert.Contains(t, joined, fmt.Sprintf("* VANISHED %d", uids[1]))
	assert.NotContains(t, joined, "EXPUNGE")
	assert.Regexp(t, `\* 3 FETCH \(UID \d+ FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)`, joined)

	// A client that knew the mailbox at h catches up on SELECT.
	c := dialRaw(t, e.addr)
	require.Contains(t, c.do("l", "LOGIN alice pw")[0], "OK")
	c.do("e", "ENABLE QRESYNC")
	re := c.do("s", fmt.Sprintf("SELECT INBOX (QRESYNC (%d %d 1:%d))", validity, h, uids[4]))
	joined = strings.Join(re, "\n")
	assert.Contains(t, joined, fmt.Sprintf("* VANISHED (EARLIER) %d", uids[1]))
	assert.Regexp(t, fmt.Sprintf(`\* 3 FETCH \(UID %d FLAGS \(\\Flagged\) MODSEQ`, uids[3]), joined)
	assert.NotContains(t, joined, fmt.Sprintf("UID %d FLAGS", uids[0]), "unchanged message sent")
	assert.Contains(t, re[len(re)-1], "s OK")
	fv := c.do("f", fmt.Sprintf("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)", h))
	assert.Equal(t, fmt.Sprintf("* VANISHED (EARLIER) %d", uids[1]), fv[0])
	assert.Regexp(t, fmt.Sprintf(`\* 3 FETCH \(MODSEQ \(\d+\) UID %d FLAGS \(\\Flagged\)\)`, uids[3]), fv[1])
	require.Len(t, fv, 3)

	// With QRESYNC, its own EXPUNGE is a VANISHED too.
	c.do("d", fmt.Sprintf("UID STORE %d +FLAGS.SILENT (\\Deleted)", uids[0]))
	ex := c.do("x", "EXPUNGE")
	assert.Equal(t, fmt.Sprintf("* VANISHED %d", uids[0]), ex[0])
}

func TestCondStoreGoIMAPClient(t *testing.T) {
	e := newEnv(t)
	require.NoError(t, e.st.CreateUser(context.Background(), "alice"))
	for range 3 {
		e.deliver(t, "Subject: z\r\n\r\nbody\r\n")
	}
	c := e.login(t, nil)
	require.True(t, c.Caps().Has(imap.CapCondStore))
	sel, err := c.Select("INBOX", &imap.SelectOptions{CondStore: true}).Wait()
	require.NoError(t, err)
	require.NotZero(t, sel.HighestModSeq)

	msgs, err := c.Fetch(imap.SeqSetNum(1, 2, 3), &imap.FetchOptions{ModSeq: true, UID: true}).Collect()
	require.NoError(t, err)
	require.Len(t, msgs, 3)
	for _, m := range msgs {
		assert.NotZero(t, m.ModSeq)
	}
	_, err = c.Store(imap.SeqSetNum(3), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagAnswered}}, nil).Collect()
	require.NoError(t, err)
	changed, err := c.Fetch(imap.SeqSetNum(1, 2, 3), &imap.FetchOptions{Flags: true, ChangedSince: sel.HighestModSeq}).Collect()
	require.NoError(t, err)
	require.Len(t, changed, 1)
	assert.Equal(t, uint32(3), changed[0].SeqNum)
	assert.Greater(t, changed[0].ModSeq, sel.HighestModSeq)

	_, err = c.Store(imap.SeqSetNum(3), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}}, &imap.StoreOptions{UnchangedSince: sel.HighestModSeq}).Collect()
	require.NoError(t, err) // OK [MODIFIED 3]: go-imap's client does not report it
	st, err := e.st.Fetch(context.Background(), "alice", store.Inbox, store.Query{UIDs: resilmail.UIDSet{{Start: 3, Stop: 3}}})
	require.NoError(t, err)
	assert.NotContains(t, st[0].Flags, `\Flagged`, "a conditional STORE changed a message changed since")

	stat, err := c.Status("INBOX", &imap.StatusOptions{HighestModSeq: true, NumMessages: true}).Wait()
	require.NoError(t, err)
	assert.Equal(t, changed[0].ModSeq, stat.HighestModSeq)
}
