// Package metrics writes counters and gauges in the Prometheus text
// exposition format (version 0.0.4), so that every node's HTTP port can be
// scraped without a client library.
package metrics

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

// ContentType is the media type of the exposition format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Writer writes metric families to w. The first error sticks and is
// returned by Err; later writes do nothing.
type Writer struct {
	w   io.Writer
	err error
}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Counter writes a counter family with one unlabelled sample.
func (m *Writer) Counter(name, help string, v uint64) {
	m.family(name, help, "counter")
	m.sample(name, nil, strconv.FormatUint(v, 10))
}

// Gauge writes a gauge family with one unlabelled sample.
func (m *Writer) Gauge(name, help string, v float64) {
	m.family(name, help, "gauge")
	m.sample(name, nil, strconv.FormatFloat(v, 'g', -1, 64))
}

// GaugeVec writes a gauge family with one sample per value of label, in
// sorted order; fixed holds label name-value pairs that every sample
// carries as well.
func (m *Writer) GaugeVec(name, help, label string, vs map[string]float64, fixed ...string) {
	m.family(name, help, "gauge")
	keys := make([]string, 0, len(vs))
	for k := range vs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		m.sample(name, append([]string{label, k}, fixed...), strconv.FormatFloat(vs[k], 'g', -1, 64))
	}
}

// CounterVec writes a counter family with one sample per value of label,
// in sorted order; fixed holds label name-value pairs that every sample
// carries as well (such as the node's name).
func (m *Writer) CounterVec(name, help, label string, vs map[string]uint64, fixed ...string) {
	m.family(name, help, "counter")
	keys := make([]string, 0, len(vs))
	for k := range vs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		m.sample(name, append([]string{label, k}, fixed...), strconv.FormatUint(vs[k], 10))
	}
}

// Err returns the first write error.
func (m *Writer) Err() error { return m.err }

func (m *Writer) family(name, help, typ string) {
	m.printf("# HELP %s %s\n# TYPE %s %s\n", name, escapeHelp(help), name, typ)
}

func (m *Writer) sample(name string, labels []string, v string) {
	var b strings.Builder
	b.WriteString(name)
	if len(labels) > 0 {
		b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(labels[i])
			b.WriteString(`="`)
			b.WriteString(escapeLabel(labels[i+1]))
			b.WriteByte('"')
		}
		b.WriteByte('}')
	}
	m.printf("%s %s\n", b.String(), v)
}

func (m *Writer) printf(format string, args ...any) {
	if m.err == nil {
		_, m.err = fmt.Fprintf(m.w, format, args...)
	}
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeLabel(s string) string { return labelEscaper.Replace(s) }

// Handler serves the metrics that write produces on each request.
func Handler(write func(*Writer)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ContentType)
		write(NewWriter(w))
	})
}
