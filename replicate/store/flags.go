package store

import (
	"fmt"
	"slices"
	"strings"

	"github.com/resilmail/resilmail"
)

// System flags that a message can carry (RFC 9051 §2.3.2). \Recent is a
// session flag that the IMAP layer computes; it cannot be stored.
const (
	FlagSeen     = `\Seen`
	FlagAnswered = `\Answered`
	FlagFlagged  = `\Flagged`
	FlagDeleted  = `\Deleted`
	FlagDraft    = `\Draft`
)

const (
	bitSeen uint8 = 1 << iota
	bitAnswered
	bitFlagged
	bitDeleted
	bitDraft
)

// systemFlags is the immutable table of storable system flags, in their
// canonical order.
var systemFlags = [...]struct {
	bit  uint8
	name string
}{
	{bitSeen, FlagSeen}, {bitAnswered, FlagAnswered}, {bitFlagged, FlagFlagged},
	{bitDeleted, FlagDeleted}, {bitDraft, FlagDraft},
}

// flagSet is a message's flags: system flags as bits, keywords sorted by
// their lower-case form and unique case-insensitively (IMAP flags are
// case-insensitive; the spelling first given is kept).
type flagSet struct {
	sys uint8
	kw  []string
}

// parseFlags validates flags and returns them as a set. A keyword is 1 to
// resilmail.MaxFlagLen bytes of IMAP atom characters.
func parseFlags(flags []string) (flagSet, error) {
	var f flagSet
	if len(flags) > resilmail.MaxFlags {
		return f, fmt.Errorf("%w: more than %d flags", ErrInvalidFlag, resilmail.MaxFlags)
	}
	for _, name := range flags {
		if strings.HasPrefix(name, `\`) {
			bit := uint8(0)
			for _, sf := range systemFlags {
				if strings.EqualFold(name, sf.name) {
					bit = sf.bit
				}
			}
			if bit == 0 {
				return f, fmt.Errorf("%w: %q is not a storable system flag", ErrInvalidFlag, name)
			}
			f.sys |= bit
			continue
		}
		if name == "" || len(name) > resilmail.MaxFlagLen {
			return f, fmt.Errorf("%w: keyword must have 1 to %d bytes", ErrInvalidFlag, resilmail.MaxFlagLen)
		}
		for i := 0; i < len(name); i++ {
			if c := name[i]; c <= ' ' || c >= 0x7f || strings.IndexByte(`(){%*"\]`, c) >= 0 {
				return f, fmt.Errorf("%w: keyword %q has a forbidden character", ErrInvalidFlag, name)
			}
		}
		f.kw = addKeyword(f.kw, name)
	}
	return f, nil
}

func kwCompare(a, b string) int { return strings.Compare(strings.ToLower(a), strings.ToLower(b)) }

func addKeyword(kw []string, k string) []string {
	i, found := slices.BinarySearchFunc(kw, k, kwCompare)
	if found {
		return kw
	}
	return slices.Insert(kw, i, k)
}

// list returns the flags in canonical order: system flags, then keywords.
func (f flagSet) list() []string {
	var out []string
	for _, sf := range systemFlags {
		if f.sys&sf.bit != 0 {
			out = append(out, sf.name)
		}
	}
	return append(out, f.kw...)
}

// apply returns f changed by op with g, and whether anything changed.
func (f flagSet) apply(op resilmail.FlagOp, g flagSet) (flagSet, bool) {
	var r flagSet
	switch op {
	case resilmail.FlagsSet:
		r = flagSet{sys: g.sys, kw: slices.Clone(g.kw)}
	case resilmail.FlagsAdd:
		r = flagSet{sys: f.sys | g.sys, kw: slices.Clone(f.kw)}
		for _, k := range g.kw {
			r.kw = addKeyword(r.kw, k)
		}
	case resilmail.FlagsRemove:
		r = flagSet{sys: f.sys &^ g.sys}
		for _, k := range f.kw {
			if _, found := slices.BinarySearchFunc(g.kw, k, kwCompare); !found {
				r.kw = append(r.kw, k)
			}
		}
	default:
		return f, false
	}
	if len(r.kw) == 0 {
		r.kw = nil
	}
	return r, !f.equal(r)
}

// equal compares case-insensitively, as IMAP does.
func (f flagSet) equal(g flagSet) bool {
	return f.sys == g.sys && slices.EqualFunc(f.kw, g.kw, strings.EqualFold)
}
