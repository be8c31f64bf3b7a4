package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spark2mqtt/spark2mqtt/broker"
	"github.com/spark2mqtt/spark2mqtt/coapdev/devsim"
)

// pendingJSON decodes fn/NAME/pending.
func pendingJSON(t testing.TB, p string) pendingCall {
	t.Helper()
	var pc pendingCall
	dec := json.NewDecoder(strings.NewReader(p))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pc); err != nil {
		t.Fatalf("pending %q: %v", p, err)
	}
	return pc
}

// TestHeldCall: a call for an offline device is queued (queued result,
// retained pending), delivered when the device completes its handshake,
// and then its result is published and the pending message cleared.
func TestHeldCall(t *testing.T) {
	h := newHarness(t, Config{})
	u := h.newUser()
	h.startBridge()
	heater, dev := h.addHeater(heaterID)
	id := dev.id
	res, pend := topicOf(id, "fn", "heater", "result"), topicOf(id, "fn", "heater", "pending")

	u.publish(topicOf(id, "fn", "heater", "call"), `{"arg":"on","transaction":"h1","ttl":600}`)
	q := decodeResult(t, u.wait(res, nil).payload)
	if !q.Queued || q.Transaction != "h1" || q.ExpiresAt == nil || q.Arg != "on" {
		t.Fatalf("first result = %+v, want queued", q)
	}
	p, ok := h.retained(pend)
	if !ok {
		t.Fatal("no retained pending")
	}
	pc := pendingJSON(t, p)
	if pc.Device != id || pc.Arg != "on" || string(pc.Transaction) != `"h1"` || pc.ExpiresAt.Sub(pc.QueuedAt) != 600*time.Second {
		t.Errorf("pending = %+v", pc)
	}
	if r, _ := h.retained(res); !strings.Contains(r, `"queued":true`) {
		t.Errorf("retained result = %s, want the queued one", r)
	}

	dev.connect()
	r := u.waitResult(res, "h1")
	if r.ReturnValue == nil || *r.ReturnValue != 1 {
		t.Errorf("result = %+v, want return_value 1", r)
	}
	if !heater.On() {
		t.Error("heater off after the held call")
	}
	u.waitPayload(pend, "")
	if p, ok := h.retained(pend); ok {
		t.Errorf("pending still retained: %s", p)
	}
	if n := dev.Stats().Calls; n != 1 {
		t.Errorf("device calls = %d, want 1", n)
	}
	if st := h.br.Stats(); st.CallsQueued != 1 || st.CallsOK != 1 {
		t.Errorf("stats = %+v", st)
	}
}

// TestHeldCallsOrder: held calls to several functions are delivered in the
// order they were made; for one function only the newest is kept and the
// older gets "superseded".
func TestHeldCallsOrder(t *testing.T) {
	h := newHarness(t, Config{})
	u := h.newUser()
	h.startBridge()
	var mu sync.Mutex
	var order []string
	rec := func(name string) func(context.Context, string) int32 {
		return func(_ context.Context, arg string) int32 {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, name+"="+arg)
			return int32(len(order))
		}
	}
	dev := h.addDevice(devsim.Config{DeviceID: testID(2), Functions: []devsim.Function{fn("a", rec("a")), fn("b", rec("b")), fn("c", rec("c"))}})
	id := dev.id
	call := func(f, arg, tx string) {
		u.publish(topicOf(id, "fn", f, "call"), fmt.Sprintf(`{"arg":%q,"transaction":%q}`, arg, tx))
		u.wait(topicOf(id, "fn", f, "result"), func(p string) bool { return strings.Contains(p, tx) })
	}
	call("c", "1", "c1")
	call("a", "1", "a1")
	call("b", "1", "b1")
	call("a", "2", "a2") // replaces a1
	if r := decodeResult(t, u.wait(topicOf(id, "fn", "a", "result"), func(p string) bool {
		return strings.Contains(p, `"a1"`) && strings.Contains(p, "error")
	}).payload); r.Error != errSuperseded {
		t.Errorf("a1 result = %+v, want superseded", r)
	}
	if p, _ := h.retained(topicOf(id, "fn", "a", "pending")); pendingJSON(t, p).Arg != "2" {
		t.Errorf("pending a = %s, want arg 2", p)
	}

	dev.connect()
	u.waitResult(topicOf(id, "fn", "a", "result"), "a2")
	u.waitResult(topicOf(id, "fn", "b", "result"), "b1")
	u.waitResult(topicOf(id, "fn", "c", "result"), "c1")
	mu.Lock()
	got := strings.Join(order, " ")
	mu.Unlock()
	if want := "c=1 b=1 a=2"; got != want {
		t.Errorf("delivery order = %q, want %q (in the order the calls were made)", got, want)
	}
	if st := h.br.Stats(); st.CallsSuperseded != 1 || st.CallsQueued != 4 || st.CallsOK != 3 {
		t.Errorf("stats = %+v", st)
	}
}

