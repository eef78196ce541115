// Package lmtpstore is the LMTP front end of the reference mailbox store: a
// go-smtp backend (in LMTP mode) that delivers each message into the INBOX
// of every recipient, answers each recipient on its own once the message
// is durable there, and, in replication's waiting modes, only once the
// replicas have it too. A message stored and then answered 451 because
// the replicas did not acknowledge it in time is remembered in a
// [DeliveryLog], so that the client's retry does not store it twice.
package lmtpstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

// Backend is a go-smtp Backend for an LMTP server (smtp.Server.LMTP set)
// that delivers into Store.
type Backend struct {
	// Store receives the messages.
	Store *store.Store
	// User maps a recipient address to a user of the store; nil means the
	// address in lower case. ok false refuses the recipient as unknown.
	User func(rcpt string) (user string, ok bool)
	// Commit, if set, is called once the message is durable in every
	// accepted recipient's INBOX, with the store's position then: in a
	// waiting replication mode it returns once the replicas have it
	// (replicate's Primary.Await). An error answers every recipient 451,
	// and the client delivers again later.
	Commit func(ctx context.Context, pos uint64) error
	// MaxSize is the largest message accepted; zero means 64 MiB (the
	// store's default limit).
	MaxSize int64
	// Deliveries, if set, remembers the deliveries answered 451 after
	// they were stored (Commit failed), so that the client's retry does
	// not store a second copy: it is answered as Commit then says.
	Deliveries *DeliveryLog
	// Logger receives a line per delivery and per failure; nil means
	// slog.Default().
	Logger *slog.Logger
}

// NewSession implements smtp.Backend.
func (b *Backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	log := b.Logger
	if log == nil {
		log = slog.Default()
	}
	return &session{b: b, log: log, remote: c.Conn().RemoteAddr().String()}, nil
}

type rcpt struct {
	addr, user string
}

type session struct {
	b      *Backend
	log    *slog.Logger
	remote string
	from   string
	envID  string
	rcpts  []rcpt
}

var _ smtp.LMTPSession = (*session)(nil)

func (s *session) Reset()        { s.from, s.envID, s.rcpts = "", "", nil }
func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if from != "" {
		if err := resilmail.CheckAddress(from); err != nil {
			return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "bad sender address"}
		}
	}
	s.from = from
	if opts != nil {
		s.envID = opts.EnvelopeID
	}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := resilmail.CheckAddress(to); err != nil {
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "bad recipient address"}
	}
	user, ok := strings.ToLower(to), true
	if s.b.User != nil {
		user, ok = s.b.User(to)
	}
	if ok {
		_, err := s.b.Store.MailboxStatus(context.Background(), user, store.Inbox)
		switch {
		case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrInvalidName):
			ok = false
		case err != nil:
			s.log.Error("lmtp: cannot look the recipient up", "rcpt", to, "err", err)
			return tempFail("mailbox store unavailable")
		}
	}
	if !ok {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	s.rcpts = append(s.rcpts, rcpt{addr: to, user: user})
	return nil
}

// Data is LMTPData with one status for every recipient.
func (s *session) Data(r io.Reader) error {
	var first error
	err := s.LMTPData(r, statusFunc(func(_ string, err error) {
		if first == nil {
			first = err
		}
	}))
	if err != nil {
		return err
	}
	return first
}

type statusFunc func(rcpt string, err error)

func (f statusFunc) SetStatus(rcpt string, err error) { f(rcpt, err) }

// LMTPData delivers the message to every recipient's INBOX and sets each
// recipient's status: 250 once durable (and replicated, with Commit), a
// temporary failure when the store or replication could not take it.
func (s *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	max := s.b.MaxSize
	if max <= 0 {
		max = 64 << 20
	}
	body, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return err
	}
	if int64(len(body)) > max {
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "message too large"}
	}
	ctx := context.Background()
	start := time.Now()
	replies := make([]error, len(s.rcpts))
	stored := 0
	var (
		digest = resilmail.DigestOf(body)
		keys   []deliveryKey // stored now, for the delivery log
		uids   []uint32
	)
	for i, rc := range s.rcpts {
		var key deliveryKey
		if s.b.Deliveries != nil {
			key = deliveryKeyOf(rc.user, s.from, s.envID, digest)
			if uid, ok := s.b.Deliveries.lookup(key); ok {
				// Stored by an attempt answered 451: answer for that copy.
				stored++
				s.log.Warn("lmtp: delivered again after a 451; not stored twice", "from", s.from, "rcpt", rc.addr,
					"user", rc.user, "uid", uid, "digest", digest.String())
				continue
			}
		}
		uid, err := s.b.Store.Append(ctx, rc.user, store.Inbox, nil, time.Time{}, bytes.NewReader(body))
		if err != nil {
			replies[i] = s.appendFailed(rc, err)
			continue
		}
		stored++
		keys, uids = append(keys, key), append(uids, uid)
		s.log.Info("lmtp: delivered", "from", s.from, "rcpt", rc.addr, "user", rc.user, "uid", uid, "size", len(body))
	}
	if stored > 0 && s.b.Commit != nil {
		if err := s.b.Commit(ctx, s.b.Store.Position()); err != nil {
			s.log.Error("lmtp: stored but not replicated; asking the client to deliver again", "from", s.from, "rcpts", stored, "err", err)
			if s.b.Deliveries != nil && len(keys) > 0 {
				if err := s.b.Deliveries.record(keys, uids); err != nil {
					s.log.Error("lmtp: cannot remember the deliveries answered 451; their retry will store them again", "err", err)
				}
			}
			for i := range replies {
				if replies[i] == nil {
					replies[i] = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 0}, Message: "not replicated yet, try again later"}
				}
			}
		}
	}
	for i, rc := range s.rcpts {
		status.SetStatus(rc.addr, replies[i])
	}
	s.log.Debug("lmtp: transaction", "rcpts", len(s.rcpts), "stored", stored, "took", time.Since(start))
	return nil
}

// appendFailed is the reply for a recipient whose copy could not be stored.
func (s *session) appendFailed(rc rcpt, err error) error {
	s.log.Error("lmtp: delivery failed", "from", s.from, "rcpt", rc.addr, "user", rc.user, "err", err)
	switch {
	case errors.Is(err, store.ErrTooLarge):
		return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "message too large"}
	case errors.Is(err, store.ErrNotFound):
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	default:
		return tempFail(fmt.Sprintf("cannot store the message: %s", brief(err)))
	}
}

// brief names the class of a store error without internal detail.
func brief(err error) string {
	switch {
	case errors.Is(err, store.ErrReadOnly), errors.Is(err, store.ErrFenced):
		return "this server is not the primary"
	case errors.Is(err, store.ErrClosed):
		return "shutting down"
	default:
		return "storage failure"
	}
}

func tempFail(msg string) error {
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: msg}
}
