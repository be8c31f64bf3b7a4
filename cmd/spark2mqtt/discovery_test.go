package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
	"github.com/spark2mqtt/spark2mqtt/internal/mosquittotest"
)

// haConfigTopic is the simulated heater's Home Assistant discovery topic.
const haConfigTopic = "homeassistant/device/" + heaterID + "/config"

// components returns a discovery config's components as id → platform
// ("removed sensor" for a platform-only removal stub); nil for a payload
// that is not a config.
func components(p string) map[string]string {
	var root struct {
		Components map[string]map[string]any `json:"components"`
	}
	if p == "" || json.Unmarshal([]byte(p), &root) != nil {
		return nil
	}
	out := map[string]string{}
	for id, c := range root.Components {
		pl, _ := c["platform"].(string)
		if len(c) == 1 {
			pl = "removed " + pl
		}
		out[id] = pl
	}
	return out
}

func hasComponents(ids ...string) func(string) bool {
	return func(p string) bool {
		c := components(p)
		for _, id := range ids {
			if c[id] == "" || strings.HasPrefix(c[id], "removed ") {
				return false
			}
		}
		return c != nil
	}
}

// TestHomeAssistantDiscovery runs the discovery life cycle against the real
// binary and its embedded broker: the heater connects → its config appears
// (and the states Home Assistant needs are retained); homeassistant/status
// online → announced again, and 100 flaps → one re-announcement; the
// firmware drops a variable and describes again → that component is
// removed; `spark2mqtt devices remove` → the config is cleared.
func TestHomeAssistantDiscovery(t *testing.T) {
	dataDir := t.TempDir()
	srv := startServer(t, dataDir)
	w := newWatcher(t, srv.MQTTAddr, "#")
	w.wait(0, "spark/bridge/state", 10*time.Second, equals("online"))
	base := "spark/" + heaterID

	heater := newSimHeater(t, dataDir)
	heater.connect(srv.DeviceAddr)
	first := w.wait(0, haConfigTopic, 20*time.Second, hasComponents("fn_heater", "var_temp", "var_state", "sys_connection", "sys_find"))
	var root struct {
		Device map[string]any    `json:"device"`
		Origin map[string]string `json:"origin"`
	}
	if err := json.Unmarshal([]byte(first.Payload), &root); err != nil {
		t.Fatal(err)
	}
	if root.Device["model"] != "Core" || root.Device["manufacturer"] != "Spark" || root.Origin["name"] != "spark2mqtt" {
		t.Errorf("device %v, origin %v", root.Device, root.Origin)
	}
	if got := retained(t, srv.MQTTAddr, haConfigTopic, 5*time.Second); got != first.Payload {
		t.Errorf("retained config %q, want the announced one", got)
	}

	// What Home Assistant reads after its own restart is retained: the
	// availability, the values and the last result.
	mk := w.mark()
	w.publish(base+"/fn/heater", "on", false)
	w.wait(mk, base+"/fn/heater/result", 15*time.Second, hasResult("return_value", 1))
	for topic, ok := range map[string]func(string) bool{
		base + "/availability":     equals("online"),
		base + "/var/temp":         positiveNumber,
		base + "/fn/heater/result": hasResult("return_value", 1),
		"spark/bridge/state":       equals("online"),
	} {
		waitFor(t, 15*time.Second, "retained "+topic, func() bool {
			return ok(retained(t, srv.MQTTAddr, topic, 2*time.Second))
		})
	}

	// Home Assistant says online: announced again after 1–5 s.
	mk = w.mark()
	w.publish("homeassistant/status", "online", false)
	again := w.wait(mk, haConfigTopic, 15*time.Second, func(string) bool { return true })
	if again.Payload != first.Payload {
		t.Errorf("re-announced %q, want the same config", again.Payload)
	}

	// 100 flaps within a second: one re-announcement.
	timers := srv.countLogged("home assistant online: announcing again", nil)
	mk = w.mark()
	for i := range 100 {
		state := "online"
		if i%2 == 1 {
			state = "offline"
		}
		w.client.Publish("homeassistant/status", 1, false, state)
	}
	w.publish("homeassistant/status", "online", false)
	w.wait(mk, haConfigTopic, 15*time.Second, func(string) bool { return true })
	if got := srv.countLogged("home assistant online: announcing again", nil) - timers; got != 1 {
		t.Errorf("%d re-announcements for 100 flaps, want 1", got)
	}

	// The firmware drops `state`; a request for a name it does not know
	// makes the server describe it again.
	h := heater.heater
	h.Device().SetVariables([]devsim.Variable{{Name: "temp", Type: msg.VarDouble, Get: func() msg.Value {
		return msg.Value{Type: msg.VarDouble, Double: h.Temp()}
	}}})
	mk = w.mark()
	w.publish(base+"/var/nosuch/get", "", false)
	stub := w.wait(mk, haConfigTopic, 15*time.Second, func(p string) bool { return components(p)["var_state"] == "removed sensor" })
	if c := components(stub.Payload); c["var_temp"] != "sensor" {
		t.Errorf("the removal stub lost the other components: %v", c)
	}
	final := w.wait(mk, haConfigTopic, 15*time.Second, func(p string) bool {
		c := components(p)
		return c != nil && c["var_state"] == "" && c["var_temp"] == "sensor"
	})
	if got := retained(t, srv.MQTTAddr, haConfigTopic, 5*time.Second); got != final.Payload {
		t.Errorf("retained config %q, want the one without var_state", got)
	}
	waitFor(t, 5*time.Second, "the removal log line", func() bool {
		return srv.logged("home assistant discovery: components removed", map[string]string{"components": "var_state"})
	})

	// Remove the device from Home Assistant with the CLI.
	mk = w.mark()
	out, errOut, code := runBin(t, []string{"SPARK2MQTT_DATA_DIR=" + dataDir, "SPARK2MQTT_MQTT_LISTEN=" + srv.MQTTAddr}, "devices", "remove", strings.ToUpper(heaterID))
	if code != 0 || !strings.Contains(out, "removed "+heaterID) {
		t.Fatalf("devices remove: exit %d: %s%s", code, out, errOut)
	}
	w.wait(mk, haConfigTopic, 5*time.Second, equals(""))
	if got := retained(t, srv.MQTTAddr, haConfigTopic, time.Second); got != "" {
		t.Errorf("config still retained after the removal: %q", got)
	}

	srv.stop()
	if got := srv.countLogged("home assistant online: announcing again", nil) - timers; got != 1 {
		t.Errorf("%d re-announcements for 100 flaps by the end, want 1", got)
	}
}

