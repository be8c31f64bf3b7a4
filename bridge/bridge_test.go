package bridge

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
)

// TestStory is the mission's story against the real broker and a simulated
// heater: availability, retained values, a call and its result, then the
// device goes away.
func TestStory(t *testing.T) {
	h := newHarness(t, Config{})
	u := h.newUser()
	h.startBridge()
	heater, dev := h.addHeater(heaterID)
	id := dev.id

	u.waitPayload("spark/bridge/state", "online")
	dev.connect()
	if m := u.waitPayload(topicOf(id, "availability"), "online"); m.retained {
		t.Errorf("live availability came retained")
	}
	u.waitPayload(topicOf(id, "var", "temp"), "48.5")
	u.waitPayload(topicOf(id, "var", "state"), "0")
	if p, ok := h.retained(topicOf(id, "var", "temp")); !ok || p != "48.5" {
		t.Errorf("retained temp = %q, %v; want 48.5", p, ok)
	}

	// A raw call.
	u.publish(topicOf(id, "fn", "heater"), "on")
	r := decodeResult(t, u.wait(topicOf(id, "fn", "heater", "result"), nil).payload)
	if r.ReturnValue == nil || *r.ReturnValue != 1 || r.Arg != "on" || r.Error != "" {
		t.Errorf("result = %+v, want return_value 1 for arg on", r)
	}
	if !heater.On() {
		t.Error("heater is off after on")
	}
	if p, ok := h.retained(topicOf(id, "fn", "heater", "result")); !ok || p != `{"arg":"on","return_value":1}` {
		t.Errorf("retained result = %q, %v", p, ok)
	}

	// A JSON call with a transaction; a get shows the new state.
	u.publish(topicOf(id, "fn", "heater", "call"), `{"arg":"off","transaction":"t-1"}`)
	r = u.waitResult(topicOf(id, "fn", "heater", "result"), "t-1")
	if r.ReturnValue == nil || *r.ReturnValue != 0 {
		t.Errorf("result = %+v, want return_value 0", r)
	}
	u.publish(topicOf(id, "var", "state", "get"), "")
	waitFor(t, "state read after get", func() bool { return h.br.Stats().Gets == 1 && h.br.Stats().Reads >= 3 })

	// The inventory lists the device.
	m := u.wait("spark/bridge/devices", func(p string) bool {
		var inv []InventoryDevice
		return json.Unmarshal([]byte(p), &inv) == nil && len(inv) == 1 && inv[0].Online && inv[0].Functions != nil
	})
	var inv []InventoryDevice
	if err := json.Unmarshal([]byte(m.payload), &inv); err != nil {
		t.Fatal(err)
	}
	if got := inv[0]; got.ID != id || got.Kind != "core" || len(got.Functions) != 1 || got.Variables["temp"] != "double" {
		t.Errorf("inventory = %+v", got)
	}

	dev.disconnect()
	u.waitPayload(topicOf(id, "availability"), "offline")
	st := h.br.Stats()
	if st.CallsOK != 2 || st.CallsError != 0 {
		t.Errorf("stats = %+v", st)
	}
}

