// Package bearer derives the bearer tokens resilmail's nodes present to
// each other from a shared secret, and checks them. A token is the
// hexadecimal HMAC-SHA256 of a label naming the service under the secret:
// the secret itself never travels, and a token is good for its service
// only.
package bearer

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
)

// Token returns the token for the service that label names, e.g.
// "resilmail/quarantine ship token 1", under secret.
func Token(secret []byte, label string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	return hex.EncodeToString(m.Sum(nil))
}

// Header is the value of the Authorization header that carries token.
func Header(token string) string { return "Bearer " + token }

// Check reports whether r carries "Authorization: Bearer <token>"; the
// comparison takes the same time whatever the token presented. The error
// says what was wrong, for the log (never for the client).
func Check(r *http.Request, token string) error {
	a := r.Header.Get("Authorization")
	if len(a) <= 7 || !strings.EqualFold(a[:7], "bearer ") {
		return errors.New("no bearer token")
	}
	if !hmac.Equal([]byte(strings.TrimSpace(a[7:])), []byte(token)) {
		return errors.New("wrong bearer token")
	}
	return nil
}
