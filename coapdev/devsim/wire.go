package devsim

import (
	"encoding/json"
	"strconv"
)

// The device's own byte writers for the two messages whose firmware layout
// the generic encoder (coapdev/msg) does not reproduce. Layouts from
// spark-protocol.md §4.4 and the device fixtures; they are what the firmware
// writes byte by byte.

// appendEvent appends an event from the device: NON POST, no token,
// Uri-Path 'e' (public) or 'E' (private), the whole name in ONE Uri-Path
// option (slashes included), Max-Age only when ttl != 60 and then always 3
// bytes (fixture "lake-depth/1": 33 00 54 60), and a payload marker whenever
// data is not nil, even for empty data. The name is cut to 63 bytes and the
// data to maxData, as the firmware's strnlen does.
func appendEvent(b []byte, id uint16, name string, data []byte, ttl uint32, private bool, maxData int) []byte {
	kind := byte('e')
	if private {
		kind = 'E'
	}
	b = append(b, 0x50, 0x02, byte(id>>8), byte(id), 0xb1, kind)
	name = truncate(name, maxEventName)
	// Uri-Path again: option delta 0; a name of 13..63 bytes takes the
	// 1-byte extended length (RFC 7252 §3.1).
	if n := len(name); n < 13 {
		b = append(b, byte(n))
	} else {
		b = append(b, 0x0d, byte(n-13))
	}
	b = append(b, name...)
	if ttl != 60 {
		if ttl > 0xffffff {
			ttl = 0xffffff
		}
		// Max-Age (14) after Uri-Path (11): delta 3, length 3.
		b = append(b, 0x33, byte(ttl>>16), byte(ttl>>8), byte(ttl))
	}
	if data != nil {
		if len(data) > maxData {
			data = data[:maxData]
		}
		b = append(b, 0xff)
		b = append(b, data...)
	}
	return b
}

// appendContent appends a piggybacked ACK 2.05 with a 1-byte token and the
// payload marker, always present (the firmware's Describe and variable
// replies; an empty string variable gives a bare marker).
func appendContent(b []byte, id uint16, token byte, payload []byte) []byte {
	b = append(b, 0x61, 0x45, byte(id>>8), byte(id), token, 0xff)
	return append(b, payload...)
}

// Describe flags (spark-protocol.md §4.4): the optional 1-byte Uri-Query of
// a Photon Describe.
const (
	describeSystem      = 1
	describeApplication = 2
	describeDefault     = describeSystem | describeApplication
)

// describeJSON builds the Describe answer. The Core writes
// {"f":[...],"v":{...}} by hand, without escaping (spark-protocol.md §7.18);
// a Photon escapes, honours the flags (0 = default 3) and adds "p" and "m"
// for the system part.
func describeJSON(q quirks, fns []Function, vars []Variable, flags byte) []byte {
	quote := func(b []byte, s string) []byte {
		s = truncate(s, maxFunctionName)
		if !q.photon {
			b = append(b, '"')
			b = append(b, s...)
			return append(b, '"')
		}
		j, _ := json.Marshal(s) // a string always marshals
		return append(b, j...)
	}
	if !q.photon || flags == 0 {
		flags = describeDefault
	}
	b := []byte{'{'}
	if flags&describeApplication != 0 {
		b = append(b, `"f":[`...)
		for i, f := range fns {
			if i > 0 {
				b = append(b, ',')
			}
			b = quote(b, f.Name)
		}
		b = append(b, `],"v":{`...)
		for i, v := range vars {
			if i > 0 {
				b = append(b, ',')
			}
			b = quote(b, v.Name)
			b = append(b, ':')
			b = strconv.AppendUint(b, uint64(v.Type), 10)
		}
		b = append(b, '}')
	}
	if q.photon && flags&describeSystem != 0 {
		if len(b) > 1 {
			b = append(b, ',')
		}
		b = append(b, `"p":`...)
		b = strconv.AppendUint(b, uint64(q.platformID), 10)
		b = append(b, `,"m":[]`...)
	}
	return append(b, '}')
}
