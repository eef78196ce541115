package imapstore

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/replicate/store"
)

const nestedMessage = "From: A <a@example.org>\r\nTo: b@example.org\r\nSubject: outer\r\nMIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n" +
	"--x\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename=\"in.eml\"\r\n\r\n" +
	"Subject: inner\r\nFrom: c@example.org\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--x--\r\n"

// serveOn serves st on loopback until the test ends or close is called.
func serveOn(t *testing.T, st *store.Store, cache string) (*Server, string) {
	srv, err := New(st, users{"alice": "pw"}, &Options{Logger: quiet, ParseCache: cache})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return srv, ln.Addr().String()
}

func fetchStructure(t *testing.T, addr string) string {
	r := dialRaw(t, addr)
	require.Contains(t, r.do("l", "LOGIN alice pw")[0], "OK")
	r.do("s", "SELECT INBOX")
	out := r.do("f", "FETCH 1:* (ENVELOPE BODYSTRUCTURE)")
	require.Contains(t, out[len(out)-1], "f OK")
	return strings.Join(out, "\n")
}

// TestParseCacheSurvivesRestart: after a restart with the parse cache
// file, FETCH ENVELOPE BODYSTRUCTURE parses no body again and answers the
// same; a damaged file is ignored and every body is parsed again.
func TestParseCacheSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "imap-structure.cache")
	open := func() *store.Store {
		st, err := store.Open(filepath.Join(dir, "store"), &store.Options{Logger: quiet})
		require.NoError(t, err)
		return st
	}
	st := open()
	srv, addr := serveOn(t, st, cache)
	r := dialRaw(t, addr)
	require.Contains(t, r.do("l", "LOGIN alice pw")[0], "OK")
	for _, m := range []string{nestedMessage, "Subject: plain\r\n\r\nbody\r\n"} {
		r.send("a APPEND INBOX {" + strconv.Itoa(len(m)) + "+}\r\n" + m + "\r\n")
		require.Contains(t, r.until("a"), "a OK")
	}
	first := fetchStructure(t, addr)
	require.Contains(t, first, `"inner"`)
	require.NoError(t, srv.Close())
	require.NoError(t, st.Close())

	st = open()
	srv, addr = serveOn(t, st, cache)
	assert.Equal(t, first, fetchStructure(t, addr))
	_, misses, _ := st.DerivedStats()
	assert.Zero(t, misses, "a body was parsed again after the restart")
	require.NoError(t, srv.Close())
	require.NoError(t, st.Close())

	data, err := os.ReadFile(cache)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cache, data[:len(data)-10], 0o600))
	st = open()
	defer st.Close()
	_, addr = serveOn(t, st, cache)
	assert.Equal(t, first, fetchStructure(t, addr))
	_, misses, _ = st.DerivedStats()
	assert.Equal(t, uint64(2), misses, "a torn cache file was used")
}
