package msg

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseDescription(t *testing.T) {
	tests := []struct {
		name string
		json string
		want Description
	}{
		{"core", `{"f":["brew"],"v":{"temperature":2}}`,
			Description{Functions: []string{"brew"}, Variables: map[string]VarType{"temperature": VarInt}}},
		{"photon with p and m", `{"f":["heater"],"v":{"temp":9,"state":2},"p":6,"m":[{"s":16384,"l":"m","vc":30,"vv":30,"f":"b","n":"0","v":7,"d":[]}]}`,
			Description{Functions: []string{"heater"}, Variables: map[string]VarType{"temp": VarDouble, "state": VarInt}, Platform: 6, HasPlatform: true}},
		{"photon before setup()", `{"f":[],"v":{},"p":6,"m":[]}`,
			Description{Functions: []string{}, Variables: map[string]VarType{}, Platform: 6, HasPlatform: true}},
		{"missing keys", `{}`, Description{Functions: []string{}, Variables: map[string]VarType{}}},
		{"null parts", `{"f":null,"v":null,"p":null}`, Description{Functions: []string{}, Variables: map[string]VarType{}}},
		{"whitespace", " {\n \"f\" : [ \"a\" , \"b\" ] ,\t\"v\" : { \"x\" : 1 } }\n",
			Description{Functions: []string{"a", "b"}, Variables: map[string]VarType{"x": VarBool}}},
		{"escapes (strict JSON)", `{"f":["a\"b","c\\d","\u00e9"],"v":{}}`,
			Description{Functions: []string{`a"b`, `c\d`, "é"}, Variables: map[string]VarType{}}},
		{"Core unescaped quote", `{"f":["my"fn"],"v":{"x"y":9}}`,
			Description{Functions: []string{`my"fn`}, Variables: map[string]VarType{`x"y`: VarDouble}}},
		{"Core unescaped backslash", `{"f":["a\q","b\"],"v":{}}`,
			Description{Functions: []string{`a\q`, `b\`}, Variables: map[string]VarType{}}},
		{"Core unescaped control character", "{\"f\":[\"ok\",\"b\x01\"],\"v\":{\"t\":4}}",
			Description{Functions: []string{"ok"}, Variables: map[string]VarType{"t": VarString}}},
		{"duplicate functions dropped", `{"f":["a","b","a"],"v":{"x":1,"x":2}}`,
			Description{Functions: []string{"a", "b"}, Variables: map[string]VarType{"x": VarInt}}},
		{"invalid names dropped", `{"f":["","` + strings.Repeat("n", 65) + `","ok"],"v":{"":1}}`,
			Description{Functions: []string{"ok"}, Variables: map[string]VarType{}}},
		{"64-byte name kept", `{"f":["` + strings.Repeat("n", 64) + `"],"v":{}}`,
			Description{Functions: []string{strings.Repeat("n", 64)}, Variables: map[string]VarType{}}},
		{"unknown type code kept", `{"f":[],"v":{"n":5}}`,
			Description{Functions: []string{}, Variables: map[string]VarType{"n": 5}}},
		{"deep m, strict JSON", `{"f":["a"],"m":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`,
			Description{Functions: []string{"a"}, Variables: map[string]VarType{}}},
		{"Core quirks with m and p", `{"f":["a"b"],"v":{},"p":0,"m":[{"x":"y","n":[1,true,null,-2.5e3]}]}`,
			Description{Functions: []string{`a"b`}, Variables: map[string]VarType{}, HasPlatform: true}},
		{"case of keys matters", `{"F":["a"],"V":{"b":1}}`, Description{Functions: []string{}, Variables: map[string]VarType{}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseDescription([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			again, err := ParseDescription(got.Marshal())
			if err != nil {
				t.Fatalf("reparse %s: %v", got.Marshal(), err)
			}
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("Marshal round trip (-first +second):\n%s", diff)
			}
		})
	}
}

func TestParseDescriptionErrors(t *testing.T) {
	var many strings.Builder
	many.WriteString(`{"f":[`)
	for i := range MaxNames + 1 {
		if i > 0 {
			many.WriteString(",")
		}
		fmt.Fprintf(&many, `"f%d"`, i)
	}
	many.WriteString(`],"v":{}}`)
	var split strings.Builder
	split.WriteString(`{"f":[`)
	for i := range 200 {
		if i > 0 {
			split.WriteString(",")
		}
		fmt.Fprintf(&split, `"f%d"`, i)
	}
	split.WriteString(`],"v":{`)
	for i := range 57 {
		if i > 0 {
			split.WriteString(",")
		}
		fmt.Fprintf(&split, `"v%d":2`, i)
	}
	split.WriteString(`}}`)
	tests := []struct{ name, json string }{
		{"empty", ``},
		{"null", `null`},
		{"array", `["f"]`},
		{"string", `"f"`},
		{"truncated", `{"f":["a"`},
		{"unterminated string", `{"f":["a`},
		{"trailing data", `{"f":[]} x`},
		{"f not an array", `{"f":"x"}`},
		{"f of numbers", `{"f":[1]}`},
		{"v not an object", `{"v":[1]}`},
		{"type not a number", `{"v":{"a":"x"}}`},
		{"type fraction", `{"v":{"a":1.5}}`},
		{"type over 255", `{"v":{"a":300}}`},
		{"type negative", `{"v":{"a":-1}}`},
		{"p negative", `{"p":-1}`},
		{"p too large", `{"p":70000}`},
		{"p not a number", `{"p":"6"}`},
		{"deep m, Core quirks", `{"f":["a"b"],"m":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`},
		{"type as a string", `{"v":{"a":"1"}}`},
		{"type with exponent", `{"v":{"a":1e0}}`},
		{"huge", `{"f":["` + strings.Repeat("a", MaxDescribeSize) + `"]}`},
		{"too many functions", many.String()},
		{"too many names in all", split.String()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := ParseDescription([]byte(tc.json))
			if !errors.Is(err, ErrDescribe) {
				t.Fatalf("got %+v, %v; want ErrDescribe", d, err)
			}
		})
	}
}

func TestDescriptionMarshal(t *testing.T) {
	d := Description{
		Functions:   []string{"b", `q"`, "c\x01", "\xff"},
		Variables:   map[string]VarType{"z": VarInt, "a": VarDouble},
		Platform:    6,
		HasPlatform: true,
	}
	want := `{"f":["b","q\"","c\u0001","\ufffd"],"v":{"a":9,"z":2},"p":6}`
	if got := string(d.Marshal()); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if got := string(Description{}.Marshal()); got != `{"f":[],"v":{}}` {
		t.Errorf("empty: got %s", got)
	}
}

func TestValues(t *testing.T) {
	tests := []struct {
		name  string
		typ   VarType
		wire  []byte
		want  Value
		text  string
		reenc bool
	}{
		{"double 48.5", VarDouble, []byte{0, 0, 0, 0, 0, 0x40, 0x48, 0x40}, Value{Type: VarDouble, Double: 48.5}, "48.5", true},
		{"double 21.5013247033525", VarDouble, []byte{0x6d, 0x93, 0xd5, 0xd0, 0x56, 0x80, 0x35, 0x40},
			Value{Type: VarDouble, Double: 21.5013247033525}, "21.5013247033525", true},
		{"double NaN", VarDouble, []byte{1, 0, 0, 0, 0, 0, 0xf8, 0x7f}, Value{Type: VarDouble, Double: math.NaN()}, "NaN", false},
		{"int -98765", VarInt, []byte{0xff, 0xfe, 0x7e, 0x33}, Value{Type: VarInt, Int: -98765}, "-98765", true},
		{"int 1", VarInt, []byte{0, 0, 0, 1}, Value{Type: VarInt, Int: 1}, "1", true},
		{"bool true", VarBool, []byte{1}, Value{Type: VarBool, Bool: true}, "true", true},
		{"bool false", VarBool, []byte{0}, Value{Type: VarBool}, "false", true},
		{"bool 2 reads true", VarBool, []byte{2}, Value{Type: VarBool, Bool: true}, "true", false},
		{"string", VarString, []byte("woot"), Value{Type: VarString, String: "woot"}, "woot", true},
		{"empty string", VarString, nil, Value{Type: VarString}, "", true},
		{"unknown type reads as string", 5, []byte("x"), Value{Type: VarString, String: "x"}, "x", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeValue(tc.typ, tc.wire)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b float64) bool {
				return a == b || (math.IsNaN(a) && math.IsNaN(b))
			})); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if got.Text() != tc.text {
				t.Errorf("Text: got %q, want %q", got.Text(), tc.text)
			}
			if tc.reenc && !bytes.Equal(got.Encode(), tc.wire) && len(tc.wire) > 0 {
				t.Errorf("Encode: got %x, want %x", got.Encode(), tc.wire)
			}
		})
	}
	for _, tc := range []struct {
		typ VarType
		n   int
	}{{VarBool, 0}, {VarBool, 2}, {VarInt, 3}, {VarInt, 8}, {VarDouble, 4}, {VarDouble, 9}} {
		if _, err := DecodeValue(tc.typ, make([]byte, tc.n)); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeValue(%v, %d bytes): got %v, want ErrMalformed", tc.typ, tc.n, err)
		}
	}
}

