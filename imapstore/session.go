package imapstore

import (
	"context"
	"errors"
	"sort"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/resilmail/resilmail/internal/loginguard"
	"github.com/resilmail/resilmail/replicate/store"
)

// session is one IMAP connection's state. go-imap calls its methods from
// the connection's goroutine, one command at a time (Idle's updates come
// from the mailbox watcher through the SessionTracker).
type session struct {
	srv   *Server
	conn  *imapserver.Conn
	front *front
	user  string
	sel   *selected

	// condstore and qresync are set once enabled (RFC 7162 §3.1, §3.2.3)
	// and stay for the connection.
	condstore, qresync bool
	cmd                cmdState // the command go-imap runs (condstore.go)
	nonce              string   // makes SEARCH MODSEQ's marker keywords unique
}

// selected is the selected mailbox of a session.
type selected struct {
	mb       *mbox
	view     *view
	readOnly bool
	// searchRes is the result saved by SEARCH RETURN (SAVE).
	searchRes imap.UIDSet
}

var (
	_ imapserver.SessionIMAP4rev2      = (*session)(nil)
	_ imapserver.SessionUnauthenticate = (*session)(nil)
	_ imapserver.SessionAppendLimit    = (*session)(nil)
	_ imapserver.SessionNamespace      = (*session)(nil)
	_ imapserver.SessionMove           = (*session)(nil)
	_ imapserver.Session               = (*session)(nil)
)

func (s *session) ctx() context.Context { return context.Background() }

// Close ends the session.
func (s *session) Close() error {
	s.unselect()
	if s.user != "" {
		s.srv.hub.sessions.Add(-1)
	}
	return nil
}

func noErr(code imap.ResponseCode, text string) error {
	return &imap.Error{Type: imap.StatusResponseTypeNo, Code: code, Text: text}
}

// storeErr turns a store error into the IMAP answer, logging the ones that
// are the server's fault.
func (s *session) storeErr(op string, err error) error {
	var ie *imap.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ie):
		return err
	case errors.Is(err, store.ErrNotFound):
		return noErr(imap.ResponseCodeNonExistent, "No such mailbox or message")
	case errors.Is(err, store.ErrExists):
		return noErr(imap.ResponseCodeAlreadyExists, "Mailbox already exists")
	case errors.Is(err, store.ErrInvalidName):
		return noErr(imap.ResponseCodeCannot, "Invalid mailbox name: "+errText(err))
	case errors.Is(err, store.ErrInvalidFlag):
		return &imap.Error{Type: imap.StatusResponseTypeBad, Code: imap.ResponseCodeClientBug, Text: "Invalid flag: " + errText(err)}
	case errors.Is(err, store.ErrTooLarge):
		return noErr(imap.ResponseCodeTooBig, "Message too large")
	case errors.Is(err, store.ErrReadOnly):
		s.srv.hub.refused.Add(1)
		return noErr(imap.ResponseCodeCannot, "This server is a standby: read-only")
	case errors.Is(err, store.ErrCorrupt):
		s.srv.log.Error("imap: corrupt message refused", "user", s.user, "op", op, "err", err)
		return noErr(imap.ResponseCodeServerBug, "Message damaged on this server; it is being repaired from a replica")
	}
	s.srv.log.Error("imap: store error", "user", s.user, "op", op, "err", err)
	return noErr(imap.ResponseCodeUnavailable, "Temporary server failure")
}

// errText is the part of a store error after its package prefix.
func errText(err error) string {
	t := err.Error()
	if i := strings.LastIndex(t, ": "); i >= 0 {
		return t[i+2:]
	}
	return t
}

// writable refuses a write on a standby before it reaches the store.
func (s *session) writable() error {
	if s.srv.o.ReadOnly() {
		s.srv.hub.refused.Add(1)
		return noErr(imap.ResponseCodeCannot, "This server is a standby: read-only")
	}
	return nil
}

// Login checks the password (only over TLS or loopback, delayed and
// rate-limited on failure) and, on a writable node, creates the user's
// mailboxes at the first login.
func (s *session) Login(username, password string) error {
	err := s.srv.o.Guard.Login(s.ctx(), s.conn.NetConn(), username, func() error {
		return s.srv.auth.Authenticate(username, password)
	})
	switch {
	case errors.Is(err, loginguard.ErrNeedTLS):
		return noErr(imap.ResponseCodePrivacyRequired, "Use TLS to log in")
	case errors.Is(err, loginguard.ErrTooMany):
		s.srv.hub.failed.Add(1)
		return noErr(imap.ResponseCodeUnavailable, "Too many failed logins; try later")
	case err != nil:
		s.srv.hub.failed.Add(1)
		return imapserver.ErrAuthFailed
	}
	if err := store.ValidateUser(username); err != nil {
		return imapserver.ErrAuthFailed
	}
	if err := s.provision(username); err != nil {
		return err
	}
	s.user = username
	s.srv.hub.sessions.Add(1)
	return nil
}

