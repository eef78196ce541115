package replicate

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzDecodeInventoryResponse feeds the remote inventory's decoders
// arbitrary responses: they must not panic, and what they accept must
// survive a round trip through the server's encoding unchanged.
func FuzzDecodeInventoryResponse(f *testing.F) {
	f.Add(byte(0), []byte(`{"users":["alice","bob"]}`))
	f.Add(byte(1), []byte(`{"subscriptions":["INBOX","Lists/go"]}`))
	f.Add(byte(2), []byte(`{"mailboxes":[{"id":"0102030405060708090a0b0c0d0e0f10","name":"INBOX","uidvalidity":7,"uidnext":3,"highestmodseq":9,"messages":2,"size":300,"digest":"000102030405060708090a0b0c0d0e0f","corrupt":1}]}`))
	f.Add(byte(3), []byte(`{"digest":"000102030405060708090a0b0c0d0e0f","count":12}`))
	f.Add(byte(4), []byte(`{"messages":[{"uid":2,"modseq":4,"digest":"abababababababababababababababababababababababababababababababab","size":10,"date":"2026-01-02T03:04:05.5Z","flags":["\\Seen","$Junk"]}]}`))
	f.Add(byte(4), []byte(`{"messages":[{"uid":0}]}`))
	f.Add(byte(2), []byte(`{"mailboxes":null}`))
	f.Fuzz(func(t *testing.T, kind byte, data []byte) {
		var (
			v   any
			err error
		)
		switch kind % 5 {
		case 0:
			var l []string
			l, err = decodeUsers(data)
			v = usersResponse{Users: l}
		case 1:
			var l []string
			l, err = decodeSubscriptions(data)
			v = subscriptionsResponse{Subscriptions: l}
		case 2:
			var l []MailboxState
			l, err = decodeMailboxes(data)
			v = mailboxesResponse{Mailboxes: l}
		case 3:
			var r digestResponse
			r.Digest, r.Count, err = decodeDigest(data)
			v = r
		case 4:
			var l []MessageState
			l, err = decodeMessages(data, 1, 100, 50)
			v = messagesResponse{Messages: l}
		}
		if err != nil {
			require.ErrorIs(t, err, ErrBadInventory)
			return
		}
		b, err := json.Marshal(v)
		require.NoError(t, err)
		var again any
		switch kind % 5 {
		case 0:
			l, err := decodeUsers(b)
			require.NoError(t, err)
			again = usersResponse{Users: l}
		case 1:
			l, err := decodeSubscriptions(b)
			require.NoError(t, err)
			again = subscriptionsResponse{Subscriptions: l}
		case 2:
			l, err := decodeMailboxes(b)
			require.NoError(t, err)
			again = mailboxesResponse{Mailboxes: l}
		case 3:
			var r digestResponse
			r.Digest, r.Count, err = decodeDigest(b)
			require.NoError(t, err)
			again = r
		case 4:
			l, err := decodeMessages(b, 1, 100, 50)
			require.NoError(t, err)
			again = messagesResponse{Messages: l}
		}
		require.Equal(t, v, again)
	})
}
