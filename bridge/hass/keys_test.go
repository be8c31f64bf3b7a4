package hass

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// The keys Home Assistant's MQTT documentation lists, transcribed from
// home-assistant.io source/_integrations/: mqtt.markdown ("Device discovery
// payload", the device, origin and availability options),
// sensor.mqtt.markdown, binary_sensor.mqtt.markdown, switch.mqtt.markdown,
// number.mqtt.markdown, button.mqtt.markdown, text.mqtt.markdown and
// water_heater.mqtt.markdown (the {% configuration %} blocks). Full names
// only: the discovery payloads never use the abbreviations. A key that is
// not here fails the test, so a typo in a payload cannot pass.

type keySpec struct {
	required []string
	allowed  []string // required ones included
}

// Home Assistant's device discovery: the shared options at the root, which
// must include device and origin ("These mappings are mandatory"), and the
// components. Shared: "The availability options", origin, command_topic,
// state_topic, qos, encoding.
var rootKeys = keySpec{
	required: []string{"device", "origin", "components"},
	allowed: []string{
		"device", "origin", "components",
		"availability", "availability_mode", "availability_template", "availability_topic",
		"payload_available", "payload_not_available",
		"command_topic", "state_topic", "qos", "encoding",
	},
}

// The device mapping ("At least one of identifiers or connections must be
// present").
var deviceKeys = keySpec{
	allowed: []string{
		"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
		"model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
	},
}

// The origin mapping: name (required), sw_version, support_url.
var originKeys = keySpec{
	required: []string{"name"},
	allowed:  []string{"name", "sw_version", "support_url"},
}

// One item of an availability list.
var availabilityKeys = keySpec{
	required: []string{"topic"},
	allowed:  []string{"topic", "payload_available", "payload_not_available", "value_template"},
}

// Component keys per platform, as each platform's page lists them. Every
// page says of platform "Only allowed and required in MQTT auto discovery
// device messages", and of unique_id "Required when used with device-based
// discovery". object_id (older pages) and default_entity_id (newer ones)
// are both listed.
var platformKeys = map[Platform]keySpec{
	Sensor: {
		required: []string{"platform", "unique_id", "state_topic"},
		allowed: []string{
			"availability", "availability_mode", "availability_template", "availability_topic",
			"default_entity_id", "device", "device_class", "enabled_by_default", "encoding", "entity_category",
			"entity_picture", "expire_after", "force_update", "icon", "json_attributes_template",
			"json_attributes_topic", "last_reset_value_template", "name", "object_id", "options",
			"payload_available", "payload_not_available", "platform", "suggested_display_precision", "qos",
			"state_class", "state_topic", "unique_id", "unit_of_measurement", "value_template",
		},
	},
	BinarySensor: {
		required: []string{"platform", "unique_id", "state_topic"},
		allowed: []string{
			"availability", "availability_mode", "availability_template", "availability_topic",
			"default_entity_id", "device", "device_class", "enabled_by_default", "encoding", "entity_category",
			"entity_picture", "expire_after", "force_update", "icon", "json_attributes_template",
			"json_attributes_topic", "name", "object_id", "off_delay", "payload_available",
			"payload_not_available", "payload_off", "payload_on", "platform", "qos", "state_topic",
			"unique_id", "value_template",
		},
	},
	Switch: {
		required: []string{"platform", "unique_id"},
		allowed: []string{
			"availability", "availability_mode", "availability_template", "availability_topic",
			"command_template", "command_topic", "default_entity_id", "device", "device_class",
			"enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
			"json_attributes_template", "json_attributes_topic", "name", "object_id", "optimistic",
			"payload_available", "payload_not_available", "payload_off", "payload_on", "platform", "qos",
			"retain", "state_off", "state_on", "state_topic", "unique_id", "value_template",
		},
	},
	Number: {
		required: []string{"platform", "unique_id", "command_topic"},
		allowed: []string{
			"availability", "availability_topic", "availability_mode", "command_template", "command_topic",
			"default_entity_id", "device", "device_class", "enabled_by_default", "encoding", "entity_category",
			"entity_picture", "icon", "json_attributes_template", "json_attributes_topic", "min", "max",
			"mode", "name", "object_id", "optimistic", "payload_reset", "platform", "qos", "retain",
			"state_topic", "step", "unique_id", "unit_of_measurement", "value_template",
		},
	},
	Button: {
		required: []string{"platform", "unique_id", "command_topic"},
		allowed: []string{
			"availability", "availability_mode", "availability_template", "availability_topic",
			"command_template", "command_topic", "default_entity_id", "device", "device_class",
			"enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
			"json_attributes_template", "json_attributes_topic", "name", "object_id", "payload_available",
			"payload_not_available", "payload_press", "platform", "qos", "retain", "unique_id",
		},
	},
	Text: {
		required: []string{"platform", "unique_id", "command_topic"},
		allowed: []string{
			"availability", "availability_topic", "availability_mode", "availability_template",
			"command_template", "command_topic", "default_entity_id", "device", "enabled_by_default",
			"encoding", "entity_category", "entity_picture", "json_attributes_template",
			"json_attributes_topic", "max", "min", "mode", "name", "object_id", "pattern", "platform",
			"qos", "retain", "state_topic", "unique_id", "value_template",
		},
	},
	WaterHeater: {
		required: []string{"platform", "unique_id"},
		allowed: []string{
			"availability", "availability_mode", "availability_template", "availability_topic",
			"current_temperature_template", "current_temperature_topic", "default_entity_id", "device",
			"enabled_by_default", "encoding", "entity_category", "entity_picture", "initial", "icon",
			"json_attributes_template", "json_attributes_topic", "max_temp", "min_temp",
			"mode_command_template", "mode_command_topic", "mode_state_template", "mode_state_topic",
			"modes", "name", "object_id", "optimistic", "payload_available", "payload_not_available",
			"payload_off", "payload_on", "platform", "power_command_template", "power_command_topic",
			"precision", "qos", "retain", "temperature_command_template", "temperature_command_topic",
			"temperature_state_template", "temperature_state_topic", "temperature_unit", "unique_id",
			"value_template",
		},
	},
}

