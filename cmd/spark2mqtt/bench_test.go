package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
	"github.com/spark2mqtt/spark2mqtt/coapdev/handshake"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/internal/mqttraw"
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
// through the real binary with its embedded broker: an MQTT client
// publishes the argument on spark/D/fn/heater and waits for
// spark/D/fn/heater/result; the device is a simulated heater on loopback
// TCP. One call at a time (run with -benchtime=10000x for the 10,000
// sequential calls); p50 and p99 are reported as metrics. QoS 0 on both
// legs: the user's tool waits for the result, which is the acknowledgement
// that matters; QoS 1 adds a PUBACK round trip per leg.
//
// Two clients: client=paho is what a Go user would run (paho passes every
// message through several goroutines of its own); client=raw writes the
// PUBLISH and reads the result on the benchmark's goroutine, so its figure
// is the binary's round trip without a client library's hand-offs.
func BenchmarkMQTTCallRoundTrip(b *testing.B) {
	b.Run("client=paho", func(b *testing.B) {
		srv, base := startCallBench(b)
		measureCalls(b, pahoCaller(b, srv.MQTTAddr, base))
	})
	b.Run("client=raw", func(b *testing.B) {
		srv, base := startCallBench(b)
		c, ack := mqttraw.Dial(b, srv.MQTTAddr, 4, packets.Packet{Connect: packets.ConnectParams{ClientIdentifier: "bench-raw", Clean: true}})
		if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
			b.Fatalf("CONNECT answered with %+v", ack.FixedHeader)
		}
		c.Timeout = 10 * time.Second
		c.Subscribe(base+"/result", 0)
		measureCalls(b, func(arg string) string {
			c.Send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: base, Payload: []byte(arg)})
			for {
				pk := c.ReadType(packets.Publish)
				if !pk.FixedHeader.Retain {
					return string(pk.Payload)
				}
			}
		})
	})
}

// startCallBench starts serve and a simulated heater, waits until the
// heater is online and returns the server and the heater function's topic.
func startCallBench(b *testing.B) (*server, string) {
	dataDir := b.TempDir()
	srv := startServer(b, dataDir, "SPARK2MQTT_LOG_LEVEL=info", "SPARK2MQTT_POLL_INTERVAL=1h")
	h := newSimHeater(b, dataDir)
	h.connect(srv.DeviceAddr)
	w := newWatcher(b, srv.MQTTAddr, "spark/"+heaterID+"/availability")
	w.wait(0, "spark/"+heaterID+"/availability", 20*time.Second, equals("online"))
	return srv, "spark/" + heaterID + "/fn/heater"
}