func TestReturn(t *testing.T) {
	for _, r := range []int32{0, 1, -1, 42, math.MaxInt32, math.MinInt32} {
		got, err := DecodeReturn(EncodeReturn(r))
		if err != nil || got != r {
			t.Errorf("DecodeReturn(EncodeReturn(%d)) = %d, %v", r, got, err)
		}
	}
	for _, n := range []int{0, 3, 5, 8} {
		if _, err := DecodeReturn(make([]byte, n)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%d bytes: got %v, want ErrMalformed", n, err)
		}
	}
}

func TestHello(t *testing.T) {
	tests := []struct {
		name string
		p    []byte
		want Hello
	}{
		{"core", []byte{0xff, 0xff, 0xff, 0xff, 0, 1}, Hello{ProductID: 0xffff, ProductVersion: 0xffff, Flags: HelloOTASucceeded}},
		{"7 bytes: no platform", []byte{0, 6, 0, 3, 0, 0, 0}, Hello{ProductID: 6, ProductVersion: 3}},
		{"photon 0.8", []byte{0, 6, 0xff, 0xff, 0, 2, 0, 6}, Hello{ProductID: 6, ProductVersion: 0xffff, Flags: HelloDiagnostics, PlatformID: 6, HasPlatform: true}},
		{"longer: extra ignored", []byte{0, 6, 0, 3, 0, 6, 0, 8, 9, 9}, Hello{ProductID: 6, ProductVersion: 3, Flags: 6, PlatformID: 8, HasPlatform: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseHello(tc.p)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			n := 6
			if got.HasPlatform {
				n = 8
			}
			if !bytes.Equal(got.Marshal(), tc.p[:n]) {
				t.Errorf("Marshal: got %x, want %x", got.Marshal(), tc.p[:n])
			}
		})
	}
	for n := range 6 {
		if _, err := ParseHello(make([]byte, n)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%d bytes: got %v, want ErrMalformed", n, err)
		}
	}
}

