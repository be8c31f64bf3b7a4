package hass

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

const testID = "0123456789abcdef01234567"

func ptr[T any](v T) *T { return &v }

func TestParseNode(t *testing.T) {
	const file = `devices:
  0123456789abcdef01234567:
    homeassistant:
      discovery: true
      defaults: false
      name: Water heater
      suggested_area: Basement
      entities:
        power:
          platform: switch
          function: heater
          state_variable: state
          state_on: "1"
          state_off: "0"
        boiler:
          platform: water_heater
          name: null
          power_function: heater
          current_temperature_variable: temp
          temperature_function: settemp
          min_temp: 30
          max_temp: 70
          precision: 0.5
        t:
          platform: sensor
          variable: temp
          device_class: temperature
          unit_of_measurement: °C
          state_class: measurement
          suggested_display_precision: 1
          enabled_by_default: false
        ready:
          platform: binary_sensor
          variable: ready
          entity_category: diagnostic
        level:
          platform: number
          function: setlevel
          min: 0
          max: 10
          step: 0.5
          mode: slider
        reboot:
          platform: button
          function: cmd
          payload_press: reboot
          device_class: restart
          icon: mdi:restart
        message:
          platform: text
          function: show
          max: 20
          pattern: "[a-z]*"
`
	got, err := sectionOf(t, "devices.yaml", []byte(file), testID)
	if err != nil {
		t.Fatal(err)
	}
	want := &DeviceConfig{
		NoDefaults: true, Name: "Water heater", SuggestedArea: "Basement", Line: 4,
		Entities: []Entity{
			{Key: "boiler", Platform: WaterHeater, Line: 15, NameNull: true, PowerFunction: "heater",
				PayloadOn: "on", PayloadOff: "off", OnMode: "electric", CurrentTemperatureVariable: "temp",
				TemperatureFunction: "settemp", MinTemp: ptr(30.0), MaxTemp: ptr(70.0), Precision: ptr(0.5)},
			{Key: "level", Platform: Number, Line: 36, Function: "setlevel", Min: ptr(0.0), Max: ptr(10.0), Step: ptr(0.5), Mode: "slider"},
			{Key: "message", Platform: Text, Line: 49, Function: "show", Max: ptr(20.0), Pattern: "[a-z]*"},
			{Key: "power", Platform: Switch, Line: 9, Function: "heater", PayloadOn: "on", PayloadOff: "off",
				StateVariable: "state", StateOn: "1", StateOff: "0"},
			{Key: "ready", Platform: BinarySensor, Line: 32, Variable: "ready", EntityCategory: "diagnostic"},
			{Key: "reboot", Platform: Button, Line: 43, Function: "cmd", PayloadPress: "reboot", DeviceClass: "restart", Icon: "mdi:restart"},
			{Key: "t", Platform: Sensor, Line: 24, Variable: "temp", DeviceClass: "temperature", UnitOfMeasurement: "°C",
				StateClass: "measurement", SuggestedDisplayPrecision: ptr(1), EnabledByDefault: ptr(false)},
		},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func TestParseNodeEmpty(t *testing.T) {
	for _, tc := range []struct{ name, yaml string }{
		{"null", "devices:\n  " + testID + ":\n    homeassistant:\n"},
		{"empty mapping", "devices:\n  " + testID + ":\n    homeassistant: {}\n"},
		{"null entities", "devices:\n  " + testID + ":\n    homeassistant:\n      entities:\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sectionOf(t, "devices.yaml", []byte(tc.yaml), testID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Disabled || got.NoDefaults || len(got.Entities) != 0 {
				t.Errorf("got %+v, want an empty section", got)
			}
		})
	}
}