// pahoCaller connects a paho client to the broker at mqttAddr and returns
// a function that calls the function at topic base with an argument and
// returns the (not retained) result.
func pahoCaller(b *testing.B, mqttAddr, base string) func(arg string) string {
	results := make(chan string, 16)
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + mqttAddr).SetClientID("bench-rt").SetAutoReconnect(false)
	cl := mqtt.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	b.Cleanup(func() { cl.Disconnect(100) })
	if tok := cl.Subscribe(base+"/result", 0, func(_ mqtt.Client, m mqtt.Message) {
		if !m.Retained() {
			results <- string(m.Payload())
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	return func(arg string) string {
		cl.Publish(base, 0, false, arg)
		select {
		case r := <-results:
			return r
		case <-time.After(10 * time.Second):
			b.Fatalf("call %s: no result within 10 s", arg)
			return ""
		}
	}
}

// measureCalls warms up with 50 calls, then times one call per b.Loop
// iteration (alternately on and off; every result must carry a
// return_value) and reports p50 and p99.
func measureCalls(b *testing.B, call func(arg string) string) {
	timed := func(arg string) time.Duration {
		start := time.Now()
		r := call(arg)
		took := time.Since(start)
		if jsonField(r)["return_value"] == nil {
			b.Fatalf("call %s: result %s", arg, r)
		}
		return took
	}
	for range 50 { // warm up: connections, describe, caches
		timed("on")
	}
	var lat []time.Duration
	args := [2]string{"on", "off"}
	i := 0
	for b.Loop() {
		lat = append(lat, timed(args[i&1]))
		i++
	}
	slices.Sort(lat)
	b.ReportMetric(float64(percentile(lat, 50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(percentile(lat, 99).Microseconds()), "p99-µs")
}

// BenchmarkProcessRoundTrip measures the floor under
// BenchmarkMQTTCallRoundTrip on this machine: sequential 100-byte round
// trips over loopback TCP between this process and another one (this test
// binary run again as an echo server), with p50 and p99 as metrics. A
// function call crosses two such round trips (the MQTT client and the
// server, the server and the device), each of which wakes a process that
// sleeps; on a virtual machine whose idle vCPUs halt, that costs more when
// the machine is quiet than when it is busy, so compare the two benchmarks
// run back to back.
func BenchmarkProcessRoundTrip(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), echoEnv+"="+ln.Addr().String())
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Wait() }()
	c, err := ln.Accept()
	if err != nil {
		_ = cmd.Process.Kill()
		b.Fatal(err)
	}
	defer c.Close() // the echo process ends at EOF
	buf := make([]byte, 100)
	rt := func() time.Duration {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	for range 1000 {
		rt()
	}
	var lat []time.Duration
	for b.Loop() {
		lat = append(lat, rt())
	}
	slices.Sort(lat)
	b.ReportMetric(float64(percentile(lat, 50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(percentile(lat, 99).Microseconds()), "p99-µs")
}

// echoEnv names the address BenchmarkProcessRoundTrip's echo process
// dials; TestMain runs echo instead of the tests when it is set.
const echoEnv = "SPARK2MQTT_BENCH_ECHO"

// echo sends back what it reads from a connection to addr until EOF, in
// 100-byte messages, and returns the exit status.
func echo(addr string) int {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		return 1
	}
	defer c.Close()
	buf := make([]byte, 100)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0
		}
		if _, err := c.Write(buf); err != nil {
			return 0
		}
	}
}

// BenchmarkEventsToMQTT measures device events reaching one MQTT
// subscriber (QoS 1, as a user's tool subscribes) through the binary:
// 1,000 simulated devices, in another process (`spark2mqtt simulate
// --count 1000 --events N --rate R`, their firmware rate limit off),
// publish EVENTS events (default 200,000) at an offered total rate of
// EVENTS_RATE events/s (default 50,000: 50/s per device, spread evenly),
// and the subscriber counts what arrives: a paho client in this process, at
// QoS EVENTS_QOS (default 1), or with EVENTS_SUBSCRIBER=mosquitto_sub that
// program (C, a process of its own, as a user would run it). Each b.Loop
// iteration is one such run (use -benchtime=1x and -count). It reports the
// rate delivered (events received ÷ time from the start of publishing to
// the last arrival), the rate the devices achieved, the events lost
// (published minus received) and the CPU time per event of the server, the
// simulator and (EVENTS_SUBSCRIBER=mosquitto_sub) the subscriber.
// Delivered ≈ offered with none lost is a sustained rate; EVENTS_RATE=0
// offers as fast as the devices can publish (a flood, which the server's
// bounded queues may trim).
func BenchmarkEventsToMQTT(b *testing.B) {
	const devices = 1000
	events, rate := 200000, 50000.0
	if s := os.Getenv("EVENTS"); s != "" {
		var err error
		if events, err = strconv.Atoi(s); err != nil || events < devices {
			b.Fatalf("EVENTS=%q: want a number of events, at least %d", s, devices)
		}
	}
	if s := os.Getenv("EVENTS_RATE"); s != "" {
		var err error
		if rate, err = strconv.ParseFloat(s, 64); err != nil || rate < 0 {
			b.Fatalf("EVENTS_RATE=%q: want events per second, 0 for no limit", s)
		}
	}
	dataDir := b.TempDir()
	srv := startServer(b, dataDir, "SPARK2MQTT_LOG_LEVEL=info", "SPARK2MQTT_POLL_INTERVAL=1h")

	qos := byte(1)
	switch q := os.Getenv("EVENTS_QOS"); q {
	case "", "1":
	case "0":
		qos = 0
	default:
		b.Fatalf("EVENTS_QOS=%q: want 0 or 1", q)
	}
	var got, online atomic.Int64
	var lastAt atomic.Int64 // unix nanos of the latest arrival
	arrived := func(n int64) {
		got.Add(n)
		lastAt.Store(time.Now().UnixNano())
	}
	subPID := 0 // mosquitto_sub's, when it is the subscriber
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + srv.MQTTAddr).SetClientID("bench-ev").SetAutoReconnect(false)
	cl := mqtt.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	b.Cleanup(func() { cl.Disconnect(100) })
	switch sub := os.Getenv("EVENTS_SUBSCRIBER"); sub {
	case "", "paho":
		if tok := cl.Subscribe("spark/+/event/bench", qos, func(mqtt.Client, mqtt.Message) { arrived(1) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			b.Fatal(tok.Error())
		}
	case "mosquitto_sub":
		subPID = mosquittoSub(b, srv.MQTTAddr, qos, "spark/+/event/bench", arrived)
	default:
		b.Fatalf("EVENTS_SUBSCRIBER=%q: want paho or mosquitto_sub", sub)
	}
	if tok := cl.Subscribe("spark/+/availability", 1, func(_ mqtt.Client, m mqtt.Message) {
		if string(m.Payload()) == "online" {
			online.Add(1)
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}

	for b.Loop() {
		got.Store(0)
		online.Store(0)
		sim := startSimulator(b, srv, dataDir, "--count", strconv.Itoa(devices), "--concurrency", "64",
			"--events", strconv.Itoa(events), "--event", "bench", "--rate", strconv.FormatFloat(rate, 'f', -1, 64), "--start-stdin")
		sim.waitLine(5*time.Minute, "all ")
		// The clock starts once the bridge has announced every device.
		waitFor(b, time.Minute, "every device online", func() bool { return online.Load() >= devices })
		cpu0, cpuOK := processCPU(srv.cmd.Process.Pid)
		simCPU0, simOK := processCPU(sim.cmd.Process.Pid)
		subCPU0, subOK := processCPU(subPID)
		start := time.Now()
		sim.send("go")
		sim.waitLine(time.Minute, "publishing ")
		res := sim.waitLine(10*time.Minute, "published ")
		var sent, failed int64
		var took string
		var simRate float64
		if _, err := fmt.Sscanf(res, "published %d events in %s (%f/s), %d failed", &sent, &took, &simRate, &failed); err != nil {
			b.Fatalf("simulator: %q: %v", res, err)
		}
		// Wait until every event sent has arrived, or none has for a
		// second (the rest is lost). A wait, not an assertion.
		last, idle := got.Load(), time.Now()
		for got.Load() < sent && time.Since(idle) < time.Second {
			time.Sleep(time.Millisecond)
			if n := got.Load(); n != last {
				last, idle = n, time.Now()
			}
		}
		delivered := time.Duration(lastAt.Load() - start.UnixNano())
		if cpu1, ok := processCPU(srv.cmd.Process.Pid); ok && cpuOK && got.Load() > 0 {
			b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(got.Load()), "server-cpu-µs/event")
		}
		// The simulator's and mosquitto_sub's CPU time over the same span
		// (the simulator's per event sent): with the server's, what the
		// machine spends per event.
		if cpu1, ok := processCPU(sim.cmd.Process.Pid); ok && simOK && sent > 0 {
			b.ReportMetric(float64((cpu1-simCPU0).Microseconds())/float64(sent), "sim-cpu-µs/event")
		}
		if cpu1, ok := processCPU(subPID); ok && subOK && subPID != 0 && got.Load() > 0 {
			b.ReportMetric(float64((cpu1-subCPU0).Microseconds())/float64(got.Load()), "sub-cpu-µs/event")
		}
		b.ReportMetric(float64(got.Load())/delivered.Seconds(), "events/s")
		b.ReportMetric(simRate, "offered-events/s")
		b.ReportMetric(float64(sent-got.Load()), "lost")
		b.ReportMetric(float64(failed), "publish-failed")
		sim.stop()
	}
}

// mosquittoSub runs mosquitto_sub on filter at qos against the broker at
// addr until the test ends, calling arrived with the number of messages
// as they come. It returns mosquitto_sub's process id once it is
// subscribed (it has received the retained spark/bridge/state).
func mosquittoSub(t testing.TB, addr string, qos byte, filter string, arrived func(n int64)) int {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("mosquitto_sub", "-h", host, "-p", port, "-q", strconv.Itoa(int(qos)),
		"-t", "spark/bridge/state", "-t", filter, "-F", "%t")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Skipf("mosquitto_sub: %v", err)
	}
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() { // ends when mosquitto_sub closes its output (killed at cleanup)
		defer close(done)
		r := bufio.NewReaderSize(out, 64<<10)
		first := true
		for {
			_, err := r.ReadSlice('\n')
			if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				return
			}
			if first {
				first = false
				close(ready) // the retained state comes first, right after the SUBACK
				continue
			}
			arrived(1)
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		<-done
	})
	select {
	case <-ready:
	case <-done:
		t.Fatal("mosquitto_sub ended before subscribing")
	case <-time.After(10 * time.Second):
		t.Fatal("mosquitto_sub did not subscribe within 10 s")
	}
	return cmd.Process.Pid
}