// provision creates, on a writable node, the user and INBOX if missing
// and any missing special-use mailbox (as Dovecot's auto=subscribe does:
// a client expects them).
func (s *session) provision(user string) error {
	ctx := s.ctx()
	boxes, err := s.srv.st.ListMailboxes(ctx, user)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return s.storeErr("login", err)
	}
	have := make(map[string]bool, len(boxes))
	for _, b := range boxes {
		have[b.Name] = true
	}
	missing := !have[store.Inbox]
	for name := range SpecialUse {
		missing = missing || (!have[name] && !s.srv.o.NoSpecialUse)
	}
	if !missing {
		return nil
	}
	if s.srv.o.ReadOnly() {
		if !have[store.Inbox] {
			return noErr(imap.ResponseCodeUnavailable, "No mailbox for this user on this standby yet")
		}
		return nil
	}
	if !have[store.Inbox] {
		if err := s.srv.st.CreateUser(ctx, user); err != nil && !errors.Is(err, store.ErrExists) {
			return s.storeErr("login", err)
		}
		if err := s.srv.st.Subscribe(ctx, user, store.Inbox); err != nil {
			return s.storeErr("login", err)
		}
	}
	if s.srv.o.NoSpecialUse {
		return nil
	}
	for name := range SpecialUse {
		if have[name] {
			continue
		}
		if _, err := s.srv.st.CreateMailbox(ctx, user, name); err != nil && !errors.Is(err, store.ErrExists) {
			return s.storeErr("login", err)
		}
		if err := s.srv.st.Subscribe(ctx, user, name); err != nil {
			return s.storeErr("login", err)
		}
	}
	return nil
}

// Unauthenticate returns to the not-authenticated state.
func (s *session) Unauthenticate() error {
	s.unselect()
	if s.user != "" {
		s.srv.hub.sessions.Add(-1)
	}
	s.user = ""
	return nil
}

// AppendLimit is the largest APPEND accepted.
func (s *session) AppendLimit() uint32 {
	return uint32(min(s.srv.o.MaxMessageSize, int64(^uint32(0))))
}

// Namespace: one personal namespace, "/" as separator.
func (s *session) Namespace() (*imap.NamespaceData, error) {
	return &imap.NamespaceData{Personal: []imap.NamespaceDescriptor{{Prefix: "", Delim: store.Separator}}}, nil
}

// name validates a mailbox name from the client (go-imap decoded modified
// UTF-7 already) and returns the store's canonical form.
func (s *session) name(mailbox string) (string, error) {
	n, err := store.ValidateMailbox(mailbox)
	if err != nil {
		return "", s.storeErr("name", err)
	}
	return n, nil
}

// Select opens a mailbox; on a standby, or for EXAMINE, read-only.
func (s *session) Select(mailbox string, options *imap.SelectOptions) (*imap.SelectData, error) {
	name, err := s.name(mailbox)
	if err != nil {
		return nil, err
	}
	s.unselect()
	mb, err := s.srv.hub.open(s.ctx(), s.user, name)
	if err != nil {
		return nil, s.storeErr("select", err)
	}
	ro := options.ReadOnly || s.srv.o.ReadOnly()
	mb.mu.Lock()
	sel := &selected{mb: mb, view: mb.newViewLocked(), readOnly: ro}
	highest := mb.highest
	data := &imap.SelectData{
		Flags:          []imap.Flag{imap.FlagSeen, imap.FlagAnswered, imap.FlagFlagged, imap.FlagDeleted, imap.FlagDraft},
		PermanentFlags: []imap.Flag{imap.FlagSeen, imap.FlagAnswered, imap.FlagFlagged, imap.FlagDeleted, imap.FlagDraft, imap.FlagWildcard},
		NumMessages:    uint32(len(mb.uids)),
		UIDNext:        imap.UID(mb.uidNext),
		UIDValidity:    mb.uidValidity,
	}
	mb.mu.Unlock()
	if ro {
		data.PermanentFlags = nil
	}
	s.sel = sel
	if err := s.selectExtra(highest); err != nil {
		s.unselect()
		return nil, err
	}
	return data, nil
}

func (s *session) unselect() {
	if s.sel != nil {
		s.sel.mb.closeView(s.sel.view)
		s.srv.hub.release(s.sel.mb)
		s.sel = nil
	}
}

