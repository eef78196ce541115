package lmtpstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/durable"
)

// DefaultDeliveryWindow is how long a [DeliveryLog] remembers a delivery
// by default: longer than a relay keeps retrying (RFC 5321 4.5.4.1
// suggests giving up after 4 to 5 days).
const DefaultDeliveryWindow = 6 * 24 * time.Hour

// A DeliveryLog remembers, durably and for a window, the deliveries that
// were stored but answered 451 because the replicas did not acknowledge
// them in time (Backend.Commit failed): the client delivers such a message
// again, and the Backend then answers for the copy it has instead of
// storing a second one.
//
// A delivery is named by its recipient's user, the envelope sender, the
// envelope id (ENVID, RFC 3461) when the client gives one, and the SHA-256
// of the message: a relay that retries sends the same bytes (its Received
// header, with its queue id, included), while two different messages,
// even with one Message-ID (a list's copy and the author's), differ. Only
// 451 answers are recorded (one durable write per such transaction, none
// on the usual path): a message answered 250 is not retried, and a
// connection lost before the answer (a crash) may still be delivered
// twice, which beats losing it.
//
// The log is one file, rewritten atomically (temporary file, fsync,
// rename, fsync of the folder) at every record:
//
//	"resilmail-deliveries 1\n"
//	per delivery: key (32 bytes), recorded at (int64 Unix nanoseconds,
//	              big-endian), UID (uint32 big-endian)
//	CRC-32C (uint32 big-endian) of everything before it
//
// A file that does not parse is renamed aside with a log line and the log
// starts empty (a retried delivery may then be stored twice; nothing is
// lost). A DeliveryLog is safe for concurrent use.
type DeliveryLog struct {
	path   string
	window time.Duration
	now    func() time.Time
	log    *slog.Logger

	mu      sync.Mutex
	entries map[deliveryKey]delivery
	dups    uint64
}

type deliveryKey [32]byte

type delivery struct {
	at  time.Time
	uid uint32
}

const deliveriesMagic = "resilmail-deliveries 1\n"

// DeliveryLogOptions configure [OpenDeliveryLog]; zero fields mean their
// defaults.
type DeliveryLogOptions struct {
	// Window is how long a delivery is remembered; zero means
	// DefaultDeliveryWindow.
	Window time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives a line for a damaged file; nil means slog.Default().
	Logger *slog.Logger
}

// OpenDeliveryLog opens (or starts) the delivery log in the file path.
func OpenDeliveryLog(path string, opts *DeliveryLogOptions) (*DeliveryLog, error) {
	var o DeliveryLogOptions
	if opts != nil {
		o = *opts
	}
	if o.Window <= 0 {
		o.Window = DefaultDeliveryWindow
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	l := &DeliveryLog{path: path, window: o.Window, now: o.Now, log: o.Logger, entries: make(map[deliveryKey]delivery)}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return l, nil
	case err != nil:
		return nil, fmt.Errorf("lmtpstore: delivery log: %w", err)
	}
	entries, err := parseDeliveries(b)
	if err != nil {
		aside := fmt.Sprintf("%s.damaged-%d", path, o.Now().UnixNano())
		rerr := os.Rename(path, aside)
		l.log.Error("lmtpstore: the delivery log is damaged; starting an empty one (a retried delivery may be stored twice)",
			"path", path, "err", err, "moved_to", aside, "move_err", rerr)
		return l, nil
	}
	cut := o.Now().Add(-o.Window)
	for k, d := range entries {
		if d.at.After(cut) {
			l.entries[k] = d
		}
	}
	return l, nil
}

// parseDeliveries decodes a delivery log file.
func parseDeliveries(b []byte) (map[deliveryKey]delivery, error) {
	const rec = 32 + 8 + 4
	if len(b) < len(deliveriesMagic)+4 || string(b[:len(deliveriesMagic)]) != deliveriesMagic {
		return nil, errors.New("not a delivery log (or another version)")
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return nil, errors.New("checksum mismatch")
	}
	body = body[len(deliveriesMagic):]
	if len(body)%rec != 0 {
		return nil, fmt.Errorf("%d bytes of records is not a whole number of them", len(body))
	}
	out := make(map[deliveryKey]delivery, len(body)/rec)
	for ; len(body) > 0; body = body[rec:] {
		var k deliveryKey
		copy(k[:], body)
		out[k] = delivery{at: time.Unix(0, int64(binary.BigEndian.Uint64(body[32:]))), uid: binary.BigEndian.Uint32(body[40:])}
	}
	return out, nil
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// encodeLocked encodes the log's file.
func (l *DeliveryLog) encodeLocked() []byte {
	b := make([]byte, 0, len(deliveriesMagic)+len(l.entries)*44+4)
	b = append(b, deliveriesMagic...)
	for k, d := range l.entries {
		b = append(b, k[:]...)
		b = binary.BigEndian.AppendUint64(b, uint64(d.at.UnixNano()))
		b = binary.BigEndian.AppendUint32(b, d.uid)
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// deliveryKeyOf names the delivery of a message with digest d to user.
func deliveryKeyOf(user, from, envID string, d resilmail.Digest) deliveryKey {
	var b bytes.Buffer
	for _, s := range []string{"resilmail delivery 1", user, from, envID} {
		b.WriteString(s)
		b.WriteByte(0)
	}
	b.Write(d[:])
	return sha256.Sum256(b.Bytes())
}

// lookup returns the UID a remembered delivery stored.
func (l *DeliveryLog) lookup(k deliveryKey) (uint32, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d, ok := l.entries[k]
	if !ok || !d.at.After(l.now().Add(-l.window)) {
		return 0, false
	}
	l.dups++
	return d.uid, true
}

// record remembers deliveries durably before it returns.
func (l *DeliveryLog) record(keys []deliveryKey, uids []uint32) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	for k, d := range l.entries {
		if !d.at.After(now.Add(-l.window)) {
			delete(l.entries, k)
		}
	}
	for i, k := range keys {
		l.entries[k] = delivery{at: now, uid: uids[i]}
	}
	if err := durable.WriteFile(durable.OS, l.path, l.encodeLocked(), 0o600); err != nil {
		for _, k := range keys {
			delete(l.entries, k)
		}
		return fmt.Errorf("lmtpstore: delivery log: %w", err)
	}
	return nil
}

// Duplicates counts the deliveries answered from the log instead of being
// stored again.
func (l *DeliveryLog) Duplicates() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dups
}
