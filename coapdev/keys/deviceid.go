package keys

import (
	"encoding/hex"
	"fmt"
)

// DeviceID is the 12-byte STM32 unique id of a device, in wire order
// (spark-protocol.md §1.3).
type DeviceID [12]byte

// ParseDeviceID parses the 24-hex-digit form of a device id, in any case.
// Anything else (wrong length, non-hex) is an error wrapping ErrBadDeviceID.
func ParseDeviceID(s string) (DeviceID, error) {
	var d DeviceID
	if len(s) != 2*len(d) {
		return d, fmt.Errorf("%w: %q: %d characters, want 24 hex digits", ErrBadDeviceID, clip(s), len(s))
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return DeviceID{}, fmt.Errorf("%w: %q: not hex", ErrBadDeviceID, s)
	}
	return d, nil
}

// String returns the id as 24 lowercase hex digits, the form used in file
// names, topics and logs.
func (d DeviceID) String() string {
	return hex.EncodeToString(d[:])
}

// MarshalText implements encoding.TextMarshaler (24 lowercase hex digits).
func (d DeviceID) MarshalText() ([]byte, error) {
	b := make([]byte, 2*len(d))
	hex.Encode(b, d[:])
	return b, nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseDeviceID.
func (d *DeviceID) UnmarshalText(b []byte) error {
	id, err := ParseDeviceID(string(b))
	if err != nil {
		return err
	}
	*d = id
	return nil
}

// clip shortens user input quoted in an error message.
func clip(s string) string {
	const max = 40
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
