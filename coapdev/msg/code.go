package msg

import "strconv"

// Type is the CoAP message type (2 bits of byte 0).
type Type uint8

// CoAP message types (RFC 7252 §3).
const (
	Confirmable     Type = 0 // CON
	NonConfirmable  Type = 1 // NON
	Acknowledgement Type = 2 // ACK
	Reset           Type = 3 // RST
)

// String returns CON, NON, ACK or RST.
func (t Type) String() string {
	switch t {
	case Confirmable:
		return "CON"
	case NonConfirmable:
		return "NON"
	case Acknowledgement:
		return "ACK"
	case Reset:
		return "RST"
	}
	return "Type(" + strconv.Itoa(int(t)) + ")"
}

// Code is a CoAP code byte: (class<<5)|detail, written c.dd.
type Code uint8

// CoAP codes used by the Spark protocol (spark-protocol.md §4.4, §4.5).
const (
	Empty  Code = 0x00 // 0.00
	GET    Code = 0x01 // 0.01
	POST   Code = 0x02 // 0.02
	PUT    Code = 0x03 // 0.03
	DELETE Code = 0x04 // 0.04

	Created  Code = 0x41 // 2.01
	Deleted  Code = 0x42 // 2.02
	Valid    Code = 0x43 // 2.03
	Changed  Code = 0x44 // 2.04
	Content  Code = 0x45 // 2.05
	Continue Code = 0x5F // 2.31

	BadRequest            Code = 0x80 // 4.00
	Unauthorized          Code = 0x81 // 4.01
	BadOption             Code = 0x82 // 4.02
	Forbidden             Code = 0x83 // 4.03
	NotFound              Code = 0x84 // 4.04
	MethodNotAllowed      Code = 0x85 // 4.05
	NotAcceptable         Code = 0x86 // 4.06
	RequestEntityTooLarge Code = 0x8D // 4.13

	InternalServerError Code = 0xA0 // 5.00
	NotImplemented      Code = 0xA1 // 5.01
	BadGateway          Code = 0xA2 // 5.02
	ServiceUnavailable  Code = 0xA3 // 5.03
	GatewayTimeout      Code = 0xA4 // 5.04
)

// Class returns the code class (0 request/empty, 2 success, 4 client error,
// 5 server error).
func (c Code) Class() uint8 { return uint8(c) >> 5 }

// Detail returns the two-digit detail of the code.
func (c Code) Detail() uint8 { return uint8(c) & 0x1F }

// IsRequest reports whether c is a method code (0.01..0.31).
func (c Code) IsRequest() bool { return c.Class() == 0 && c != Empty }

// IsResponse reports whether c is a response code (2.xx, 4.xx or 5.xx).
func (c Code) IsResponse() bool {
	switch c.Class() {
	case 2, 4, 5:
		return true
	}
	return false
}

// String returns the code as c.dd, e.g. "2.05".
func (c Code) String() string {
	d := c.Detail()
	return strconv.Itoa(int(c.Class())) + "." + string(rune('0'+d/10)) + string(rune('0'+d%10))
}
