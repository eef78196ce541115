package imapstore

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/mail"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message/textproto"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

// item is a message of the session's view: its sequence number as the
// client knows it and its UID.
type item struct {
	seq uint32
	uid uint32
}

// resolve returns the messages of the selected mailbox that numSet names,
// in order, as the client sees the mailbox ("*" is the last message).
func (s *session) resolve(numSet imap.NumSet) ([]item, error) {
	if s.sel == nil {
		return nil, noErr(imap.ResponseCodeClientBug, "No mailbox selected")
	}
	if imap.IsSearchRes(numSet) {
		numSet = s.sel.searchRes
	}
	mb := s.sel.mb
	mb.mu.Lock()
	defer mb.mu.Unlock()
	uids := s.sel.view.uidsLocked()
	var out []item
	switch set := numSet.(type) {
	case imap.SeqSet:
		set = staticSeq(set, uint32(len(uids)))
		for i, uid := range uids {
			if seq := uint32(i) + 1; set.Contains(seq) {
				out = append(out, item{seq, uid})
			}
		}
	case imap.UIDSet:
		var max uint32
		if len(uids) > 0 {
			max = uids[len(uids)-1]
		}
		set = staticUID(set, max)
		for i, uid := range uids {
			if set.Contains(imap.UID(uid)) {
				out = append(out, item{uint32(i) + 1, uid})
			}
		}
	}
	return out, nil
}

func staticSeq(set imap.SeqSet, max uint32) imap.SeqSet {
	out := make(imap.SeqSet, len(set))
	copy(out, set)
	for i := range out {
		staticRange(&out[i].Start, &out[i].Stop, max)
	}
	return out
}

func staticUID(set imap.UIDSet, max uint32) imap.UIDSet {
	out := make(imap.UIDSet, len(set))
	copy(out, set)
	for i := range out {
		staticRange((*uint32)(&out[i].Start), (*uint32)(&out[i].Stop), max)
	}
	return out
}

func staticRange(start, stop *uint32, max uint32) {
	dyn := false
	if *start == 0 {
		*start, dyn = max, true
	}
	if *stop == 0 {
		*stop, dyn = max, true
	}
	if dyn && *start > *stop {
		*start, *stop = *stop, *start
	}
}

func uidSetOf(items []item) resilmail.UIDSet {
	var set resilmail.UIDSet
	for _, it := range items {
		set = set.Add(it.uid)
	}
	return set
}

// metadata returns the store's metadata of items, by UID.
func (s *session) metadata(items []item) (map[uint32]store.Message, error) {
	if len(items) == 0 {
		return nil, nil
	}
	msgs, err := s.srv.st.Fetch(s.ctx(), s.user, s.sel.mb.currentName(), store.Query{UIDs: uidSetOf(items)})
	if err != nil {
		return nil, s.storeErr("fetch", err)
	}
	out := make(map[uint32]store.Message, len(msgs))
	for _, m := range msgs {
		out[m.UID] = m
	}
	return out, nil
}

// structure is what FETCH ENVELOPE and BODYSTRUCTURE need of a body,
// parsed once per body and cached by the store.
type structure struct {
	env *imap.Envelope
	bs  imap.BodyStructure
}

const structureKey = "imapstore.structure.1"