// simulator is a running `spark2mqtt simulate` process.
type simulator struct {
	t     testing.TB
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // its standard output; closed at its end
}

// startSimulator starts `spark2mqtt simulate` with Photon 0.8+ devices
// registered in dataDir against srv, with the extra arguments.
func startSimulator(t testing.TB, srv *server, dataDir string, args ...string) *simulator {
	t.Helper()
	args = append([]string{"simulate", "--server", srv.DeviceAddr, "--data", dataDir, "--register", "--firmware", "photon08"}, args...)
	cmd := exec.Command(binPath, args...)
	cmd.Env = cleanEnv()
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &simulator{t: t, cmd: cmd, stdin: in, lines: make(chan string, 16)}
	go func() { // ends when the process closes its standard output
		defer close(s.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	t.Cleanup(s.stop)
	return s
}

// waitLine returns the next output line that starts with prefix, skipping
// others, waiting up to timeout (then failing).
func (s *simulator) waitLine(timeout time.Duration, prefix string) string {
	s.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("simulator ended before printing %q", prefix)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			s.t.Fatalf("simulator: no line %q within %v", prefix, timeout)
		}
	}
}

// send writes a line to the simulator's standard input.
func (s *simulator) send(line string) {
	s.t.Helper()
	if _, err := io.WriteString(s.stdin, line+"\n"); err != nil {
		s.t.Fatal(err)
	}
}

