package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"
)

// binPath is the spark2mqtt binary built once by TestMain.
var binPath string

func TestMain(m *testing.M) {
	if addr := os.Getenv(echoEnv); addr != "" {
		os.Exit(echo(addr)) // BenchmarkProcessRoundTrip's other process
	}
	dir, err := os.MkdirTemp("", "spark2mqtt-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "spark2mqtt")
	args := []string{"build", "-o", binPath}
	if os.Getenv("GOCOVERDIR") != "" {
		args = append(args, "-cover")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build spark2mqtt:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		// glog (imported by the embedded broker's badger store) starts this
		// goroutine in init and never stops it; see
		// https://github.com/DataDog/dd-trace-go/issues/1469 for the same
		// report against glog.
		if err := goleak.Find(goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon")); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// listenLine tells whether a JSON log line of serve announces the device
// listener ("devices") or the embedded broker's TCP listener ("mqtt"), and
// its address.
func listenLine(m map[string]any) (what, addr string) {
	addr, _ = m["addr"].(string)
	switch {
	case m["msg"] == "listening" && m["what"] == "devices":
		return "devices", addr
	case m["msg"] == "mqtt listening" && m["listener"] == "tcp":
		return "mqtt", addr
	}
	return "", ""
}

// cleanEnv is the test process's environment without SPARK2MQTT_ variables
// (the binary refuses unknown ones, and the test decides the rest).
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix+"_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// runBin runs the binary to completion and returns its output and exit code.
func runBin(t testing.TB, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = cleanEnv(env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatalf("run %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// server is a running `spark2mqtt serve` process.
type server struct {
	t       testing.TB
	cmd     *exec.Cmd
	dataDir string
	// Addresses learnt from the "listening" log lines.
	DeviceAddr string
	MQTTAddr   string // embedded broker only

	mu    sync.Mutex
	lines []map[string]any // every JSON log line so far
	done  chan struct{}    // closed when the process has exited
	werr  error
}

// startServer starts `spark2mqtt serve` on free loopback ports with the data
// dir and extra environment, and waits until it listens.
func startServer(t testing.TB, dataDir string, env ...string) *server {
	t.Helper()
	base := []string{
		"SPARK2MQTT_DATA_DIR=" + dataDir,
		"SPARK2MQTT_DEVICE_LISTEN=127.0.0.1:0",
		"SPARK2MQTT_MQTT_LISTEN=127.0.0.1:0",
		"SPARK2MQTT_LOG_FORMAT=json",
		"SPARK2MQTT_LOG_LEVEL=debug",
	}
	cmd := exec.Command(binPath, "serve")
	cmd.Env = cleanEnv(append(base, env...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = os.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, cmd: cmd, dataDir: dataDir, done: make(chan struct{})}
	listening := make(chan struct{})
	var once sync.Once
	external := false
	for _, kv := range env {
		if strings.HasPrefix(kv, "SPARK2MQTT_MQTT_URL=") && kv != "SPARK2MQTT_MQTT_URL=" {
			external = true
		}
	}
	// Owned by the server: ends when the process closes stderr.
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			var m map[string]any
			if json.Unmarshal(line, &m) != nil {
				t.Logf("serve: %s", line)
				continue
			}
			if testing.Verbose() {
				t.Logf("serve: %s", line)
			}
			s.mu.Lock()
			s.lines = append(s.lines, m)
			switch what, addr := listenLine(m); what {
			case "devices":
				s.DeviceAddr = addr
			case "mqtt":
				s.MQTTAddr = addr
			}
			ready := s.DeviceAddr != "" && (external || s.MQTTAddr != "")
			s.mu.Unlock()
			if ready {
				once.Do(func() { close(listening) })
			}
		}
		s.werr = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			_ = cmd.Process.Kill()
			<-s.done
		}
	})
	select {
	case <-listening:
	case <-s.done:
		t.Fatalf("spark2mqtt exited before listening: %v", s.werr)
	case <-time.After(30 * time.Second):
		t.Fatal("spark2mqtt did not report its listening addresses within 30 s")
	}
	return s
}

// stop sends SIGTERM and requires a clean exit (status 0) within the
// shutdown timeout.
func (s *server) stop() {
	s.t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.t.Fatalf("signal: %v", err)
	}
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.t.Fatal("spark2mqtt did not exit within 20 s of SIGTERM")
	}
	if s.werr != nil {
		s.t.Fatalf("spark2mqtt exit: %v", s.werr)
	}
}

// logged reports whether a log line with msg and the given attributes was seen.
func (s *server) logged(msg string, attrs map[string]string) bool {
	return s.countLogged(msg, attrs) > 0
}

// countLogged counts the log lines with msg and the given attributes.
func (s *server) countLogged(msg string, attrs map[string]string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
next:
	for _, l := range s.lines {
		if l["msg"] != msg {
			continue
		}
		for k, v := range attrs {
			if fmt.Sprint(l[k]) != v {
				continue next
			}
		}
		n++
	}
	return n
}

// waitFor polls cond until it holds or the timeout ends (then fails).
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// watcher is an MQTT client (paho, the way a user's tool connects) that
// records every message it receives, retained ones included.
type watcher struct {
	t      testing.TB
	client mqtt.Client
	mu     sync.Mutex
	msgs   []mqttMsg
	notify chan struct{}
}

type mqttMsg struct {
	Topic    string
	Payload  string
	Retained bool
}

// newWatcher connects to the broker at addr (host:port or a URL) and
// subscribes to filter.
func newWatcher(t testing.TB, addr, filter string) *watcher {
	t.Helper()
	if !strings.Contains(addr, "://") {
		addr = "tcp://" + addr
	}
	w := &watcher{t: t, notify: make(chan struct{}, 1)}
	opts := mqtt.NewClientOptions().AddBroker(addr).
		SetClientID(fmt.Sprintf("e2e-%d", time.Now().UnixNano())).
		SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(true).
		SetOrderMatters(false)
	w.client = mqtt.NewClient(opts)
	if tok := w.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect %s: %v", addr, tok.Error())
	}
	t.Cleanup(func() { w.client.Disconnect(100) })
	if filter != "" {
		tok := w.client.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
			w.mu.Lock()
			w.msgs = append(w.msgs, mqttMsg{m.Topic(), string(m.Payload()), m.Retained()})
			w.mu.Unlock()
			select {
			case w.notify <- struct{}{}:
			default:
			}
		})
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("mqtt subscribe %s: %v", filter, tok.Error())
		}
	}
	return w
}