// Values the pages restrict.
var (
	availabilityModes = []string{"all", "any", "latest"}
	entityCategories  = []string{"config", "diagnostic"}
	// water_heater.mqtt `modes`: "Needs to be a subset of the default values".
	haWaterHeaterModes = []string{"off", "eco", "electric", "gas", "heat_pump", "high_demand", "performance"}
)

// reporter is the part of testing.T the checks use.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// recorder is a reporter that remembers failures.
type recorder struct{ errs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func checkKeys(t reporter, where string, m map[string]any, spec keySpec) {
	t.Helper()
	for k := range m {
		if !slices.Contains(spec.allowed, k) {
			t.Errorf("%s: key %q is not one Home Assistant documents (allowed: %s)", where, k, strings.Join(spec.allowed, ", "))
		}
	}
	for _, k := range spec.required {
		if _, ok := m[k]; !ok {
			t.Errorf("%s: required key %q is missing", where, k)
		}
	}
}

// checkPayload checks a device discovery payload against the tables: every
// key documented, the required ones present, documented values, unique
// ids unique, topics under base.
func checkPayload(t *testing.T, payload []byte, base string) map[string]any {
	t.Helper()
	var root map[string]any
	if err := json.Unmarshal(payload, &root); err != nil {
		t.Fatalf("payload is not a JSON object: %v\n%s", err, payload)
	}
	checkKeys(t, "root", root, rootKeys)
	dev, _ := root["device"].(map[string]any)
	checkKeys(t, "device", dev, deviceKeys)
	if _, ok := dev["identifiers"]; !ok {
		if _, ok := dev["connections"]; !ok {
			t.Errorf("device: neither identifiers nor connections")
		}
	}
	o, _ := root["origin"].(map[string]any)
	checkKeys(t, "origin", o, originKeys)
	checkAvailability(t, "root", root, base)
	cmps, ok := root["components"].(map[string]any)
	if !ok || len(cmps) == 0 {
		t.Fatalf("components: missing or empty")
	}
	uids := map[string]string{}
	for id, raw := range cmps {
		c, ok := raw.(map[string]any)
		if !ok {
			t.Errorf("component %s: not an object", id)
			continue
		}
		for _, r := range id {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
				t.Errorf("component id %q: outside [a-zA-Z0-9_-]", id)
				break
			}
		}
		p, _ := c["platform"].(string)
		spec, ok := platformKeys[Platform(p)]
		if !ok {
			t.Errorf("component %s: platform %q is not one of the table's", id, p)
			continue
		}
		where := "component " + id + " (" + p + ")"
		if len(c) == 1 {
			// mqtt.markdown: "An empty config can be published as an update
			// to remove a single component from the device discovery. Note
			// that adding the platform (p) option is still required."
			continue
		}
		checkKeys(t, where, c, spec)
		uid, _ := c["unique_id"].(string)
		if other, dup := uids[uid]; dup {
			t.Errorf("%s: unique_id %q also used by %s", where, uid, other)
		}
		uids[uid] = id
		if ec, ok := c["entity_category"]; ok && !slices.Contains(entityCategories, ec.(string)) {
			t.Errorf("%s: entity_category %v", where, ec)
		}
		checkAvailability(t, where, c, base)
		for k, v := range c {
			if strings.HasSuffix(k, "_topic") {
				s, _ := v.(string)
				if !strings.HasPrefix(s, base+"/") || strings.ContainsAny(s, "+#") {
					t.Errorf("%s: %s %q is not a topic under %s", where, k, s, base)
				}
			}
		}
		if ms, ok := c["modes"].([]any); ok {
			for _, m := range ms {
				if !slices.Contains(haWaterHeaterModes, m.(string)) {
					t.Errorf("%s: mode %v is not one of Home Assistant's", where, m)
				}
			}
		}
	}
	return root
}