func (s *session) structure(d resilmail.Digest) (*structure, error) {
	v, err := s.srv.st.Derived(s.ctx(), d, structureKey, func(r *store.BodyReader) (any, int64, error) {
		br := bufio.NewReader(r.Section(0, r.Size()))
		h, err := textproto.ReadHeader(br)
		if err != nil {
			h = textproto.Header{}
		}
		st := &structure{env: imapserver.ExtractEnvelope(h)}
		st.bs = imapserver.ExtractBodyStructure(r.Section(0, r.Size()))
		return st, structureSize(st.bs), nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*structure), nil
}

// Fetch answers FETCH: flags, dates, sizes, ENVELOPE and BODYSTRUCTURE
// from the cached parse, BODY[] streamed from the body's file (a whole
// body verified as it goes), sections and BINARY from a partial read.
func (s *session) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	items, err := s.resolve(numSet)
	if err != nil {
		return err
	}
	// A non-peek body fetch sets \Seen (not in a read-only mailbox).
	setSeen := false
	for _, bs := range options.BodySection {
		setSeen = setSeen || !bs.Peek
	}
	for _, bs := range options.BinarySection {
		setSeen = setSeen || !bs.Peek
	}
	setSeen = setSeen && !s.sel.readOnly
	meta, err := s.metadata(items)
	if err != nil {
		return err
	}
	if since := s.cmd.changedSince; since > 0 {
		// RFC 7162 §3.1.4.1: only messages changed after since.
		kept := items[:0]
		for _, it := range items {
			if m, ok := meta[it.uid]; ok && m.ModSeq > since {
				kept = append(kept, it)
			}
		}
		items = kept
	}
	if setSeen {
		var unseen resilmail.UIDSet
		for _, it := range items {
			if m, ok := meta[it.uid]; ok && !hasFlag(m.Flags, store.FlagSeen) {
				unseen = unseen.Add(it.uid)
			}
		}
		if !unseen.IsEmpty() {
			if _, err := s.srv.st.AddFlags(s.ctx(), s.user, s.sel.mb.currentName(), unseen, []string{store.FlagSeen}); err != nil && !errors.Is(err, store.ErrReadOnly) {
				return s.storeErr("fetch", err)
			}
			s.refreshSelected(s.sel.view)
			if meta, err = s.metadata(items); err != nil {
				return err
			}
		}
	}
	for _, it := range items {
		m, ok := meta[it.uid]
		if !ok {
			continue // expunged meanwhile
		}
		if err := s.fetchOne(w, it, m, options, setSeen); err != nil {
			return err
		}
	}
	return nil
}

func hasFlag(flags []string, f string) bool {
	for _, g := range flags {
		if strings.EqualFold(g, f) {
			return true
		}
	}
	return false
}

func (s *session) fetchOne(w *imapserver.FetchWriter, it item, m store.Message, o *imap.FetchOptions, seenSet bool) (err error) {
	if s.cmd.fetchModSeq || (s.condstore && (o.Flags || seenSet)) {
		s.front.noteModSeq(m.ModSeq)
	}
	rw := w.CreateMessage(it.seq)
	// The response holds the connection's writer until it is closed: close
	// it on every path, or the tagged answer would wait forever.
	closed := false
	defer func() {
		if !closed {
			if cerr := rw.Close(); err == nil {
				err = cerr
			}
		}
	}()
	if o.UID {
		rw.WriteUID(imap.UID(it.uid))
	}
	if o.Flags || seenSet {
		s.sent(it.uid, m.ModSeq)
		rw.WriteFlags(imapFlags(m.Flags, false))
	}
	if o.InternalDate {
		rw.WriteInternalDate(m.InternalDate)
	}
	if o.RFC822Size {
		rw.WriteRFC822Size(m.Size)
	}
	if o.Envelope || o.BodyStructure != nil {
		st, err := s.structure(m.Digest)
		if err != nil {
			return s.storeErr("fetch", err)
		}
		if o.Envelope {
			rw.WriteEnvelope(st.env)
		}
		if o.BodyStructure != nil {
			rw.WriteBodyStructure(st.bs)
		}
	}
	if len(o.BodySection) == 0 && len(o.BinarySection) == 0 && len(o.BinarySectionSize) == 0 {
		return nil
	}
	r, err := s.srv.st.OpenBody(s.ctx(), m.Digest)
	if err != nil {
		return s.storeErr("fetch", err)
	}
	defer r.Close()
	for _, sec := range o.BodySection {
		whole := len(sec.Part) == 0 && sec.Specifier == imap.PartSpecifierNone && len(sec.HeaderFields) == 0 && len(sec.HeaderFieldsNot) == 0
		if whole {
			var src io.Reader
			size := r.Size()
			if sec.Partial != nil {
				off := min(sec.Partial.Offset, size)
				size = min(sec.Partial.Size, size-off)
				src = r.Section(off, size)
			} else {
				src = r.Verified()
			}
			wc := rw.WriteBodySection(sec, size)
			if _, err := io.Copy(wc, src); err != nil {
				// The literal is cut short: the client must not take what
				// it got for the message.
				s.conn.NetConn().Close()
				return s.storeErr("fetch", err)
			}
			if err := wc.Close(); err != nil {
				return err
			}
			continue
		}
		var b []byte
		if hdr, ok := topLevel(sec); ok {
			// BODY[HEADER] and BODY[TEXT] of the message: its bytes as
			// stored, found without parsing it.
			n, err := headerLen(r, r.Size())
			if err != nil {
				return s.storeErr("fetch", err)
			}
			var src *io.SectionReader
			if hdr {
				src = r.Section(0, n)
			} else {
				src = r.Section(n, r.Size()-n)
			}
			b = make([]byte, src.Size())
			if _, err := io.ReadFull(src, b); err != nil {
				return s.storeErr("fetch", err)
			}
			if sec.Partial != nil {
				off := min(sec.Partial.Offset, int64(len(b)))
				b = b[off:min(off+sec.Partial.Size, int64(len(b)))]
			}
		} else {
			b = imapserver.ExtractBodySection(bufio.NewReaderSize(r.Section(0, r.Size()), 16<<10), sec)
		}
		wc := rw.WriteBodySection(sec, int64(len(b)))
		wc.Write(b)
		if err := wc.Close(); err != nil {
			return err
		}
	}
	for _, sec := range o.BinarySection {
		b := imapserver.ExtractBinarySection(r.Section(0, r.Size()), sec)
		wc := rw.WriteBinarySection(sec, int64(len(b)))
		wc.Write(b)
		if err := wc.Close(); err != nil {
			return err
		}
	}
	for _, sec := range o.BinarySectionSize {
		rw.WriteBinarySectionSize(sec, imapserver.ExtractBinarySectionSize(r.Section(0, r.Size()), sec))
	}
	closed = true
	return rw.Close()
}