// publish sends payload to topic with QoS 1 and waits for the broker.
func (w *watcher) publish(topic, payload string, retain bool) {
	w.t.Helper()
	tok := w.client.Publish(topic, 1, retain, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		w.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// wait returns the first message received since index from on topic whose
// payload satisfies ok, waiting up to timeout; it fails the test otherwise.
func (w *watcher) wait(from int, topic string, timeout time.Duration, ok func(payload string) bool) mqttMsg {
	w.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		for _, m := range w.msgs[min(from, len(w.msgs)):] {
			if m.Topic == topic && ok(m.Payload) {
				w.mu.Unlock()
				return m
			}
		}
		w.mu.Unlock()
		select {
		case <-w.notify:
		case <-deadline.C:
			w.t.Fatalf("no message on %s matching the condition within %v; got:\n%s", topic, timeout, w.dump())
		}
	}
}

// mark returns the index of the next message to arrive.
func (w *watcher) mark() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.msgs)
}

func (w *watcher) dump() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var b strings.Builder
	for _, m := range w.msgs[max(0, len(w.msgs)-40):] {
		fmt.Fprintf(&b, "  %s %q retained=%v\n", m.Topic, m.Payload, m.Retained)
	}
	return b.String()
}

// retained returns the retained payload on topic as a fresh subscriber sees
// it ("" when there is none), waiting up to wait for it to arrive.
func retained(t testing.TB, addr, topic string, wait time.Duration) string {
	t.Helper()
	w := newWatcher(t, addr, topic)
	deadline := time.After(wait)
	for {
		w.mu.Lock()
		for _, m := range w.msgs {
			if m.Retained {
				w.mu.Unlock()
				return m.Payload
			}
		}
		w.mu.Unlock()
		select {
		case <-w.notify:
		case <-deadline:
			return ""
		}
	}
}

func equals(s string) func(string) bool { return func(p string) bool { return p == s } }

// jsonField decodes a JSON object payload.
func jsonField(p string) map[string]any {
	var m map[string]any
	if json.Unmarshal([]byte(p), &m) != nil {
		return nil
	}
	return m
}