// TestHomeAssistantDevicesFile: the shipped example devices file (for the
// test heater's id) gives the water heater, the temperature sensor and the
// switch; an entity naming a function the heater lacks is logged and left
// out; the device is removed by its name.
func TestHomeAssistantDevicesFile(t *testing.T) {
	dataDir := t.TempDir()
	example, err := os.ReadFile("../../deploy/devices.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	file := strings.Replace(string(example), "f1ee70000000000000000000", heaterID, 1) + `
        pump:
          platform: switch
          function: pump
`
	if err := os.WriteFile(filepath.Join(dataDir, devicesFile), []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, dataDir)
	w := newWatcher(t, srv.MQTTAddr, "homeassistant/#")
	heater := newSimHeater(t, dataDir)
	heater.connect(srv.DeviceAddr)
	cfg := w.wait(0, haConfigTopic, 20*time.Second, hasComponents("ent_boiler"))
	got := components(cfg.Payload)
	want := map[string]string{
		"ent_boiler": "water_heater", "ent_temperature": "sensor", "ent_power": "switch",
		"sys_connection": "binary_sensor", "sys_find": "button", "sys_find_stop": "button",
	}
	for id, p := range want {
		if got[id] != p {
			t.Errorf("component %s = %q, want %q (all: %v)", id, got[id], p, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("components %v, want exactly %v", got, want)
	}
	if !strings.Contains(cfg.Payload, `"power_command_topic":"spark/heater/fn/heater"`) || !strings.Contains(cfg.Payload, `"name":"Water heater"`) {
		t.Errorf("config does not switch spark/heater/fn/heater or lacks the device name: %s", cfg.Payload)
	}
	waitFor(t, 5*time.Second, "the warning naming the pump entity", func() bool {
		return srv.logged("home assistant discovery: entity not published", map[string]string{"entity": "pump"})
	})

	// Home Assistant turns the heater on through the water heater entity.
	w.publish("spark/heater/fn/heater", "on", false)
	waitFor(t, 15*time.Second, "the heater on", heater.heater.On)

	mk := w.mark()
	out, errOut, code := runBin(t, []string{"SPARK2MQTT_DATA_DIR=" + dataDir, "SPARK2MQTT_MQTT_LISTEN=" + srv.MQTTAddr}, "devices", "remove", "heater")
	if code != 0 {
		t.Fatalf("devices remove heater: exit %d: %s%s", code, out, errOut)
	}
	w.wait(mk, haConfigTopic, 5*time.Second, equals(""))
	srv.stop()
}

// TestDevicesRemoveRefusals: the CLI says what is wrong.
func TestDevicesRemoveRefusals(t *testing.T) {
	dataDir := t.TempDir()
	srv := startServer(t, dataDir)
	env := []string{"SPARK2MQTT_DATA_DIR=" + dataDir, "SPARK2MQTT_MQTT_LISTEN=" + srv.MQTTAddr}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{"no device", env, []string{"devices", "remove"}, 2, "one device id or name"},
		{"unknown name", env, []string{"devices", "remove", "nosuch"}, 2, `no device is named "nosuch"`},
		{"discovery off", append(env[:2:2], "SPARK2MQTT_HA_DISCOVERY=false"), []string{"devices", "remove", heaterID}, 2, "discovery is off"},
		{"unknown command", env, []string{"devices", "list"}, 2, `unknown command "list"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runBin(t, tc.env, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q (stdout %q); want %d and %q", code, errOut, out, tc.code, tc.want)
			}
		})
	}
	srv.stop()
}

