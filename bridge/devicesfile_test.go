package bridge

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseDevicesFile(t *testing.T) {
	const good = `# the heater and a spare
devices:
  0123456789ABCDEF01234567:   # any case
    name: heater
    poll: 30s
    variables:
      temp:
        poll: 10s
      state:
        poll: "off"
  "76543210fedcba9876543210":
    variables:
  aaaaaaaaaaaaaaaaaaaaaaaa:
`
	df, err := ParseDevicesFile("devices.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]*DeviceConfig{
		"0123456789abcdef01234567": {ID: "0123456789abcdef01234567", Name: "heater", Poll: 30 * time.Second, Line: 3,
			Variables: map[string]VariableConfig{"temp": {Poll: 10 * time.Second, Line: 7}, "state": {Poll: PollOff, Line: 9}}},
		"76543210fedcba9876543210": {ID: "76543210fedcba9876543210", Line: 11, Variables: map[string]VariableConfig{}},
		"aaaaaaaaaaaaaaaaaaaaaaaa": {ID: "aaaaaaaaaaaaaaaaaaaaaaaa", Line: 13, Variables: map[string]VariableConfig{}},
	}
	if d := cmp.Diff(want, df.Devices); d != "" {
		t.Errorf("devices (-want +got):\n%s", d)
	}
	if id, ok := df.ID("heater"); !ok || id != "0123456789abcdef01234567" {
		t.Errorf("ID(heater) = %q, %v", id, ok)
	}
	for _, tc := range []struct {
		id, v string
		def   time.Duration
		want  time.Duration
	}{
		{"0123456789abcdef01234567", "temp", time.Minute, 10 * time.Second},
		{"0123456789abcdef01234567", "state", time.Minute, PollOff},
		{"0123456789abcdef01234567", "other", time.Minute, 30 * time.Second},
		{"76543210fedcba9876543210", "temp", time.Minute, time.Minute},
		{"ffffffffffffffffffffffff", "temp", time.Minute, time.Minute},
		{"ffffffffffffffffffffffff", "temp", -1, PollOff},
	} {
		if got := df.Poll(tc.id, tc.v, tc.def); got != tc.want {
			t.Errorf("Poll(%s, %s) = %v, want %v", tc.id, tc.v, got, tc.want)
		}
	}
	var nilFile *DevicesFile
	if nilFile.Name("x") != "" || nilFile.Poll("x", "y", time.Second) != time.Second {
		t.Error("nil DevicesFile is not empty")
	}
}

