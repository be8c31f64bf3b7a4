package bridge

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/spark2mqtt/spark2mqtt/bridge/hass"
)

// PollOff as a poll interval turns polling off (values are read on `get`
// only). In the devices file it is written `off`.
const PollOff time.Duration = -1

// maxDevicesFile bounds the size of the devices file.
const maxDevicesFile = 1 << 20

// DevicesFile is the user's devices file: names for device ids and poll
// intervals, per device and per variable. It is YAML, decoded strictly: an
// unknown key, a wrong type or a duplicate is an error naming the file, the
// line and the key. The layout is a mapping at every level so it can grow
// (issue 5 adds Home Assistant entities per device):
//
//	devices:
//	  0123456789abcdef01234567:   # device id, 24 hex digits
//	    name: heater              # topic level D; unique; no + # / NUL
//	    poll: 30s                 # this device's default poll interval, or off
//	    variables:
//	      temp:
//	        poll: 10s
//	      state:
//	        poll: "off"
//	    homeassistant:           # Home Assistant entities (package hass)
//	      ...
//
// A DevicesFile is immutable after loading and safe for concurrent use; a
// nil *DevicesFile is an empty one.
type DevicesFile struct {
	// Path is the file it was read from, "" for none.
	Path string
	// Devices holds the entries by lower-case device id.
	Devices map[string]*DeviceConfig

	byName map[string]string // name → id
}

// DeviceConfig is one device's entry in the devices file.
type DeviceConfig struct {
	// ID is the device id, 24 lower-case hex digits.
	ID string
	// Name is the topic level used instead of the id; "" for none.
	Name string
	// Poll is the device's default poll interval: 0 means the bridge's,
	// PollOff means off.
	Poll time.Duration
	// Variables holds per-variable settings by variable name.
	Variables map[string]VariableConfig
	// HomeAssistant is the device's `homeassistant:` section (entities and
	// discovery settings, parsed by hass.ParseNode); nil when absent.
	HomeAssistant *hass.DeviceConfig
	// Line is the line of the entry in the file, for messages.
	Line int
}

// VariableConfig is one variable's entry under a device.
type VariableConfig struct {
	// Poll is the variable's poll interval: 0 means the device's, PollOff
	// means off.
	Poll time.Duration
	// Line is the line of the entry in the file, for messages.
	Line int
}

// reservedNames are device names that would collide with the bridge's own
// topics (spark/bridge/..., spark/events/...).
var reservedNames = []string{lvlBridge, lvlEvents}

// LoadDevicesFile reads and checks the devices file at path. A missing
// file is an empty DevicesFile, not an error. Errors wrap ErrDevicesFile
// (or the read error) and name the file and the line.
func LoadDevicesFile(path string) (*DevicesFile, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &DevicesFile{Path: path}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("devices file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxDevicesFile+1))
	if err != nil {
		return nil, fmt.Errorf("devices file %s: %w", path, err)
	}
	if len(data) > maxDevicesFile {
		return nil, fmt.Errorf("%w: %s: larger than %d bytes", ErrDevicesFile, path, maxDevicesFile)
	}
	return ParseDevicesFile(path, data)
}

// ParseDevicesFile parses the contents of a devices file; name is used in
// messages. Empty input (or only comments) is an empty DevicesFile.
func ParseDevicesFile(name string, data []byte) (*DevicesFile, error) {
	df := &DevicesFile{Path: name, Devices: map[string]*DeviceConfig{}, byName: map[string]string{}}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return df, nil
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrDevicesFile, name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: %s:%d: more than one YAML document", ErrDevicesFile, name, extra.Line)
	}
	p := &dfParser{file: name}
	if err := p.parse(&doc, df); err != nil {
		return nil, err
	}
	return df, nil
}

// dfParser walks the yaml.Node tree so that every error has a line.
type dfParser struct{ file string }

func (p *dfParser) errf(n *yaml.Node, format string, args ...any) error {
	return fmt.Errorf("%w: %s:%d: %s", ErrDevicesFile, p.file, n.Line, fmt.Sprintf(format, args...))
}

// mapping calls field for each key of a mapping node, refusing keys not in
// fields and duplicates. where names the mapping in messages. A null node
// (an empty value) is an empty mapping.
func (p *dfParser) mapping(n *yaml.Node, where string, fields map[string]func(key, val *yaml.Node) error) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind == yaml.AliasNode {
		return p.errf(n, "%s: aliases are not supported", where)
	}
	if n.Kind != yaml.MappingNode {
		return p.errf(n, "%s must be a mapping", where)
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return p.errf(k, "%s: keys must be plain strings", where)
		}
		if line, dup := seen[k.Value]; dup {
			return p.errf(k, "%s: duplicate key %q (first at line %d)", where, k.Value, line)
		}
		seen[k.Value] = k.Line
		if v.Kind == yaml.AliasNode {
			return p.errf(v, "%s: key %q: aliases are not supported", where, k.Value)
		}
		f, ok := fields[k.Value]
		if !ok {
			f, ok = fields["*"]
		}
		if !ok {
			return p.errf(k, "%s: unknown key %q (known: %s)", where, k.Value, knownKeys(fields))
		}
		if err := f(k, v); err != nil {
			return err
		}
	}
	return nil
}

func knownKeys(fields map[string]func(key, val *yaml.Node) error) string {
	var ks []string
	for k := range fields {
		if k != "*" {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	return strings.Join(ks, ", ")
}

func (p *dfParser) scalar(n *yaml.Node, where string) (string, error) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return "", p.errf(n, "%s must be a single value", where)
	}
	return n.Value, nil
}

