package queue

import (
	"encoding/base64"
	"encoding/json"
	"strconv"

	"github.com/resilmail/resilmail"
)

// The JSON of the records written for every message (a message, an
// attempt's start, its results) is built here by hand: encoding/json's
// reflection cost the relay about a twentieth of its CPU per message. The
// bytes are exactly what json.Marshal gives for the same value
// (TestRecordJSONIsEncodingJSON fills every field, so a field added to a
// record and not here fails it): the format on disk is unchanged, and
// decoding stays encoding/json's.

// appendJSONString appends s as encoding/json writes a string: plain
// printable ASCII as it is, anything else through json.Marshal.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			j, _ := json.Marshal(s) // a string always encodes
			return append(b, j...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendJSONInts(b []byte, v []int) []byte {
	if v == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, n := range v {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(n), 10)
	}
	return append(b, ']')
}

func appendJSONBool(b []byte, v bool) []byte {
	if v {
		return append(b, "true"...)
	}
	return append(b, "false"...)
}

func appendEnvelopeJSON(b []byte, e *resilmail.Envelope) []byte {
	b = append(b, `{"ID":`...)
	b = appendJSONString(b, e.ID)
	b = append(b, `,"From":`...)
	b = appendJSONString(b, e.From)
	b = append(b, `,"To":`...)
	if e.To == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range e.To {
			if i > 0 {
				b = append(b, ',')
			}
			r := &e.To[i]
			b = append(b, `{"Addr":`...)
			b = appendJSONString(b, r.Addr)
			b = append(b, `,"Notify":`...)
			b = strconv.AppendUint(b, uint64(r.Notify), 10)
			b = append(b, `,"ORCPT":`...)
			b = appendJSONString(b, r.ORCPT)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = append(b, `,"SMTPUTF8":`...)
	b = appendJSONBool(b, e.SMTPUTF8)
	b = append(b, `,"Body":`...)
	b = appendJSONString(b, string(e.Body))
	b = append(b, `,"Size":`...)
	b = strconv.AppendInt(b, e.Size, 10)
	b = append(b, `,"Return":`...)
	b = appendJSONString(b, string(e.Return))
	b = append(b, `,"EnvID":`...)
	b = appendJSONString(b, e.EnvID)
	return append(b, '}')
}

// appendRcptFields appends r's fields (all omitempty), the first one after
// a comma when more says a field was written before.
func appendRcptFields(b []byte, r *rcptRec, more bool) []byte {
	sep := func() {
		if more {
			b = append(b, ',')
		}
		more = true
	}
	if r.State != 0 {
		sep()
		b = append(b, `"s":`...)
		b = strconv.AppendUint(b, uint64(r.State), 10)
	}
	if r.Notified {
		sep()
		b = append(b, `"n":true`...)
	}
	if r.Reply != "" {
		sep()
		b = append(b, `"r":`...)
		b = appendJSONString(b, r.Reply)
	}
	if r.Host != "" {
		sep()
		b = append(b, `"h":`...)
		b = appendJSONString(b, r.Host)
	}
	if r.Code != "" {
		sep()
		b = append(b, `"c":`...)
		b = appendJSONString(b, r.Code)
	}
	if r.Perm {
		sep()
		b = append(b, `"p":true`...)
	}
	if r.Relayed {
		sep()
		b = append(b, `"rl":true`...)
	}
	return b
}

func appendJobJSON(b []byte, j *jobRec) []byte {
	b = append(b, `{"j":`...)
	b = strconv.AppendUint(b, uint64(j.Job), 10)
	b = append(b, `,"r":`...)
	b = appendJSONInts(b, j.Rcpts)
	if j.Dest != "" {
		b = append(b, `,"d":`...)
		b = appendJSONString(b, j.Dest)
	}
	b = append(b, `,"a":`...)
	b = strconv.AppendInt(b, j.At, 10)
	return append(b, '}')
}

func appendAttemptJSON(b []byte, a *attemptRec) []byte {
	b = append(b, `{"a":`...)
	b = strconv.AppendInt(b, a.At, 10)
	if a.Dest != "" {
		b = append(b, `,"d":`...)
		b = appendJSONString(b, a.Dest)
	}
	b = append(b, `,"r":`...)
	b = appendJSONInts(b, a.Results)
	b = append(b, `,"s":`...)
	if a.States == nil {
		b = append(b, "null"...)
	} else { // []uint8 is base64, as []byte
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, a.States)
		b = append(b, '"')
	}
	b = append(b, `,"y":`...)
	if a.Replies == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, s := range a.Replies {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, s)
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

func appendMsgJSON(b []byte, m *msgRec) []byte {
	b = append(b, `{"env":`...)
	b = appendEnvelopeJSON(b, &m.Env)
	b = append(b, `,"c":`...)
	b = strconv.AppendInt(b, m.Created, 10)
	b = append(b, `,"d":"`...)
	b = append(b, m.Digest.String()...)
	b = append(b, `","r":`...)
	if m.Rcpts == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range m.Rcpts {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '{')
			b = appendRcptFields(b, &m.Rcpts[i], false)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if m.Attempts != 0 {
		b = append(b, `,"n":`...)
		b = strconv.AppendInt(b, int64(m.Attempts), 10)
	}
	if m.Next != 0 {
		b = append(b, `,"x":`...)
		b = strconv.AppendInt(b, m.Next, 10)
	}
	if m.Held {
		b = append(b, `,"h":true`...)
	}
	if m.Warned != 0 {
		b = append(b, `,"w":`...)
		b = strconv.AppendInt(b, int64(m.Warned), 10)
	}
	if len(m.Jobs) > 0 {
		b = append(b, `,"j":[`...)
		for i := range m.Jobs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJobJSON(b, &m.Jobs[i])
		}
		b = append(b, ']')
	}
	if m.JobSeq != 0 {
		b = append(b, `,"js":`...)
		b = strconv.AppendUint(b, uint64(m.JobSeq), 10)
	}
	if len(m.History) > 0 {
		b = append(b, `,"hi":[`...)
		for i := range m.History {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendAttemptJSON(b, &m.History[i])
		}
		b = append(b, ']')
	}
	if m.Corrupt {
		b = append(b, `,"bad":true`...)
	}
	return append(b, '}')
}

