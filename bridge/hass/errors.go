package hass

import (
	"errors"
	"fmt"
)

// Sentinel errors. Compare them with errors.Is.
var (
	// ErrSection is wrapped by every error of ParseNode: the
	// `homeassistant:` section of a device cannot be used.
	ErrSection = errors.New("hass: invalid homeassistant section")
	// ErrDevice is returned by Build for a device whose id, topic level or
	// options cannot be used in discovery; the message gives the reason.
	ErrDevice = errors.New("hass: device not usable for discovery")
)

// Error is a problem in a `homeassistant:` section, at a line of the
// devices file. Its text is "file:line: what", the format of the bridge's
// own devices-file errors; it unwraps to ErrSection.
type Error struct {
	// File is the devices file, as named to ParseNode.
	File string
	// Line is the 1-based line of the offending key or value.
	Line int
	// Key is the offending key (the last one of its path), "" when the
	// problem is not one key's.
	Key string
	// Msg says where and what: "device 0123…: homeassistant: entities:
	// boiler: unknown key \"foo\" (known: …)".
	Msg string
}

// Error returns "file:line: what".
func (e *Error) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// Unwrap returns ErrSection.
func (e *Error) Unwrap() error { return ErrSection }
