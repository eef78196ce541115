package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"strconv"
	"time"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/dsn"
)

// notifyRetry is how long the queue waits before trying again to enqueue a
// notification it could not enqueue (queue full, storage failure).
const notifyRetry = time.Minute

// notify enqueues the failure notice, the "relayed" notice and the delay
// warning that m owes its sender, then records that they were sent. Each
// notification has an id derived from the message and what it reports, so
// a crash between enqueueing it and recording it leads to a deduplicated
// second enqueue, never to two notifications.
func (q *Queue) notify(m *message) {
	now := q.opts.Now()
	q.mu.Lock()
	if m.removed {
		q.mu.Unlock()
		return
	}
	env := m.rec.Env
	rcpts := append([]rcptRec(nil), m.rec.Rcpts...)
	created := time.Unix(0, m.rec.Created)
	warn := q.delayWarningDueLocked(m, now)
	warned := m.rec.Warned
	var failed, relayed []int
	for i, rc := range rcpts {
		switch {
		case rc.State == Failed && !rc.Notified:
			failed = append(failed, i)
		case rc.Relayed && !rc.Notified:
			relayed = append(relayed, i)
		}
	}
	q.mu.Unlock()

	// Only a failure notice with RET=FULL returns the whole message, and
	// only up to dsn.DefaultMaxOriginal: otherwise the header is enough,
	// and a large body is not read whole for it.
	needFull := len(failed) > 0 && env.Return == resilmail.ReturnFull
	original, whole, rerr := q.dsnOriginal(m, needFull)
	if rerr != nil {
		// A damaged or unreadable body is reported without it; the
		// notices themselves still go (and are not retried for it).
		q.log.Warn("queue: cannot read the message for its notices; they go without it", "msg_id", env.ID, "err", rerr)
		original, whole = nil, true
	}
	ok := true
	if len(failed) > 0 {
		var err error
		var report []int
		for _, i := range failed {
			if q.wantsFailureNotice(m, i) {
				report = append(report, i)
			}
		}
		if len(report) > 0 {
			id := derivedID(env.ID, "f"+strconv.Itoa(failed[0]))
			err = q.sendDSN(id, env, rcpts, report, dsn.Failed, created, now, original, whole)
		}
		if err != nil {
			ok = false
			q.log.Error("queue: cannot enqueue failure notice; will retry", "msg_id", env.ID, "err", err)
		} else {
			u := &updRec{ID: env.ID}
			for _, i := range failed {
				rc := rcpts[i]
				rc.Notified = true
				u.Rcpts = append(u.Rcpts, rcptChange{I: i, rcptRec: rc})
			}
			q.mu.Lock()
			if !m.removed {
				if err := q.appendLocked(m, u); err != nil {
					ok = false
				}
			}
			q.mu.Unlock()
		}
	}
	if len(relayed) > 0 {
		// RFC 3461 section 4.1: the next hop does not offer DSN, so
		// this MTA answers NOTIFY=SUCCESS with "relayed".
		id := derivedID(env.ID, "s"+strconv.Itoa(relayed[0]))
		if err := q.sendDSN(id, env, rcpts, relayed, dsn.Relayed, created, now, original, whole); err != nil {
			ok = false
			q.log.Error("queue: cannot enqueue success notice; will retry", "msg_id", env.ID, "err", err)
		} else {
			u := &updRec{ID: env.ID}
			for _, i := range relayed {
				rc := rcpts[i]
				rc.Notified = true
				u.Rcpts = append(u.Rcpts, rcptChange{I: i, rcptRec: rc})
			}
			q.mu.Lock()
			if !m.removed {
				if err := q.appendLocked(m, u); err != nil {
					ok = false
				}
			}
			q.mu.Unlock()
		}
	}
	if warn {
		var report []int
		for i, rc := range rcpts {
			if (rc.State == Pending || rc.State == MaybeDelivered) && env.To[i].Notify.Has(resilmail.NotifyDelay) {
				report = append(report, i)
			}
		}
		id := derivedID(env.ID, "d"+strconv.Itoa(warned))
		if err := q.sendDSN(id, env, rcpts, report, dsn.Delayed, created, now, original, whole); err != nil {
			ok = false
			q.log.Error("queue: cannot enqueue delay warning; will retry", "msg_id", env.ID, "err", err)
		} else {
			q.mu.Lock()
			if !m.removed {
				if err := q.appendLocked(m, &updRec{ID: env.ID, Warned: warned + 1}); err != nil {
					ok = false
				}
			}
			q.mu.Unlock()
		}
	}
	if !ok {
		q.mu.Lock()
		m.next = now.Add(notifyRetry)
		q.mu.Unlock()
	}
}

