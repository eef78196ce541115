package intake

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"mime"
	"net"
	"net/mail"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/loginguard"
)

// An Authenticator checks a user's password: nil means the login is good,
// any error that it is not. It is safe for concurrent use. A Dovecot
// passwd-file read by the examples is one.
type Authenticator interface {
	Authenticate(user, password string) error
}

// AuthenticatorFunc adapts a function to the [Authenticator] interface.
type AuthenticatorFunc func(user, password string) error

// Authenticate calls f(user, password).
func (f AuthenticatorFunc) Authenticate(user, password string) error { return f(user, password) }

var _ Authenticator = AuthenticatorFunc(nil)

// A LoginGuard slows password guessing down: Login runs check (which
// returns nil for good credentials) for user on conn, and returns any
// failure only after a delay, or refuses without running check an address
// that failed too often. It is safe for concurrent use.
type LoginGuard interface {
	Login(ctx context.Context, conn net.Conn, user string, check func() error) error
}

// Submission makes a [Backend] a message submission server (RFC 6409, port
// 587 semantics): every transaction needs an authenticated user, who may
// then send to any recipient, as the senders SendAs allows.
type Submission struct {
	// Auth checks the passwords of AUTH PLAIN and AUTH LOGIN (RFC 4954).
	// Both are offered, and accepted, only once the session runs over TLS
	// (STARTTLS through the Listener, or a TLS listener); before that AUTH
	// gets 538 5.7.11. It is required.
	Auth Authenticator
	// Guard delays every failed login and refuses an address with too
	// many recent failures; nil means one of the package's own (1 s delay,
	// 10 failures per address in 5 minutes).
	Guard LoginGuard
	// SendAs reports whether an authenticated user may use from as MAIL
	// FROM; nil means [SendAsSelf].
	SendAs func(user, from string) bool
	// Signer, if set, signs every submitted message (DKIM) before it is
	// queued; see [Signer].
	Signer Signer
	// SpoolDir holds, while it is signed, the part of a submitted message
	// beyond 256 KiB, in a file removed before the reply; "" holds the
	// whole message in memory. Only used with a Signer.
	SpoolDir string

	once  sync.Once
	guard LoginGuard
}

func (s *Submission) loginGuard() LoginGuard {
	s.once.Do(func() {
		s.guard = s.Guard
		if s.guard == nil {
			s.guard = loginguard.New(nil)
		}
	})
	return s.guard
}

// SendAsSelf is the default sender rule of a [Submission]: a user whose
// login name is an address may send as that address, or as that address
// with a "+detail" after its local part (user+news@example.org for
// user@example.org); the domains compare without regard to case, the local
// parts exactly. A login name that is no address may send as nobody, and
// nobody may use the null reverse-path "<>", which is for the bounces a
// server sends.
func SendAsSelf(user, from string) bool {
	ul, ud, ok := strings.Cut(user, "@")
	if !ok || ul == "" || ud == "" {
		return false
	}
	i := strings.LastIndexByte(from, '@')
	if i <= 0 {
		return false
	}
	fl, fd := from[:i], from[i+1:]
	if !strings.EqualFold(fd, ud) {
		return false
	}
	if fl == ul {
		return true
	}
	base, _, found := strings.Cut(fl, "+")
	return found && base == ul
}

// Replies of the submission server.
var (
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	errEncryptFirst = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11}, Message: "Encryption required for requested authentication mechanism: use STARTTLS first"}
	errAuthTooMany  = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many failed logins from your address, try again later"}
	errAuthIdentity = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication failed: authorization identity must be the user"}
	errNotOwned     = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Sender address not owned by the authenticated user"}
)

// tls returns the session's TLS state: the Listener's STARTTLS, or
// go-smtp's own (a TLS listener, or go-smtp's STARTTLS).
func (s *session) tls() (tls.ConnectionState, bool) {
	if st, ok := s.conn.TLSConnectionState(); ok {
		return st, true
	}
	if c, ok := s.conn.Conn().(*Conn); ok {
		return c.TLS()
	}
	return tls.ConnectionState{}, false
}

