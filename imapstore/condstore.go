package imapstore

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"

	"github.com/resilmail/resilmail"
)

// CONDSTORE and QRESYNC (RFC 7162), served by the front (front.go) and
// the session together.

// cmdState is what the front tells the session about the command go-imap
// runs, and what the session leaves for the front to write. It is reset at
// every command.
type cmdState struct {
	sel *selectParams // SELECT/EXAMINE with CONDSTORE or QRESYNC

	fetchModSeq  bool   // FETCH asked for MODSEQ (or CHANGEDSINCE)
	changedSince uint64 // FETCH (CHANGEDSINCE n)

	conditional    bool   // STORE (UNCHANGEDSINCE n)
	unchangedSince uint64 //
	modified       string // the MODIFIED set for the tagged OK

	statusModSeq bool   // STATUS asked for HIGHESTMODSEQ
	statusValue  uint64 // its value, once STATUS ran
	statusSet    bool

	searchMarks   map[string]uint64 // SEARCH MODSEQ keys, as marker keywords
	searchHighest uint64            // the highest MODSEQ of the matches

	enabled []string // capabilities ENABLE turned on, for ENABLED

	noteModSeq uint64 // MODSEQ to add to the next FETCH response
	beforeOK   []byte // responses to write before the tagged OK
}

// selectParams are SELECT's RFC 7162 parameters.
type selectParams struct {
	qresync     bool
	uidValidity uint32
	modseq      uint64
	known       resilmail.UIDSet // nil: every UID
}

func bad(tag, text string) []byte { return fmt.Appendf(nil, "%s BAD %s\r\n", tag, text) }

// dispatch answers a command read whole, or hands it to go-imap.
func (f *front) dispatch(c *command) error {
	s := f.sess
	if c.name == "STARTTLS" {
		return f.startTLS(c)
	}
	if s == nil || s.user == "" {
		f.pass(c.tag, c.raw, false)
		return nil
	}
	var out []byte
	var own []byte
	switch c.name {
	case "ENABLE":
		out = s.enable(c)
	case "SELECT", "EXAMINE":
		out, own = s.selectCmd(c)
	case "FETCH":
		out, own = s.fetchCmd(c)
	case "STORE":
		out, own = s.storeCmd(c)
	case "STATUS":
		out = s.statusCmd(c)
	case "SEARCH":
		out, own = s.searchCmd(c)
	default:
		out = c.raw
	}
	if own != nil {
		if err := f.answer(own); err != nil {
			return err
		}
	}
	if out != nil {
		f.pass(c.tag, out, false)
		return nil
	}
	// Answered whole: Read goes on to the next command.
	return nil
}

// enable takes CONDSTORE and QRESYNC out of ENABLE (RFC 5161); go-imap
// enables the others, and its ENABLED response gets ours.
func (s *session) enable(c *command) []byte {
	var keep []token
	for _, t := range c.args {
		switch {
		case t.is("CONDSTORE"):
			if !s.condstore {
				s.cmd.enabled = append(s.cmd.enabled, "CONDSTORE")
			}
			s.condstore = true
		case t.is("QRESYNC"):
			if !s.qresync {
				s.cmd.enabled = append(s.cmd.enabled, "QRESYNC")
			}
			s.condstore, s.qresync = true, true
		default:
			keep = append(keep, t)
		}
	}
	if len(keep) == len(c.args) {
		return c.raw
	}
	return c.rebuild(keep, "")
}

