package msg

import (
	"encoding/binary"
	"fmt"
)

// Hello is the payload of a device Hello (spark-protocol.md §4.4).
type Hello struct {
	ProductID      uint16 // 0xFFFF = none
	ProductVersion uint16 // product firmware version
	// Flags: bit0 the last OTA update succeeded; 0x02 diagnostics and 0x04
	// immediate updates supported (Photon ≥ 0.8 only).
	Flags byte
	// PlatformID is 0 Core, 6 Photon, 8 P1, 10 Electron; valid when
	// HasPlatform (the 8-byte Photon form).
	PlatformID  uint16
	HasPlatform bool
}

// Hello flag bits.
const (
	HelloOTASucceeded    byte = 0x01
	HelloDiagnostics     byte = 0x02
	HelloImmediateUpdate byte = 0x04
)

// ParseHello reads the fields present in a device Hello payload: 6 bytes on
// a Core (product id, version, reserved, flags), 8 on a Photon (+ platform
// id), all big-endian. Longer payloads are accepted and the extra bytes
// ignored (§4.4: do not rely on the length). Fewer than 6 bytes wrap
// ErrMalformed.
func ParseHello(p []byte) (Hello, error) {
	if len(p) < 6 {
		return Hello{}, fmt.Errorf("%w: hello payload of %d bytes", ErrMalformed, len(p))
	}
	h := Hello{
		ProductID:      binary.BigEndian.Uint16(p[0:2]),
		ProductVersion: binary.BigEndian.Uint16(p[2:4]),
		Flags:          p[5],
	}
	if len(p) >= 8 {
		h.PlatformID = binary.BigEndian.Uint16(p[6:8])
		h.HasPlatform = true
	}
	return h, nil
}

// Marshal returns the 6-byte Core form, or the 8-byte Photon form when
// HasPlatform. The reserved byte is 0.
func (h Hello) Marshal() []byte {
	b := make([]byte, 6, 8)
	binary.BigEndian.PutUint16(b[0:2], h.ProductID)
	binary.BigEndian.PutUint16(b[2:4], h.ProductVersion)
	b[5] = h.Flags
	if h.HasPlatform {
		b = binary.BigEndian.AppendUint16(b, h.PlatformID)
	}
	return b
}
