package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
)

func wireChange(seq uint64) resilmail.Change {
	return resilmail.Change{
		Seq: seq, Epoch: 3, Kind: resilmail.ChangeAppend, Time: time.Unix(1700000000, 5).UTC(),
		User: "alice", Mailbox: "INBOX", MailboxID: resilmail.MailboxID{1, 2, 3}, UIDValidity: 7,
		UID: uint32(seq), Digest: resilmail.DigestOf([]byte("body")), Size: 4,
		InternalDate: time.Unix(1700000000, 0).UTC(), Flags: []string{`\Seen`}, ModSeq: seq,
	}
}

// wireStream returns a stream with a change, a heartbeat and an error.
func wireStream(t testing.TB) []byte {
	var b bytes.Buffer
	w, err := NewWriter(&b)
	require.NoError(t, err)
	c := wireChange(1)
	require.NoError(t, w.WriteChange(&c))
	require.NoError(t, w.WriteHeartbeat(Heartbeat{Position: 9, Epoch: 3, Time: time.Unix(1700000001, 0)}))
	require.NoError(t, w.WriteError("source failed"))
	require.Equal(t, int64(b.Len()), w.Written())
	return b.Bytes()
}

func TestFrameRoundTrip(t *testing.T) {
	data := wireStream(t)
	r := NewReader(bytes.NewReader(data), nil)
	f, err := r.Next()
	require.NoError(t, err)
	assert.Equal(t, CurrentVersion, r.Version())
	assert.Equal(t, FrameChange, f.Type)
	want := wireChange(1)
	assert.Equal(t, want.String(), f.Change.String())
	f, err = r.Next()
	require.NoError(t, err)
	assert.Equal(t, FrameHeartbeat, f.Type)
	assert.Equal(t, uint64(9), f.Heartbeat.Position)
	assert.Equal(t, resilmail.Epoch(3), f.Heartbeat.Epoch)
	assert.True(t, f.Heartbeat.Time.Equal(time.Unix(1700000001, 0)))
	f, err = r.Next()
	require.NoError(t, err)
	assert.Equal(t, "source failed", f.Error)
	_, err = r.Next()
	assert.Equal(t, io.EOF, err)
	assert.Equal(t, int64(len(data)), r.BytesRead())
}

func TestFrameReaderAcceptsPreviousVersion(t *testing.T) {
	// Version 1: heartbeats without time.
	var b bytes.Buffer
	b.WriteString("resilmail-stream 1\n")
	p := binary.AppendUvarint(nil, 5)
	p = binary.AppendUvarint(p, 2)
	h := []byte{byte(FrameHeartbeat), 0, 0, 0, byte(len(p)), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(h[5:], frameCRC(h[:5], p))
	b.Write(h)
	b.Write(p)
	r := NewReader(&b, nil)
	f, err := r.Next()
	require.NoError(t, err)
	assert.Equal(t, 1, r.Version())
	assert.Equal(t, Heartbeat{Position: 5, Epoch: 2}, f.Heartbeat)
}

func TestFrameReaderRejects(t *testing.T) {
	good := wireStream(t)
	hdr := len("resilmail-stream 3\n")
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string]struct {
		data []byte
		max  int
		want string
	}{
		"empty":           {data: nil, want: "no header"},
		"other format":    {data: []byte("HTTP/1.1 200 OK\r\n"), want: "not a replication stream"},
		"future version":  {data: []byte("resilmail-stream 4\n"), want: "unsupported stream version"},
		"old version":     {data: []byte("resilmail-stream 0\n"), want: "unsupported stream version"},
		"endless header":  {data: bytes.Repeat([]byte("x"), 100), want: "not a replication stream"},
		"truncated frame": {data: good[:hdr+20], want: "truncated change frame"},
		"truncated head":  {data: good[:hdr+4], want: "truncated frame header"},
		"oversized":       {data: good, max: 10, want: "exceeds the limit"},
		"flipped payload": {data: mutate(func(b []byte) []byte { b[hdr+20] ^= 1; return b }), want: "fails its CRC"},
		"forged length": {data: mutate(func(b []byte) []byte {
			b[hdr+4]--
			return b
		}), want: "fails its CRC"},
		"forged type":  {data: mutate(func(b []byte) []byte { b[hdr] = byte(FrameError); return b }), want: "fails its CRC"},
		"unknown type": {data: mutate(func(b []byte) []byte { b[hdr] = 9; return b }), want: "unknown frame type"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tc.data), &ReaderOptions{MaxFrame: tc.max})
			var err error
			for range 4 {
				if _, err = r.Next(); err != nil {
					break
				}
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrFrame)
			assert.Contains(t, err.Error(), tc.want)
			_, again := r.Next()
			assert.Equal(t, err, again, "errors are sticky")
		})
	}
}

