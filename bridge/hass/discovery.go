package hass

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// Defaults of Options.
const (
	DefaultPrefix     = "homeassistant"
	DefaultOriginName = "spark2mqtt"
	DefaultSupportURL = "https://github.com/spark2mqtt/spark2mqtt"
)

// Payloads the bridge publishes (bridge/doc.go) that discovery refers to.
const (
	payloadOnline  = "online"
	payloadOffline = "offline"
	boolTrue       = "true" // msg.Value.Text of a bool
	boolFalse      = "false"
)

// haMaxState is the longest state Home Assistant stores (and the longest
// value of a text entity).
const haMaxState = 255

// coreMaxArg is the Core's argument limit (spark-protocol.md §6).
const coreMaxArg = 63

// Options are the settings shared by every device's discovery.
type Options struct {
	// Prefix is Home Assistant's discovery prefix ("homeassistant").
	Prefix string
	// BaseTopic is the bridge's base topic ("spark").
	BaseTopic string
	// Origin describes spark2mqtt in the `origin` mapping. Zero fields
	// get DefaultOriginName and DefaultSupportURL; SWVersion may stay "".
	Origin Origin
}

// Origin is Home Assistant's `origin` mapping of a discovery message.
type Origin struct {
	Name, SWVersion, SupportURL string
}

// Device is what discovery needs to know about one device. The bridge
// fills it from its device state and description.
type Device struct {
	// ID is the device id, 24 lower-case hex digits.
	ID string
	// Topic is the device's topic level D (its name, else its id).
	Topic string
	// Name is the device's name in the devices file, "" for none.
	Name string
	// Kind is "core" or "photon" (the handshake kind), "" when unknown.
	Kind string
	// PlatformID is the Hello's platform id, valid when HasPlatform.
	PlatformID  uint16
	HasPlatform bool
	// ProductID and ProductVersion are the Hello's product fields, valid
	// when HasHello.
	ProductID, ProductVersion uint16
	HasHello                  bool
	// MaxArg is the device's argument limit in bytes; 0 means unknown
	// (63 for a Core, else Home Assistant's 255 for text entities).
	MaxArg int
	// Functions and Variables are the device's description.
	Functions []string
	Variables map[string]msg.VarType
	// Config is the device's `homeassistant:` section; nil for none.
	Config *DeviceConfig
}

// Warning reports a declared entity that was not published, or a function
// or variable that got no entity. Build returns them; the bridge logs them.
type Warning struct {
	// Entity is the key of the declared entity, "" for a default one.
	Entity string
	// Line is the entity's line in the devices file, 0 for none.
	Line int
	// Msg says what and why.
	Msg string
}

// String is the warning for a log line: "entity KEY (line N): MSG".
func (w Warning) String() string {
	if w.Entity == "" {
		return w.Msg
	}
	return fmt.Sprintf("entity %s (line %d): %s", w.Entity, w.Line, w.Msg)
}

// Discovery is one device's discovery message.
type Discovery struct {
	// Topic is the config topic, <prefix>/device/<id>/config.
	Topic string
	// Components maps the component ids of the message to their platforms;
	// empty when the device is not announced (Payload is then empty: the
	// removal).
	Components map[string]Platform

	root map[string]any // nil: not announced
}

// Payload returns the retained payload to publish on Topic: the JSON
// config, or an empty payload (the removal of the device) when the device
// is not announced.
func (d Discovery) Payload() []byte {
	if d.root == nil {
		return []byte{}
	}
	return marshal(d.root)
}

// Removing returns the payload that removes from Home Assistant the
// components of prev (a former Discovery's Components) that d lacks: d's
// config with each of them reduced to its platform, as Home Assistant's
// device discovery documentation requires; publish it, then Payload. ok is
// false when nothing is to be removed, or when d is not announced (its
// empty Payload removes everything).
func (d Discovery) Removing(prev map[string]Platform) (payload []byte, ok bool) {
	if d.root == nil {
		return nil, false
	}
	cmps := maps.Clone(d.root["components"].(map[string]any))
	for id, p := range prev {
		if _, still := d.Components[id]; !still {
			cmps[id] = map[string]any{"platform": string(p)}
			ok = true
		}
	}
	if !ok {
		return nil, false
	}
	root := maps.Clone(d.root)
	root["components"] = cmps
	return marshal(root), true
}

