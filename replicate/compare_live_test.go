package replicate_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate"
	"github.com/resilmail/resilmail/replicate/store"
)

// liveWriter writes to one user's mailboxes on a primary (appends, flag
// changes, expunges) and remembers every message it appended and every
// one it expunged.
type liveWriter struct {
	s    *store.Store
	user string
	rnd  *rand.Rand

	mu       sync.Mutex
	appended map[string]map[uint32]resilmail.Digest // by mailbox name, then UID
	expunged map[string]map[uint32]bool
}

var liveMailboxes = []string{store.Inbox, "Work"}

func (w *liveWriter) step(ctx context.Context, i int) error {
	mb := liveMailboxes[w.rnd.IntN(len(liveMailboxes))]
	w.mu.Lock()
	next := uint32(len(w.appended[mb]) + len(w.expunged[mb]) + 1)
	w.mu.Unlock()
	pick := func() resilmail.UIDSet {
		a := uint32(w.rnd.IntN(int(next)) + 1)
		return resilmail.UIDSet{}.AddRange(a, a+uint32(w.rnd.IntN(3)))
	}
	switch op := w.rnd.IntN(10); {
	case op < 5:
		body := msgText(fmt.Sprintf("%s %d", w.user, i), strings.Repeat("x", w.rnd.IntN(200)))
		uid, err := w.s.Append(ctx, w.user, mb, nil, time.Time{}, strings.NewReader(body))
		if err != nil {
			return err
		}
		w.mu.Lock()
		w.appended[mb][uid] = resilmail.DigestOf([]byte(body))
		w.mu.Unlock()
	case op < 7:
		_, err := w.s.AddFlags(ctx, w.user, mb, pick(), []string{`\Seen`, "$Live"})
		return err
	case op < 8:
		_, err := w.s.RemoveFlags(ctx, w.user, mb, pick(), []string{`\Seen`})
		return err
	default:
		gone, err := w.s.Expunge(ctx, w.user, mb, pick())
		if err != nil {
			return err
		}
		w.mu.Lock()
		for u := range gone.All() {
			w.expunged[mb][u] = true
		}
		w.mu.Unlock()
	}
	return nil
}

// slowPrimary is a primary's inventory far from the replica: after each
// answer, the replica catches up with what the primary had when it
// answered (and more), before the comparison reads on. Every change the
// primary makes meanwhile reaches the replica before Compare looks at it.
type slowPrimary struct {
	*store.Store
	r *replicate.Replica
}

func (s slowPrimary) catchUp() {
	pos := s.Store.Position()
	for deadline := time.Now().Add(2 * time.Second); s.r.Stats().Applied < pos && time.Now().Before(deadline); {
		time.Sleep(200 * time.Microsecond) // polling the replica's progress
	}
}

func (s slowPrimary) Mailboxes(ctx context.Context, user string) ([]replicate.MailboxState, error) {
	defer s.catchUp()
	return s.Store.Mailboxes(ctx, user)
}

func (s slowPrimary) DigestRange(ctx context.Context, user string, id resilmail.MailboxID, lo, hi uint32) (replicate.SetDigest, int, error) {
	defer s.catchUp()
	return s.Store.DigestRange(ctx, user, id, lo, hi)
}

func (s slowPrimary) MessageRange(ctx context.Context, user string, id resilmail.MailboxID, lo, hi uint32, limit int) ([]replicate.MessageState, error) {
	defer s.catchUp()
	return s.Store.MessageRange(ctx, user, id, lo, hi, limit)
}

// slowReplica is a replica whose answers take long enough for the primary
// to make another change after each of them.
type slowReplica struct {
	*store.Store
	primary *store.Store
}

func (s slowReplica) moveOn() {
	pos := s.primary.Position()
	for deadline := time.Now().Add(2 * time.Second); s.primary.Position() <= pos && time.Now().Before(deadline); {
		time.Sleep(200 * time.Microsecond) // polling the primary's progress
	}
}

func (s slowReplica) Mailboxes(ctx context.Context, user string) ([]replicate.MailboxState, error) {
	defer s.moveOn()
	return s.Store.Mailboxes(ctx, user)
}

func (s slowReplica) DigestRange(ctx context.Context, user string, id resilmail.MailboxID, lo, hi uint32) (replicate.SetDigest, int, error) {
	defer s.moveOn()
	return s.Store.DigestRange(ctx, user, id, lo, hi)
}

