package backup_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail/backup"
	"github.com/resilmail/resilmail/replicate/store"
)

// crashChild is the child process of TestKilledMidBackupAndMidPrune: it
// changes the store, backs it up and prunes, over and over, printing a
// line at every durable step, until it is killed.
func crashChild(storeDir, repoDir string, seed uint64) {
	ctx := context.Background()
	st, err := store.Open(storeDir, &store.Options{Logger: quiet()})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	say := func(what string) func(string) {
		return func(name string) { fmt.Printf("%s %s\n", what, name) }
	}
	target, err := backup.NewFolder(repoDir)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	repo, err := backup.Open(ctx, target, &backup.Options{Logger: quiet(), PackSize: 16 << 10, KeepSnapshots: 2, Retention: time.Millisecond,
		Hooks: &backup.Hooks{AfterPack: say("pack"), AfterChanges: say("changes"), BeforeDelete: say("delete")}})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	users, _ := st.Users(ctx)
	for round := 0; ; round++ {
		for i := 0; i < 30; i++ {
			u := users[rng.IntN(len(users))]
			if _, err := st.Append(ctx, u, "INBOX", nil, time.Time{}, strings.NewReader(body(u, "crash", rng.IntN(1<<30)))); err != nil {
				fmt.Println("ERROR", err)
				os.Exit(1)
			}
		}
		u := users[rng.IntN(len(users))]
		msgs, _ := st.Fetch(ctx, u, "INBOX", store.Query{})
		for i := 0; i < len(msgs)/3; i++ {
			st.Expunge(ctx, u, "INBOX", uids(msgs[rng.IntN(len(msgs))].UID))
		}
		if _, err := repo.Backup(ctx, st); err != nil {
			fmt.Println("ERROR backup", err)
			os.Exit(1)
		}
		fmt.Println("backup done")
		if _, err := repo.Prune(ctx); err != nil {
			fmt.Println("ERROR prune", err)
			os.Exit(1)
		}
		fmt.Println("prune done")
	}
}

func TestMain(m *testing.M) {
	if dirs := os.Getenv("BACKUP_RESTORE_CHILD"); dirs != "" {
		parts := strings.Split(dirs, "|")
		restoreChild(parts[0], parts[1])
		return
	}
	if dirs := os.Getenv("BACKUP_CRASH_CHILD"); dirs != "" {
		parts := strings.Split(dirs, "|")
		var seed uint64
		fmt.Sscan(parts[2], &seed)
		crashChild(parts[0], parts[1], seed)
		return
	}
	os.Exit(m.Run())
}