func marshal(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only maps of strings, numbers, bools and slices get here.
		panic("hass: marshal discovery: " + err.Error())
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// Identifier is the identifier of device id in Home Assistant's device
// registry (the `identifiers` of the `device` mapping): the bridge
// recognises its own retained configs by it.
func Identifier(id string) string { return "spark2mqtt_" + id }

// ConfigTopic returns the device discovery topic of device id.
func ConfigTopic(prefix, id string) string { return prefix + "/device/" + id + "/config" }

// Build returns the discovery message of device d, and warnings for the
// declared entities it could not publish (a function or variable the
// device does not have, a payload over the device's limit …). It fails
// with ErrDevice when d's id or topic level, or o's prefix or base topic,
// cannot be used; the error says why.
func Build(o Options, d Device) (Discovery, []Warning, error) {
	o = o.withDefaults()
	if err := checkDevice(o, d); err != nil {
		return Discovery{}, nil, err
	}
	disc := Discovery{Topic: ConfigTopic(o.Prefix, d.ID), Components: map[string]Platform{}}
	cfg := d.Config
	if cfg == nil {
		cfg = &DeviceConfig{}
	}
	if cfg.Disabled {
		return disc, nil, nil
	}
	b := builder{o: o, d: d, t: topics{base: o.BaseTopic, d: d.Topic}, cmps: map[string]any{}}
	b.declared(cfg)
	if !cfg.NoDefaults {
		b.defaults()
	}
	b.system()
	for id, c := range b.cmps {
		disc.Components[id] = Platform(c.(map[string]any)["platform"].(string))
	}
	disc.root = map[string]any{
		"device": b.device(cfg),
		"origin": map[string]any{
			"name": o.Origin.Name, "sw_version": o.Origin.SWVersion, "support_url": o.Origin.SupportURL,
		},
		"availability": []any{
			availability(o.BaseTopic + "/bridge/state"),
			availability(b.t.availability()),
		},
		"availability_mode": "all",
		"qos":               1,
		"components":        b.cmps,
	}
	if o.Origin.SWVersion == "" {
		delete(disc.root["origin"].(map[string]any), "sw_version")
	}
	return disc, b.warnings, nil
}

func (o Options) withDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Origin.Name == "" {
		o.Origin.Name = DefaultOriginName
	}
	if o.Origin.SupportURL == "" {
		o.Origin.SupportURL = DefaultSupportURL
	}
	return o
}

func availability(topic string) map[string]any {
	return map[string]any{"topic": topic, "payload_available": payloadOnline, "payload_not_available": payloadOffline}
}

// checkDevice refuses what cannot be a discovery topic, an MQTT topic or
// a unique id.
func checkDevice(o Options, d Device) error {
	if len(d.ID) != 24 || strings.ToLower(d.ID) != d.ID {
		return fmt.Errorf("%w: id %q: want 24 lower-case hex digits", ErrDevice, d.ID)
	}
	if _, err := hex.DecodeString(d.ID); err != nil {
		return fmt.Errorf("%w: id %q: want 24 lower-case hex digits", ErrDevice, d.ID)
	}
	if err := validLevel(d.Topic); err != nil {
		return fmt.Errorf("%w: device %s: topic level: %w", ErrDevice, d.ID, err)
	}
	if !utf8.ValidString(d.Name) || len(d.Name) > MaxText {
		return fmt.Errorf("%w: device %s: name %q is not UTF-8 text of at most %d bytes", ErrDevice, d.ID, d.Name, MaxText)
	}
	for _, t := range []struct{ what, s string }{{"discovery prefix", o.Prefix}, {"base topic", o.BaseTopic}} {
		if t.s == "" {
			return fmt.Errorf("%w: %s is empty", ErrDevice, t.what)
		}
		for lvl := range strings.SplitSeq(t.s, "/") {
			if err := validLevel(lvl); err != nil {
				return fmt.Errorf("%w: %s %q: %w", ErrDevice, t.what, t.s, err)
			}
		}
	}
	return nil
}

