package store_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

func bodyPath(dir string, d resilmail.Digest) string {
	h := d.String()
	return filepath.Join(dir, "bodies", h[:2], h)
}

func flipByte(t *testing.T, path string, at int) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	b[at] ^= 0x20
	require.NoError(t, os.WriteFile(path, b, 0o640))
}

func TestCorruptBody(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	_, err := s.CreateMailbox(ctx, "alice", "Archive")
	require.NoError(t, err)
	content := msg("precious", strings.Repeat("p", 500))
	appendMsg(t, s, "alice", "INBOX", content)
	_, err = s.Copy(ctx, "alice", "INBOX", resilmail.NewUIDSet(1), "Archive")
	require.NoError(t, err)
	d := resilmail.DigestOf([]byte(content))
	flipByte(t, bodyPath(dir, d), 100)

	_, err = s.Body(ctx, d)
	require.ErrorIs(t, err, store.ErrCorrupt)
	var ce *resilmail.CorruptError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, d, ce.Want)
	assert.NotEqual(t, d, ce.Got)
	assert.NotEmpty(t, ce.Where)

	// Marked: never served again, by any path.
	_, err = s.Body(ctx, d)
	assert.ErrorIs(t, err, store.ErrCorrupt)
	_, err = s.Header(ctx, d, 0)
	assert.ErrorIs(t, err, store.ErrCorrupt)
	for _, mb := range []string{"INBOX", "Archive"} {
		msgs, err := s.Fetch(ctx, "alice", mb, store.Query{})
		require.NoError(t, err)
		assert.True(t, msgs[0].Corrupt, mb)
	}
	aside, err := filepath.Glob(filepath.Join(dir, "corrupt", "body-"+d.String()+"-*"))
	require.NoError(t, err)
	assert.Len(t, aside, 1, "the damaged file is kept aside, not deleted")
	st := s.Stats()
	assert.Equal(t, 1, st.CorruptBodies)
	assert.Equal(t, uint64(1), st.CorruptFound)

	// Never shipped: a replica pulling from this store gets the error.
	replica := open(t, t.TempDir(), nil)
	changes, err := s.Changes(ctx, 0, 100)
	require.NoError(t, err)
	err = replica.Apply(ctx, changes, bodyFrom(s))
	assert.ErrorIs(t, err, store.ErrCorrupt)

	// The mark survives a restart.
	require.NoError(t, s.Close())
	s = open(t, dir, nil)
	_, err = s.Body(ctx, d)
	assert.ErrorIs(t, err, store.ErrCorrupt)

	// A good copy repairs it (as a replica's copy would).
	appendMsg(t, s, "alice", "INBOX", content)
	b, err := s.Body(ctx, d)
	require.NoError(t, err)
	assert.Equal(t, content, string(b))
	msgs, err := s.Fetch(ctx, "alice", "Archive", store.Query{})
	require.NoError(t, err)
	assert.False(t, msgs[0].Corrupt)
	assert.Equal(t, uint64(1), s.Stats().Repaired)
	assert.Zero(t, s.Stats().CorruptBodies)
}

func TestScrub(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	var digests []resilmail.Digest
	for i := 0; i < 5; i++ {
		content := msg("s", strings.Repeat("s", i+1))
		appendMsg(t, s, "alice", "INBOX", content)
		digests = append(digests, resilmail.DigestOf([]byte(content)))
	}
	rep, err := s.Scrub(ctx)
	require.NoError(t, err)
	assert.Equal(t, store.ScrubReport{Checked: 5, Bytes: rep.Bytes}, rep)

	flipByte(t, bodyPath(dir, digests[1]), 3)
	require.NoError(t, os.Remove(bodyPath(dir, digests[3])))
	stray := resilmail.DigestOf([]byte("left by a crash"))
	require.NoError(t, os.WriteFile(bodyPath(dir, stray), []byte("left by a crash"), 0o640))

	rep, err = s.Scrub(ctx)
	require.NoError(t, err)
	assert.Equal(t, 5, rep.Checked)
	assert.ElementsMatch(t, []resilmail.Digest{digests[1], digests[3]}, rep.Corrupt)
	assert.Equal(t, 1, rep.Orphans)
	_, err = os.Stat(bodyPath(dir, stray))
	assert.ErrorIs(t, err, os.ErrNotExist)
	for _, d := range rep.Corrupt {
		_, err := s.Body(ctx, d)
		assert.ErrorIs(t, err, store.ErrCorrupt)
	}
	_, err = s.Body(ctx, digests[0])
	assert.NoError(t, err)

	// An operator restores a good file: the next scrub heals the mark.
	require.NoError(t, os.WriteFile(bodyPath(dir, digests[3]), []byte(msg("s", "ssss")), 0o640))
	rep, err = s.Scrub(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, rep.Healed)
	assert.Equal(t, []resilmail.Digest{digests[1]}, rep.Corrupt)
	_, err = s.Body(ctx, digests[3])
	assert.NoError(t, err)
	st := s.Stats()
	assert.Equal(t, uint64(3), st.Scrubs)
	assert.Equal(t, 1, st.CorruptBodies)

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = s.Scrub(cctx)
	assert.ErrorIs(t, err, context.Canceled)
}

