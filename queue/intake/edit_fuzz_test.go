package intake

import (
	"bytes"
	"testing"
)

// FuzzApplyEdits checks that an edit never panics, never touches the body,
// and never makes a field the header parser would read differently: after
// an append, the header has one more field and the same rest.
func FuzzApplyEdits(f *testing.F) {
	f.Add([]byte("Subject: hi\r\nA-R: x\r\n\r\nbody\r\n"), "X-Spam", "Yes", 0, 0, true)
	f.Add([]byte("Subject: hi\r\n\tfolded\r\nA-R: x\r\n\r\nbody\r\n"), "a-r", "", 2, 1, true)
	f.Add([]byte("Subject: hi\nno blank line"), "Authentication-Results", "mx; spf=pass\n\tdkim=none", 1, 0, false)
	f.Add([]byte(" leading\r\n\r\n"), "X", "v\r\nBcc: x", 0, 0, true)
	f.Fuzz(func(t *testing.T, msg []byte, name, value string, op, index int, complete bool) {
		fields, rest, err := splitHeader(msg, complete)
		if err != nil {
			return
		}
		edits := []HeaderEdit{{Op: HeaderOp(op % 4), Name: name, Value: value, Index: index % 8}}
		out, err := applyEdits(msg, complete, edits)
		if err != nil {
			return
		}
		if !bytes.HasSuffix(out, rest) {
			t.Fatalf("the rest of the message changed: %q -> %q", msg, out)
		}
		if edits[0].Op == HeaderAppend {
			got, rest2, err := splitHeader(out, true)
			if err != nil || len(got) != len(fields)+1 || !bytes.Equal(rest2, rest) {
				t.Fatalf("append made %d fields (want %d), rest %q (want %q), err %v", len(got), len(fields)+1, rest2, rest, err)
			}
		}
	})
}
