package msg

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
)

// VarType is a variable type code of the Describe JSON (ASN.1 tag numbers,
// spark-protocol.md §4.4).
type VarType uint8

// Variable types.
const (
	VarBool   VarType = 1 // 1 byte, 0/1
	VarInt    VarType = 2 // int32, 4 bytes big-endian
	VarString VarType = 4 // raw bytes, no terminator
	VarDouble VarType = 9 // IEEE-754, 8 bytes LITTLE-endian
)

// String returns bool, int, string, double or the number.
func (t VarType) String() string {
	switch t {
	case VarBool:
		return "bool"
	case VarInt:
		return "int"
	case VarString:
		return "string"
	case VarDouble:
		return "double"
	}
	return "VarType(" + strconv.Itoa(int(t)) + ")"
}

// Value is a decoded variable value; the field matching Type is set.
type Value struct {
	Type   VarType
	Bool   bool
	Int    int32
	Double float64
	String string
}

// DecodeValue decodes a variable value in the encoding of type t (§4.4:
// int32 big-endian, double little-endian, bool one byte). An unknown type is
// read as a string (§4.4: "If unknown, treat the value as a string"), and
// the result has Type VarString. Errors wrap ErrMalformed: a bool that is
// not 1 byte, an int not 4, a double not 8.
func DecodeValue(t VarType, b []byte) (Value, error) {
	switch t {
	case VarBool:
		if len(b) != 1 {
			return Value{}, fmt.Errorf("%w: bool value of %d bytes", ErrMalformed, len(b))
		}
		return Value{Type: VarBool, Bool: b[0] != 0}, nil
	case VarInt:
		if len(b) != 4 {
			return Value{}, fmt.Errorf("%w: int value of %d bytes", ErrMalformed, len(b))
		}
		return Value{Type: VarInt, Int: int32(binary.BigEndian.Uint32(b))}, nil
	case VarDouble:
		if len(b) != 8 {
			return Value{}, fmt.Errorf("%w: double value of %d bytes", ErrMalformed, len(b))
		}
		// spark-protocol.md §7.15: the double is little-endian, unlike int32.
		return Value{Type: VarDouble, Double: math.Float64frombits(binary.LittleEndian.Uint64(b))}, nil
	}
	return Value{Type: VarString, String: string(b)}, nil
}

// Encode returns the wire encoding of v by its Type (what a device sends);
// an unknown Type encodes String.
func (v Value) Encode() []byte {
	switch v.Type {
	case VarBool:
		if v.Bool {
			return []byte{1}
		}
		return []byte{0}
	case VarInt:
		return binary.BigEndian.AppendUint32(nil, uint32(v.Int))
	case VarDouble:
		return binary.LittleEndian.AppendUint64(nil, math.Float64bits(v.Double))
	}
	return []byte(v.String)
}

// Text returns v as MQTT payload text: "48.5" (shortest float, 'g'), "1",
// "true"/"false", or the raw string.
func (v Value) Text() string {
	switch v.Type {
	case VarBool:
		return strconv.FormatBool(v.Bool)
	case VarInt:
		return strconv.FormatInt(int64(v.Int), 10)
	case VarDouble:
		return strconv.FormatFloat(v.Double, 'g', -1, 64)
	}
	return v.String
}

// DecodeReturn decodes a function return value: int32 big-endian (§4.4
// FunctionCall). Another length wraps ErrMalformed.
func DecodeReturn(b []byte) (int32, error) {
	if len(b) != 4 {
		return 0, fmt.Errorf("%w: function return of %d bytes", ErrMalformed, len(b))
	}
	return int32(binary.BigEndian.Uint32(b)), nil
}

// EncodeReturn returns the wire form of a function return value (int32 BE).
func EncodeReturn(r int32) []byte {
	return binary.BigEndian.AppendUint32(nil, uint32(r))
}
