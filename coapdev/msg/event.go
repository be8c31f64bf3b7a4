package msg

import (
	"fmt"
	"strings"
)

// DefaultTTL is the event TTL in seconds when Max-Age is missing or 0
// (spark-protocol.md §4.4, §7.16).
const DefaultTTL = 60

// MaxEventName bounds an event name or subscription prefix in bytes (the
// devices send at most 63, §4.4).
const MaxEventName = 64

// Event is a published event in either direction.
type Event struct {
	Name    string
	Data    []byte // nil: no data
	TTL     uint32 // seconds
	Private bool   // Uri-Path "E" rather than "e"
}

// ParseEvent reads an Event from a POST e/E message (Kind() == KindEvent).
// The name is all Uri-Path segments after the first joined with '/', which
// reads both the device form (one option with slashes) and the split S→D
// form (§4.4). TTL is Max-Age, or DefaultTTL when it is missing or 0.
// Data aliases m.Payload.
//
// Errors wrap ErrMalformed: not an event, an empty name, or a name over
// MaxEventName bytes.
func ParseEvent(m Message) (Event, error) {
	if m.Code != POST || len(m.Path) < 2 || (m.Path[0] != "e" && m.Path[0] != "E") {
		return Event{}, fmt.Errorf("%w: event: not POST e or E", ErrMalformed)
	}
	name := joinPath(m.Path[1:])
	if name == "" || len(name) > MaxEventName {
		return Event{}, fmt.Errorf("%w: event: name of %d bytes", ErrMalformed, len(name))
	}
	e := Event{Name: name, Data: m.Payload, TTL: DefaultTTL, Private: m.Path[0] == "E"}
	if m.HasMaxAge && m.MaxAge != 0 {
		e.TTL = m.MaxAge
	}
	return e, nil
}

// joinPath joins segments with '/' without allocating for a single one.
func joinPath(segs []string) string {
	if len(segs) == 1 {
		return segs[0]
	}
	return strings.Join(segs, "/")
}

// Subscription is a device's Subscribe (§4.4).
type Subscription struct {
	// Prefix is the event-name prefix; empty only with MineOnly or DeviceID.
	Prefix string
	// MineOnly: Uri-Query "u", only events from the owner's devices.
	MineOnly bool
	// DeviceID: the optional payload, a 24-hex device id to filter on,
	// as the device sent it.
	DeviceID string
}

// ParseSubscribe reads a Subscription from a GET e message
// (Kind() == KindSubscribe). The prefix is the Uri-Path segments after the
// first joined with '/'; MineOnly is set by a Uri-Query "u"; the payload,
// if any, is the device id.
//
// Errors wrap ErrMalformed: not GET e, a prefix over MaxEventName bytes, a
// payload that is not 24 hex digits, or no prefix, no "u" and no device id
// (the firehose, which §4.4 forbids).
func ParseSubscribe(m Message) (Subscription, error) {
	if m.Code != GET || len(m.Path) < 1 || m.Path[0] != "e" {
		return Subscription{}, fmt.Errorf("%w: subscribe: not GET e", ErrMalformed)
	}
	var s Subscription
	if len(m.Path) > 1 {
		s.Prefix = joinPath(m.Path[1:])
	}
	if len(s.Prefix) > MaxEventName {
		return Subscription{}, fmt.Errorf("%w: subscribe: prefix of %d bytes", ErrMalformed, len(s.Prefix))
	}
	for _, q := range m.Query {
		if string(q) == "u" {
			s.MineOnly = true
		}
	}
	if len(m.Payload) > 0 {
		if !isHex(m.Payload, 24) {
			return Subscription{}, fmt.Errorf("%w: subscribe: device id of %d bytes", ErrMalformed, len(m.Payload))
		}
		s.DeviceID = string(m.Payload)
	}
	if s.Prefix == "" && !s.MineOnly && s.DeviceID == "" {
		return Subscription{}, fmt.Errorf("%w: subscribe: firehose", ErrMalformed)
	}
	return s, nil
}

func isHex(b []byte, n int) bool {
	if len(b) != n {
		return false
	}
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
		default:
			return false
		}
	}
	return true
}