func TestParseEvent(t *testing.T) {
	ev := func(path []string, hasAge bool, age uint32) Message {
		return Message{Type: NonConfirmable, Code: POST, Path: path, HasMaxAge: hasAge, MaxAge: age, Payload: []byte("d")}
	}
	ok := []struct {
		name string
		m    Message
		want Event
	}{
		{"no Max-Age: 60", ev([]string{"e", "x"}, false, 0), Event{Name: "x", Data: []byte("d"), TTL: 60}},
		{"Max-Age 0: 60", ev([]string{"e", "x"}, true, 0), Event{Name: "x", Data: []byte("d"), TTL: 60}},
		{"Max-Age 21600", ev([]string{"E", "x"}, true, 21600), Event{Name: "x", Data: []byte("d"), TTL: 21600, Private: true}},
		{"split name", ev([]string{"e", "a", "b"}, false, 0), Event{Name: "a/b", Data: []byte("d"), TTL: 60}},
		{"64-byte name", ev([]string{"e", strings.Repeat("n", 64)}, false, 0), Event{Name: strings.Repeat("n", 64), Data: []byte("d"), TTL: 60}},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseEvent(tc.m)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	bad := []struct {
		name string
		m    Message
	}{
		{"GET", Message{Code: GET, Path: []string{"e", "x"}}},
		{"no name", ev([]string{"e"}, false, 0)},
		{"empty name", ev([]string{"e", ""}, false, 0)},
		{"65-byte name", ev([]string{"e", strings.Repeat("n", 65)}, false, 0)},
		{"not an event", ev([]string{"f", "x"}, false, 0)},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseEvent(tc.m); !errors.Is(err, ErrMalformed) {
				t.Errorf("got %v, want ErrMalformed", err)
			}
		})
	}
	// The two directions' builders read back the same event.
	for _, m := range []Message{
		NewEventToDevice(1, "lake-depth/1", []byte("28m"), 21600, true),
		NewEventFromDevice(NonConfirmable, 1, "lake-depth/1", []byte("28m"), 21600, true),
	} {
		got, err := ParseEvent(m)
		if err != nil || got.Name != "lake-depth/1" || got.TTL != 21600 || !got.Private {
			t.Errorf("ParseEvent(%v) = %+v, %v", m.Path, got, err)
		}
	}
}

func TestParseSubscribe(t *testing.T) {
	ok := []struct {
		name string
		m    Message
		want Subscription
	}{
		{"prefix", NewSubscribe(1, "heater/", false, ""), Subscription{Prefix: "heater/"}},
		{"mine only, no prefix", NewSubscribe(1, "", true, ""), Subscription{MineOnly: true}},
		{"device id", NewSubscribe(1, "x", false, "53FF73065067544816300187"), Subscription{Prefix: "x", DeviceID: "53FF73065067544816300187"}},
		{"split prefix", Message{Code: GET, Path: []string{"e", "a", "b"}}, Subscription{Prefix: "a/b"}},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSubscribe(tc.m)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	bad := []struct {
		name string
		m    Message
	}{
		{"firehose", NewSubscribe(1, "", false, "")},
		{"POST", Message{Code: POST, Path: []string{"e", "x"}}},
		{"private path", Message{Code: GET, Path: []string{"E", "x"}}},
		{"bad device id", NewSubscribe(1, "x", false, "not-hex-not-hex-not-hex!")},
		{"short device id", NewSubscribe(1, "x", false, "53ff")},
		{"65-byte prefix", NewSubscribe(1, strings.Repeat("p", 65), false, "")},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseSubscribe(tc.m); !errors.Is(err, ErrMalformed) {
				t.Errorf("got %v, want ErrMalformed", err)
			}
		})
	}
}
