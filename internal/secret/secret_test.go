package secret

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReadFromFileAndEnv(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	require.NoError(t, os.WriteFile(good, []byte("0123456789abcdef-from-file\r\n"), 0o600))
	open := filepath.Join(dir, "open")
	require.NoError(t, os.WriteFile(open, []byte("0123456789abcdef"), 0o644))
	short := filepath.Join(dir, "short")
	require.NoError(t, os.WriteFile(short, []byte("tiny\n"), 0o600))
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "X_SECRET" {
				return v
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name, file, env, want, err string
	}{
		{name: "file wins over env", file: good, env: "0123456789abcdef-from-env", want: "0123456789abcdef-from-file"},
		{name: "env", env: "0123456789abcdef-from-env", want: "0123456789abcdef-from-env"},
		{name: "none", err: "not set: set $X_SECRET or -secret-file"},
		{name: "short", file: short, err: "shorter than 16 bytes"},
		{name: "short env", env: "tiny", err: "shorter than 16 bytes"},
		{name: "readable by others", file: open, err: "readable by other users"},
		{name: "missing file", file: filepath.Join(dir, "nope"), err: "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Source{File: tc.file, Env: "X_SECRET"}.Read(env(tc.env))
			if tc.err != "" {
				assert.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, string(b))
		})
	}
}

func TestRefuseRejectsASecretFlag(t *testing.T) {
	for _, args := range [][]string{{"-secret", "0123456789abcdef"}, {"--secret=0123456789abcdef"}} {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		check := Refuse(fs, "secret", "X_SECRET", "secret-file")
		require.NoError(t, fs.Parse(args))
		err := check()
		require.Error(t, err, "%q", args)
		assert.Contains(t, err.Error(), "not taken on the command line")
		assert.NotContains(t, err.Error(), "0123456789abcdef", "the refusal does not repeat the secret")
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	check := Refuse(fs, "secret", "X_SECRET", "secret-file")
	require.NoError(t, fs.Parse(nil))
	assert.NoError(t, check(), "no flag, no refusal")
}
