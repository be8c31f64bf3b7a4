package msg

import (
	"encoding/binary"
	"strings"
)

// Builders for every message the project sends (spark-protocol.md §4.4).
// S→D requests take a 1-byte token (§4.1); responses echo the request's
// token as given. Payload and argument slices are not copied.

// NewHello returns a Hello: NON POST h with the given token and payload
// (§2.4, §4.4). The server sends no token and no payload (Brewskey's form;
// the reference's 1-byte token is a quirk, §7.11); a device sends its Hello
// payload (Hello.Marshal) and no token.
func NewHello(id uint16, token []byte, payload []byte) Message {
	return Message{Type: NonConfirmable, Code: POST, ID: id, Token: token, Path: []string{"h"}, Payload: payload}
}

// NewDescribe returns a Describe request: CON GET d with a 1-byte token.
// flags != 0 adds the Photon's 1-byte Uri-Query (1 system, 2 application,
// 4 metrics); 0 sends no query, which a Photon reads as 3 and a Core
// ignores.
func NewDescribe(id uint16, token byte, flags byte) Message {
	m := Message{Type: Confirmable, Code: GET, ID: id, Token: []byte{token}, Path: []string{"d"}}
	if flags != 0 {
		m.Query = [][]byte{{flags}}
	}
	return m
}

// NewFunctionCall returns a FunctionCall: CON POST f/<name> with a 1-byte
// token and ALWAYS exactly one Uri-Query holding the raw argument, zero
// length when arg is empty (§4.4: the Core reads the byte after the name as
// the query header; §7.12: never split on '&'). Length limits are the
// caller's.
func NewFunctionCall(id uint16, token byte, name string, arg []byte) Message {
	if arg == nil {
		arg = []byte{}
	}
	return Message{
		Type: Confirmable, Code: POST, ID: id, Token: []byte{token},
		Path:  []string{"f", name},
		Query: [][]byte{arg},
	}
}

// NewVariableRequest returns a VariableRequest: CON GET v/<name> with a
// 1-byte token.
func NewVariableRequest(id uint16, token byte, name string) Message {
	return Message{Type: Confirmable, Code: GET, ID: id, Token: []byte{token}, Path: []string{"v", name}}
}

// NewEventToDevice returns the S→D delivery of an event (§4.4): NON, no
// token, Uri-Path e (or E when private), then the name split on '/' into one
// option per segment (the device joins them again), Max-Age = ttl always
// (minimal length), payload = data.
func NewEventToDevice(id uint16, name string, data []byte, ttl uint32, private bool) Message {
	return Message{
		Type: NonConfirmable, Code: POST, ID: id,
		Path:   append([]string{eventPrefix(private)}, strings.Split(name, "/")...),
		MaxAge: ttl, HasMaxAge: true,
		Payload: data,
	}
}

// NewEventFromDevice returns a D→S event as the firmware writes it (§4.4):
// type t (NON, or CON for a Photon WITH_ACK), no token, Uri-Path e/E, the
// whole name in ONE option, Max-Age omitted when ttl == 60, payload = data.
// Set MaxAgeLen = 3 on the result to write Max-Age the Core's way.
func NewEventFromDevice(t Type, id uint16, name string, data []byte, ttl uint32, private bool) Message {
	m := Message{Type: t, Code: POST, ID: id, Path: []string{eventPrefix(private), name}, Payload: data}
	if ttl != DefaultTTL {
		m.MaxAge, m.HasMaxAge = ttl, true
	}
	return m
}

func eventPrefix(private bool) string {
	if private {
		return "E"
	}
	return "e"
}

// NewSubscribe returns a device Subscribe (§4.4): CON GET e, no token; the
// prefix in one option (none when empty), Uri-Query "u" when mine, payload =
// deviceID when not empty.
func NewSubscribe(id uint16, prefix string, mine bool, deviceID string) Message {
	m := Message{Type: Confirmable, Code: GET, ID: id, Path: []string{"e"}}
	if prefix != "" {
		m.Path = []string{"e", prefix}
	}
	if mine {
		m.Query = [][]byte{[]byte("u")}
	}
	if deviceID != "" {
		m.Payload = []byte(deviceID)
	}
	return m
}

// NewGetTime returns a device GetTime request: CON GET t, 1-byte token.
func NewGetTime(id uint16, token byte) Message {
	return Message{Type: Confirmable, Code: GET, ID: id, Token: []byte{token}, Path: []string{"t"}}
}

// NewTimeResponse returns the answer to GetTime (§4.4): a piggybacked ACK
// 2.05 with the request's id and token and payload = unix as u32 BE. The
// Core reads the payload at fixed offsets 6..9, so token must be 1 byte.
func NewTimeResponse(id uint16, token []byte, unix uint32) Message {
	return NewAck(id, token, Content, binary.BigEndian.AppendUint32(nil, unix))
}

// NewPing returns a ping: CON 0.00, no token.
func NewPing(id uint16) Message {
	return Message{Type: Confirmable, Code: Empty, ID: id}
}

// NewEmptyAck returns an empty ACK with id and TKL 0 (§7.11: the
// reference's 1-byte token on empty ACKs is forbidden by RFC 7252).
func NewEmptyAck(id uint16) Message {
	return Message{Type: Acknowledgement, Code: Empty, ID: id}
}

// NewSignal returns SignalStart (on) or SignalStop: CON PUT s, 1-byte token,
// one Uri-Query of 1 raw byte 0x01/0x00 (§4.4; the Core reads it at offset 8).
func NewSignal(id uint16, token byte, on bool) Message {
	var b byte
	if on {
		b = 1
	}
	return Message{Type: Confirmable, Code: PUT, ID: id, Token: []byte{token}, Path: []string{"s"}, Query: [][]byte{{b}}}
}

// NewAck returns a piggybacked response: ACK with the request's id and
// token, the code and the payload.
func NewAck(id uint16, token []byte, code Code, payload []byte) Message {
	return Message{Type: Acknowledgement, Code: code, ID: id, Token: token, Payload: payload}
}

// NewResponse returns a separate response of type t (CON or NON) with a new
// message id and the request's token.
func NewResponse(t Type, id uint16, token []byte, code Code, payload []byte) Message {
	return Message{Type: t, Code: code, ID: id, Token: token, Payload: payload}
}
