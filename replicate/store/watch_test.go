package store_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

func fired(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestWatchFiresPerMailbox(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	_, err := s.CreateMailbox(ctx, "alice", "Other")
	require.NoError(t, err)
	inbox, err := s.MailboxStatus(ctx, "alice", store.Inbox)
	require.NoError(t, err)
	other, err := s.MailboxStatus(ctx, "alice", "Other")
	require.NoError(t, err)

	wi, wo := s.Watch(inbox.ID), s.Watch(other.ID)
	assert.False(t, fired(wi))
	appendMsg(t, s, "alice", store.Inbox, msg("one", "1"))
	assert.True(t, fired(wi), "an append to INBOX must wake its watchers by the time Append returns")
	assert.False(t, fired(wo), "a change to INBOX woke the watcher of another mailbox")

	// Each channel fires once; the next Watch waits for the next change.
	wi = s.Watch(inbox.ID)
	assert.False(t, fired(wi))
	_, err = s.AddFlags(ctx, "alice", store.Inbox, rng(1, 1), []string{store.FlagSeen})
	require.NoError(t, err)
	assert.True(t, fired(wi))

	// A replica's applied changes wake watchers too.
	r := open(t, t.TempDir(), nil)
	replicateAll(t, s, r, 0)
	rw := r.Watch(inbox.ID)
	appendMsg(t, s, "alice", store.Inbox, msg("two", "2"))
	replicateAll(t, s, r, 0)
	assert.True(t, fired(rw), "an applied append did not wake the replica's watcher")

	// Deleting a mailbox and closing the store wake their watchers.
	wo = s.Watch(other.ID)
	require.NoError(t, s.DeleteMailbox(ctx, "alice", "Other"))
	assert.True(t, fired(wo))
	wi = s.Watch(inbox.ID)
	require.NoError(t, s.Close())
	assert.True(t, fired(wi))
}

func TestMailboxDeltaTracksExpunges(t *testing.T) {
	s, dir := newStore(t)
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		appendMsg(t, s, "alice", store.Inbox, msg("m", strings.Repeat("x", i)))
	}
	st, err := s.MailboxStatus(ctx, "alice", store.Inbox)
	require.NoError(t, err)
	since := st.HighestModSeq

	_, err = s.Expunge(ctx, "alice", store.Inbox, rng(2, 3))
	require.NoError(t, err)
	_, err = s.AddFlags(ctx, "alice", store.Inbox, rng(5, 5), []string{store.FlagFlagged})
	require.NoError(t, err)
	_, err = s.Move(ctx, "alice", store.Inbox, rng(7, 7), store.Inbox)
	require.NoError(t, err)
	mid, err := s.MailboxStatus(ctx, "alice", store.Inbox)
	require.NoError(t, err)
	_, err = s.Expunge(ctx, "alice", store.Inbox, rng(9, 9))
	require.NoError(t, err)

	d, err := s.MailboxDelta(ctx, "alice", store.Inbox, since)
	require.NoError(t, err)
	assert.True(t, d.Exact)
	assert.Equal(t, "2:3,7,9", d.Vanished.String())
	var changed []uint32
	for _, m := range d.Changed {
		changed = append(changed, m.UID)
	}
	assert.Equal(t, []uint32{5, 11}, changed, "the flag change and the moved copy")

	d, err = s.MailboxDelta(ctx, "alice", store.Inbox, mid.HighestModSeq)
	require.NoError(t, err)
	assert.Equal(t, "9", d.Vanished.String())
	assert.Empty(t, d.Changed)

	d, err = s.MailboxDelta(ctx, "alice", store.Inbox, 0)
	require.NoError(t, err)
	assert.Empty(t, d.Vanished)
	assert.Len(t, d.Changed, 7)

	// Replayed from the journal at Open, the expunges are known again.
	require.NoError(t, s.Close())
	s = open(t, dir, nil)
	d, err = s.MailboxDelta(ctx, "alice", store.Inbox, since)
	require.NoError(t, err)
	assert.True(t, d.Exact)
	assert.Equal(t, "2:3,7,9", d.Vanished.String())

	// Once in a checkpoint, the store no longer knows when the UIDs went:
	// it answers with every missing UID, a superset the RFC allows.
	require.NoError(t, s.Compact(ctx))
	require.NoError(t, s.Close())
	s = open(t, dir, nil)
	d, err = s.MailboxDelta(ctx, "alice", store.Inbox, since)
	require.NoError(t, err)
	assert.False(t, d.Exact)
	assert.Equal(t, "2:3,7,9", d.Vanished.String())
	// From the restart on, it is exact again.
	now, err := s.MailboxStatus(ctx, "alice", store.Inbox)
	require.NoError(t, err)
	_, err = s.Expunge(ctx, "alice", store.Inbox, rng(1, 1))
	require.NoError(t, err)
	d, err = s.MailboxDelta(ctx, "alice", store.Inbox, now.HighestModSeq)
	require.NoError(t, err)
	assert.True(t, d.Exact)
	assert.Equal(t, "1", d.Vanished.String())
}