// validLevel checks one MQTT topic level: not empty, UTF-8, no + # / NUL.
func validLevel(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty")
	case !utf8.ValidString(s):
		return fmt.Errorf("%q is not UTF-8", s)
	case strings.ContainsAny(s, "+#/\x00"):
		return fmt.Errorf("%q contains one of + # / NUL", s)
	}
	return nil
}

// topics builds the bridge's topics of one device (bridge/doc.go).
type topics struct{ base, d string }

func (t topics) availability() string      { return t.base + "/" + t.d + "/availability" }
func (t topics) variable(v string) string  { return t.base + "/" + t.d + "/var/" + v }
func (t topics) function(fn string) string { return t.base + "/" + t.d + "/fn/" + fn }
func (t topics) result(fn string) string   { return t.function(fn) + "/result" }
func (t topics) signal() string            { return t.base + "/" + t.d + "/signal" }

// builder accumulates one device's components.
type builder struct {
	o        Options
	d        Device
	t        topics
	cmps     map[string]any
	warnings []Warning
	claimed  map[string]bool // "fn/NAME", "var/NAME" used by declared entities
}

// Component ids. Defaults are "fn_NAME" and "var_NAME", declared entities
// "ent_KEY", the system ones "sys_…": the part before the first '_' keeps
// the classes apart. NAME is kept when it is made of [A-Za-z0-9_] and
// otherwise hex-encoded behind '-' (a character plain names never keep),
// so distinct names always give distinct ids that Home Assistant accepts.
func componentID(class, name string) string {
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
			return class + "_-" + hex.EncodeToString([]byte(name))
		}
	}
	return class + "_" + name
}

// uniqueID is the entity's unique id: the device id and the component id,
// so it survives renames of the device and of the entity.
func (b *builder) uniqueID(cid string) string { return "spark2mqtt_" + b.d.ID + "_" + cid }

func (b *builder) add(cid string, p Platform, c map[string]any) {
	c["platform"] = string(p)
	c["unique_id"] = b.uniqueID(cid)
	b.cmps[cid] = c
}

func (b *builder) warn(e *Entity, format string, args ...any) {
	w := Warning{Msg: fmt.Sprintf(format, args...)}
	if e != nil {
		w.Entity, w.Line = e.Key, e.Line
	}
	b.warnings = append(b.warnings, w)
}

func (b *builder) hasFn(name string) bool { return slices.Contains(b.d.Functions, name) }

func (b *builder) varType(name string) (msg.VarType, bool) {
	t, ok := b.d.Variables[name]
	return t, ok
}

// maxArg is the device's argument limit.
func (b *builder) maxArg() int {
	switch {
	case b.d.MaxArg > 0:
		return b.d.MaxArg
	case b.d.Kind == "core":
		return coreMaxArg
	}
	return MaxArg
}

// device builds the `device` mapping.
func (b *builder) device(cfg *DeviceConfig) map[string]any {
	dev := map[string]any{
		"identifiers":   []any{Identifier(b.d.ID)},
		"serial_number": b.d.ID,
	}
	switch {
	case cfg.Name != "":
		dev["name"] = cfg.Name
	case b.d.Name != "":
		dev["name"] = b.d.Name
	default:
		dev["name"] = b.d.ID
	}
	if cfg.SuggestedArea != "" {
		dev["suggested_area"] = cfg.SuggestedArea
	}
	platform, known := b.d.PlatformID, b.d.HasPlatform
	if !known && b.d.Kind == "core" {
		platform, known = 0, true
	}
	dev["manufacturer"] = "Particle"
	switch {
	case known && platform == 0:
		dev["manufacturer"], dev["model"] = "Spark", "Core"
	case known && platform == 6:
		dev["model"] = "Photon"
	case known && platform == 8:
		dev["model"] = "P1"
	case known:
		dev["model"] = "platform " + strconv.Itoa(int(platform))
	case b.d.Kind == "photon":
		dev["model"] = "Photon"
	}
	// spark-protocol.md §4.4 Hello: product id 0xFFFF means no product, and
	// then the product firmware version says nothing.
	if b.d.HasHello && b.d.ProductID != 0xFFFF {
		dev["model_id"] = "product " + strconv.Itoa(int(b.d.ProductID))
		dev["sw_version"] = strconv.Itoa(int(b.d.ProductVersion))
	}
	return dev
}

