package store

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/resilmail/resilmail"
)

// Naming limits. Names are compared byte for byte, except that a first
// mailbox name component spelled "inbox" in any case is INBOX.
const (
	// MaxUserLen is the longest user name, in bytes.
	MaxUserLen = resilmail.MaxUserLen
	// MaxMailboxLen is the longest mailbox name, in bytes.
	MaxMailboxLen = resilmail.MaxMailboxLen
	// MaxComponentLen is the longest component of a mailbox name (between
	// separators), in bytes.
	MaxComponentLen = 255
	// Separator is the mailbox hierarchy separator.
	Separator = '/'
	// Inbox is the name of every user's inbox.
	Inbox = "INBOX"
)

// ValidateUser checks a user name: 1 to [MaxUserLen] bytes of valid UTF-8,
// no control characters, white space, '/' or '\', and neither "." nor "..".
func ValidateUser(name string) error {
	if name == "" || len(name) > MaxUserLen {
		return fmt.Errorf("%w: user name must have 1 to %d bytes", ErrInvalidName, MaxUserLen)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("%w: user name %q", ErrInvalidName, name)
	}
	if err := checkChars(name, "/\\", false); err != nil {
		return fmt.Errorf("%w: user name %q: %s", ErrInvalidName, name, err)
	}
	return nil
}

// ValidateMailbox checks a mailbox name and returns its canonical form
// (INBOX in upper case as first component). A name has 1 to [MaxMailboxLen]
// bytes of valid UTF-8 (IMAP's modified UTF-7 is the IMAP layer's business),
// components separated by '/', each of 1 to [MaxComponentLen] bytes (so no
// '/' at either end and none doubled) and neither "." nor "..", no control
// characters, and none of the IMAP wildcards '*' and '%'.
func ValidateMailbox(name string) (string, error) {
	if name == "" || len(name) > MaxMailboxLen {
		return "", fmt.Errorf("%w: mailbox name must have 1 to %d bytes", ErrInvalidName, MaxMailboxLen)
	}
	if err := checkChars(name, "*%", true); err != nil {
		return "", fmt.Errorf("%w: mailbox name %q: %s", ErrInvalidName, name, err)
	}
	rest := name
	for i := 0; ; i++ {
		comp, tail, more := strings.Cut(rest, string(Separator))
		switch {
		case comp == "":
			return "", fmt.Errorf("%w: mailbox name %q has an empty component (leading, trailing or doubled '/')", ErrInvalidName, name)
		case comp == "." || comp == "..":
			return "", fmt.Errorf("%w: mailbox name %q has a %q component", ErrInvalidName, name, comp)
		case len(comp) > MaxComponentLen:
			return "", fmt.Errorf("%w: mailbox name %q has a component over %d bytes", ErrInvalidName, name, MaxComponentLen)
		}
		if i == 0 && comp != Inbox && strings.EqualFold(comp, Inbox) {
			name = Inbox + name[len(comp):]
		}
		if !more {
			break
		}
		rest = tail
	}
	return name, nil
}

// checkChars refuses invalid UTF-8, control characters (C0, DEL, C1),
// Unicode white space (but the ASCII space when space is true), and the
// characters in forbidden.
func checkChars(s, forbidden string, space bool) error {
	for i, r := range s {
		switch {
		case r == utf8.RuneError:
			if _, size := utf8.DecodeRuneInString(s[i:]); size <= 1 {
				return fmt.Errorf("invalid UTF-8 at byte %d", i)
			}
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			return fmt.Errorf("control character %U", r)
		case strings.ContainsRune(forbidden, r):
			return fmt.Errorf("forbidden character %q", r)
		case unicode.IsSpace(r) && (r != ' ' || !space):
			return fmt.Errorf("white space %U", r)
		}
	}
	return nil
}

// isUnder reports whether name is parent or below it in the hierarchy.
func isUnder(name, parent string) bool {
	return name == parent || (len(name) > len(parent) && name[len(parent)] == Separator && name[:len(parent)] == parent)
}
