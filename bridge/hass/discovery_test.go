package hass

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// heaterID is the simulated heater's id, used by deploy/devices.example.yaml.
const heaterID = "f1ee70000000000000000000"

var testOptions = Options{Prefix: "homeassistant", BaseTopic: "spark", Origin: Origin{SWVersion: "1.2.3"}}

// genericCore is a Core with the heater firmware's function and a
// variable of every type, and no devices file entry.
func genericCore() Device {
	return Device{
		ID: testID, Topic: testID, Kind: "core", HasHello: true, ProductID: 0xFFFF, ProductVersion: 0xFFFF,
		MaxArg:    63,
		Functions: []string{"heater"},
		Variables: map[string]msg.VarType{"temp": msg.VarDouble, "state": msg.VarInt, "ready": msg.VarBool, "label": msg.VarString},
	}
}

func build(t *testing.T, d Device) (Discovery, []Warning) {
	t.Helper()
	disc, warns, err := Build(testOptions, d)
	if err != nil {
		t.Fatal(err)
	}
	return disc, warns
}

func components(t *testing.T, payload []byte) map[string]map[string]any {
	t.Helper()
	var root struct {
		Components map[string]map[string]any `json:"components"`
	}
	if err := json.Unmarshal(payload, &root); err != nil {
		t.Fatal(err)
	}
	return root.Components
}

func TestGenericDeviceGolden(t *testing.T) {
	disc, warns := build(t, genericCore())
	if len(warns) != 0 {
		t.Errorf("warnings: %v", warns)
	}
	if disc.Topic != "homeassistant/device/"+testID+"/config" {
		t.Errorf("topic %q", disc.Topic)
	}
	p := disc.Payload()
	checkPayload(t, p, "spark")
	golden(t, "generic_core", p)
	want := map[string]Platform{
		"fn_heater": Text, "var_temp": Sensor, "var_state": Sensor, "var_ready": BinarySensor, "var_label": Sensor,
		"sys_connection": BinarySensor, "sys_find": Button, "sys_find_stop": Button,
	}
	if d := cmp.Diff(want, disc.Components); d != "" {
		t.Errorf("components (-want +got):\n%s", d)
	}
}

// TestHeaterGolden builds the heater of deploy/devices.example.yaml as the
// simulated heater describes itself.
func TestHeaterGolden(t *testing.T) {
	const path = "../../deploy/devices.example.yaml"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := sectionOf(t, path, data, heaterID)
	if err != nil {
		t.Fatal(err)
	}
	d := Device{
		ID: heaterID, Topic: "heater", Name: "heater", Kind: "core", HasHello: true, ProductID: 0xFFFF, MaxArg: 63,
		Functions: []string{"heater"},
		Variables: map[string]msg.VarType{"temp": msg.VarDouble, "state": msg.VarInt},
		Config:    dc,
	}
	disc, warns := build(t, d)
	if len(warns) != 0 {
		t.Errorf("warnings: %v", warns)
	}
	p := disc.Payload()
	checkPayload(t, p, "spark")
	golden(t, "heater", p)
	want := map[string]Platform{
		"ent_boiler": WaterHeater, "ent_temperature": Sensor, "ent_power": Switch,
		"sys_connection": BinarySensor, "sys_find": Button, "sys_find_stop": Button,
	}
	if d := cmp.Diff(want, disc.Components); d != "" {
		t.Errorf("components (-want +got): the declared entities replace the defaults of heater, temp and state:\n%s", d)
	}
	c := components(t, p)
	if got := c["ent_boiler"]["name"]; got != "Boiler" {
		t.Errorf("boiler name %v", got)
	}
	if got := c["ent_temperature"]["unit_of_measurement"]; got != "°C" {
		t.Errorf("temperature unit %v", got)
	}
}

