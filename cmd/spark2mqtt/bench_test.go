package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
)

// percentile returns the p-th percentile (0..100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

// BenchmarkMQTTCallRoundTrip measures a function call MQTT → device → MQTT
// through the real binary with its embedded broker: a paho client publishes
// the argument on spark/D/fn/heater and waits for spark/D/fn/heater/result;
// the device is a simulated heater on loopback TCP. One call at a time
// (run with -benchtime=10000x for the 10,000 sequential calls); p50 and p99
// are reported as metrics.
func BenchmarkMQTTCallRoundTrip(b *testing.B) {
	dataDir := b.TempDir()
	srv := startServer(b, dataDir, "SPARK2MQTT_LOG_LEVEL=info", "SPARK2MQTT_POLL_INTERVAL=1h")
	h := newSimHeater(b, dataDir)
	h.connect(srv.DeviceAddr)
	base := "spark/" + heaterID + "/fn/heater"

	results := make(chan string, 16)
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + srv.MQTTAddr).SetClientID("bench-rt").SetAutoReconnect(false)
	cl := mqtt.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	b.Cleanup(func() { cl.Disconnect(100) })
	// QoS 0 on both legs: the user's tool waits for the result, which is the
	// acknowledgement that matters; QoS 1 adds a PUBACK round trip per leg.
	if tok := cl.Subscribe(base+"/result", 0, func(_ mqtt.Client, m mqtt.Message) {
		if !m.Retained() {
			results <- string(m.Payload())
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	w := newWatcher(b, srv.MQTTAddr, "spark/"+heaterID+"/availability")
	w.wait(0, "spark/"+heaterID+"/availability", 20*time.Second, equals("online"))

	call := func(arg string) time.Duration {
		start := time.Now()
		cl.Publish(base, 0, false, arg)
		select {
		case r := <-results:
			if jsonField(r)["return_value"] == nil {
				b.Fatalf("call %s: result %s", arg, r)
			}
		case <-time.After(10 * time.Second):
			b.Fatalf("call %s: no result within 10 s", arg)
		}
		return time.Since(start)
	}
	for range 50 { // warm up: connections, describe, caches
		call("on")
	}
	var lat []time.Duration
	args := [2]string{"on", "off"}
	i := 0
	for b.Loop() {
		lat = append(lat, call(args[i&1]))
		i++
	}
	slices.Sort(lat)
	b.ReportMetric(float64(percentile(lat, 50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(percentile(lat, 99).Microseconds()), "p99-µs")
}

// BenchmarkEventsToMQTT measures device events reaching one MQTT
// subscriber: 1,000 simulated devices (firmware rate limit off) publish as
// fast as the server takes them; the subscriber counts what arrives. It
// reports events/s delivered and the number lost (published by the devices
// minus received). b.N is the number of events.
func BenchmarkEventsToMQTT(b *testing.B) {
	const devices = 1000
	dataDir := b.TempDir()
	srv := startServer(b, dataDir, "SPARK2MQTT_LOG_LEVEL=info", "SPARK2MQTT_POLL_INTERVAL=1h")
	spub := readServerKey(b, dataDir)
	fleet, err := devsim.NewFleet(devsim.FleetConfig{
		Addr:  srv.DeviceAddr,
		Count: devices,
		Config: func(i int) devsim.Config {
			return devsim.Config{Firmware: devsim.Photon08, ServerKey: spub, NoRateLimit: true, PingInterval: -1}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	store, err := keys.OpenStore(deviceKeysPath(dataDir), keys.Strict)
	if err != nil {
		b.Fatal(err)
	}
	if err := fleet.Provision(store); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	fleetDone := make(chan struct{})
	go func() { defer close(fleetDone); _ = fleet.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-fleetDone })
	select {
	case <-fleet.AllConnected():
	case <-time.After(5 * time.Minute):
		b.Fatalf("only %d of %d devices connected", fleet.Connected(), devices)
	}

	var got atomic.Int64
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + srv.MQTTAddr).SetClientID("bench-ev").
		SetAutoReconnect(false).SetOrderMatters(false).SetMessageChannelDepth(1 << 16)
	cl := mqtt.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	b.Cleanup(func() { cl.Disconnect(100) })
	if tok := cl.Subscribe("spark/+/event/bench", 1, func(mqtt.Client, mqtt.Message) { got.Add(1) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}

	n := b.N
	per := (n + devices - 1) / devices
	payload := []byte("48.5")
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	var sent atomic.Int64
	for _, d := range fleet.Devices() {
		wg.Go(func() {
			for range per {
				if d.Publish(ctx, "bench", payload, 60, false) == nil {
					sent.Add(1)
				}
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for got.Load() < sent.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(got.Load())/took.Seconds(), "events/s")
	b.ReportMetric(float64(sent.Load()-got.Load()), "lost")
}

// BenchmarkReconnectStorm measures 5,000 simulated devices (in another
// process: `spark2mqtt simulate --count 5000`) connecting at once to the
// binary: the time until the bridge has published every one `online`,
// against 5,000 × the server's handshake cost measured in the same run
// (the handshake benchmark's work, serially, in this process).
func BenchmarkReconnectStorm(b *testing.B) {
	count := 5000
	if s := os.Getenv("STORM_COUNT"); s != "" {
		count, _ = strconv.Atoi(s)
	}
	for b.Loop() {
		dataDir := b.TempDir()
		srv := startServer(b, dataDir, "SPARK2MQTT_LOG_LEVEL=info", "SPARK2MQTT_POLL_INTERVAL=1h")
		var online atomic.Int64
		seen := sync.Map{}
		opts := mqtt.NewClientOptions().AddBroker("tcp://" + srv.MQTTAddr).SetClientID("bench-storm").
			SetAutoReconnect(false).SetOrderMatters(false).SetMessageChannelDepth(1 << 16)
		cl := mqtt.NewClient(opts)
		if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			b.Fatal(tok.Error())
		}
		if tok := cl.Subscribe("spark/+/availability", 1, func(_ mqtt.Client, m mqtt.Message) {
			if string(m.Payload()) == "online" {
				if _, dup := seen.LoadOrStore(m.Topic(), true); !dup {
					online.Add(1)
				}
			}
		}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			b.Fatal(tok.Error())
		}
		// Register the fleet's keys first (the simulator does it with
		// --register and then connects); the clock starts at its "simulating" line.
		sim := exec.Command(binPath, "simulate", "--server", srv.DeviceAddr, "--data", dataDir, "--register",
			"--firmware", "photon08", "--count", strconv.Itoa(count), "--concurrency", "256")
		sim.Env = cleanEnv()
		out, err := sim.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := sim.Start(); err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 256)
		if _, err := out.Read(buf); err != nil { // the "simulating" line: keys registered, connecting now
			b.Fatal(err)
		}
		start := time.Now()
		deadline := time.Now().Add(10 * time.Minute)
		for online.Load() < int64(count) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		took := time.Since(start)
		_ = sim.Process.Signal(os.Interrupt)
		_ = sim.Wait()
		cl.Disconnect(100)
		if online.Load() < int64(count) {
			b.Fatalf("%d of %d devices online after %v", online.Load(), count, took)
		}
		refused := srv.countLogged("session ended", map[string]string{"reason": "handshake"})
		srv.stop()

		hs := handshakeCost(b)
		b.ReportMetric(took.Seconds(), "s-all-online")
		b.ReportMetric(hs.Seconds()*1e6, "µs-handshake")
		b.ReportMetric(took.Seconds()/(float64(count)*hs.Seconds()), "ratio")
		b.ReportMetric(float64(refused), "handshake-timeouts")
	}
}

// handshakeCost measures the server side of one Photon handshake, serially
// (handshake.Server with a real key store lookup, the device's block 2
// prepared in advance): what a connecting device costs the server.
func handshakeCost(b *testing.B) time.Duration {
	b.Helper()
	priv, _, err := keys.LoadOrCreateServerKey(filepath.Join(b.TempDir(), "k.pem"))
	if err != nil {
		b.Fatal(err)
	}
	dkey, err := devsim.SharedKey()
	if err != nil {
		b.Fatal(err)
	}
	store, err := keys.OpenStore(b.TempDir(), keys.Strict)
	if err != nil {
		b.Fatal(err)
	}
	id := devsim.FleetID(1)
	if err := store.Add(id, &dkey.PublicKey); err != nil {
		b.Fatal(err)
	}
	spki, err := keys.DevicePublicDER(&dkey.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{7}, 40)
	//lint:ignore SA1019 the device protocol is PKCS #1 v1.5 (spark-protocol.md §2.1).
	block, err := rsa.EncryptPKCS1v15(rand.Reader, &priv.PublicKey, slices.Concat(nonce, id[:], spki))
	if err != nil {
		b.Fatal(err)
	}
	cfg := handshake.ServerConfig{Key: priv, Lookup: store.Lookup}
	const n = 200
	start := time.Now()
	for range n {
		cfg.Rand = io.MultiReader(bytes.NewReader(nonce), rand.Reader)
		rw := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(block), io.Discard}
		if _, err := handshake.Server(rw, cfg); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start) / n
}
