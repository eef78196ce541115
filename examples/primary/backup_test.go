package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// mailboxView is what an IMAP client sees of a mailbox.
type mailboxView struct {
	UIDValidity uint32
	UIDNext     imap.UID
	Messages    map[imap.UID]string   // body by UID
	Flags       map[imap.UID][]string // flags by UID (\Recent aside)
}

func readOverIMAP(t *testing.T, n *mailNode, mailboxes ...string) map[string]mailboxView {
	t.Helper()
	c := dialIMAP(t, n.imap, nil)
	require.NoError(t, c.Login("alice@example.org", "alice-pw").Wait())
	out := map[string]mailboxView{}
	for _, name := range mailboxes {
		sel, err := c.Select(name, &imap.SelectOptions{ReadOnly: true}).Wait()
		require.NoError(t, err, name)
		v := mailboxView{UIDValidity: sel.UIDValidity, UIDNext: sel.UIDNext, Messages: map[imap.UID]string{}, Flags: map[imap.UID][]string{}}
		if sel.NumMessages == 0 {
			out[name] = v
			continue
		}
		all, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true,
			BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
		require.NoError(t, err, name)
		for _, m := range all {
			for _, bs := range m.BodySection {
				v.Messages[m.UID] = string(bs.Bytes)
			}
			var fl []string
			for _, f := range m.Flags {
				if f != "\\Recent" {
					fl = append(fl, string(f))
				}
			}
			slices.Sort(fl)
			v.Flags[m.UID] = fl
		}
		out[name] = v
	}
	return out
}

// TestRebuildFromTheBackupAlone runs the real programs: mail delivered
// over LMTP (swaks) to a primary that backs itself up continuously
// (-backup), messages flagged, copied, moved and deleted over IMAP; the
// primary stops and its folder is destroyed; `backup restore -keep-uids`
// rebuilds a store from the repository alone, and a new primary serves
// it: every message reads back over IMAP with the same UIDs, UIDVALIDITY,
// UIDNEXT and flags. (No standby runs here: a standby's folder would be
// destroyed the same way; the repository is all that is left.)
func TestRebuildFromTheBackupAlone(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "backup")
	out, err := exec.Command("go", "build", "-o", bin, "../backup").CombinedOutput()
	require.NoError(t, err, "%s", out)
	repoDir := t.TempDir()
	keyFile := filepath.Join(t.TempDir(), "key")
	require.NoError(t, os.WriteFile(keyFile, []byte("4f2a0c6e8b1d3f5a7c9e0b2d4f6a8c0e1b3d5f7a9c0e2b4d6f8a0c1e3b5d7f9a\n"), 0o600))
	n := startMailNode(t, "-backup", repoDir, "-backup-key-file", keyFile, "-backup-flush", "20ms")

	for i := 0; i < 12; i++ {
		o := swaks(t, n.lmtp, fmt.Sprintf("message %d for the backup", i), "alice@example.org")
		require.Contains(t, o, "250 ", o)
	}
	c := dialIMAP(t, n.imap, nil)
	require.NoError(t, c.Login("alice@example.org", "alice-pw").Wait())
	_, err = c.Select("INBOX", nil).Wait()
	require.NoError(t, err)
	require.NoError(t, c.Store(imap.UIDSetNum(2, 4), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen, imap.FlagFlagged}, Silent: true}, nil).Close())
	_, err = c.Copy(imap.UIDSetNum(5, 6), "Archive").Wait()
	require.NoError(t, err)
	_, err = c.Move(imap.UIDSetNum(7), "Trash").Wait()
	require.NoError(t, err)
	require.NoError(t, c.Store(imap.UIDSetNum(1, 3, 12), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close())
	require.NoError(t, c.Expunge().Close())
	require.NoError(t, c.Logout().Wait())
	boxes := []string{"INBOX", "Archive", "Trash", "Sent", "Drafts", "Junk"}
	before := readOverIMAP(t, n, boxes...)
	require.Len(t, before["INBOX"].Messages, 8)
	require.Equal(t, imap.UID(13), before["INBOX"].UIDNext, "UIDNEXT above the last message: 12 was expunged")

	// Stop the primary (it writes what its backup read) and lose its folder.
	require.NoError(t, n.cmd.Process.Signal(os.Interrupt))
	require.NoError(t, n.cmd.Wait())
	require.NoError(t, os.RemoveAll(filepath.Join(n.dir, "store")))

	// The deletions are in the backup, with their times.
	deleted, err := exec.Command(bin, "list", "-repo", repoDir, "-key-file", keyFile, "-deleted-from", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)).CombinedOutput()
	require.NoError(t, err, "%s", deleted)
	assert.Contains(t, string(deleted), "4 messages", "UIDs 1, 3 and 12 expunged, 7 moved out of INBOX")

	// Rebuild from the backup alone, into a new folder, and serve it.
	newDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(newDir, "passwd"), []byte("alice@example.org:{PLAIN}alice-pw\n"), 0o600))
	o, err := exec.Command(bin, "restore", "-repo", repoDir, "-key-file", keyFile, "-store", filepath.Join(newDir, "store"), "-keep-uids").CombinedOutput()
	require.NoError(t, err, "%s", o)
	n2 := startMailNodeIn(t, newDir)
	after := readOverIMAP(t, n2, boxes...)
	for _, name := range boxes {
		assert.Equal(t, before[name], after[name], name)
	}
	// And it delivers on from there.
	o2 := swaks(t, n2.lmtp, "after the rebuild", "alice@example.org")
	require.Contains(t, o2, "250 ", o2)
	again := readOverIMAP(t, n2, "INBOX")
	_, ok := again["INBOX"].Messages[13]
	assert.True(t, ok, "the next delivery gets UID 13, never a UID a client saw")
}
