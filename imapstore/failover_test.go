package imapstore

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/internal/loginguard"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// serveIMAP serves st over IMAP on loopback until the test ends.
func serveIMAP(t *testing.T, st *store.Store, ro func() bool) string {
	t.Helper()
	srv, err := New(st, users{"alice": "pw"}, &Options{Logger: quiet, ReadOnly: ro,
		Guard: loginguard.New(&loginguard.Options{Delay: time.Millisecond, Logger: quiet})})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

type seen struct {
	uidValidity uint32
	bodies      map[imap.UID]string
}

func snapshotIMAP(t *testing.T, addr string) seen {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Login("alice", "pw").Wait())
	sel, err := c.Select("INBOX", nil).Wait()
	require.NoError(t, err)
	s := seen{uidValidity: sel.UIDValidity, bodies: map[imap.UID]string{}}
	msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	require.NoError(t, err)
	for _, m := range msgs {
		s.bodies[m.UID] = string(m.BodySection[0].Bytes)
	}
	return s
}

// TestUIDsSurviveAFailover: a client's UIDs and UIDVALIDITY are the same
// on a replica promoted after the primary is lost, so it downloads
// nothing again. The replica is promoted with the store's primitives
// (SetEpoch, SetReadOnly(false)): the Promote API of the replication work
// had not landed when this was written.
func TestUIDsSurviveAFailover(t *testing.T) {
	ctx := context.Background()
	pst, err := store.Open(t.TempDir(), &store.Options{Logger: quiet})
	require.NoError(t, err)
	defer pst.Close()
	require.NoError(t, pst.CreateUser(ctx, "alice"))
	secret := []byte("failover test secret, long enough")
	p, err := replicate.NewPrimary(pst, &replicate.PrimaryOptions{Secret: secret, Logger: quiet})
	require.NoError(t, err)
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hsrv := &http.Server{Handler: p.Handler()}
	go hsrv.Serve(hln)
	defer hsrv.Close()

	rdir := t.TempDir()
	rst, err := store.Open(rdir+"/store", &store.Options{Logger: quiet})
	require.NoError(t, err)
	defer rst.Close()
	rst.SetReadOnly(true)
	r, err := replicate.NewReplica(rst, "http://"+hln.Addr().String(), rdir+"/inbox",
		&replicate.ReplicaOptions{Name: "r1", Secret: secret, Logger: quiet, MaxBackoff: 50 * time.Millisecond})
	require.NoError(t, err)
	rctx, stopReplica := context.WithCancel(ctx)
	rdone := make(chan error, 1)
	go func() { rdone <- r.Run(rctx) }()

	// Mail on the primary: deliveries, an expunge, a flag change, an
	// APPEND and a MOVE through IMAP.
	paddr := serveIMAP(t, pst, nil)
	for i := 0; i < 5; i++ {
		_, err := pst.Append(ctx, "alice", store.Inbox, nil, time.Time{}, strings.NewReader("Subject: m\r\n\r\nbody "+strings.Repeat("x", i)+"\r\n"))
		require.NoError(t, err)
	}
	c, err := imapclient.DialInsecure(paddr, nil)
	require.NoError(t, err)
	require.NoError(t, c.Login("alice", "pw").Wait())
	_, err = c.Select("INBOX", nil).Wait()
	require.NoError(t, err)
	require.NoError(t, c.Store(imap.UIDSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close())
	require.NoError(t, c.Expunge().Close())
	_, err = c.Move(imap.UIDSetNum(3), "Trash").Wait()
	require.NoError(t, err)
	c.Close()
	before := snapshotIMAP(t, paddr)
	require.Len(t, before.bodies, 3)

	// The replica catches up, then the primary is lost.
	require.Eventually(t, func() bool { return r.Stats().Applied >= pst.Position() }, 10*time.Second, 5*time.Millisecond)
	hsrv.Close()
	stopReplica()
	<-rdone
	require.NoError(t, pst.Close())

	// A standby serves it read-only meanwhile, with the same UIDs.
	var ro atomic.Bool
	ro.Store(true)
	raddr := serveIMAP(t, rst, ro.Load)
	assert.Equal(t, before, snapshotIMAP(t, raddr))

	// Promotion: a higher epoch, durably, then writes.
	require.NoError(t, rst.SetEpoch(ctx, rst.Epoch()+1))
	rst.SetReadOnly(false)
	ro.Store(false)
	after := snapshotIMAP(t, raddr)
	assert.Equal(t, before.uidValidity, after.uidValidity, "UIDVALIDITY changed: the client would download everything again")
	assert.Equal(t, before.bodies, after.bodies, "UIDs or bodies changed")
	// New mail on the promoted node continues the UIDs.
	uid, err := rst.Append(ctx, "alice", store.Inbox, nil, time.Time{}, strings.NewReader("Subject: after\r\n\r\nafter\r\n"))
	require.NoError(t, err)
	assert.Equal(t, uint32(6), uid)
}
