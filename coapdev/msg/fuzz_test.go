package msg

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spark2mqtt/spark2mqtt/internal/vectors"
)

// vectorCoAP returns the CoAP bytes of every vector and fixture frame.
func vectorCoAP(f *testing.F) [][]byte {
	var out [][]byte
	var v coapMessages
	vectors.Load(f, "coap_messages.json", &v)
	for _, vec := range v.Vectors {
		out = append(out, vectors.Hex(f, vec.CoAP))
	}
	for _, name := range []string{"session_fixture_core.json", "session_fixture_photon07.json", "session_fixture_photon08.json"} {
		var fx sessionFixture
		vectors.Load(f, name, &fx)
		for _, fr := range fx.Frames {
			out = append(out, vectors.Hex(f, fr.CoAP))
		}
	}
	return out
}

// FuzzDecode: anything Decode accepts encodes (to no more bytes, since
// encoding is canonical and ignored options are dropped), decodes back to an
// equal Message, and re-encodes to the same bytes; every error wraps
// ErrMalformed; the payload parsers never panic and return only their
// sentinel.
func FuzzDecode(f *testing.F) {
	for _, b := range vectorCoAP(f) {
		f.Add(b)
	}
	for _, s := range []string{"", "4f011234", "410112340162", "61451234ff", "41011234 01f161", "500212 35b1650c"} {
		f.Add([]byte(strings.ReplaceAll(s, " ", "")))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		enc, err := m.Encode()
		if err != nil {
			t.Fatalf("Encode of a decoded message: %v", err)
		}
		if len(enc) > len(b) {
			t.Fatalf("re-encoding grew from %d to %d bytes", len(b), len(enc))
		}
		m2, err := Decode(enc)
		if err != nil {
			t.Fatalf("Decode(Encode(m)): %v", err)
		}
		if diff := cmp.Diff(m, m2, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
		enc2, err := m2.Encode()
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("second encoding differs: %x vs %x (%v)", enc, enc2, err)
		}

		_ = m.Kind().String()
		for _, err := range []error{
			func() error { _, err := ParseEvent(m); return err }(),
			func() error { _, err := ParseSubscribe(m); return err }(),
			func() error { _, err := ParseHello(m.Payload); return err }(),
			func() error { _, err := DecodeReturn(m.Payload); return err }(),
			func() error { _, err := DecodeValue(VarDouble, m.Payload); return err }(),
		} {
			if err != nil && !errors.Is(err, ErrMalformed) {
				t.Fatalf("payload parser error does not wrap ErrMalformed: %v", err)
			}
		}
		if e, err := ParseEvent(m); err == nil && (e.Name == "" || len(e.Name) > MaxEventName || e.TTL == 0) {
			t.Fatalf("ParseEvent broke its limits: %+v", e)
		}
		if _, err := ParseDescription(m.Payload); err != nil && !errors.Is(err, ErrDescribe) {
			t.Fatalf("describe error does not wrap ErrDescribe: %v", err)
		}
	})
}

// FuzzDescription: a parsed Description respects the limits and survives
// Marshal → ParseDescription unchanged; Marshal writes valid JSON; errors
// wrap ErrDescribe.
func FuzzDescription(f *testing.F) {
	var v coapMessages
	vectors.Load(f, "coap_messages.json", &v)
	for _, b := range vectorCoAP(f) {
		if m, err := Decode(b); err == nil && bytes.HasPrefix(m.Payload, []byte("{")) {
			f.Add(m.Payload)
		}
	}
	for _, s := range []string{
		`{"f":["my"fn"],"v":{"x"y":9}}`,
		`{"f":["a\q","b\"],"v":{}}`,
		`{"f":[],"v":{},"p":6,"m":[{"s":1,"d":[{"f":"s","n":"1"}]}]}`,
		`{"f":["\u00e9\ud83d\ude00"],"v":{"a\"b":4}}`,
		`{"v":{"a":1,"a":2},"f":["x","x"]}`,
		`{}`, `null`, `[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDescription(b)
		if err != nil {
			if !errors.Is(err, ErrDescribe) {
				t.Fatalf("error does not wrap ErrDescribe: %v", err)
			}
			return
		}
		if len(b) > MaxDescribeSize {
			t.Fatalf("accepted %d bytes", len(b))
		}
		if n := len(d.Functions) + len(d.Variables); n > MaxNames {
			t.Fatalf("%d names", n)
		}
		for _, name := range append(slicesOf(d.Variables), d.Functions...) {
			if !validName(name) || !utf8.ValidString(name) {
				t.Fatalf("invalid name %q kept", name)
			}
		}
		out := d.Marshal()
		if !json.Valid(out) {
			t.Fatalf("Marshal wrote invalid JSON: %s", out)
		}
		d2, err := ParseDescription(out)
		if err != nil {
			t.Fatalf("reparse %s: %v", out, err)
		}
		if diff := cmp.Diff(d, d2); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}

func slicesOf(m map[string]VarType) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

var benchEvent = []byte("\x50\x02\x12\x39\xb1\x65\x0b" + "temperature" + "\xff" + "48.5")

func BenchmarkDecode(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(benchEvent); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	m := NewFunctionCall(0x1236, 3, "heater", []byte("on"))
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = m.AppendEncode(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseDescription(b *testing.B) {
	for _, tc := range []struct{ name, json string }{
		{"strict", `{"f":["heater"],"v":{"temp":9,"state":2},"p":6,"m":[]}`},
		{"lenient", `{"f":["hea"ter"],"v":{"temp":9,"state":2}}`},
	} {
		b.Run(tc.name, func(b *testing.B) {
			p := []byte(tc.json)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ParseDescription(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