// selectCmd takes (CONDSTORE) and (QRESYNC (...)) out of SELECT and
// EXAMINE; on a standby SELECT becomes EXAMINE.
func (s *session) selectCmd(c *command) (pass, own []byte) {
	if len(c.args) == 0 || len(c.args) > 2 || c.uid {
		return c.raw, nil
	}
	name := c.name
	if s.srv.o.ReadOnly() {
		name = "EXAMINE"
	}
	if len(c.args) == 2 {
		params := c.args[1]
		if params.kind != tokList {
			return nil, bad(c.tag, "Syntax error: SELECT parameters")
		}
		p := &selectParams{}
		for i := 0; i < len(params.list); i++ {
			t := params.list[i]
			switch {
			case t.is("CONDSTORE"):
			case t.is("QRESYNC"):
				if !s.qresync {
					return nil, bad(c.tag, "[CLIENTBUG] QRESYNC is not enabled")
				}
				if i+1 >= len(params.list) || !p.parseQResync(params.list[i+1]) {
					return nil, bad(c.tag, "Syntax error: QRESYNC parameters")
				}
				p.qresync = true
				i++
			default:
				return nil, bad(c.tag, "Unknown SELECT parameter")
			}
		}
		s.condstore = true
		s.cmd.sel = p
	}
	out := []byte(c.tag + " " + name + " " + c.span(c.args[0]) + "\r\n")
	return out, nil
}

// parseQResync parses (uidvalidity modseq [known-uids [(seqs uids)]]);
// the sequence match data is only checked: the answer covers every known
// UID, which RFC 7162 allows.
func (p *selectParams) parseQResync(t token) bool {
	if t.kind != tokList || len(t.list) < 2 || len(t.list) > 4 {
		return false
	}
	var ok bool
	if p.uidValidity, ok = parseNumber(t.list[0]); !ok {
		return false
	}
	if p.modseq, ok = parseModSeq(t.list[1], false); !ok {
		return false
	}
	if len(t.list) >= 3 {
		if t.list[2].kind == tokList {
			return len(t.list) == 3 && len(t.list[2].list) == 2
		}
		if p.known, ok = parseSet(t.list[2].val, 0); !ok || t.list[2].kind != tokAtom {
			return false
		}
	}
	if len(t.list) == 4 && (t.list[3].kind != tokList || len(t.list[3].list) != 2) {
		return false
	}
	return true
}

// parseSet parses a sequence set of numbers; "*" is star (zero refuses
// it). Ranges may be reversed.
func parseSet(v string, star uint32) (resilmail.UIDSet, bool) {
	if v == "" {
		return nil, false
	}
	num := func(x string) (uint32, bool) {
		if x == "*" {
			return star, star != 0
		}
		if x == "" || len(x) > 10 || x[0] == '0' {
			return 0, false
		}
		n, err := strconv.ParseUint(x, 10, 32)
		return uint32(n), err == nil
	}
	var set resilmail.UIDSet
	for part := range strings.SplitSeq(v, ",") {
		a, b, isRange := strings.Cut(part, ":")
		lo, ok := num(a)
		if !ok {
			return nil, false
		}
		hi := lo
		if isRange {
			if hi, ok = num(b); !ok {
				return nil, false
			}
		}
		if lo > hi {
			lo, hi = hi, lo
		}
		set = set.AddRange(lo, hi)
	}
	return set, true
}