// sendDSN builds an RFC 3464 notification about recipients idx of env and
// enqueues it to env's sender from the null reverse-path.
func (q *Queue) sendDSN(id string, env resilmail.Envelope, rcpts []rcptRec, idx []int, action dsn.Action, created, now time.Time, original []byte, whole bool) error {
	host := q.opts.Hostname
	rep := dsn.Report{ReportingMTA: host, OriginalEnvelopeID: env.EnvID, ArrivalDate: created}
	for _, i := range idx {
		rc := rcpts[i]
		st := dsn.RecipientStatus{
			FinalRecipient:    env.To[i].Addr,
			OriginalRecipient: env.To[i].ORCPT,
			Action:            action,
			Status:            rc.Code,
			RemoteMTA:         rc.Host,
			LastAttemptDate:   now,
		}
		success := action == dsn.Relayed || action == dsn.Delivered
		if success {
			st.Status = "2.0.0"
		} else if action == dsn.Delayed {
			st.Status = "4.0.0"
			if len(rc.Code) > 0 && rc.Code[0] == '4' {
				st.Status = rc.Code
			}
			st.WillRetryUntil = created.Add(q.opts.Retry.Lifetime)
		} else if st.Status == "" || !dsn.ValidStatus(st.Status) || st.Status[0] == '2' {
			st.Status = "5.0.0"
		}
		if rc.Reply != "" && !success {
			if rc.Perm || looksLikeSMTPReply(rc.Reply) {
				st.DiagnosticCode = rc.Reply
			} else {
				st.DiagnosticType = "X-Resilmail"
				st.DiagnosticCode = rc.Reply
			}
		}
		rep.Recipients = append(rep.Recipients, st)
	}
	msg := &dsn.Message{
		From:        "MAILER-DAEMON@" + host,
		To:          env.From,
		MessageID:   id + "@" + host,
		Date:        now,
		Report:      rep,
		Original:    original,
		HeadersOnly: action != dsn.Failed || env.Return != resilmail.ReturnFull || !whole,
	}
	var buf bytes.Buffer
	if err := dsn.Build(&buf, msg); err != nil {
		return err
	}
	denv := resilmail.Envelope{ID: id, To: []resilmail.Recipient{{Addr: env.From, Notify: resilmail.NotifyNever}}, SMTPUTF8: env.SMTPUTF8}
	if bytes.IndexFunc(buf.Bytes(), func(r rune) bool { return r >= 0x80 }) >= 0 {
		denv.Body = resilmail.Body8BitMIME // a global report (RFC 6533) or an 8-bit original
	}
	_, err := q.enqueue(context.Background(), denv, &buf, true)
	if err == nil {
		q.mu.Lock()
		q.counters.dsns++
		q.mu.Unlock()
		q.log.Info("queue: notification enqueued", "msg_id", env.ID, "dsn_id", id, "action", string(action), "rcpts", len(idx))
	}
	return err
}

// dsnHead is how much of a large message a notification reads when the
// header is all it returns: headers longer than this are cut (dsn.Build
// cuts them at a line boundary).
const dsnHead = 1 << 20

// dsnOriginal returns the original message for a notification: whole when
// full is asked and it is at most dsn.DefaultMaxOriginal (whole true),
// else its first dsnHead bytes at most, enough for its header (whole false
// when that is not all of it). Only a small body is read whole otherwise.
func (q *Queue) dsnOriginal(m *message, full bool) ([]byte, bool, error) {
	q.mu.Lock()
	size := m.size
	q.mu.Unlock()
	if size <= spoolThreshold {
		b, err := q.body(m)
		return b, true, err
	}
	limit := int64(dsnHead)
	if full && size <= dsn.DefaultMaxOriginal {
		limit = size
	}
	body, rec, err := q.openBody(m)
	if err != nil {
		return nil, false, err
	}
	defer rec.Close()
	b, err := io.ReadAll(io.LimitReader(body, limit))
	return b, int64(len(b)) == size, err
}

func looksLikeSMTPReply(s string) bool {
	return len(s) >= 3 && s[0] >= '2' && s[0] <= '5' && s[1] >= '0' && s[1] <= '9' && s[2] >= '0' && s[2] <= '9'
}

// derivedID returns an envelope id for something derived from message id
// (its notifications), stable across restarts.
func derivedID(id, tag string) string {
	s := id + "." + tag
	if len(s) <= resilmail.MaxIDLen {
		return s
	}
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:16]) + "." + tag
}