// Store answers STORE: flags set, added or removed, then the new flags
// unless .SILENT.
func (s *session) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	items, err := s.resolve(numSet)
	if err != nil {
		return err
	}
	if s.sel.readOnly {
		return noErr(imap.ResponseCodeCannot, "Mailbox is read-only")
	}
	if err := s.writable(); err != nil {
		return err
	}
	set := uidSetOf(items)
	var fl []string
	for _, f := range flags.Flags {
		if f != flagRecent {
			fl = append(fl, string(f))
		}
	}
	var modified resilmail.UIDSet
	if !set.IsEmpty() {
		op := resilmail.FlagsSet
		switch flags.Op {
		case imap.StoreFlagsAdd:
			op = resilmail.FlagsAdd
		case imap.StoreFlagsDel:
			op = resilmail.FlagsRemove
		}
		since := ^uint64(0)
		if s.cmd.conditional {
			since = s.cmd.unchangedSince
		}
		// The check of UNCHANGEDSINCE and the change are one step in the
		// store: no other session's write comes between them.
		_, modified, err = s.srv.st.StoreFlagsIf(s.ctx(), s.user, s.sel.mb.currentName(), set, op, fl, since)
		if err != nil {
			return s.storeErr("store", err)
		}
		s.refreshSelected(s.sel.view)
	}
	_, isUID := numSet.(imap.UIDSet)
	s.cmd.modified = s.modifiedSet(modified, isUID, items)
	if flags.Silent && !s.cmd.conditional {
		return nil
	}
	meta, err := s.metadata(items)
	if err != nil {
		return err
	}
	for _, it := range items {
		m, ok := meta[it.uid]
		if !ok || modified.Contains(it.uid) {
			continue
		}
		if flags.Silent {
			// RFC 7162 §3.1.3: with .SILENT, a conditional STORE still
			// gives each message's new MODSEQ.
			s.front.noteModSeq(m.ModSeq)
			rw := w.CreateMessage(it.seq)
			rw.WriteUID(imap.UID(it.uid))
			if err := rw.Close(); err != nil {
				return err
			}
			continue
		}
		if s.condstore {
			s.front.noteModSeq(m.ModSeq)
		}
		s.sent(it.uid, m.ModSeq)
		rw := w.CreateMessage(it.seq)
		rw.WriteUID(imap.UID(it.uid))
		rw.WriteFlags(imapFlags(m.Flags, false))
		if err := rw.Close(); err != nil {
			return err
		}
	}
	return nil
}

