package store_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/replicate/store"
)

const crashChildEnv = "RESILMAIL_STORE_CRASH_CHILD"

const crashWorkers = 4

// crashFlagSets are the flag sets the crash test stores, by index.
var crashFlagSets = [][]string{nil, {`\Seen`}, {`\Seen`, `\Flagged`}, {`\Answered`, "$A"}}

func crashBody(id string) string { return msg("crash "+id, strings.Repeat(id, 200)) }

// TestCrashChild is the child process of TestCrashRecovery: workers append,
// change flags and expunge in their own mailboxes, and one of them writes
// checkpoints, until the parent kills the process. Each operation is
// announced ("B ...") before it starts and acknowledged ("K ...") once it
// returned nil.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("run by TestCrashRecovery as a child process")
	}
	round := os.Getenv(crashChildEnv + "_ROUND")
	ctx := context.Background()
	opts := &store.Options{Logger: discardLogger(), SegmentSize: 64 << 10, KeepChanges: 200}
	s, err := store.Open(dir, opts)
	require.NoError(t, err)
	if err := s.CreateUser(ctx, "crash"); err != nil && !errors.Is(err, store.ErrExists) {
		t.Fatal(err)
	}
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		fmt.Fprintf(os.Stdout, format+"\n", args...)
		outMu.Unlock()
	}
	var wg sync.WaitGroup
	for w := 0; w < crashWorkers; w++ {
		mb := fmt.Sprintf("w%d", w)
		if _, err := s.CreateMailbox(ctx, "crash", mb); err != nil && !errors.Is(err, store.ErrExists) {
			t.Fatal(err)
		}
		msgs, err := s.Fetch(ctx, "crash", mb, store.Query{})
		require.NoError(t, err)
		var uids []uint32
		for _, m := range msgs {
			uids = append(uids, m.UID)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(rand.Uint64(), uint64(w)))
			for i := 0; ; i++ {
				op := rnd.IntN(100)
				switch {
				case op < 60 || len(uids) == 0:
					id := fmt.Sprintf("r%sw%di%d", round, w, i)
					say("B %d A %s", w, id)
					uid, err := s.Append(ctx, "crash", mb, nil, time.Time{}, strings.NewReader(crashBody(id)))
					if err == nil {
						uids = append(uids, uid)
						say("K %d A %s %d", w, id, uid)
					}
				case op < 85:
					uid, fs := uids[rnd.IntN(len(uids))], rnd.IntN(len(crashFlagSets))
					say("B %d F %d %d", w, uid, fs)
					if _, err := s.SetFlags(ctx, "crash", mb, resilmail.NewUIDSet(uid), crashFlagSets[fs]); err == nil {
						say("K %d F %d %d", w, uid, fs)
					}
				default:
					k := rnd.IntN(len(uids))
					uid := uids[k]
					say("B %d E %d", w, uid)
					if _, err := s.Expunge(ctx, "crash", mb, resilmail.NewUIDSet(uid)); err == nil {
						uids = slices.Delete(uids, k, k+1)
						say("K %d E %d", w, uid)
					}
				}
				if w == 0 && i%50 == 49 {
					if err := s.Compact(ctx); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
}

// crashMsg is what the parent knows of a message.
type crashMsg struct {
	digest resilmail.Digest
	flags  int // index in crashFlagSets
}

// crashMailbox is the parent's model of one worker's mailbox.
type crashMailbox struct {
	msgs    map[uint32]crashMsg
	used    map[uint32]bool // every UID ever acknowledged or seen
	pending []string        // the operation announced and not acknowledged
}

func TestCrashRecovery(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("child")
	}
	rounds := 8
	if testing.Short() {
		rounds = 3
	}
	dir := t.TempDir()
	model := make([]*crashMailbox, crashWorkers)
	for w := range model {
		model[w] = &crashMailbox{msgs: map[uint32]crashMsg{}, used: map[uint32]bool{}}
	}
	total := 0
	for r := 0; r < rounds; r++ {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestCrashChild$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("%s_ROUND=%d", crashChildEnv, r))
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		killAfter := 50 + rand.IntN(500)
		acks := 0
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 3 || (f[0] != "B" && f[0] != "K") {
				continue
			}
			w, err := strconv.Atoi(f[1])
			require.NoError(t, err)
			mb := model[w]
			if f[0] == "B" {
				mb.pending = f[2:]
				continue
			}
			mb.pending = nil
			acks++
			switch f[2] {
			case "A":
				uid := parseUID(t, f[4])
				require.False(t, mb.used[uid], "UID %d of w%d reused", uid, w)
				mb.used[uid] = true
				mb.msgs[uid] = crashMsg{digest: resilmail.DigestOf([]byte(crashBody(f[3])))}
			case "F":
				uid := parseUID(t, f[3])
				m := mb.msgs[uid]
				m.flags, _ = strconv.Atoi(f[4])
				mb.msgs[uid] = m
			case "E":
				delete(mb.msgs, parseUID(t, f[3]))
			}
			if acks == killAfter {
				require.NoError(t, cmd.Process.Kill()) // SIGKILL
			}
		}
		cmd.Wait()
		require.GreaterOrEqual(t, acks, killAfter, "the child died early; run it alone to see why")
		total += acks
		verifyCrash(t, dir, model)
		t.Logf("round %d: %d operations acknowledged before kill -9", r, acks)
	}
	t.Logf("%d acknowledged operations over %d kills: none lost, nothing half-visible, no UID reused", total, rounds)
}

