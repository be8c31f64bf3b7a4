package embedded

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// Memory per idle MQTT client. Gated because it opens 2 × n sockets:
//
//	ulimit -n 30000
//	SPARK2MQTT_MEMTEST=10000 go test -run TestIdleClientMemory -v ./broker/embedded
//	SPARK2MQTT_MEMTEST=10000 SPARK2MQTT_MEMTEST_PENDING=8192 go test -run TestIdleClientMemory -v ./broker/embedded
//
// SPARK2MQTT_MEMTEST_CHURN=1 connects every client twice (all connect, all
// leave, all connect again), so freed memory is reused as in a broker that
// has run for a while.
//
// SPARK2MQTT_MEMTEST_SUBSCRIBE=1 has every client subscribe to a topic
// with a retained message and receive it, as Home Assistant and other
// subscribers do, so each client's write loop has written a message.
//
// The broker runs with the GODEBUG it is deployed with (deployedGODEBUG).
// When GODEBUG does not name that setting, the test runs again in a child
// process with it added; GODEBUG=adaptivestackstart=1 measures Go's
// default instead.
//
// The broker runs in the test process; the clients run in a child process
// (this test binary again, in TestMemoryClients), each a TCP connection that
// sent a minimal CONNECT and got its CONNACK. The figures are the growth of
// this process's VmRSS (/proc/self/status) and Go heap (HeapInuse after a
// GC) divided by the number of clients. One setting per process: RSS does not
// shrink back between settings.
//
// Measured (10,000 clients, Go 1.26, mochi v2.7.9, linux/amd64): 27 KiB of
// RSS per client, fresh or with churn: 20 KiB of goroutine stacks and 6.3
// KiB of heap. The stacks are mochi's two goroutines per client, and no
// setting lowers them. The read loop (our listener's goroutine, running
// mochi's attachClient) goes 11 to 14 KiB deep for every packet it reads:
// attachClient, Client.Read, ReadPacket and Hooks.OnPacketRead each hold
// copies of the 800-byte packets.Packet in their frames. So its stack
// grows to 16 KiB at CONNECT, and it keeps 5.7 KiB in use while it waits,
// more than the quarter the GC requires before it halves a stack. The write
// loop keeps 2.2 KiB of its 4 KiB in use. A bare mochi server (its own TCP
// listener, no hooks of ours) holds the same 16 + 4 KiB per client. Once a
// client has received a message, its write loop has gone deeper than 4 KiB
// (mochi's WriteLoop and WritePacket frames alone take 3.5 KiB) and keeps
// 8 KiB: 24 KiB of stacks and 29 KiB of RSS per subscribed client
// (SPARK2MQTT_MEMTEST_SUBSCRIBE=1).
func TestIdleClientMemory(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SPARK2MQTT_MEMTEST"))
	if n == 0 {
		t.Skip("set SPARK2MQTT_MEMTEST=<clients> (and raise ulimit -n) to measure")
	}
	// Every setting is read before the test runs again in a child, so that
	// go test's cache tells the settings apart (churn is the client
	// process's business, but it is read here too for that).
	pending, _ := strconv.Atoi(os.Getenv("SPARK2MQTT_MEMTEST_PENDING"))
	churn := os.Getenv("SPARK2MQTT_MEMTEST_CHURN") != ""
	subscribe := os.Getenv("SPARK2MQTT_MEMTEST_SUBSCRIBE") != ""
	if !strings.Contains(os.Getenv("GODEBUG"), "adaptivestackstart=") {
		runWithGODEBUG(t, deployedGODEBUG)
		return
	}
	cfg := testConfig()
	if pending > 0 {
		cfg.ClientWritesPending = pending
	}
	b := startBroker(t, cfg)
	if subscribe {
		c := b.NewClient()
		defer func() { _ = c.Close(ctxT(t)) }()
		if err := c.Publish(ctxT(t), broker.Message{Topic: memTestTopic, Payload: []byte("42"), Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	rss0, heap0, stack0 := memNow(t)

	cmd := exec.Command(os.Args[0], "-test.run=^TestMemoryClients$", "-test.v")
	cmd.Env = append(os.Environ(), "SPARK2MQTT_MEMCLIENTS="+b.Addr().String()+","+strconv.Itoa(n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = stdin.Close() // the child exits on EOF
		_ = cmd.Wait()
	}()
	ready := make(chan string, 1)
	go func() { // ends when the child closes its stdout
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY") {
				ready <- sc.Text()
			}
		}
		close(ready)
	}()
	select {
	case line, ok := <-ready:
		if !ok {
			t.Fatal("client process ended before it was ready")
		}
		t.Log(line)
	case <-time.After(5 * time.Minute):
		t.Fatal("clients not connected after 5 minutes")
	}
	waitFor(t, "clients connected", func() bool { return b.Stats().ClientsConnected == int64(n) })

	rss1, heap1, stack1 := memNow(t)
	perClient := func(a, b uint64) float64 { return (float64(b) - float64(a)) / 1024 / float64(n) }
	start := []metrics.Sample{{Name: "/gc/stack/starting-size:bytes"}}
	metrics.Read(start)
	t.Logf("ClientWritesPending=%d clients=%d churn=%t subscribe=%t: RSS %.1f KiB/client (%.1f → %.1f MiB); Go heap in use %.1f KiB/client; goroutine stacks %.1f KiB/client (%d goroutines; a new one starts with %d KiB)",
		cfg.withDefaults().ClientWritesPending, n, churn, subscribe,
		perClient(rss0, rss1), float64(rss0)/(1<<20), float64(rss1)/(1<<20),
		perClient(heap0, heap1), perClient(stack0, stack1), runtime.NumGoroutine(), start[0].Value.Uint64()>>10)
}

// deployedGODEBUG is the GODEBUG setting deploy/Dockerfile and the systemd
// unit give the binary: new goroutines start with the minimum stack rather
// than the average one at the last GC. With thousands of clients connected
// that average is 8 KiB (see TestIdleClientMemory), so the write loop of
// every client that connects keeps 8 KiB where it needs 4: 4 KiB more per
// client once clients reconnect.
const deployedGODEBUG = "adaptivestackstart=0"

// runWithGODEBUG runs the calling test again in a child process with
// setting added to GODEBUG, and logs the child's log lines.
func runWithGODEBUG(t *testing.T, setting string) {
	t.Helper()
	godebug := setting
	if g := os.Getenv("GODEBUG"); g != "" {
		godebug = g + "," + setting
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), "GODEBUG="+godebug)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s with GODEBUG=%s: %v\n%s", t.Name(), godebug, err, out)
	}
	t.Logf("GODEBUG=%s", godebug)
	for _, line := range strings.Split(string(out), "\n") {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, "memory_test.go:") {
			t.Log(l[strings.Index(l, " ")+1:])
		}
	}
}