// Unselect closes the mailbox without expunging.
func (s *session) Unselect() error {
	s.unselect()
	return nil
}

// Create creates a mailbox and any missing parent.
func (s *session) Create(mailbox string, options *imap.CreateOptions) error {
	name, err := s.name(strings.TrimSuffix(mailbox, string(store.Separator)))
	if err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	ctx := s.ctx()
	parts := strings.Split(name, string(store.Separator))
	for i := 1; i < len(parts); i++ {
		parent := strings.Join(parts[:i], string(store.Separator))
		if _, err := s.srv.st.CreateMailbox(ctx, s.user, parent); err != nil && !errors.Is(err, store.ErrExists) {
			return s.storeErr("create", err)
		}
	}
	_, err = s.srv.st.CreateMailbox(ctx, s.user, name)
	return s.storeErr("create", err)
}

// Delete deletes a mailbox (not INBOX); mailboxes below it stay.
func (s *session) Delete(mailbox string) error {
	name, err := s.name(mailbox)
	if err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	if name == store.Inbox {
		return noErr(imap.ResponseCodeCannot, "INBOX cannot be deleted")
	}
	return s.storeErr("delete", s.srv.st.DeleteMailbox(s.ctx(), s.user, name))
}

// Rename renames a mailbox and those below it; renaming INBOX moves its
// messages into a new mailbox and leaves INBOX empty (RFC 9051 §6.3.6).
func (s *session) Rename(mailbox, newName string, options *imap.RenameOptions) error {
	from, err := s.name(mailbox)
	if err != nil {
		return err
	}
	to, err := s.name(newName)
	if err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	ctx := s.ctx()
	if from != store.Inbox {
		return s.storeErr("rename", s.srv.st.RenameMailbox(ctx, s.user, from, to))
	}
	if _, err := s.srv.st.CreateMailbox(ctx, s.user, to); err != nil {
		return s.storeErr("rename", err)
	}
	_, err = s.srv.st.Move(ctx, s.user, store.Inbox, nil, to)
	return s.storeErr("rename", err)
}

// Subscribe adds a name to the subscriptions.
func (s *session) Subscribe(mailbox string) error {
	name, err := s.name(mailbox)
	if err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	return s.storeErr("subscribe", s.srv.st.Subscribe(s.ctx(), s.user, name))
}

// Unsubscribe removes a name from the subscriptions.
func (s *session) Unsubscribe(mailbox string) error {
	name, err := s.name(mailbox)
	if err != nil {
		return err
	}
	if err := s.writable(); err != nil {
		return err
	}
	return s.storeErr("unsubscribe", s.srv.st.Unsubscribe(s.ctx(), s.user, name))
}

// List answers LIST and LSUB, with SPECIAL-USE, CHILDREN, LIST-EXTENDED
// (SUBSCRIBED) and LIST-STATUS.
func (s *session) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	if len(patterns) == 1 && patterns[0] == "" {
		// The hierarchy separator.
		return w.WriteList(&imap.ListData{Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}, Delim: store.Separator})
	}
	ctx := s.ctx()
	boxes, err := s.srv.st.ListMailboxes(ctx, s.user)
	if err != nil {
		return s.storeErr("list", err)
	}
	subs, err := s.srv.st.Subscriptions(ctx, s.user)
	if err != nil {
		return s.storeErr("list", err)
	}
	subscribed := make(map[string]bool, len(subs))
	for _, n := range subs {
		subscribed[n] = true
	}
	exists := make(map[string]store.Status, len(boxes))
	names := make([]string, 0, len(boxes))
	for _, b := range boxes {
		exists[b.Name] = b
		names = append(names, b.Name)
	}
	if options.SelectSubscribed {
		names = append(names[:0], subs...)
	}
	sort.Strings(names)
	hasChildren := func(name string) bool {
		for _, b := range boxes {
			if strings.HasPrefix(b.Name, name+string(store.Separator)) {
				return true
			}
		}
		return false
	}
	for _, name := range names {
		match := false
		for _, p := range patterns {
			if imapserver.MatchList(name, store.Separator, ref, p) {
				match = true
				break
			}
		}
		if !match {
			continue
		}
		st, ok := exists[name]
		var attrs []imap.MailboxAttr
		if !ok {
			attrs = append(attrs, imap.MailboxAttrNonExistent)
		} else if hasChildren(name) {
			attrs = append(attrs, imap.MailboxAttrHasChildren)
		} else {
			attrs = append(attrs, imap.MailboxAttrHasNoChildren)
		}
		if a, ok := SpecialUse[name]; ok {
			attrs = append(attrs, a)
		} else if options.SelectSpecialUse {
			continue
		}
		if subscribed[name] && (options.ReturnSubscribed || options.SelectSubscribed) {
			attrs = append(attrs, imap.MailboxAttrSubscribed)
		}
		data := &imap.ListData{Attrs: attrs, Delim: store.Separator, Mailbox: name}
		if options.ReturnStatus != nil && ok {
			data.Status = statusData(st, options.ReturnStatus)
		}
		if err := w.WriteList(data); err != nil {
			return err
		}
	}
	return nil
}