// TestDevice: the device mapping by kind, platform and hello.
func TestDevice(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Device)
		want map[string]any
	}{
		{"core", func(d *Device) {}, map[string]any{
			"identifiers": []any{"spark2mqtt_" + testID}, "name": testID, "serial_number": testID,
			"manufacturer": "Spark", "model": "Core"}},
		{"photon with product", func(d *Device) {
			d.Kind, d.HasPlatform, d.PlatformID, d.ProductID, d.ProductVersion = "photon", true, 6, 123, 7
			d.Name = "kitchen"
		}, map[string]any{
			"identifiers": []any{"spark2mqtt_" + testID}, "name": "kitchen", "serial_number": testID,
			"manufacturer": "Particle", "model": "Photon", "model_id": "product 123", "sw_version": "7"}},
		{"p1", func(d *Device) { d.Kind, d.HasPlatform, d.PlatformID = "photon", true, 8 }, map[string]any{
			"identifiers": []any{"spark2mqtt_" + testID}, "name": testID, "serial_number": testID,
			"manufacturer": "Particle", "model": "P1"}},
		{"other platform", func(d *Device) { d.Kind, d.HasPlatform, d.PlatformID = "photon", true, 10 }, map[string]any{
			"identifiers": []any{"spark2mqtt_" + testID}, "name": testID, "serial_number": testID,
			"manufacturer": "Particle", "model": "platform 10"}},
		{"photon without platform", func(d *Device) { d.Kind = "photon" }, map[string]any{
			"identifiers": []any{"spark2mqtt_" + testID}, "name": testID, "serial_number": testID,
			"manufacturer": "Particle", "model": "Photon"}},
		{"never connected", func(d *Device) { d.Kind, d.HasHello = "", false }, map[string]any{
			"identifiers": []any{"spark2mqtt_" + testID}, "name": testID, "serial_number": testID,
			"manufacturer": "Particle"}},
		{"configured name and area", func(d *Device) {
			d.Name = "heater"
			d.Config = &DeviceConfig{Name: "Water heater", SuggestedArea: "Basement"}
		}, map[string]any{
			"identifiers": []any{"spark2mqtt_" + testID}, "name": "Water heater", "serial_number": testID,
			"manufacturer": "Spark", "model": "Core", "suggested_area": "Basement"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := genericCore()
			tc.edit(&d)
			disc, _ := build(t, d)
			var root map[string]any
			if err := json.Unmarshal(disc.Payload(), &root); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, root["device"]); d != "" {
				t.Errorf("device (-want +got):\n%s", d)
			}
			checkPayload(t, disc.Payload(), "spark")
		})
	}
}

// TestUniqueIDsStable: renaming the device (its name and topic level) or an
// entity keeps every unique id and component id.
func TestUniqueIDsStable(t *testing.T) {
	uids := func(d Device) map[string]string {
		disc, _ := build(t, d)
		out := map[string]string{}
		for id, c := range components(t, disc.Payload()) {
			out[id] = c["unique_id"].(string)
		}
		return out
	}
	a := genericCore()
	a.Config = &DeviceConfig{Entities: []Entity{{Key: "power", Platform: Switch, Function: "heater", PayloadOn: "on", PayloadOff: "off", Name: "Heater"}}}
	b := genericCore()
	b.Name, b.Topic = "boiler", "boiler"
	b.Config = &DeviceConfig{Name: "Boiler room", Entities: []Entity{{Key: "power", Platform: Switch, Function: "heater", PayloadOn: "on", PayloadOff: "off", Name: "Immersion"}}}
	ua, ub := uids(a), uids(b)
	if d := cmp.Diff(ua, ub); d != "" {
		t.Errorf("unique ids changed with the names (-before +after):\n%s", d)
	}
	for id, u := range ua {
		if !strings.HasPrefix(u, "spark2mqtt_"+testID+"_") || !strings.HasSuffix(u, id) {
			t.Errorf("unique id %q of %s: want spark2mqtt_<device id>_<component id>", u, id)
		}
	}
}