// TestServeRefusesBadHomeAssistantSection: an unknown platform or key in a
// device's homeassistant section stops the start, naming file, line and key.
func TestServeRefusesBadHomeAssistantSection(t *testing.T) {
	for _, tc := range []struct {
		name, section string
		want          []string
	}{
		{"unknown platform", "      entities:\n        x:\n          platform: light\n", []string{":6", `unknown platform "light"`}},
		{"unknown key", "      entities:\n        x:\n          platform: sensor\n          variable: temp\n          unit: C\n", []string{":8", `unknown key "unit"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			file := "devices:\n  " + heaterID + ":\n    homeassistant:\n" + tc.section
			if err := os.WriteFile(filepath.Join(dir, devicesFile), []byte(file), 0o600); err != nil {
				t.Fatal(err)
			}
			_, stderr, code := runBin(t, []string{"SPARK2MQTT_DATA_DIR=" + dir, "SPARK2MQTT_DEVICE_LISTEN=127.0.0.1:0", "SPARK2MQTT_MQTT_LISTEN=127.0.0.1:0"}, "serve")
			if code == 0 {
				t.Fatalf("exit 0; stderr:\n%s", stderr)
			}
			for _, w := range append(tc.want, filepath.Join(dir, devicesFile)) {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not name %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// TestHomeAssistantDiscoveryRestartMosquitto: with spark2mqtt as a client
// of a real Mosquitto, a variable the firmware dropped while spark2mqtt was
// stopped is still removed from Home Assistant after the restart (the
// retained config is read back at start).
func TestHomeAssistantDiscoveryRestartMosquitto(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	env := []string{"SPARK2MQTT_MQTT_URL=tcp://" + mq.Addr}
	dataDir := t.TempDir()
	srv := startServer(t, dataDir, env...)
	w := newWatcher(t, mq.Addr, "homeassistant/#")
	heater := newSimHeater(t, dataDir)
	heater.connect(srv.DeviceAddr)
	w.wait(0, haConfigTopic, 20*time.Second, hasComponents("var_temp", "var_state"))
	srv.stop()

	h := heater.heater
	h.Device().SetVariables([]devsim.Variable{{Name: "temp", Type: msg.VarDouble, Get: func() msg.Value {
		return msg.Value{Type: msg.VarDouble, Double: h.Temp()}
	}}})
	heater.disconnect()
	mk := w.mark()
	srv = startServer(t, dataDir, env...)
	heater.connect(srv.DeviceAddr)
	w.wait(mk, haConfigTopic, 20*time.Second, func(p string) bool { return components(p)["var_state"] == "removed sensor" })
	final := w.wait(mk, haConfigTopic, 10*time.Second, func(p string) bool {
		c := components(p)
		return c != nil && c["var_state"] == "" && c["var_temp"] == "sensor"
	})
	if got := retained(t, mq.Addr, haConfigTopic, 5*time.Second); got != final.Payload {
		t.Errorf("retained config %q, want the one without var_state", got)
	}
	srv.stop()
}
