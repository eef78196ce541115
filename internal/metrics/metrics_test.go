package metrics

import (
	"io"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestExpositionFormat(t *testing.T) {
	srv := httptest.NewServer(Handler(func(m *Writer) {
		m.Counter("x_total", "Things done.", 42)
		m.Gauge("y_seconds", "Age with a \\ and\na newline.", 1.5)
		m.GaugeVec("z", "By state.", "state", map[string]float64{"b": 2, "a\"q": 1})
		m.CounterVec("v_total", "By action and node.", "action", map[string]uint64{"reject": 3, "accept": 5}, "mx", "mx\"1")
	}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, ContentType, resp.Header.Get("Content-Type"))
	assert.Equal(t, `# HELP x_total Things done.
# TYPE x_total counter
x_total 42
# HELP y_seconds Age with a \\ and\na newline.
# TYPE y_seconds gauge
y_seconds 1.5
# HELP z By state.
# TYPE z gauge
z{state="a\"q"} 1
z{state="b"} 2
# HELP v_total By action and node.
# TYPE v_total counter
v_total{action="accept",mx="mx\"1"} 5
v_total{action="reject",mx="mx\"1"} 3
`, string(body))
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	f.n++
	return 0, io.ErrClosedPipe
}

func TestFirstErrorSticks(t *testing.T) {
	f := &failWriter{}
	m := NewWriter(f)
	m.Counter("a", "a", 1)
	m.Counter("b", "b", 2)
	assert.ErrorIs(t, m.Err(), io.ErrClosedPipe)
	assert.Equal(t, 1, f.n, "no writes after the first failure")
}
