package msg

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Describe limits. They protect memory; real devices stay far below them
// (a Core has at most 4 functions and 10 variables).
const (
	// MaxDescribeSize bounds the Describe JSON in bytes.
	MaxDescribeSize = 8192
	// MaxNames bounds the number of entries in "f" plus "v" together,
	// counted before duplicates and invalid names are dropped.
	MaxNames = 256
	// MaxNameLen bounds a function or variable name in bytes (§4.4: 12 on a
	// Core, 64 on newer Photons).
	MaxNameLen = 64
)

// Description is a device's Describe answer (spark-protocol.md §4.4).
type Description struct {
	// Functions are the function names, in the device's order, without
	// duplicates. Never nil after ParseDescription.
	Functions []string
	// Variables maps each variable name to its type code. Never nil after
	// ParseDescription.
	Variables map[string]VarType
	// Platform is "p" (a Photon with the system flag), valid when
	// HasPlatform.
	Platform    int
	HasPlatform bool
}

// ParseDescription parses the Describe JSON
// {"f":["fn",…],"v":{"var":9,…},"p":6,"m":[…]}. Missing keys are fine
// (§4.4: accept whichever parts arrive); "m" and unknown keys are ignored.
//
// Lenient for the Core, whose JSON is built by hand and not escaped (§4.4,
// §7.18): the payload is first parsed as strict JSON; if that fails, a
// fallback scanner reads it with strings that have no escapes, where a '"'
// ends a string only when the next non-space byte is one of , : ] } (so a
// name such as my"fn survives). Names that are empty, longer than
// MaxNameLen, not UTF-8 or hold control characters are dropped, as are
// repeated function names; a repeated variable takes its last type.
//
// Errors wrap ErrDescribe: more than MaxDescribeSize bytes, more than
// MaxNames names, input neither parser accepts, a top level that is not an
// object, "f" not an array of strings, "v" not an object of type codes
// 0..255, or "p" not an integer 0..65535.
func ParseDescription(b []byte) (Description, error) {
	if len(b) > MaxDescribeSize {
		return Description{}, fmt.Errorf("%w: %d bytes", ErrDescribe, len(b))
	}
	d, err := parseStrict(b)
	if err == nil {
		return d, nil
	}
	d, lerr := parseLenient(b)
	if lerr != nil {
		return Description{}, fmt.Errorf("%w: %w (lenient parser: %w)", ErrDescribe, err, lerr)
	}
	return d, nil
}

// rawDescription collects the parsed parts before validation.
type rawDescription struct {
	functions []string
	variables []nameType
	platform  int64
	hasP      bool
}

type nameType struct {
	name string
	typ  int64
}

// finish validates and normalises the parts (shared by both parsers).
func (r *rawDescription) finish() (Description, error) {
	if n := len(r.functions) + len(r.variables); n > MaxNames {
		return Description{}, fmt.Errorf("%d names", n)
	}
	d := Description{
		Functions: make([]string, 0, len(r.functions)),
		Variables: make(map[string]VarType, len(r.variables)),
	}
	for _, f := range r.functions {
		if validName(f) && !slices.Contains(d.Functions, f) {
			d.Functions = append(d.Functions, f)
		}
	}
	for _, v := range r.variables {
		if v.typ < 0 || v.typ > 255 {
			return Description{}, fmt.Errorf("variable type %d", v.typ)
		}
		if validName(v.name) {
			d.Variables[v.name] = VarType(v.typ)
		}
	}
	if r.hasP {
		if r.platform < 0 || r.platform > 0xFFFF {
			return Description{}, fmt.Errorf("platform %d", r.platform)
		}
		d.Platform, d.HasPlatform = int(r.platform), true
	}
	return d, nil
}

// validName reports whether s can be used as a function or variable name.
func validName(s string) bool {
	if s == "" || len(s) > MaxNameLen || !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7F {
			return false
		}
	}
	return true
}

// parseStrict parses standard JSON with encoding/json. Keys are matched
// exactly (encoding/json's struct matching would be case-insensitive).
func parseStrict(b []byte) (Description, error) {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return Description{}, fmt.Errorf("not a JSON object")
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return Description{}, err
	}
	var r rawDescription
	if f, ok := top["f"]; ok {
		if err := json.Unmarshal(f, &r.functions); err != nil {
			return Description{}, fmt.Errorf("f: %w", err)
		}
	}
	if v, ok := top["v"]; ok && !isNull(v) {
		if t := bytes.TrimLeft(v, " \t\r\n"); t[0] != '{' {
			return Description{}, fmt.Errorf("v: not an object")
		}
		// Decode as ordered tokens, so that duplicates behave as in the
		// lenient parser (the last one wins) and counting sees them all.
		dec := json.NewDecoder(bytes.NewReader(v))
		if _, err := dec.Token(); err != nil { // '{'
			return Description{}, fmt.Errorf("v: %w", err)
		}
		for dec.More() {
			if len(r.variables) > MaxNames {
				return Description{}, fmt.Errorf("v: more than %d names", MaxNames)
			}
			k, err := dec.Token()
			if err != nil {
				return Description{}, fmt.Errorf("v: %w", err)
			}
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return Description{}, fmt.Errorf("v: %w", err)
			}
			typ, err := jsonInt(raw)
			if err != nil {
				return Description{}, fmt.Errorf("v: type code: %w", err)
			}
			r.variables = append(r.variables, nameType{k.(string), typ})
		}
	}
	if p, ok := top["p"]; ok && !isNull(p) {
		v, err := jsonInt(p)
		if err != nil {
			return Description{}, fmt.Errorf("p: %w", err)
		}
		r.platform, r.hasP = v, true
	}
	return r.finish()
}

// jsonInt reads a JSON number that must be an integer (no fraction, no
// exponent, not a string).
func jsonInt(raw json.RawMessage) (int64, error) {
	t := bytes.TrimSpace(raw)
	v, err := strconv.ParseInt(string(t), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%.20q is not an integer", t)
	}
	return v, nil
}

func isNull(b json.RawMessage) bool {
	return string(bytes.TrimSpace(b)) == "null"
}

// Marshal returns d as standard, escaped JSON {"f":[…],"v":{…}} plus "p"
// when HasPlatform; variables are sorted by name. ParseDescription reads it
// back to an equal Description when d's names are valid and within the
// limits.
func (d Description) Marshal() []byte {
	b := make([]byte, 0, 32+16*(len(d.Functions)+len(d.Variables)))
	b = append(b, `{"f":[`...)
	for i, f := range d.Functions {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, f)
	}
	b = append(b, `],"v":{`...)
	for i, name := range slices.Sorted(mapKeys(d.Variables)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, name)
		b = append(b, ':')
		b = strconv.AppendUint(b, uint64(d.Variables[name]), 10)
	}
	b = append(b, '}')
	if d.HasPlatform {
		b = append(b, `,"p":`...)
		b = strconv.AppendInt(b, int64(d.Platform), 10)
	}
	return append(b, '}')
}

func mapKeys(m map[string]VarType) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// appendJSONString appends s as a JSON string: '"' and '\' escaped, control
// characters as \u00XX, invalid UTF-8 as \ufffd.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == 0x7F:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