// system adds the entities every device has: its connection and the find
// buttons.
func (b *builder) system() {
	b.add("sys_connection", BinarySensor, map[string]any{
		"name":            "Connection",
		"device_class":    "connectivity",
		"entity_category": "diagnostic",
		"state_topic":     b.t.availability(),
		"payload_on":      payloadOnline,
		"payload_off":     payloadOffline,
		// Its own availability overrides the shared one (Home Assistant's
		// device discovery: shared options can be overridden per
		// component): only the bridge's state, so it shows "disconnected",
		// not "unavailable", while the device is away.
		"availability":      []any{availability(b.o.BaseTopic + "/bridge/state")},
		"availability_mode": "all",
	})
	b.add("sys_find", Button, map[string]any{
		"name":            "Find",
		"device_class":    "identify",
		"entity_category": "diagnostic",
		"command_topic":   b.t.signal(),
		"payload_press":   "on",
	})
	b.add("sys_find_stop", Button, map[string]any{
		"name":            "Stop finding",
		"entity_category": "diagnostic",
		"command_topic":   b.t.signal(),
		"payload_press":   "off",
	})
}

// defaults adds an entity for every function and variable no declared
// entity uses.
func (b *builder) defaults() {
	for _, fn := range slices.Sorted(slices.Values(b.d.Functions)) {
		if b.claimed["fn/"+fn] {
			continue
		}
		if err := validDeviceName(fn); err != nil {
			b.warn(nil, "function %q gets no entity: %v", fn, err)
			continue
		}
		b.add(componentID("fn", fn), Text, map[string]any{
			"name":               fn,
			"command_topic":      b.t.function(fn),
			"state_topic":        b.t.result(fn),
			"value_template":     "{{ value_json.arg }}",
			"max":                min(b.maxArg(), haMaxState),
			"enabled_by_default": false,
		})
	}
	for _, v := range slices.Sorted(maps.Keys(b.d.Variables)) {
		if b.claimed["var/"+v] {
			continue
		}
		if err := validDeviceName(v); err != nil {
			b.warn(nil, "variable %q gets no entity: %v", v, err)
			continue
		}
		cid := componentID("var", v)
		switch b.d.Variables[v] {
		case msg.VarInt, msg.VarDouble:
			b.add(cid, Sensor, map[string]any{
				"name": v, "state_topic": b.t.variable(v), "state_class": "measurement",
			})
		case msg.VarBool:
			b.add(cid, BinarySensor, map[string]any{
				"name": v, "state_topic": b.t.variable(v), "payload_on": boolTrue, "payload_off": boolFalse,
			})
		default: // string, and types this bridge publishes as raw text
			b.add(cid, Sensor, map[string]any{
				"name": v, "state_topic": b.t.variable(v),
				"value_template": fmt.Sprintf("{{ value[:%d] }}", haMaxState),
			})
		}
	}
}

// declared adds the entities of the devices file whose functions and
// variables the device has; the others become warnings.
func (b *builder) declared(cfg *DeviceConfig) {
	b.claimed = map[string]bool{}
	for i := range cfg.Entities {
		e := &cfg.Entities[i]
		fns, vars := e.names()
		// Claim the names even when the entity is not published, so a
		// typo in one key does not bring back the default entities.
		for _, f := range fns {
			b.claimed["fn/"+f] = true
		}
		for _, v := range vars {
			b.claimed["var/"+v] = true
		}
		var missing []string
		for _, f := range fns {
			if !b.hasFn(f) {
				missing = append(missing, "function "+strconv.Quote(f))
			}
		}
		for _, v := range vars {
			if _, ok := b.varType(v); !ok {
				missing = append(missing, "variable "+strconv.Quote(v))
			}
		}
		if len(missing) > 0 {
			b.warn(e, "the device has no %s: not published", strings.Join(missing, " and no "))
			continue
		}
		if !b.argsFit(e) {
			continue
		}
		c := b.common(e)
		if c == nil {
			continue
		}
		b.add(componentID("ent", e.Key), e.Platform, c)
	}
}