// TestDevicesFileErrors: every error names the file, the line and what is
// wrong.
func TestDevicesFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"unknown top key", "device:\n  x: 1\n", `devices.yaml:1: top level: unknown key "device" (known: devices)`},
		{"unknown device key", "devices:\n  0123456789abcdef01234567:\n    nmae: heater\n",
			`devices.yaml:3: device 0123456789abcdef01234567: unknown key "nmae" (known: homeassistant, name, poll, variables)`},
		{"unknown variable key", "devices:\n  0123456789abcdef01234567:\n    variables:\n      temp:\n        pol: 1s\n",
			`devices.yaml:5: device 0123456789abcdef01234567: variable temp: unknown key "pol" (known: poll)`},
		{"bad id", "devices:\n  heater:\n    name: x\n", `devices.yaml:2: devices: key "heater" is not a device id (24 hex digits)`},
		{"duplicate id", "devices:\n  0123456789abcdef01234567: {}\n  0123456789ABCDEF01234567: {}\n",
			`devices.yaml:3: devices: device 0123456789abcdef01234567 listed twice (first at line 2)`},
		{"duplicate key", "devices:\n  0123456789abcdef01234567:\n    name: a\n    name: b\n",
			`devices.yaml:4: device 0123456789abcdef01234567: duplicate key "name" (first at line 3)`},
		{"name with slash", "devices:\n  0123456789abcdef01234567:\n    name: a/b\n",
			`devices.yaml:3: device 0123456789abcdef01234567: name: bridge: invalid topic level: "a/b" contains one of + # / NUL`},
		{"name with wildcard", "devices:\n  0123456789abcdef01234567:\n    name: 'a+'\n", `contains one of + # / NUL`},
		{"empty name", "devices:\n  0123456789abcdef01234567:\n    name: ''\n", `devices.yaml:3: device 0123456789abcdef01234567: name: bridge: invalid topic level: empty`},
		{"reserved name", "devices:\n  0123456789abcdef01234567:\n    name: bridge\n", `"bridge" is reserved`},
		{"name is another id", "devices:\n  0123456789abcdef01234567:\n    name: ffffffffffffffffffffffff\n", `is another device's id`},
		{"duplicate name", "devices:\n  0123456789abcdef01234567:\n    name: heater\n  76543210fedcba9876543210:\n    name: heater\n",
			`devices.yaml:5: device 76543210fedcba9876543210: name "heater" is already used by device 0123456789abcdef01234567 (line 2)`},
		{"bad poll", "devices:\n  0123456789abcdef01234567:\n    poll: soon\n", `devices.yaml:3: device 0123456789abcdef01234567: poll: "soon" is not a duration like 30s or 5m, nor off`},
		{"poll too short", "devices:\n  0123456789abcdef01234567:\n    poll: 10ms\n", `poll: 10ms is below the minimum 1s`},
		{"name a list", "devices:\n  0123456789abcdef01234567:\n    name: [a]\n", `devices.yaml:3: device 0123456789abcdef01234567: name must be a single value`},
		{"devices a list", "devices:\n  - a\n", `devices.yaml:2: devices must be a mapping`},
		{"alias", "x: &a 1\ndevices: *a\n", `unknown key "x"`},
		{"alias value", "devices:\n  0123456789abcdef01234567: &a {}\n  76543210fedcba9876543210: *a\n", `aliases are not supported`},
		{"syntax", "devices: [\n", `devices.yaml: yaml:`},
		{"two documents", "devices: {}\n---\ndevices: {}\n", `devices.yaml:2: more than one YAML document`},
		{"bad homeassistant section", "devices:\n  0123456789abcdef01234567:\n    homeassistant:\n      nope: 1\n",
			`devices.yaml:4: device 0123456789abcdef01234567: homeassistant: unknown key "nope"`},
		{"bad variable name", "devices:\n  0123456789abcdef01234567:\n    variables:\n      'a#':\n", `variable "a#"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseDevicesFile("devices.yaml", []byte(tc.in))
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !errors.Is(err, ErrDevicesFile) {
				t.Errorf("error %v does not wrap ErrDevicesFile", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

func TestLoadDevicesFile(t *testing.T) {
	dir := t.TempDir()
	df, err := LoadDevicesFile(filepath.Join(dir, "devices.yaml"))
	if err != nil || len(df.Devices) != 0 {
		t.Fatalf("missing file: %v, %v; want empty", df, err)
	}
	for _, in := range []string{"", "# only a comment\n", "---\n"} {
		if df, err := ParseDevicesFile("x", []byte(in)); err != nil || len(df.Devices) != 0 {
			t.Errorf("%q: %v, %v; want empty", in, df, err)
		}
	}
	p := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(p, []byte("devices:\n  nope: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadDevicesFile(p); err == nil || !strings.Contains(err.Error(), p+":2:") {
		t.Errorf("error %v does not name %s:2", err, p)
	}
	if err := os.WriteFile(p, make([]byte, maxDevicesFile+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadDevicesFile(p); !errors.Is(err, ErrDevicesFile) {
		t.Errorf("oversized file: %v", err)
	}
}

// FuzzDevicesFile: any input parses or fails with ErrDevicesFile (never a
// panic), and what parses holds the invariants: ids normalised, names
// valid and unique, polls off or at least the minimum.
func FuzzDevicesFile(f *testing.F) {
	f.Add([]byte("devices:\n  0123456789abcdef01234567:\n    name: heater\n    poll: 30s\n    variables:\n      temp: {poll: 10s}\n"))
	f.Add([]byte("devices: {aaaaaaaaaaaaaaaaaaaaaaaa: {name: 'x'}, bbbbbbbbbbbbbbbbbbbbbbbb: {name: y}}\n"))
	f.Add([]byte("devices:\n  - a\n"))
	f.Add([]byte("x: &a [*a]\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		df, err := ParseDevicesFile("f.yaml", in)
		if err != nil {
			if !errors.Is(err, ErrDevicesFile) {
				t.Fatalf("error %v does not wrap ErrDevicesFile", err)
			}
			return
		}
		names := map[string]bool{}
		for id, dc := range df.Devices {
			if got, err := parseID(id); err != nil || got != id || dc.ID != id {
				t.Fatalf("id %q not normalised", id)
			}
			if dc.Name != "" {
				if validName(dc.Name, id) != nil || names[dc.Name] {
					t.Fatalf("name %q invalid or repeated", dc.Name)
				}
				names[dc.Name] = true
				if got, ok := df.ID(dc.Name); !ok || got != id {
					t.Fatalf("ID(%q) = %q", dc.Name, got)
				}
			}
			for v, vc := range dc.Variables {
				if ValidLevel(v) != nil || (vc.Poll != 0 && vc.Poll != PollOff && vc.Poll < MinPollInterval) {
					t.Fatalf("variable %q %v", v, vc.Poll)
				}
			}
		}
	})
}

// TestExampleDevicesFile: the example shipped in deploy/ loads, Home
// Assistant section included.
func TestExampleDevicesFile(t *testing.T) {
	df, err := LoadDevicesFile(filepath.Join("..", "deploy", "devices.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	id, ok := df.ID("heater")
	if !ok {
		t.Fatal("no device named heater")
	}
	dc := df.Devices[id]
	if dc.HomeAssistant == nil || dc.Poll != 30*time.Second || dc.Variables["temp"].Poll != 10*time.Second {
		t.Errorf("heater entry = %+v", dc)
	}
}
