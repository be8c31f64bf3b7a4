package bridge

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
)

// TestGetsJoin: 100 clients ask for the same variable at once; one device
// read serves them all. The device is kept busy with a call while the gets
// arrive, so they all wait for the same read.
func TestGetsJoin(t *testing.T) {
	h := newHarness(t, Config{PollInterval: time.Hour})
	u := h.newUser()
	h.startBridge()
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	var value atomic.Int32
	value.Store(41)
	dev := h.addDevice(devsim.Config{DeviceID: testID(2),
		Functions: []devsim.Function{fn("hold", func(ctx context.Context, _ string) int32 {
			started <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
			}
			value.Store(42)
			return 0
		})},
		Variables: []devsim.Variable{intVar("v", value.Load)},
	})
	id := dev.id
	dev.connect()
	u.waitPayload(topicOf(id, "var", "v"), "41") // the first poll
	readsBefore := dev.Stats().Gets

	u.publish(topicOf(id, "fn", "hold"), "")
	<-started
	// 100 clients, each publishing one get, at once.
	var wg sync.WaitGroup
	for i := range 100 {
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + h.brk.Addr().String()).SetClientID(fmt.Sprintf("getter-%d", i)).SetAutoReconnect(false))
		if tok := c.Connect(); !tok.WaitTimeout(waitLong) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		defer c.Disconnect(0)
		wg.Go(func() {
			tok := c.Publish(topicOf(id, "var", "v", "get"), 1, false, "")
			if !tok.WaitTimeout(waitLong) || tok.Error() != nil {
				t.Error(tok.Error())
			}
		})
	}
	wg.Wait()
	// Gets counts a get as it is taken, before it is attached to the
	// waiting read: wait until all 100 are attached (one waiting, 99
	// joined) before the device may answer.
	waitFor(t, "100 gets waiting on one read", func() bool {
		st := h.br.Stats()
		return st.Gets == 100 && st.GetsJoined == 99
	})
	close(release)
	u.waitPayload(topicOf(id, "var", "v"), "42")
	waitFor(t, "the bridge idle", func() bool { return h.br.Stats().Reads >= 2 })
	if n := dev.Stats().Gets - readsBefore; n != 1 {
		t.Errorf("device reads for 100 gets = %d, want 1", n)
	}
	if st := h.br.Stats(); st.GetsJoined != 99 {
		t.Errorf("gets joined = %d, want 99", st.GetsJoined)
	}
}

// TestPollPublishes: a poll publishes a value only when it changed or is
// older than the freshness bound; a get always publishes.
func TestPollPublishes(t *testing.T) {
	clock := newFakeClock()
	df, err := ParseDevicesFile("devices.yaml", []byte(`
devices:
  "746573740000000000000002":
    poll: 10s
    variables:
      quiet:
        poll: "off"
`))
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, Config{Now: clock.Now, Devices: df})
	u := h.newUser()
	h.startBridge()
	var v atomic.Int32
	dev := h.addDevice(devsim.Config{DeviceID: testID(2), Variables: []devsim.Variable{intVar("v", v.Load), intVar("quiet", v.Load)}})
	id := dev.id
	vt := topicOf(id, "var", "v")
	dev.connect()
	u.waitPayload(vt, "0")
	if _, ok := u.last(topicOf(id, "var", "quiet")); ok {
		t.Error("quiet (poll off) was published")
	}

	polls := func() uint64 { return h.br.Stats().Reads }
	step := func(d time.Duration) {
		n := polls()
		clock.Add(d)
		h.br.kickAll()
		waitFor(t, "a poll", func() bool { return polls() > n })
	}
	step(10 * time.Second) // same value: nothing published
	if n := u.count(vt, nil); n != 1 {
		t.Errorf("publishes after an unchanged poll = %d, want 1", n)
	}
	v.Store(5)
	step(10 * time.Second) // changed
	u.waitPayload(vt, "5")
	for range 30 { // 5 min of unchanged polls: republished once the freshness bound passes
		step(10 * time.Second)
	}
	waitFor(t, "republish", func() bool { return u.count(vt, func(p string) bool { return p == "5" }) == 2 })
	u.publish(topicOf(id, "var", "v", "get"), "")
	waitFor(t, "get publishes", func() bool { return u.count(vt, func(p string) bool { return p == "5" }) == 3 })
	u.publish(topicOf(id, "var", "quiet", "get"), "")
	u.waitPayload(topicOf(id, "var", "quiet"), "5")
}

// kickAll wakes every worker (tests that move a fake clock).
func (b *Bridge) kickAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, d := range b.devs {
		d.mu.Lock()
		if d.sess != nil {
			d.sess.kick()
		}
		d.mu.Unlock()
	}
}

// TestSignal: spark/D/signal on/off reaches the device.
func TestSignal(t *testing.T) {
	h := newHarness(t, Config{})
	u := h.newUser()
	h.startBridge()
	got := make(chan bool, 4)
	dev := h.addDevice(devsim.Config{DeviceID: testID(2), OnSignal: func(on bool) { got <- on }})
	dev.connect()
	for _, tc := range []struct {
		payload string
		want    bool
	}{{"on", true}, {"OFF", false}, {"1", true}} {
		u.publish(topicOf(dev.id, "signal"), tc.payload)
		select {
		case on := <-got:
			if on != tc.want {
				t.Errorf("signal %q: device got %v", tc.payload, on)
			}
		case <-time.After(waitLong):
			t.Fatalf("signal %q not delivered", tc.payload)
		}
	}
	u.publish(topicOf(dev.id, "signal"), "blink")
	waitFor(t, "bad signal counted", func() bool { return h.br.Stats().Invalid == 1 })
	waitFor(t, "3 signals counted", func() bool { return h.br.Stats().Signals == 3 })
}
