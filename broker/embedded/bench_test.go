package embedded

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// The publish benchmarks move 100-byte messages from a publisher to a
// subscriber handler through one embedded broker, for every pairing of
//
//   - iface: this package's broker.Client (in-process, inline),
//   - paho:  a plain paho client over loopback TCP (what Home Assistant or
//     Node-RED is to the broker),
//
// at QoS 0 and 1, plus mochi's own inline API on both ends (mochi/mochi) as
// the floor. The fair comparison for the interface's overhead is a pairing
// that differs in one end only, with the other end fixed: iface→paho against
// paho→paho shows what the bridge's publishing costs compared to a plain
// client publishing to the same subscriber; paho→iface against paho→paho
// shows the same for receiving. iface→iface against mochi→mochi isolates
// this package's layer (validation, payload copy, bounded hand-off to a
// delivery goroutine) over mochi's synchronous inline call.
//
// Two shapes:
//   - Throughput: up to 64 messages in flight (the publisher waits when 64
//     are unreceived), ns/op is per message, and p50/p99 include queueing.
//   - Latency: one message at a time; p50/p99 are publish call → handler
//     entry with nothing queued.
//
// Each Publish is complete when it returns: the interface's contract, and
// for paho the token is waited for (QoS 0: written to the socket; QoS 1:
// PUBACK received).
func BenchmarkPublish(b *testing.B) {
	for _, shape := range []struct {
		name   string
		window int
	}{{"throughput", 64}, {"latency", 1}} {
		for _, pair := range [][2]string{
			{"iface", "iface"}, {"mochi", "mochi"},
			{"iface", "paho"}, {"paho", "paho"}, {"paho", "iface"},
		} {
			for _, qos := range []byte{0, 1} {
				name := fmt.Sprintf("%s/pub=%s/sub=%s/qos=%d", shape.name, pair[0], pair[1], qos)
				b.Run(name, func(b *testing.B) {
					benchPublish(b, pair[0], pair[1], qos, shape.window)
				})
			}
		}
	}
}

// benchRig is one broker with the publisher and subscriber of a run.
type benchRig struct {
	publish func(payload []byte) error
	// subscribe registers h; h must be called with each message's payload.
	subscribe func(h func([]byte)) error
}

func newBenchRig(b *testing.B, pub, sub string, qos byte, topic string) benchRig {
	b.Helper()
	var rig benchRig
	if pub == "mochi" || sub == "mochi" {
		// mochi's own inline API needs a server built with InlineClient.
		srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
		b.Cleanup(func() { _ = srv.Close() })
		if err := srv.Serve(); err != nil {
			b.Fatal(err)
		}
		rig.publish = func(p []byte) error { return srv.Publish(topic, p, false, qos) }
		rig.subscribe = func(h func([]byte)) error {
			return srv.Subscribe(topic, 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) { h(pk.Payload) })
		}
		return rig
	}
	brk := startBroker(b, testConfig())
	ctx := context.Background()
	switch pub {
	case "iface":
		c := brk.NewClient()
		b.Cleanup(func() { _ = c.Close(ctx) })
		rig.publish = func(p []byte) error {
			return c.Publish(ctx, broker.Message{Topic: topic, Payload: p, QoS: qos})
		}
	case "paho":
		c := connectPaho(b, pahoOptions(tcpURL(brk), "bench-pub"))
		rig.publish = func(p []byte) error {
			tok := c.Publish(topic, qos, false, p)
			tok.Wait()
			return tok.Error()
		}
	}
	switch sub {
	case "iface":
		c := brk.NewClient()
		b.Cleanup(func() { _ = c.Close(ctx) })
		rig.subscribe = func(h func([]byte)) error {
			_, err := c.Subscribe(ctx, topic, qos, func(m broker.Message) { h(m.Payload) })
			return err
		}
	case "paho":
		c := connectPaho(b, pahoOptions(tcpURL(brk), "bench-sub"))
		rig.subscribe = func(h func([]byte)) error {
			return wait(ctx, c.Subscribe(topic, qos, func(_ paho.Client, m paho.Message) { h(m.Payload()) }))
		}
	}
	return rig
}

func benchPublish(b *testing.B, pub, sub string, qos byte, window int) {
	const topic = "spark/bench/fn/value" // writable by anonymous loopback clients
	rig := newBenchRig(b, pub, sub, qos, topic)

	epoch := time.Now()
	var (
		received atomic.Int64
		mu       sync.Mutex
		lat      []time.Duration // appended by the one handler goroutine
		progress = make(chan struct{}, 1)
	)
	err := rig.subscribe(func(p []byte) {
		sent := time.Duration(binary.BigEndian.Uint64(p))
		d := time.Since(epoch) - sent
		mu.Lock()
		lat = append(lat, d)
		mu.Unlock()
		received.Add(1)
		select {
		case progress <- struct{}{}:
		default:
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	waitReceived := func(n int64) {
		deadline := time.NewTimer(testTimeout)
		defer deadline.Stop()
		for received.Load() < n {
			select {
			case <-progress:
			case <-deadline.C:
				b.Fatalf("received %d of %d", received.Load(), n)
			}
		}
	}

	payload := make([]byte, 100)
	var sent int64
	b.ReportAllocs()
	for b.Loop() {
		if sent >= int64(window) {
			waitReceived(sent - int64(window) + 1)
		}
		binary.BigEndian.PutUint64(payload, uint64(time.Since(epoch)))
		if err := rig.publish(payload); err != nil {
			b.Fatal(err)
		}
		sent++
	}
	waitReceived(sent)

	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*50/100]), "p50-ns")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)]), "p99-ns")
}

// TestBenchRigsAgree runs each pairing briefly so the benchmark code stays
// correct under plain `go test`.
func TestBenchRigsAgree(t *testing.T) {
	if testing.Short() {
		t.Skip("runs each pairing for a second")
	}
	for _, pair := range [][2]string{{"iface", "iface"}, {"iface", "paho"}, {"paho", "iface"}, {"paho", "paho"}, {"mochi", "mochi"}} {
		res := testing.Benchmark(func(b *testing.B) { benchPublish(b, pair[0], pair[1], 1, 8) })
		if res.N == 0 {
			t.Errorf("%s→%s: benchmark failed", pair[0], pair[1])
		}
	}
}
