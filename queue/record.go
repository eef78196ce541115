package queue

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/resilmail/resilmail"
)

// formatVersion is the version of the queue's records inside the log. Open
// refuses a log written by a newer version.
const formatVersion = 1

// Record types. A message record holds a message's whole state and its body;
// it starts a message (enqueue) or restates it (compaction). Update records
// change the state of a message that an earlier message record started.
// Tombstones carry the ids of finished messages forward for deduplication.
const (
	recMessage   byte = 'M'
	recUpdate    byte = 'U'
	recTombstone byte = 'T'
)

// RcptState is the delivery state of one recipient.
type RcptState uint8

// The recipient states.
const (
	// Pending: not yet delivered; it will be tried (again).
	Pending RcptState = iota
	// Delivered: the next hop accepted it.
	Delivered
	// Failed: it failed permanently or expired; the sender is notified.
	Failed
	// MaybeDelivered: the message was sent and the outcome is unknown.
	MaybeDelivered
)

func (s RcptState) String() string {
	switch s {
	case Pending:
		return "pending"
	case Delivered:
		return "delivered"
	case Failed:
		return "failed"
	case MaybeDelivered:
		return "maybe-delivered"
	}
	return fmt.Sprintf("RcptState(%d)", s)
}

// rcptRec is the persistent state of one recipient.
type rcptRec struct {
	State    RcptState `json:"s,omitempty"`
	Notified bool      `json:"n,omitempty"` // the sender was told of the failure
	Reply    string    `json:"r,omitempty"` // last reply or error
	Host     string    `json:"h,omitempty"`
	Code     string    `json:"c,omitempty"` // enhanced status code for the DSN
	Perm     bool      `json:"p,omitempty"`
	// Relayed: delivered to a next hop that does not offer DSN, for a
	// sender who asked NOTIFY=SUCCESS; a "relayed" DSN is owed until
	// Notified.
	Relayed bool `json:"rl,omitempty"`
}

// jobRec is an attempt in flight: written before it starts.
type jobRec struct {
	Job   uint32 `json:"j"`
	Rcpts []int  `json:"r"`
	Dest  string `json:"d,omitempty"`
	At    int64  `json:"a"`
}

// attemptRec is one finished attempt in the history kept for Inspect.
type attemptRec struct {
	At      int64    `json:"a"`
	Dest    string   `json:"d,omitempty"`
	Results []int    `json:"r"` // recipient indexes
	States  []uint8  `json:"s"`
	Replies []string `json:"y"`
}

// msgRec is a message's whole state, stored with its body.
type msgRec struct {
	Env      resilmail.Envelope `json:"env"`
	Created  int64              `json:"c"`
	Digest   resilmail.Digest   `json:"d"`
	Rcpts    []rcptRec          `json:"r"`
	Attempts int                `json:"n,omitempty"`
	Next     int64              `json:"x,omitempty"`
	Held     bool               `json:"h,omitempty"`
	Warned   int                `json:"w,omitempty"`
	Jobs     []jobRec           `json:"j,omitempty"`   // attempts in flight
	JobSeq   uint32             `json:"js,omitempty"`  // last job number
	History  []attemptRec       `json:"hi,omitempty"`  // newest last, bounded
	Corrupt  bool               `json:"bad,omitempty"` // body failed its digest
}

// rcptChange sets the state of one recipient.
type rcptChange struct {
	I int `json:"i"`
	rcptRec
}

// updRec changes a message. Every field is optional.
type updRec struct {
	ID       string       `json:"id"`
	Start    *jobRec      `json:"st,omitempty"` // an attempt starts
	Attempts int          `json:"n,omitempty"`  // with the attempt: new count
	Next     int64        `json:"x,omitempty"`  // next attempt time
	End      *uint32      `json:"en,omitempty"` // the attempt with this job number ended
	Rcpts    []rcptChange `json:"r,omitempty"`  // recipient changes
	History  *attemptRec  `json:"hi,omitempty"` // append to history
	Held     *bool        `json:"h,omitempty"`
	Warned   int          `json:"w,omitempty"`
	Corrupt  bool         `json:"bad,omitempty"`
	Removed  string       `json:"rm,omitempty"` // why the message left the queue
	At       int64        `json:"at,omitempty"` // when it was removed
	// Sum, with Removed, is the first 128 bits of the body's digest in
	// hex, as a tombstone's: the id's content is remembered even when
	// compaction dropped the message's record before this one (absent in
	// older records).
	Sum string `json:"d,omitempty"`
}

// tombRec remembers a finished message for deduplication.
type tombRec struct {
	ID  string `json:"id"`
	At  int64  `json:"a"`
	Sum string `json:"d,omitempty"` // the first 128 bits of the body's digest in hex; absent in older records
}

// encode builds a record: type, 4-byte length of the JSON part, JSON, body.
func encode(typ byte, v any, body []byte) ([]byte, error) {
	var b []byte
	switch r := v.(type) {
	case *msgRec: // the JSON by hand (recjson.go)
		b = make([]byte, 5, 5+512+len(body))
		b = appendMsgJSON(b, r)
	case *updRec:
		b = make([]byte, 5, 5+256)
		b = appendUpdJSON(b, r)
	default:
		j, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		b = make([]byte, 5, 5+len(j)+len(body))
		b = append(b, j...)
	}
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:5], uint32(len(b)-5))
	return append(b, body...), nil
}

var errBadRecord = errors.New("queue: malformed record")

// decode splits a record into its type, JSON part and body. It never
// panics on any input.
func decode(rec []byte) (typ byte, meta, body []byte, err error) {
	if len(rec) < 5 {
		return 0, nil, nil, errBadRecord
	}
	n := binary.BigEndian.Uint32(rec[1:5])
	if uint64(n) > uint64(len(rec)-5) {
		return 0, nil, nil, errBadRecord
	}
	return rec[0], rec[5 : 5+n], rec[5+n:], nil
}

// decodeRecord parses a whole record into one of *msgRec (with the body's
// length checked against its digest only by the caller), *updRec or
// *tombRec.
func decodeRecord(rec []byte) (any, []byte, error) {
	typ, meta, body, err := decode(rec)
	if err != nil {
		return nil, nil, err
	}
	switch typ {
	case recMessage:
		var m msgRec
		if err := json.Unmarshal(meta, &m); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", errBadRecord, err)
		}
		if resilmail.CheckID(m.Env.ID) != nil || len(m.Rcpts) != len(m.Env.To) {
			return nil, nil, fmt.Errorf("%w: inconsistent message record", errBadRecord)
		}
		for _, j := range m.Jobs {
			if !validIndexes(j.Rcpts, len(m.Rcpts)) {
				return nil, nil, fmt.Errorf("%w: bad recipient index", errBadRecord)
			}
		}
		return &m, body, nil
	case recUpdate:
		var u updRec
		if err := json.Unmarshal(meta, &u); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", errBadRecord, err)
		}
		if u.ID == "" {
			return nil, nil, fmt.Errorf("%w: update without id", errBadRecord)
		}
		return &u, nil, nil
	case recTombstone:
		var t tombRec
		if err := json.Unmarshal(meta, &t); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", errBadRecord, err)
		}
		if t.ID == "" {
			return nil, nil, fmt.Errorf("%w: tombstone without id", errBadRecord)
		}
		return &t, nil, nil
	}
	return nil, nil, fmt.Errorf("%w: unknown type %q", errBadRecord, typ)
}

func validIndexes(idx []int, n int) bool {
	for _, i := range idx {
		if i < 0 || i >= n {
			return false
		}
	}
	return true
}
