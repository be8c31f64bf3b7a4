package hass

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// FuzzParseNode feeds any YAML to ParseNode as a homeassistant section.
// Properties: an error is an *Error naming the file and a line of the
// input; a success is deterministic, within the limits, and builds (for a
// device that has every name it uses) into a payload whose every key Home
// Assistant documents.
func FuzzParseNode(f *testing.F) {
	example, err := os.ReadFile("../../deploy/devices.example.yaml")
	if err != nil {
		f.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(example, &doc); err != nil {
		f.Fatal(err)
	}
	sec, err := yaml.Marshal(lookup(&doc, "devices", heaterID, "homeassistant"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sec)
	for _, s := range []string{
		"", "{}", "discovery: false", "defaults: false\nname: x\nsuggested_area: y",
		"entities:\n  a:\n    platform: sensor\n    variable: temp\n",
		"entities:\n  a:\n    platform: switch\n    function: heater\n    state_variable: s\n    state_on: '1'\n    state_off: '0'\n",
		"entities:\n  a:\n    platform: number\n    function: f\n    min: 0\n    max: 5\n    step: 0.1\n",
		"entities:\n  a:\n    platform: button\n    function: f\n    payload_press: go\n",
		"entities:\n  a:\n    platform: text\n    function: f\n    max: 20\n    pattern: '[a-z]'\n",
		"entities:\n  a:\n    platform: binary_sensor\n    variable: v\n    payload_on: x\n    payload_off: y\n",
		"entities:\n  a:\n    platform: water_heater\n    power_function: f\n    temperature_function: t\n    min_temp: 1\n    max_temp: 2\n",
		"entities:\n  a:\n    platform: light\n",
		"entities:\n  a: &x\n    platform: sensor\n  b: *x\n",
		"entities: [1, 2]",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var doc yaml.Node
		if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
			return
		}
		root := doc.Content[0]
		dc, err := ParseNode("f.yaml", "device x", root)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, ErrSection) {
				t.Fatalf("error %v (%T) is not an *Error wrapping ErrSection", err, err)
			}
			// YAML breaks lines at \n, \r and \r\n (and NEL, LS, PS):
			// an upper bound of the line number is their count plus one.
			// The count is taken on the text the parser read, which
			// for input with a UTF-16 byte order mark is the decoded text.
			text := yamlText(data)
			lines := 1
			for _, br := range []string{"\n", "\r", "\u0085", "\u2028", "\u2029"} {
				lines += strings.Count(text, br)
			}
			if e.File != "f.yaml" || e.Line < 0 || e.Line > lines || e.Msg == "" {
				t.Fatalf("error %+v: file, line (of %d) or message wrong", e, lines)
			}
			if !strings.HasPrefix(e.Msg, "device x: homeassistant") {
				t.Fatalf("message %q does not say where", e.Msg)
			}
			return
		}
		again, err := ParseNode("f.yaml", "device x", root)
		if err != nil || !cmp.Equal(dc, again) {
			t.Fatalf("second parse differs: %v", err)
		}
		if len(dc.Entities) > MaxEntities || !slices.IsSortedFunc(dc.Entities, func(a, b Entity) int { return strings.Compare(a.Key, b.Key) }) {
			t.Fatalf("%d entities, or not sorted", len(dc.Entities))
		}
		d := Device{ID: testID, Topic: "dev", Kind: "photon", MaxArg: MaxArg, Variables: map[string]msg.VarType{}, Config: dc}
		for i, e := range dc.Entities {
			if i > 0 && dc.Entities[i-1].Key == e.Key {
				t.Fatalf("key %q twice", e.Key)
			}
			if !entityKey.MatchString(e.Key) || len(e.Key) > MaxKey {
				t.Fatalf("key %q accepted", e.Key)
			}
			if _, ok := platformFields[e.Platform]; !ok {
				t.Fatalf("platform %q accepted", e.Platform)
			}
			fns, vars := e.names()
			for _, n := range append(slices.Clone(fns), vars...) {
				if validDeviceName(n) != nil {
					t.Fatalf("name %q accepted", n)
				}
			}
			for _, a := range []string{e.PayloadOn, e.PayloadOff, e.PayloadPress, e.StateOn, e.StateOff} {
				if len(a) > MaxArg {
					t.Fatalf("argument of %d bytes accepted", len(a))
				}
			}
			d.Functions = append(d.Functions, fns...)
			for _, v := range vars {
				d.Variables[v] = msg.VarInt
			}
		}
		disc, warns, err := Build(testOptions, d)
		if err != nil {
			t.Fatalf("Build: %v", err)
		}
		if len(warns) != 0 {
			t.Fatalf("warnings for a device with every name: %v", warns)
		}
		if dc.Disabled {
			if len(disc.Payload()) != 0 {
				t.Fatal("disabled device announced")
			}
			return
		}
		checkPayload(t, disc.Payload(), "spark")
		for _, e := range dc.Entities {
			if _, ok := disc.Components[componentID("ent", e.Key)]; !ok {
				t.Fatalf("entity %s not published", e.Key)
			}
		}
	})
}

// yamlText is data as the YAML parser reads it: UTF-16 (big or little
// endian) when it starts with that byte order mark, UTF-8 otherwise.
func yamlText(data []byte) string {
	if len(data) < 2 || !(data[0] == 0xfe && data[1] == 0xff || data[0] == 0xff && data[1] == 0xfe) {
		return string(data)
	}
	big := data[0] == 0xfe
	u := make([]uint16, 0, len(data)/2)
	for i := 2; i+1 < len(data); i += 2 {
		if big {
			u = append(u, uint16(data[i])<<8|uint16(data[i+1]))
		} else {
			u = append(u, uint16(data[i+1])<<8|uint16(data[i]))
		}
	}
	return string(utf16.Decode(u))
}
