package bearer_test

import (
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/bearer"
)

func TestTokenIsPerSecretAndService(t *testing.T) {
	a := bearer.Token([]byte("secret"), "resilmail/a 1")
	assert.Len(t, a, 64)
	assert.Equal(t, a, bearer.Token([]byte("secret"), "resilmail/a 1"), "stable")
	assert.NotEqual(t, a, bearer.Token([]byte("secret"), "resilmail/b 1"), "another service")
	assert.NotEqual(t, a, bearer.Token([]byte("other"), "resilmail/a 1"), "another secret")
	assert.NotContains(t, a, "secret")
}

func TestCheck(t *testing.T) {
	tok := bearer.Token([]byte("secret"), "resilmail/a 1")
	r := httptest.NewRequest("GET", "/", nil)
	require.Error(t, bearer.Check(r, tok), "no header")
	r.Header.Set("Authorization", "Basic abc")
	require.Error(t, bearer.Check(r, tok), "another scheme")
	r.Header.Set("Authorization", bearer.Header(bearer.Token([]byte("secret"), "resilmail/b 1")))
	require.Error(t, bearer.Check(r, tok), "another service's token")
	r.Header.Set("Authorization", bearer.Header(tok))
	require.NoError(t, bearer.Check(r, tok))
	r.Header.Set("Authorization", "bearer  "+tok+" ")
	require.NoError(t, bearer.Check(r, tok), "scheme is case-insensitive, spaces trimmed")
}
