package imapstore

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
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

// model is what a raw client knows of its selected mailbox, built from
// the responses only.
type model struct {
	t      *testing.T
	name   string
	uids   []uint32
	flags  map[uint32]string
	modseq map[uint32]uint64
}

var (
	fetchRE   = regexp.MustCompile(`^\* (\d+) FETCH \((.*)\)$`)
	uidRE     = regexp.MustCompile(`UID (\d+)`)
	flagsRE   = regexp.MustCompile(`FLAGS \(([^)]*)\)`)
	existsRE  = regexp.MustCompile(`^\* (\d+) EXISTS$`)
	expungeRE = regexp.MustCompile(`^\* (\d+) EXPUNGE$`)
)

// apply applies one response line; inFetch says a non-UID FETCH is
// running (no EXPUNGE or VANISHED may come then).
func (m *model) apply(l string, inFetch bool) {
	t := m.t
	if g := existsRE.FindStringSubmatch(l); g != nil {
		n, _ := strconv.Atoi(g[1])
		require.GreaterOrEqual(t, n, len(m.uids), "%s: EXISTS went down: %q", m.name, l)
		for len(m.uids) < n {
			m.uids = append(m.uids, 0) // UID not known until fetched
		}
		return
	}
	if g := expungeRE.FindStringSubmatch(l); g != nil {
		require.False(t, inFetch, "%s: EXPUNGE during FETCH", m.name)
		n, _ := strconv.Atoi(g[1])
		require.LessOrEqual(t, n, len(m.uids), "%s: %q", m.name, l)
		m.uids = append(m.uids[:n-1], m.uids[n:]...)
		return
	}
	if rest, ok := strings.CutPrefix(l, "* VANISHED "); ok {
		require.False(t, inFetch, "%s: VANISHED during FETCH", m.name)
		require.False(t, strings.HasPrefix(rest, "(EARLIER)"), "%s: %q", m.name, l)
		set, ok := parseSet(rest, 0)
		require.True(t, ok, l)
		for u := range set.All() {
			// A known UID, or the placeholder of a message whose FETCH
			// was skipped (expunged before it was fetched): the one
			// between the known UIDs around u.
			i := -1
			for k, v := range m.uids {
				if v == u || (v == 0 && i < 0 && (k == 0 || m.uids[k-1] < u) && nextKnown(m.uids, k) > u) {
					i = k
				}
			}
			if i >= 0 {
				m.uids = append(m.uids[:i], m.uids[i+1:]...)
			}
		}
		return
	}
	if g := fetchRE.FindStringSubmatch(l); g != nil {
		seq, _ := strconv.Atoi(g[1])
		u := uidRE.FindStringSubmatch(g[2])
		require.NotNil(t, u, "%s: FETCH without UID: %q", m.name, l)
		uid, _ := strconv.ParseUint(u[1], 10, 32)
		if m.uids[seq-1] == 0 {
			m.uids[seq-1] = uint32(uid)
		}
		require.LessOrEqual(t, seq, len(m.uids), "%s: FETCH of an unknown sequence number: %q", m.name, l)
		require.Equal(t, uint32(uid), m.uids[seq-1], "%s: sequence number %d is another message: %q", m.name, seq, l)
		ms := modseqOf(t, l)
		require.GreaterOrEqual(t, ms, m.modseq[uint32(uid)], "%s: MODSEQ went back: %q", m.name, l)
		m.modseq[uint32(uid)] = ms
		if f := flagsRE.FindStringSubmatch(l); f != nil {
			m.flags[uint32(uid)] = f[1]
		}
	}
}

// nextKnown returns the first known UID after index k (or the largest
// UID).
func nextKnown(uids []uint32, k int) uint32 {
	for _, v := range uids[k+1:] {
		if v != 0 {
			return v
		}
	}
	return ^uint32(0)
}

