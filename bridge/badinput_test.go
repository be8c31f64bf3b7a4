package bridge

import (
	"context"
	"strings"
	"testing"

	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
)

// TestBadInput: every bad request gets a clear error result (not retained)
// or one log line; nothing else is affected: the heater keeps working.
func TestBadInput(t *testing.T) {
	h := newHarness(t, Config{})
	u := h.newUser()
	h.startBridge()
	heater, dev := h.addHeater(heaterID)
	dev.connect()
	id := dev.id
	long := strings.Repeat("x", 64)

	for _, tc := range []struct {
		name, topic, payload string
		resultTopic          string
		want                 resultJSON
	}{
		{"unknown device id", "spark/ffffffffffffffffffffffff/fn/heater", "on", "spark/ffffffffffffffffffffffff/fn/heater/result",
			resultJSON{Arg: "on", Error: errUnknownDevice}},
		{"unknown device name", "spark/kettle/fn/heater/call", `{"arg":"on","transaction":"k"}`, "spark/kettle/fn/heater/result",
			resultJSON{Arg: "on", Error: errUnknownDevice, Transaction: "k"}},
		{"unknown function", topicOf(id, "fn", "boil"), "now", topicOf(id, "fn", "boil", "result"),
			resultJSON{Arg: "now", Error: errUnknownFunction}},
		{"function name over any limit", topicOf(id, "fn", long), "", topicOf(id, "fn", long, "result"),
			resultJSON{Error: errUnknownFunction}},
		{"argument too long", topicOf(id, "fn", "heater"), long, topicOf(id, "fn", "heater", "result"),
			resultJSON{Arg: long, Error: errArgTooLong}},
		{"invalid JSON", topicOf(id, "fn", "heater", "call"), `{"arg":`, topicOf(id, "fn", "heater", "result"),
			resultJSON{Error: "invalid request: empty or truncated JSON"}},
		{"JSON syntax", topicOf(id, "fn", "heater", "call"), `{"arg" "on"}`, topicOf(id, "fn", "heater", "result"),
			resultJSON{Error: "invalid request: JSON syntax error at byte 8: invalid character '\"' after object key"}},
		{"not an object", topicOf(id, "fn", "heater", "call"), `["on"]`, topicOf(id, "fn", "heater", "result"),
			resultJSON{Error: "invalid request: want a JSON object"}},
		{"arg not a string", topicOf(id, "fn", "heater", "call"), `{"arg":1,"transaction":"a"}`, topicOf(id, "fn", "heater", "result"),
			resultJSON{Error: `invalid request: "arg" must be a string, not a JSON number`, Transaction: "a"}},
		{"unknown key", topicOf(id, "fn", "heater", "call"), `{"arg":"on","tll":60,"transaction":"b"}`, topicOf(id, "fn", "heater", "result"),
			resultJSON{Error: `invalid request: unknown field "tll"`, Transaction: "b"}},
		{"trailing data", topicOf(id, "fn", "heater", "call"), `{"arg":"on"} {}`, topicOf(id, "fn", "heater", "result"),
			resultJSON{Error: "invalid request: data after the JSON object"}},
		{"negative ttl", topicOf(id, "fn", "heater", "call"), `{"arg":"on","ttl":-5,"transaction":"c"}`, topicOf(id, "fn", "heater", "result"),
			resultJSON{Error: `invalid request: "ttl" is negative`, Transaction: "c"}},
		{"absurd ttl", topicOf(id, "fn", "heater", "call"), `{"arg":"on","ttl":1e12,"transaction":"d"}`, topicOf(id, "fn", "heater", "result"),
			resultJSON{Error: `invalid request: "ttl" 1e12 is not a whole number of seconds from 0 to 604800`, Transaction: "d"}},
		{"ttl over the maximum", topicOf(id, "fn", "heater", "call"), `{"arg":"on","ttl":604801,"transaction":"e"}`, topicOf(id, "fn", "heater", "result"),
			resultJSON{Error: `invalid request: "ttl" 604801 is over the maximum of 604800 seconds`, Transaction: "e"}},
		{"fractional ttl", topicOf(id, "fn", "heater", "call"), `{"arg":"on","ttl":1.5,"transaction":"f"}`, topicOf(id, "fn", "heater", "result"),
			resultJSON{Error: `invalid request: "ttl" 1.5 is not a whole number of seconds from 0 to 604800`, Transaction: "f"}},
		{"ttl as a string", topicOf(id, "fn", "heater", "call"), `{"arg":"on","ttl":"60","transaction":"g"}`, topicOf(id, "fn", "heater", "result"),
			resultJSON{Error: `invalid request: "ttl" must be a number of seconds`, Transaction: "g"}},
		{"transaction an object", topicOf(id, "fn", "heater", "call"), `{"arg":"on","transaction":{}}`, topicOf(id, "fn", "heater", "result"),
			resultJSON{Arg: "on", Error: `invalid request: "transaction" must be a string or a number of at most 256 bytes`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := u.count(tc.resultTopic, nil)
			u.publish(tc.topic, tc.payload)
			waitFor(t, "result", func() bool { return u.count(tc.resultTopic, nil) > before })
			m, _ := u.last(tc.resultTopic)
			got := decodeResult(t, m.payload)
			if got.Error != tc.want.Error || got.Transaction != tc.want.Transaction || (tc.want.Arg != "" && got.Arg != tc.want.Arg) {
				t.Errorf("result = %+v\nwant     %+v", got, tc.want)
			}
			if p, ok := h.retained(tc.resultTopic); ok && strings.Contains(p, tc.want.Error) {
				t.Errorf("error result retained: %s", p)
			}
		})
	}

	t.Run("bad topics and payloads are logged and counted", func(t *testing.T) {
		inv := h.br.Stats().Invalid
		u.publish(topicOf(id, "signal"), "sparkle")
		u.publish(topicOf("nosuch", "signal"), "on")
		u.publish(topicOf("nosuch", "var", "temp", "get"), "")
		waitFor(t, "counted", func() bool { return h.br.Stats().Invalid == inv+3 })
		reads := h.br.Stats().ReadErrors
		u.publish(topicOf(id, "var", "nosuch", "get"), "")
		waitFor(t, "unknown variable read counted", func() bool { return h.br.Stats().ReadErrors == reads+1 })
	})

	// The heater still works, and got none of the bad calls.
	u.publish(topicOf(id, "fn", "heater", "call"), `{"arg":"on","transaction":"ok"}`)
	if r := u.waitResult(topicOf(id, "fn", "heater", "result"), "ok"); r.ReturnValue == nil || *r.ReturnValue != 1 || !heater.On() {
		t.Errorf("good call after bad input: %+v", r)
	}
	if n := dev.Stats().Calls; n != 1 {
		t.Errorf("device calls = %d, want 1 (bad calls must not reach it)", n)
	}
}

