package msg

import (
	"errors"
	"fmt"
	"strconv"
)

// The lenient Describe scanner (spark-protocol.md §4.4, §7.18). The Core
// writes its Describe JSON by hand: '{"f":["' name '",' … '],"v":{"' name
// '":' digit ',' … '}}', with names neither escaped nor checked. This scanner
// reads JSON-like text whose strings have no escape sequences; a '"' closes
// a string only when the next non-space byte is one of , : ] } or the input
// ends. Everything else is plain JSON, nested at most maxDepth deep.

const maxDepth = 16

var errSyntax = errors.New("syntax")

type scanner struct {
	b     []byte
	i     int
	depth int
}

func parseLenient(b []byte) (Description, error) {
	s := scanner{b: b}
	var r rawDescription
	s.space()
	if !s.eat('{') {
		return Description{}, s.fail("not an object")
	}
	s.space()
	if !s.eat('}') {
		for {
			key, err := s.str()
			if err != nil {
				return Description{}, err
			}
			s.space()
			if !s.eat(':') {
				return Description{}, s.fail("missing ':'")
			}
			s.space()
			switch key {
			case "f":
				err = s.functions(&r)
			case "v":
				err = s.variables(&r)
			case "p":
				if s.null() {
					break
				}
				r.platform, err = s.integer()
				r.hasP = err == nil
			default:
				err = s.skip()
			}
			if err != nil {
				return Description{}, err
			}
			s.space()
			if s.eat('}') {
				break
			}
			if !s.eat(',') {
				return Description{}, s.fail("missing ',' or '}'")
			}
			s.space()
		}
	}
	s.space()
	if s.i != len(s.b) {
		return Description{}, s.fail("trailing data")
	}
	return r.finish()
}

func (s *scanner) fail(what string) error {
	return fmt.Errorf("%w at byte %d: %s", errSyntax, s.i, what)
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) null() bool {
	if len(s.b)-s.i >= 4 && string(s.b[s.i:s.i+4]) == "null" {
		s.i += 4
		return true
	}
	return false
}

// str reads a string without escapes, closed by a '"' followed by a
// structural byte (see the file comment).
func (s *scanner) str() (string, error) {
	if !s.eat('"') {
		return "", s.fail("want a string")
	}
	start := s.i
	for j := start; j < len(s.b); j++ {
		if s.b[j] != '"' {
			continue
		}
		k := j + 1
		for k < len(s.b) && (s.b[k] == ' ' || s.b[k] == '\t' || s.b[k] == '\r' || s.b[k] == '\n') {
			k++
		}
		if k == len(s.b) || s.b[k] == ',' || s.b[k] == ':' || s.b[k] == ']' || s.b[k] == '}' {
			s.i = j + 1
			return string(s.b[start:j]), nil
		}
	}
	s.i = len(s.b)
	return "", s.fail("unterminated string")
}

// integer reads an optionally negative run of digits (no fraction).
func (s *scanner) integer() (int64, error) {
	start := s.i
	s.eat('-')
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	v, err := strconv.ParseInt(string(s.b[start:s.i]), 10, 64)
	if err != nil {
		return 0, s.fail("want an integer")
	}
	return v, nil
}

func (s *scanner) functions(r *rawDescription) error {
	return s.list(r, '[', ']', `"f" is not an array`, func() error {
		name, err := s.str()
		if err != nil {
			return err
		}
		r.functions = append(r.functions, name)
		return nil
	})
}

func (s *scanner) variables(r *rawDescription) error {
	return s.list(r, '{', '}', `"v" is not an object`, func() error {
		name, err := s.str()
		if err != nil {
			return err
		}
		s.space()
		if !s.eat(':') {
			return s.fail("missing ':'")
		}
		s.space()
		typ, err := s.integer()
		if err != nil {
			return err
		}
		r.variables = append(r.variables, nameType{name, typ})
		return nil
	})
}

// list reads null or a comma-separated run of items between open and
// closer, stopping once the description holds more than MaxNames names.
func (s *scanner) list(r *rawDescription, open, closer byte, notList string, item func() error) error {
	if s.null() {
		return nil
	}
	if !s.eat(open) {
		return s.fail(notList)
	}
	s.space()
	if s.eat(closer) {
		return nil
	}
	for {
		if len(r.functions)+len(r.variables) > MaxNames {
			return fmt.Errorf("more than %d names", MaxNames)
		}
		if err := item(); err != nil {
			return err
		}
		s.space()
		if s.eat(closer) {
			return nil
		}
		if !s.eat(',') {
			return s.fail("missing ',' or '" + string(closer) + "'")
		}
		s.space()
	}
}

// skip skips one value of any kind ("m" and unknown keys).
func (s *scanner) skip() error {
	if s.i >= len(s.b) {
		return s.fail("want a value")
	}
	switch c := s.b[s.i]; {
	case c == '"':
		_, err := s.str()
		return err
	case c == '{' || c == '[':
		s.depth++
		if s.depth > maxDepth {
			return s.fail("nested too deep")
		}
		defer func() { s.depth-- }()
		closer := byte('}')
		if c == '[' {
			closer = ']'
		}
		s.i++
		s.space()
		if s.eat(closer) {
			return nil
		}
		for {
			if c == '{' {
				if _, err := s.str(); err != nil {
					return err
				}
				s.space()
				if !s.eat(':') {
					return s.fail("missing ':'")
				}
				s.space()
			}
			if err := s.skip(); err != nil {
				return err
			}
			s.space()
			if s.eat(closer) {
				return nil
			}
			if !s.eat(',') {
				return s.fail("missing ','")
			}
			s.space()
		}
	default:
		// A number or a literal: up to the next structural byte.
		start := s.i
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', ']', '}', ' ', '\t', '\r', '\n', ':', '"', '{', '[':
				if s.i == start {
					return s.fail("want a value")
				}
				return nil
			}
			s.i++
		}
		return nil
	}
}