// Expunge removes the messages marked \Deleted (among uids, for UID
// EXPUNGE); the EXPUNGE responses follow from the mailbox's view.
func (s *session) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	if s.sel == nil {
		return noErr(imap.ResponseCodeClientBug, "No mailbox selected")
	}
	if s.sel.readOnly {
		return noErr(imap.ResponseCodeCannot, "Mailbox is read-only")
	}
	if err := s.writable(); err != nil {
		return err
	}
	var q store.Query
	if uids != nil {
		for _, r := range *uids {
			start, stop := uint32(r.Start), uint32(r.Stop)
			if stop == 0 {
				stop = ^uint32(0) - 1
			}
			if start == 0 {
				start = stop
			}
			q.UIDs = q.UIDs.AddRange(start, stop)
		}
	}
	msgs, err := s.srv.st.Fetch(s.ctx(), s.user, s.sel.mb.currentName(), q)
	if err != nil {
		return s.storeErr("expunge", err)
	}
	var del resilmail.UIDSet
	for _, m := range msgs {
		if hasFlag(m.Flags, store.FlagDeleted) {
			del = del.Add(m.UID)
		}
	}
	if del.IsEmpty() {
		return nil
	}
	if _, err := s.srv.st.Expunge(s.ctx(), s.user, s.sel.mb.currentName(), del); err != nil {
		return s.storeErr("expunge", err)
	}
	s.refreshSelected(nil)
	return nil
}

func toIMAPUIDs(set resilmail.UIDSet) imap.UIDSet {
	var out imap.UIDSet
	for _, r := range set {
		out = append(out, imap.UIDRange{Start: imap.UID(r.Start), Stop: imap.UID(r.Stop)})
	}
	return out
}

// Copy copies messages to another mailbox (COPYUID in the answer).
func (s *session) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	items, err := s.resolve(numSet)
	if err != nil {
		return nil, err
	}
	to, err := s.name(dest)
	if err != nil {
		return nil, err
	}
	if err := s.writable(); err != nil {
		return nil, err
	}
	res, err := s.srv.st.Copy(s.ctx(), s.user, s.sel.mb.currentName(), uidSetOf(items), to)
	if errors.Is(err, store.ErrNotFound) {
		return nil, noErr(imap.ResponseCodeTryCreate, "No such mailbox")
	}
	if err != nil {
		return nil, s.storeErr("copy", err)
	}
	s.refreshSelected(nil)
	return &imap.CopyData{UIDValidity: res.UIDValidity, SourceUIDs: toIMAPUIDs(res.Source), DestUIDs: toIMAPUIDs(res.Dest)}, nil
}

// Move moves messages (RFC 6851): COPYUID first, then the EXPUNGEs.
func (s *session) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	items, err := s.resolve(numSet)
	if err != nil {
		return err
	}
	to, err := s.name(dest)
	if err != nil {
		return err
	}
	if s.sel.readOnly {
		return noErr(imap.ResponseCodeCannot, "Mailbox is read-only")
	}
	if err := s.writable(); err != nil {
		return err
	}
	res, err := s.srv.st.Move(s.ctx(), s.user, s.sel.mb.currentName(), uidSetOf(items), to)
	if errors.Is(err, store.ErrNotFound) {
		return noErr(imap.ResponseCodeTryCreate, "No such mailbox")
	}
	if err != nil {
		return s.storeErr("move", err)
	}
	if !res.Source.IsEmpty() {
		if err := w.WriteCopyData(&imap.CopyData{UIDValidity: res.UIDValidity, SourceUIDs: toIMAPUIDs(res.Source), DestUIDs: toIMAPUIDs(res.Dest)}); err != nil {
			return err
		}
	}
	s.refreshSelected(nil)
	return nil
}