// TestComponentIDs: distinct names give distinct ids in [A-Za-z0-9_-].
func TestComponentIDs(t *testing.T) {
	names := []string{"temp", "Temp", "t_1", "a-b", "a b", "ä", "-61", "x.y", "_"}
	seen := map[string]string{}
	for _, n := range names {
		id := componentID("var", n)
		if other, dup := seen[id]; dup {
			t.Errorf("%q and %q both give %q", n, other, id)
		}
		seen[id] = n
	}
	if got := componentID("var", "temp"); got != "var_temp" {
		t.Errorf("componentID(temp) = %q", got)
	}
	if got := componentID("var", "a-b"); got != "var_-612d62" {
		t.Errorf("componentID(a-b) = %q", got)
	}
	d := genericCore()
	d.Variables = map[string]msg.VarType{}
	for _, n := range names {
		d.Variables[n] = msg.VarInt
	}
	disc, warns := build(t, d)
	if len(warns) != 0 {
		t.Errorf("warnings %v", warns)
	}
	checkPayload(t, disc.Payload(), "spark")
}

// TestDeclaredMissing: an entity naming a function or variable the device
// lacks is a warning naming it, and is not published; the names it claims
// get no default entity either.
func TestDeclaredMissing(t *testing.T) {
	d := genericCore()
	d.Config = &DeviceConfig{Entities: []Entity{
		{Key: "boiler", Line: 12, Platform: WaterHeater, PowerFunction: "heatr", CurrentTemperatureVariable: "temp", PayloadOn: "on", PayloadOff: "off", OnMode: "electric"},
		{Key: "level", Line: 20, Platform: Sensor, Variable: "level"},
		{Key: "ok", Line: 30, Platform: Sensor, Variable: "state"},
	}}
	disc, warns := build(t, d)
	want := []Warning{
		{Entity: "boiler", Line: 12, Msg: `the device has no function "heatr": not published`},
		{Entity: "level", Line: 20, Msg: `the device has no variable "level": not published`},
	}
	if d := cmp.Diff(want, warns); d != "" {
		t.Errorf("warnings (-want +got):\n%s", d)
	}
	if got := warns[0].String(); got != `entity boiler (line 12): the device has no function "heatr": not published` {
		t.Errorf("String() = %q", got)
	}
	var ids []string
	for id := range disc.Components {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	wantIDs := []string{"ent_ok", "fn_heater", "sys_connection", "sys_find", "sys_find_stop", "var_label", "var_ready"}
	if d := cmp.Diff(wantIDs, ids); d != "" {
		t.Errorf("components (-want +got): temp and state are claimed, heater is not:\n%s", d)
	}
	checkPayload(t, disc.Payload(), "spark")
}

func TestDeclaredWarnings(t *testing.T) {
	for _, tc := range []struct {
		name string
		e    Entity
		vars map[string]msg.VarType
		want string
	}{
		{"payload over the core's limit", Entity{Key: "x", Platform: Switch, Function: "heater", PayloadOn: strings.Repeat("a", 64), PayloadOff: "off"}, nil,
			"payload_on is 64 bytes, over the device's argument limit of 63: not published"},
		{"string state needs values", Entity{Key: "x", Platform: Switch, Function: "heater", PayloadOn: "on", PayloadOff: "off", StateVariable: "label"}, nil,
			`variable "label" is a string: give its values for on and off: not published`},
		{"binary sensor of a string", Entity{Key: "x", Platform: BinarySensor, Variable: "label"}, nil,
			`variable "label" is a string: give its values for on and off: not published`},
		{"function and variable missing", Entity{Key: "x", Platform: Number, Function: "set", StateVariable: "lvl"}, nil,
			`the device has no function "set" and no variable "lvl": not published`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := genericCore()
			d.Config = &DeviceConfig{Entities: []Entity{tc.e}}
			disc, warns := build(t, d)
			if len(warns) != 1 || warns[0].Msg != tc.want {
				t.Fatalf("warnings %v, want %q", warns, tc.want)
			}
			if _, ok := disc.Components["ent_x"]; ok {
				t.Error("entity published despite the warning")
			}
			checkPayload(t, disc.Payload(), "spark")
		})
	}
}

