package external

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/internal/mosquittotest"
)

// Benchmarks: publish throughput of 100-byte messages through the
// broker.Client interface and through a plain paho client, against the same
// Mosquitto in the same run, with the publish → handler latency of each
// message (the payload carries its send time). Each publish waits for its
// completion (QoS 0: written; QoS 1: PUBACK), like broker.Client.Publish.
//
//	go test -run '^$' -bench . -count 10 ./broker/external | tee new.txt
//	benchstat -col /via new.txt

const benchPayload = 100

// latencies collects publish → handler delays.
type latencies struct {
	mu   sync.Mutex
	ns   []int64
	got  atomic.Int64
	last atomic.Int64  // unix ns of the latest delivery
	sig  chan struct{} // capacity 1: a delivery happened (for BenchmarkLatency)
}

func newLatencies() *latencies { return &latencies{sig: make(chan struct{}, 1)} }

func (l *latencies) record(payload []byte) {
	now := time.Now().UnixNano()
	if len(payload) >= 8 {
		d := now - int64(binary.BigEndian.Uint64(payload))
		l.mu.Lock()
		l.ns = append(l.ns, d)
		l.mu.Unlock()
	}
	l.got.Add(1)
	l.last.Store(now)
	select {
	case l.sig <- struct{}{}:
	default:
	}
}

// report waits for the messages still on their way and reports the
// end-to-end rate (sent messages over the time until the last one arrived),
// the latency percentiles and the loss.
func (l *latencies) report(b *testing.B, start time.Time, sent int64) {
	deadline := time.Now().Add(10 * time.Second)
	for l.got.Load() < sent && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if last := l.last.Load(); last > 0 {
		b.ReportMetric(float64(l.got.Load())/time.Unix(0, last).Sub(start).Seconds(), "msgs/s")
	}
	l.mu.Lock()
	ns := slices.Clone(l.ns)
	l.mu.Unlock()
	if len(ns) == 0 {
		return
	}
	slices.Sort(ns)
	pct := func(p float64) float64 { return float64(ns[int(p*float64(len(ns)-1))]) / 1e3 }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	if lost := sent - l.got.Load(); lost > 0 {
		b.ReportMetric(float64(lost), "lost")
	}
}

func payload() []byte {
	p := make([]byte, benchPayload)
	binary.BigEndian.PutUint64(p, uint64(time.Now().UnixNano()))
	return p
}

// publisher is one side of the comparison.
type publisher interface {
	publish(topic string, qos byte, p []byte) error
}

type ifacePub struct{ c broker.Client }

func (p ifacePub) publish(topic string, qos byte, b []byte) error {
	return p.c.Publish(context.Background(), broker.Message{Topic: topic, Payload: b, QoS: qos})
}

type pahoPub struct{ c paho.Client }

func (p pahoPub) publish(topic string, qos byte, b []byte) error {
	tok := p.c.Publish(topic, qos, false, b)
	tok.Wait()
	return tok.Error()
}

func benchIface(b *testing.B, mq *mosquittotest.Broker, topic string, qos byte, lat *latencies) publisher {
	// Keep-alive as the plain paho clients have it (30 s).
	cfg, _ := testConfig(b, mq.URL)
	cfg.QueueSize, cfg.KeepAlive = 1<<16, 30*time.Second
	sub := dial(b, cfg)
	if _, err := sub.Subscribe(ctxT(b), topic, qos, func(m broker.Message) { lat.record(m.Payload) }); err != nil {
		b.Fatal(err)
	}
	pcfg, _ := testConfig(b, mq.URL)
	pcfg.KeepAlive = 30 * time.Second
	return ifacePub{dial(b, pcfg)}
}

func pahoClient(b *testing.B, url string) paho.Client {
	o := paho.NewClientOptions().AddBroker(url).SetClientID(newClientID()).SetProtocolVersion(4).
		SetAutoReconnect(false).SetOrderMatters(true).SetKeepAlive(30 * time.Second)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(opTimeout) || tok.Error() != nil {
		b.Fatalf("paho connect: %v", tok.Error())
	}
	b.Cleanup(func() { c.Disconnect(250) })
	return c
}

func benchPaho(b *testing.B, mq *mosquittotest.Broker, topic string, qos byte, lat *latencies) publisher {
	sub := pahoClient(b, mq.URL)
	tok := sub.Subscribe(topic, qos, func(_ paho.Client, m paho.Message) { lat.record(m.Payload()) })
	if !tok.WaitTimeout(opTimeout) || tok.Error() != nil {
		b.Fatalf("paho subscribe: %v", tok.Error())
	}
	return pahoPub{pahoClient(b, mq.URL)}
}

