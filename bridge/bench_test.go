package bridge

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
)

// BenchmarkCallRoundTrip: an MQTT 5 request on spark/D/fn/heater through
// the embedded broker, the bridge, a coapdev session over loopback TCP to a
// simulated Core, and back as the response: sequential calls, with p50 and
// p99 reported.
func BenchmarkCallRoundTrip(b *testing.B) {
	h := newBenchHarness(b)
	_, dev := h.addHeater(heaterID)
	dev.connect()
	c := h.brk.NewClient()
	ctx := context.Background()
	defer func() { _ = c.Close(ctx) }()
	got := make(chan struct{}, 1)
	if _, err := c.Subscribe(ctx, "bench/reply", 1, func(broker.Message) { got <- struct{}{} }); err != nil {
		b.Fatal(err)
	}
	req := broker.Message{Topic: topicOf(dev.id, "fn", "heater"), Payload: []byte("on"), QoS: 1, ResponseTopic: "bench/reply", CorrelationData: []byte{1}}
	var lat []time.Duration
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		if err := c.Publish(ctx, req); err != nil {
			b.Fatal(err)
		}
		<-got
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkDeviceEvents: events from one simulated device, published by the
// bridge on spark/D/event/NAME to one in-process subscriber; every event
// must arrive. (A real device sends at most 4 events/s; this one sends
// back to back, so coapdev's per-session handler queue is made deep enough
// for the burst.)
func BenchmarkDeviceEvents(b *testing.B) {
	h := newHarness(b, Config{PollInterval: time.Hour})
	h.handlerQ = 1 << 16
	h.startBridge()
	dev := h.addDevice(devsim.Config{DeviceID: testID(2), NoRateLimit: true})
	dev.connect()
	c := h.brk.NewClient()
	ctx := context.Background()
	defer func() { _ = c.Close(ctx) }()
	var got atomic.Int64
	if _, err := c.Subscribe(ctx, topicOf(dev.id, "event", "#"), 1, func(broker.Message) { got.Add(1) }); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	n := int64(0)
	for b.Loop() {
		if err := dev.Publish(ctx, "bench", []byte("48.5"), 60, false); err != nil {
			b.Fatal(err)
		}
		n++
	}
	// Wait until the bridge has published them all, then for the
	// subscriber's queue to settle; report what did not arrive.
	deadline := time.Now().Add(waitLong)
	for h.br.Stats().EventsOut+h.br.Stats().EventsDropped < uint64(n) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	for got.Load()+int64(c.Dropped()) < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(h.br.Stats().EventsDropped+h.srv.Stats().EventsDropped), "lost-in-bridge")
	b.ReportMetric(float64(c.Dropped()), "lost-at-subscriber")
}

// newBenchHarness starts the real parts for a benchmark.
func newBenchHarness(b *testing.B) *harness {
	b.Helper()
	h := newHarness(b, Config{PollInterval: time.Hour})
	h.startBridge()
	return h
}