// TestHeldCallExpires: an expired held call gets an error result and its
// pending message is cleared; it never reaches the device.
func TestHeldCallExpires(t *testing.T) {
	clock := newFakeClock()
	h := newHarness(t, Config{Now: clock.Now, ExpiryCheck: 5 * time.Millisecond})
	u := h.newUser()
	h.startBridge()
	_, dev := h.addHeater(heaterID)
	id := dev.id
	res, pend := topicOf(id, "fn", "heater", "result"), topicOf(id, "fn", "heater", "pending")

	u.publish(topicOf(id, "fn", "heater", "call"), `{"arg":"on","transaction":"x1","ttl":60}`)
	u.wait(res, func(p string) bool { return strings.Contains(p, `"queued":true`) })
	clock.Add(59 * time.Second)
	u.publish(topicOf(id, "fn", "heater", "call"), `{"arg":"on","transaction":"x2","ttl":0}`) // not held: the device is offline
	if r := u.waitResult(res, "x2"); r.Error != errOffline {
		t.Errorf("ttl 0 result = %+v, want %q", r, errOffline)
	}
	clock.Add(2 * time.Second)
	r := u.waitResult(res, "x1")
	if r.Error != errExpired {
		t.Errorf("result = %+v, want expired", r)
	}
	u.waitPayload(pend, "")
	if p, ok := h.retained(res); !ok || !strings.Contains(p, errExpired) {
		t.Errorf("retained result = %q, want the expired one", p)
	}
	dev.connect()
	if n := dev.Stats().Calls; n != 0 {
		t.Errorf("device calls = %d, want 0", n)
	}
	if st := h.br.Stats(); st.CallsExpired != 1 {
		t.Errorf("stats = %+v", st)
	}
}

// TestRestart: held calls live in the broker. A new Bridge on the same
// broker rebuilds its queue from the retained pending messages and delivers
// each exactly once; a call the old bridge was delivering when it died is
// reported as interrupted, not run again.
func TestRestart(t *testing.T) {
	for _, tc := range []struct {
		name        string
		deviceFirst bool // the device connects before the new bridge runs
	}{
		{"device after start", false},
		{"device before start", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			h.startBridge()
			u := h.newUser()
			heater, dev := h.addHeater(heaterID)
			other := h.addDevice(devsim.Config{DeviceID: testID(3), Functions: []devsim.Function{fn("f", func(context.Context, string) int32 { return 5 })}})
			id := dev.id
			res, pend := topicOf(id, "fn", "heater", "result"), topicOf(id, "fn", "heater", "pending")

			u.publish(topicOf(id, "fn", "heater", "call"), `{"arg":"on","transaction":"r1"}`)
			u.wait(res, func(p string) bool { return strings.Contains(p, `"queued":true`) })
			// A call that a crashed bridge was delivering.
			crashed := pendingCall{Device: other.id, Arg: "x", QueuedAt: time.Now().Add(-time.Minute), ExpiresAt: time.Now().Add(time.Hour)}
			now := time.Now()
			crashed.DeliveringAt = &now
			h.publishRetained(topicOf(other.id, "fn", "f", "pending"), crashed)

			h.stopBridge()
			u.waitPayload("spark/bridge/state", "offline")
			if _, ok := h.retained(pend); !ok {
				t.Fatal("pending gone after the stop")
			}

			if tc.deviceFirst {
				h.startBridgeWith(func() { dev.dial() })
			} else {
				h.startBridge()
				dev.connect()
			}
			other.connect()
			if r := u.waitResult(topicOf(other.id, "fn", "f", "result"), ""); r.Error != errInterrupted {
				t.Errorf("interrupted call result = %+v", r)
			}
			r := u.waitResult(res, "r1")
			if r.ReturnValue == nil || *r.ReturnValue != 1 || !heater.On() {
				t.Errorf("result = %+v, heater on %v", r, heater.On())
			}
			u.waitPayload(pend, "")
			waitFor(t, "pending of f cleared", func() bool { _, ok := h.retained(topicOf(other.id, "fn", "f", "pending")); return !ok })
			if n := dev.Stats().Calls; n != 1 {
				t.Errorf("heater calls = %d, want exactly 1", n)
			}
			if n := other.Stats().Calls; n != 0 {
				t.Errorf("interrupted call ran %d times, want 0", n)
			}
			if st := h.br.Stats(); st.Restored != 1 {
				t.Errorf("restored = %d, want 1", st.Restored)
			}
		})
	}
}

// publishRaw publishes payload through the broker's in-process client.
func (h *harness) publishRaw(topic string, payload []byte, retain bool) {
	h.t.Helper()
	c := h.brk.NewClient()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	defer func() { _ = c.Close(ctx) }()
	if err := c.Publish(ctx, broker.Message{Topic: topic, Payload: payload, QoS: 1, Retain: retain}); err != nil {
		h.t.Fatal(err)
	}
}

// publishRetained publishes v as retained JSON through the broker's
// in-process client (protected topics are writable only in-process).
func (h *harness) publishRetained(topic string, v any) {
	h.t.Helper()
	p, err := json.Marshal(v)
	if err != nil {
		h.t.Fatal(err)
	}
	c := h.brk.NewClient()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	defer func() { _ = c.Close(ctx) }()
	if err := c.Publish(ctx, broker.Message{Topic: topic, Payload: p, QoS: 1, Retain: true}); err != nil {
		h.t.Fatal(err)
	}
}