func checkAvailability(t *testing.T, where string, m map[string]any, base string) {
	t.Helper()
	if mode, ok := m["availability_mode"]; ok && !slices.Contains(availabilityModes, mode.(string)) {
		t.Errorf("%s: availability_mode %v", where, mode)
	}
	raw, ok := m["availability"]
	if !ok {
		return
	}
	if _, both := m["availability_topic"]; both {
		t.Errorf("%s: availability and availability_topic together", where)
	}
	list, ok := raw.([]any)
	if !ok || len(list) == 0 {
		t.Errorf("%s: availability is not a non-empty list", where)
		return
	}
	for _, a := range list {
		am, _ := a.(map[string]any)
		checkKeys(t, where+": availability", am, availabilityKeys)
		if s, _ := am["topic"].(string); !strings.HasPrefix(s, base+"/") {
			t.Errorf("%s: availability topic %q not under %s", where, s, base)
		}
	}
}

// TestKeyTableCatchesTypos proves the table is a guard: a payload with a
// misspelt key fails.
func TestKeyTableCatchesTypos(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spec  keySpec
		input map[string]any
		want  bool
	}{
		{"good sensor", platformKeys[Sensor], map[string]any{"platform": "sensor", "unique_id": "u", "state_topic": "s"}, true},
		{"typo", platformKeys[Sensor], map[string]any{"platform": "sensor", "unique_id": "u", "state_topic": "s", "unit_of_measurment": "C"}, false},
		{"missing required", platformKeys[Button], map[string]any{"platform": "button", "unique_id": "u"}, false},
		{"other platform's key", platformKeys[Sensor], map[string]any{"platform": "sensor", "unique_id": "u", "state_topic": "s", "command_topic": "c"}, false},
		{"abbreviation", rootKeys, map[string]any{"dev": map[string]any{}, "origin": 1, "components": 1, "device": 1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r recorder
			checkKeys(&r, tc.name, tc.input, tc.spec)
			got := len(r.errs) == 0
			if got != tc.want {
				t.Errorf("passes = %v, want %v", got, tc.want)
			}
		})
	}
}