// stop interrupts the simulator and waits for it (idempotent).
func (s *simulator) stop() {
	if s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	_ = s.cmd.Wait()
	for range s.lines {
	}
}

// processCPU returns the CPU time (user and system) process pid has used,
// from /proc; false where that cannot be read.
func processCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The fields after the command name, which is in parentheses and may
	// hold anything: state is field 3, utime and stime fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	const ticks = 100 // USER_HZ, what /proc reports in on Linux
	return time.Duration(utime+stime) * time.Second / ticks, true
}

// BenchmarkReconnectStorm measures 5,000 simulated devices (in another
// process: `spark2mqtt simulate --count 5000`, STORM_COUNT overrides)
// connecting at once to the binary: the time from the simulator's first
// connection until the bridge has published every one `online`, as a ratio
// to 5,000 × the server's handshake cost measured in the same run (the
// handshake benchmark's work, serially, in this process, once before and
// once after the storm, averaged: the machine's speed drifts). It also
// reports the connection attempts that failed (refused, timed out) and had
// to be retried, which should be none. Each b.Loop iteration is a storm
// against a new server (use -benchtime=1x and -count).
func BenchmarkReconnectStorm(b *testing.B) {
	count := 5000
	if s := os.Getenv("STORM_COUNT"); s != "" {
		var err error
		if count, err = strconv.Atoi(s); err != nil || count < 1 {
			b.Fatalf("STORM_COUNT=%q: want a number of devices", s)
		}
	}
	for b.Loop() {
		dataDir := b.TempDir()
		srv := startServer(b, dataDir, "SPARK2MQTT_LOG_LEVEL=info", "SPARK2MQTT_POLL_INTERVAL=1h")
		var online atomic.Int64
		seen := sync.Map{}
		opts := mqtt.NewClientOptions().AddBroker("tcp://" + srv.MQTTAddr).SetClientID("bench-storm").SetAutoReconnect(false)
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
		hsBefore := handshakeCost(b)

		// The simulator registers the fleet's keys first, then prints its
		// "simulating" line and connects: the clock starts there.
		sim := startSimulator(b, srv, dataDir, "--count", strconv.Itoa(count), "--concurrency", "256")
		sim.waitLine(5*time.Minute, "simulating ")
		start := time.Now()
		waitFor(b, 10*time.Minute, "every device online", func() bool { return online.Load() >= int64(count) })
		took := time.Since(start)
		var n, failed int
		var in string
		res := sim.waitLine(time.Minute, "all ")
		if _, err := fmt.Sscanf(res, "all %d connected in %s %d failed attempts", &n, &in, &failed); err != nil {
			b.Fatalf("simulator: %q: %v", res, err)
		}
		sim.stop()
		cl.Disconnect(100)
		srv.stop()

		hs := (hsBefore + handshakeCost(b)) / 2
		b.ReportMetric(took.Seconds(), "s-all-online")
		b.ReportMetric(float64(hs.Microseconds()), "µs-handshake")
		b.ReportMetric(took.Seconds()/(float64(count)*hs.Seconds()), "ratio")
		b.ReportMetric(float64(failed), "failed-connects")
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