// sync sends NOOP, then fetches the messages EXISTS announced.
func (m *model) sync(r *raw, tag string) {
	for _, l := range r.do(tag, "NOOP") {
		m.apply(l, false)
	}
	if first := slices.Index(m.uids, 0); first >= 0 {
		for _, l := range r.do(tag+"f", fmt.Sprintf("FETCH %d:* (UID FLAGS MODSEQ)", first+1)) {
			m.apply(l, true)
		}
	}
}

// TestViewsUnderConcurrentWriters: sessions with QRESYNC, with CONDSTORE
// only, and with neither follow a mailbox that three other sessions and
// LMTP-like deliveries change at once; what each learns from its
// responses alone (EXISTS, EXPUNGE or VANISHED, FETCH with MODSEQ) must
// end equal to the store, and every sequence number must name the message
// the client thinks.
func TestViewsUnderConcurrentWriters(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	require.NoError(t, e.st.CreateUser(ctx, "alice"))
	for range 30 {
		e.deliver(t, "Subject: w\r\n\r\nbody\r\n")
	}
	modes := []string{"QRESYNC", "CONDSTORE", "QRESYNC", "CONDSTORE"}
	obs := make([]*raw, len(modes))
	models := make([]*model, len(modes))
	for i, mode := range modes {
		r := dialRaw(t, e.addr)
		require.Contains(t, r.do("l", "LOGIN alice pw")[0], "OK")
		r.do("e", "ENABLE "+mode)
		m := &model{t: t, name: mode + strconv.Itoa(i), flags: map[uint32]string{}, modseq: map[uint32]uint64{}}
		for _, l := range r.do("s", "SELECT INBOX") {
			m.apply(l, false)
		}
		for _, l := range r.do("f", "FETCH 1:* (UID FLAGS MODSEQ)") {
			m.apply(l, true)
		}
		require.Len(t, m.uids, 30)
		obs[i], models[i] = r, m
	}

	done := make(chan struct{})
	errs := make(chan error, 4)
	for w := range 3 {
		go func() {
			c, err := imapclient.DialInsecure(e.addr, nil)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.Login("alice", "pw").Wait(); err != nil {
				errs <- err
				return
			}
			if _, err := c.Select("INBOX", nil).Wait(); err != nil {
				errs <- err
				return
			}
			flags := []imap.Flag{imap.FlagSeen, imap.FlagFlagged, imap.FlagAnswered, "$Work"}
			for i := range 40 {
				uid := imap.UID(1 + (i*7+w*13)%45)
				var err error
				switch i % 5 {
				case 0, 1, 2:
					err = c.Store(imap.UIDSetNum(uid), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: flags[(i+w)%4 : (i+w)%4+1], Silent: true}, nil).Close()
				case 3:
					err = c.Store(imap.UIDSetNum(uid), &imap.StoreFlags{Op: imap.StoreFlagsSet, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close()
				case 4:
					err = c.Expunge().Close()
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	go func() {
		for range 15 {
			if _, err := e.st.Append(ctx, "alice", store.Inbox, nil, time.Time{}, strings.NewReader("Subject: new\r\n\r\nx\r\n")); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	go func() {
		for range 4 {
			require.NoError(t, <-errs)
		}
		close(done)
	}()
	for round := 0; ; round++ {
		for i, r := range obs {
			models[i].sync(r, "n"+strconv.Itoa(round))
		}
		select {
		case <-done:
		default:
			continue
		}
		break
	}
	want, err := e.st.Fetch(ctx, "alice", store.Inbox, store.Query{})
	require.NoError(t, err)
	for i, r := range obs {
		m := models[i]
		m.sync(r, "final")
		require.Len(t, m.uids, len(want), m.name)
		for k, msg := range want {
			require.Equal(t, msg.UID, m.uids[k], m.name)
			assert.ElementsMatch(t, msg.Flags, strings.Fields(m.flags[msg.UID]), "%s: flags of UID %d", m.name, msg.UID)
			assert.Equal(t, msg.ModSeq, m.modseq[msg.UID], "%s: MODSEQ of UID %d", m.name, msg.UID)
		}
	}
}
