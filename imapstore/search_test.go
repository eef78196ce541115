package imapstore

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSearchDecoded: SEARCH matches what a reader sees (RFC 2047 words,
// base64 and quoted-printable undone, charsets in UTF-8, Unicode case
// folding), not the encoded bytes.
func TestSearchDecoded(t *testing.T) {
	e := newEnv(t)
	require.NoError(t, e.st.CreateUser(context.Background(), "alice"))
	b64 := base64.StdEncoding.EncodeToString([]byte("Ärger im Büro, sagt Σίσυφος\r\n"))
	e.deliver(t, "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\r\nFrom: =?ISO-8859-1?Q?J=F6rg?= <j@example.org>\r\n"+
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64+"\r\n")
	e.deliver(t, "Subject: menu\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"+
		"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9 cr=E8me br=FBl=E9e\r\n"+
		"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"+
		base64.StdEncoding.EncodeToString([]byte("hiddenword in an attachment"))+"\r\n--b--\r\n")
	e.deliver(t, "Subject: plain\r\n\r\nStraße und Ärger in plain UTF-8\r\n")
	r := dialRaw(t, e.addr)
	require.Contains(t, r.do("l", "LOGIN alice pw")[0], "OK")
	r.do("s", "SELECT INBOX")
	for _, c := range []struct{ key, value, want string }{
		{"SUBJECT", "grüße aus köln", "1"},
		{"FROM", "JÖRG", "1"},
		{"BODY", "ärger im büro", "1"},
		{"BODY", "ärger", "1 3"},
		{"BODY", "ΣΊΣΥΦΟΣ", "1"},
		{"TEXT", "köln", "1"},
		{"BODY", b64[:12], ""},
		{"BODY", "CAFÉ CRÈME", "2"},
		{"TEXT", "br=fbl", ""},
		{"BODY", "hiddenword", ""},
		{"BODY", "ÄRGER IN PLAIN", "3"},
		{"BODY", "plain utf-8", "3"},
	} {
		got := searchLine(t, r, c.key, c.value)
		assert.Equal(t, c.want, got, "SEARCH %s %q", c.key, c.value)
	}
}

// searchLine runs SEARCH CHARSET UTF-8 key value (value as a literal) and
// returns the numbers found.
func searchLine(t *testing.T, r *raw, key, value string) string {
	t.Helper()
	r.send(fmt.Sprintf("x SEARCH CHARSET UTF-8 %s {%d+}\r\n%s\r\n", key, len(value), value))
	var found string
	for {
		l := r.line()
		if rest, ok := strings.CutPrefix(l, "* SEARCH"); ok {
			found = strings.TrimSpace(rest)
		}
		if strings.HasPrefix(l, "x ") {
			require.Contains(t, l, "x OK", "SEARCH %s %q", key, value)
			return found
		}
	}
}
