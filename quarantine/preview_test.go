package quarantine

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// crlf turns a message written with \n into one with \r\n.
func crlf(s string) []byte { return []byte(strings.ReplaceAll(s, "\n", "\r\n")) }

func TestParsePreviewHeader(t *testing.T) {
	msg := crlf(`Received: from mx.example by mx1
From: =?ISO-8859-1?Q?Andr=E9?= Pirard <pirard@example.be>
To: alice@example.org, "Bob, B." <bob@example.org>
Cc: =?UTF-8?B?w6lxdWlwZQ==?= <team@example.org>
Subject: =?utf-8?q?caf=C3=A9?= and =?iso-8859-1?q?cr=E8me?=
Date: Tue, 10 Mar 2026 10:00:00 +0100
Message-ID: <abc@example.be>
X-Weird: =?x-unknown?q?abc?=
MIME-Version: 1.0

Hello.
`)
	p, err := ParsePreview(msg, nil)
	require.NoError(t, err)
	assert.Equal(t, []Address{{Name: "André Pirard", Addr: "pirard@example.be"}}, p.From)
	assert.Equal(t, []Address{{Addr: "alice@example.org"}, {Name: "Bob, B.", Addr: "bob@example.org"}}, p.To)
	assert.Equal(t, []Address{{Name: "équipe", Addr: "team@example.org"}}, p.Cc)
	assert.Equal(t, "café and crème", p.Subject)
	assert.True(t, p.Date.Equal(time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC)), p.Date.String())
	assert.Equal(t, "<abc@example.be>", p.MessageID)
	require.Len(t, p.Header, 9)
	assert.Equal(t, HeaderField{Name: "Received", Value: "from mx.example by mx1"}, p.Header[0])
	assert.Equal(t, HeaderField{Name: "Message-ID", Value: "<abc@example.be>"}, p.Header[6], "names as written")
	assert.Equal(t, "X-Weird", p.Header[7].Name)
	assert.Equal(t, "=?x-unknown?q?abc?=", p.Header[7].Value, "an unknown charset is kept as written")
	require.Len(t, p.Problems, 1)
	assert.Contains(t, p.Problems[0], "X-Weird")
	require.Len(t, p.Text, 1)
	assert.Equal(t, TextPart{ContentType: "text/plain", Text: "Hello.\n"}, p.Text[0])
	assert.Empty(t, p.Attachments)
	assert.Equal(t, "André Pirard <pirard@example.be>", p.From[0].String())
}

