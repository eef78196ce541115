// Package secret reads the secrets resilmail's programs need from the
// environment or from a file, never from the command line, where every
// user of the machine can read them (ps, /proc/PID/cmdline, a profiler's
// cmdline endpoint, shell history).
//
// A program calls [Refuse] for each flag name a secret once had, so that an
// operator who passes one gets a clear refusal rather than an unknown-flag
// error, and [Read] (or [Source.Read]) to get the secret itself.
package secret

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
)

// MinLen is the shortest secret Read accepts: a secret derives bearer
// tokens and MAC keys, and a short one is guessed offline.
const MinLen = 16

// ErrMissing is returned by Read when neither the file nor the environment
// variable gives a secret.
var ErrMissing = errors.New("secret: not set")

// Source names where one secret may come from: a file (the flag's value)
// first, then an environment variable.
type Source struct {
	// File is the path of a file holding the secret; empty: none. One
	// trailing newline (LF or CRLF) is removed.
	File string
	// Env is the name of the environment variable holding the secret.
	Env string
	// Flag is the name of the flag that sets File, for messages.
	Flag string
}

// Read returns the secret: the content of s.File when it is set, else the
// value of s.Env as getenv (os.Getenv when nil) gives it. It refuses an
// empty secret ([ErrMissing]) and one shorter than [MinLen] bytes. A file
// that other users may read is refused too, since the secret would then
// be no secret.
func (s Source) Read(getenv func(string) string) ([]byte, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	var b []byte
	from := "$" + s.Env
	if s.File != "" {
		st, err := os.Stat(s.File)
		if err != nil {
			return nil, fmt.Errorf("secret: %w", err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("secret: %s is readable by other users (mode %v): chmod 600 it", s.File, st.Mode().Perm())
		}
		if b, err = os.ReadFile(s.File); err != nil {
			return nil, fmt.Errorf("secret: %w", err)
		}
		b = bytes.TrimSuffix(b, []byte("\n"))
		b = bytes.TrimSuffix(b, []byte("\r"))
		from = s.File
	} else if s.Env != "" {
		b = []byte(getenv(s.Env))
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: set $%s or -%s", ErrMissing, s.Env, s.flagName())
	}
	if len(b) < MinLen {
		return nil, fmt.Errorf("secret: the secret in %s is shorter than %d bytes", from, MinLen)
	}
	return b, nil
}

func (s Source) flagName() string {
	if s.Flag == "" {
		return "secret-file"
	}
	return s.Flag
}

// Refuse defines on fs a flag called name, where a secret used to be
// given, and returns the check to make once fs is parsed: it fails when the
// flag was given, with an error that says to use the environment variable
// env or the flag file instead and does not repeat the value (the flag
// package's own error for a bad value would).
func Refuse(fs *flag.FlagSet, name, env, file string) (check func() error) {
	r := &refused{}
	fs.Var(r, name, fmt.Sprintf("refused: a secret on the command line is visible to every user of the machine; use $%s or -%s", env, file))
	return func() error {
		if !r.given {
			return nil
		}
		return fmt.Errorf("-%s: secrets are not taken on the command line (ps and /proc show them to every user): set $%s or -%s FILE", name, env, file)
	}
}

type refused struct{ given bool }

func (*refused) String() string { return "" }

func (r *refused) Set(string) error {
	r.given = true
	return nil
}
