package imapstore

import (
	"bytes"
	"testing"
)

// FuzzParseCommand feeds the front's command tokenizer and the walkers
// over its tokens (SEARCH keys, FETCH and STORE modifiers, SELECT
// parameters): no input may panic, and every token's span lies within
// the command.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{
		"a FETCH 1:* (FLAGS MODSEQ) (CHANGEDSINCE 12 VANISHED)\r\n",
		"a UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (From {2+}\r\nTo)]<0.10>)\r\n",
		"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541 (1,3:5 41,43:45)))\r\n",
		"a STORE 1:3 (UNCHANGEDSINCE 0) +FLAGS.SILENT (\\Seen $Junk)\r\n",
		`a SEARCH RETURN (ALL MIN) CHARSET UTF-8 OR NOT MODSEQ "/flags/\\draft" all 5 (SUBJECT "x\"y" HEADER To {3+}` + "\r\nabc)\r\n",
		"a ENABLE CONDSTORE QRESYNC IMAP4rev2\r\n",
		"a STATUS \"Sent Items\" (MESSAGES HIGHESTMODSEQ)\r\n",
		"a APPEND INBOX ~{3+}\r\n\x00\x01\x02\r\n",
		"* FETCH ((((\r\n",
		"a SEARCH {99999999999}\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		literalMarker(b)
		c, err := parseCommand(b)
		if err != nil {
			return
		}
		var check func(ts []token)
		check = func(ts []token) {
			for _, tk := range ts {
				if tk.start < 0 || tk.end > len(b) || tk.start > tk.end {
					t.Fatalf("token %+v outside the command of %d bytes", tk, len(b))
				}
				check(tk.list)
			}
		}
		check(c.args)
		for i := 0; i < len(c.args); {
			var found []modseqKey
			j, ok := searchKeys(c.args, i, 0, &found)
			if !ok || j <= i {
				break
			}
			i = j
		}
		out := c.rebuild(c.args, "")
		if !bytes.HasSuffix(out, []byte("\r\n")) {
			t.Fatalf("rebuilt command %q has no CRLF", out)
		}
		var p selectParams
		for _, tk := range c.args {
			p.parseQResync(tk)
			parseModSeq(tk, true)
			parseSet(tk.val, 7)
		}
	})
}