// Search answers SEARCH over the session's view: every key go-imap
// parses; header and text keys read the message (case-insensitive
// substring of the raw text).
func (s *session) Search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	items, err := s.resolve(imap.SeqSet{{Start: 1, Stop: 0}})
	if err != nil {
		return nil, err
	}
	meta, err := s.metadata(items)
	if err != nil {
		return nil, err
	}
	max := uint32(len(items))
	var maxUID uint32
	if len(items) > 0 {
		maxUID = items[len(items)-1].uid
	}
	s.searchModSeq(criteria)
	staticCriteria(criteria, max, maxUID, s.sel.searchRes)
	var (
		data   imap.SearchData
		seqSet imap.SeqSet
		uidSet imap.UIDSet
	)
	matches, err := s.matchAll(items, meta, criteria)
	if err != nil {
		return nil, err
	}
	for i, it := range items {
		if !matches[i] {
			continue
		}
		if len(s.cmd.searchMarks) > 0 {
			if m := meta[it.uid].ModSeq; m > s.cmd.searchHighest {
				s.cmd.searchHighest = m
			}
		}
		uidSet.AddNum(imap.UID(it.uid))
		num := it.seq
		if kind == imapserver.NumKindUID {
			num = it.uid
		}
		seqSet.AddNum(it.seq)
		if data.Min == 0 || num < data.Min {
			data.Min = num
		}
		data.Max = max32(data.Max, num)
		data.Count++
	}
	if kind == imapserver.NumKindUID {
		data.All = uidSet
	} else {
		data.All = seqSet
	}
	if options != nil && options.ReturnSave {
		s.sel.searchRes = uidSet
	}
	return &data, nil
}

func max32(a, b uint32) uint32 {
	if a > b {
		return a
	}
	return b
}

func staticCriteria(c *imap.SearchCriteria, max, maxUID uint32, res imap.UIDSet) {
	var seqs []imap.SeqSet
	for _, s := range c.SeqNum {
		if imap.IsSearchRes(s) {
			c.UID = append(c.UID, res)
			continue
		}
		seqs = append(seqs, staticSeq(s, max))
	}
	c.SeqNum = seqs
	for i := range c.UID {
		if imap.IsSearchRes(c.UID[i]) {
			c.UID[i] = res
		}
		c.UID[i] = staticUID(c.UID[i], maxUID)
	}
	for i := range c.Not {
		staticCriteria(&c.Not[i], max, maxUID, res)
	}
	for i := range c.Or {
		staticCriteria(&c.Or[i][0], max, maxUID, res)
		staticCriteria(&c.Or[i][1], max, maxUID, res)
	}
}

// matchAll evaluates criteria on every item; when they read messages
// (header or text keys) the messages are read by one worker per CPU.
func (s *session) matchAll(items []item, meta map[uint32]store.Message, criteria *imap.SearchCriteria) ([]bool, error) {
	out := make([]bool, len(items))
	workers := 1
	if readsMessages(criteria) && len(items) > 64 {
		workers = runtime.GOMAXPROCS(0)
	}
	var (
		next   atomic.Int64
		wg     sync.WaitGroup
		errMu  sync.Mutex
		first  error
		failed atomic.Bool
	)
	for range workers {
		wg.Go(func() {
			var buf []byte
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= len(items) {
					return
				}
				m, ok := meta[items[i].uid]
				if !ok {
					continue
				}
				c := &candidate{s: s, it: items[i], m: m, buf: buf}
				match, err := c.match(criteria)
				buf = c.buf
				c.close()
				if err != nil {
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
					failed.Store(true)
					return
				}
				out[i] = match
			}
		})
	}
	wg.Wait()
	return out, first
}

// readsMessages reports whether criteria need the messages' content.
func readsMessages(c *imap.SearchCriteria) bool {
	if len(c.Header) > 0 || len(c.Body) > 0 || len(c.Text) > 0 || !c.SentSince.IsZero() || !c.SentBefore.IsZero() {
		return true
	}
	for i := range c.Not {
		if readsMessages(&c.Not[i]) {
			return true
		}
	}
	for i := range c.Or {
		if readsMessages(&c.Or[i][0]) || readsMessages(&c.Or[i][1]) {
			return true
		}
	}
	return false
}

// lowerASCII folds A-Z in b to a-z, in place: text keys match without
// regard to ASCII case (other characters as they are stored).
func lowerASCII(b []byte) {
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
}