// fetchCmd takes the MODSEQ item and the CHANGEDSINCE and VANISHED
// modifiers out of FETCH; the session's Fetch does the rest. VANISHED
// (EARLIER) is written before go-imap's responses.
func (s *session) fetchCmd(c *command) (pass, own []byte) {
	if len(c.args) < 2 || len(c.args) > 3 {
		return c.raw, nil
	}
	atts := c.args[1]
	modseq := false
	var keep []string
	switch {
	case atts.is("MODSEQ"):
		modseq = true
	case atts.kind == tokList:
		for _, t := range atts.list {
			if t.is("MODSEQ") {
				modseq = true
				continue
			}
			keep = append(keep, c.span(t))
		}
	}
	var changedSince uint64
	changed, vanished := false, false
	if len(c.args) == 3 {
		mods := c.args[2]
		if mods.kind != tokList || len(mods.list) == 0 {
			return nil, bad(c.tag, "Syntax error: FETCH modifiers")
		}
		for i := 0; i < len(mods.list); i++ {
			t := mods.list[i]
			switch {
			case t.is("CHANGEDSINCE") && i+1 < len(mods.list):
				v, ok := parseModSeq(mods.list[i+1], false)
				if !ok {
					return nil, bad(c.tag, "Syntax error: CHANGEDSINCE needs a mod-sequence")
				}
				changedSince, changed = v, true
				i++
			case t.is("VANISHED"):
				vanished = true
			default:
				return nil, bad(c.tag, "Unknown FETCH modifier")
			}
		}
	}
	if !modseq && !changed && !vanished {
		return c.raw, nil
	}
	if s.sel == nil {
		return nil, bad(c.tag, "[CLIENTBUG] No mailbox selected")
	}
	if vanished && (!c.uid || !s.qresync || !changed) {
		return nil, bad(c.tag, "[CLIENTBUG] VANISHED needs UID FETCH, CHANGEDSINCE and QRESYNC enabled")
	}
	s.condstore = true
	s.cmd.fetchModSeq, s.cmd.changedSince = true, changedSince
	var v []byte
	if vanished {
		var err error
		if v, err = s.vanishedEarlier(c.span(c.args[0]), changedSince); err != nil {
			return nil, fmt.Appendf(nil, "%s NO [UNAVAILABLE] Temporary server failure\r\n", c.tag)
		}
	}
	attsText := c.span(atts)
	if modseq {
		if len(keep) == 0 {
			keep = []string{"UID"}
		}
		attsText = "(" + strings.Join(keep, " ") + ")"
	}
	out := []byte(c.tag)
	if c.uid {
		out = append(out, " UID"...)
	}
	out = fmt.Appendf(out, " FETCH %s %s\r\n", c.span(c.args[0]), attsText)
	return out, v
}

// vanishedEarlier returns "* VANISHED (EARLIER) ..." for the UIDs of set
// expunged after modseq that the client no longer has in its view.
func (s *session) vanishedEarlier(set string, modseq uint64) ([]byte, error) {
	mb := s.sel.mb
	mb.mu.Lock()
	star := mb.uidNext
	mb.mu.Unlock()
	var want resilmail.UIDSet
	if set == "$" {
		for _, r := range s.sel.searchRes {
			want = want.AddRange(uint32(r.Start), uint32(r.Stop))
		}
	} else {
		var ok bool
		if want, ok = parseSet(set, max(star, 1)); !ok {
			return nil, nil // go-imap answers the syntax
		}
	}
	d, err := s.srv.st.MailboxDelta(s.ctx(), s.user, mb.currentName(), modseq)
	if err != nil {
		return nil, err
	}
	return s.vanishedLine(d.Vanished, want), nil
}

// vanishedLine returns "* VANISHED (EARLIER) set" for the UIDs of gone
// within want (nil: all) that are not in the client's view.
func (s *session) vanishedLine(gone, want resilmail.UIDSet) []byte {
	mb := s.sel.mb
	mb.mu.Lock()
	uids := s.sel.view.uidsLocked()
	var out resilmail.UIDSet
	for _, r := range gone {
		for u := r.Start; ; u++ {
			if want == nil || want.Contains(u) {
				if _, in := slices.BinarySearch(uids, u); !in {
					out = out.Add(u)
				}
			}
			if u == r.Stop {
				break
			}
		}
	}
	mb.mu.Unlock()
	if out.IsEmpty() {
		return nil
	}
	return fmt.Appendf(nil, "* VANISHED (EARLIER) %s\r\n", out)
}

// storeCmd takes (UNCHANGEDSINCE n) out of STORE; the session's Store
// does it and leaves the MODIFIED set.
func (s *session) storeCmd(c *command) (pass, own []byte) {
	if len(c.args) < 3 || c.args[1].kind != tokList {
		return c.raw, nil
	}
	mods := c.args[1].list
	if len(mods) != 2 || !mods[0].is("UNCHANGEDSINCE") {
		return nil, bad(c.tag, "Unknown STORE modifier")
	}
	v, ok := parseModSeq(mods[1], true)
	if !ok {
		return nil, bad(c.tag, "Syntax error: UNCHANGEDSINCE needs a mod-sequence")
	}
	if s.sel == nil {
		return nil, bad(c.tag, "[CLIENTBUG] No mailbox selected")
	}
	s.condstore = true
	s.cmd.conditional, s.cmd.unchangedSince = true, v
	keep := append([]token{c.args[0]}, c.args[2:]...)
	return c.rebuild(keep, ""), nil
}

