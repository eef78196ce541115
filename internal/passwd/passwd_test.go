package passwd

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Vectors from Drepper's specification, glibc's crypt(3) (through Python's
// crypt module), openssl passwd -6 and doveadm pw -s SHA512-CRYPT.
var sha512Vectors = []struct{ password, hash string }{
	{"Hello world!", "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"},
	{"Hello world!", "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."},
	{"This is just a test", "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"},
	{"we have a short salt string but not a short password", "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0"},
	{"a short string", "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1"},
	{"the minimum number is still observed", "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX."},
	{"Hello world!", "$6$rounds=1000$abcdefghijklmnop$mSIKhxABeExHRDiTozcmHLVRzYEaXMe.Eb7qHmqtfxlJelJaCvukwKMUYfsRoFElmyP1/b4Q2MTG2dVeNqRrY0"},
	{"", "$6$rounds=1000$abcdefghijklmnop$2TfftjhyCiMH.0sLgmMsrryamIW6m3frcvTBwDlNhd4xeRO6DvjPw/yf/gt/3G8bxpzQoD.1EZuIKjBRmFF3J/"},
	{"a", "$6$Zz.9/$fjT.O9X.8oXpumjcxnqT7UQhsqHqA3xULANUQ2zKKohgAYduaiMsaq4u5Wc/ZuQVvwkHl2LEQoHDaL1yhqoeG1"},
	{strings.Repeat("x", 100), "$6$Zz.9/$IYwYUeMJjUW2iVMxxlHyIZziVycZnu8WItWpu.piEnJPRJ0C24r2G4gzOpRASsYt497rLi/ygPIZLtV538TcN/"},
	{"Hello", "$6$saltstring$aQzKv7HhksN4CNT5HySRdxOEHxZvlWWP2je/lOgbrHx5iLYj3NJfVnC287n/dwkODYWL1.LZUdO9vX84fkCna/"},
	{"pässword", "$6$ümlaut$6/53bq5Yxll3lrUcMLs2R.zze91XnZiHWWrLnFQ0EbarslAnDQq1CwroOZAZj7u9gP4qZFwnh9P2qYq5VqwXl/"},
	{"pässword", "$6$yUrh2Ml5j1qx7b/t$WsPSnRRW772gq2K.orCQfI9iWsIN8npgs46MYqpIjNP3I/6VXU5CzfR12lt5dO72OSIJggI1/yhXTl0iFbKDc."},
}

func TestSHA512CryptVectors(t *testing.T) {
	for _, v := range sha512Vectors {
		ok, err := verifySHA512Crypt(v.hash, v.password)
		require.NoError(t, err, v.hash)
		assert.True(t, ok, "%q should match %s", v.password, v.hash)
		ok, err = verifySHA512Crypt(v.hash, v.password+"x")
		require.NoError(t, err)
		assert.False(t, ok, "a wrong password matched %s", v.hash)
	}
	// The first vector spelled by sha512Crypt itself.
	assert.Equal(t, sha512Vectors[0].hash, sha512Crypt([]byte("Hello world!"), []byte("saltstring"), 5000, false))
	assert.Equal(t, sha512Vectors[1].hash, sha512Crypt([]byte("Hello world!"), []byte("saltstringsaltstring"), 10000, true))
}

const sample = `# users
alice@example.com:{PLAIN}alice-secret::::::
bob:{BLF-CRYPT}$2y$05$CYz9AtmAc1JdgKiwxJV5i.tEJqLIQ9CnbYJV0zQrc4rQrSaSCYfZW
carol:{SHA512-CRYPT}$6$yUrh2Ml5j1qx7b/t$WsPSnRRW772gq2K.orCQfI9iWsIN8npgs46MYqpIjNP3I/6VXU5CzfR12lt5dO72OSIJggI1/yhXTl0iFbKDc.:1000:1000::/home/carol::
dave:$6$Zz.9/$fjT.O9X.8oXpumjcxnqT7UQhsqHqA3xULANUQ2zKKohgAYduaiMsaq4u5Wc/ZuQVvwkHl2LEQoHDaL1yhqoeG1
erin:{cleartext}e:with:colons

`

func TestParseAndCheck(t *testing.T) {
	u, err := Parse([]byte(strings.ReplaceAll(sample, "\n", "\r\n")))
	require.NoError(t, err)
	assert.Equal(t, 5, u.Len())
	for _, c := range []struct {
		user, pw string
		ok       bool
	}{
		{"alice@example.com", "alice-secret", true},
		{"alice@example.com", "alice-secreT", false},
		{"alice@example.com", "", false},
		{"bob", "secret", true},
		{"bob", "Secret", false},
		{"carol", "pässword", true},
		{"carol", "password", false},
		{"dave", "a", true},
		{"erin", "e", true},
		{"erin", "e:with:colons", false},
		{"nobody", "secret", false},
		{"Alice@example.com", "alice-secret", false},
	} {
		err := u.Check(c.user, c.pw)
		if c.ok {
			assert.NoError(t, err, "%s/%s", c.user, c.pw)
		} else {
			assert.ErrorIs(t, err, ErrAuthFailed, "%s/%s", c.user, c.pw)
		}
	}
}

func TestParseRefusesBadLines(t *testing.T) {
	for name, in := range map[string]string{
		"no colon":        "alice\n",
		"empty user":      ":{PLAIN}x\n",
		"slash in user":   "a/b:{PLAIN}x\n",
		"dot dot":         "..:{PLAIN}x\n",
		"unknown scheme":  "a:{MD5}abc\n",
		"no scheme":       "a:plaintext\n",
		"empty":           "a:\n",
		"empty plain":     "a:{PLAIN}\n",
		"unclosed brace":  "a:{PLAIN\n",
		"bad bcrypt":      "a:{BLF-CRYPT}$2y$05$short\n",
		"bad sha512":      "a:{SHA512-CRYPT}$6$salt$tooshort\n",
		"too many rounds": "a:{SHA512-CRYPT}$6$rounds=5000000$salt$" + strings.Repeat("a", 86) + "\n",
		"twice":           "a:{PLAIN}x\na:{PLAIN}y\n",
		"invalid utf8":    "a\xff:{PLAIN}x\n",
		"long line":       "a:{PLAIN}" + strings.Repeat("x", maxLine) + "\n",
	} {
		_, err := Parse([]byte(in))
		assert.ErrorIs(t, err, ErrSyntax, name)
		if err != nil && strings.Contains(in, "{PLAIN}x") {
			assert.NotContains(t, err.Error(), "{PLAIN}x", "%s: the error quotes a password", name)
		}
	}
}

func TestFileReloadsWhenItChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	require.NoError(t, os.WriteFile(path, []byte("alice:{PLAIN}one\n"), 0o600))
	var logs bytes.Buffer
	f, err := Open(path, &Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	require.NoError(t, f.Authenticate("alice", "one"))
	assert.ErrorIs(t, f.Authenticate("bob", "two"), ErrAuthFailed)

	// A new file put in place by rename, as editors and tools do.
	tmp := path + ".new"
	require.NoError(t, os.WriteFile(tmp, []byte("alice:{PLAIN}uno\nbob:{PLAIN}two\n"), 0o600))
	require.NoError(t, os.Rename(tmp, path))
	require.NoError(t, f.Authenticate("bob", "two"))
	require.NoError(t, f.Authenticate("alice", "uno"))
	assert.ErrorIs(t, f.Authenticate("alice", "one"), ErrAuthFailed)

	// Rewritten in place with the same size: the modification time tells.
	require.NoError(t, os.WriteFile(path, []byte("alice:{PLAIN}due\nbob:{PLAIN}two\n"), 0o600))
	future := time.Now().Add(time.Hour)
	require.NoError(t, os.Chtimes(path, future, future))
	require.NoError(t, f.Authenticate("alice", "due"))

	// A broken file keeps the last good users, logged without secrets.
	require.NoError(t, os.WriteFile(path, []byte("alice:{PLAIN}tre\nbroken line\n"), 0o600))
	_, err = f.Reload()
	require.ErrorIs(t, err, ErrSyntax)
	require.NoError(t, f.Authenticate("alice", "due"))
	assert.Contains(t, logs.String(), "keeping the last good users")
	assert.NotContains(t, logs.String(), "tre")

	// Removed: still the last good users.
	require.NoError(t, os.Remove(path))
	require.NoError(t, f.Authenticate("bob", "two"))
}

func TestOpenRefusesABadFile(t *testing.T) {
	dir := t.TempDir()
	_, err := Open(filepath.Join(dir, "missing"), nil)
	assert.True(t, errors.Is(err, os.ErrNotExist), "%v", err)
	path := filepath.Join(dir, "bad")
	require.NoError(t, os.WriteFile(path, []byte("x:{ROT13}abc\n"), 0o600))
	_, err = Open(path, nil)
	assert.ErrorIs(t, err, ErrSyntax)
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte("a:{SHA512-CRYPT}$6$rounds=1000$s$" + strings.Repeat("a", 86) + "\n"))
	f.Add([]byte("a:$2y$05$CYz9AtmAc1JdgKiwxJV5i.tEJqLIQ9CnbYJV0zQrc4rQrSaSCYfZW\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error does not wrap ErrSyntax: %v", err)
			}
			return
		}
		for _, name := range u.Names() {
			if err := checkUser(name); err != nil {
				t.Fatalf("accepted user %q: %v", name, err)
			}
			e := u.m[name]
			if e.scheme == SchemeSHA512Crypt {
				continue // each check costs thousands of rounds
			}
			if e.scheme == SchemeBlfCrypt {
				continue
			}
			if err := u.Check(name, e.secret); err != nil {
				t.Fatalf("user %q does not log in with its own PLAIN password", name)
			}
		}
	})
}
