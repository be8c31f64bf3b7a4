package hass

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Platform is a Home Assistant MQTT platform, named as in Home Assistant's
// MQTT documentation.
type Platform string

// The platforms spark2mqtt publishes.
const (
	Sensor       Platform = "sensor"
	BinarySensor Platform = "binary_sensor"
	Switch       Platform = "switch"
	Number       Platform = "number"
	Button       Platform = "button"
	Text         Platform = "text"
	WaterHeater  Platform = "water_heater"
)

// Limits of a `homeassistant:` section.
const (
	// MaxEntities bounds the declared entities of one device.
	MaxEntities = 256
	// MaxKey bounds an entity key (it becomes part of a unique id).
	MaxKey = 64
	// MaxName bounds a function or variable name (the protocol's limit).
	MaxName = 64
	// MaxArg bounds an argument declared for a function (the largest any
	// device accepts, spark-protocol.md §6); the device's own limit is
	// checked by Build.
	MaxArg = 622
	// MaxText bounds free text: names, units, icons, patterns.
	MaxText = 255
)

// DeviceConfig is the `homeassistant:` section of one device in the
// devices file. The zero value (and a nil *DeviceConfig) means: discovery
// on, default entities on, nothing declared. Immutable after ParseNode.
//
//	homeassistant:
//	  discovery: true          # false: announce nothing for this device (and remove it)
//	  defaults: true           # false: no automatic entities for functions and variables
//	  name: Water heater       # the device's name in Home Assistant
//	  suggested_area: Basement
//	  entities:
//	    boiler:                # the entity's key: its identity in Home Assistant
//	      platform: water_heater
//	      power_function: heater
//	      current_temperature_variable: temp
type DeviceConfig struct {
	// Disabled is `discovery: false`: the device is not announced, and a
	// config announced before is removed.
	Disabled bool
	// NoDefaults is `defaults: false`: functions and variables get no
	// automatic entities (the connection and find entities stay).
	NoDefaults bool
	// Name is the device's name in Home Assistant; "" means the devices
	// file's name, else the id.
	Name string
	// SuggestedArea is Home Assistant's suggested_area; "" for none.
	SuggestedArea string
	// Entities are the declared entities, sorted by Key.
	Entities []Entity
	// Line is the line of the section, for messages.
	Line int
}

// Entity is one entity declared in the devices file. Which fields are used
// depends on Platform; the parser accepts only the keys of its platform
// (see the table in keys, and the README).
type Entity struct {
	// Key is the entity's key in the devices file: [A-Za-z0-9_], at most
	// MaxKey bytes. Its component id and unique id derive from it.
	Key string
	// Platform is the Home Assistant platform.
	Platform Platform
	// Line is the line of the key, for messages.
	Line int

	// Name is the entity's name; "" means Key. NameNull is `name: null`:
	// the entity takes the device's name.
	Name     string
	NameNull bool
	// Icon ("mdi:water-boiler"), EntityCategory ("config", "diagnostic"),
	// DeviceClass: Home Assistant's options of the same names; "" for none.
	Icon           string
	EntityCategory string
	DeviceClass    string
	// EnabledByDefault is Home Assistant's enabled_by_default; nil for its
	// default (enabled).
	EnabledByDefault *bool

	// Variable is the variable a sensor or binary_sensor shows.
	Variable string
	// Function is the function a switch, number, button or text calls;
	// PowerFunction the one a water_heater switches on and off.
	Function      string
	PowerFunction string

	// UnitOfMeasurement, StateClass and SuggestedDisplayPrecision: sensor
	// (and number: unit) options.
	UnitOfMeasurement         string
	StateClass                string
	SuggestedDisplayPrecision *int

	// PayloadOn and PayloadOff: the arguments for on and off (switch,
	// water_heater; default "on"/"off"), or the variable values meaning on
	// and off (binary_sensor; default by the variable's type).
	PayloadOn, PayloadOff string
	// PayloadPress is the argument a button sends (required).
	PayloadPress string

	// StateVariable is the variable that holds the state of a switch,
	// number or water_heater; "" means the state comes from the result of
	// the last successful call. StateOn and StateOff are its values for on
	// and off ("" means by the variable's type: true/false, 1/0, else the
	// payloads).
	StateVariable     string
	StateOn, StateOff string

	// Min, Max, Step: number range; text length (Min, Max only).
	Min, Max, Step *float64
	// Mode: number display mode (auto, box, slider) or text mode (text,
	// password).
	Mode string
	// Pattern is the regular expression a text's argument must match.
	Pattern string

	// Water heater: OnMode is the operation mode shown while on (default
	// "electric"; the modes are "off" and OnMode).
	// CurrentTemperatureVariable feeds current_temperature_topic;
	// TemperatureFunction takes the target temperature, and
	// TemperatureVariable reports it; MinTemp and MaxTemp bound it.
	OnMode                     string
	CurrentTemperatureVariable string
	TemperatureFunction        string
	TemperatureVariable        string
	MinTemp, MaxTemp           *float64
	// TemperatureUnit is "C" or "F" ("" for Home Assistant's system unit);
	// Precision is 0.1, 0.5 or 1.
	TemperatureUnit string
	Precision       *float64
}