// statusCmd takes HIGHESTMODSEQ out of STATUS; the session's Status
// leaves its value for the STATUS response.
func (s *session) statusCmd(c *command) []byte {
	if len(c.args) != 2 || c.args[1].kind != tokList {
		return c.raw
	}
	var keep []string
	found := false
	for _, t := range c.args[1].list {
		if t.is("HIGHESTMODSEQ") {
			found = true
			continue
		}
		keep = append(keep, c.span(t))
	}
	if !found {
		return c.raw
	}
	s.cmd.statusModSeq = true
	if len(keep) == 0 {
		keep = []string{"MESSAGES"}
	}
	return fmt.Appendf(nil, "%s STATUS %s (%s)\r\n", c.tag, c.span(c.args[0]), strings.Join(keep, " "))
}

// searchArity is the number of arguments of SEARCH keys (RFC 9051 and
// RFC 7162; NOT and OR take keys, counted apart).
var searchArity = map[string]int{
	"ALL": 0, "ANSWERED": 0, "DELETED": 0, "DRAFT": 0, "FLAGGED": 0, "NEW": 0, "OLD": 0,
	"RECENT": 0, "SEEN": 0, "UNANSWERED": 0, "UNDELETED": 0, "UNDRAFT": 0, "UNFLAGGED": 0,
	"UNSEEN": 0, "BCC": 1, "BEFORE": 1, "BODY": 1, "CC": 1, "FROM": 1, "KEYWORD": 1,
	"LARGER": 1, "ON": 1, "SENTBEFORE": 1, "SENTON": 1, "SENTSINCE": 1, "SINCE": 1,
	"SMALLER": 1, "SUBJECT": 1, "TEXT": 1, "TO": 1, "UID": 1, "UNKEYWORD": 1, "HEADER": 2,
}

// modseqKey is a MODSEQ key found in a SEARCH: its tokens' span and value.
type modseqKey struct {
	start, end int
	value      uint64
}

// searchKeys walks one key at ts[i], collecting MODSEQ keys; it returns
// the index after the key.
func searchKeys(ts []token, i, depth int, found *[]modseqKey) (int, bool) {
	if i >= len(ts) || depth > maxDepth {
		return 0, false
	}
	t := ts[i]
	if t.kind == tokList {
		for j := 0; j < len(t.list); {
			var ok bool
			if j, ok = searchKeys(t.list, j, depth+1, found); !ok {
				return 0, false
			}
		}
		return i + 1, len(t.list) > 0
	}
	if t.kind != tokAtom {
		return 0, false
	}
	key := strings.ToUpper(t.val)
	switch key {
	case "NOT":
		return searchKeys(ts, i+1, depth+1, found)
	case "OR":
		j, ok := searchKeys(ts, i+1, depth+1, found)
		if !ok {
			return 0, false
		}
		return searchKeys(ts, j, depth+1, found)
	case "MODSEQ":
		j := i + 1
		if j < len(ts) && ts[j].kind == tokString {
			if j+1 >= len(ts) || ts[j+1].kind != tokAtom {
				return 0, false
			}
			switch strings.ToLower(ts[j+1].val) {
			case "priv", "shared", "all":
			default:
				return 0, false
			}
			j += 2
		}
		if j >= len(ts) {
			return 0, false
		}
		v, ok := parseModSeq(ts[j], true)
		if !ok {
			return 0, false
		}
		*found = append(*found, modseqKey{start: t.start, end: ts[j].end, value: v})
		return j + 1, true
	}
	if n, ok := searchArity[key]; ok {
		if i+n >= len(ts) {
			return 0, false
		}
		return i + 1 + n, true
	}
	if _, ok := parseSet(t.val, 1); ok || t.val == "$" {
		return i + 1, true // a sequence set
	}
	return 0, false
}

