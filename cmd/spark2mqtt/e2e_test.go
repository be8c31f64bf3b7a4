package main

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/internal/mosquittotest"
)

// heaterID is the simulated heater's device id in the end-to-end tests.
const heaterID = "53ff6b065067544853360187"

// simHeater is a simulated water heater that the test connects and
// disconnects at will.
type simHeater struct {
	t      testing.TB
	heater *devsim.Heater
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// newSimHeater creates the heater (a Core) for the server key in dataDir
// and registers its key with `spark2mqtt keys add`, as a user would.
func newSimHeater(t testing.TB, dataDir string) *simHeater {
	t.Helper()
	spub := readServerKey(t, dataDir)
	dkey, err := devsim.SharedKey()
	if err != nil {
		t.Fatal(err)
	}
	id, err := keys.ParseDeviceID(heaterID)
	if err != nil {
		t.Fatal(err)
	}
	h, err := devsim.NewHeater(devsim.HeaterConfig{
		Device:   devsim.Config{Firmware: devsim.Core, DeviceID: id, DeviceKey: dkey, ServerKey: spub},
		Interval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&dkey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(t.TempDir(), "heater.pub.pem")
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runBin(t, []string{"SPARK2MQTT_DATA_DIR=" + dataDir}, "keys", "add", strings.ToUpper(heaterID), pubFile)
	if code != 0 {
		t.Fatalf("keys add: exit %d: %s%s", code, out, errOut)
	}
	return &simHeater{t: t, heater: h}
}

// readServerKey waits for the server's public key file and parses it.
func readServerKey(t testing.TB, dataDir string) *rsa.PublicKey {
	t.Helper()
	var b []byte
	waitFor(t, 10*time.Second, "the server public key", func() bool {
		var err error
		b, err = os.ReadFile(keys.PublicKeyPath(serverKeyPath(dataDir)))
		return err == nil
	})
	pub, err := keys.ParsePublicKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// connect runs the heater against addr until disconnect is called.
func (h *simHeater) connect(addr string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	done := h.done
	// Owned by the simHeater: disconnect (or the test cleanup) ends it.
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			_ = h.heater.Device().Dial(ctx, addr)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	h.t.Cleanup(h.disconnect)
}

// disconnect ends the heater's connection and waits for it.
func (h *simHeater) disconnect() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cancel == nil {
		return
	}
	h.cancel()
	<-h.done
	h.cancel = nil
}

func positiveNumber(p string) bool {
	return p != "" && strings.Trim(p, "0123456789.-") == "" && p != "0"
}

func hasResult(field string, want float64) func(string) bool {
	return func(p string) bool {
		m := jsonField(p)
		v, ok := m[field].(float64)
		return ok && v == want
	}
}

// TestMissionStory runs the story of the mission with the real binary and
// its embedded broker: a water heater switched and read over MQTT, also
// while it is offline and across a restart of spark2mqtt.
func TestMissionStory(t *testing.T) {
	missionStory(t, nil)
}

// TestMissionStoryMosquitto runs the same story with spark2mqtt as a client
// of a real Mosquitto (external mode).
func TestMissionStoryMosquitto(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{Persistence: true})
	missionStory(t, &mq.Addr)
}

func missionStory(t *testing.T, external *string) {
	dataDir := t.TempDir()
	var env []string
	if external != nil {
		env = append(env, "SPARK2MQTT_MQTT_URL=tcp://"+*external)
	}
	srv := startServer(t, dataDir, env...)
	mqttAddr := srv.MQTTAddr
	if external != nil {
		mqttAddr = *external
	}
	base := "spark/" + heaterID
	w := newWatcher(t, mqttAddr, "spark/#")
	w.wait(0, "spark/bridge/state", 10*time.Second, equals("online"))

	heater := newSimHeater(t, dataDir)
	heater.connect(srv.DeviceAddr)

	// The device comes online and its temperature appears, retained.
	w.wait(0, base+"/availability", 15*time.Second, equals("online"))
	waitFor(t, 10*time.Second, "a 'session started' log line with the device id", func() bool {
		return srv.logged("session started", map[string]string{"device": heaterID})
	})
	mk := w.mark()
	w.publish(base+"/var/temp/get", "", false)
	w.wait(mk, base+"/var/temp", 15*time.Second, positiveNumber)
	if got := retained(t, mqttAddr, base+"/var/temp", 5*time.Second); !positiveNumber(got) {
		t.Fatalf("retained temp = %q, want a temperature", got)
	}

	// Switch it on.
	mk = w.mark()
	w.publish(base+"/fn/heater", "on", false)
	w.wait(mk, base+"/fn/heater/result", 15*time.Second, hasResult("return_value", 1))
	if !heater.heater.On() {
		t.Fatal("the simulated heater is not on after return_value 1")
	}

	// The device goes away; a call for it is held.
	mk = w.mark()
	heater.disconnect()
	w.wait(mk, base+"/availability", 15*time.Second, equals("offline"))
	mk = w.mark()
	w.publish(base+"/fn/heater", "off", false)
	w.wait(mk, base+"/fn/heater/result", 10*time.Second, func(p string) bool { return jsonField(p)["queued"] == true })
	w.wait(mk, base+"/fn/heater/pending", 10*time.Second, func(p string) bool { return jsonField(p)["arg"] == "off" })

	// spark2mqtt itself restarts; the held call survives.
	srv.stop()
	if external == nil {
		// The embedded broker went away with the process.
		w.client.Disconnect(0)
	}
	srv = startServer(t, dataDir, env...)
	if external == nil {
		mqttAddr = srv.MQTTAddr
		w = newWatcher(t, mqttAddr, "spark/#")
	}
	if got := retained(t, mqttAddr, base+"/fn/heater/pending", 5*time.Second); jsonField(got)["arg"] != "off" {
		t.Fatalf("after the restart, pending = %q, want the held call", got)
	}
	callsBefore := heater.heater.Device().Stats().Calls

	// The device comes back: the held call is delivered once.
	mk = w.mark()
	heater.connect(srv.DeviceAddr)
	w.wait(mk, base+"/fn/heater/result", 20*time.Second, hasResult("return_value", 0))
	w.wait(mk, base+"/fn/heater/pending", 10*time.Second, equals(""))
	if heater.heater.On() {
		t.Fatal("the simulated heater is still on after the held 'off' was delivered")
	}
	if got := retained(t, mqttAddr, base+"/fn/heater/pending", 2*time.Second); got != "" {
		t.Fatalf("pending still retained after delivery: %q", got)
	}
	if n := heater.heater.Device().Stats().Calls - callsBefore; n != 1 {
		t.Fatalf("the held call reached the device %d times, want exactly once", n)
	}

	// An expired call publishes its error result and clears pending.
	mk = w.mark()
	heater.disconnect()
	w.wait(mk, base+"/availability", 15*time.Second, equals("offline"))
	mk = w.mark()
	w.publish(base+"/fn/heater/call", `{"arg":"on","transaction":"t-expire","ttl":1}`, false)
	w.wait(mk, base+"/fn/heater/result", 10*time.Second, func(p string) bool {
		m := jsonField(p)
		return m["transaction"] == "t-expire" && m["error"] != nil
	})
	w.wait(mk, base+"/fn/heater/pending", 10*time.Second, equals(""))

	srv.stop()
	if !srv.logged("stopped", nil) {
		t.Error("no 'stopped' log line at shutdown")
	}
}

// TestServeRefusesBadConfig: configuration mistakes stop the start with
// exit status 2 and a message naming the variable, file and line.
func TestServeRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	badDevices := t.TempDir()
	if err := os.WriteFile(filepath.Join(badDevices, devicesFile), []byte("devices:\n  53ff6b065067544853360187:\n    nmae: heater\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  []string
		want []string
	}{
		{"unknown variables", []string{"SPARK2MQTT_DATA_DIR=" + dir, "SPARK2MQTT_POLL_INTERVALL=5s", "SPARK2MQTT_BASETOPIC=x"},
			[]string{"SPARK2MQTT_BASETOPIC", "SPARK2MQTT_POLL_INTERVALL"}},
		{"malformed duration", []string{"SPARK2MQTT_DATA_DIR=" + dir, "SPARK2MQTT_QUEUE_TTL=forever"}, []string{"SPARK2MQTT_QUEUE_TTL"}},
		{"bad external URL", []string{"SPARK2MQTT_DATA_DIR=" + dir, "SPARK2MQTT_MQTT_URL=gopher://x:1"}, []string{"gopher"}},
		{"devices file with an unknown key", []string{"SPARK2MQTT_DATA_DIR=" + badDevices, "SPARK2MQTT_DEVICE_LISTEN=127.0.0.1:0", "SPARK2MQTT_MQTT_LISTEN=127.0.0.1:0"},
			[]string{filepath.Join(badDevices, devicesFile), ":3", "nmae"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, code := runBin(t, tt.env, "serve")
			if code == 0 {
				t.Fatalf("exit 0, want a refusal; stderr:\n%s", stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not name %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// TestUnknownDeviceRefused: a device without a registered key is refused,
// and the log line says how to register it.
func TestUnknownDeviceRefused(t *testing.T) {
	dataDir := t.TempDir()
	srv := startServer(t, dataDir)
	spub := readServerKey(t, dataDir)
	for _, fw := range []devsim.Firmware{devsim.Core, devsim.Photon08} {
		id := devsim.FleetID(int(fw))
		d, err := devsim.New(devsim.Config{Firmware: fw, DeviceID: id, ServerKey: spub})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := d.Dial(ctx, srv.DeviceAddr); err == nil {
			t.Errorf("%v: the unregistered device was not refused", fw)
		}
		cancel()
		hint := "keys add " + id.String()
		if fw != devsim.Core {
			hint = "keys accept " + id.String()
		}
		waitFor(t, 10*time.Second, "the refusal log line", func() bool {
			return srv.logged("device refused", map[string]string{"reason": "unknown_device", "device": id.String()})
		})
		srv.mu.Lock()
		found := false
		for _, l := range srv.lines {
			if l["msg"] == "device refused" && l["device"] == id.String() && strings.Contains(fmt.Sprint(l["err"]), hint) {
				found = true
			}
		}
		srv.mu.Unlock()
		if !found {
			t.Errorf("%v: no refusal line with the hint %q", fw, hint)
		}
	}
	// The Photon's offered key waits for the operator.
	out, _, code := runBin(t, []string{"SPARK2MQTT_DATA_DIR=" + dataDir}, "keys", "list")
	if code != 0 || !strings.Contains(out, "keys accept "+devsim.FleetID(int(devsim.Photon08)).String()) {
		t.Errorf("keys list (exit %d) does not show the waiting Photon key:\n%s", code, out)
	}
	srv.stop()
}

// TestExternalBrokerLosesState: the external broker dies and comes back
// without its retained messages (no persistence); spark2mqtt reconnects by
// itself and puts its state back: bridge online, the device online, its
// values.
func TestExternalBrokerLosesState(t *testing.T) {
	mq := mosquittotest.Start(t, mosquittotest.Options{})
	dataDir := t.TempDir()
	srv := startServer(t, dataDir, "SPARK2MQTT_MQTT_URL="+mq.URL)
	base := "spark/" + heaterID
	w := newWatcher(t, mq.Addr, "spark/#")
	heater := newSimHeater(t, dataDir)
	heater.connect(srv.DeviceAddr)
	w.wait(0, base+"/availability", 15*time.Second, equals("online"))
	w.publish(base+"/var/temp/get", "", false)
	w.wait(0, base+"/var/temp", 15*time.Second, positiveNumber)
	w.client.Disconnect(0)

	mq.Kill()
	mq.Restart()
	for topic, want := range map[string]func(string) bool{
		"spark/bridge/state":   equals("online"),
		base + "/availability": equals("online"),
		base + "/var/temp":     positiveNumber,
	} {
		var got string
		waitFor(t, 30*time.Second, "retained "+topic+" back after the broker restart", func() bool {
			got = retained(t, mq.Addr, topic, 500*time.Millisecond)
			return want(got)
		})
	}
	// Commands work again without anyone restarting spark2mqtt.
	w = newWatcher(t, mq.Addr, base+"/fn/heater/result")
	mk := w.mark()
	w.publish(base+"/fn/heater", "on", false)
	w.wait(mk, base+"/fn/heater/result", 15*time.Second, hasResult("return_value", 1))
	srv.stop()
}