// TestBodyRestoredFromJournal simulates a crash after the journal's commit
// and before the body files reached the disk: files missing, empty or
// damaged at Open come back intact from the journal's body records.
func TestBodyRestoredFromJournal(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	contents := []string{
		msg("gone", strings.Repeat("g", 700)),
		msg("empty", strings.Repeat("e", 700)),
		msg("flipped", strings.Repeat("f", 700)),
		msg("fine", strings.Repeat("k", 700)),
	}
	var digests []resilmail.Digest
	for _, c := range contents {
		appendMsg(t, s, "alice", "INBOX", c)
		digests = append(digests, resilmail.DigestOf([]byte(c)))
	}
	require.NoError(t, s.Close())

	require.NoError(t, os.Remove(bodyPath(dir, digests[0])))
	require.NoError(t, os.WriteFile(bodyPath(dir, digests[1]), nil, 0o640))
	flipByte(t, bodyPath(dir, digests[2]), 50)

	s = open(t, dir, nil)
	assert.Equal(t, uint64(3), s.Stats().BodiesRestored)
	for i, d := range digests {
		b, err := os.ReadFile(bodyPath(dir, d))
		require.NoError(t, err)
		assert.Equal(t, contents[i], string(b), "file %d", i)
		b, err = s.Body(ctx, d)
		require.NoError(t, err)
		assert.Equal(t, contents[i], string(b))
	}
	aside, err := filepath.Glob(filepath.Join(dir, "corrupt", "body-*"))
	require.NoError(t, err)
	assert.Len(t, aside, 2, "the empty and the flipped file are kept aside")
	rep, err := s.Scrub(ctx)
	require.NoError(t, err)
	assert.Empty(t, rep.Corrupt)
	assert.Zero(t, s.Stats().CorruptBodies)

	require.NoError(t, s.Close())
}

// TestOpenChecksOnlyBodiesAfterTheCheckpoint: a checkpoint makes the body
// files it refers to durable before it is written, so Open re-reads only
// the bodies the journal holds after it, however much journal is kept.
func TestOpenChecksOnlyBodiesAfterTheCheckpoint(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	before := msg("before", strings.Repeat("b", 700))
	appendMsg(t, s, "alice", "INBOX", before)
	require.NoError(t, s.Compact(ctx))
	after := msg("after", strings.Repeat("a", 700))
	appendMsg(t, s, "alice", "INBOX", after)
	require.NoError(t, s.Close())

	// Both files vanish (damage after the fact: the one before the
	// checkpoint was durable).
	require.NoError(t, os.Remove(bodyPath(dir, resilmail.DigestOf([]byte(before)))))
	require.NoError(t, os.Remove(bodyPath(dir, resilmail.DigestOf([]byte(after)))))

	s = open(t, dir, nil)
	assert.Equal(t, uint64(1), s.Stats().BodiesRestored, "only the body after the checkpoint is looked at")
	b, err := s.Body(ctx, resilmail.DigestOf([]byte(after)))
	require.NoError(t, err)
	assert.Equal(t, after, string(b))
	_, err = s.Body(ctx, resilmail.DigestOf([]byte(before)))
	require.ErrorIs(t, err, store.ErrCorrupt, "a file lost later is reported, not served")
	require.NoError(t, s.Close())
}

