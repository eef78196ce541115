package passwd

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"
)

// Scheme names, as they appear between braces in the file.
const (
	SchemePlain       = "PLAIN"
	SchemeCleartext   = "CLEARTEXT"
	SchemeBlfCrypt    = "BLF-CRYPT"
	SchemeSHA512Crypt = "SHA512-CRYPT"
)

// MaxFileSize is the largest passwd-file read, in bytes.
const MaxFileSize = 64 << 20

// maxLine is the longest line accepted, in bytes.
const maxLine = 64 << 10

// ErrAuthFailed is returned by [File.Authenticate] and [Users.Check] for an
// unknown user or a wrong password (the two are not told apart).
var ErrAuthFailed = errors.New("passwd: authentication failed")

// ErrSyntax is wrapped by the errors of [Parse] for a line it cannot read.
var ErrSyntax = errors.New("passwd: syntax error")

// entry is one user's password: the scheme and what follows it.
type entry struct {
	scheme string
	secret string
}

// Users is the parsed content of a passwd-file. The zero value has no
// user. It is immutable and safe for concurrent use.
type Users struct {
	m map[string]entry
}

// Len returns the number of users.
func (u *Users) Len() int { return len(u.m) }

// Names returns the user names, in no particular order.
func (u *Users) Names() []string {
	out := make([]string, 0, len(u.m))
	for n := range u.m {
		out = append(out, n)
	}
	return out
}

// dummyHash is checked for unknown users, so that they cost as much as
// known ones.
var dummyHash = []byte("$2y$10$2aiKnP5gS5u27IXgR6/Q9uw.MJ8z9rn/vyjqnnv31PKgCm9J/0DtG")

// Check returns nil when password is user's, [ErrAuthFailed] when it is not
// or the user is unknown.
func (u *Users) Check(user, password string) error {
	e, ok := u.m[user]
	if !ok {
		bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
		return ErrAuthFailed
	}
	good, err := verify(e, password)
	if err != nil || !good {
		return ErrAuthFailed
	}
	return nil
}

func verify(e entry, password string) (bool, error) {
	switch e.scheme {
	case SchemePlain, SchemeCleartext:
		return subtle.ConstantTimeCompare([]byte(e.secret), []byte(password)) == 1, nil
	case SchemeBlfCrypt:
		err := bcrypt.CompareHashAndPassword([]byte(e.secret), []byte(password))
		return err == nil, nil
	case SchemeSHA512Crypt:
		return verifySHA512Crypt(e.secret, password)
	}
	return false, fmt.Errorf("passwd: unknown scheme %q", e.scheme)
}

// Parse reads a passwd-file's content (see the package documentation). Its
// errors wrap [ErrSyntax] and name the line; they never quote a password.
func Parse(data []byte) (*Users, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%w: over %d bytes", ErrSyntax, MaxFileSize)
	}
	u := &Users{m: make(map[string]entry)}
	for n := 1; len(data) > 0; n++ {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > maxLine {
			return nil, fmt.Errorf("%w: line %d is over %d bytes", ErrSyntax, n, maxLine)
		}
		if len(bytes.TrimSpace(line)) == 0 || line[0] == '#' {
			continue
		}
		name, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return nil, fmt.Errorf("%w: line %d has no ':' after the user name", ErrSyntax, n)
		}
		if err := checkUser(string(name)); err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrSyntax, n, err)
		}
		pw, _, _ := bytes.Cut(rest, []byte(":"))
		e, err := parsePassword(string(pw))
		if err != nil {
			return nil, fmt.Errorf("%w: line %d (user %q): %v", ErrSyntax, n, name, err)
		}
		if _, dup := u.m[string(name)]; dup {
			return nil, fmt.Errorf("%w: line %d: user %q appears twice", ErrSyntax, n, name)
		}
		u.m[string(name)] = e
	}
	return u, nil
}

func checkUser(name string) error {
	if name == "" || len(name) > 255 {
		return errors.New("user name must have 1 to 255 bytes")
	}
	if !utf8.ValidString(name) {
		return errors.New("user name is not valid UTF-8")
	}
	for _, r := range name {
		if r <= ' ' || r == 0x7f || r == '/' || r == '\\' {
			return fmt.Errorf("user name has a forbidden character %U", r)
		}
	}
	if name == "." || name == ".." {
		return fmt.Errorf("user name %q is not allowed", name)
	}
	return nil
}

