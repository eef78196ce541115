package queue

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"
)

// fill sets every field v reaches (exported or promoted from an embedded
// struct) to a random value, zero about a third of the time, so that
// omitempty, nil and set all come up.
func fill(rnd *rand.Rand, v reflect.Value, depth int) {
	if rnd.IntN(3) == 0 && depth > 0 && v.CanSet() {
		v.SetZero()
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if f := v.Field(i); f.CanSet() || v.Type().Field(i).Anonymous {
				fill(rnd, f, depth+1)
			}
		}
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(rnd, p.Elem(), depth+1)
		v.Set(p)
	case reflect.Slice:
		n := rnd.IntN(4)
		s := reflect.MakeSlice(v.Type(), n, n)
		for i := 0; i < n; i++ {
			fill(rnd, s.Index(i), depth+1)
		}
		v.Set(s)
	case reflect.Array:
		for i := 0; i < v.Len(); i++ {
			v.Index(i).SetUint(rnd.Uint64N(256))
		}
	case reflect.String:
		pool := []string{"", "a", "user@example.org", "smtp.example.org:25", "250 2.0.0 OK", "<x>&y", "a<b", "a>b", "a&b", "quote\" only", "back\\slash",
			"tab\tnl\n", "ünïcödé", "\u2028", "bad \xff utf8", "\x00\x1f\x7f"}
		v.SetString(pool[rnd.IntN(len(pool))])
	case reflect.Bool:
		v.SetBool(rnd.IntN(2) == 0)
	case reflect.Int, reflect.Int64:
		v.SetInt(rnd.Int64() >> rnd.IntN(64) * int64(1-2*rnd.IntN(2)))
	case reflect.Uint8, reflect.Uint32:
		v.SetUint(rnd.Uint64N(1 << (8 * v.Type().Size())))
	default:
		panic("fill: no filler for " + v.Type().String())
	}
}

// TestRecordJSONIsEncodingJSON: the hand-written JSON of the records is
// byte for byte json.Marshal's, for records with every field set, unset
// or random.
func TestRecordJSONIsEncodingJSON(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		var m msgRec
		var u updRec
		fill(rnd, reflect.ValueOf(&m).Elem(), 0)
		fill(rnd, reflect.ValueOf(&u).Elem(), 0)
		want, err := json.Marshal(&m)
		require.NoError(t, err)
		require.Equal(t, string(want), string(appendMsgJSON(nil, &m)))
		want, err = json.Marshal(&u)
		require.NoError(t, err)
		require.Equal(t, string(want), string(appendUpdJSON(nil, &u)))
	}
	// encode frames either the same way.
	var m msgRec
	fill(rnd, reflect.ValueOf(&m).Elem(), 0)
	rec, err := encode(recMessage, &m, []byte("body"))
	require.NoError(t, err)
	typ, meta, body, err := decode(rec)
	require.NoError(t, err)
	j, _ := json.Marshal(&m)
	require.Equal(t, byte(recMessage), typ)
	require.Equal(t, string(j), string(meta))
	require.Equal(t, "body", string(body))
}
