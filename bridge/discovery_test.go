package bridge

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/go-cmp/cmp"

	"github.com/spark2mqtt/spark2mqtt/bridge/hass"
	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// discoveryConfig is a Config with discovery on and a re-announce delay
// long enough that 100 flaps of Home Assistant's status fit in it.
func discoveryConfig() Config {
	return Config{
		Discovery: true, Version: "test",
		DiscoveryDelayMin: 300 * time.Millisecond, DiscoveryDelayMax: 400 * time.Millisecond,
		PollInterval: -1,
	}
}

// genericDevice registers a Core with a function and a variable of every
// type.
func genericDevice(h *harness, i int) *device {
	return h.addDevice(devsim.Config{
		DeviceID:  testID(i),
		Functions: []devsim.Function{fn("heater", func(context.Context, string) int32 { return 1 })},
		Variables: genericVars(true),
	})
}

func genericVars(withState bool) []devsim.Variable {
	vs := []devsim.Variable{
		{Name: "temp", Type: msg.VarDouble, Get: func() msg.Value { return msg.Value{Type: msg.VarDouble, Double: 48.5} }},
		{Name: "ready", Type: msg.VarBool, Get: func() msg.Value { return msg.Value{Type: msg.VarBool, Bool: true} }},
		{Name: "label", Type: msg.VarString, Get: func() msg.Value { return msg.Value{Type: msg.VarString, String: "boiler"} }},
	}
	if withState {
		vs = append(vs, intVar("state", func() int32 { return 1 }))
	}
	return vs
}

func configTopic(id string) string { return hass.ConfigTopic("homeassistant", id) }

// components decodes the component ids and platforms of a config payload.
func components(t testing.TB, p string) map[string]string {
	t.Helper()
	var root struct {
		Components map[string]map[string]any `json:"components"`
	}
	if err := json.Unmarshal([]byte(p), &root); err != nil {
		t.Fatalf("config %q: %v", p, err)
	}
	out := map[string]string{}
	for id, c := range root.Components {
		p, _ := c["platform"].(string)
		if len(c) == 1 {
			p = "removed " + p
		}
		out[id] = p
	}
	return out
}

func hasComponent(id string) func(string) bool {
	return func(p string) bool {
		var root struct {
			Components map[string]json.RawMessage `json:"components"`
		}
		_ = json.Unmarshal([]byte(p), &root)
		_, ok := root.Components[id]
		return ok
	}
}