func gcRounds() int {
	n, _ := strconv.Atoi(os.Getenv("GCROUNDS"))
	return max(n, 1)
}

// memNow returns VmRSS, the Go heap in use and the goroutine stacks in use,
// in bytes, after a GC.
func memNow(t *testing.T) (rss, heap, stack uint64) {
	t.Helper()
	for range gcRounds() {
		runtime.GC()
	}
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb * 1024, ms.HeapInuse, ms.StackInuse
		}
	}
	t.Fatal("no VmRSS line")
	return 0, 0, 0
}

// TestMemoryClients is the client process of TestIdleClientMemory: it runs
// only when SPARK2MQTT_MEMCLIENTS=addr,n is set, connects n idle MQTT
// clients, prints READY and holds them until stdin closes.
func TestMemoryClients(t *testing.T) {
	spec := os.Getenv("SPARK2MQTT_MEMCLIENTS")
	if spec == "" {
		t.Skip("the client half of TestIdleClientMemory")
	}
	addr, ns, _ := strings.Cut(spec, ",")
	n, err := strconv.Atoi(ns)
	if err != nil {
		t.Fatal(err)
	}
	// With churn, every client connects, all disconnect, and all connect
	// again: the broker's memory is then reused rather than fresh, as in a
	// broker that has run for a while.
	subscribe := os.Getenv("SPARK2MQTT_MEMTEST_SUBSCRIBE") != ""
	rounds := 1
	if os.Getenv("SPARK2MQTT_MEMTEST_CHURN") != "" {
		rounds = 2
	}
	conns := make([]net.Conn, n)
	for round := range rounds {
		if round > 0 {
			for _, c := range conns {
				_ = c.Close()
			}
			time.Sleep(2 * time.Second) // let the broker see them go
		}
		var wg sync.WaitGroup
		errs := make(chan error, 1)
		next := make(chan int)
		for range 64 {
			wg.Go(func() {
				for i := range next {
					c, err := connectIdle(addr, fmt.Sprintf("idle-%d", i))
					if err == nil && subscribe {
						if err = subscribeRetained(c); err != nil {
							_ = c.Close()
						}
					}
					if err != nil {
						select {
						case errs <- err:
						default:
						}
						continue
					}
					conns[i] = c
				}
			})
		}
		for i := range n {
			next <- i
		}
		close(next)
		wg.Wait()
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
	}
	fmt.Printf("READY %d clients, %d rounds\n", n, rounds)
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		_ = c.Close()
	}
}

// connectIdle opens a connection and completes an MQTT 3.1.1 CONNECT with
// a 5-minute keepalive.
func connectIdle(addr, id string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		return nil, err
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: true, Keepalive: 300,
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		_ = c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := c.Write(buf.Bytes()); err != nil {
		_ = c.Close()
		return nil, err
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		_ = c.Close()
		return nil, fmt.Errorf("connack %x: %w", ack, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// memTestTopic holds the retained message of SPARK2MQTT_MEMTEST_SUBSCRIBE.
const memTestTopic = "spark/memtest/var/value"

// subscribeRetained subscribes c (connected by connectIdle) to
// memTestTopic at QoS 0 and reads the SUBACK and the retained message.
func subscribeRetained(c net.Conn) error {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: 4,
		PacketID:        1,
		Filters:         packets.Subscriptions{{Filter: memTestTopic}},
	}
	var buf bytes.Buffer
	if err := pk.SubscribeEncode(&buf); err != nil {
		return err
	}
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := c.Write(buf.Bytes()); err != nil {
		return err
	}
	// The SUBACK and the PUBLISH, in either order; both are shorter than
	// 128 bytes, so their remaining length is one byte.
	got := map[byte]bool{}
	for range 2 {
		h := make([]byte, 2)
		if _, err := io.ReadFull(c, h); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, make([]byte, h[1])); err != nil {
			return err
		}
		got[h[0]>>4] = true
	}
	if !got[packets.Suback] || !got[packets.Publish] {
		return fmt.Errorf("subscribe %s: got packet types %v, want SUBACK and PUBLISH", memTestTopic, got)
	}
	return nil
}
