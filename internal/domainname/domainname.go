// Package domainname is resilmail's one validator of domain names: the
// planner, the pool's policy and MTA-STS all bring a name to the same normal
// form with it (lower-case A-labels, no trailing dot).
package domainname

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// MaxInput bounds the length of a name given to ToASCII before it is
// converted; anything longer cannot be valid.
const MaxInput = 1024

// ToASCII returns a domain name in lower-case A-label form without the
// trailing dot: converted with IDNA (UTS #46 lookup profile), and checked
// to be a host name of letters, digits and hyphens with labels of 1 to 63
// octets and 253 in all, whose last label is not all digits (so no IP
// address passes).
func ToASCII(s string) (string, error) {
	if len(s) > MaxInput {
		return "", errors.New("too long")
	}
	s = strings.TrimSuffix(s, ".")
	if PlainLDH(s) {
		// Already in the form IDNA would give: skip the conversion.
		return s, nil
	}
	if !utf8.ValidString(s) {
		// idna would turn invalid bytes into U+FFFD and encode that.
		return "", errors.New("invalid UTF-8")
	}
	a, err := idna.Lookup.ToASCII(s)
	if err != nil {
		return "", err
	}
	if err := CheckName(a); err != nil {
		return "", err
	}
	return a, nil
}

// PlainLDH reports whether s is a valid name that IDNA conversion
// would leave as it is: lower-case letters, digits and hyphens only, and no
// label with hyphens in its third and fourth place (as "xn--" has).
func PlainLDH(s string) bool {
	if CheckName(s) != nil {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if len(label) >= 4 && label[2] == '-' && label[3] == '-' {
			return false
		}
	}
	return true
}

// CheckName checks an ASCII host name: letters (lower case), digits and
// hyphens, labels of 1 to 63 octets, 253 in all, the last not all digits.
func CheckName(s string) error {
	if s == "" {
		return errors.New("empty name")
	}
	if len(s) > 253 {
		return errors.New("name longer than 253 octets")
	}
	digits := true
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			c := s[i]
			switch {
			case 'a' <= c && c <= 'z', c == '-':
				digits = false
			case '0' <= c && c <= '9':
			case c >= 0x80:
				return errors.New("not in A-label (ASCII) form")
			default:
				return fmt.Errorf("invalid character %q", c)
			}
			continue
		}
		label := s[start:i]
		switch {
		case label == "":
			return errors.New("empty label")
		case len(label) > 63:
			return errors.New("label longer than 63 octets")
		case label[0] == '-' || label[len(label)-1] == '-':
			return errors.New("label starts or ends with a hyphen")
		}
		if i == len(s) && digits {
			return errors.New("last label is all digits")
		}
		digits = true
		start = i + 1
	}
	return nil
}
