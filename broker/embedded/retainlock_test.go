package embedded

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/go-cmp/cmp"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// TestRetainedScanRace: retained messages written (by the bridge and by a
// network client, set and cleared so mochi's index nodes come and go)
// while network clients SUBSCRIBE with wildcards, one and several filters
// a packet, and the bridge subscribes inline. Under -race this reports
// mochi's unlocked read of a node's retained path (topics.go scanMessages)
// unless every scan holds the index lock (retainlock.go). The write queues
// are small so that the retained bursts make the pacer wait inside a
// SUBSCRIBE's window. At the end a new subscriber sees exactly the
// retained state left by the writers.
func TestRetainedScanRace(t *testing.T) {
	const (
		writers = 3
		topics  = 16 // per writer
		rounds  = 25
		subs    = 3 // network subscribers
	)
	cfg := testConfig()
	cfg.ClientWritesPending = 8
	b := startBroker(t, cfg)
	if b.retain.index == nil {
		t.Fatal("retained scans unguarded: mochi's index lock not found")
	}
	bridge := b.NewClient()
	t.Cleanup(func() { _ = bridge.Close(ctxT(t)) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a hang fails; a loaded machine does not
	t.Cleanup(cancel)

	// payload is what writer w publishes on its topic i in round r: nil
	// clears the retained message.
	payload := func(w, i, r int) []byte {
		if (w+i+r)%3 == 0 {
			return nil
		}
		return fmt.Appendf(nil, "%d", r)
	}
	topic := func(w, i int) string { return fmt.Sprintf("race/w%d/t%d", w, i) }
	const netWriter = writers // the network writer's index

	var (
		writing sync.WaitGroup
		reading sync.WaitGroup
		done    atomic.Bool
		got     atomic.Int64
	)
	for w := range writers {
		writing.Go(func() {
			for r := range rounds {
				for i := range topics {
					m := broker.Message{Topic: topic(w, i), Payload: payload(w, i, r), QoS: byte(r % 2), Retain: true}
					if err := bridge.Publish(ctx, m); err != nil {
						t.Errorf("publish %s: %v", m.Topic, err)
						return
					}
				}
			}
		})
	}
	netPub := connectPaho(t, pahoOptions(tcpURL(b), "race-pub"))
	writing.Go(func() {
		for r := range rounds {
			for i := range topics {
				if err := wait(ctx, netPub.Publish(topic(netWriter, i), 1, true, payload(netWriter, i, r))); err != nil {
					t.Errorf("network publish: %v", err)
					return
				}
			}
		}
	})

	count := func(paho.Client, paho.Message) { got.Add(1) }
	for s := range subs {
		c := connectPaho(t, pahoOptions(tcpURL(b), fmt.Sprintf("race-sub%d", s)))
		reading.Go(func() {
			for n := 0; n < 3 || !done.Load(); n++ {
				var tok paho.Token
				filters := map[string]byte{"race/#": 1}
				switch n % 3 {
				case 0:
					tok = c.Subscribe("race/#", byte(s%2), count)
				case 1:
					filters = map[string]byte{"race/+/t1": 0, fmt.Sprintf("race/w%d/+", s%writers): 1, "race/w0/t2": 1}
					tok = c.SubscribeMultiple(filters, count)
				default:
					filters = map[string]byte{"race/+/+": 1}
					tok = c.SubscribeMultiple(filters, count)
				}
				if err := wait(ctx, tok); err != nil {
					t.Errorf("subscribe: %v", err)
					return
				}
				var names []string
				for f := range filters {
					names = append(names, f)
				}
				if err := wait(ctx, c.Unsubscribe(names...)); err != nil {
					t.Errorf("unsubscribe: %v", err)
					return
				}
			}
		})
	}
	reading.Go(func() {
		for n := 0; n < 3 || !done.Load(); n++ {
			f := []string{"race/#", "race/+/t3", "race/w1/+"}[n%3]
			unsub, err := bridge.Subscribe(ctx, f, 1, func(broker.Message) { got.Add(1) })
			if err != nil {
				t.Errorf("inline subscribe %s: %v", f, err)
				return
			}
			if err := unsub(ctx); err != nil {
				t.Errorf("inline unsubscribe: %v", err)
				return
			}
		}
	})
	writing.Wait()
	done.Store(true)
	reading.Wait()
	if got.Load() == 0 {
		t.Error("no message reached a subscriber")
	}

	want := map[string]string{}
	for w := range writers + 1 {
		for i := range topics {
			if p := payload(w, i, rounds-1); p != nil {
				want[topic(w, i)] = string(p)
			}
		}
	}
	col := pahoCollector(t, connectPaho(t, pahoOptions(tcpURL(b), "race-check")), "race/#", 1)
	msgs := col.wait(t, len(want))
	gotState := map[string]string{}
	for _, m := range msgs {
		if !m.Retain {
			t.Errorf("%s: Retain false on a retained message", m.Topic)
		}
		gotState[m.Topic] = string(m.Payload)
	}
	if diff := cmp.Diff(want, gotState); diff != "" {
		t.Errorf("retained state (-want +got):\n%s", diff)
	}
}

// TestIndexFreeWhileSubscriberStuck: a network subscriber that stops
// reading holds its SUBSCRIBE's retained delivery, first in the pacer (up
// to WriteTimeout/2), then behind its connection's blocked write (until
// WriteTimeout disconnects it). All the while mochi's index lock stays free
// for the rest of the broker (retained publishes, subscribes): each probe
// gets it well within the pacer's wait. One filter (the window lets the
// lock go for good after its scan) and two (it takes it back for the second
// scan, but not across the waits).
func TestIndexFreeWhileSubscriberStuck(t *testing.T) {
	cfg := testConfig()
	cfg.ClientWritesPending = 8
	cfg.WriteTimeout = 3 * time.Second
	b := startBroker(t, cfg)
	if b.pacer == nil || b.retain.index == nil {
		t.Fatal("pacer or retained scan guard off")
	}
	bridge := b.NewClient()
	t.Cleanup(func() { _ = bridge.Close(ctxT(t)) })
	const n = 200 // 25 MB: more than the socket buffers of a client that does not read
	for i := range n {
		err := bridge.Publish(ctxT(t), broker.Message{Topic: fmt.Sprintf("big/t%d", i), Payload: make([]byte, 128<<10), QoS: 1, Retain: true})
		if err != nil {
			t.Fatal(err)
		}
	}
	// free fails the test if the index lock stays taken for within.
	free := func(t *testing.T, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for !b.retain.index.TryLock() {
			if time.Now().After(deadline) {
				t.Fatalf("mochi's index lock taken for over %v while a subscriber is stuck", within)
			}
			time.Sleep(time.Millisecond)
		}
		b.retain.index.Unlock()
	}
	for _, filters := range [][]string{{"big/#"}, {"big/+", "other/#"}} {
		t.Run(strings.Join(filters, ","), func(t *testing.T) {
			paced := b.Stats().Paced
			stuck, _ := dialRaw(t, b.Addr().String(), 4, packets.Packet{Connect: packets.ConnectParams{ClientIdentifier: "stuck", Clean: true}})
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 7}
			for _, f := range filters {
				pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
			}
			stuck.Send(pk) // and never reads
			waitFor(t, "the pacer waiting for the stuck client", func() bool { return b.Stats().Paced > paced })
			start := time.Now()
			probes := 0
			for ; b.Stats().ClientsConnected > 0; probes++ {
				if time.Since(start) > testTimeout {
					t.Fatal("the stuck client was not disconnected")
				}
				free(t, cfg.WriteTimeout/4)
				time.Sleep(10 * time.Millisecond)
			}
			if took := time.Since(start); took < cfg.WriteTimeout/2 {
				t.Errorf("the stuck client went after %v: the waits this test is about did not happen", took)
			}
			t.Logf("index free at %d probes over %v", probes, time.Since(start))
		})
	}
}

// TestRetainWindow walks a network SUBSCRIBE's window through the calls
// mochi makes on the client's read loop (here the test goroutine), and
// checks after each whether the index lock is held.
func TestRetainWindow(t *testing.T) {
	b, err := New(testConfig()) // not started: nothing else takes the index lock
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeBroker(t, b) })
	g := b.retain
	if g.index == nil {
		t.Fatal("retained scans unguarded: mochi's index lock not found")
	}
	locked := func() bool {
		if g.index.TryLock() {
			g.index.Unlock()
			return false
		}
		return true
	}
	two := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, Filters: packets.Subscriptions{{Filter: "a/#"}, {Filter: "b/+"}}}
	one := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, Filters: packets.Subscriptions{{Filter: "a/#"}, {Filter: "$share/g/b"}, {Filter: "c/+", RetainHandling: 2}}}
	retained := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: "a/x"}

	type step struct {
		do   string
		want bool // index locked afterwards
	}
	tests := []struct {
		name  string
		sub   packets.Packet
		codes []byte
		steps []step
	}{
		{"two scans", two, []byte{1, 0}, []step{
			{"subscribed", false}, // the SUBACK is not written yet
			{"suback", true},
			{"elsewhere", true}, // live deliveries to the client change nothing
			{"pause", false},    // a delivery of the first scan's results
			{"delivered", true}, // another scan may follow
			{"pause", false},
			{"elsewhere", false},
			{"failed", true}, // mochi logs a failed delivery
			{"delivered", true},
			{"processed", false},
		}},
		{"one scan", one, []byte{0, 0, 0}, []step{
			{"subscribed", false},
			{"suback", true},
			{"pause", false},
			{"delivered", false}, // no scan follows: stays free
			{"failed", false},
			{"pause", false},
			{"processed", false},
		}},
		{"no retained", two, []byte{0, 0}, []step{
			{"subscribed", false},
			{"suback", true},
			{"processed", false},
		}},
		{"suback not written", two, []byte{0, 0}, []step{
			{"subscribed", false},
			{"processed", false},
		}},
		{"refused", two, []byte{0x80, 0x87}, []step{
			{"subscribed", false},
			{"suback", false}, // nothing to scan: no window
			{"processed", false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := b.srv.NewClient(nil, listenerTCP, "window-"+tt.name, false)
			for i, st := range tt.steps {
				switch st.do {
				case "subscribed":
					g.OnSubscribed(cl, tt.sub, tt.codes)
				case "suback":
					g.OnPacketSent(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}}, nil)
				case "pause":
					g.pause(cl)
				case "elsewhere":
					var wg sync.WaitGroup
					wg.Go(func() {
						g.pause(cl)
						b.srv.Log.Debug("another goroutine logs")
						g.OnPacketSent(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}}, nil)
					})
					wg.Wait()
				case "delivered":
					g.OnRetainPublished(cl, retained)
				case "failed":
					b.srv.Log.Debug("failed to publish retained message")
				case "processed":
					g.OnPacketProcessed(cl, tt.sub, nil)
				}
				if got := locked(); got != st.want {
					t.Fatalf("step %d (%s): index locked %v, want %v", i, st.do, got, st.want)
				}
			}
			if n, p := g.open.Load(), g.paused.Load(); n != 0 || p != 0 {
				t.Errorf("after the window: %d open, %d paused; want none", n, p)
			}
		})
	}
}

// TestGoroutineID: goid tells goroutines apart and is stable within one.
func TestGoroutineID(t *testing.T) {
	id, ok := goid()
	if !ok || id == 0 {
		t.Fatalf("goid() = %d, %v", id, ok)
	}
	if again, _ := goid(); again != id {
		t.Errorf("goid changed within a goroutine: %d then %d", id, again)
	}
	const n = 8
	ids := make([]uint64, n)
	var wg sync.WaitGroup
	var start sync.WaitGroup
	start.Add(1)
	for i := range n {
		wg.Go(func() {
			ids[i], _ = goid()
			start.Wait() // all alive at once, so no id is reused
		})
	}
	start.Done()
	wg.Wait()
	slices.Sort(ids)
	for i := 1; i < n; i++ {
		if ids[i] == ids[i-1] || ids[i] == id {
			t.Fatalf("goroutine ids not distinct: %v (test goroutine %d)", ids, id)
		}
	}
}
