package intake

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/resilmail/resilmail"
)

// FuzzCompleteHeader: whatever the client sends is refused with a reply or
// comes out unchanged below at most a From, a Date and a Message-ID field,
// and a message that has one of them gets no second one.
func FuzzCompleteHeader(f *testing.F) {
	f.Add([]byte("Subject: hi\r\n\r\nhello\r\n"))
	f.Add([]byte("Date: Mon, 07 Dec 2026 18:00:00 +0000\r\nMessage-ID: <a@b>\r\n\r\nbody"))
	f.Add([]byte("message-id: <a@b>\nSubject: lf only\n\nbody\n"))
	f.Add([]byte("no header at all\r\n"))
	f.Add([]byte("Subject: folded\r\n continued\r\n\r\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, msg []byte) {
		s := &session{b: &Backend{Hostname: "submit.test", Submission: &Submission{SendAs: func(string, string) bool { return true }}},
			log: slog.New(slog.DiscardHandler), user: "u@submit.test"}
		r, err := s.completeHeader(resilmail.Envelope{ID: "QID", From: "u@submit.test"}, bytes.NewReader(msg))
		if err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code < 500 {
				t.Fatalf("not a refusal: %v", err)
			}
			return
		}
		out, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasSuffix(out, msg) {
			t.Fatalf("the message changed:\n%q\n%q", msg, out)
		}
		added := string(out[:len(out)-len(msg)])
		for _, line := range strings.SplitAfter(added, "\r\n") {
			if line != "" && !strings.HasPrefix(line, "Date: ") && line != "Message-ID: <QID@submit.test>\r\n" && line != "From: <u@submit.test>\r\n" {
				t.Fatalf("added %q", line)
			}
		}
		if added == "" {
			return
		}
		// Something was added: msg starts with a header ended by an
		// empty line, which had no field of that name.
		for _, line := range strings.Split(strings.ReplaceAll(string(msg), "\r\n", "\n"), "\n") {
			if line == "" {
				break
			}
			name, _, _ := strings.Cut(line, ":")
			name = strings.ToLower(strings.TrimRight(name, " \t"))
			if (name == "date" && strings.Contains(added, "Date: ")) || (name == "message-id" && strings.Contains(added, "Message-ID: ")) ||
				(name == "from" && strings.Contains(added, "From: ")) {
				t.Fatalf("a second %s: %q", name, out)
			}
		}
	})
}