func statusData(st store.Status, o *imap.StatusOptions) *imap.StatusData {
	d := &imap.StatusData{Mailbox: st.Name}
	u32 := func(n int) *uint32 { v := uint32(n); return &v }
	if o.NumMessages {
		d.NumMessages = u32(st.Messages)
	}
	if o.UIDNext {
		d.UIDNext = imap.UID(st.UIDNext)
	}
	if o.UIDValidity {
		d.UIDValidity = st.UIDValidity
	}
	if o.NumUnseen {
		d.NumUnseen = u32(st.Unseen)
	}
	if o.NumRecent {
		d.NumRecent = u32(0)
	}
	if o.Size {
		sz := st.Size
		d.Size = &sz
	}
	return d
}

// Status answers STATUS.
func (s *session) Status(mailbox string, options *imap.StatusOptions) (*imap.StatusData, error) {
	name, err := s.name(mailbox)
	if err != nil {
		return nil, err
	}
	st, err := s.srv.st.MailboxStatus(s.ctx(), s.user, name)
	if err != nil {
		return nil, s.storeErr("status", err)
	}
	if s.cmd.statusModSeq {
		s.cmd.statusValue, s.cmd.statusSet = st.HighestModSeq, true
	}
	return statusData(st, options), nil
}

// Append stores a message; the literal is read from the client as it is
// stored.
func (s *session) Append(mailbox string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	name, err := s.name(mailbox)
	if err != nil {
		return nil, err
	}
	if err := s.writable(); err != nil {
		return nil, err
	}
	if r.Size() > s.srv.o.MaxMessageSize {
		return nil, noErr(imap.ResponseCodeTooBig, "Message too large")
	}
	var flags []string
	for _, f := range options.Flags {
		if f != flagRecent {
			flags = append(flags, string(f))
		}
	}
	ctx := s.ctx()
	uid, err := s.srv.st.Append(ctx, s.user, name, flags, options.Time, r)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, noErr(imap.ResponseCodeTryCreate, "No such mailbox")
		}
		return nil, s.storeErr("append", err)
	}
	st, err := s.srv.st.MailboxStatus(ctx, s.user, name)
	if err != nil {
		return nil, s.storeErr("append", err)
	}
	s.refreshSelected(nil)
	return &imap.AppendData{UID: imap.UID(uid), UIDValidity: st.UIDValidity}, nil
}

// refreshSelected brings the selected mailbox's view up to date after a
// write, so that the next responses include it; flag changes are not
// queued for source.
func (s *session) refreshSelected(source *view) {
	if s.sel == nil {
		return
	}
	if err := s.sel.mb.refresh(s.ctx(), source); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.srv.log.Warn("imap: refreshing the selected mailbox", "user", s.user, "err", err)
	}
}

// Poll writes the pending updates of the selected mailbox: EXISTS,
// EXPUNGE (VANISHED once QRESYNC is enabled) unless allowExpunge is false,
// and FETCH FLAGS (with MODSEQ once CONDSTORE is enabled).
func (s *session) Poll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	if s.sel == nil {
		return nil
	}
	select {
	case <-s.sel.mb.watchChan():
		s.refreshSelected(nil)
	default:
	}
	return s.writePending(s.sel, allowExpunge)
}

func (s *session) writePending(sel *selected, allowExpunge bool) error {
	mb := sel.mb
	mb.mu.Lock()
	b := sel.view.pendingLocked(allowExpunge, s.condstore, s.qresync)
	mb.mu.Unlock()
	if len(b) == 0 {
		return nil
	}
	return s.front.writeOwn(b)
}

// Idle writes the updates of the selected mailbox as they come, until
// stop.
func (s *session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	// go-imap may close the session before this goroutine ends (a
	// client gone while idling): use only what was selected at the start.
	sel := s.sel
	if sel == nil {
		<-stop
		return nil
	}
	for {
		if err := s.writePending(sel, true); err != nil {
			return err
		}
		select {
		case <-sel.view.notify:
		case <-stop:
			return nil
		}
	}
}

func (mb *mbox) watchChan() <-chan struct{} {
	mb.mu.Lock()
	defer mb.mu.Unlock()
	return mb.watch
}
