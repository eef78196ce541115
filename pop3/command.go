package pop3

import (
	"errors"
	"strings"
)

// MaxLine is the longest command line accepted, CRLF included (RFC 2449
// §4: 255 octets).
const MaxLine = 255

// errSyntax is a command that does not parse.
var errSyntax = errors.New("syntax error")

// command is a parsed command line.
type command struct {
	name string // upper case
	args []string
}

// parseCommand parses one command line without its CRLF: a keyword of 3
// or 4 letters, then arguments separated by single spaces, each of 1 to 40
// printable ASCII characters (RFC 1939 §3, RFC 2449 §4). AUTH's initial
// response may be longer.
func parseCommand(line string) (command, error) {
	if len(line) > MaxLine-2 {
		return command{}, errSyntax
	}
	for i := 0; i < len(line); i++ {
		if c := line[i]; c < 0x20 || c > 0x7e {
			return command{}, errSyntax
		}
	}
	fields := strings.Split(line, " ")
	name := strings.ToUpper(fields[0])
	if name == "PASS" {
		// The password is the rest of the line and may hold spaces (RFC
		// 1939 §7).
		_, rest, ok := strings.Cut(line, " ")
		if !ok || rest == "" {
			return command{}, errSyntax
		}
		return command{name: name, args: []string{rest}}, nil
	}
	if len(name) < 3 || len(name) > 4 {
		return command{}, errSyntax
	}
	for i := 0; i < len(name); i++ {
		if name[i] < 'A' || name[i] > 'Z' {
			return command{}, errSyntax
		}
	}
	args := fields[1:]
	for i, a := range args {
		if a == "" {
			return command{}, errSyntax
		}
		if len(a) > 40 && !(name == "AUTH" && i == 1) {
			return command{}, errSyntax
		}
	}
	return command{name: name, args: args}, nil
}

// parseNumber parses a message number argument: 1 to 10 decimal digits,
// no sign, not zero.
func parseNumber(s string) (int, bool) {
	if s == "" || len(s) > 10 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, n > 0
}
