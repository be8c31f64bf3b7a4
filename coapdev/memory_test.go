package coapdev

import (
	"bufio"
	"context"
	"crypto/rsa"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
	"github.com/spark2mqtt/spark2mqtt/coapdev/keys"
	"github.com/spark2mqtt/spark2mqtt/coapdev/msg"
)

// Memory per idle session (issue 2: goal ≤ 16 KiB), with the simulated
// devices in another process so that only the server's memory is counted:
//
//	SPARK2MQTT_MEM_SESSIONS=5000 go test -run '^$' -bench IdleSessionMemory -benchtime 1x ./coapdev
//
// The benchmark re-runs this test binary as the child (TestMemChild, which
// skips unless SPARK2MQTT_MEMCHILD is set); the child runs a devsim Fleet
// of Photon 0.8 devices with one function and one variable each.
const (
	memSessionsEnv = "SPARK2MQTT_MEM_SESSIONS"
	memChildEnv    = "SPARK2MQTT_MEMCHILD"
)

func BenchmarkIdleSessionMemory(b *testing.B) {
	n, _ := strconv.Atoi(os.Getenv(memSessionsEnv))
	if n <= 0 {
		b.Skipf("set %s=N to connect N devices from a child process", memSessionsEnv)
	}
	tk := loadKeys(b)
	ts := startServer(b, func(c *Config) {
		c.Logger = nil
		c.Handler = nil
		c.Keys = func(keys.DeviceID, *rsa.PublicKey) (*rsa.PublicKey, error) { return &tk.device.PublicKey, nil }
		c.AppDescribeDelay = time.Second
	})
	before := memNow()

	cmd := exec.Command(os.Args[0], "-test.run=^TestMemChild$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d", memChildEnv, ts.addr, n))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close() // the child stops its fleet and exits
		if err := cmd.Wait(); err != nil {
			b.Errorf("child: %v", err)
		}
	}()
	start := time.Now()
	waitFor(b, time.Duration(n)*20*time.Millisecond+time.Minute, "all sessions", func() bool {
		return ts.srv.Stats().Sessions == int64(n)
	})
	connect := time.Since(start)
	// Let every session take its application Describe and go idle.
	waitFor(b, time.Minute, "descriptions", func() bool {
		for _, s := range ts.srv.Sessions() {
			if _, app := s.Description(); !app {
				return false
			}
		}
		return true
	})
	after := memNow()
	if os.Getenv("SPARK2MQTT_MEM_DEBUG") != "" {
		for i := range 3 {
			time.Sleep(time.Second)
			m := memNow()
			b.Logf("again %d: heap %d KiB stacks %d KiB rss %d KiB", i, m.heap>>10, m.stack>>10, m.rss>>10)
		}
	}
	if path := os.Getenv("SPARK2MQTT_MEM_PROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		pprof.Lookup("heap").WriteTo(f, 0)
		f.Close()
	}
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
	b.ReportMetric(per(after.rss, before.rss), "rss-B/session")
	b.ReportMetric(per(after.heap, before.heap), "heap-B/session")
	b.ReportMetric(per(after.stack, before.stack), "stack-B/session")
	b.ReportMetric(per(after.heap+after.stack, before.heap+before.stack), "heap+stack-B/session")
	b.ReportMetric(connect.Seconds(), "connect-s")
	b.Logf("%d sessions: rss %d → %d KiB, heap in use %d → %d KiB, stacks %d → %d KiB, goroutines %d → %d",
		n, before.rss>>10, after.rss>>10, before.heap>>10, after.heap>>10, before.stack>>10, after.stack>>10,
		before.goroutines, after.goroutines)
}

type memSample struct {
	rss, heap, stack uint64
	goroutines       int
}

// memNow collects garbage, returns freed memory to the OS and samples the
// RSS and the Go heap and stacks.
func memNow() memSample {
	for range 4 { // each cycle halves the stacks that use under a quarter
		runtime.GC()
	}
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{rss: rss(), heap: ms.HeapInuse, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
}

// rss returns the resident set size from /proc/self/status (0 elsewhere).
func rss() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestMemChild is the device side of BenchmarkIdleSessionMemory; it runs
// only as its child process.
func TestMemChild(t *testing.T) {
	spec := os.Getenv(memChildEnv)
	if spec == "" {
		t.Skip("child of BenchmarkIdleSessionMemory")
	}
	addr, count, _ := strings.Cut(spec, ",")
	n, err := strconv.Atoi(count)
	if err != nil {
		t.Fatal(err)
	}
	tk := loadKeys(t)
	fleet, err := devsim.NewFleet(devsim.FleetConfig{
		Addr:       addr,
		Count:      n,
		RetryDelay: -1,
		Config: func(int) devsim.Config {
			return devsim.Config{
				Firmware:    devsim.Photon08,
				DeviceKey:   tk.device,
				ServerKey:   &tk.server.PublicKey,
				NoRateLimit: true,
				Functions:   []devsim.Function{{Name: "heater", Call: func(context.Context, string) int32 { return 1 }}},
				Variables: []devsim.Variable{{Name: "temp", Type: msg.VarDouble,
					Get: func() msg.Value { return msg.Value{Type: msg.VarDouble, Double: 21.5} }}},
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fleet.Run(ctx) }()
	io.Copy(io.Discard, os.Stdin) // until the parent closes it
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