// AuthMechanisms implements smtp.AuthSession: PLAIN and LOGIN on a
// submission server inside TLS, nothing otherwise.
func (s *session) AuthMechanisms() []string {
	if s.b.Submission == nil {
		return nil
	}
	if _, ok := s.tls(); !ok {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth implements smtp.AuthSession.
func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.b.Submission == nil {
		return nil, smtp.ErrAuthUnsupported
	}
	if _, ok := s.tls(); !ok {
		s.log.Info("smtp: AUTH refused before TLS", "remote", s.remote)
		return nil, errEncryptFirst
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, password string) error {
			if identity != "" && identity != user {
				return errAuthIdentity
			}
			return s.login(user, password)
		}), nil
	case sasl.Login:
		return &loginServer{login: s.login}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// login checks a user's password through the guard and remembers the user.
func (s *session) login(user, password string) error {
	sub := s.b.Submission
	err := sub.loginGuard().Login(context.Background(), s.conn.Conn(), user, func() error {
		if sub.Auth == nil {
			return errors.New("no authenticator")
		}
		return sub.Auth.Authenticate(user, password)
	})
	switch {
	case err == nil:
		s.user = user
		s.log.Info("smtp: authenticated", "remote", s.remote, "user", user)
		return nil
	case errors.Is(err, loginguard.ErrTooMany):
		return errAuthTooMany
	case errors.Is(err, loginguard.ErrNeedTLS):
		return errEncryptFirst
	}
	return smtp.ErrAuthFailed
}

// checkSubmitter applies the submission rules at MAIL FROM.
func (s *session) checkSubmitter(from string) error {
	sub := s.b.Submission
	if s.user == "" {
		return errAuthRequired
	}
	sendAs := sub.SendAs
	if sendAs == nil {
		sendAs = SendAsSelf
	}
	if !sendAs(s.user, from) {
		s.log.Info("smtp: sender refused: not the user's", "remote", s.remote, "user", s.user, "from", from)
		return errNotOwned
	}
	return nil
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): the user name, then the password, each
// after its challenge; a client may send the user name with AUTH.
type loginServer struct {
	login func(user, password string) error
	user  string
	step  int
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		l.step = 1
		if response != nil {
			l.user = string(response)
			l.step = 2
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		l.user, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.login(l.user, string(response))
	}
	return nil, false, errors.New("unexpected response")
}

// maxSubmittedHeader is the longest header a submission may have: the
// server holds it to check From and to look for Date and Message-ID.
const maxSubmittedHeader = 64 << 10

// Replies to a submitted message whose header is refused.
var (
	errHeaderTooLong  = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "message header too long"}
	errHeaderInvalid  = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "message header malformed: it must be header fields, then an empty line"}
	errHeaderFrom     = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "header From malformed or given more than once"}
	errHeaderNotOwned = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "header From not owned by the authenticated user"}
)

// completeHeader checks the header of a submitted message and completes
// it (RFC 6409 section 8). Every address of its From field must be one
// the user may send as (Submission.SendAs), since the message is then
// signed for the domain; a message without From gets one with the
// envelope sender. A message without Date or Message-ID gets them (Date
// now, Message-ID from the queue id and Backend.Hostname). The added
// fields go at the top of the header; the client's bytes follow unchanged.
// A header longer than maxSubmittedHeader, or one that is not a sequence
// of fields followed by an empty line, is refused.
func (s *session) completeHeader(env resilmail.Envelope, src io.Reader) (io.Reader, error) {
	br := bufio.NewReaderSize(src, 4096)
	var head bytes.Buffer
	ended, whole := false, true // the empty line or the end was read; a line was not cut
	for !ended {
		if head.Len() >= maxSubmittedHeader {
			return nil, errHeaderTooLong
		}
		line, err := br.ReadSlice('\n')
		head.Write(line)
		switch {
		case err == bufio.ErrBufferFull:
			whole = false
			continue
		case err == io.EOF:
			ended = true
		case err != nil:
			return nil, err
		default:
			ended = whole && len(bytes.TrimRight(line, "\r\n")) == 0
		}
		whole = true
	}
	fields, tail, err := splitHeader(head.Bytes(), true)
	if err != nil || len(bytes.TrimRight(tail, "\r\n")) != 0 {
		return nil, errHeaderInvalid
	}
	sendAs := s.b.Submission.SendAs
	if sendAs == nil {
		sendAs = SendAsSelf
	}
	hasDate, hasID, froms := false, false, 0
	for _, f := range fields {
		switch {
		case strings.EqualFold(f.name, "Date"):
			hasDate = true
		case strings.EqualFold(f.name, "Message-ID"):
			hasID = true
		case strings.EqualFold(f.name, "From"):
			froms++
			_, value, _ := strings.Cut(string(f.raw), ":")
			value = strings.NewReplacer("\r\n", "", "\n", "").Replace(value) // unfold
			list, err := lenientAddresses.ParseList(value)
			if err != nil || len(list) == 0 || froms > 1 {
				s.log.Info("smtp: message refused: header From malformed", "msg_id", env.ID, "remote", s.remote, "user", s.user)
				return nil, errHeaderFrom
			}
			for _, a := range list {
				if !sendAs(s.user, a.Address) {
					s.log.Info("smtp: message refused: header From not the user's", "msg_id", env.ID, "remote", s.remote, "user", s.user, "header_from", a.Address)
					return nil, errHeaderNotOwned
				}
			}
		}
	}
	added := ""
	if froms == 0 {
		added += "From: <" + env.From + ">\r\n"
	}
	if !hasDate {
		added += "Date: " + time.Now().Format(time.RFC1123Z) + "\r\n"
	}
	if !hasID {
		host := s.b.Hostname
		if host == "" {
			host = "localhost"
		}
		added += "Message-ID: <" + env.ID + "@" + host + ">\r\n"
	}
	return io.MultiReader(strings.NewReader(added), bytes.NewReader(head.Bytes()), br), nil
}

// lenientAddresses parses address lists whatever the charset of their
// display names: only the addresses matter.
var lenientAddresses = &mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}