// TestDeclaredPlatforms builds one entity of each platform and checks the
// options that matter to Home Assistant.
func TestDeclaredPlatforms(t *testing.T) {
	d := genericCore()
	d.Functions = []string{"heater", "set", "cmd", "show"}
	d.Config = &DeviceConfig{NoDefaults: true, Entities: []Entity{
		{Key: "sw_result", Platform: Switch, Function: "heater", PayloadOn: "on", PayloadOff: "off"},
		{Key: "sw_bool", Platform: Switch, Function: "heater", PayloadOn: "on", PayloadOff: "off", StateVariable: "ready"},
		{Key: "num", Platform: Number, Function: "set", StateVariable: "state", Min: ptr(0.0), Max: ptr(10.0), Step: ptr(0.5), Mode: "box", UnitOfMeasurement: "%"},
		{Key: "num_result", Platform: Number, Function: "set"},
		{Key: "btn", Platform: Button, Function: "cmd", PayloadPress: "reboot", DeviceClass: "restart"},
		{Key: "txt", Platform: Text, Function: "show", Min: ptr(1.0), Max: ptr(200.0), Mode: "password", Pattern: "[a-z]+"},
		{Key: "bin", Platform: BinarySensor, Variable: "state", PayloadOn: "2", PayloadOff: "3", DeviceClass: "heat"},
		{Key: "str", Platform: Sensor, Variable: "label", Icon: "mdi:tag"},
		{Key: "wh", Platform: WaterHeater, PowerFunction: "heater", PayloadOn: `o"n`, PayloadOff: "off", OnMode: "eco",
			TemperatureFunction: "set", MinTemp: ptr(30.0), MaxTemp: ptr(60.0), TemperatureUnit: "C", NameNull: true},
	}}
	disc, warns := build(t, d)
	if len(warns) != 0 {
		t.Fatalf("warnings %v", warns)
	}
	p := disc.Payload()
	checkPayload(t, p, "spark")
	golden(t, "platforms", p)
	c := components(t, p)
	for _, tc := range []struct {
		cid, key string
		want     any
	}{
		{"ent_sw_result", "state_topic", "spark/" + testID + "/fn/heater/result"},
		{"ent_sw_result", "value_template", resultArgTemplate},
		{"ent_sw_bool", "state_on", "true"},
		{"ent_sw_bool", "state_off", "false"},
		{"ent_num", "state_topic", "spark/" + testID + "/var/state"},
		{"ent_num", "step", 0.5},
		{"ent_num_result", "value_template", resultArgTemplate},
		{"ent_btn", "payload_press", "reboot"},
		{"ent_txt", "max", 63.0}, // the Core's limit wins over 200
		{"ent_txt", "min", 1.0},
		{"ent_bin", "payload_on", "2"},
		{"ent_str", "value_template", "{{ value[:255] }}"},
		{"ent_wh", "name", nil},
		{"ent_wh", "mode_command_template", `{{ "off" if value == 'off' else "o\"n" }}`},
		{"ent_wh", "temperature_state_template", resultArgTemplate},
		{"ent_wh", "modes", []any{"off", "eco"}},
	} {
		if got := c[tc.cid][tc.key]; !cmp.Equal(got, tc.want) {
			t.Errorf("%s %s = %#v, want %#v", tc.cid, tc.key, got, tc.want)
		}
	}
}