// TestParseNodeBad: every refusal is an *Error naming the file, the line
// and the key, and unwraps to ErrSection.
func TestParseNodeBad(t *testing.T) {
	const head = "devices:\n  " + testID + ":\n    homeassistant:\n" // the section starts on line 3
	for _, tc := range []struct {
		name     string
		body     string // indented under homeassistant:
		line     int
		key      string
		contains string
	}{
		{"unknown section key", "      dicsovery: true\n", 4, "dicsovery", `unknown key "dicsovery" (known: defaults, discovery, entities, name, suggested_area)`},
		{"section not a mapping", "      - a\n", 4, "", "homeassistant must be a mapping"},
		{"discovery not bool", "      discovery: yes\n", 4, "discovery", `"yes" is not true or false`},
		{"unknown platform", "      entities:\n        x:\n          platform: light\n          function: f\n", 6, "platform", `unknown platform "light" (known: binary_sensor, button, number, sensor, switch, text, water_heater)`},
		{"missing platform", "      entities:\n        x:\n          function: f\n", 5, "x", "platform is missing"},
		{"null entity", "      entities:\n        x:\n", 5, "x", "platform is missing"},
		{"unknown key", "      entities:\n        x:\n          platform: sensor\n          variable: temp\n          unit: C\n", 8, "unit", `unknown key "unit"`},
		{"other platform's key", "      entities:\n        x:\n          platform: sensor\n          variable: temp\n          function: f\n", 8, "function", `x (sensor): unknown key "function"`},
		{"missing required", "      entities:\n        x:\n          platform: switch\n", 5, "function", "function is required"},
		{"button without payload", "      entities:\n        x:\n          platform: button\n          function: f\n", 5, "payload_press", "payload_press is required"},
		{"bad key chars", "      entities:\n        my-heater:\n          platform: switch\n          function: f\n", 5, "my-heater", `entity key "my-heater"`},
		{"duplicate key", "      entities:\n        x:\n          platform: sensor\n          variable: a\n          variable: b\n", 8, "variable", `duplicate key "variable" (first at line 7)`},
		{"duplicate entity", "      entities:\n        x:\n          platform: sensor\n          variable: a\n        x:\n          platform: sensor\n          variable: b\n", 8, "x", `duplicate key "x"`},
		{"bad function name", "      entities:\n        x:\n          platform: switch\n          function: a/b\n", 7, "function", "contains one of + # / NUL"},
		{"long variable name", "      entities:\n        x:\n          platform: sensor\n          variable: " + strings.Repeat("v", 65) + "\n", 7, "variable", "longer than 64 bytes"},
		{"number not a number", "      entities:\n        x:\n          platform: number\n          function: f\n          min: low\n", 8, "min", `"low" is not a number`},
		{"number min over max", "      entities:\n        x:\n          platform: number\n          function: f\n          min: 5\n          max: 1\n", 9, "max", "min 5 is not below max 1"},
		{"state_class", "      entities:\n        x:\n          platform: sensor\n          variable: v\n          state_class: average\n", 8, "state_class", `"average" is not one of measurement`},
		{"sensor config category", "      entities:\n        x:\n          platform: sensor\n          variable: v\n          entity_category: config\n", 8, "entity_category", "must be diagnostic"},
		{"device class form", "      entities:\n        x:\n          platform: sensor\n          variable: v\n          device_class: Temperature\n", 8, "device_class", `device_class "Temperature"`},
		{"switch device class", "      entities:\n        x:\n          platform: switch\n          function: f\n          device_class: light\n", 8, "device_class", `"light" is not one of outlet, switch`},
		{"icon form", "      entities:\n        x:\n          platform: switch\n          function: f\n          icon: boiler\n", 8, "icon", "want prefix:name"},
		{"text icon", "      entities:\n        x:\n          platform: text\n          function: f\n          icon: mdi:x\n", 8, "icon", `unknown key "icon"`},
		{"same payloads", "      entities:\n        x:\n          platform: switch\n          function: f\n          payload_on: go\n          payload_off: go\n", 9, "payload_off", `both "go"`},
		{"state_on alone", "      entities:\n        x:\n          platform: switch\n          function: f\n          state_variable: s\n          state_on: \"1\"\n", 9, "state_on", "both state_on and state_off"},
		{"state_on without variable", "      entities:\n        x:\n          platform: switch\n          function: f\n          state_on: \"1\"\n          state_off: \"0\"\n", 8, "state_on", "need state_variable"},
		{"long payload", "      entities:\n        x:\n          platform: switch\n          function: f\n          payload_on: " + strings.Repeat("a", 623) + "\n", 8, "payload_on", "longer than 622 bytes"},
		{"water heater mode", "      entities:\n        x:\n          platform: water_heater\n          power_function: f\n          on_mode: off\n", 8, "on_mode", `"off" is not one of eco`},
		{"water heater precision", "      entities:\n        x:\n          platform: water_heater\n          power_function: f\n          precision: 0.2\n", 8, "precision", `"0.2" is not 0.1, 0.5 or 1.0`},
		{"water heater temp var alone", "      entities:\n        x:\n          platform: water_heater\n          power_function: f\n          temperature_variable: t\n", 8, "temperature_variable", "needs temperature_function"},
		{"text max", "      entities:\n        x:\n          platform: text\n          function: f\n          max: 300\n", 8, "max", "from 0 to 255"},
		{"empty name", "      entities:\n        x:\n          platform: text\n          function: f\n          name: \"\"\n", 8, "name", "name is empty"},
		{"alias", "      entities:\n        x: &a\n          platform: text\n          function: f\n        y: *a\n", 8, "y", "aliases are not supported"},
		{"sequence value", "      entities:\n        x:\n          platform: [sensor]\n", 6, "platform", "platform must be a single value"},
		{"entities not mapping", "      entities: [a]\n", 4, "", "entities must be a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sectionOf(t, "devices.yaml", []byte(head+tc.body), testID)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrSection) {
				t.Errorf("error %v does not wrap ErrSection", err)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not an *Error", err)
			}
			if e.File != "devices.yaml" || e.Line != tc.line || e.Key != tc.key {
				t.Errorf("file, line, key = %s, %d, %q; want devices.yaml, %d, %q (%v)", e.File, e.Line, e.Key, tc.line, tc.key, err)
			}
			if !strings.HasPrefix(err.Error(), "devices.yaml:") || !strings.Contains(err.Error(), "device "+testID+": homeassistant") {
				t.Errorf("error %q does not name the file and the device", err)
			}
			if !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("error %q does not contain %q", err, tc.contains)
			}
		})
	}
}