// candidate is a message being matched, with its header and body read at
// most once.
type candidate struct {
	s      *session
	it     item
	m      store.Message
	r      *store.BodyReader
	header *textproto.Header
	raw    []byte // the whole message, ASCII lower-cased (in buf)
	buf    []byte // reused between candidates of one worker
	hdrLen int

	decode  int8   // 0 not known yet, 1 the raw text needs decoding, -1 not
	decoded []byte // decodeForSearch's text, folded
	decLen  int    // its header's length
}

// textFor returns the text a key is matched against, where its body
// starts, and the key folded as the text is: the raw bytes (ASCII
// lower-cased) for an ASCII key in a message that needs no decoding, else
// the decoded text (Unicode case-folded).
func (c *candidate) textFor(key string) (text []byte, body int, folded []byte, err error) {
	raw, err := c.text()
	if err != nil {
		return nil, 0, nil, err
	}
	if c.decode == 0 {
		c.decode = -1
		if needsDecoding(raw) {
			c.decode = 1
		}
	}
	if c.decode < 0 && isASCII(key) {
		k := []byte(key)
		lowerASCII(k)
		return raw, c.hdrLen, k, nil
	}
	if c.decoded == nil {
		// The raw bytes are ASCII lower-cased: decode from the file.
		orig := make([]byte, c.r.Size())
		if _, err := c.r.ReadAt(orig, 0); err != nil && !errors.Is(err, io.EOF) {
			return nil, 0, nil, c.s.storeErr("search", err)
		}
		c.decoded, c.decLen = decodeForSearch(orig)
	}
	return c.decoded, c.decLen, fold([]byte(key)), nil
}

func (c *candidate) close() {
	if c.r != nil {
		c.r.Close()
	}
}

func (c *candidate) open() error {
	if c.r != nil {
		return nil
	}
	r, err := c.s.srv.st.OpenBody(c.s.ctx(), c.m.Digest)
	if err != nil {
		return c.s.storeErr("search", err)
	}
	c.r = r
	return nil
}

func (c *candidate) hdr() (*textproto.Header, error) {
	if c.header != nil {
		return c.header, nil
	}
	if err := c.open(); err != nil {
		return nil, err
	}
	h, err := textproto.ReadHeader(bufio.NewReader(c.r.Section(0, c.r.Size())))
	if err != nil {
		h = textproto.Header{}
	}
	c.header = &h
	return c.header, nil
}

func (c *candidate) text() ([]byte, error) {
	if c.raw != nil {
		return c.raw, nil
	}
	if err := c.open(); err != nil {
		return nil, err
	}
	if int64(cap(c.buf)) < c.r.Size() {
		c.buf = make([]byte, c.r.Size())
	}
	b := c.buf[:c.r.Size()]
	if _, err := c.r.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, c.s.storeErr("search", err)
	}
	c.hdrLen = len(b)
	if n, ok := headerEnd(b); ok {
		c.hdrLen = n
	}
	lowerASCII(b)
	c.raw = b
	return c.raw, nil
}

