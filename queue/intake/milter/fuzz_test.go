package milter_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/queue/intake"
	"github.com/resilmail/resilmail/queue/intake/milter"
)

// packet frames one milter packet: length, command, data.
func packet(cmd byte, data ...string) []byte {
	var body []byte
	body = append(body, cmd)
	for _, d := range data {
		body = append(body, d...)
	}
	out := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	return append(out, body...)
}

// scriptedMilter negotiates and continues like a milter, then answers the
// end of message with whatever answer() returns.
func scriptedMilter(t testing.TB, answer func() []byte) string {
	return rawMilter(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		for {
			var n [4]byte
			if _, err := io.ReadFull(c, n[:]); err != nil {
				return
			}
			buf := make([]byte, binary.BigEndian.Uint32(n[:]))
			if _, err := io.ReadFull(c, buf); err != nil || len(buf) == 0 {
				return
			}
			switch buf[0] {
			case 'O': // negotiate: version 6, the actions offered, every event with a reply
				neg := make([]byte, 12)
				binary.BigEndian.PutUint32(neg, 6)
				copy(neg[4:8], buf[5:9])
				c.Write(packet('O', string(neg)))
			case 'D', 'A': // macros, abort: no reply
			case 'Q':
				return
			case 'E':
				c.Write(answer())
				return
			default:
				c.Write(packet('c'))
			}
		}
	})
}

// FuzzMilterAnswer feeds arbitrary bytes as a milter's answer to the end
// of a message: the scan never panics, garbage is no verdict, and a
// verdict has a known action and edits that intake applies or refuses.
func FuzzMilterAnswer(f *testing.F) {
	f.Add(packet('a'))
	f.Add(append(packet('h', "X-Spam\x00", "Yes\x00"), packet('c')...))
	f.Add(append(packet('m', "\x00\x00\x00\x01", "Subject\x00", "*** SPAM *** hi\x00"), packet('a')...))
	f.Add(append(packet('i', "\x00\x00\x00\x00", "Authentication-Results\x00", "x; none\x00"), packet('a')...))
	f.Add(append(packet('q', "virus\x00"), packet('c')...))
	f.Add(packet('y', "554 5.7.1 no\x00"))
	f.Add(packet('y', "554 5.7.1 no"))
	f.Add(packet('d'))
	f.Add(packet('t'))
	f.Add(packet('r'))
	f.Add(append(packet('+', "<spy@example.com>\x00"), packet('a')...))
	f.Add([]byte("\xff\xff\xff\xffa"))
	var (
		mu  sync.Mutex
		cur []byte
	)
	addr := scriptedMilter(f, func() []byte { mu.Lock(); defer mu.Unlock(); return cur })
	sc, err := milter.New("tcp", addr, &milter.Options{Logger: quiet, Timeout: 2 * time.Second})
	require.NoError(f, err)
	env := &intake.ScanEnvelope{Envelope: resilmail.Envelope{ID: "q1", From: "a@example.net", To: []resilmail.Recipient{{Addr: "b@example.org"}}},
		ClientIP: netip.MustParseAddr("192.0.2.7"), HELO: "client.example.net"}
	msg := []byte("Subject: hi\r\nFrom: a@example.net\r\n\r\nbody\r\n")
	known := map[intake.Action]bool{intake.ActionAccept: true, intake.ActionTag: true, intake.ActionQuarantine: true,
		intake.ActionDiscard: true, intake.ActionTempFail: true, intake.ActionReject: true}
	f.Fuzz(func(t *testing.T, answer []byte) {
		mu.Lock()
		cur = answer
		mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		v, err := sc.Scan(ctx, env, msg)
		if err != nil {
			return
		}
		if !known[v.Action] {
			t.Fatalf("unknown action %q from answer %q", v.Action, answer)
		}
		intake.ApplyEdits(msg, true, v.Edits)
	})
}