// names returns the functions and the variables the entity uses.
func (e *Entity) names() (fns, vars []string) {
	for _, f := range []string{e.Function, e.PowerFunction, e.TemperatureFunction} {
		if f != "" {
			fns = append(fns, f)
		}
	}
	for _, v := range []string{e.Variable, e.StateVariable, e.CurrentTemperatureVariable, e.TemperatureVariable} {
		if v != "" {
			vars = append(vars, v)
		}
	}
	return fns, vars
}

// field parses the value of one key into an Entity.
type field func(p *parser, e *Entity, k, v *yaml.Node, where string) error

// Keys of every platform. (icon is not among them: Home Assistant's MQTT
// text documentation does not list it.)
var commonFields = map[string]field{
	"platform":           nil, // read first, see entity
	"name":               fName,
	"entity_category":    fEntityCategory,
	"enabled_by_default": fEnabledByDefault,
}

// platformFields lists, per platform, the keys besides commonFields, and
// which of them are required. The names follow Home Assistant's options
// where there is one (payload_on, unit_of_measurement, min_temp …); the
// *_variable and *_function keys name the device's variables and functions.
var platformFields = map[Platform]struct {
	fields   map[string]field
	required []string
}{
	Sensor: {map[string]field{
		"icon":                        fIcon,
		"variable":                    fVar(func(e *Entity) *string { return &e.Variable }),
		"device_class":                fDeviceClass,
		"unit_of_measurement":         fText(func(e *Entity) *string { return &e.UnitOfMeasurement }),
		"state_class":                 fEnum(func(e *Entity) *string { return &e.StateClass }, "measurement", "measurement_angle", "total", "total_increasing"),
		"suggested_display_precision": fPrecisionDigits,
	}, []string{"variable"}},
	BinarySensor: {map[string]field{
		"icon":         fIcon,
		"variable":     fVar(func(e *Entity) *string { return &e.Variable }),
		"device_class": fDeviceClass,
		"payload_on":   fArg(func(e *Entity) *string { return &e.PayloadOn }),
		"payload_off":  fArg(func(e *Entity) *string { return &e.PayloadOff }),
	}, []string{"variable"}},
	Switch: {map[string]field{
		"icon":           fIcon,
		"function":       fFn(func(e *Entity) *string { return &e.Function }),
		"device_class":   fEnumDC("outlet", "switch"),
		"payload_on":     fArg(func(e *Entity) *string { return &e.PayloadOn }),
		"payload_off":    fArg(func(e *Entity) *string { return &e.PayloadOff }),
		"state_variable": fVar(func(e *Entity) *string { return &e.StateVariable }),
		"state_on":       fArg(func(e *Entity) *string { return &e.StateOn }),
		"state_off":      fArg(func(e *Entity) *string { return &e.StateOff }),
	}, []string{"function"}},
	Number: {map[string]field{
		"icon":                fIcon,
		"function":            fFn(func(e *Entity) *string { return &e.Function }),
		"state_variable":      fVar(func(e *Entity) *string { return &e.StateVariable }),
		"device_class":        fDeviceClass,
		"unit_of_measurement": fText(func(e *Entity) *string { return &e.UnitOfMeasurement }),
		"min":                 fFloat(func(e *Entity) **float64 { return &e.Min }),
		"max":                 fFloat(func(e *Entity) **float64 { return &e.Max }),
		"step":                fFloat(func(e *Entity) **float64 { return &e.Step }),
		"mode":                fEnum(func(e *Entity) *string { return &e.Mode }, "auto", "box", "slider"),
	}, []string{"function"}},
	Button: {map[string]field{
		"icon":          fIcon,
		"function":      fFn(func(e *Entity) *string { return &e.Function }),
		"device_class":  fEnumDC("identify", "restart", "update"),
		"payload_press": fArg(func(e *Entity) *string { return &e.PayloadPress }),
	}, []string{"function", "payload_press"}},
	Text: {map[string]field{
		"function": fFn(func(e *Entity) *string { return &e.Function }),
		"min":      fFloat(func(e *Entity) **float64 { return &e.Min }),
		"max":      fFloat(func(e *Entity) **float64 { return &e.Max }),
		"pattern":  fPattern,
		"mode":     fEnum(func(e *Entity) *string { return &e.Mode }, "text", "password"),
	}, []string{"function"}},
	WaterHeater: {map[string]field{
		"icon":                         fIcon,
		"power_function":               fFn(func(e *Entity) *string { return &e.PowerFunction }),
		"payload_on":                   fArg(func(e *Entity) *string { return &e.PayloadOn }),
		"payload_off":                  fArg(func(e *Entity) *string { return &e.PayloadOff }),
		"on_mode":                      fEnum(func(e *Entity) *string { return &e.OnMode }, waterHeaterModes[1:]...),
		"state_variable":               fVar(func(e *Entity) *string { return &e.StateVariable }),
		"state_on":                     fArg(func(e *Entity) *string { return &e.StateOn }),
		"state_off":                    fArg(func(e *Entity) *string { return &e.StateOff }),
		"current_temperature_variable": fVar(func(e *Entity) *string { return &e.CurrentTemperatureVariable }),
		"temperature_function":         fFn(func(e *Entity) *string { return &e.TemperatureFunction }),
		"temperature_variable":         fVar(func(e *Entity) *string { return &e.TemperatureVariable }),
		"min_temp":                     fFloat(func(e *Entity) **float64 { return &e.MinTemp }),
		"max_temp":                     fFloat(func(e *Entity) **float64 { return &e.MaxTemp }),
		"temperature_unit":             fEnum(func(e *Entity) *string { return &e.TemperatureUnit }, "C", "F"),
		"precision":                    fWaterHeaterPrecision,
	}, []string{"power_function"}},
}