func (c *candidate) match(cr *imap.SearchCriteria) (bool, error) {
	for _, set := range cr.SeqNum {
		if !set.Contains(c.it.seq) {
			return false, nil
		}
	}
	for _, set := range cr.UID {
		if !set.Contains(imap.UID(c.it.uid)) {
			return false, nil
		}
	}
	if cr.ModSeq != nil && c.m.ModSeq < cr.ModSeq.ModSeq {
		return false, nil
	}
	day := func(t time.Time) time.Time { return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC) }
	if !cr.Since.IsZero() && day(c.m.InternalDate).Before(day(cr.Since)) {
		return false, nil
	}
	if !cr.Before.IsZero() && !day(c.m.InternalDate).Before(day(cr.Before)) {
		return false, nil
	}
	for _, f := range cr.Flag {
		if !hasFlag(c.m.Flags, string(f)) {
			return false, nil
		}
	}
	for _, f := range cr.NotFlag {
		if f != flagRecent && hasFlag(c.m.Flags, string(f)) {
			return false, nil
		}
	}
	if cr.Larger > 0 && c.m.Size <= cr.Larger {
		return false, nil
	}
	if cr.Smaller > 0 && c.m.Size >= cr.Smaller {
		return false, nil
	}
	if !cr.SentSince.IsZero() || !cr.SentBefore.IsZero() || len(cr.Header) > 0 {
		h, err := c.hdr()
		if err != nil {
			return false, err
		}
		if !cr.SentSince.IsZero() || !cr.SentBefore.IsZero() {
			t, err := mail.ParseDate(h.Get("Date"))
			if err != nil {
				return false, nil
			}
			if !cr.SentSince.IsZero() && day(t).Before(day(cr.SentSince)) {
				return false, nil
			}
			if !cr.SentBefore.IsZero() && !day(t).Before(day(cr.SentBefore)) {
				return false, nil
			}
		}
		for _, f := range cr.Header {
			found := false
			key := foldString(f.Value)
			for _, v := range h.Values(f.Key) {
				if f.Value == "" || strings.Contains(foldString(decodeHeader(v)), key) {
					found = true
					break
				}
			}
			if !found {
				return false, nil
			}
		}
	}
	for _, k := range cr.Body {
		text, body, key, err := c.textFor(k)
		if err != nil {
			return false, err
		}
		if !bytes.Contains(text[body:], key) {
			return false, nil
		}
	}
	for _, k := range cr.Text {
		text, _, key, err := c.textFor(k)
		if err != nil {
			return false, err
		}
		if !bytes.Contains(text, key) {
			return false, nil
		}
	}
	for i := range cr.Not {
		ok, err := c.match(&cr.Not[i])
		if err != nil || ok {
			return false, err
		}
	}
	for i := range cr.Or {
		a, err := c.match(&cr.Or[i][0])
		if err != nil {
			return false, err
		}
		if a {
			continue
		}
		b, err := c.match(&cr.Or[i][1])
		if err != nil || !b {
			return false, err
		}
	}
	return true, nil
}

// topLevel reports whether sec is BODY[HEADER] (hdr) or BODY[TEXT] of the
// message itself, without field lists.
func topLevel(sec *imap.FetchItemBodySection) (hdr, ok bool) {
	if len(sec.Part) > 0 || len(sec.HeaderFields) > 0 || len(sec.HeaderFieldsNot) > 0 {
		return false, false
	}
	switch sec.Specifier {
	case imap.PartSpecifierHeader:
		return true, true
	case imap.PartSpecifierText:
		return false, true
	}
	return false, false
}

// headerEnd returns the length of the header in b, with the blank line
// that ends it, as textproto.ReadHeader reads it: up to the first empty
// line, whether its line ends are CRLF or bare LF (a message that starts
// with one has an empty header). ok is false when b holds no empty line.
func headerEnd(b []byte) (n int, ok bool) {
	switch {
	case bytes.HasPrefix(b, []byte("\r\n")):
		return 2, true
	case bytes.HasPrefix(b, []byte("\n")):
		return 1, true
	}
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return 0, false
		}
		i += j + 1
		switch {
		case bytes.HasPrefix(b[i:], []byte("\n")):
			return i + 1, true
		case bytes.HasPrefix(b[i:], []byte("\r\n")):
			return i + 2, true
		case i+1 >= len(b) || (i+2 == len(b) && b[i] == '\r'):
			return 0, false // the next line is not all here yet
		}
	}
}

// headerLen returns the length of the message's header with the blank
// line that ends it (the whole message if there is none), reading only as
// far as needed.
func headerLen(r io.ReaderAt, size int64) (int64, error) {
	return headerLenFrom(r, size, 4096)
}

// headerLenFrom is headerLen reading first initial bytes, then twice as
// many each time.
func headerLenFrom(r io.ReaderAt, size int64, initial int) (int64, error) {
	buf := make([]byte, 0, initial)
	for off := int64(0); off < size; {
		n := min(int64(cap(buf)-len(buf)), size-off)
		if n == 0 {
			buf = append(buf, make([]byte, len(buf))...)[:len(buf)]
			continue
		}
		chunk := buf[len(buf) : len(buf)+int(n)]
		if _, err := r.ReadAt(chunk, off); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		buf = buf[:len(buf)+int(n)]
		off += n
		if off < size && len(buf) < 2 {
			continue
		}
		if end, ok := headerEnd(buf); ok {
			return int64(end), nil
		}
	}
	return size, nil
}