// TestConnectionAvailability: the connection entity's availability is the
// bridge's state only; every other entity inherits the shared list, which
// needs both the bridge and the device online.
func TestConnectionAvailability(t *testing.T) {
	disc, _ := build(t, genericCore())
	var root map[string]any
	if err := json.Unmarshal(disc.Payload(), &root); err != nil {
		t.Fatal(err)
	}
	shared := []any{
		map[string]any{"topic": "spark/bridge/state", "payload_available": "online", "payload_not_available": "offline"},
		map[string]any{"topic": "spark/" + testID + "/availability", "payload_available": "online", "payload_not_available": "offline"},
	}
	if d := cmp.Diff(shared, root["availability"]); d != "" || root["availability_mode"] != "all" {
		t.Errorf("shared availability (-want +got):\n%s, mode %v", d, root["availability_mode"])
	}
	for id, c := range components(t, disc.Payload()) {
		_, own := c["availability"]
		if own != (id == "sys_connection") {
			t.Errorf("%s: own availability = %v", id, own)
		}
	}
	conn := components(t, disc.Payload())["sys_connection"]
	if d := cmp.Diff(shared[:1], conn["availability"]); d != "" {
		t.Errorf("connection availability (-want +got):\n%s", d)
	}
}

func TestDisabledAndNoDefaults(t *testing.T) {
	d := genericCore()
	d.Config = &DeviceConfig{Disabled: true}
	disc, _ := build(t, d)
	if len(disc.Payload()) != 0 || len(disc.Components) != 0 {
		t.Errorf("disabled device: payload %q, components %v; want the empty removal", disc.Payload(), disc.Components)
	}
	if _, ok := disc.Removing(map[string]Platform{"var_temp": Sensor}); ok {
		t.Error("Removing on a removed device")
	}
	d.Config = &DeviceConfig{NoDefaults: true}
	disc, _ = build(t, d)
	if d := cmp.Diff(map[string]Platform{"sys_connection": BinarySensor, "sys_find": Button, "sys_find_stop": Button}, disc.Components); d != "" {
		t.Errorf("defaults: false (-want +got):\n%s", d)
	}
}

// TestRemoving: a component gone from the description is published once
// with only its platform, then left out (Home Assistant's device discovery
// documentation).
func TestRemoving(t *testing.T) {
	before, _ := build(t, genericCore())
	d := genericCore()
	delete(d.Variables, "ready")
	d.Functions = nil
	after, _ := build(t, d)
	p, ok := after.Removing(before.Components)
	if !ok {
		t.Fatal("nothing to remove")
	}
	checkPayload(t, p, "spark")
	c := components(t, p)
	if d := cmp.Diff(map[string]any{"platform": "binary_sensor"}, c["var_ready"]); d != "" {
		t.Errorf("removed var_ready (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]any{"platform": "text"}, c["fn_heater"]); d != "" {
		t.Errorf("removed fn_heater (-want +got):\n%s", d)
	}
	if _, ok := c["var_temp"]["state_topic"]; !ok {
		t.Error("the kept components lost their config")
	}
	final := components(t, after.Payload())
	if _, ok := final["var_ready"]; ok {
		t.Error("the final payload still has the removed component")
	}
	if _, ok := after.Removing(after.Components); ok {
		t.Error("Removing with nothing gone")
	}
	// The payload's own components are not changed by Removing.
	if _, ok := components(t, after.Payload())["fn_heater"]; ok {
		t.Error("Removing changed the Discovery")
	}
}

// TestBadDevice: ids, topic levels and prefixes that cannot be used are
// refused with the reason.
func TestBadDevice(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Options, *Device)
		want string
	}{
		{"short id", func(o *Options, d *Device) { d.ID = "0123" }, `id "0123": want 24 lower-case hex digits`},
		{"upper id", func(o *Options, d *Device) { d.ID = strings.ToUpper(testID) }, "want 24 lower-case hex digits"},
		{"non-hex id", func(o *Options, d *Device) { d.ID = "0123456789abcdef0123456g" }, "want 24 lower-case hex digits"},
		{"topic with slash", func(o *Options, d *Device) { d.Topic = "a/b" }, `topic level: "a/b" contains one of + # / NUL`},
		{"topic with plus", func(o *Options, d *Device) { d.Topic = "a+" }, "contains one of + # / NUL"},
		{"empty topic", func(o *Options, d *Device) { d.Topic = "" }, "topic level: empty"},
		{"name not UTF-8", func(o *Options, d *Device) { d.Name = "\xff" }, "is not UTF-8 text"},
		{"prefix wildcard", func(o *Options, d *Device) { o.Prefix = "home/#" }, `discovery prefix "home/#"`},
		{"empty base", func(o *Options, d *Device) { o.BaseTopic = "" }, "base topic is empty"},
		{"base empty level", func(o *Options, d *Device) { o.BaseTopic = "a//b" }, `base topic "a//b": empty`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, d := testOptions, genericCore()
			tc.edit(&o, &d)
			_, _, err := Build(o, d)
			if !errors.Is(err, ErrDevice) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrDevice with %q", err, tc.want)
			}
		})
	}
}