// waterHeaterModes are Home Assistant's water heater operation modes
// (water_heater.mqtt `modes`), "off" first.
var waterHeaterModes = []string{"off", "eco", "electric", "gas", "heat_pump", "high_demand", "performance"}

// Platforms returns the platforms a devices file may declare, sorted.
func Platforms() []Platform {
	ps := make([]Platform, 0, len(platformFields))
	for p := range platformFields {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// ParseNode parses the value of a device's `homeassistant:` key. file
// names the devices file and where the device ("device 0123…"), in
// messages. A null node is an empty section. Every error is an *Error
// (unwrapping to ErrSection) that names the file, the line and the key.
// Functions and variables are checked for form here and against the
// device's description by Build.
func ParseNode(file, where string, n *yaml.Node) (*DeviceConfig, error) {
	p := &parser{file: file}
	where += ": homeassistant"
	dc := &DeviceConfig{Line: n.Line}
	err := p.mapping(n, where, map[string]func(k, v *yaml.Node) error{
		"discovery": func(k, v *yaml.Node) error {
			b, err := p.boolean(k, v, where)
			dc.Disabled = !b
			return err
		},
		"defaults": func(k, v *yaml.Node) error {
			b, err := p.boolean(k, v, where)
			dc.NoDefaults = !b
			return err
		},
		"name": func(k, v *yaml.Node) error {
			s, err := p.text(k, v, where)
			dc.Name = s
			return err
		},
		"suggested_area": func(k, v *yaml.Node) error {
			s, err := p.text(k, v, where)
			dc.SuggestedArea = s
			return err
		},
		"entities": func(k, v *yaml.Node) error {
			ew := where + ": entities"
			return p.mapping(v, ew, map[string]func(k, v *yaml.Node) error{
				"*": func(k, v *yaml.Node) error {
					if len(dc.Entities) == MaxEntities {
						return p.errf(k, k.Value, "%s: more than %d entities", ew, MaxEntities)
					}
					e, err := p.entity(k, v, ew)
					if err != nil {
						return err
					}
					dc.Entities = append(dc.Entities, e)
					return nil
				},
			})
		},
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(dc.Entities, func(a, b Entity) int { return strings.Compare(a.Key, b.Key) })
	return dc, nil
}

// parser walks yaml.Node trees so that every error has a line.
type parser struct{ file string }

func (p *parser) errf(n *yaml.Node, key, format string, args ...any) error {
	return &Error{File: p.file, Line: n.Line, Key: key, Msg: fmt.Sprintf(format, args...)}
}

// mapping calls fields[key] for each key of a mapping node ("*" for any
// key), refusing unknown keys, duplicates, aliases and non-string keys. A
// null node is an empty mapping.
func (p *parser) mapping(n *yaml.Node, where string, fields map[string]func(k, v *yaml.Node) error) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind == yaml.AliasNode {
		return p.errf(n, "", "%s: aliases are not supported", where)
	}
	if n.Kind != yaml.MappingNode {
		return p.errf(n, "", "%s must be a mapping", where)
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Tag == "!!merge" {
			return p.errf(k, "", "%s: keys must be plain strings", where)
		}
		if line, dup := seen[k.Value]; dup {
			return p.errf(k, k.Value, "%s: duplicate key %q (first at line %d)", where, k.Value, line)
		}
		seen[k.Value] = k.Line
		if v.Kind == yaml.AliasNode {
			return p.errf(v, k.Value, "%s: key %q: aliases are not supported", where, k.Value)
		}
		f, ok := fields[k.Value]
		if !ok {
			f, ok = fields["*"]
		}
		if !ok {
			return p.errf(k, k.Value, "%s: unknown key %q (known: %s)", where, k.Value, known(fields))
		}
		if err := f(k, v); err != nil {
			return err
		}
	}
	return nil
}

func known[V any](fields map[string]V) string {
	var ks []string
	for k := range fields {
		if k != "*" {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	return strings.Join(ks, ", ")
}

// scalar returns the value of a scalar node; null and collections are errors.
func (p *parser) scalar(k, v *yaml.Node, where string) (string, error) {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		return "", p.errf(v, k.Value, "%s: %s must be a single value", where, k.Value)
	}
	if !utf8.ValidString(v.Value) || strings.ContainsRune(v.Value, 0) {
		return "", p.errf(v, k.Value, "%s: %s: not valid UTF-8 text", where, k.Value)
	}
	return v.Value, nil
}

// text is a scalar of at most MaxText bytes.
func (p *parser) text(k, v *yaml.Node, where string) (string, error) {
	s, err := p.scalar(k, v, where)
	if err != nil {
		return "", err
	}
	if len(s) > MaxText {
		return "", p.errf(v, k.Value, "%s: %s: longer than %d bytes", where, k.Value, MaxText)
	}
	return s, nil
}

// boolean accepts true and false only (not YAML 1.1's yes/no/on/off,
// which yaml.v3 reads as strings in a node).
func (p *parser) boolean(k, v *yaml.Node, where string) (bool, error) {
	s, err := p.scalar(k, v, where)
	if err != nil {
		return false, err
	}
	switch s {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, p.errf(v, k.Value, "%s: %s: %q is not true or false", where, k.Value, s)
}

// entityKey matches an entity key.
var entityKey = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

func (p *parser) entity(k, v *yaml.Node, where string) (Entity, error) {
	if !entityKey.MatchString(k.Value) || len(k.Value) > MaxKey {
		return Entity{}, p.errf(k, k.Value, "%s: entity key %q: want letters, digits and _ (at most %d), it is the entity's identity in Home Assistant", where, k.Value, MaxKey)
	}
	e := Entity{Key: k.Value, Line: k.Line}
	where += ": " + k.Value
	if v.Kind != yaml.MappingNode {
		// Let mapping produce the message (null, alias, scalar, sequence).
		if err := p.mapping(v, where, nil); err != nil {
			return Entity{}, err
		}
		return Entity{}, p.errf(k, k.Value, "%s: platform is missing (one of %s)", where, platformList())
	}
	var platNode *yaml.Node
	for i := 0; i+1 < len(v.Content); i += 2 {
		if v.Content[i].Kind == yaml.ScalarNode && v.Content[i].Value == "platform" {
			platNode = v.Content[i+1]
			break
		}
	}
	if platNode == nil {
		return Entity{}, p.errf(k, k.Value, "%s: platform is missing (one of %s)", where, platformList())
	}
	pk := &yaml.Node{Kind: yaml.ScalarNode, Value: "platform", Line: platNode.Line}
	ps, err := p.scalar(pk, platNode, where)
	if err != nil {
		return Entity{}, err
	}
	spec, ok := platformFields[Platform(ps)]
	if !ok {
		return Entity{}, p.errf(platNode, "platform", "%s: unknown platform %q (known: %s)", where, ps, platformList())
	}
	e.Platform = Platform(ps)
	fields := map[string]func(k, v *yaml.Node) error{}
	for name, f := range commonFields {
		if f != nil {
			fields[name] = bind(p, &e, f, where)
		}
	}
	for name, f := range spec.fields {
		fields[name] = bind(p, &e, f, where)
	}
	fields["platform"] = func(k, v *yaml.Node) error { return nil }
	pw := where + " (" + ps + ")"
	if err := p.mapping(v, pw, fields); err != nil {
		return Entity{}, err
	}
	present := map[string]bool{}
	for i := 0; i+1 < len(v.Content); i += 2 {
		present[v.Content[i].Value] = true
	}
	for _, r := range spec.required {
		if !present[r] {
			return Entity{}, p.errf(k, r, "%s: %s is required", pw, r)
		}
	}
	if err := p.check(&e, k, v, present, pw); err != nil {
		return Entity{}, err
	}
	return e, nil
}

func bind(p *parser, e *Entity, f field, where string) func(k, v *yaml.Node) error {
	return func(k, v *yaml.Node) error { return f(p, e, k, v, where) }
}

func platformList() string {
	var ss []string
	for _, p := range Platforms() {
		ss = append(ss, string(p))
	}
	return strings.Join(ss, ", ")
}

// check validates the combinations of keys and fills the defaults.
func (p *parser) check(e *Entity, k, v *yaml.Node, present map[string]bool, where string) error {
	bad := func(key, format string, args ...any) error {
		at := k
		for i := 0; i+1 < len(v.Content); i += 2 {
			if v.Content[i].Value == key {
				at = v.Content[i]
			}
		}
		return p.errf(at, key, "%s: %s", where, fmt.Sprintf(format, args...))
	}
	if e.EntityCategory == "config" && (e.Platform == Sensor || e.Platform == BinarySensor) {
		return bad("entity_category", "entity_category of a %s must be diagnostic", e.Platform)
	}
	if (present["state_on"] || present["state_off"]) && e.StateVariable == "" {
		return bad("state_on", "state_on and state_off need state_variable")
	}
	switch e.Platform {
	case Switch, WaterHeater:
		if !present["payload_on"] {
			e.PayloadOn = "on"
		}
		if !present["payload_off"] {
			e.PayloadOff = "off"
		}
		if e.PayloadOn == e.PayloadOff {
			return bad("payload_off", "payload_on and payload_off are both %q", e.PayloadOn)
		}
		if present["state_on"] != present["state_off"] {
			return bad("state_on", "give both state_on and state_off, or neither")
		}
		if present["state_on"] && e.StateOn == e.StateOff {
			return bad("state_off", "state_on and state_off are both %q", e.StateOn)
		}
	case BinarySensor:
		if present["payload_on"] != present["payload_off"] {
			return bad("payload_on", "give both payload_on and payload_off, or neither")
		}
		if present["payload_on"] && e.PayloadOn == e.PayloadOff {
			return bad("payload_off", "payload_on and payload_off are both %q", e.PayloadOn)
		}
	case Number:
		lo, hi := deref(e.Min, 1), deref(e.Max, 100) // Home Assistant's defaults
		if lo >= hi {
			return bad("max", "min %v is not below max %v", lo, hi)
		}
		if e.Step != nil && (*e.Step < 0.001 || *e.Step > hi-lo) {
			return bad("step", "step %v is not within 0.001 and max-min", *e.Step)
		}
	case Text:
		for _, b := range []struct {
			key string
			v   *float64
		}{{"min", e.Min}, {"max", e.Max}} {
			if b.v != nil && (*b.v != math.Trunc(*b.v) || *b.v < 0 || *b.v > 255) {
				return bad(b.key, "%s %v is not a whole number of characters from 0 to 255", b.key, *b.v)
			}
		}
		if deref(e.Min, 0) > deref(e.Max, 255) {
			return bad("max", "min %v is above max %v", *e.Min, deref(e.Max, 255))
		}
	}
	if e.Platform == WaterHeater {
		if e.OnMode == "" {
			e.OnMode = "electric"
		}
		if e.TemperatureVariable != "" && e.TemperatureFunction == "" {
			return bad("temperature_variable", "temperature_variable needs temperature_function")
		}
		if (e.MinTemp != nil || e.MaxTemp != nil) && e.TemperatureFunction == "" {
			return bad("min_temp", "min_temp and max_temp need temperature_function")
		}
		if e.MinTemp != nil && e.MaxTemp != nil && *e.MinTemp >= *e.MaxTemp {
			return bad("max_temp", "min_temp %v is not below max_temp %v", *e.MinTemp, *e.MaxTemp)
		}
	}
	return nil
}

func deref(f *float64, def float64) float64 {
	if f == nil {
		return def
	}
	return *f
}

// Field parsers.

func fName(p *parser, e *Entity, k, v *yaml.Node, where string) error {
	if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
		e.NameNull = true
		return nil
	}
	s, err := p.text(k, v, where)
	if err == nil && s == "" {
		err = p.errf(v, k.Value, "%s: name is empty (leave it out for the key, or write null for the device's name)", where)
	}
	e.Name = s
	return err
}

func fIcon(p *parser, e *Entity, k, v *yaml.Node, where string) error {
	s, err := p.text(k, v, where)
	if err != nil {
		return err
	}
	if pre, name, ok := strings.Cut(s, ":"); !ok || pre == "" || name == "" || strings.ContainsAny(s, " \t\n") {
		return p.errf(v, k.Value, "%s: icon %q: want prefix:name, like mdi:water-boiler", where, s)
	}
	e.Icon = s
	return nil
}

func fEntityCategory(p *parser, e *Entity, k, v *yaml.Node, where string) error {
	return fEnum(func(e *Entity) *string { return &e.EntityCategory }, "config", "diagnostic")(p, e, k, v, where)
}

func fEnabledByDefault(p *parser, e *Entity, k, v *yaml.Node, where string) error {
	b, err := p.boolean(k, v, where)
	e.EnabledByDefault = &b
	return err
}

// deviceClass matches the form of Home Assistant's device classes; Home
// Assistant itself checks the value against its list.
var deviceClass = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

func fDeviceClass(p *parser, e *Entity, k, v *yaml.Node, where string) error {
	s, err := p.text(k, v, where)
	if err != nil {
		return err
	}
	if !deviceClass.MatchString(s) {
		return p.errf(v, k.Value, "%s: device_class %q: want a Home Assistant device class like temperature", where, s)
	}
	e.DeviceClass = s
	return nil
}

func fEnumDC(values ...string) field {
	return fEnum(func(e *Entity) *string { return &e.DeviceClass }, values...)
}

func fEnum(dst func(*Entity) *string, values ...string) field {
	return func(p *parser, e *Entity, k, v *yaml.Node, where string) error {
		s, err := p.scalar(k, v, where)
		if err != nil {
			return err
		}
		if !slices.Contains(values, s) {
			return p.errf(v, k.Value, "%s: %s: %q is not one of %s", where, k.Value, s, strings.Join(values, ", "))
		}
		*dst(e) = s
		return nil
	}
}

func fText(dst func(*Entity) *string) field {
	return func(p *parser, e *Entity, k, v *yaml.Node, where string) error {
		s, err := p.text(k, v, where)
		*dst(e) = s
		return err
	}
}

// fArg reads an argument or a variable value: any text up to MaxArg bytes,
// the empty string included.
func fArg(dst func(*Entity) *string) field {
	return func(p *parser, e *Entity, k, v *yaml.Node, where string) error {
		s, err := p.scalar(k, v, where)
		if err != nil {
			return err
		}
		if len(s) > MaxArg {
			return p.errf(v, k.Value, "%s: %s: longer than %d bytes, more than any device accepts", where, k.Value, MaxArg)
		}
		*dst(e) = s
		return nil
	}
}

func fFn(dst func(*Entity) *string) field  { return fDeviceName(dst, "function") }
func fVar(dst func(*Entity) *string) field { return fDeviceName(dst, "variable") }

// fDeviceName reads a function or variable name: it becomes a topic level.
func fDeviceName(dst func(*Entity) *string, what string) field {
	return func(p *parser, e *Entity, k, v *yaml.Node, where string) error {
		s, err := p.scalar(k, v, where)
		if err != nil {
			return err
		}
		if err := validDeviceName(s); err != nil {
			return p.errf(v, k.Value, "%s: %s: %s %v", where, k.Value, what, err)
		}
		*dst(e) = s
		return nil
	}
}

// validDeviceName checks a function or variable name as the firmware
// registers them: 1 to MaxName bytes, usable as one MQTT topic level.
func validDeviceName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("name is empty")
	case len(s) > MaxName:
		return fmt.Errorf("name %q is longer than %d bytes", s, MaxName)
	case !utf8.ValidString(s):
		return fmt.Errorf("name %q is not UTF-8", s)
	case strings.ContainsAny(s, "+#/\x00"):
		return fmt.Errorf("name %q contains one of + # / NUL", s)
	}
	return nil
}

func fFloat(dst func(*Entity) **float64) field {
	return func(p *parser, e *Entity, k, v *yaml.Node, where string) error {
		s, err := p.scalar(k, v, where)
		if err != nil {
			return err
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) || math.Abs(f) > 1e15 {
			return p.errf(v, k.Value, "%s: %s: %q is not a number", where, k.Value, s)
		}
		*dst(e) = &f
		return nil
	}
}

func fPrecisionDigits(p *parser, e *Entity, k, v *yaml.Node, where string) error {
	s, err := p.scalar(k, v, where)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 15 {
		return p.errf(v, k.Value, "%s: %s: %q is not a number of decimals from 0 to 15", where, k.Value, s)
	}
	e.SuggestedDisplayPrecision = &n
	return nil
}

func fWaterHeaterPrecision(p *parser, e *Entity, k, v *yaml.Node, where string) error {
	s, err := p.scalar(k, v, where)
	if err != nil {
		return err
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || (f != 0.1 && f != 0.5 && f != 1) {
		return p.errf(v, k.Value, "%s: precision: %q is not 0.1, 0.5 or 1.0", where, s)
	}
	e.Precision = &f
	return nil
}

func fPattern(p *parser, e *Entity, k, v *yaml.Node, where string) error {
	s, err := p.text(k, v, where)
	if err != nil {
		return err
	}
	// Home Assistant compiles it with Python's re, which accepts more than
	// Go's regexp: only an empty pattern is refused here.
	if s == "" {
		return p.errf(v, k.Value, "%s: pattern is empty", where)
	}
	e.Pattern = s
	return nil
}