// TestResponseTopic: an MQTT 5 request with a response topic and
// correlation data gets its result there too.
func TestResponseTopic(t *testing.T) {
	h := newHarness(t, Config{})
	h.startBridge()
	_, dev := h.addHeater(heaterID)
	dev.connect()

	c := h.brk.NewClient()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	defer func() { _ = c.Close(ctx) }()
	got := make(chan broker.Message, 4)
	if _, err := c.Subscribe(ctx, "replies/me", 1, func(m broker.Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, topic, payload, want string
	}{
		{"call", topicOf(dev.id, "fn", "heater"), "on", `{"arg":"on","return_value":1}`},
		{"unknown function", topicOf(dev.id, "fn", "nope"), "on", `{"arg":"on","error":"unknown function"}`},
		{"get", topicOf(dev.id, "var", "temp", "get"), "", `{"var":"temp","value":"48.5"}`},
		{"get unknown", topicOf(dev.id, "var", "nope", "get"), "", `{"var":"nope","error":"unknown variable"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			corr := []byte("corr-" + tc.name)
			err := c.Publish(ctx, broker.Message{Topic: tc.topic, Payload: []byte(tc.payload), QoS: 1, ResponseTopic: "replies/me", CorrelationData: corr})
			if err != nil {
				t.Fatal(err)
			}
			select {
			case m := <-got:
				if string(m.Payload) != tc.want || string(m.CorrelationData) != string(corr) {
					t.Errorf("response = %s (corr %q), want %s (corr %q)", m.Payload, m.CorrelationData, tc.want, corr)
				}
			case <-time.After(waitLong):
				t.Fatal("no response")
			}
		})
	}
}

// TestReplacedSession: the device connects again while its old session is
// still up (a new TCP connection after a network change): the newer
// session wins, availability ends online, calls go to the new session.
func TestReplacedSession(t *testing.T) {
	h := newHarness(t, Config{})
	u := h.newUser()
	h.startBridge()
	_, first := h.addHeater(heaterID)
	heater2, second := h.addHeater(heaterID) // a second simulator with the same id and key
	first.connect()
	u.waitPayload(topicOf(first.id, "availability"), "online")
	second.connect()
	waitFor(t, "old connection closed by the server", func() bool {
		select {
		case <-first.done:
			return true
		default:
			return false
		}
	})
	u.publish(topicOf(first.id, "fn", "heater", "call"), `{"arg":"on","transaction":"r"}`)
	if r := u.waitResult(topicOf(first.id, "fn", "heater", "result"), "r"); r.ReturnValue == nil || *r.ReturnValue != 1 || !heater2.On() {
		t.Errorf("result = %+v, second heater on %v", r, heater2.On())
	}
	if m, _ := u.last(topicOf(first.id, "availability")); m.payload != "online" {
		t.Errorf("availability ends %q, want online", m.payload)
	}
	if p, _ := h.retained(topicOf(first.id, "availability")); p != "online" {
		t.Errorf("retained availability %q, want online", p)
	}
}

// TestRepublish: after the broker lost its retained messages (an external
// broker restarted without persistence), Republish puts the bridge's state
// back: bridge state, availability, values, held calls, inventory.
func TestRepublish(t *testing.T) {
	h := newHarness(t, Config{})
	u := h.newUser()
	h.startBridge()
	_, heater := h.addHeater(heaterID)
	other := h.addDevice(devsim.Config{DeviceID: testID(2), Functions: []devsim.Function{fn("f", func(context.Context, string) int32 { return 1 })}})
	heater.connect()
	u.waitPayload(topicOf(heater.id, "var", "temp"), "48.5")
	other.connect()
	other.disconnect()
	u.waitPayload(topicOf(other.id, "availability"), "offline")
	u.publish(topicOf(other.id, "fn", "f", "call"), `{"arg":"x","transaction":"p"}`)
	u.wait(topicOf(other.id, "fn", "f", "result"), func(p string) bool { return strings.Contains(p, `"queued":true`) })

	topics := []string{"spark/bridge/state", "spark/bridge/devices", topicOf(heater.id, "availability"), topicOf(heater.id, "var", "temp"),
		topicOf(other.id, "availability"), topicOf(other.id, "fn", "f", "pending")}
	for _, tp := range topics { // the broker forgets
		h.publishRaw(tp, nil, true)
		if _, ok := h.retained(tp); ok {
			t.Fatalf("%s still retained", tp)
		}
	}
	if err := h.br.Republish(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"spark/bridge/state": "online", topicOf(heater.id, "availability"): "online", topicOf(heater.id, "var", "temp"): "48.5",
		topicOf(other.id, "availability"): "offline",
	}
	for _, tp := range topics {
		p, ok := h.retained(tp)
		if !ok || (want[tp] != "" && p != want[tp]) {
			t.Errorf("%s: retained %q, %v; want %q", tp, p, ok, want[tp])
		}
	}
	if p, _ := h.retained(topicOf(other.id, "fn", "f", "pending")); pendingJSON(t, p).Arg != "x" {
		t.Errorf("pending = %s", p)
	}
}