// TestCheckpointSyncsBodies checks that a checkpoint fsyncs the body files
// written since the last one and then removes the journal segments that
// held their bytes; a file damaged after that is handled as before (moved
// aside, marked, never served).
func TestCheckpointSyncsBodies(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := &store.Options{Logger: discardLogger(), SegmentSize: 4 << 10, KeepChanges: 1, KeepBytes: 1}
	s := open(t, dir, opts)
	require.NoError(t, s.CreateUser(ctx, "alice"))
	var digests []resilmail.Digest
	for i := 0; i < 20; i++ {
		c := msg("m", strings.Repeat(string(rune('a'+i)), 1000))
		appendMsg(t, s, "alice", "INBOX", c)
		digests = append(digests, resilmail.DigestOf([]byte(c)))
	}
	before := s.Stats()
	assert.Greater(t, before.JournalSegments, 5, "the journal holds the bodies")
	assert.Zero(t, before.BodySyncs, "no body fsync on the hot path")
	require.NoError(t, s.Compact(ctx))
	after := s.Stats()
	assert.Equal(t, uint64(20), after.BodySyncs)
	assert.Less(t, after.JournalSegments, 3)
	assert.Less(t, after.JournalBytes, before.JournalBytes/5)
	require.NoError(t, s.Close())

	flipByte(t, bodyPath(dir, digests[0]), 30)
	s = open(t, dir, opts)
	assert.Zero(t, s.Stats().BodiesRestored, "the journal no longer holds the body")
	_, err := s.Body(ctx, digests[0])
	assert.ErrorIs(t, err, store.ErrCorrupt)
	b, err := s.Body(ctx, digests[1])
	require.NoError(t, err)
	assert.Equal(t, digests[1], resilmail.DigestOf(b))
}

// TestRestoreBody damages a body whose journal record a checkpoint has
// removed, so that no good copy is left in the store, and restores it from
// a good copy: a wrong copy is refused, the right one is served again and
// survives a restart even if its file is lost again (it is in the
// journal); an intact body and an unknown digest are left alone.
func TestRestoreBody(t *testing.T) {
	ctx := context.Background()
	s, dir := newStore(t)
	content := msg("precious", strings.Repeat("p", 500))
	appendMsg(t, s, "alice", "INBOX", content)
	other := msg("other", "intact")
	appendMsg(t, s, "alice", "INBOX", other)
	require.NoError(t, s.Compact(ctx))
	d := resilmail.DigestOf([]byte(content))
	flipByte(t, bodyPath(dir, d), 100)

	// Not yet found by a read: the restore checks first.
	err := s.RestoreBody(ctx, d, strings.NewReader(content+"forged"))
	require.ErrorIs(t, err, store.ErrCorrupt)
	_, err = s.Body(ctx, d)
	require.ErrorIs(t, err, store.ErrCorrupt, "a wrong copy restores nothing")
	assert.Equal(t, 1, s.Stats().CorruptBodies)

	require.NoError(t, s.RestoreBody(ctx, d, strings.NewReader(content)))
	b, err := s.Body(ctx, d)
	require.NoError(t, err)
	assert.Equal(t, content, string(b))
	assert.Zero(t, s.Stats().CorruptBodies)
	assert.Equal(t, uint64(1), s.Stats().Repaired)
	msgs, err := s.Fetch(ctx, "alice", "INBOX", store.Query{})
	require.NoError(t, err)
	assert.Len(t, msgs, 2, "no message added")
	assert.False(t, msgs[0].Corrupt)

	// Durable in the journal: a lost file comes back at Open.
	require.NoError(t, s.Close())
	require.NoError(t, os.Remove(bodyPath(dir, d)))
	s = open(t, dir, nil)
	b, err = s.Body(ctx, d)
	require.NoError(t, err)
	assert.Equal(t, content, string(b))
	assert.Zero(t, s.Stats().CorruptBodies)

	require.NoError(t, s.RestoreBody(ctx, resilmail.DigestOf([]byte(other)), strings.NewReader(other)), "intact: nothing to do")
	assert.ErrorIs(t, s.RestoreBody(ctx, resilmail.DigestOf([]byte("nobody's")), strings.NewReader("nobody's")), store.ErrNotFound)
}
