package embedded

import (
	"fmt"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/spark2mqtt/spark2mqtt/broker"
)

// TestBurstNotDropped: with a small write queue, a burst of retained
// messages on SUBSCRIBE and a burst of live messages from the bridge reach
// network subscribers whole, at QoS 0 and 1, because deliveries wait for
// room instead of being dropped. (Without the pacer, 64 slots lose over a
// third of them.)
func TestBurstNotDropped(t *testing.T) {
	const n = 3000
	cfg := testConfig()
	cfg.ClientWritesPending = 64
	b := startBroker(t, cfg)
	if b.pacer == nil {
		t.Fatal("pacer off: mochi's write queue length is not readable")
	}
	bridge := b.NewClient()
	t.Cleanup(func() { _ = bridge.Close(ctxT(t)) })
	for i := range n {
		if err := bridge.Publish(ctxT(t), broker.Message{Topic: fmt.Sprintf("spark/d%d/var/v", i), Payload: make([]byte, 100), QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	var cols []*collector
	for _, qos := range []byte{0, 1} {
		c := connectPaho(t, pahoOptions(tcpURL(b), fmt.Sprintf("sub-q%d", qos)))
		col := pahoCollector(t, c, "spark/#", qos)
		col.wait(t, n) // the retained burst
		cols = append(cols, col)
	}
	for i := range n {
		if err := bridge.Publish(ctxT(t), broker.Message{Topic: fmt.Sprintf("spark/d%d/var/v", i), Payload: make([]byte, 100), QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for _, col := range cols {
		col.wait(t, 2*n)
	}
	st := b.Stats()
	if st.ClientDropped != 0 || st.Paced == 0 {
		t.Errorf("dropped %d, paced %d; want 0 dropped and some pacing", st.ClientDropped, st.Paced)
	}
}

// TestStuckClient: a subscriber that stops reading holds publishers up for
// at most WriteTimeout, once: then it is disconnected as a slow peer, and
// the others get everything.
func TestStuckClient(t *testing.T) {
	cfg := testConfig()
	cfg.ClientWritesPending = 16
	cfg.WriteTimeout = 500 * time.Millisecond
	b := startBroker(t, cfg)

	stuck, _ := dialRaw(t, b.Addr().String(), 4, packets.Packet{Connect: packets.ConnectParams{ClientIdentifier: "stuck", Clean: true}})
	stuck.subscribe("spark/#", 1) // and never reads again
	healthy := pahoCollector(t, connectPaho(t, pahoOptions(tcpURL(b), "healthy")), "spark/#", 1)

	bridge := b.NewClient()
	t.Cleanup(func() { _ = bridge.Close(ctxT(t)) })
	const n = 200
	start := time.Now()
	for i := range n {
		err := bridge.Publish(ctxT(t), broker.Message{Topic: fmt.Sprintf("spark/d/event/e%d", i), Payload: make([]byte, 64<<10), QoS: 1})
		if err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(start)
	healthy.wait(t, n)
	waitFor(t, "the stuck client disconnected", func() bool { return b.Stats().ClientsConnected == 1 })
	if took > 4*cfg.WriteTimeout+2*time.Second {
		t.Errorf("publishing took %v with a stuck subscriber (write timeout %v)", took, cfg.WriteTimeout)
	}
}
