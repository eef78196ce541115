package imapstore

import (
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/stretchr/testify/require"
)

func benchMailbox(b *testing.B, n int) (*env, *imapclient.Client) {
	e := newEnv(b)
	c := e.login(b, nil)
	body := strings.Repeat("lorem ipsum dolor sit amet consectetur adipiscing elit sed\r\n", 130)
	for i := 0; i < n; i++ {
		e.deliver(b, fmt.Sprintf("From: s%d@example.net\r\nSubject: message %d\r\nMessage-ID: <%d@x>\r\n\r\n%s", i, i, i, body))
	}
	_, err := c.Select("INBOX", nil).Wait()
	require.NoError(b, err)
	return e, c
}

func drain(b *testing.B, cmd *imapclient.FetchCommand) int {
	n := 0
	for m := cmd.Next(); m != nil; m = cmd.Next() {
		for item := m.Next(); item != nil; item = m.Next() {
			if bs, ok := item.(imapclient.FetchItemDataBodySection); ok {
				io.Copy(io.Discard, bs.Literal)
			}
		}
		n++
	}
	require.NoError(b, cmd.Close())
	return n
}

// BenchmarkFetchHeaders fetches the headers of every message of a
// mailbox of 2 000 (per op: the whole mailbox).
func BenchmarkFetchHeaders(b *testing.B) {
	_, c := benchMailbox(b, 2000)
	b.ResetTimer()
	for range b.N {
		n := drain(b, c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true, RFC822Size: true,
			BodySection: []*imap.FetchItemBodySection{{Specifier: imap.PartSpecifierHeader, Peek: true}}}))
		require.Equal(b, 2000, n)
	}
}

// BenchmarkFetchBodies fetches 100 whole messages of about 8 KiB.
func BenchmarkFetchBodies(b *testing.B) {
	_, c := benchMailbox(b, 100)
	b.ResetTimer()
	for range b.N {
		n := drain(b, c.Fetch(imap.SeqSet{{Start: 1, Stop: 100}}, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}))
		require.Equal(b, 100, n)
	}
}

// BenchmarkFetchEnvelopes fetches ENVELOPE and BODYSTRUCTURE of 2 000
// messages (parsed once per body, then from the cache).
func BenchmarkFetchEnvelopes(b *testing.B) {
	_, c := benchMailbox(b, 2000)
	b.ResetTimer()
	for range b.N {
		n := drain(b, c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Envelope: true, BodyStructure: &imap.FetchItemBodyStructure{}}))
		require.Equal(b, 2000, n)
	}
}

// BenchmarkSearchText runs SEARCH TEXT (a word no message has, so every
// message is read) over a mailbox of 2 000 plain messages and of 2 000
// base64 ones, which are decoded (per op: the whole mailbox).
func BenchmarkSearchText(b *testing.B) {
	for _, enc := range []string{"plain", "base64"} {
		b.Run(enc, func(b *testing.B) {
			e := newEnv(b)
			c := e.login(b, nil)
			text := strings.Repeat("lorem ipsum dolor sit amet consectetur adipiscing elit sed\r\n", 130)
			for i := 0; i < 2000; i++ {
				body := fmt.Sprintf("Subject: message %d\r\n\r\n%s", i, text)
				if enc == "base64" {
					body = fmt.Sprintf("Subject: message %d\r\nContent-Transfer-Encoding: base64\r\n\r\n%s", i, base64.StdEncoding.EncodeToString([]byte(text)))
				}
				e.deliver(b, body)
			}
			_, err := c.Select("INBOX", nil).Wait()
			require.NoError(b, err)
			b.ResetTimer()
			for range b.N {
				data, err := c.Search(&imap.SearchCriteria{Text: []string{"nowhere"}}, nil).Wait()
				require.NoError(b, err)
				require.Empty(b, data.AllSeqNums())
			}
		})
	}
}