func TestParsePreviewStructure(t *testing.T) {
	tests := []struct {
		name        string
		msg         string
		opts        *PreviewOptions
		text        []TextPart
		attachments []Attachment
		problems    []string // substrings, in order
	}{
		{
			name: "quoted-printable latin-1",
			msg: `Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

D=E9j=E0 vu=
, soft break.
`,
			text: []TextPart{{ContentType: "text/plain", Text: "Déjà vu, soft break.\n"}},
		},
		{
			name: "undeclared 8-bit is windows-1252",
			msg:  "Subject: x\n\nna\xefve \x93quoted\x94\n",
			text: []TextPart{{ContentType: "text/plain", Text: "naïve \u201cquoted\u201d\n"}},
		},
		{
			name: "unknown charset",
			msg:  "Content-Type: text/plain; charset=x-klingon\n\nqapla'\n",
			text: []TextPart{{ContentType: "text/plain", Text: "qapla'\n"}},
			problems: []string{
				`unknown charset "x-klingon"`,
			},
		},
		{
			name: "alternative keeps the plain text",
			msg: `MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="alt"

preamble
--alt
Content-Type: text/plain; charset=utf-8

Plain version.
--alt
Content-Type: text/html; charset=utf-8

<p>HTML <b>version</b>.</p>
--alt--
epilogue
`,
			text: []TextPart{{ContentType: "text/plain", Text: "Plain version."}},
		},
		{
			name: "alternative with only HTML",
			msg: `Content-Type: multipart/alternative; boundary=alt

--alt
Content-Type: text/html

<html><head><title>T</title><style>p{color:red}</style><script>alert(1)</script></head>
<body><h1>Title</h1><p>One&nbsp;&amp;   two<br>three</p><ul><li>a</li><li>b</li></ul>
<a href="https://example.org/x">click</a> <a href="https://example.org/y">https://example.org/y</a>
<img src="http://tracker.example/p.gif" alt="Logo"><script>document.write("x")</script>
<pre>  keep
   spaces</pre></body></html>
--alt--
`,
			text: []TextPart{{ContentType: "text/html", Text: "Title\n\nOne & two\nthree\n\n• a\n• b\n\nclick [https://example.org/x] https://example.org/y [Logo]\n\n  keep\n   spaces"}},
		},
		{
			name: "mixed with attachments",
			msg: `Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain

See attached.
--b
Content-Type: application/pdf; name="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="
Content-Disposition: attachment
Content-Transfer-Encoding: base64

SGVsbG8g
V29ybGQh
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename*=utf-8''na%C3%AFve%E2%80%AEfdp.exe

0123456789
--b
Content-Type: text/plain
Content-Disposition: attachment; filename="notes.txt"

not shown inline
--b
Content-Type: message/rfc822

Subject: inner

inner body
--b--
`,
			text: []TextPart{{ContentType: "text/plain", Text: "See attached."}},
			attachments: []Attachment{
				{Name: "résumé.pdf", ContentType: "application/pdf", Size: 12},
				{Name: "naïvefdp.exe", ContentType: "application/octet-stream", Size: 10},
				{Name: "notes.txt", ContentType: "text/plain", Size: 16},
				{ContentType: "message/rfc822", Size: 28},
			},
		},
		{
			name: "delivery status report shown as text",
			msg: `Content-Type: multipart/report; report-type=delivery-status; boundary=r

--r
Content-Type: text/plain

Delivery failed.
--r
Content-Type: message/delivery-status

Final-Recipient: rfc822;x@example.org
Status: 5.1.1
--r--
`,
			text: []TextPart{
				{ContentType: "text/plain", Text: "Delivery failed."},
				{ContentType: "message/delivery-status", Text: "Final-Recipient: rfc822;x@example.org\nStatus: 5.1.1"},
			},
		},
		{
			name: "text cut at the limit on a character boundary",
			msg:  "Content-Type: text/plain; charset=utf-8\n\nééééé\n",
			opts: &PreviewOptions{MaxTextBytes: 5},
			text: []TextPart{{ContentType: "text/plain", Text: "éé", Truncated: true}},
		},
		{
			name: "HTML cut at the limit",
			msg:  "Content-Type: text/html\n\n<p>" + strings.Repeat("word ", 100) + "</p>\n",
			opts: &PreviewOptions{MaxTextBytes: 12},
			text: []TextPart{{ContentType: "text/html", Text: "word word wo", Truncated: true}},
		},
		{
			name: "too many parts",
			msg: `Content-Type: multipart/mixed; boundary=b

--b

one
--b

two
--b

three
--b--
`,
			opts:     &PreviewOptions{MaxParts: 3},
			text:     []TextPart{{ContentType: "text/plain", Text: "one"}, {ContentType: "text/plain", Text: "two"}},
			problems: []string{"more than 3 parts"},
		},
		{
			name: "nested too deep",
			msg: `Content-Type: multipart/mixed; boundary=l1

--l1
Content-Type: multipart/mixed; boundary=l2

--l2
Content-Type: multipart/mixed; boundary=l3

--l3

deep
--l3--
--l2--
--l1
Content-Type: text/plain

shallow
--l1--
`,
			opts:     &PreviewOptions{MaxDepth: 2},
			text:     []TextPart{{ContentType: "text/plain", Text: "shallow"}},
			problems: []string{"part 1.1: multipart nested more than 2 deep"},
		},
		{
			name:     "multipart without boundary",
			msg:      "Content-Type: multipart/mixed\n\nraw text\n",
			text:     []TextPart{{ContentType: "text/plain", Text: "raw text\n"}},
			problems: []string{"multipart/mixed without a boundary"},
		},
		{
			name: "missing final boundary",
			msg: `Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain

cut off here
`,
			text:     []TextPart{{ContentType: "text/plain", Text: "cut off here\n"}},
			problems: []string{"part 1: unexpected EOF", "NextPart: EOF"},
		},
		{
			name: "bad base64",
			msg: `Content-Type: text/plain
Content-Transfer-Encoding: base64

SGVsbG8=SGVsbG8=
`,
			text:     []TextPart{{ContentType: "text/plain", Text: "Hello"}},
			problems: []string{"illegal base64 data"},
		},
		{
			name:     "unknown transfer encoding",
			msg:      "Content-Transfer-Encoding: x-uuencode\n\nbegin 644 x\n",
			text:     []TextPart{{ContentType: "text/plain", Text: "begin 644 x\n"}},
			problems: []string{`unknown Content-Transfer-Encoding "x-uuencode"`},
		},
		{
			name:     "broken Content-Type",
			msg:      "Content-Type: text/html; charset=\"unterminated\n\n<b>x</b>\n",
			text:     []TextPart{{ContentType: "text/html", Text: "x"}},
			problems: []string{"Content-Type"},
		},
		{
			name:     "malformed header line",
			msg:      "Subject: ok\nthis line has no colon\n continued\nContent-Type: text/html\n\n<p>body</p>\n",
			text:     []TextPart{{ContentType: "text/html", Text: "body"}},
			problems: []string{`header: malformed line "this line has no colon" left out`},
		},
		{
			name: "no header at all",
			msg:  "\njust a body\n",
			text: []TextPart{{ContentType: "text/plain", Text: "just a body\n"}},
		},
		{
			name: "empty",
			msg:  "",
			text: []TextPart{{ContentType: "text/plain", Text: ""}},
		},
		{
			name: "control characters dropped",
			msg:  "Subject: x\n\nbell\x07 escape\x1b[31m red\x00\n",
			text: []TextPart{{ContentType: "text/plain", Text: "bell escape[31m red\n"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePreview(crlf(tt.msg), tt.opts)
			require.NoError(t, err)
			if tt.text == nil {
				tt.text = []TextPart{}
			}
			if tt.attachments == nil {
				tt.attachments = []Attachment{}
			}
			for i := range p.Text {
				p.Text[i].Text = strings.TrimRight(p.Text[i].Text, "\n")
			}
			for i := range tt.text {
				tt.text[i].Text = strings.TrimRight(tt.text[i].Text, "\n")
			}
			assert.Equal(t, tt.text, p.Text)
			assert.Equal(t, tt.attachments, p.Attachments)
			require.Len(t, p.Problems, len(tt.problems), "%q", p.Problems)
			for i, want := range tt.problems {
				assert.Contains(t, p.Problems[i], want)
			}
		})
	}
}

func TestParsePreviewLimitsAndOptions(t *testing.T) {
	_, err := ParsePreview(nil, &PreviewOptions{MaxParts: -1})
	assert.ErrorIs(t, err, ErrInvalid)

	// Many header fields.
	var b strings.Builder
	for range 20 {
		b.WriteString("X-A: b\r\n")
	}
	b.WriteString("\r\nbody")
	p, err := ParsePreview([]byte(b.String()), &PreviewOptions{MaxHeaderFields: 5})
	require.NoError(t, err)
	assert.Len(t, p.Header, 5)
	assert.Len(t, p.Problems, 1)

	// Many problems are capped.
	b.Reset()
	for range 200 {
		b.WriteString("X-A: =?x-nope?q?a?=\r\n")
	}
	p, err = ParsePreview([]byte(b.String()), nil)
	require.NoError(t, err)
	assert.Len(t, p.Problems, maxProblems)
	assert.Equal(t, "more problems not listed", p.Problems[maxProblems-1])
}

func TestStorePreview(t *testing.T) {
	f := newAccessFixture(t)
	f.standard()
	ctx := context.Background()

	p, err := f.s.Preview(ctx, "alice@example.org", "e1")
	require.NoError(t, err)
	assert.Equal(t, "Cheap <script>alert(1)</script> pills", p.Subject)

	_, err = f.s.Preview(ctx, "alice@example.org", "e2")
	assert.ErrorIs(t, err, ErrNotFound, "another user's entry")
	_, err = f.s.Preview(ctx, "pm-org", "e3")
	assert.ErrorIs(t, err, ErrNotFound, "another domain's entry")
	_, err = f.s.Preview(ctx, "", "e1")
	assert.ErrorIs(t, err, ErrForbidden)
	_, err = f.s.Preview(ctx, "alice@example.org", "e5")
	assert.ErrorIs(t, err, ErrNoBody)

	// Once released, the body is no longer kept.
	_, err = f.s.Release(ctx, "alice@example.org", "e1", nil)
	require.NoError(t, err)
	_, err = f.s.Preview(ctx, "alice@example.org", "e1")
	assert.ErrorIs(t, err, ErrNoBody)
	assert.Zero(t, f.s.Stats().Corrupt, "a released body is not reported as corrupt")

	e, err := f.s.Get(ctx, "root@example.net", "e2")
	require.NoError(t, err)
	corruptBody(t, f, e)
	_, err = f.s.Preview(ctx, "bob@example.org", "e2")
	assert.ErrorIs(t, err, ErrCorrupt, "the digest is checked")
}

// checkPreview checks what every preview must satisfy.
func checkPreview(t *testing.T, p *Preview, o PreviewOptions) {
	t.Helper()
	strs := []string{p.Subject, p.MessageID}
	for _, a := range append(append(append([]Address(nil), p.From...), p.To...), p.Cc...) {
		strs = append(strs, a.Name, a.Addr)
	}
	for _, h := range p.Header {
		strs = append(strs, h.Name, h.Value)
	}
	for _, a := range p.Attachments {
		strs = append(strs, a.Name, a.ContentType)
		if a.Size < 0 {
			t.Fatalf("negative size %d", a.Size)
		}
	}
	strs = append(strs, p.Problems...)
	for _, s := range strs {
		if !utf8.ValidString(s) {
			t.Fatalf("invalid UTF-8: %q", s)
		}
		for _, r := range s {
			if dropped(r, false) {
				t.Fatalf("control character %U in %q", r, s)
			}
		}
	}
	for _, tp := range p.Text {
		if !utf8.ValidString(tp.Text) {
			t.Fatalf("invalid UTF-8 text: %q", tp.Text)
		}
		if len(tp.Text) > o.MaxTextBytes {
			t.Fatalf("text of %d bytes over %d", len(tp.Text), o.MaxTextBytes)
		}
		for _, r := range tp.Text {
			if dropped(r, true) {
				t.Fatalf("control character %U in text", r)
			}
		}
	}
	if len(p.Header) > o.MaxHeaderFields || len(p.Problems) > maxProblems {
		t.Fatalf("%d header fields, %d problems", len(p.Header), len(p.Problems))
	}
	if len(p.Text)+len(p.Attachments) > o.MaxParts {
		t.Fatalf("%d parts over %d", len(p.Text)+len(p.Attachments), o.MaxParts)
	}
}

func FuzzParsePreview(f *testing.F) {
	f.Add(crlf("Subject: hi\n\nhello\n"))
	f.Add(crlf("Content-Type: multipart/alternative; boundary=a\n\n--a\nContent-Type: text/html\n\n<p>x</p>\n--a--\n"))
	o := PreviewOptions{MaxTextBytes: 256, MaxParts: 8, MaxDepth: 3, MaxHeaderFields: 16}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := ParsePreview(body, &o)
		if err != nil {
			t.Fatal(err)
		}
		checkPreview(t, p, o)
	})
}