// TestScriptedAnswers checks the raw answers FuzzMilterAnswer starts from.
func TestScriptedAnswers(t *testing.T) {
	var (
		mu  sync.Mutex
		cur []byte
	)
	addr := scriptedMilter(t, func() []byte { mu.Lock(); defer mu.Unlock(); return cur })
	sc, err := milter.New("tcp", addr, &milter.Options{Logger: quiet, Timeout: 2 * time.Second})
	require.NoError(t, err)
	env := &intake.ScanEnvelope{Envelope: resilmail.Envelope{ID: "q1", From: "a@example.net", To: []resilmail.Recipient{{Addr: "b@example.org"}}}}
	for _, tc := range []struct {
		answer []byte
		want   intake.Verdict
		fails  bool
	}{
		{answer: append(packet('h', "X-Spam\x00", "Yes\x00"), packet('c')...),
			want: intake.Verdict{Action: intake.ActionAccept, Edits: []intake.HeaderEdit{{Op: intake.HeaderAppend, Name: "X-Spam", Value: "Yes"}}}},
		{answer: append(packet('m', "\x00\x00\x00\x02", "Received\x00", "\x00"), packet('a')...),
			want: intake.Verdict{Action: intake.ActionAccept, Edits: []intake.HeaderEdit{{Op: intake.HeaderChange, Name: "Received", Index: 2}}}},
		{answer: append(packet('q', "virus\x00"), packet('c')...), want: intake.Verdict{Action: intake.ActionQuarantine, Message: "virus"}},
		{answer: packet('y', "554 5.7.1 no\x00"), want: intake.Verdict{Action: intake.ActionReject, Message: "no"}},
		{answer: packet('y', "421-4.7.0 busy\r\n421 4.7.0 later\x00"), want: intake.Verdict{Action: intake.ActionTempFail, Message: "busy later"}},
		{answer: packet('d'), want: intake.Verdict{Action: intake.ActionDiscard}},
		{answer: packet('t'), want: intake.Verdict{Action: intake.ActionTempFail}},
		{answer: packet('r'), want: intake.Verdict{Action: intake.ActionReject}},
		{answer: append(packet('+', "<spy@example.com>\x00"), packet('a')...), fails: true},
		{answer: packet('s'), fails: true}, // skip is no answer to the end of message
		{answer: nil, fails: true},
	} {
		mu.Lock()
		cur = tc.answer
		mu.Unlock()
		v, err := sc.Scan(context.Background(), env, []byte("Subject: hi\r\n\r\nbody\r\n"))
		if tc.fails {
			require.ErrorIs(t, err, milter.ErrMilter, "%q", tc.answer)
			continue
		}
		require.NoError(t, err, "%q", tc.answer)
		v.Scanner = ""
		require.Equal(t, tc.want, v, "%q", tc.answer)
	}
}

// BenchmarkScan runs whole milter conversations (a new connection, the
// negotiation, every event, an added header) for a 4 KiB message against
// a scripted milter on loopback: the MTA side's cost per message.
func BenchmarkScan(b *testing.B) {
	answer := append(packet('h', "X-Spam\x00", "No\x00"), packet('a')...)
	addr := scriptedMilter(b, func() []byte { return answer })
	sc, err := milter.New("tcp", addr, &milter.Options{Logger: quiet})
	require.NoError(b, err)
	env := &intake.ScanEnvelope{Envelope: resilmail.Envelope{ID: "q1", From: "a@example.net", To: []resilmail.Recipient{{Addr: "b@example.org"}}},
		ClientIP: netip.MustParseAddr("192.0.2.7"), HELO: "client.example.net"}
	msg := []byte("Subject: hi\r\nFrom: a@example.net\r\nTo: b@example.org\r\n\r\n" + strings.Repeat("A line of text in the body of a benchmark message.\r\n", 78))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		v, err := sc.Scan(context.Background(), env, msg)
		if err != nil || len(v.Edits) != 1 {
			b.Fatalf("%+v %v", v, err)
		}
	}
}
