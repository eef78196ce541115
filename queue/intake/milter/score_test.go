package milter

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestSpamScore(t *testing.T) {
	for _, c := range []struct {
		name, value     string
		score, required float64
		symbols         []string
		ok              bool
	}{
		{"X-Spamd-Result", "default: False [3.70 / 15.00];\r\n\tMIME_HTML_ONLY(0.20)[];\r\n\tMISSING_MID(2.50)[];\r\n\tARC_NA(0.00)[]", 3.7, 15, []string{"MIME_HTML_ONLY", "MISSING_MID", "ARC_NA"}, true},
		{"x-spamd-result", "default: True [-0.10 / 15.00]", -0.1, 15, nil, true},
		{"X-Spam-Status", "Yes, score=7.1 required=5.0 tests=BAYES_99,\r\n\tHTML_MESSAGE autolearn=no version=3.4.6", 7.1, 5, []string{"BAYES_99", "HTML_MESSAGE"}, true},
		{"X-Spam-Status", "No, score=-0.1 required=5.0 tests=none autolearn=ham", -0.1, 5, nil, true},
		{"X-Spam-Status", "No, hits=1.0", 0, 0, nil, false},
		{"X-Spamd-Result", "default: False [NaN / 15.00]", 0, 0, nil, false},
		{"X-Spamd-Result", "default: False [3.70]", 0, 0, nil, false},
		{"X-Spamd-Result", "] default [", 0, 0, nil, false},
		{"X-Spam", "Yes", 0, 0, nil, false},
	} {
		score, required, symbols, ok := spamScore(c.name, c.value)
		assert.Equal(t, c.ok, ok, "%s: %s", c.name, c.value)
		if c.ok {
			assert.InDelta(t, c.score, score, 1e-9, c.value)
			assert.InDelta(t, c.required, required, 1e-9, c.value)
			assert.Equal(t, c.symbols, symbols, c.value)
		}
	}
}

// FuzzSpamScore: any field value reads without panicking, and a score
// read is a finite number with symbols free of separators.
func FuzzSpamScore(f *testing.F) {
	f.Add("X-Spamd-Result", "default: False [3.70 / 15.00]; MIME_HTML_ONLY(0.20)[]; MISSING_MID(2.50)[]")
	f.Add("X-Spam-Status", "Yes, score=7.1 required=5.0 tests=BAYES_99,\r\n\tHTML_MESSAGE autolearn=no")
	f.Add("X-Spamd-Result", "[/]")
	f.Fuzz(func(t *testing.T, name, value string) {
		score, required, symbols, ok := spamScore(name, value)
		if !ok {
			return
		}
		if !finite(score) || !finite(required) {
			t.Fatalf("%q: not finite: %v %v", value, score, required)
		}
		for _, s := range symbols {
			if s == "" || strings.ContainsAny(s, ";, \t\r\n") {
				t.Fatalf("%q: symbol %q", value, s)
			}
		}
	})
}