// TestDiscoveryLifecycle: a device connects → its config appears (retained);
// Home Assistant says online → it is announced again, and 100 flaps give one
// re-announcement; the firmware drops a variable and describes again → that
// component is removed (once as a platform-only stub, then left out); a
// remove request → the empty config; the device's next session → announced
// again.
func TestDiscoveryLifecycle(t *testing.T) {
	h := newHarness(t, discoveryConfig())
	u := h.newUser("homeassistant/#", "spark/#")
	br := h.startBridge()
	dev := genericDevice(h, 1)
	dev.connect()
	topic := configTopic(dev.id)

	first := u.wait(topic, hasComponent("var_state"))
	want := map[string]string{
		"fn_heater": "text", "var_temp": "sensor", "var_state": "sensor", "var_ready": "binary_sensor", "var_label": "sensor",
		"sys_connection": "binary_sensor", "sys_find": "button", "sys_find_stop": "button",
	}
	if d := cmp.Diff(want, components(t, first.payload)); d != "" {
		t.Errorf("components (-want +got):\n%s", d)
	}
	if p, ok := h.retained(topic); !ok || p != first.payload {
		t.Errorf("retained config %q, %v; want the announced one", p, ok)
	}
	var root struct {
		Origin map[string]string `json:"origin"`
	}
	_ = json.Unmarshal([]byte(first.payload), &root)
	if root.Origin["sw_version"] != "test" || root.Origin["name"] != "spark2mqtt" {
		t.Errorf("origin %v", root.Origin)
	}

	// Home Assistant restarts: one re-announcement, however often it says
	// so while one is pending.
	n := u.count(topic, nil)
	u.publish("homeassistant/status", "online")
	waitFor(t, "re-announcement", func() bool { return u.count(topic, nil) == n+1 })
	if last, _ := u.last(topic); last.payload != first.payload {
		t.Errorf("re-announced %q, want the same config", last.payload)
	}
	re := br.Stats().DiscoveryReannounces
	n = u.count(topic, nil)
	var toks []paho.Token
	for range 100 {
		toks = append(toks, u.c.Publish("homeassistant/status", 1, false, "online"), u.c.Publish("homeassistant/status", 1, false, "offline"))
	}
	for _, tok := range toks {
		if !tok.WaitTimeout(waitLong) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	waitFor(t, "re-announcement after the flaps", func() bool { return br.Stats().DiscoveryReannounces == re+1 })
	// One more "online" after that: its re-announcement is the second; a
	// late one from the flaps would make it three.
	u.publish("homeassistant/status", "online")
	waitFor(t, "the next re-announcement", func() bool { return br.Stats().DiscoveryReannounces == re+2 })
	waitFor(t, "its config", func() bool { return u.count(topic, nil) >= n+2 })
	if got := u.count(topic, nil) - n; got != 2 {
		t.Errorf("%d configs for 100 flaps and one more online, want 2", got)
	}
	re = br.Stats().DiscoveryReannounces

	// The firmware drops `state`; a request for a name the device does not
	// know makes coapdev describe it again.
	dev.SetVariables(genericVars(false))
	u.publish(topicOf(dev.id, "var", "nosuch", "get"), "")
	stub := u.wait(topic, func(p string) bool {
		return components(t, p)["var_state"] == "removed sensor"
	})
	if got := components(t, stub.payload)["var_temp"]; got != "sensor" {
		t.Errorf("the removal stub lost var_temp: %v", got)
	}
	final := u.wait(topic, func(p string) bool { return !hasComponent("var_state")(p) && p != "" })
	if p, _ := h.retained(topic); p != final.payload {
		t.Errorf("retained %q, want the config without var_state", p)
	}

	// Remove the device from Home Assistant.
	u.publish(topicOf(dev.id, "remove"), "")
	u.waitPayload(topic, "")
	if p, ok := h.retained(topic); ok {
		t.Errorf("config still retained after the removal: %q", p)
	}
	// Not announced again by Home Assistant's restart…
	n = u.count(topic, nil)
	u.publish("homeassistant/status", "online")
	waitFor(t, "re-announcement", func() bool { return br.Stats().DiscoveryReannounces == re+1 })
	if got := u.count(topic, nil); got != n {
		t.Errorf("the removed device was announced again: %s", u.dump(topic))
	}
	// …but by its next session.
	dev.disconnect()
	dev.connect()
	waitFor(t, "announced again", func() bool {
		last, _ := u.last(topic)
		return u.count(topic, nil) > n && last.payload != ""
	})
	if p, ok := h.retained(topic); !ok || !hasComponent("var_temp")(p) {
		t.Errorf("not announced after reconnecting: %q", p)
	}
}

// TestDiscoveryByName: a device named in the devices file, removed by name.
func TestDiscoveryByName(t *testing.T) {
	df, err := ParseDevicesFile("devices.yaml", []byte("devices:\n  "+testID(2).String()+":\n    name: boiler\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := discoveryConfig()
	cfg.Devices = df
	h := newHarness(t, cfg)
	u := h.newUser("homeassistant/#")
	h.startBridge()
	dev := genericDevice(h, 2)
	dev.connect()
	topic := configTopic(dev.id)
	m := u.wait(topic, hasComponent("var_temp"))
	if !strings.Contains(m.payload, `"state_topic":"spark/boiler/var/temp"`) || !strings.Contains(m.payload, `"name":"boiler"`) {
		t.Errorf("config does not use the name: %s", m.payload)
	}
	u.publish("spark/boiler/remove", "")
	u.waitPayload(topic, "")
}

// logRecorder is a slog handler that keeps the records.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

// find returns the attributes of the records with message msg.
func (r *logRecorder) find(msg string) []map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]string
	for _, rec := range r.recs {
		if rec.Message != msg {
			continue
		}
		m := map[string]string{}
		rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
		out = append(out, m)
	}
	return out
}

// TestDiscoveryDevicesFile: declared entities replace the defaults; one
// naming a function the device lacks is logged once, naming it, and left
// out.
func TestDiscoveryDevicesFile(t *testing.T) {
	id := testID(3).String()
	file := `devices:
  ` + id + `:
    name: heater
    homeassistant:
      name: Water heater
      entities:
        boiler:
          platform: water_heater
          power_function: heater
          state_variable: state
          current_temperature_variable: temp
        pump:
          platform: switch
          function: pump
        temperature:
          platform: sensor
          variable: temp
          device_class: temperature
          unit_of_measurement: °C
`
	df, err := ParseDevicesFile("devices.yaml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	rec := &logRecorder{}
	cfg := discoveryConfig()
	cfg.Devices = df
	cfg.Logger = slog.New(rec)
	h := newHarness(t, cfg)
	u := h.newUser("homeassistant/#")
	h.startBridge()
	dev := genericDevice(h, 3)
	dev.connect()
	m := u.wait(configTopic(id), hasComponent("ent_boiler"))
	want := map[string]string{
		"ent_boiler": "water_heater", "ent_temperature": "sensor", "var_ready": "binary_sensor", "var_label": "sensor",
		"sys_connection": "binary_sensor", "sys_find": "button", "sys_find_stop": "button",
	}
	if d := cmp.Diff(want, components(t, m.payload)); d != "" {
		t.Errorf("components (-want +got): heater, temp and state are taken by the declared entities, pump is missing:\n%s", d)
	}
	warns := rec.find("home assistant discovery: entity not published")
	if len(warns) != 1 || warns[0]["entity"] != "pump" || !strings.Contains(warns[0]["reason"], `no function "pump"`) {
		t.Errorf("warnings %v, want one naming pump and its function", warns)
	}
	// A new description of the same device does not log it again.
	dev.disconnect()
	dev.connect()
	waitFor(t, "a second announcement pass", func() bool { return h.br.Stats().Describes >= 2 })
	u.publish("homeassistant/status", "online")
	waitFor(t, "re-announcement", func() bool { return h.br.Stats().DiscoveryReannounces == 1 })
	if got := len(rec.find("home assistant discovery: entity not published")); got != 1 {
		t.Errorf("warning logged %d times, want once", got)
	}
}

// TestDiscoveryRestart: across a restart of the bridge an unchanged config
// is not published again, and a component dropped while the bridge was
// down is still removed with its stub (the retained config is read back at
// start).
func TestDiscoveryRestart(t *testing.T) {
	h := newHarness(t, discoveryConfig())
	u := h.newUser("homeassistant/#")
	h.startBridge()
	dev := genericDevice(h, 4)
	dev.connect()
	topic := configTopic(dev.id)
	u.wait(topic, hasComponent("var_state"))
	dev.disconnect()
	h.stopBridge()
	if _, ok := h.retained(topic); !ok {
		t.Fatal("DBG no retained config after stop")
	}

	// Unchanged: neither the start nor the describe publishes; the
	// re-announcement (which first takes the waiting rebuilds) publishes once.
	n := u.count(topic, nil)
	br := h.startBridge()
	dev.connect()
	u.publish("homeassistant/status", "online")
	waitFor(t, "re-announcement", func() bool { return br.Stats().DiscoveryReannounces == 1 && u.count(topic, nil) > n })
	if got := u.count(topic, nil) - n; got != 1 {
		t.Errorf("%d configs published after the restart, want only the re-announcement:\n%s", got, u.dump(topic))
	}
	dev.disconnect()
	h.stopBridge()

	// `state` dropped while the bridge was down.
	dev.SetVariables(genericVars(false))
	h.startBridge()
	dev.connect()
	u.wait(topic, func(p string) bool { return components(t, p)["var_state"] == "removed sensor" })
	u.wait(topic, func(p string) bool { return p != "" && !hasComponent("var_state")(p) })
}

// TestDiscoveryOff: without Config.Discovery nothing is published and
// remove requests are not taken.
func TestDiscoveryOff(t *testing.T) {
	h := newHarness(t, Config{PollInterval: -1})
	u := h.newUser("homeassistant/#")
	br := h.startBridge()
	dev := genericDevice(h, 5)
	dev.connect()
	u.publish("homeassistant/status", "online")
	u.publish(topicOf(dev.id, "remove"), "")
	// The inventory shows the description: discovery would have run by then.
	waitFor(t, "inventory", func() bool {
		p, ok := h.retained("spark/bridge/devices")
		return ok && strings.Contains(p, `"heater"`)
	})
	if got := u.count(configTopic(dev.id), nil); got != 0 {
		t.Errorf("%d configs published with discovery off", got)
	}
	if s := br.Stats(); s.DiscoveryPublishes != 0 || s.DiscoveryReannounces != 0 || s.DiscoveryRemovals != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestRemoveRequests: unknown names are refused (with an MQTT 5 answer), a
// valid id the bridge never saw is removed anyway (a stale Home Assistant
// device), and a retained remove request is ignored.
func TestRemoveRequests(t *testing.T) {
	h := newHarness(t, discoveryConfig())
	u := h.newUser("homeassistant/#", "resp/#")
	h.startBridge()
	c := h.brk.NewClient()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	defer func() { _ = c.Close(ctx) }()

	if err := c.Publish(ctx, broker.Message{Topic: "spark/nosuchname/remove", QoS: 1, ResponseTopic: "resp/1", CorrelationData: []byte("c1")}); err != nil {
		t.Fatal(err)
	}
	m := u.wait("resp/1", nil)
	var r removeResponse
	if err := json.Unmarshal([]byte(m.payload), &r); err != nil || r.Removed || r.Error != "unknown device" || r.Device != "nosuchname" {
		t.Errorf("response %q (%v)", m.payload, err)
	}

	stale := testID(99).String()
	// Someone left a config for it (an earlier installation).
	if err := c.Publish(ctx, broker.Message{Topic: configTopic(stale), Payload: []byte(`{"device":{}}`), QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	u.wait(configTopic(stale), nil)
	if err := c.Publish(ctx, broker.Message{Topic: "spark/" + strings.ToUpper(stale) + "/remove", QoS: 1, ResponseTopic: "resp/2", CorrelationData: []byte("c2")}); err != nil {
		t.Fatal(err)
	}
	m = u.wait("resp/2", nil)
	if err := json.Unmarshal([]byte(m.payload), &r); err != nil || !r.Removed || r.Device != stale {
		t.Errorf("response %q (%v)", m.payload, err)
	}
	if _, ok := h.retained(configTopic(stale)); ok {
		t.Error("stale config still retained")
	}
}

// TestRemoveRetainedIgnored: a retained remove request would remove the
// device at every start: it is ignored.
func TestRemoveRetainedIgnored(t *testing.T) {
	h := newHarness(t, discoveryConfig())
	c := h.brk.NewClient()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	defer func() { _ = c.Close(ctx) }()
	id := testID(98).String()
	for _, m := range []broker.Message{
		{Topic: configTopic(id), Payload: []byte(`{"device":{"identifiers":["spark2mqtt_` + id + `"]},"components":{}}`), QoS: 1, Retain: true},
		{Topic: "spark/" + id + "/remove", Payload: []byte("x"), QoS: 1, Retain: true},
	} {
		if err := c.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	br := h.startBridge()
	waitFor(t, "the retained request counted as invalid", func() bool { return br.Stats().Invalid >= 1 })
	if got := br.Stats().DiscoveryRemovals; got != 0 {
		t.Errorf("%d removals", got)
	}
	if _, ok := h.retained(configTopic(id)); !ok {
		t.Error("config removed by a retained request")
	}
}

// TestDiscoveryRepublish: Republish (after a reconnect to a broker that
// may have lost its retained messages) publishes every config again at
// once.
func TestDiscoveryRepublish(t *testing.T) {
	h := newHarness(t, discoveryConfig())
	u := h.newUser("homeassistant/#")
	br := h.startBridge()
	dev := genericDevice(h, 6)
	dev.connect()
	topic := configTopic(dev.id)
	first := u.wait(topic, hasComponent("var_temp"))
	n := u.count(topic, nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := br.Republish(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the config again", func() bool { return u.count(topic, nil) == n+1 })
	if last, _ := u.last(topic); last.payload != first.payload {
		t.Errorf("republished %q, want the same config", last.payload)
	}
	if got := br.Stats().DiscoveryReannounces; got != 1 {
		t.Errorf("%d re-announcements, want 1", got)
	}
}