// TestInvalidNamesFromDevice: a function or variable the bridge cannot
// address gets no entity and a warning.
func TestInvalidNamesFromDevice(t *testing.T) {
	d := genericCore()
	d.Functions = []string{"ok", "a/b"}
	d.Variables = map[string]msg.VarType{"x#": msg.VarInt}
	disc, warns := build(t, d)
	if len(warns) != 2 {
		t.Errorf("warnings %v, want 2", warns)
	}
	if _, ok := disc.Components["fn_ok"]; !ok {
		t.Error("fn_ok missing")
	}
	checkPayload(t, disc.Payload(), "spark")
}

func TestOptionsDefaults(t *testing.T) {
	disc, _, err := Build(Options{BaseTopic: "spark"}, genericCore())
	if err != nil {
		t.Fatal(err)
	}
	var root struct {
		Origin map[string]any `json:"origin"`
	}
	if err := json.Unmarshal(disc.Payload(), &root); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[string]any{"name": "spark2mqtt", "support_url": DefaultSupportURL}, root.Origin); d != "" {
		t.Errorf("origin (-want +got):\n%s", d)
	}
	if disc.Topic != "homeassistant/device/"+testID+"/config" {
		t.Errorf("topic %q", disc.Topic)
	}
}

func TestJinjaString(t *testing.T) {
	for in, want := range map[string]string{
		"on":      `"on"`,
		`a"b`:     `"a\"b"`,
		`a\b`:     `"a\\b"`,
		"<&>":     `"<&>"`,
		"}} {% x": `"}} {% x"`,
		"\n":      `"\n"`,
	} {
		if got := jinjaString(in); got != want {
			t.Errorf("jinjaString(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestPayloadSize: the largest description a device can give (msg.MaxNames
// names of 64 bytes, each needing the hex form of its component id) gives
// a payload well under the embedded broker's default packet limit (256 KiB).
func TestPayloadSize(t *testing.T) {
	d := genericCore()
	d.Functions = nil
	d.Variables = map[string]msg.VarType{}
	for i := range msg.MaxNames {
		name := fmt.Sprintf("%03d-%s", i, strings.Repeat("é", 30)) // 64 bytes, not [A-Za-z0-9_]
		if i%2 == 0 {
			d.Functions = append(d.Functions, name)
		} else {
			d.Variables[name] = msg.VarString
		}
	}
	disc, warns := build(t, d)
	if len(warns) != 0 {
		t.Fatalf("warnings %v", warns)
	}
	if n := len(disc.Payload()); n > 192<<10 {
		t.Errorf("payload of %d bytes for %d names", n, msg.MaxNames)
	} else {
		t.Logf("payload of %d bytes for %d names of 64 bytes", n, msg.MaxNames)
	}
	checkPayload(t, disc.Payload(), "spark")
}