// benchBroker is the Mosquitto configuration of the benchmarks:
// set_tcp_nodelay, because with Nagle on its sockets a lone QoS 0 message
// waits for the previous one's delayed ACK (up to 40 ms) and the kernel,
// not the clients, would be measured; no in-flight or queue limits, because
// a subscriber that falls behind a flood would otherwise lose messages in
// the broker (its default queue is 1000) and the loss would be counted
// against the client.
var benchBroker = []string{"set_tcp_nodelay true", "max_inflight_messages 0", "max_queued_messages 0"}

// vias are the two sides of every comparison.
var vias = []struct {
	name string
	make func(*testing.B, *mosquittotest.Broker, string, byte, *latencies) publisher
}{{"paho", benchPaho}, {"iface", benchIface}}

// BenchmarkThroughput publishes as fast as one goroutine can (each Publish
// waiting for its completion). ns/op is the publish call; msgs/s is
// end-to-end, up to the last delivery. At QoS 0 nothing slows the publisher
// down, so the subscriber falls behind: the latency it reports is queueing
// in the broker, not the client (see BenchmarkLatency).
func BenchmarkThroughput(b *testing.B) {
	mq := mosquittotest.Start(b, mosquittotest.Options{Extra: benchBroker})
	for _, qos := range []byte{0, 1} {
		for _, via := range vias {
			b.Run(fmt.Sprintf("qos=%d/via=%s", qos, via.name), func(b *testing.B) {
				topic := fmt.Sprintf("bench/%s/%d/%d", via.name, qos, time.Now().UnixNano())
				lat := newLatencies()
				pub := via.make(b, mq, topic, qos, lat)
				b.ReportAllocs()
				b.SetBytes(benchPayload)
				var sent int64
				start := time.Now()
				for b.Loop() {
					if err := pub.publish(topic, qos, payload()); err != nil {
						b.Fatal(err)
					}
					sent++
				}
				lat.report(b, start, sent)
			})
		}
	}
}

// BenchmarkLatency publishes one message at a time and waits until the
// subscriber's handler has it: ns/op is the publish → handler round, and
// p50/p99 are publish → handler delays, with no queueing anywhere.
func BenchmarkLatency(b *testing.B) {
	mq := mosquittotest.Start(b, mosquittotest.Options{Extra: benchBroker})
	for _, qos := range []byte{0, 1} {
		for _, via := range vias {
			b.Run(fmt.Sprintf("qos=%d/via=%s", qos, via.name), func(b *testing.B) {
				topic := fmt.Sprintf("bench/lat/%s/%d/%d", via.name, qos, time.Now().UnixNano())
				lat := newLatencies()
				pub := via.make(b, mq, topic, qos, lat)
				b.ReportAllocs()
				var sent int64
				start := time.Now()
				for b.Loop() {
					if err := pub.publish(topic, qos, payload()); err != nil {
						b.Fatal(err)
					}
					sent++
					for lat.got.Load() < sent {
						<-lat.sig
					}
				}
				lat.report(b, start, sent)
			})
		}
	}
}

// BenchmarkThroughputParallel is BenchmarkThroughput with 8 publishing
// goroutines on one client, which is how the bridge publishes (one
// goroutine per device).
func BenchmarkThroughputParallel(b *testing.B) {
	mq := mosquittotest.Start(b, mosquittotest.Options{Extra: benchBroker})
	for _, qos := range []byte{0, 1} {
		for _, via := range vias {
			b.Run(fmt.Sprintf("qos=%d/via=%s", qos, via.name), func(b *testing.B) {
				topic := fmt.Sprintf("bench/par/%s/%d/%d", via.name, qos, time.Now().UnixNano())
				lat := newLatencies()
				pub := via.make(b, mq, topic, qos, lat)
				b.ReportAllocs()
				b.SetBytes(benchPayload)
				b.SetParallelism(4) // 4 × GOMAXPROCS goroutines
				var sent atomic.Int64
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := pub.publish(topic, qos, payload()); err != nil {
							b.Error(err)
							return
						}
						sent.Add(1)
					}
				})
				lat.report(b, start, sent.Load())
			})
		}
	}
}

// pairedSide is one of the two clients (paho, iface) a paired benchmark
// alternates on the same Mosquitto.
type pairedSide struct {
	lat       *latencies
	pub       publisher
	topic     string
	sent      int64
	took, e2e time.Duration // BenchmarkThroughputPaired's timings
}

