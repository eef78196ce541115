package passwd

import (
	"crypto/sha512"
	"crypto/subtle"
	"errors"
	"strconv"
	"strings"
)

// The SHA-512 based crypt(3) of glibc ("$6$", Ulrich Drepper's
// specification "Unix crypt using SHA-256 and SHA-512"), which Dovecot
// calls SHA512-CRYPT.
const (
	sha512Prefix        = "$6$"
	sha512RoundsPrefix  = "rounds="
	sha512DefaultRounds = 5000
	sha512MinRounds     = 1000
	sha512MaxRounds     = 999_999_999
	sha512MaxSalt       = 16
	// maxVerifyRounds bounds the work a hash from the file can ask for, so
	// that a careless entry cannot make every login take seconds.
	maxVerifyRounds = 1_000_000
)

const cryptAlphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

var errBadSHA512 = errors.New("not a SHA512-CRYPT hash ($6$[rounds=N$]salt$hash)")

// sha512Parts splits a "$6$" hash into its rounds, whether they were
// spelled out, its salt and its encoded digest.
func sha512Parts(h string) (rounds int, explicit bool, salt, digest string, err error) {
	rest, ok := strings.CutPrefix(h, sha512Prefix)
	if !ok {
		return 0, false, "", "", errBadSHA512
	}
	rounds = sha512DefaultRounds
	if r, ok := strings.CutPrefix(rest, sha512RoundsPrefix); ok {
		num, tail, ok := strings.Cut(r, "$")
		if !ok || num == "" || len(num) > 10 {
			return 0, false, "", "", errBadSHA512
		}
		n, perr := strconv.Atoi(num)
		if perr != nil || n < 0 {
			return 0, false, "", "", errBadSHA512
		}
		rounds, explicit, rest = min(max(n, sha512MinRounds), sha512MaxRounds), true, tail
	}
	salt, digest, ok = strings.Cut(rest, "$")
	if !ok || strings.Contains(digest, "$") {
		return 0, false, "", "", errBadSHA512
	}
	if len(salt) > sha512MaxSalt {
		salt = salt[:sha512MaxSalt]
	}
	if len(digest) != 86 {
		return 0, false, "", "", errBadSHA512
	}
	for i := 0; i < len(digest); i++ {
		if strings.IndexByte(cryptAlphabet, digest[i]) < 0 {
			return 0, false, "", "", errBadSHA512
		}
	}
	return rounds, explicit, salt, digest, nil
}

// sha512Crypt returns the "$6$" hash of password with salt (at most 16
// bytes are used) and rounds (clamped to 1 000 .. 999 999 999); explicit
// says whether "rounds=N$" appears in the result, as it does when the
// caller's setting named it.
func sha512Crypt(password, salt []byte, rounds int, explicit bool) string {
	if len(salt) > sha512MaxSalt {
		salt = salt[:sha512MaxSalt]
	}
	rounds = min(max(rounds, sha512MinRounds), sha512MaxRounds)

	// Digest B: password, salt, password.
	b := sha512.New()
	b.Write(password)
	b.Write(salt)
	b.Write(password)
	sumB := b.Sum(nil)

	// Digest A: password, salt, then B for each full 64 bytes of the
	// password and its first bytes for the rest, then for each bit of the
	// password's length B (1) or the password (0).
	a := sha512.New()
	a.Write(password)
	a.Write(salt)
	n := len(password)
	for ; n > 64; n -= 64 {
		a.Write(sumB)
	}
	a.Write(sumB[:n])
	for n = len(password); n > 0; n >>= 1 {
		if n&1 != 0 {
			a.Write(sumB)
		} else {
			a.Write(password)
		}
	}
	sumA := a.Sum(nil)

	// Digest DP: the password once per byte of it; P is as long as the
	// password.
	dp := sha512.New()
	for range password {
		dp.Write(password)
	}
	p := repeatTo(dp.Sum(nil), len(password))

	// Digest DS: the salt 16 + A[0] times; S is as long as the salt.
	ds := sha512.New()
	for i := 0; i < 16+int(sumA[0]); i++ {
		ds.Write(salt)
	}
	s := repeatTo(ds.Sum(nil), len(salt))

	c := sumA
	h := sha512.New()
	for i := 0; i < rounds; i++ {
		h.Reset()
		if i&1 != 0 {
			h.Write(p)
		} else {
			h.Write(c)
		}
		if i%3 != 0 {
			h.Write(s)
		}
		if i%7 != 0 {
			h.Write(p)
		}
		if i&1 != 0 {
			h.Write(c)
		} else {
			h.Write(p)
		}
		c = h.Sum(c[:0])
	}

	var out strings.Builder
	out.WriteString(sha512Prefix)
	if explicit {
		out.WriteString(sha512RoundsPrefix)
		out.WriteString(strconv.Itoa(rounds))
		out.WriteByte('$')
	}
	out.Write(salt)
	out.WriteByte('$')
	// The specification's byte order for the 86 characters.
	order := [...][3]int{
		{0, 21, 42}, {22, 43, 1}, {44, 2, 23}, {3, 24, 45}, {25, 46, 4},
		{47, 5, 26}, {6, 27, 48}, {28, 49, 7}, {50, 8, 29}, {9, 30, 51},
		{31, 52, 10}, {53, 11, 32}, {12, 33, 54}, {34, 55, 13}, {56, 14, 35},
		{15, 36, 57}, {37, 58, 16}, {59, 17, 38}, {18, 39, 60}, {40, 61, 19},
		{62, 20, 41},
	}
	for _, o := range order {
		encode24(&out, c[o[0]], c[o[1]], c[o[2]], 4)
	}
	encode24(&out, 0, 0, c[63], 2)
	return out.String()
}

// encode24 writes n characters of the crypt base-64 encoding of the 24 bits
// b2 b1 b0, least significant first.
func encode24(out *strings.Builder, b2, b1, b0 byte, n int) {
	w := uint(b2)<<16 | uint(b1)<<8 | uint(b0)
	for ; n > 0; n-- {
		out.WriteByte(cryptAlphabet[w&0x3f])
		w >>= 6
	}
}

func repeatTo(sum []byte, n int) []byte {
	out := make([]byte, 0, n)
	for len(out) < n {
		out = append(out, sum[:min(len(sum), n-len(out))]...)
	}
	return out
}

// verifySHA512Crypt reports whether password hashes to h, a "$6$" hash.
func verifySHA512Crypt(h, password string) (bool, error) {
	rounds, explicit, salt, _, err := sha512Parts(h)
	if err != nil {
		return false, err
	}
	if rounds > maxVerifyRounds {
		return false, errors.New("SHA512-CRYPT rounds over 1 000 000 are refused")
	}
	// Compare with the canonical spelling of h (its salt cut to 16 bytes,
	// its rounds clamped).
	want := sha512Crypt([]byte(password), []byte(salt), rounds, explicit)
	prefix := h[:strings.LastIndexByte(h, '$')]
	wantPrefix := want[:strings.LastIndexByte(want, '$')]
	ok := subtle.ConstantTimeCompare([]byte(want[len(wantPrefix):]), []byte(h[len(prefix):])) == 1
	return ok, nil
}