func appendUpdJSON(b []byte, u *updRec) []byte {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, u.ID)
	if u.Start != nil {
		b = append(b, `,"st":`...)
		b = appendJobJSON(b, u.Start)
	}
	if u.Attempts != 0 {
		b = append(b, `,"n":`...)
		b = strconv.AppendInt(b, int64(u.Attempts), 10)
	}
	if u.Next != 0 {
		b = append(b, `,"x":`...)
		b = strconv.AppendInt(b, u.Next, 10)
	}
	if u.End != nil {
		b = append(b, `,"en":`...)
		b = strconv.AppendUint(b, uint64(*u.End), 10)
	}
	if len(u.Rcpts) > 0 {
		b = append(b, `,"r":[`...)
		for i := range u.Rcpts {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"i":`...)
			b = strconv.AppendInt(b, int64(u.Rcpts[i].I), 10)
			b = appendRcptFields(b, &u.Rcpts[i].rcptRec, true)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if u.History != nil {
		b = append(b, `,"hi":`...)
		b = appendAttemptJSON(b, u.History)
	}
	if u.Held != nil {
		b = append(b, `,"h":`...)
		b = appendJSONBool(b, *u.Held)
	}
	if u.Warned != 0 {
		b = append(b, `,"w":`...)
		b = strconv.AppendInt(b, int64(u.Warned), 10)
	}
	if u.Corrupt {
		b = append(b, `,"bad":true`...)
	}
	if u.Removed != "" {
		b = append(b, `,"rm":`...)
		b = appendJSONString(b, u.Removed)
	}
	if u.At != 0 {
		b = append(b, `,"at":`...)
		b = strconv.AppendInt(b, u.At, 10)
	}
	if u.Sum != "" {
		b = append(b, `,"d":`...)
		b = appendJSONString(b, u.Sum)
	}
	return append(b, '}')
}