func TestParseNodeLimits(t *testing.T) {
	var sb strings.Builder
	sb.WriteString("devices:\n  " + testID + ":\n    homeassistant:\n      entities:\n")
	for i := range MaxEntities + 1 {
		sb.WriteString("        e" + strconv.Itoa(i) + ":\n          platform: sensor\n          variable: v\n")
	}
	_, err := sectionOf(t, "devices.yaml", []byte(sb.String()), testID)
	if err == nil || !strings.Contains(err.Error(), "more than 256 entities") {
		t.Errorf("err = %v, want more than 256 entities", err)
	}
	key := strings.Repeat("k", MaxKey+1)
	_, err = sectionOf(t, "devices.yaml", []byte("devices:\n  "+testID+":\n    homeassistant:\n      entities:\n        "+key+":\n          platform: sensor\n          variable: v\n"), testID)
	if err == nil || !strings.Contains(err.Error(), "at most 64") {
		t.Errorf("err = %v, want a refused long key", err)
	}
}

// TestExampleDevicesFile parses the shipped example.
func TestExampleDevicesFile(t *testing.T) {
	const path = "../../deploy/devices.example.yaml"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := sectionOf(t, path, data, heaterID)
	if err != nil {
		t.Fatal(err)
	}
	var ps []Platform
	for _, e := range dc.Entities {
		ps = append(ps, e.Platform)
	}
	if d := cmp.Diff([]Platform{WaterHeater, Switch, Sensor}, ps); d != "" {
		t.Errorf("platforms of boiler, power, temperature (-want +got):\n%s", d)
	}
	// The whole file is one YAML document with the keys the bridge knows.
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
}
