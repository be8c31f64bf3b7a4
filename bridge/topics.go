package bridge

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Topic levels under the base topic (DESIGN.md, MQTT contract).
const (
	lvlBridge       = "bridge"
	lvlEvents       = "events"
	lvlState        = "state"
	lvlDevices      = "devices"
	lvlAvailability = "availability"
	lvlVar          = "var"
	lvlFn           = "fn"
	lvlEvent        = "event"
	lvlSignal       = "signal"
	lvlGet          = "get"
	lvlCall         = "call"
	lvlResult       = "result"
	lvlPending      = "pending"
	lvlRemove       = "remove"
)

// maxLevel bounds one topic level we build from a device name, a function,
// variable or event name (the protocol's names are at most 64 bytes).
const maxLevel = 256

// ValidLevel reports whether s can be one MQTT topic level that the bridge
// publishes and subscribes under: not empty, valid UTF-8, at most 256
// bytes, and without '+', '#', '/' or NUL. Device names, function and
// variable names must pass it; event names are checked level by level.
func ValidLevel(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty", ErrTopicLevel)
	case len(s) > maxLevel:
		return fmt.Errorf("%w: longer than %d bytes", ErrTopicLevel, maxLevel)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %q is not UTF-8", ErrTopicLevel, s)
	case strings.ContainsAny(s, "+#/\x00"):
		return fmt.Errorf("%w: %q contains one of + # / NUL", ErrTopicLevel, s)
	}
	return nil
}

// validEventName checks an event name, whose '/' become topic levels:
// every level must be valid except that empty levels are allowed inside
// (MQTT allows them) — but not a wholly empty name.
func validEventName(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty event name", ErrTopicLevel)
	}
	if len(s) > maxLevel || !utf8.ValidString(s) || strings.ContainsAny(s, "+#\x00") {
		return fmt.Errorf("%w: event name %q", ErrTopicLevel, s)
	}
	return nil
}

// isSystemEvent reports whether an event name is a system event
// (spark-protocol.md §4: names starting with "spark" or "particle", any case).
func isSystemEvent(name string) bool {
	return hasPrefixFold(name, "spark") || hasPrefixFold(name, "particle")
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// topics builds the bridge's topics under one base.
type topics struct{ base string }

func (t topics) join(levels ...string) string {
	n := len(t.base)
	for _, l := range levels {
		n += 1 + len(l)
	}
	var sb strings.Builder
	sb.Grow(n) // one allocation: an event's topic is built for every event
	sb.WriteString(t.base)
	for _, l := range levels {
		sb.WriteByte('/')
		sb.WriteString(l)
	}
	return sb.String()
}

func (t topics) state() string                { return t.join(lvlBridge, lvlState) }
func (t topics) inventory() string            { return t.join(lvlBridge, lvlDevices) }
func (t topics) availability(d string) string { return t.join(d, lvlAvailability) }
func (t topics) variable(d, name string) string {
	return t.join(d, lvlVar, name)
}
func (t topics) result(d, fn string) string  { return t.join(d, lvlFn, fn, lvlResult) }
func (t topics) pending(d, fn string) string { return t.join(d, lvlFn, fn, lvlPending) }
func (t topics) event(d, name string) string { return t.join(d, lvlEvent, name) }

// Subscription filters.
func (t topics) filterCall() string         { return t.join("+", lvlFn, "+") }
func (t topics) filterCallJSON() string     { return t.join("+", lvlFn, "+", lvlCall) }
func (t topics) filterGet() string          { return t.join("+", lvlVar, "+", lvlGet) }
func (t topics) filterSignal() string       { return t.join("+", lvlSignal) }
func (t topics) filterEvents() string       { return t.join(lvlEvents, "#") }
func (t topics) filterPending() string      { return t.join("+", lvlFn, "+", lvlPending) }
func (t topics) filterAvailability() string { return t.join("+", lvlAvailability) }
func (t topics) filterRemove() string       { return t.join("+", lvlRemove) }

// route is what an inbound topic asks for.
type route uint8

const (
	routeNone         route = iota
	routeCall               // base/D/fn/NAME: raw argument
	routeCallJSON           // base/D/fn/NAME/call: JSON request
	routeGet                // base/D/var/NAME/get
	routeSignal             // base/D/signal
	routeEvent              // base/events/NAME...: event for devices
	routePending            // base/D/fn/NAME/pending: retained held call (start only)
	routeAvailability       // base/D/availability: retained (start only)
	routeInventory          // base/bridge/devices: retained (start only)
	routeRemove             // base/D/remove: remove the device from Home Assistant
)

func (r route) String() string {
	switch r {
	case routeCall:
		return "call"
	case routeCallJSON:
		return "call_json"
	case routeGet:
		return "get"
	case routeSignal:
		return "signal"
	case routeEvent:
		return "event"
	case routePending:
		return "pending"
	case routeAvailability:
		return "availability"
	case routeInventory:
		return "inventory"
	case routeRemove:
		return "remove"
	}
	return "none"
}

// parse classifies an inbound topic. d is the device level, name the
// function, variable or event name. It never panics; a topic it does not
// understand is routeNone.
func (t topics) parse(topic string) (r route, d, name string) {
	rest, ok := strings.CutPrefix(topic, t.base+"/")
	if !ok {
		return routeNone, "", ""
	}
	if ev, ok := strings.CutPrefix(rest, lvlEvents+"/"); ok {
		if validEventName(ev) != nil {
			return routeNone, "", ""
		}
		return routeEvent, "", ev
	}
	lv := strings.Split(rest, "/")
	if len(lv) > 5 {
		return routeNone, "", ""
	}
	for _, l := range lv {
		if ValidLevel(l) != nil {
			return routeNone, "", ""
		}
	}
	d = lv[0]
	switch {
	case len(lv) == 2 && d == lvlBridge && lv[1] == lvlDevices:
		return routeInventory, "", ""
	case d == lvlBridge || d == lvlEvents:
		return routeNone, "", ""
	case len(lv) == 2 && lv[1] == lvlSignal:
		return routeSignal, d, ""
	case len(lv) == 2 && lv[1] == lvlAvailability:
		return routeAvailability, d, ""
	case len(lv) == 2 && lv[1] == lvlRemove:
		return routeRemove, d, ""
	case len(lv) == 3 && lv[1] == lvlFn:
		return routeCall, d, lv[2]
	case len(lv) == 4 && lv[1] == lvlFn && lv[3] == lvlCall:
		return routeCallJSON, d, lv[2]
	case len(lv) == 4 && lv[1] == lvlFn && lv[3] == lvlPending:
		return routePending, d, lv[2]
	case len(lv) == 4 && lv[1] == lvlVar && lv[3] == lvlGet:
		return routeGet, d, lv[2]
	}
	return routeNone, "", ""
}