func parsePassword(pw string) (entry, error) {
	var e entry
	if rest, ok := strings.CutPrefix(pw, "{"); ok {
		scheme, secret, ok := strings.Cut(rest, "}")
		if !ok {
			return e, errors.New("'{' without '}' in the password")
		}
		e.scheme, e.secret = strings.ToUpper(scheme), secret
	} else {
		switch {
		case strings.HasPrefix(pw, sha512Prefix):
			e.scheme, e.secret = SchemeSHA512Crypt, pw
		case len(pw) > 4 && pw[0] == '$' && pw[1] == '2' && pw[3] == '$':
			e.scheme, e.secret = SchemeBlfCrypt, pw
		case pw == "":
			return e, errors.New("empty password")
		default:
			return e, errors.New("password without a {SCHEME} and not a $6$ or $2y$ hash")
		}
	}
	switch e.scheme {
	case SchemePlain, SchemeCleartext:
		if e.secret == "" {
			return e, errors.New("empty password")
		}
	case SchemeBlfCrypt:
		if _, err := bcrypt.Cost([]byte(e.secret)); err != nil {
			return e, errors.New("malformed BLF-CRYPT hash")
		}
	case SchemeSHA512Crypt:
		rounds, _, _, _, err := sha512Parts(e.secret)
		if err != nil {
			return e, err
		}
		if rounds > maxVerifyRounds {
			return e, errors.New("SHA512-CRYPT rounds over 1 000 000")
		}
	default:
		return e, fmt.Errorf("unknown scheme {%s} (want PLAIN, CLEARTEXT, BLF-CRYPT or SHA512-CRYPT)", e.scheme)
	}
	return e, nil
}

// Options configures a [File]; nil means defaults.
type Options struct {
	// Logger receives reload failures and successes; nil is slog.Default().
	Logger *slog.Logger
}

// File is a passwd-file that is read again when it changes. It is safe for
// concurrent use.
type File struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	users   *Users
	stamp   stamp // of the last read, good or not
	lastErr error
}

// stamp identifies a version of the file on disk.
type stamp struct {
	size  int64
	mtime time.Time
	ino   uint64
}

// Open reads the passwd-file at path. It fails if the file cannot be read
// or parsed: a server must not start with no users by mistake.
func Open(path string, opts *Options) (*File, error) {
	f := &File{path: path, log: slog.Default()}
	if opts != nil && opts.Logger != nil {
		f.log = opts.Logger
	}
	st, err := statFile(path)
	if err != nil {
		return nil, fmt.Errorf("passwd: %w", err)
	}
	u, err := readFile(path)
	if err != nil {
		return nil, err
	}
	f.users, f.stamp = u, st
	return f, nil
}

func statFile(path string) (stamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}, err
	}
	s := stamp{size: fi.Size(), mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = sys.Ino
	}
	return s, nil
}

func readFile(path string) (*Users, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("passwd: %w", err)
	}
	defer fh.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(fh, MaxFileSize+1)); err != nil {
		return nil, fmt.Errorf("passwd: reading %s: %w", path, err)
	}
	u, err := Parse(buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return u, nil
}

// Reload reads the file again if it changed since the last read and
// returns the users in force. When the new content does not read, the last
// good users stay in force and the error is returned (and logged once).
func (f *File) Reload() (*Users, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := statFile(f.path)
	if err != nil {
		if !errors.Is(f.lastErr, err) {
			f.log.Error("passwd: file unreadable; keeping the last good users", "path", f.path, "err", err)
		}
		f.lastErr = err
		return f.users, fmt.Errorf("passwd: %w", err)
	}
	if st == f.stamp {
		return f.users, f.lastErr
	}
	f.stamp = st
	u, err := readFile(f.path)
	if err != nil {
		f.lastErr = err
		f.log.Error("passwd: file changed but does not read; keeping the last good users", "path", f.path, "err", err)
		return f.users, err
	}
	f.users, f.lastErr = u, nil
	f.log.Info("passwd: reloaded", "path", f.path, "users", u.Len())
	return u, nil
}

// Users returns the users in force, after reloading the file if it
// changed.
func (f *File) Users() *Users {
	u, _ := f.Reload()
	return u
}

// Authenticate returns nil when password is user's in the file's current
// content, and [ErrAuthFailed] otherwise.
func (f *File) Authenticate(user, password string) error {
	return f.Users().Check(user, password)
}