func (p *dfParser) poll(n *yaml.Node, where string) (time.Duration, error) {
	s, err := p.scalar(n, where)
	if err != nil {
		return 0, err
	}
	if s == "off" {
		return PollOff, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, p.errf(n, "%s: %q is not a duration like 30s or 5m, nor off", where, s)
	}
	if d < MinPollInterval {
		return 0, p.errf(n, "%s: %v is below the minimum %v", where, d, MinPollInterval)
	}
	return d, nil
}

// parse walks the document. Top-level sections other than devices (for
// example defaults for Home Assistant) are added to its table.
func (p *dfParser) parse(doc *yaml.Node, df *DevicesFile) error {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	return p.mapping(root, "top level", map[string]func(k, v *yaml.Node) error{
		"devices": func(_, v *yaml.Node) error {
			return p.mapping(v, "devices", map[string]func(k, v *yaml.Node) error{
				"*": func(k, v *yaml.Node) error { return p.device(k, v, df) },
			})
		},
	})
}

// device parses one entry under devices. Its keys are the table below; a
// new per-device section (issue 5: Home Assistant entities) is one more
// entry that fills a new DeviceConfig field, parsed with p.mapping so its
// own unknown keys are errors with their line too.
func (p *dfParser) device(k, v *yaml.Node, df *DevicesFile) error {
	id, err := parseID(k.Value)
	if err != nil {
		return p.errf(k, "devices: key %q is not a device id (24 hex digits)", k.Value)
	}
	if prev, dup := df.Devices[id]; dup {
		return p.errf(k, "devices: device %s listed twice (first at line %d)", id, prev.Line)
	}
	dc := &DeviceConfig{ID: id, Line: k.Line, Variables: map[string]VariableConfig{}}
	where := "device " + id
	err = p.mapping(v, where, map[string]func(k, v *yaml.Node) error{
		"name": func(k, v *yaml.Node) error {
			s, err := p.scalar(v, where+": name")
			if err != nil {
				return err
			}
			if err := validName(s, id); err != nil {
				return p.errf(v, "%s: name: %v", where, err)
			}
			if other, dup := df.byName[s]; dup {
				return p.errf(v, "%s: name %q is already used by device %s (line %d)", where, s, other, df.Devices[other].Line)
			}
			dc.Name = s
			return nil
		},
		"poll": func(k, v *yaml.Node) error {
			d, err := p.poll(v, where+": poll")
			dc.Poll = d
			return err
		},
		"homeassistant": func(k, v *yaml.Node) error {
			hc, err := hass.ParseNode(p.file, where, v)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrDevicesFile, err)
			}
			dc.HomeAssistant = hc
			return nil
		},
		"variables": func(k, v *yaml.Node) error {
			return p.mapping(v, where+": variables", map[string]func(k, v *yaml.Node) error{
				"*": func(k, v *yaml.Node) error {
					if err := ValidLevel(k.Value); err != nil {
						return p.errf(k, "%s: variable %q: %v", where, k.Value, err)
					}
					vw := where + ": variable " + k.Value
					vc := VariableConfig{Line: k.Line}
					err := p.mapping(v, vw, map[string]func(k, v *yaml.Node) error{
						"poll": func(k, v *yaml.Node) error {
							d, err := p.poll(v, vw+": poll")
							vc.Poll = d
							return err
						},
					})
					dc.Variables[k.Value] = vc
					return err
				},
			})
		},
	})
	if err != nil {
		return err
	}
	df.Devices[id] = dc
	if dc.Name != "" {
		df.byName[dc.Name] = id
	}
	return nil
}

// validName checks a device name: a valid topic level, not a reserved
// level, and not a device id other than its own (names and ids share the
// topic level D).
func validName(name, id string) error {
	if err := ValidLevel(name); err != nil {
		return err
	}
	if slices.Contains(reservedNames, name) {
		return fmt.Errorf("%q is reserved for the bridge's own topics", name)
	}
	if other, err := parseID(name); err == nil && other != id {
		return fmt.Errorf("%q is another device's id", name)
	}
	return nil
}

// parseID checks and normalises a device id: 24 hex digits, any case.
func parseID(s string) (string, error) {
	if len(s) != 24 {
		return "", fmt.Errorf("device id %q: want 24 hex digits", s)
	}
	if _, err := hex.DecodeString(s); err != nil {
		return "", fmt.Errorf("device id %q: want 24 hex digits", s)
	}
	return strings.ToLower(s), nil
}

// Name returns the configured name of device id, or "".
func (f *DevicesFile) Name(id string) string {
	if f == nil {
		return ""
	}
	if dc := f.Devices[id]; dc != nil {
		return dc.Name
	}
	return ""
}

// HomeAssistant returns the `homeassistant:` section of device id, nil
// when it has none.
func (f *DevicesFile) HomeAssistant(id string) *hass.DeviceConfig {
	if f == nil {
		return nil
	}
	if dc := f.Devices[id]; dc != nil {
		return dc.HomeAssistant
	}
	return nil
}

// ID returns the device id configured with name.
func (f *DevicesFile) ID(name string) (string, bool) {
	if f == nil {
		return "", false
	}
	id, ok := f.byName[name]
	return id, ok
}

// Poll returns the poll interval of variable v of device id, given the
// bridge's default def: the variable's entry, else the device's, else def.
// PollOff (or a negative def) means off.
func (f *DevicesFile) Poll(id, v string, def time.Duration) time.Duration {
	if f != nil {
		if dc := f.Devices[id]; dc != nil {
			if vc, ok := dc.Variables[v]; ok && vc.Poll != 0 {
				return vc.Poll
			}
			if dc.Poll != 0 {
				return dc.Poll
			}
		}
	}
	if def < 0 {
		return PollOff
	}
	return def
}
