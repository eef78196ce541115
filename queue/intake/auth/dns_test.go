package auth_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/dnstest"
)

func startDNS(t testing.TB, zone ...string) *dnstest.Server {
	t.Helper()
	s, err := dnstest.Start(zone...)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}
