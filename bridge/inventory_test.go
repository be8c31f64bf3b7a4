package bridge

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
)

const namedFile = `devices:
  "746573740000000000000001":
    name: heater
  "746573740000000000000009":
    name: spare
`

// TestInventoryGolden: spark/bridge/devices for a named heater online, a
// configured device never seen and a device that went offline.
func TestInventoryGolden(t *testing.T) {
	clock := newFakeClock()
	df, err := ParseDevicesFile("devices.yaml", []byte(namedFile))
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, Config{Now: clock.Now, Devices: df, InventoryDelay: 1})
	u := h.newUser()
	h.startBridge()
	_, heater := h.addHeater(heaterID)
	photon := h.addDevice(devsim.Config{Firmware: devsim.Photon08, DeviceID: testID(2),
		Variables: []devsim.Variable{intVar("count", func() int32 { return 3 })}})
	heater.connect()
	photon.connect()
	photon.disconnect()
	u.waitPayload(topicOf(photon.id, "availability"), "offline")
	m := u.wait("spark/bridge/devices", func(p string) bool {
		var inv []InventoryDevice
		return json.Unmarshal([]byte(p), &inv) == nil && len(inv) == 3 && inv[0].Online && inv[0].Functions != nil &&
			!inv[1].Online && inv[1].Variables != nil
	})
	var got bytes.Buffer
	if err := json.Indent(&got, []byte(m.payload), "", "  "); err != nil {
		t.Fatal(err)
	}
	got.WriteByte('\n')
	golden := filepath.Join("testdata", "devices.golden.json")
	if *update {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if d := cmp.Diff(string(want), got.String()); d != "" {
		t.Errorf("spark/bridge/devices (-want +got):\n%s", d)
	}
}

// TestNamedDevice: a device with a name is addressed by the name (and, for
// commands, by its id too); everything it publishes uses the name.
func TestNamedDevice(t *testing.T) {
	df, err := ParseDevicesFile("devices.yaml", []byte(namedFile))
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, Config{Devices: df})
	u := h.newUser()
	h.startBridge()
	heater, dev := h.addHeater(heaterID)
	dev.connect()
	u.waitPayload("spark/heater/availability", "online")
	u.waitPayload("spark/heater/var/temp", "48.5")
	u.publish("spark/heater/fn/heater/call", `{"arg":"on","transaction":"n1"}`)
	u.waitResult("spark/heater/fn/heater/result", "n1")
	u.publish(topicOf(dev.id, "fn", "heater", "call"), `{"arg":"off","transaction":"n2"}`)
	if r := u.waitResult("spark/heater/fn/heater/result", "n2"); r.ReturnValue == nil || *r.ReturnValue != 0 || heater.On() {
		t.Errorf("call by id: %+v", r)
	}
	if n := u.count(topicOf(dev.id, "availability"), nil); n != 0 {
		t.Errorf("published under the id %d times", n)
	}
	// The configured but never seen device is known: calls are held.
	u.publish("spark/spare/fn/x/call", `{"arg":"1","transaction":"s"}`)
	u.wait("spark/spare/fn/x/result", func(p string) bool { return bytes.Contains([]byte(p), []byte(`"queued":true`)) })
}