// argsFit checks the arguments an entity sends against the device's limit.
func (b *builder) argsFit(e *Entity) bool {
	if e.Platform == BinarySensor { // its payloads are values, not arguments
		return true
	}
	for _, a := range []struct{ key, v string }{
		{"payload_on", e.PayloadOn}, {"payload_off", e.PayloadOff}, {"payload_press", e.PayloadPress},
	} {
		if len(a.v) > b.maxArg() {
			b.warn(e, "%s is %d bytes, over the device's argument limit of %d: not published", a.key, len(a.v), b.maxArg())
			return false
		}
	}
	return true
}

// onOff returns the values of variable v that mean on and off: the
// declared ones, else by its type.
func (b *builder) onOff(e *Entity, v, on, off string) (string, string, bool) {
	if on != "" || off != "" {
		return on, off, true
	}
	t, _ := b.varType(v)
	switch t {
	case msg.VarBool:
		return boolTrue, boolFalse, true
	case msg.VarInt, msg.VarDouble:
		return "1", "0", true
	}
	b.warn(e, "variable %q is a %v: give its values for on and off: not published", v, t)
	return "", "", false
}

// resultArgTemplate renders the argument of the last successful call from
// a fn/NAME/result message, and nothing for a queued call or an error
// (Home Assistant ignores an empty state for these platforms).
const resultArgTemplate = "{% if value_json.return_value is defined %}{{ value_json.arg }}{% endif %}"

// common builds the component of a declared entity; nil after a warning.
func (b *builder) common(e *Entity) map[string]any {
	c := map[string]any{}
	switch {
	case e.NameNull:
		c["name"] = nil
	case e.Name != "":
		c["name"] = e.Name
	default:
		c["name"] = e.Key
	}
	set := func(k, v string) {
		if v != "" {
			c[k] = v
		}
	}
	set("icon", e.Icon)
	set("entity_category", e.EntityCategory)
	set("device_class", e.DeviceClass)
	if e.EnabledByDefault != nil {
		c["enabled_by_default"] = *e.EnabledByDefault
	}
	setF := func(k string, f *float64) {
		if f != nil {
			c[k] = *f
		}
	}
	switch e.Platform {
	case Sensor:
		c["state_topic"] = b.t.variable(e.Variable)
		set("unit_of_measurement", e.UnitOfMeasurement)
		set("state_class", e.StateClass)
		if e.SuggestedDisplayPrecision != nil {
			c["suggested_display_precision"] = *e.SuggestedDisplayPrecision
		}
		if t, _ := b.varType(e.Variable); t == msg.VarString {
			c["value_template"] = fmt.Sprintf("{{ value[:%d] }}", haMaxState)
		}
	case BinarySensor:
		on, off, ok := b.onOff(e, e.Variable, e.PayloadOn, e.PayloadOff)
		if !ok {
			return nil
		}
		c["state_topic"] = b.t.variable(e.Variable)
		c["payload_on"], c["payload_off"] = on, off
	case Switch:
		c["command_topic"] = b.t.function(e.Function)
		c["payload_on"], c["payload_off"] = e.PayloadOn, e.PayloadOff
		if e.StateVariable != "" {
			on, off, ok := b.onOff(e, e.StateVariable, e.StateOn, e.StateOff)
			if !ok {
				return nil
			}
			c["state_topic"] = b.t.variable(e.StateVariable)
			c["state_on"], c["state_off"] = on, off
		} else {
			c["state_topic"] = b.t.result(e.Function)
			c["value_template"] = resultArgTemplate
		}
	case Number:
		c["command_topic"] = b.t.function(e.Function)
		setF("min", e.Min)
		setF("max", e.Max)
		setF("step", e.Step)
		set("mode", e.Mode)
		set("unit_of_measurement", e.UnitOfMeasurement)
		if e.StateVariable != "" {
			c["state_topic"] = b.t.variable(e.StateVariable)
		} else {
			c["state_topic"] = b.t.result(e.Function)
			c["value_template"] = resultArgTemplate
		}
	case Button:
		c["command_topic"] = b.t.function(e.Function)
		c["payload_press"] = e.PayloadPress
	case Text:
		c["command_topic"] = b.t.function(e.Function)
		c["state_topic"] = b.t.result(e.Function)
		c["value_template"] = "{{ value_json.arg }}"
		c["max"] = min(b.maxArg(), haMaxState)
		if e.Max != nil {
			c["max"] = min(int(*e.Max), b.maxArg())
		}
		if e.Min != nil {
			c["min"] = int(*e.Min)
		}
		set("pattern", e.Pattern)
		set("mode", e.Mode)
	case WaterHeater:
		if !b.waterHeater(e, c) {
			return nil
		}
	}
	return c
}