// searchCmd replaces every MODSEQ key of a SEARCH by a KEYWORD only this
// command knows (the session's Search turns it into imap's ModSeq
// criterion); the SEARCH response gets the highest MODSEQ of the matches.
func (s *session) searchCmd(c *command) (pass, own []byte) {
	ts := c.args
	i := 0
	if i < len(ts) && ts[i].is("RETURN") {
		i += 2
	}
	if i < len(ts) && ts[i].is("CHARSET") {
		i += 2
	}
	var found []modseqKey
	for i < len(ts) {
		var ok bool
		if i, ok = searchKeys(ts, i, 0, &found); !ok {
			return c.raw, nil // go-imap answers
		}
	}
	if len(found) == 0 {
		return c.raw, nil
	}
	if s.sel == nil {
		return nil, bad(c.tag, "[CLIENTBUG] No mailbox selected")
	}
	s.condstore = true
	s.cmd.searchMarks = make(map[string]uint64, len(found))
	var b bytes.Buffer
	last := 0
	for k, m := range found {
		mark := fmt.Sprintf("$resilmail-modseq-%s-%d", s.nonce, k)
		s.cmd.searchMarks[strings.ToLower(mark)] = m.value
		b.Write(c.raw[last:m.start])
		b.WriteString("KEYWORD " + mark)
		last = m.end
	}
	b.Write(c.raw[last:])
	return b.Bytes(), nil
}

// searchModSeq turns the marker keywords of a SEARCH back into ModSeq
// criteria.
func (s *session) searchModSeq(cr *imap.SearchCriteria) {
	if len(s.cmd.searchMarks) == 0 {
		return
	}
	flags := cr.Flag[:0]
	for _, f := range cr.Flag {
		if v, ok := s.cmd.searchMarks[strings.ToLower(string(f))]; ok {
			if cr.ModSeq == nil || v > cr.ModSeq.ModSeq {
				cr.ModSeq = &imap.SearchCriteriaModSeq{ModSeq: v}
			}
			continue
		}
		flags = append(flags, f)
	}
	cr.Flag = flags
	for i := range cr.Not {
		s.searchModSeq(&cr.Not[i])
	}
	for i := range cr.Or {
		s.searchModSeq(&cr.Or[i][0])
		s.searchModSeq(&cr.Or[i][1])
	}
}

// selectExtra adds to a SELECT's answer what CONDSTORE and QRESYNC want:
// HIGHESTMODSEQ, then for QRESYNC with the right UIDVALIDITY the UIDs
// expunged since the client's mod-sequence (VANISHED (EARLIER)) and the
// messages changed since (FETCH UID FLAGS MODSEQ).
func (s *session) selectExtra(highest uint64) error {
	if !s.condstore {
		return nil
	}
	if highest == 0 {
		s.cmd.beforeOK = append(s.cmd.beforeOK, "* OK [NOMODSEQ] No message has a mod-sequence yet\r\n"...)
	} else {
		s.cmd.beforeOK = fmt.Appendf(s.cmd.beforeOK, "* OK [HIGHESTMODSEQ %d] Highest\r\n", highest)
	}
	p := s.cmd.sel
	if p == nil || !p.qresync || p.uidValidity != s.sel.mb.uidValidity {
		return nil
	}
	d, err := s.srv.st.MailboxDelta(s.ctx(), s.user, s.sel.mb.currentName(), p.modseq)
	if err != nil {
		return s.storeErr("select", err)
	}
	s.cmd.beforeOK = append(s.cmd.beforeOK, s.vanishedLine(d.Vanished, p.known)...)
	mb := s.sel.mb
	mb.mu.Lock()
	for _, m := range d.Changed {
		if p.known != nil && !p.known.Contains(m.UID) {
			continue
		}
		if seq := s.sel.view.seqOfLocked(m.UID); seq != 0 {
			s.cmd.beforeOK = appendFlagsFetch(s.cmd.beforeOK, seq, m.UID, flagUpdate{m.Flags, m.ModSeq}, true)
		}
	}
	mb.mu.Unlock()
	return nil
}

