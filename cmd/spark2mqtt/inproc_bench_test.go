package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"runtime/trace"
	"sync"
	"testing"
	"time"
)

// startInProcess runs serve in this process (for the execution tracer and
// profiles of the whole path: go test -trace, -cpuprofile) on loopback
// ports with the data dir, and returns its device and MQTT addresses. It
// stops serve and waits for it at the test's end.
func startInProcess(t testing.TB, dataDir string) (deviceAddr, mqttAddr string) {
	t.Helper()
	for _, kv := range [][2]string{
		{"SPARK2MQTT_DATA_DIR", dataDir},
		{"SPARK2MQTT_DEVICE_LISTEN", "127.0.0.1:0"},
		{"SPARK2MQTT_MQTT_LISTEN", "127.0.0.1:0"},
		{"SPARK2MQTT_POLL_INTERVAL", "1h"},
		{"SPARK2MQTT_LOG_LEVEL", "info"},
		{"SPARK2MQTT_LOG_FORMAT", "json"},
	} {
		t.Setenv(kv[0], kv[1])
	}
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	log := newLogger(c, pw)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { // ends when ctx is cancelled; waited for at cleanup
		served <- serve(ctx, c, log)
		pw.Close()
	}()
	var mu sync.Mutex
	addrs := map[string]string{}
	ready := make(chan struct{})
	scanned := make(chan struct{})
	go func() { // ends when serve returns and closes pw
		defer close(scanned)
		var once sync.Once
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				continue
			}
			w, addr := listenLine(m)
			if w == "" {
				continue
			}
			mu.Lock()
			addrs[w] = addr
			if addrs["devices"] != "" && addrs["mqtt"] != "" {
				once.Do(func() { close(ready) })
			}
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
		<-scanned
	})
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not listen within 30 s")
	}
	mu.Lock()
	defer mu.Unlock()
	return addrs["devices"], addrs["mqtt"]
}

// BenchmarkMQTTCallRoundTripInProcess is BenchmarkMQTTCallRoundTrip with
// serve and the device in this process, so that `go test -trace` and
// `-cpuprofile` see every goroutine of the path; each call is marked in the
// trace by the user log records "call start" and "call end". It leaves out
// what separate processes add (waking another process per hop), which
// BenchmarkMQTTCallRoundTrip measures.
func BenchmarkMQTTCallRoundTripInProcess(b *testing.B) {
	dataDir := b.TempDir()
	devAddr, mqttAddr := startInProcess(b, dataDir)
	h := newSimHeater(b, dataDir)
	h.connect(devAddr)
	base := "spark/" + heaterID + "/fn/heater"
	w := newWatcher(b, mqttAddr, "spark/"+heaterID+"/availability")
	w.wait(0, "spark/"+heaterID+"/availability", 20*time.Second, equals("online"))
	call := pahoCaller(b, mqttAddr, base)
	measureCalls(b, func(arg string) string {
		trace.Log(context.Background(), "call", "start")
		r := call(arg)
		trace.Log(context.Background(), "call", "end")
		return r
	})
}