// pairedSides makes the two sides, in the order of vias, each publishing
// and subscribing on a topic of its own.
func pairedSides(b *testing.B, mq *mosquittotest.Broker, name string, qos byte) [2]*pairedSide {
	var sides [2]*pairedSide
	for i, via := range vias {
		s := &pairedSide{lat: newLatencies(), topic: fmt.Sprintf("bench/%s/%s/%d/%d", name, via.name, qos, time.Now().UnixNano())}
		s.pub = via.make(b, mq, s.topic, qos, s.lat)
		sides[i] = s
	}
	return sides
}

// publish publishes n messages as fast as one goroutine can.
func (s *pairedSide) publish(b *testing.B, qos byte, n int) {
	for range n {
		if err := s.pub.publish(s.topic, qos, payload()); err != nil {
			b.Fatal(err)
		}
	}
	s.sent += int64(n)
}

// await waits until the side's handler has had every message sent.
func (s *pairedSide) await(b *testing.B) {
	timeout := time.NewTimer(opTimeout)
	defer timeout.Stop()
	for s.lat.got.Load() < s.sent {
		select {
		case <-s.lat.sig:
		case <-timeout.C:
			b.Fatalf("%d of %d messages arrived", s.lat.got.Load(), s.sent)
		}
	}
}

// alternate runs one for both sides per b.Loop iteration, changing who goes
// first each time so that neither always follows the other.
func alternate(b *testing.B, sides [2]*pairedSide, one func(*pairedSide)) {
	b.ReportAllocs()
	turn := 0
	for b.Loop() {
		one(sides[turn])
		one(sides[1-turn])
		turn = 1 - turn
	}
}

// BenchmarkLatencyPaired is BenchmarkLatency with the two sides taking
// turns, one message each, on the same Mosquitto: both see the same
// machine at the same moments, so their ratio holds on a machine whose load
// changes from one second to the next (where the ratio of two runs taken a
// second apart does not). It reports each side's percentiles and the
// ratios iface/paho; ns/op is one message of each.
func BenchmarkLatencyPaired(b *testing.B) {
	mq := mosquittotest.Start(b, mosquittotest.Options{Extra: benchBroker})
	for _, qos := range []byte{0, 1} {
		b.Run(fmt.Sprintf("qos=%d", qos), func(b *testing.B) {
			sides := pairedSides(b, mq, "pair", qos)
			alternate(b, sides, func(s *pairedSide) {
				s.publish(b, qos, 1)
				s.await(b)
			})
			var p50, p99 [2]float64
			for i, s := range sides {
				ns := slices.Clone(s.lat.ns)
				if len(ns) == 0 {
					return
				}
				slices.Sort(ns)
				p50[i] = float64(ns[len(ns)/2]) / 1e3
				p99[i] = float64(ns[int(0.99*float64(len(ns)-1))]) / 1e3
				b.ReportMetric(p50[i], vias[i].name+"-p50-µs")
				b.ReportMetric(p99[i], vias[i].name+"-p99-µs")
			}
			b.ReportMetric(p50[1]/p50[0], "p50-ratio")
			b.ReportMetric(p99[1]/p99[0], "p99-ratio")
		})
	}
}

// BenchmarkThroughputPaired is BenchmarkThroughput with the two sides
// taking turns, a burst of messages each, on the same Mosquitto (see
// BenchmarkLatencyPaired for why). Each burst is published as fast as one
// goroutine can and timed twice: until the last Publish returned (pub) and
// until the subscriber's handler has the last message (e2e). It reports each
// side's time per message and the ratios iface/paho; ns/op is one burst of
// each.
func BenchmarkThroughputPaired(b *testing.B) {
	const burst = 20
	mq := mosquittotest.Start(b, mosquittotest.Options{Extra: benchBroker})
	for _, qos := range []byte{0, 1} {
		b.Run(fmt.Sprintf("qos=%d", qos), func(b *testing.B) {
			sides := pairedSides(b, mq, "tpair", qos)
			alternate(b, sides, func(s *pairedSide) {
				start := time.Now()
				s.publish(b, qos, burst)
				s.took += time.Since(start)
				s.await(b)
				s.e2e += time.Since(start)
			})
			for _, s := range sides {
				if s.sent == 0 {
					return
				}
			}
			per := func(d time.Duration, s *pairedSide) float64 { return float64(d.Nanoseconds()) / float64(s.sent) }
			for i, s := range sides {
				b.ReportMetric(per(s.took, s), vias[i].name+"-pub-ns/msg")
				b.ReportMetric(per(s.e2e, s), vias[i].name+"-e2e-ns/msg")
			}
			b.ReportMetric(per(sides[1].took, sides[1])/per(sides[0].took, sides[0]), "pub-ratio")
			b.ReportMetric(per(sides[1].e2e, sides[1])/per(sides[0].e2e, sides[0]), "e2e-ratio")
		})
	}
}