// taggedLine rewrites go-imap's tagged answer to the command: what the
// session left to write before an OK, and STORE's MODIFIED.
func (s *session) taggedLine(line []byte) []byte {
	_, rest, _ := bytes.Cut(line, []byte(" "))
	if !bytes.HasPrefix(rest, []byte("OK")) {
		return line
	}
	out := s.cmd.beforeOK
	s.cmd.beforeOK = nil
	if s.cmd.modified != "" {
		tag, _, _ := bytes.Cut(line, []byte(" "))
		line = fmt.Appendf(nil, "%s OK [MODIFIED %s] Conditional STORE failed\r\n", tag, s.cmd.modified)
	}
	if out == nil {
		return line
	}
	return append(out, line...)
}

// untaggedLine adds MODSEQ to a FETCH response, HIGHESTMODSEQ to STATUS,
// the highest MODSEQ to SEARCH and ESEARCH, and the front's capabilities
// to ENABLED.
func (s *session) untaggedLine(line []byte) []byte {
	body := bytes.TrimSuffix(line, []byte("\r\n"))
	switch {
	case s.cmd.noteModSeq != 0 && isFetchLine(body):
		i := bytes.Index(body, []byte(" FETCH (")) + len(" FETCH (")
		m := s.cmd.noteModSeq
		s.cmd.noteModSeq = 0
		sep := " "
		if body[i] == ')' {
			sep = ""
		}
		return fmt.Appendf(nil, "%sMODSEQ (%d)%s%s", line[:i], m, sep, line[i:])
	case s.cmd.statusSet && bytes.HasPrefix(body, []byte("* STATUS ")) && bytes.HasSuffix(body, []byte(")")):
		s.cmd.statusSet = false
		return fmt.Appendf(nil, "%s HIGHESTMODSEQ %d)\r\n", body[:len(body)-1], s.cmd.statusValue)
	case s.cmd.searchHighest != 0 && (bytes.Equal(body, []byte("* SEARCH")) || bytes.HasPrefix(body, []byte("* SEARCH "))):
		return fmt.Appendf(nil, "%s (MODSEQ %d)\r\n", body, s.cmd.searchHighest)
	case s.cmd.searchHighest != 0 && bytes.HasPrefix(body, []byte("* ESEARCH ")):
		return fmt.Appendf(nil, "%s MODSEQ %d\r\n", body, s.cmd.searchHighest)
	case len(s.cmd.enabled) > 0 && (bytes.Equal(body, []byte("* ENABLED")) || bytes.HasPrefix(body, []byte("* ENABLED "))):
		caps := s.cmd.enabled
		s.cmd.enabled = nil
		return fmt.Appendf(nil, "%s %s\r\n", body, strings.Join(caps, " "))
	}
	return line
}

// isFetchLine reports whether a response is "* n FETCH (...".
func isFetchLine(b []byte) bool {
	rest, ok := bytes.CutPrefix(b, []byte("* "))
	if !ok {
		return false
	}
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	return n > 0 && bytes.HasPrefix(rest[n:], []byte(" FETCH ("))
}

// modifiedSet formats STORE's MODIFIED set: sequence numbers, or UIDs for
// UID STORE.
func (s *session) modifiedSet(modified resilmail.UIDSet, uid bool, items []item) string {
	if modified.IsEmpty() {
		return ""
	}
	if uid {
		return modified.String()
	}
	var seqs imap.SeqSet
	for _, it := range items {
		if modified.Contains(it.uid) {
			seqs.AddNum(it.seq)
		}
	}
	return seqs.String()
}