// FuzzPreviewRoundTrip writes a message with go-message and checks that the
// preview shows what was written.
func FuzzPreviewRoundTrip(f *testing.F) {
	f.Add("Grüße", "Hallo Welt.\nZweite Zeile.", "quoted-printable", true)
	f.Add("plain", "x", "base64", false)
	f.Add("", "", "8bit", false)
	f.Fuzz(func(t *testing.T, subject, text, cte string, attach bool) {
		if !utf8.ValidString(subject) || !utf8.ValidString(text) || clean(subject, false) != subject || clean(text, true) != text {
			t.Skip("only text a preview shows unchanged")
		}
		if strings.TrimSpace(subject) != subject || strings.Contains(subject, "=?") || strings.Contains(subject, "  ") {
			t.Skip("header folding and encoded words change these")
		}
		if len(text) > 1000 || len(subject) > 200 || strings.ContainsRune(text, '\r') || strings.HasPrefix(text, "--") {
			t.Skip()
		}
		switch cte {
		case "quoted-printable", "base64", "8bit":
		default:
			t.Skip()
		}
		var h mail.Header
		h.SetSubject(subject)
		h.SetAddressList("From", []*mail.Address{{Name: "Ünï", Address: "u@example.org"}})
		var buf bytes.Buffer
		var th message.Header
		th.SetContentType("text/plain", map[string]string{"charset": "utf-8"})
		th.Set("Content-Transfer-Encoding", cte)
		if attach {
			h.SetContentType("multipart/mixed", nil)
			w, err := message.CreateWriter(&buf, h.Header)
			require.NoError(t, err)
			pw, err := w.CreatePart(th)
			require.NoError(t, err)
			_, err = pw.Write([]byte(text))
			require.NoError(t, err)
			require.NoError(t, pw.Close())
			var ah message.Header
			ah.SetContentType("application/octet-stream", nil)
			ah.SetContentDisposition("attachment", map[string]string{"filename": subject + ".bin"})
			ah.Set("Content-Transfer-Encoding", "base64")
			aw, err := w.CreatePart(ah)
			require.NoError(t, err)
			_, err = aw.Write([]byte(text))
			require.NoError(t, err)
			require.NoError(t, aw.Close())
			require.NoError(t, w.Close())
		} else {
			for f := th.Fields(); f.Next(); {
				h.Set(f.Key(), f.Value())
			}
			w, err := message.CreateWriter(&buf, h.Header)
			require.NoError(t, err)
			_, err = w.Write([]byte(text))
			require.NoError(t, err)
			require.NoError(t, w.Close())
		}
		p, err := ParsePreview(buf.Bytes(), nil)
		require.NoError(t, err)
		assert.Empty(t, p.Problems)
		assert.Equal(t, subject, p.Subject)
		assert.Equal(t, []Address{{Name: "Ünï", Addr: "u@example.org"}}, p.From)
		require.Len(t, p.Text, 1)
		got := strings.ReplaceAll(p.Text[0].Text, "\r\n", "\n")
		size := int64(len(text))
		if attach {
			// The part ends where its boundary's line break begins.
			got = strings.TrimSuffix(got, "\n")
			text = strings.TrimSuffix(text, "\n")
		}
		assert.Equal(t, text, got)
		if attach {
			require.Len(t, p.Attachments, 1)
			assert.Equal(t, size, p.Attachments[0].Size)
			if subject != "" {
				assert.Equal(t, subject+".bin", p.Attachments[0].Name)
			}
		}
	})
}