func TestBodyFrames(t *testing.T) {
	body := []byte("Subject: hi\r\n\r\nhello\r\n")
	d := resilmail.DigestOf(body)
	var b bytes.Buffer
	w, err := NewWriter(&b)
	require.NoError(t, err)
	require.NoError(t, w.WriteBody(d, body))
	require.NoError(t, w.WriteBody(d, nil)) // a frame carries any bytes; the replica verifies them
	data := bytes.Clone(b.Bytes())
	r := NewReader(&b, nil)
	f, err := r.Next()
	require.NoError(t, err)
	assert.Equal(t, FrameBody, f.Type)
	assert.Equal(t, d, f.Digest)
	assert.Equal(t, body, f.Body)
	f2, err := r.Next()
	require.NoError(t, err)
	assert.Empty(t, f2.Body)
	assert.Equal(t, body, f.Body, "a frame's body is its own copy")

	// Version 2 has no body frames: the writer refuses them, and a reader
	// of a version 2 stream does not accept one.
	var v2 bytes.Buffer
	w2, err := NewWriterVersion(&v2, 2)
	require.NoError(t, err)
	assert.Error(t, w2.WriteBody(d, body))
	forged := append([]byte("resilmail-stream 2\n"), data[len("resilmail-stream 3\n"):]...)
	_, err = NewReader(bytes.NewReader(forged), nil).Next()
	require.ErrorIs(t, err, ErrFrame)
	assert.Contains(t, err.Error(), "unknown frame type 4 in a version 2 stream")

	// A body frame too short to hold a digest.
	var short bytes.Buffer
	w, err = NewWriter(&short)
	require.NoError(t, err)
	require.NoError(t, w.frame(FrameBody, func(p []byte) ([]byte, error) { return append(p, 1, 2, 3), nil }))
	_, err = NewReader(&short, nil).Next()
	require.ErrorIs(t, err, ErrFrame)
	assert.Contains(t, err.Error(), "no digest")
	_, err = NewWriterVersion(io.Discard, 1)
	assert.Error(t, err, "version 1 is read, never written")
}

func TestFrameReaderValidCRCBadPayload(t *testing.T) {
	var b bytes.Buffer
	w, err := NewWriter(&b)
	require.NoError(t, err)
	require.NoError(t, w.frame(FrameChange, func(p []byte) ([]byte, error) { return append(p, 0xff, 1, 2), nil }))
	require.NoError(t, w.frame(FrameHeartbeat, func(p []byte) ([]byte, error) { return append(p, 1, 2, 3), nil }))
	r := NewReader(&b, nil)
	_, err = r.Next()
	require.ErrorIs(t, err, ErrFrame)
	assert.Contains(t, err.Error(), "change frame")
}

func TestWriteErrorTruncates(t *testing.T) {
	var b bytes.Buffer
	w, err := NewWriter(&b)
	require.NoError(t, err)
	require.NoError(t, w.WriteError(string(bytes.Repeat([]byte("é"), MaxErrorFrame))+"\xff"))
	f, err := NewReader(&b, nil).Next()
	require.NoError(t, err)
	assert.LessOrEqual(t, len(f.Error), MaxErrorFrame)
}

// FuzzFrameReader feeds the decoder arbitrary streams: it must never panic,
// must end with an error (io.EOF or one wrapping ErrFrame), and every
// frame it accepts must encode back to a frame that decodes the same.
func FuzzFrameReader(f *testing.F) {
	f.Add(wireStream(f))
	var withBody bytes.Buffer
	w, err := NewWriter(&withBody)
	require.NoError(f, err)
	require.NoError(f, w.WriteBody(resilmail.DigestOf([]byte("body")), []byte("body")))
	c := wireChange(2)
	require.NoError(f, w.WriteChange(&c))
	f.Add(withBody.Bytes())
	f.Add([]byte("resilmail-stream 1\n"))
	f.Add([]byte("resilmail-stream 2\n\x02\x00\x00\x00\x03\x00\x00\x00\x00\x01\x02\x03"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), &ReaderOptions{MaxFrame: 1 << 16})
		for {
			fr, err := r.Next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrFrame) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			var b bytes.Buffer
			w, err := NewWriter(&b)
			require.NoError(t, err)
			switch fr.Type {
			case FrameChange:
				require.NoError(t, w.WriteChange(&fr.Change))
			case FrameHeartbeat:
				require.NoError(t, w.WriteHeartbeat(fr.Heartbeat))
			case FrameError:
				require.NoError(t, w.WriteError(fr.Error))
			case FrameBody:
				require.NoError(t, w.WriteBody(fr.Digest, fr.Body))
			}
			again, err := NewReader(&b, nil).Next()
			require.NoError(t, err)
			assert.Equal(t, fr.Type, again.Type)
			assert.Equal(t, fr.Change.String(), again.Change.String())
			assert.Equal(t, fr.Heartbeat.Position, again.Heartbeat.Position)
			assert.Equal(t, fr.Error, again.Error)
			assert.Equal(t, fr.Digest, again.Digest)
			assert.Equal(t, fr.Body, again.Body)
		}
	})
}