func parseUID(t *testing.T, s string) uint32 {
	t.Helper()
	n, err := strconv.ParseUint(s, 10, 32)
	require.NoError(t, err)
	return uint32(n)
}

// verifyCrash opens the store after a kill and checks it against the model:
// every acknowledged message is there with its body and flags, the one
// operation in flight per worker happened entirely or not at all, and
// nothing else is there. The model then adopts what the store shows.
func verifyCrash(t *testing.T, dir string, model []*crashMailbox) {
	t.Helper()
	ctx := context.Background()
	s, err := store.Open(dir, &store.Options{Logger: discardLogger()})
	require.NoError(t, err)
	defer s.Close()
	for w, mb := range model {
		name := fmt.Sprintf("w%d", w)
		st, err := s.MailboxStatus(ctx, "crash", name)
		if errors.Is(err, store.ErrNotFound) && len(mb.msgs) == 0 {
			continue // killed before the mailbox was created
		}
		require.NoError(t, err)
		msgs, err := s.Fetch(ctx, "crash", name, store.Query{})
		require.NoError(t, err)
		got := map[uint32]store.Message{}
		for _, m := range msgs {
			got[m.UID] = m
			b, err := s.Body(ctx, m.Digest)
			require.NoError(t, err, "body of w%d UID %d", w, m.UID)
			require.Equal(t, m.Digest, resilmail.DigestOf(b))
		}
		p := mb.pending
		for uid, want := range mb.msgs {
			m, ok := got[uid]
			if !ok {
				require.True(t, len(p) == 2 && p[0] == "E" && parseUID(t, p[1]) == uid, "acknowledged w%d UID %d lost", w, uid)
				continue
			}
			require.Equal(t, want.digest, m.Digest, "w%d UID %d", w, uid)
			flags := slices.Clone(crashFlagSets[want.flags])
			if len(p) == 3 && p[0] == "F" && parseUID(t, p[1]) == uid {
				fs, _ := strconv.Atoi(p[2])
				if !slices.Equal(m.Flags, crashFlagSets[fs]) {
					require.Equal(t, flags, m.Flags, "w%d UID %d flags", w, uid)
				}
			} else {
				require.Equal(t, flags, m.Flags, "w%d UID %d flags", w, uid)
			}
		}
		for uid, m := range got {
			if _, ok := mb.msgs[uid]; ok {
				continue
			}
			// Only the append in flight may have happened unacknowledged.
			require.True(t, len(p) == 2 && p[0] == "A", "w%d UID %d appeared from nowhere", w, uid)
			require.False(t, mb.used[uid], "w%d UID %d reused", w, uid)
			require.Equal(t, resilmail.DigestOf([]byte(crashBody(p[1]))), m.Digest)
		}
		for uid := range got {
			require.Less(t, uid, st.UIDNext)
		}
		for uid := range mb.used {
			require.Less(t, uid, st.UIDNext, "UIDNEXT went back")
		}
		// Adopt what the store shows: the operation in flight is decided.
		mb.msgs = map[uint32]crashMsg{}
		for uid, m := range got {
			fs := slices.IndexFunc(crashFlagSets, func(f []string) bool { return slices.Equal(f, m.Flags) })
			require.GreaterOrEqual(t, fs, 0)
			mb.msgs[uid] = crashMsg{digest: m.Digest, flags: fs}
			mb.used[uid] = true
		}
		mb.pending = nil
	}
	rep, err := s.Scrub(ctx)
	require.NoError(t, err)
	require.Empty(t, rep.Corrupt)
}
