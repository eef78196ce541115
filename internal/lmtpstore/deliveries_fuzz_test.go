package lmtpstore

import (
	"reflect"
	"testing"
	"time"

	"github.com/resilmail/resilmail"
)

// FuzzParseDeliveries feeds arbitrary bytes to the delivery log's parser:
// it must never panic, and a file it accepts encodes to one that parses
// to the same deliveries.
func FuzzParseDeliveries(f *testing.F) {
	l := &DeliveryLog{entries: make(map[deliveryKey]delivery)}
	f.Add(l.encodeLocked())
	l.entries[deliveryKeyOf("alice", "s@example.net", "", resilmail.DigestOf([]byte("x")))] = delivery{at: time.Unix(0, 1700000000e9), uid: 7}
	f.Add(l.encodeLocked())
	f.Add([]byte(deliveriesMagic + "short"))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := parseDeliveries(b)
		if err != nil {
			return
		}
		again, err := parseDeliveries((&DeliveryLog{entries: entries}).encodeLocked())
		if err != nil || !reflect.DeepEqual(entries, again) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
