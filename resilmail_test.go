package resilmail_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/resilmail/resilmail"
)

func TestOutcomes(t *testing.T) {
	rcpts := []string{"a@example.org", "B@example.org", "c@example.org"}
	perm := &resilmail.DeliveryError{Recipient: "a@example.org", Code: 550, EnhancedCode: "5.1.1", Permanent: true}
	upper := &resilmail.DeliveryError{Recipient: "b@EXAMPLE.org", Code: 452}
	general := &resilmail.DeliveryError{Code: 421, Message: "try later", Host: "mx"}
	plain := errors.New("connection reset")

	tests := []struct {
		name string
		err  error
		want map[string]string // rcpt -> reply, "" for delivered
	}{
		{"nil delivers all", nil, map[string]string{"a@example.org": "", "B@example.org": "", "c@example.org": ""}},
		{"one named fails, others delivered", perm, map[string]string{"a@example.org": "550 5.1.1", "B@example.org": "", "c@example.org": ""}},
		{"joined named, case-insensitive", errors.Join(perm, upper), map[string]string{"a@example.org": "550 5.1.1", "B@example.org": "452", "c@example.org": ""}},
		{"general applies to all", general, map[string]string{"a@example.org": "421 try later", "B@example.org": "421 try later", "c@example.org": "421 try later"}},
		{"general plus named", errors.Join(perm, general), map[string]string{"a@example.org": "550 5.1.1", "B@example.org": "421 try later", "c@example.org": "421 try later"}},
		{"plain error is temporary for all", fmt.Errorf("dial: %w", plain), map[string]string{"a@example.org": "dial: connection reset", "B@example.org": "dial: connection reset", "c@example.org": "dial: connection reset"}},
		{"unknown recipient name is general", &resilmail.DeliveryError{Recipient: "zz@example.org", Code: 451}, map[string]string{"a@example.org": "451", "B@example.org": "451", "c@example.org": "451"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := resilmail.Outcomes(rcpts, tt.err)
			require.Len(t, got, len(rcpts))
			for r, want := range tt.want {
				de := got[r]
				if want == "" {
					assert.Nil(t, de, r)
					continue
				}
				require.NotNil(t, de, r)
				assert.Equal(t, want, de.Reply(), r)
				assert.Equal(t, r, de.Recipient)
			}
		})
	}
	named, gen := resilmail.SplitErrors(errors.Join(perm, general, upper))
	assert.Equal(t, []*resilmail.DeliveryError{perm, upper}, named)
	assert.Same(t, general, gen)
	named, gen = resilmail.SplitErrors(perm)
	assert.Len(t, named, 1)
	assert.Nil(t, gen, "per-recipient errors only: no general error")

	got := resilmail.Outcomes(rcpts, plain)
	assert.True(t, got["c@example.org"].Temporary(), "an unknown error must be temporary")
	assert.ErrorIs(t, got["c@example.org"], plain)
}

func TestNotify(t *testing.T) {
	n, err := resilmail.ParseNotify("success,Delay")
	require.NoError(t, err)
	assert.Equal(t, "SUCCESS,DELAY", n.String())
	assert.True(t, n.Has(resilmail.NotifySuccess))
	assert.False(t, n.Has(resilmail.NotifyFailure))
	var absent resilmail.Notify
	assert.True(t, absent.Has(resilmail.NotifyFailure), "absent NOTIFY means failure")
	assert.False(t, absent.Has(resilmail.NotifySuccess))
	never, err := resilmail.ParseNotify("NEVER")
	require.NoError(t, err)
	assert.False(t, never.Has(resilmail.NotifyFailure))
	_, err = resilmail.ParseNotify("NEVER,FAILURE")
	assert.Error(t, err)
	_, err = resilmail.ParseNotify("SOMETIMES")
	assert.Error(t, err)
}

func TestValidate(t *testing.T) {
	ok := resilmail.Envelope{ID: "m1", From: "s@example.net", To: []resilmail.Recipient{{Addr: "r@example.org"}}}
	require.NoError(t, ok.Validate())
	bounce := ok.Clone()
	bounce.From = ""
	assert.NoError(t, bounce.Validate(), "null sender is valid")

	bad := map[string]func(*resilmail.Envelope){
		"empty id":       func(e *resilmail.Envelope) { e.ID = "" },
		"id with slash":  func(e *resilmail.Envelope) { e.ID = "../x" },
		"id with space":  func(e *resilmail.Envelope) { e.ID = "a b" },
		"no recipient":   func(e *resilmail.Envelope) { e.To = nil },
		"not an address": func(e *resilmail.Envelope) { e.To[0].Addr = "nobody" },
		"duplicate rcpt": func(e *resilmail.Envelope) { e.To = append(e.To, resilmail.Recipient{Addr: "R@example.org"}) },
		"control char":   func(e *resilmail.Envelope) { e.From = "a\r\n@example.org" },
		"long local":     func(e *resilmail.Envelope) { e.To[0].Addr = string(make([]byte, 65)) + "@x" },
		"bad body":       func(e *resilmail.Envelope) { e.Body = "9BIT" },
		"bad ret":        func(e *resilmail.Envelope) { e.Return = "SOME" },
	}
	for name, mutate := range bad {
		t.Run(name, func(t *testing.T) {
			e := ok.Clone()
			mutate(&e)
			assert.Error(t, e.Validate())
		})
	}
}

func TestDigest(t *testing.T) {
	d := resilmail.DigestOf([]byte("hello"))
	assert.Equal(t, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", d.String())
	p, err := resilmail.ParseDigest(d.String())
	require.NoError(t, err)
	assert.Equal(t, d, p)
	_, err = resilmail.ParseDigest("zz")
	assert.Error(t, err)
	txt, _ := d.MarshalText()
	var back resilmail.Digest
	require.NoError(t, back.UnmarshalText(txt))
	assert.Equal(t, d, back)
}

func ExampleOutcomes() {
	// A Deliverer that refuses one recipient and accepts the others.
	d := resilmail.DelivererFunc(func(ctx context.Context, env resilmail.Envelope, body io.Reader) error {
		_, _ = io.Copy(io.Discard, body)
		return &resilmail.DeliveryError{Recipient: "bob@example.org", Code: 550, EnhancedCode: "5.1.1", Message: "no such user", Permanent: true}
	})
	env := resilmail.Envelope{ID: "m1", From: "s@example.net", To: []resilmail.Recipient{{Addr: "alice@example.org"}, {Addr: "bob@example.org"}}}
	err := d.Deliver(context.Background(), env, strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	out := resilmail.Outcomes(env.Recipients(), err)
	for _, r := range env.Recipients() {
		if out[r] == nil {
			fmt.Println(r, "delivered")
		} else {
			fmt.Println(r, out[r].Reply())
		}
	}
	// Output:
	// alice@example.org delivered
	// bob@example.org 550 5.1.1 no such user
}