func TestOpenBodyReadsInPartAndVerifiesWholeReads(t *testing.T) {
	s, dir := newStore(t)
	ctx := context.Background()
	content := msg("big", strings.Repeat("0123456789", 100_000))
	appendMsg(t, s, "alice", store.Inbox, content)
	msgs, err := s.Fetch(ctx, "alice", store.Inbox, store.Query{})
	require.NoError(t, err)
	d := msgs[0].Digest

	r, err := s.OpenBody(ctx, d)
	require.NoError(t, err)
	assert.Equal(t, int64(len(content)), r.Size())
	part, err := io.ReadAll(r.Section(100, 25))
	require.NoError(t, err)
	assert.Equal(t, content[100:125], string(part))
	tail, err := io.ReadAll(r.Section(r.Size()-5, 100))
	require.NoError(t, err)
	assert.Equal(t, content[len(content)-5:], string(tail))
	all, err := io.ReadAll(r.Verified())
	require.NoError(t, err)
	assert.Equal(t, content, string(all))
	require.NoError(t, r.Close())

	// Damage the file: a whole read fails at the end and marks the body.
	h := d.String()
	path := filepath.Join(dir, "bodies", h[:2], h)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	b[len(b)/2] ^= 1
	require.NoError(t, os.WriteFile(path, b, 0o640))
	r, err = s.OpenBody(ctx, d)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, r.Verified())
	require.ErrorIs(t, err, store.ErrCorrupt)
	r.Close()
	_, err = s.OpenBody(ctx, d)
	require.ErrorIs(t, err, store.ErrCorrupt, "a body found corrupt is not served again")
	_, err = s.OpenBody(ctx, resilmail.Digest{1})
	require.ErrorIs(t, err, store.ErrNotFound)
}

func TestDerivedComputesOncePerBody(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	appendMsg(t, s, "alice", store.Inbox, msg("a", "body a"))
	appendMsg(t, s, "alice", store.Inbox, msg("a", "body a")) // same content
	appendMsg(t, s, "alice", store.Inbox, msg("b", "body b"))
	msgs, err := s.Fetch(ctx, "alice", store.Inbox, store.Query{})
	require.NoError(t, err)
	var calls atomic.Int32
	header := func(r *store.BodyReader) (any, int64, error) {
		calls.Add(1)
		b := make([]byte, 12)
		_, err := r.ReadAt(b, 0)
		return string(b), 12, err
	}
	for round := 0; round < 3; round++ {
		for _, m := range msgs {
			v, err := s.Derived(ctx, m.Digest, "test.header", header)
			require.NoError(t, err)
			assert.True(t, bytes.HasPrefix([]byte(v.(string)), []byte("Subject: ")))
		}
	}
	assert.Equal(t, int32(2), calls.Load(), "two distinct bodies, each parsed once")
	hits, misses, _ := s.DerivedStats()
	assert.Equal(t, uint64(7), hits)
	assert.Equal(t, uint64(2), misses)
}