// A backup killed with SIGKILL at random points (after a pack, after a
// segment of changes, before a prune's deletion, or a few milliseconds
// after) leaves a repository that verifies; the next backup (which takes
// over the dead run's lock) succeeds, and a restore from it equals the
// store.
func TestKilledMidBackupAndMidPrune(t *testing.T) {
	ctx := context.Background()
	storeDir, repoDir := t.TempDir(), t.TempDir()
	{
		st, err := store.Open(storeDir, &store.Options{Logger: quiet()})
		require.NoError(t, err)
		fill(t, st, 3, 1, 10)
		st.Close()
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	kinds := map[string]int{}
	for round := 0; round < 5; round++ {
		cmd := exec.Command(os.Args[0], "-test.run", "^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("BACKUP_CRASH_CHILD=%s|%s|%d", storeDir, repoDir, seed+uint64(round)))
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		cmd.Stderr = os.Stderr
		require.NoError(t, cmd.Start())
		killAt := 1 + rng.IntN(40)
		sc := bufio.NewScanner(out)
		events, last := 0, ""
		for sc.Scan() {
			line := sc.Text()
			require.False(t, strings.HasPrefix(line, "ERROR"), line)
			events++
			last = strings.Fields(line)[0]
			if events == killAt {
				delay := time.Duration(rng.IntN(3000)) * time.Microsecond
				time.AfterFunc(delay, func() { cmd.Process.Signal(syscall.SIGKILL) })
				break
			}
		}
		go func() {
			for sc.Scan() {
			}
		}()
		cmd.Wait()
		kinds[last]++
		t.Logf("round %d: killed after %d events (the last: %s)", round, events, last)

		st, err := store.Open(storeDir, &store.Options{Logger: quiet()})
		require.NoError(t, err)
		repo := openRepo(t, mustFolder(t, repoDir), nil, nil)
		_, err = repo.Verify(ctx, backup.VerifyOptions{})
		require.NoError(t, err, "the killed run left a repository that does not verify")
		_, err = repo.Backup(ctx, st)
		require.NoError(t, err)
		rep, err := repo.Verify(ctx, backup.VerifyOptions{})
		require.NoError(t, err)
		require.Positive(t, rep.Bodies)
		dst := openStore(t, t.TempDir(), nil)
		_, err = repo.Restore(ctx, dst, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
		require.NoError(t, err)
		equalStores(t, st, dst)
		dst.Close()
		st.Close()
	}
	t.Logf("kill points: %v", kinds)
	assert.NotEmpty(t, kinds)
}

func mustFolder(t *testing.T, dir string) *backup.Folder {
	t.Helper()
	f, err := backup.NewFolder(dir)
	require.NoError(t, err)
	return f
}

// restoreChild is the child process of TestKilledMidRestore: it rebuilds
// the store in dstDir from the repository in repoDir, printing a line per
// message restored and "DONE" once Restore returned, then waits for the
// kill.
func restoreChild(repoDir, dstDir string) {
	ctx := context.Background()
	fail := func(err error) {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	target, err := backup.NewFolder(repoDir)
	if err != nil {
		fail(err)
	}
	repo, err := backup.Open(ctx, target, &backup.Options{Logger: quiet(), Parallelism: 2,
		Progress: func(p backup.Progress) { fmt.Printf("P %d\n", p.Done) }})
	if err != nil {
		fail(err)
	}
	st, err := store.Open(dstDir, &store.Options{Logger: quiet()})
	if err != nil {
		fail(err)
	}
	if _, err := repo.Restore(ctx, st, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true}); err != nil {
		fail(err)
	}
	fmt.Println("DONE")
	select {}
}

// A server rebuilt from the backup and killed with SIGKILL mid-restore
// (bodies being written, the store's commit under way, or once done)
// leaves a store that is either empty, and a new restore rebuilds it, or
// whole: never a part of the mail served as if it were all of it.
func TestKilledMidRestore(t *testing.T) {
	ctx := context.Background()
	src := openStore(t, t.TempDir(), nil)
	fill(t, src, 3, 2, 40)
	repoDir := t.TempDir()
	repo := openRepo(t, mustFolder(t, repoDir), nil, nil)
	_, err := repo.Backup(ctx, src)
	require.NoError(t, err)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	empty, whole := 0, 0
	for round := 0; round < 5; round++ {
		dstDir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run", "^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("BACKUP_RESTORE_CHILD=%s|%s", repoDir, dstDir))
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		cmd.Stderr = os.Stderr
		require.NoError(t, cmd.Start())
		// Among the messages, at the last one (the commit), or once done.
		killAt := []int{1 + rng.IntN(239), 240, 241}[round%3]
		sc := bufio.NewScanner(out)
		done := false
		for sc.Scan() {
			line := sc.Text()
			require.False(t, strings.HasPrefix(line, "ERROR"), line)
			n := 0
			if line == "DONE" {
				n, done = 241, true
			} else {
				fmt.Sscanf(line, "P %d", &n)
			}
			if n >= killAt {
				delay := time.Duration(rng.IntN(2000)) * time.Microsecond
				time.AfterFunc(delay, func() { cmd.Process.Signal(syscall.SIGKILL) })
				break
			}
		}
		go func() {
			for sc.Scan() {
			}
		}()
		cmd.Wait()

		dst, err := store.Open(dstDir, &store.Options{Logger: quiet()})
		require.NoError(t, err)
		if us, _ := dst.Users(ctx); len(us) == 0 {
			require.False(t, done, "round %d: Restore returned, yet the store is empty", round)
			empty++
			_, err = repo.Restore(ctx, dst, backup.Selection{}, backup.RestoreOptions{KeepUIDs: true})
			require.NoError(t, err)
		} else {
			whole++
		}
		equalStores(t, src, dst)
		for _, u := range []string{"user0@example.org", "user2@example.org"} {
			msgs, err := dst.Fetch(ctx, u, "Folder1", store.Query{})
			require.NoError(t, err)
			require.Len(t, msgs, 40)
			for _, m := range msgs {
				_, err := dst.Body(ctx, m.Digest)
				require.NoError(t, err, "round %d: a message without its body", round)
			}
		}
		require.NoError(t, dst.Close())
	}
	t.Logf("5 kills: %d left the store empty (then restored), %d left it whole", empty, whole)
}