func (s slowReplica) MessageRange(ctx context.Context, user string, id resilmail.MailboxID, lo, hi uint32, limit int) ([]replicate.MessageState, error) {
	defer s.moveOn()
	return s.Store.MessageRange(ctx, user, id, lo, hi, limit)
}

// TestCompareAgainstLiveWrites runs Compare and Repair, round after round,
// on a replica that follows its primary over the stream while the primary
// appends, changes flags and expunges, with the stream and the writes
// racing every read of the comparison (see slowPrimary and slowReplica): no mailbox is replaced, nothing is
// held, the stream meets no conflict, and once the writes stop every
// message appended and not expunged is on the replica, which equals the
// primary.
func TestCompareAgainstLiveWrites(t *testing.T) {
	ctx := context.Background()
	primary := openStore(t, t.TempDir())
	replica := openStore(t, t.TempDir())
	replica.SetReadOnly(true)
	var writers []*liveWriter
	for i, u := range []string{"alice", "bob", "carol"} {
		require.NoError(t, primary.CreateUser(ctx, u))
		_, err := primary.CreateMailbox(ctx, u, "Work")
		require.NoError(t, err)
		w := &liveWriter{s: primary, user: u, rnd: rand.New(rand.NewPCG(uint64(i), 7)),
			appended: map[string]map[uint32]resilmail.Digest{}, expunged: map[string]map[uint32]bool{}}
		for _, mb := range liveMailboxes {
			w.appended[mb], w.expunged[mb] = map[uint32]resilmail.Digest{}, map[uint32]bool{}
		}
		for j := range 30 {
			require.NoError(t, w.step(ctx, -j))
		}
		writers = append(writers, w)
	}
	_, srv := servePrimary(t, primary, nil)
	r, _ := startReplica(t, replica, srv.URL, t.TempDir(), nil)
	waitApplied(t, r, primary)

	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, len(writers))
	for _, w := range writers {
		wg.Go(func() {
			pace := time.NewTicker(time.Millisecond) // a steady load, not a flood the replica cannot follow
			defer pace.Stop()
			for i := 0; wctx.Err() == nil; i++ {
				<-pace.C
				if err := w.step(ctx, i); err != nil {
					errs <- fmt.Errorf("%s: %w", w.user, err)
					return
				}
			}
		})
	}

	var total replicate.RepairResult
	rounds := 10
	if testing.Short() {
		rounds = 4
	}
	slow, slowR := slowPrimary{primary, r}, slowReplica{replica, primary}
	for range rounds {
		rep, err := replicate.Compare(ctx, slow, slowR, &replicate.CompareOptions{Logger: quietLogger()})
		require.NoError(t, err)
		res, err := replicate.Repair(ctx, rep, slow, replicate.BodiesFrom(primary), slowR, &replicate.RepairOptions{Logger: quietLogger()})
		require.NoError(t, err)
		total.MailboxesReplaced += res.MailboxesReplaced
		total.MailboxesDeleted += res.MailboxesDeleted
		total.Held = append(total.Held, res.Held...)
		total.Unrepairable = append(total.Unrepairable, res.Unrepairable...)
		total.Changes += res.Changes
	}
	stop()
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	t.Logf("repairs applied %d changes over %d rounds", total.Changes, rounds)
	assert.Zero(t, total.MailboxesReplaced, "no mailbox replaced")
	assert.Zero(t, total.MailboxesDeleted, "no mailbox deleted")
	assert.Empty(t, total.Held, "nothing held: the replica never had a message the primary did not")
	assert.Empty(t, total.Unrepairable, "the replica never looked ahead of the primary")
	assert.Positive(t, total.Changes, "repairs raced the stream")

	waitApplied(t, r, primary)
	st := r.Stats()
	assert.Zero(t, st.Conflicts, "the stream met no conflict: %s", st.LastError)
	assert.Zero(t, st.ApplyErrors, "no apply failed: %s", st.LastError)
	requireSame(t, primary, replica)
	for _, w := range writers {
		for _, mb := range liveMailboxes {
			msgs, err := replica.Fetch(ctx, w.user, mb, store.Query{})
			require.NoError(t, err)
			have := make(map[uint32]resilmail.Digest, len(msgs))
			for _, m := range msgs {
				have[m.UID] = m.Digest
			}
			for uid, d := range w.appended[mb] {
				if w.expunged[mb][uid] {
					assert.NotContains(t, have, uid, "%s/%s UID %d was expunged", w.user, mb, uid)
					continue
				}
				assert.Equal(t, d, have[uid], "%s/%s UID %d: on the replica with its body", w.user, mb, uid)
			}
		}
	}
}
