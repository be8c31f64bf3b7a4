package embedded

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
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
	stuck.Subscribe("spark/#", 1) // and never reads again
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

// TestSlowAcksNotDropped: a QoS 1 subscriber that reads at once but
// acknowledges late (here: only once three quarters of mochi's in-flight
// window is waiting, and the broker has paused) gets everything: deliveries
// wait for its acknowledgements instead of being dropped at mochi's
// MaximumInflight.
func TestSlowAcksNotDropped(t *testing.T) {
	b := startBroker(t, testConfig())
	raw, _ := dialRaw(t, b.Addr().String(), 4, packets.Packet{Connect: packets.ConnectParams{ClientIdentifier: "lazy", Clean: true}})
	raw.Subscribe("spark/#", 1)
	n := 2 * b.pacer.inflight
	batch := b.pacer.inflight * 3 / 4

	// A reader goroutine decodes packets; the client acknowledges all the
	// deliveries it holds once there are batch of them and nothing has
	// come for 10 ms (the broker waits for it), or once all n are in.
	pkts := make(chan packets.Packet, 64)
	readErr := make(chan error, 1)
	go func() { // ends when the connection is closed (the test's cleanup) or fails
		r := bufio.NewReader(raw.Conn())
		for {
			pk, err := readPacket(r)
			if err != nil {
				readErr <- err
				return
			}
			pkts <- pk
		}
	}()
	done := make(chan error, 1)
	got := 0
	go func() { // ends once all n are in and acknowledged, or on an error
		var pending []uint16
		ackAll := func() error {
			var buf bytes.Buffer
			for _, id := range pending {
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: id, ProtocolVersion: 4}
				if err := pk.PubackEncode(&buf); err != nil {
					return err
				}
			}
			pending = pending[:0]
			_ = raw.Conn().SetWriteDeadline(time.Now().Add(testTimeout))
			_, err := raw.Conn().Write(buf.Bytes())
			return err
		}
		idle := time.NewTimer(time.Hour)
		defer idle.Stop()
		for got < n {
			idle.Reset(10 * time.Millisecond)
			select {
			case pk := <-pkts:
				if pk.FixedHeader.Type == packets.Publish {
					got++
					pending = append(pending, pk.PacketID)
				}
			case err := <-readErr:
				done <- err
				return
			case <-idle.C:
				if len(pending) >= batch {
					if err := ackAll(); err != nil {
						done <- err
						return
					}
				}
			}
		}
		done <- ackAll()
	}()

	bridge := b.NewClient()
	t.Cleanup(func() { _ = bridge.Close(ctxT(t)) })
	for i := range n {
		if err := bridge.Publish(ctxT(t), broker.Message{Topic: fmt.Sprintf("spark/d/event/e%d", i), Payload: []byte("x"), QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after %d of %d deliveries: %v; %+v", got, n, err, b.Stats())
		}
	case <-time.After(testTimeout):
		t.Fatalf("not all of the %d deliveries arrived; %+v", n, b.Stats())
	}
	if st := b.Stats(); st.ClientDropped != 0 || st.Paced == 0 {
		t.Errorf("dropped %d, paced %d; want 0 dropped and some pacing", st.ClientDropped, st.Paced)
	}
}

// readPacket reads one MQTT 3.1.1 packet (a PUBLISH decoded, others by
// type only).
func readPacket(r *bufio.Reader) (packets.Packet, error) {
	var pk packets.Packet
	pk.ProtocolVersion = 4
	hb, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return pk, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return pk, err
	}
	if pk.FixedHeader.Type == packets.Publish {
		err = pk.PublishDecode(body)
	}
	return pk, err
}