// TestDisconnectDuringCall: the device goes away while a call runs: the
// call gets "device disconnected" (it may have run; it is not run again),
// and a call waiting behind it is held and delivered after the reconnect.
func TestDisconnectDuringCall(t *testing.T) {
	h := newHarness(t, Config{})
	u := h.newUser()
	h.startBridge()
	started := make(chan struct{}, 1)
	dev := h.addDevice(devsim.Config{DeviceID: testID(2), Functions: []devsim.Function{
		fn("slow", func(ctx context.Context, _ string) int32 { started <- struct{}{}; <-ctx.Done(); return 0 }),
		fn("quick", func(context.Context, string) int32 { return 7 }),
	}})
	id := dev.id
	dev.connect()
	u.publish(topicOf(id, "fn", "slow", "call"), `{"transaction":"s"}`)
	<-started
	u.publish(topicOf(id, "fn", "quick", "call"), `{"transaction":"q"}`)
	waitFor(t, "quick queued", func() bool { return h.br.Stats().CallsReceived == 2 })
	dev.disconnect()
	if r := u.waitResult(topicOf(id, "fn", "slow", "result"), "s"); r.Error != errDisconnected {
		t.Errorf("slow result = %+v, want %q", r, errDisconnected)
	}
	u.wait(topicOf(id, "fn", "quick", "result"), func(p string) bool { return strings.Contains(p, `"queued":true`) })
	dev.connect()
	if r := u.waitResult(topicOf(id, "fn", "quick", "result"), "q"); r.ReturnValue == nil || *r.ReturnValue != 7 {
		t.Errorf("quick result = %+v, want 7", r)
	}
}

// TestStopHoldsWaiting: calls still waiting when the bridge stops are held
// (retained pending), not lost; the next bridge delivers them.
func TestStopHoldsWaiting(t *testing.T) {
	h := newHarness(t, Config{ShutdownTimeout: 200 * time.Millisecond, CallTimeout: 100 * time.Millisecond})
	u := h.newUser()
	h.startBridge()
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	dev := h.addDevice(devsim.Config{DeviceID: testID(2), Functions: []devsim.Function{
		fn("slow", func(ctx context.Context, _ string) int32 {
			started <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
			}
			return 1
		}),
		fn("quick", func(context.Context, string) int32 { return 7 }),
	}})
	id := dev.id
	dev.connect()
	u.publish(topicOf(id, "fn", "slow", "call"), `{"transaction":"s"}`)
	<-started
	u.publish(topicOf(id, "fn", "quick", "call"), `{"transaction":"q"}`)
	waitFor(t, "quick queued", func() bool { return h.br.Stats().CallsReceived == 2 })
	h.stopBridgeFirst() // the bridge stops while the device is still connected
	close(release)
	if r := u.waitResult(topicOf(id, "fn", "slow", "result"), "s"); r.Error != errTimeout && r.Error != errStopping {
		t.Errorf("slow result = %+v, want timeout or interrupted", r)
	}
	u.wait(topicOf(id, "fn", "quick", "result"), func(p string) bool { return strings.Contains(p, `"queued":true`) })
	if _, ok := h.retained(topicOf(id, "fn", "quick", "pending")); !ok {
		t.Fatal("quick not held")
	}
	dev.disconnect()
	h.startBridge()
	dev.connect()
	if r := u.waitResult(topicOf(id, "fn", "quick", "result"), "q"); r.ReturnValue == nil || *r.ReturnValue != 7 {
		t.Errorf("quick result = %+v, want 7", r)
	}
}

// TestHeldCallWaitsForApplication: a device whose first Describe is empty
// (AUTOMATIC mode: the cloud connection comes before setup(),
// spark-protocol.md §2.4) gets its held call only once the application has
// registered the function, not "unknown function" right after the Hello.
func TestHeldCallWaitsForApplication(t *testing.T) {
	for _, fw := range []devsim.Firmware{devsim.Core, devsim.Photon08} {
		t.Run(fw.String(), func(t *testing.T) {
			h := newHarness(t, Config{})
			h.startBridge()
			u := h.newUser()
			dev := h.addDevice(devsim.Config{Firmware: fw, DeviceID: testID(2), AppStartDelay: 50 * time.Millisecond, DescribeAtOnceEmpty: true,
				Functions: []devsim.Function{fn("f", func(context.Context, string) int32 { return 9 })}})
			u.publish(topicOf(dev.id, "fn", "f", "call"), `{"transaction":"w"}`)
			u.wait(topicOf(dev.id, "fn", "f", "result"), func(p string) bool { return strings.Contains(p, `"queued":true`) })
			dev.connect()
			if r := u.waitResult(topicOf(dev.id, "fn", "f", "result"), "w"); r.ReturnValue == nil || *r.ReturnValue != 9 {
				t.Errorf("result = %+v, want 9", r)
			}
			if d := dev.Stats().Describes; d < 2 {
				t.Errorf("describes = %d: the empty first answer was not followed by the application's", d)
			}
		})
	}
}