// waterHeater fills the water_heater options. Home Assistant's MQTT water
// heater has a power command (turn_on/turn_off actions) and operation
// modes; the device's function switches it, so the modes are "off" and
// e.OnMode, both sent to the same function, and the mode state comes from
// the state variable or the last result.
func (b *builder) waterHeater(e *Entity, c map[string]any) bool {
	fn := e.PowerFunction
	c["power_command_topic"] = b.t.function(fn)
	c["payload_on"], c["payload_off"] = e.PayloadOn, e.PayloadOff
	c["modes"] = []any{"off", e.OnMode}
	c["mode_command_topic"] = b.t.function(fn)
	c["mode_command_template"] = fmt.Sprintf("{{ %s if value == 'off' else %s }}", jinjaString(e.PayloadOff), jinjaString(e.PayloadOn))
	if e.StateVariable != "" {
		on, off, ok := b.onOff(e, e.StateVariable, e.StateOn, e.StateOff)
		if !ok {
			return false
		}
		c["mode_state_topic"] = b.t.variable(e.StateVariable)
		c["mode_state_template"] = fmt.Sprintf("{%% if value == %s %%}%s{%% elif value == %s %%}off{%% endif %%}",
			jinjaString(on), e.OnMode, jinjaString(off))
	} else {
		c["mode_state_topic"] = b.t.result(fn)
		c["mode_state_template"] = fmt.Sprintf("{%% if value_json.return_value is defined %%}{%% if value_json.arg == %s %%}%s{%% elif value_json.arg == %s %%}off{%% endif %%}{%% endif %%}",
			jinjaString(e.PayloadOn), e.OnMode, jinjaString(e.PayloadOff))
	}
	if e.CurrentTemperatureVariable != "" {
		c["current_temperature_topic"] = b.t.variable(e.CurrentTemperatureVariable)
	}
	if e.TemperatureFunction != "" {
		c["temperature_command_topic"] = b.t.function(e.TemperatureFunction)
		if e.TemperatureVariable != "" {
			c["temperature_state_topic"] = b.t.variable(e.TemperatureVariable)
		} else {
			c["temperature_state_topic"] = b.t.result(e.TemperatureFunction)
			c["temperature_state_template"] = resultArgTemplate
		}
	}
	if e.MinTemp != nil {
		c["min_temp"] = *e.MinTemp
	}
	if e.MaxTemp != nil {
		c["max_temp"] = *e.MaxTemp
	}
	if e.TemperatureUnit != "" {
		c["temperature_unit"] = e.TemperatureUnit
	}
	if e.Precision != nil {
		c["precision"] = *e.Precision
	}
	return true
}

// jinjaString quotes s as a Jinja string literal: JSON's escapes are a
// subset of the ones Jinja's lexer decodes (\" \\ \n \uXXXX), and a
// literal keeps "}}" or "%}" inside it from ending the tag.
func jinjaString(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return strings.TrimSuffix(b.String(), "\n")
}