// TestRetainedCommandIgnored: a command published with retain runs once,
// live; a restarted bridge sees it retained and does not run it again.
func TestRetainedCommandIgnored(t *testing.T) {
	h := newHarness(t, Config{})
	u := h.newUser()
	h.startBridge()
	_, dev := h.addHeater(heaterID)
	dev.connect()
	tok := u.c.Publish(topicOf(dev.id, "fn", "heater"), 1, true, "on")
	tok.Wait()
	u.wait(topicOf(dev.id, "fn", "heater", "result"), nil)
	dev.disconnect()
	h.stopBridge()
	h.startBridge()
	dev.connect()
	waitFor(t, "retained command counted", func() bool { return h.br.Stats().Invalid == 1 })
	if n := dev.Stats().Calls; n != 1 {
		t.Errorf("device calls = %d, want 1", n)
	}
	u.c.Publish(topicOf(dev.id, "fn", "heater"), 1, true, "").Wait()
}

// TestHeldCallUnknownFunction: a call for an offline device is checked
// against its last description.
func TestHeldCallUnknownFunction(t *testing.T) {
	h := newHarness(t, Config{})
	u := h.newUser()
	h.startBridge()
	dev := h.addDevice(devsim.Config{DeviceID: testID(2), Functions: []devsim.Function{fn("f", func(context.Context, string) int32 { return 1 })}})
	dev.connect()
	dev.disconnect()
	u.waitPayload(topicOf(dev.id, "availability"), "offline")
	u.publish(topicOf(dev.id, "fn", "g", "call"), `{"transaction":"g"}`)
	if r := u.waitResult(topicOf(dev.id, "fn", "g", "result"), "g"); r.Error != errUnknownFunction {
		t.Errorf("result = %+v", r)
	}
	u.publish(topicOf(dev.id, "fn", "f", "call"), `{"transaction":"f"}`)
	u.wait(topicOf(dev.id, "fn", "f", "result"), func(p string) bool { return strings.Contains(p, `"queued":true`) })
}
